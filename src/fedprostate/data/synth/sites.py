"""Scanner/collection profiles of the synthetic federation.

Seventeen collections modelled on the spread of real prostate bpMRI archives (North America, Europe,
Asia): each has its own vendor, field strength (which sets SNR), T2 and DWI voxel sizes, the high
b-value of its DWI, how its ADC map is stored, coil bias, intensity scale and csPCa prevalence.
The catalog is fixed (a hospital does not change scanner between runs); only patient-level content
depends on the seed. The catalog order alternates regions/vendors so any prefix is diverse.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PRESETS = ("default", "small")
PRESET_DEFAULTS = {
    "default": {"sites": 17, "patients": 2040},
    "small": {"sites": 5, "patients": 100},
}
MIN_SITE_PATIENTS = {"default": 30, "small": 8}


@dataclass(frozen=True)
class SiteProfile:
    """How one collection acquires and stores bpMRI. Intensities are in the site's scanner units."""

    name: str
    region: str  # NA | EU | ASIA
    vendor: str  # siemens | philips | ge
    field_T: float  # noqa: N815 (1.5 or 3.0 tesla; column name in sites.csv)
    t2_inplane_mm: float  # 0.3 .. 0.8
    t2_slice_mm: float  # 3 .. 4
    dwi_inplane_mm: float  # 1.5 .. 2.5
    dwi_slice_mm: float
    b_value: int  # high b-value of the stored DWI (hbv), 800..2000
    adc_units: str  # "1e-6 mm2/s" (int16) or "1e-3 mm2/s" (float32)
    t2_scale: float  # scanner units of fat-level T2 signal
    dwi_scale: float  # scanner units of b=0 PZ-level DWI signal
    bias_strength: float  # amplitude of the smooth multiplicative coil field (log scale)
    endorectal_coil: bool  # strong posterior brightening
    oblique_fraction: float  # share of studies planned oblique (perpendicular to rectal wall)
    prevalence: float  # share of patients with csPCa (ISUP >= 2)
    rank: int  # size rank: 1 = largest collection (heavy-tailed sizes)
    fov_mm: float = 100.0  # prostate-centred in-plane field of view of the T2 grid
    n_patients: int = 0

    @property
    def snr_t2(self) -> float:
        """SNR of fat-level T2 signal; 3T roughly doubles SNR over 1.5T (in practice ~1.6x)."""
        return 32.0 if self.field_T >= 3.0 else 20.0

    @property
    def snr_dwi(self) -> float:
        """SNR of the b=0 PZ signal of one average."""
        return 28.0 if self.field_T >= 3.0 else 17.0


# name, region, vendor, field, t2 in-plane, t2 slice, dwi in-plane, dwi slice, b, adc units,
# t2 scale, dwi scale, bias, endorectal coil, oblique fraction, prevalence, size rank
# fmt: off
_CATALOG = (
    ("eu_nijmegen", "EU", "siemens", 3.0, 0.5, 3.0, 2.0, 3.0, 1400, "1e-6", 900, 600, 0.25, False, 0.3, 0.33, 1),
    ("na_boston", "NA", "ge", 3.0, 0.625, 3.0, 2.2, 3.5, 1000, "1e-3", 2200, 1500, 0.55, True, 0.1, 0.42, 5),
    ("asia_tokyo", "ASIA", "philips", 3.0, 0.4, 3.5, 1.8, 3.5, 2000, "1e-3", 1600, 1100, 0.2, False, 0.5, 0.25, 9),
    ("eu_zwolle", "EU", "philips", 1.5, 0.7, 3.6, 2.5, 3.6, 800, "1e-6", 1300, 800, 0.3, False, 0.2, 0.52, 3),
    ("na_houston", "NA", "siemens", 1.5, 0.75, 4.0, 2.5, 4.0, 800, "1e-6", 700, 450, 0.6, True, 0.0, 0.6, 13),
    ("asia_seoul", "ASIA", "siemens", 3.0, 0.55, 3.0, 1.6, 3.0, 1500, "1e-6", 1000, 650, 0.2, False, 0.4, 0.2, 7),
    ("eu_groningen", "EU", "siemens", 3.0, 0.5, 3.0, 2.0, 3.0, 1400, "1e-6", 850, 550, 0.25, False, 0.3, 0.3, 2),
    ("na_toronto", "NA", "philips", 3.0, 0.6, 3.0, 2.0, 3.0, 1600, "1e-3", 1800, 1200, 0.3, False, 0.4, 0.38, 11),
    ("asia_shanghai", "ASIA", "ge", 3.0, 0.7, 4.0, 2.2, 4.0, 1200, "1e-6", 2500, 1700, 0.35, False, 0.2, 0.45, 4),
    ("eu_trondheim", "EU", "siemens", 3.0, 0.45, 3.6, 1.8, 3.6, 1600, "1e-6", 950, 600, 0.2, False, 0.6, 0.28, 15),
    ("na_seattle", "NA", "ge", 1.5, 0.8, 4.0, 2.5, 4.0, 1000, "1e-3", 2000, 1300, 0.5, True, 0.0, 0.55, 17),
    ("asia_singapore", "ASIA", "philips", 3.0, 0.6, 3.0, 2.0, 3.0, 1800, "1e-3", 1500, 1000, 0.25, False, 0.3, 0.17, 14),
    ("eu_munich", "EU", "siemens", 3.0, 0.35, 3.0, 1.5, 3.0, 2000, "1e-6", 1100, 700, 0.2, False, 0.5, 0.35, 12),
    ("eu_milan", "EU", "ge", 1.5, 0.78, 4.0, 2.4, 4.0, 900, "1e-6", 2300, 1500, 0.45, False, 0.1, 0.48, 8),
    ("na_chicago", "NA", "siemens", 3.0, 0.55, 3.0, 2.0, 3.0, 1400, "1e-6", 800, 500, 0.3, False, 0.3, 0.4, 6),
    ("asia_mumbai", "ASIA", "ge", 1.5, 0.8, 4.0, 2.5, 4.0, 1000, "1e-3", 2100, 1400, 0.5, False, 0.1, 0.15, 16),
    ("eu_lyon", "EU", "philips", 3.0, 0.65, 3.5, 2.0, 3.5, 1500, "1e-3", 1400, 900, 0.3, False, 0.4, 0.32, 10),
)
# fmt: on
# Exponent of the Zipf-like size law: with 17 ranks the largest/smallest ratio is ~13 (30 .. ~400).
_SIZE_EXPONENT = 0.9


