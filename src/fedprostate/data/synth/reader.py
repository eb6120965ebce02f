"""The reading radiologist: which findings a site's radiologist marks, and their PI-RADS score.

A real site does not know which lesions are cancer; it knows what its radiologist marked on the
MRI (PI-RADS v2.1) and what the targeted biopsy of each mark found. This module plays that
radiologist on a synthetic study. It never looks at a lesion's kind or grade: it scores what is
*visible* — how much the lesion restricts diffusion and darkens T2 against its own zone, its
size, whether it is circumscribed by a capsule, whether its margin is diffuse — and adds reader
noise. Every lesion (biopsied or not, cancer or mimic) is scored; the marks are the lesions with
PI-RADS ≥ 3 plus, now and then, a false alarm on normal tissue. The biopsy outcome of a mark is
its true ISUP grade (0 for normal tissue and benign mimics).

Scoring (PI-RADS v2.1: DWI is dominant in the peripheral zone, T2 in the transition zone)::

    z = w_adc·restriction + w_t2·t2_darkening + w_size·log(diameter / 10 mm)
        − w_capsule·[encapsulated] − w_diffuse·[diffuse margin] + site bias + N(0, σ_reader)

with restriction = 1 − ADC_lesion / ADC_zone and t2_darkening = 1 − T2_lesion / T2_zone. PI-RADS
is z cut at ``CUTS``; a score of 4 becomes 5 when the lesion is ≥ 15 mm or reads as
extraprostatic extension (z ≥ ``EPE_Z``). The weights, cuts, noise
and false-alarm rate were fixed from the literature before any model was trained on the data:
PI-RADS ≥ 3 detects 85–95 % of csPCa (Westphalen et al., Radiology 2020; Oerther et al., PCAN
2022) and the share of csPCa rises with the score (≈ 10–20 % at PI-RADS 3, 40–60 % at 4,
70–90 % at 5). ``tests/data/test_synth_reader.py`` checks the generator lands in these ranges.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fedprostate.data.synth.anatomy import Lesion, Phantom

# (w_adc, w_t2, w_size) per zone: DWI dominant in PZ (and AS), T2 dominant in TZ.
WEIGHTS = {"PZ": (9.0, 2.0, 1.2), "AS": (9.0, 2.0, 1.2), "TZ": (4.5, 5.0, 1.2)}
W_CAPSULE = 1.5  # an encapsulated (circumscribed) nodule reads as BPH: PI-RADS 1-2 in TZ
W_DIFFUSE = 1.6  # an indistinct, diffuse, band-like area reads as prostatitis (PI-RADS 2)
DIFFUSE_EDGE_MM = 1.5
READER_SD = 0.55  # reader noise (inter-reader kappa for PI-RADS ≈ 0.4-0.6)
SITE_BIAS_SD = 0.25  # hospitals read a little more or less aggressively
CUTS = (0.9, 1.9, 2.5)  # z → PI-RADS 1..4
LARGE_MM = 15.0  # PI-RADS 4 → 5 at ≥ 1.5 cm ...
EPE_Z = 5.0  # ... or when the finding is so conspicuous that it reads as extraprostatic extension
FALSE_ALARM_RATE = 0.12  # studies with one PI-RADS 3 mark on normal tissue
MARK_THRESHOLD = 3


@dataclass(frozen=True)
class Mark:
    """One finding the radiologist marked (targeted biopsy outcome in ``isup``)."""

    center: np.ndarray  # world mm
    pirads: int
    isup: int  # biopsy outcome; 0 = benign
    zone: str
    lesion: Lesion | None  # the lesion under the mark; None for a false alarm on normal tissue


def site_bias(site: str) -> float:
    """A fixed reading tendency per hospital (deterministic from its name)."""
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    return float(rng.normal(0.0, SITE_BIAS_SD))


def visible_features(lesion: Lesion, phantom: Phantom) -> dict[str, float]:
    """What a reader sees of a lesion, relative to the zone it sits in (never its kind)."""
    zone_t2, _, zone_adc = phantom.tz_props if lesion.zone == "TZ" else phantom.pz_props
    t2, _, adc = lesion.props
    return {
        "restriction": float(np.clip(1.0 - adc / zone_adc, -1.0, 1.0)),
        "t2_darkening": float(np.clip(1.0 - t2 / zone_t2, -1.0, 1.0)),
        "diameter_mm": float(2.0 * lesion.radius_mm),
        "encapsulated": float(lesion.rim_mm > 0),
        "diffuse": float(lesion.edge_mm >= DIFFUSE_EDGE_MM),
    }


def suspicion(features: dict[str, float], zone: str, bias: float, noise: float) -> float:
    w_adc, w_t2, w_size = WEIGHTS.get(zone, WEIGHTS["PZ"])
    return (
        w_adc * features["restriction"]
        + w_t2 * features["t2_darkening"]
        + w_size * np.log(max(features["diameter_mm"], 1.0) / 10.0)
        - W_CAPSULE * features["encapsulated"]
        - W_DIFFUSE * features["diffuse"]
        + bias
        + noise
    )


def pirads_of(z: float, diameter_mm: float) -> int:
    score = 1 + int(np.searchsorted(CUTS, z, side="right"))
    return 5 if score == 4 and (diameter_mm >= LARGE_MM or z >= EPE_Z) else score


def read_study(
    phantom: Phantom, site: str, rng: np.random.Generator
) -> tuple[list[int], list[Mark]]:
    """PI-RADS of every lesion (in ``phantom.lesions`` order) and the radiologist's marks."""
    bias = site_bias(site)
    scores, marks = [], []
    for lesion in phantom.lesions:
        features = visible_features(lesion, phantom)
        z = suspicion(features, lesion.zone, bias, float(rng.normal(0.0, READER_SD)))
        score = pirads_of(z, features["diameter_mm"])
        scores.append(score)
        if score >= MARK_THRESHOLD:
            marks.append(Mark(lesion.center.copy(), score, lesion.isup, lesion.zone, lesion))
    if rng.random() < FALSE_ALARM_RATE:
        spot = _normal_tissue_point(phantom, rng)
        if spot is not None:
            marks.append(Mark(spot, MARK_THRESHOLD, 0, phantom.zone_at(spot), None))
    return scores, marks


def _normal_tissue_point(phantom: Phantom, rng: np.random.Generator) -> np.ndarray | None:
    """A point inside the gland at least 10 mm from every lesion (a false alarm's location)."""
    a, b, c = phantom.gland_radii
    for _ in range(200):
        point = phantom.tilt @ (rng.uniform(-1, 1, size=3) * [a, b, c] * 0.8) + phantom.center
        if phantom.zone_at(point) not in ("PZ", "TZ"):
            continue
        if all(
            np.linalg.norm(point - les.center) > les.radius_mm + 10.0 for les in phantom.lesions
        ):
            return point
    return None
