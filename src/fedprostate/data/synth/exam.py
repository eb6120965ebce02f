"""One synthetic bpMRI study: acquisition geometry and MR physics on top of the phantom.

Every sequence lives on its own grid (T2: fine in-plane, thick slices; DWI/ADC: coarse, its own
slightly shifted origin, small distortion shift of the anatomy). DWI is simulated at b=50 and at the
site's high b-value with S = S0 * exp(-b * ADC(b)); apparent ADC falls slightly as b rises
(non-Gaussian diffusion), and the ADC map is computed from the two noisy magnitude images exactly as a
scanner does (thresholded where b=50 signal is noise). Noise is Rician; a smooth coil bias field
multiplies T2 and DWI (it cancels in the ADC ratio, as in reality).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the library's own convention)

from fedprostate.data.synth.anatomy import (
    ISUP_PROBS,
    Lesion,
    Phantom,
    _rotation,
    draw_lesion,
    gland_volume_ml,
    make_phantom,
    sample_phantom,
)
from fedprostate.data.synth.reader import Mark, read_study
from fedprostate.data.synth.sites import SiteProfile

B_LOW = 50.0  # s/mm2, lowest b of the ADC fit (avoids perfusion)
KURTOSIS_DROP = 0.15  # relative ADC drop per +1000 s/mm2 of b (non-Gaussian diffusion)
T2_COVERAGE_MM = 72.0
DWI_FOV_MM = 110.0
NEG_KINDS = ("isup1", "bph_nodule", "prostatitis", "benign_biopsy")
KIND_ZONE = {"bph_nodule": "TZ", "prostatitis": "PZ"}
GS_BY_ISUP = {0: "0+0", 1: "3+3", 2: "3+4", 3: "4+3", 4: "4+4", 5: "4+5"}


@dataclass(frozen=True)
class Grid:
    """A voxel grid in world mm: numpy arrays are (z, y, x) = (size[2], size[1], size[0])."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray  # 3x3, columns = world directions of index axes
    size: tuple[int, int, int]

    def world(self, shift=(0.0, 0.0, 0.0)):
        """World coordinates (X, Y, Z) of voxel centres as broadcastable float32 arrays."""
        nx, ny, nz = self.size
        i = (np.arange(nx, dtype=np.float32) * self.spacing[0])[None, None, :]
        j = (np.arange(ny, dtype=np.float32) * self.spacing[1])[None, :, None]
        k = (np.arange(nz, dtype=np.float32) * self.spacing[2])[:, None, None]
        D = self.direction.astype(np.float32)
        o = (self.origin - np.asarray(shift)).astype(np.float32)
        return tuple(o[r] + D[r, 0] * i + D[r, 1] * j + D[r, 2] * k for r in range(3))

    def image(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetOrigin([float(v) for v in self.origin])
        img.SetSpacing([float(v) for v in self.spacing])
        img.SetDirection([float(v) for v in self.direction.ravel()])
        return img


def centred_grid(center, direction, inplane, slice_mm, fov_xy, fov_z) -> Grid:
    n = (int(round(fov_xy / inplane)), int(round(fov_xy / inplane)), int(round(fov_z / slice_mm)))
    spacing = np.array([inplane, inplane, slice_mm])
    half = (np.array(n) - 1) * spacing / 2.0
    return Grid(np.asarray(center) - direction @ half, spacing, direction, n)


@dataclass
class SynthStudy:
    site: str
    patient_id: str
    study_id: str
    images: dict[str, sitk.Image]
    gland_mask: sitk.Image | None
    lesion_mask: sitk.Image | None
    findings: list[Lesion]
    clinical: dict[str, object] = field(default_factory=dict)
    grids: dict[str, Grid] = field(default_factory=dict)
    in_mask: list[bool] = field(default_factory=list)  # per finding: drawn in the lesion mask
    lesions: list[Lesion] = field(default_factory=list)  # every lesion, biopsied or not
    lesion_pirads: list[int] = field(default_factory=list)  # the reader's score of each lesion
    marks: list[Mark] = field(default_factory=list)  # what the radiologist marked (PI-RADS >= 3)
    lesion_in_mask: list[bool] = field(default_factory=list)  # per lesion: drawn in the mask


def _rician(rng, signal, sigma):
    n = rng.standard_normal((2,) + signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt((signal + n[0]) ** 2 + n[1] ** 2)


def _bias(profile: SiteProfile, params, X, Y, Z, phantom: Phantom):
    """Smooth multiplicative receive-coil field (log-linear + quadratic, endorectal coil peak)."""
    g, q = params
    dx, dy, dz = X - phantom.center[0], Y - phantom.center[1], Z - phantom.center[2]
    logb = profile.bias_strength * (g[0] * dx + g[1] * dy + g[2] * dz) / 60.0
    logb = logb + profile.bias_strength * q * (dx**2 + dy**2) / 3600.0
    if profile.endorectal_coil:
        rx = X - phantom.rectum_center[0]
        ry = Y - phantom.rectum_center[1]
        logb = logb + 0.8 * profile.bias_strength * np.exp(-np.sqrt(rx**2 + ry**2) / 25.0)
    return np.exp(logb).astype(np.float32)


def plan_findings(rng, phantom: Phantom, positive: bool) -> list[Lesion]:
    """0-3 biopsied findings (>= 1 csPCa when positive) plus unbiopsied BPH nodules."""
    kinds: list[tuple[str, int]] = []
    if positive:
        n_cs = int(rng.choice([1, 2, 3], p=[0.72, 0.23, 0.05]))
        isups = rng.choice(list(ISUP_PROBS), size=n_cs, p=list(ISUP_PROBS.values()))
        kinds += [("cspca", int(i)) for i in isups]
        n_extra = int(rng.choice([0, 1], p=[0.6, 0.4])) if n_cs < 3 else 0
    else:
        n_extra = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.25, 0.1]))
    for _ in range(n_extra):
        kind = str(rng.choice(NEG_KINDS))
        kinds.append((kind, 1 if kind == "isup1" else 0))
    for kind, isup in kinds:
        if kind in KIND_ZONE:
            zone = KIND_ZONE[kind]
        else:
            zone = str(rng.choice(["PZ", "TZ", "AS"], p=[0.70, 0.25, 0.05]))
        phantom.lesions.append(draw_lesion(rng, phantom, kind, isup, zone))
    for _ in range(int(rng.integers(0, 4))):  # BPH nodules nobody biopsied: anatomy, not findings
        phantom.lesions.append(draw_lesion(rng, phantom, "bph_nodule", 0, "TZ", biopsied=False))
    return [les for les in phantom.lesions if les.biopsied]


