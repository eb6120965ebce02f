"""The one internal representation every reader produces and everything downstream consumes.

Coordinates are world millimetres in ITK/DICOM LPS convention (what SimpleITK reports for
``TransformIndexToPhysicalPoint``), so a finding position means the same point in every sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from fedprostate.config import FINDING_SOURCES

SEQUENCES = ("t2w", "adc", "hbv")  # channel order of every crop: (T2, ADC, high-b DWI)
ZONES = ("PZ", "TZ", "AS", "SV", "unknown")
# Where a finding comes from (config.FINDING_SOURCES). "reader": a location a radiologist marked
# (a findings table); "proposal": found by the label-free candidate rule (data/proposals.py);
# "sampled": random normal gland tissue, an optional extra training negative, never in a headline
# metric; "organ": a whole-gland slice (organ mode). A ground-truth mask may label a finding,
# never place one.


def printable(text: str) -> str:
    """``text`` on one line and encodable as UTF-8: control characters and undecodable bytes
    (read with ``surrogateescape``) become backslash escapes; everything else is kept."""
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class StudyError(ValueError):
    """A study that cannot be used. The message names the file and the patient.

    Identifiers, reasons and paths are kept printable (one line, valid UTF-8) so that a hostile
    or broken input can neither split the message nor break the ``rejected.csv`` writer."""

    def __init__(self, patient_id: str, reason: str, path: str | Path | None = None):
        self.patient_id = printable(patient_id)
        self.reason = printable(reason)
        self.path = printable(path) if path is not None else ""
        where = f" ({self.path})" if self.path else ""
        super().__init__(f"patient {self.patient_id}{where}: {self.reason}")


@dataclass(frozen=True)
class Finding:
    """One lesion-level sample: a reader's mark, a proposal or a sampled normal location."""

    finding_id: str
    world_mm: tuple[float, float, float]  # LPS world coordinate of the finding centre
    zone: str = "unknown"
    isup: int = 0  # 0 = no cancer / benign; 1..5 ISUP grade group
    clinsig: bool = False  # csPCa = ISUP >= 2
    source: str = "reader"  # FINDING_SOURCES
    radius_mm: float | None = None  # approximate lesion radius when known
    pirads: int | None = None  # the radiologist's PI-RADS v2.1 score, when the table gives one

    def __post_init__(self) -> None:
        if self.source not in FINDING_SOURCES:
            raise ValueError(
                f"finding {self.finding_id}: source {self.source!r} not in {FINDING_SOURCES}"
            )
        if not 0 <= int(self.isup) <= 5:
            raise ValueError(f"finding {self.finding_id}: ISUP {self.isup} outside 0..5")
        if self.pirads is not None and not 1 <= int(self.pirads) <= 5:
            raise ValueError(f"finding {self.finding_id}: PI-RADS {self.pirads} outside 1..5")


@dataclass
class Study:
    """One bpMRI examination of one patient at one site, with geometry-carrying images."""

    site: str
    patient_id: str
    study_id: str
    images: dict[str, sitk.Image]  # keys: SEQUENCES
    findings: list[Finding] = field(default_factory=list)
    gland_mask: sitk.Image | None = None
    lesion_mask: sitk.Image | None = None
    case_label: int | None = None  # case-level csPCa (0/1) when known
    clinical: dict[str, float] = field(default_factory=dict)  # psa, psad, prostate_volume, age
    adc_units: str = "auto"  # "1e-6 mm2/s", "1e-3 mm2/s", "mm2/s" or auto-detect
    source_paths: dict[str, str] = field(default_factory=dict)
    # findings refused one by one (outside the volume, duplicated, contradicting the case label):
    # the study is kept, these go to rejected.csv with their finding id
    rejected_findings: list[tuple[str, str]] = field(default_factory=list)  # (finding_id, reason)

    @property
    def key(self) -> str:
        return f"{self.patient_id}_{self.study_id}"