def site_sizes(ranks: list[int], total: int, min_size: int) -> list[int]:
    """Heavy-tailed collection sizes summing exactly to ``total`` (largest remainder rounding)."""
    if total < len(ranks):
        raise ValueError(f"{total} patients cannot fill {len(ranks)} sites (at least 1 each)")
    floor = min(min_size, total // len(ranks))
    weights = np.array([r**-_SIZE_EXPONENT for r in ranks])
    free = total - floor * len(ranks)
    raw = free * weights / weights.sum()
    sizes = np.floor(raw).astype(int)
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[: free - sizes.sum()]] += 1
    return [int(s) + floor for s in sizes]


def make_site_profiles(sites: int, patients: int, preset: str = "default") -> list[SiteProfile]:
    """The first ``sites`` collections of the catalog, sized to sum to ``patients``."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} not in {PRESETS}")
    if not 1 <= sites <= len(_CATALOG):
        raise ValueError(f"--sites must be between 1 and {len(_CATALOG)}, got {sites}")
    rows = _CATALOG[:sites]
    # Re-rank within the chosen subset so the size law is the same whatever the number of sites.
    ranks = list(np.argsort(np.argsort([r[-1] for r in rows])) + 1)
    sizes = site_sizes(ranks, patients, MIN_SITE_PATIENTS[preset])
    profiles = []
    for row, rank, n in zip(rows, ranks, sizes, strict=True):
        (
            name,
            region,
            vendor,
            field,
            t2p,
            t2s,
            dwp,
            dws,
            b,
            units,
            t2k,
            dwk,
            bias,
            erc,
            obl,
            prev,
            _,
        ) = row
        profiles.append(
            SiteProfile(
                name=name, region=region, vendor=vendor, field_T=field, t2_inplane_mm=t2p,
                t2_slice_mm=t2s, dwi_inplane_mm=dwp, dwi_slice_mm=dws, b_value=b,
                adc_units=f"{units} mm2/s", t2_scale=float(t2k), dwi_scale=float(dwk),
                bias_strength=bias, endorectal_coil=erc, oblique_fraction=obl, prevalence=prev,
                rank=int(rank), n_patients=n,
            )
        )  # fmt: skip
    return profiles


def write_sites_csv(path: Path, profiles: list[SiteProfile]) -> None:
    """``truth/sites.csv``: one row per collection, with the scanner profile and realised sizes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [
        "site", "region", "vendor", "field_T", "b_value", "adc_units", "t2_spacing", "dwi_spacing",
        "prevalence", "n_patients", "t2_scale", "dwi_scale", "bias_strength", "endorectal_coil",
        "oblique_fraction", "snr_t2", "snr_dwi",
    ]  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for p in profiles:
            d = asdict(p)
            writer.writerow(
                {
                    "site": p.name, "region": p.region, "vendor": p.vendor, "field_T": p.field_T,
                    "b_value": p.b_value, "adc_units": p.adc_units,
                    "t2_spacing": f"{p.t2_inplane_mm}x{p.t2_inplane_mm}x{p.t2_slice_mm}",
                    "dwi_spacing": f"{p.dwi_inplane_mm}x{p.dwi_inplane_mm}x{p.dwi_slice_mm}",
                    "prevalence": p.prevalence, "n_patients": p.n_patients,
                    "t2_scale": d["t2_scale"], "dwi_scale": d["dwi_scale"],
                    "bias_strength": p.bias_strength, "endorectal_coil": int(p.endorectal_coil),
                    "oblique_fraction": p.oblique_fraction, "snr_t2": p.snr_t2,
                    "snr_dwi": p.snr_dwi,
                }
            )  # fmt: skip