def _clinical(rng, phantom, findings, positive, age):
    volume = gland_volume_ml(phantom) * float(np.exp(rng.normal(0, 0.08)))
    psa = (
        float(np.exp(rng.normal(np.log(6.0 * (1.7 if positive else 1.0)), 0.5)))
        * (volume / 40) ** 0.5
    )
    isups = [f.isup for f in findings]
    clin = {
        "mri_date": f"{int(rng.integers(2012, 2022))}-{int(rng.integers(1, 13)):02d}-"
        f"{int(rng.integers(1, 29)):02d}",
        "patient_age": int(round(age)),
        "psa": round(psa, 1)
        if rng.random() > 0.05
        else "",  # some PSA values missing, as in PI-CAI
        "prostate_volume": round(volume, 1),
        "histopath_type": "",
        "lesion_GS": ",".join(GS_BY_ISUP[i] for i in isups),
        "lesion_ISUP": ",".join(str(i) for i in isups),
        "case_ISUP": max(isups, default=0),
        "case_csPCa": "YES" if positive else "NO",
    }
    clin["psad"] = round(clin["psa"] / volume, 3) if clin["psa"] != "" else ""
    if findings:
        clin["histopath_type"] = str(
            rng.choice(["MRBx", "SysBx", "SysBx+MRBx", "RP"], p=[0.35, 0.15, 0.4, 0.1])
        )
    return clin


