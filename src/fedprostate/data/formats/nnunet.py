"""nnU-Net raw dataset reader (``nnUNet_raw/DatasetXXX_Name``, as PI-CAI's baselines use it).

Layout::

    dataset.json                          channel_names {"0": "T2W", "1": "ADC", "2": "HBV"},
                                          labels {"background": 0, "lesion": 1}, file_ending
    imagesTr/<case>_0000<file_ending>     one file per channel (4-digit channel index)
    labelsTr/<case><file_ending>          csPCa lesion mask, on the T2 (channel) grid
    imagesTs/<case>_0000<file_ending>     optional: test cases without labels

Channels are matched to T2 / ADC / high-b DWI by their names in ``dataset.json`` (``T2``,
``T2W``; ``ADC``; ``HBV``, ``DWI``, ``B1400`` ...), so any channel order works. An optional
``dataset`` entry of dataset.json ({case: {"images": [...], "label": ...}}, paths relative to
the dataset folder) replaces the folder scan, as in nnU-Net. Site = dataset.json ``name`` (else
the folder name); patient_id = study_id = the case name; a case of PI-CAI's ``<pid>_<sid>``
form keeps both. Findings come from reading, never from the label: a site's radiology findings
table given as ``findings=PATH`` (``findings_table``), else the label-free proposals of
``data/proposals`` labelled by the lesion label (every foreground value is csPCa, as in PI-CAI's
binary nnU-Net labels); negatives are sampled inside the central third of the T2 field of view,
as for PI-CAI without a gland mask. Case label = any lesion voxel; cases from ``imagesTs`` have
no label (organ mode or prediction only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import SimpleITK as sitk  # noqa: N813

from fedprostate.data.checks import mask_on_t2
from fedprostate.data.formats.base import (
    DataFormatError,
    StudyRef,
    label_from_mask,
    read_image,
    sample_negatives,
    study_rng,
)
from fedprostate.data.formats.findings_table import read_table, study_findings, unknown_rows
from fedprostate.data.proposals import propose
from fedprostate.data.study import SEQUENCES, Study, StudyError

NAME = "nnunet"
CHANNEL_ALIASES = {
    "t2w": ("t2", "t2w", "t2_tra", "t2w_tra"),
    "adc": ("adc",),
    "hbv": ("hbv", "dwi", "highb", "high_b", "b1400", "b1500", "b2000", "b1000", "b800"),
}
_CASE = re.compile(r"^(?P<pid>[^_]+)_(?P<sid>[^_]+)$")


def detect(src: Path) -> bool:
    return (src / "dataset.json").is_file() and (src / "imagesTr").is_dir()


def read_dataset_json(src: Path) -> dict:
    path = src / "dataset.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(doc.get("channel_names"), dict):
        raise DataFormatError(f"{path}: no channel_names (nnU-Net v2 dataset.json)")
    return doc


def channel_map(doc: dict, where: str) -> dict[str, int]:
    """Sequence (t2w / adc / hbv) -> channel index, from dataset.json's channel names."""
    found: dict[str, int] = {}
    for index, name in doc["channel_names"].items():
        key = re.sub(r"[\s\-]", "_", str(name).strip().lower())
        for seq, aliases in CHANNEL_ALIASES.items():
            if key in aliases:
                if seq in found:
                    raise DataFormatError(
                        f"{where}: two channels are {seq} ({doc['channel_names']})"
                    )
                found[seq] = int(index)
    missing = [s for s in SEQUENCES if s not in found]
    if missing:
        raise DataFormatError(
            f"{where}: channel_names {doc['channel_names']} lack {missing} "
            f"(names understood: {CHANNEL_ALIASES})"
        )
    return found


def _ids(case: str) -> tuple[str, str]:
    m = _CASE.match(case)
    return (m["pid"], m["sid"]) if m else (case, case)


def _ref(src: Path, site: str, case: str, images: dict[str, Path], label: Path | None) -> StudyRef:
    pid, sid = _ids(case)
    paths = {seq: str(p) for seq, p in images.items()}
    if label is not None:
        paths["lesion"] = str(label)
    return StudyRef(NAME, site, pid, sid, paths, row={"case": case}, finding_source="proposal")