def generate_study(
    profile: SiteProfile,
    rng: np.random.Generator,
    positive: bool,
    patient_id: str,
    study_id: str,
    sequences=("t2w", "adc", "hbv"),
) -> SynthStudy:
    """Simulate one study. ``sequences`` may drop T2 for fast ADC-only experiments."""
    age = float(np.clip(rng.normal(66, 7), 45, 85))
    phantom = make_phantom(rng, age, profile.region)
    findings = plan_findings(rng, phantom, positive)
    clinical = _clinical(rng, phantom, findings, positive, age)
    oblique = rng.random() < profile.oblique_fraction
    tilt_x = np.arctan2(phantom.tilt[2, 1], phantom.tilt[1, 1])  # plan perpendicular to the gland
    direction = (_rotation(tilt_x + np.deg2rad(rng.normal(0, 3)), 0.0, np.deg2rad(rng.normal(0, 3)))
                 if oblique else np.eye(3))  # fmt: skip
    t2_center = phantom.center + rng.normal(0, 4.0, size=3)
    fov = profile.fov_mm * rng.uniform(0.95, 1.05)
    t2_grid = centred_grid(t2_center, direction, profile.t2_inplane_mm, profile.t2_slice_mm, fov,
                           T2_COVERAGE_MM)  # fmt: skip
    dwi_grid = centred_grid(t2_center + rng.normal(0, 2.0, size=3), direction, profile.dwi_inplane_mm,
                            profile.dwi_slice_mm, DWI_FOV_MM, T2_COVERAGE_MM)  # fmt: skip
    bias_params = (rng.normal(0, 1, size=3), rng.normal(0, 1))
    distortion = rng.normal(0, [0.5, 1.0, 0.3])  # EPI shift of the anatomy, mostly along AP
    # separate streams: an ADC-only run reproduces the ADC; the reader never shifts image noise
    t2_rng, dwi_rng, reader_rng = rng.spawn(3)
    images, gland_img, lesion_img = {}, None, None
    drawn = {id(les): False for les in phantom.lesions}
    if "t2w" in sequences:
        width = 0.3 * float(np.prod(t2_grid.spacing) ** (1 / 3))
        (t2,), gland, lesion_ms, (X, Y, Z) = sample_phantom(phantom, t2_grid, (0,), width)
        t2 = _rician(t2_rng, t2, 1.0 / profile.snr_t2) * _bias(
            profile, bias_params, X, Y, Z, phantom
        )
        images["t2w"] = t2_grid.image(np.clip(t2 * profile.t2_scale, 0, 32767).astype(np.int16))
        gland_img = t2_grid.image((gland > 0.5).astype(np.uint8))
        lesion = np.zeros(gland.shape, dtype=np.uint8)
        for les, (box, m) in zip(phantom.lesions, lesion_ms, strict=True):
            if les.kind == "cspca":
                block = lesion[box]
                inside = m > 0.5
                block[inside & (block < les.isup)] = les.isup
                drawn[id(les)] = bool(inside.any())
        lesion_img = t2_grid.image(lesion)
    if "adc" in sequences or "hbv" in sequences:
        images.update(_dwi(profile, dwi_rng, phantom, dwi_grid, distortion, bias_params))
    grids = {"t2w": t2_grid, "adc": dwi_grid, "hbv": dwi_grid}
    in_mask = [drawn[id(f)] for f in findings]
    pirads, marks = read_study(phantom, profile.name, reader_rng)
    return SynthStudy(profile.name, patient_id, study_id, images, gland_img, lesion_img, findings,
                      clinical, grids, in_mask, list(phantom.lesions), pirads, marks,
                      [drawn[id(les)] for les in phantom.lesions])  # fmt: skip


def _dwi(profile, rng, phantom, grid: Grid, distortion, bias_params):
    width = 0.3 * float(np.prod(grid.spacing) ** (1 / 3))
    (s0, adc_ref), _, _, (X, Y, Z) = sample_phantom(phantom, grid, (1, 2), width, distortion)
    b = float(profile.b_value)
    adc_true = adc_ref * np.float32(np.exp(-KURTOSIS_DROP * (b - 1000.0) / 1000.0)) * 1e-6
    sigma = 0.8 / profile.snr_dwi
    n_avg = max(1.0, b / 500.0)  # more averages at high b, as protocols do
    s_low = _rician(rng, s0 * np.exp(-B_LOW * adc_true), sigma)
    s_high = _rician(rng, s0 * np.exp(-b * adc_true), sigma / np.sqrt(n_avg))
    bias = _bias(profile, bias_params, X, Y, Z, phantom)
    with np.errstate(divide="ignore", invalid="ignore"):
        adc = np.log(s_low / np.maximum(s_high, 1e-6)) / (b - B_LOW) * 1e6
    adc = np.where(s_low > 4.0 * sigma, np.clip(adc, 0.0, 4000.0), 0.0)  # scanner noise threshold
    hbv = np.clip(s_high * bias * profile.dwi_scale, 0, 32767).astype(np.int16)
    if profile.adc_units.startswith("1e-3"):
        adc_arr = (adc / 1000.0).astype(np.float32)
    else:
        adc_arr = np.round(adc).astype(np.int16)
    return {"adc": grid.image(adc_arr), "hbv": grid.image(hbv)}