def list_refs(src: Path, findings: str = "auto", **opts) -> tuple[list[StudyRef], list[StudyError]]:
    refs, errors = _list(src)
    if findings == "none":
        for ref in refs:
            ref.finding_source = "none"
    elif findings not in ("auto", "proposals"):  # the site's radiology table
        path = Path(findings)
        if not path.is_file():
            raise DataFormatError(f"--findings {findings}: no such findings table")
        table = read_table(path)
        for ref in refs:
            ref.finding_source = "reader"
            ref.findings = table.rows.get((ref.patient_id, ref.study_id), [])
            ref.paths["findings"] = str(path)
        errors += unknown_rows(table, {(r.patient_id, r.study_id) for r in refs})
    return refs, errors


def _list(src: Path) -> tuple[list[StudyRef], list[StudyError]]:
    doc = read_dataset_json(src)
    channels = channel_map(doc, str(src / "dataset.json"))
    ending = doc.get("file_ending", ".nii.gz")
    site = str(doc.get("name") or src.name)
    refs, errors = [], []
    if isinstance(doc.get("dataset"), dict):  # explicit case list overrides the folder scan
        for case, entry in sorted(doc["dataset"].items()):
            files = [src / p for p in entry.get("images", [])]
            if len(files) <= max(channels.values()):
                errors.append(StudyError(case, "dataset.json lists too few images", src))
                continue
            label = src / entry["label"] if entry.get("label") else None
            images = {seq: files[i] for seq, i in channels.items()}
            refs.append(_ref(src, site, case, images, label))
        return refs, errors
    for folder, labels in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        cases = sorted(
            {p.name[: -len(ending) - 5] for p in (src / folder).glob(f"*_[0-9][0-9][0-9][0-9]{ending}")}
        ) if (src / folder).is_dir() else []  # fmt: skip
        for case in cases:
            images = {seq: src / folder / f"{case}_{i:04d}{ending}" for seq, i in channels.items()}
            absent = [seq for seq, p in images.items() if not p.exists()]
            if absent:
                errors.append(StudyError(case, f"missing channel(s) {absent}", src / folder))
                continue
            label = src / labels / f"{case}{ending}" if labels else None
            if label is not None and not label.exists():
                errors.append(StudyError(case, "no label in labelsTr", label))
                continue
            refs.append(_ref(src, site, case, images, label))
    return refs, errors


def load(ref: StudyRef, seed: int = 0, negatives: int = 2, **_) -> Study:
    pid = ref.patient_id
    images = {seq: read_image(ref.paths[seq], pid, seq) for seq in SEQUENCES}
    t2 = images["t2w"]
    lesion, case_label = None, None
    if "lesion" in ref.paths:
        mask = read_image(ref.paths["lesion"], pid, "label")
        lesion = mask_on_t2(
            sitk.Cast(mask > 0, sitk.sitkUInt8), t2, pid, ref.paths["lesion"], "label",
            also={"adc": images["adc"]},
        )  # fmt: skip
        case_label = int(sitk.GetArrayViewFromImage(lesion).any())
    study = Study(ref.site, pid, ref.study_id, images, lesion_mask=lesion, case_label=case_label,
                  source_paths={k: v for k, v in ref.paths.items() if Path(v).exists()})  # fmt: skip

    def label_by_mask(finding):
        if lesion is None:
            raise StudyError(pid, "an unlabelled case (imagesTs) cannot label its findings")
        return label_from_mask(finding, lesion)

    findings = []
    if ref.finding_source == "reader":
        findings, rejected = study_findings(
            ref.findings, pid, ref.paths["findings"], t2, None, case_label, label_by_mask
        )
        study.rejected_findings = [(e.finding_id, e.reason) for e in rejected]
    elif ref.finding_source == "proposal" and lesion is not None:
        findings = [label_by_mask(f) for f in propose(study)]
    if lesion is not None:
        findings += sample_negatives(t2, None, lesion, negatives, study_rng(seed, ref.key))
    study.findings = findings
    return study
