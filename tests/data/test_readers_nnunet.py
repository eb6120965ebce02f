"""nnU-Net raw reader on a generated ``DatasetXXX`` tree: channels by name, labels, imagesTs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from fedprostate.data.cache import load_index, load_meta
from fedprostate.data.formats.base import DataFormatError
from fedprostate.data.formats.registry import detect_format, list_studies, load_study
from fedprostate.data.prepare import prepare
from mri_fixtures import picai_phantoms

# channel order on purpose not T2/ADC/HBV: the reader must go by dataset.json's names
CHANNELS = {"0": "ADC", "1": "T2W", "2": "HBV"}
ORDER = {"adc": 0, "t2w": 1, "hbv": 2}


def write_nnunet(root: Path, phantoms, test_cases: int = 1, channels=CHANNELS) -> Path:
    """nnU-Net v2 raw layout; DWI channels resampled onto the T2 grid, as nnU-Net requires."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for k, p in enumerate(phantoms):
        folder = "imagesTs" if k >= len(phantoms) - test_cases else "imagesTr"
        case = f"{p.patient_id}_{p.study_id}"
        images = p.images()
        t2 = images["t2w"]
        for seq, index in ORDER.items():
            img = images[seq] if seq == "t2w" else sitk.Resample(images[seq], t2)
            sitk.WriteImage(img, str(root / folder / f"{case}_{index:04d}.nii.gz"))
        if folder == "imagesTr":
            label = sitk.Cast(p.lesion_mask() > 0, sitk.sitkUInt8)
            sitk.WriteImage(label, str(root / "labelsTr" / f"{case}.nii.gz"))
    doc = {"channel_names": channels, "labels": {"background": 0, "lesion": 1},
           "numTraining": len(phantoms) - test_cases, "file_ending": ".nii.gz",
           "name": "Dataset101_tiny"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    phantoms = picai_phantoms(n=6, seed=2)
    return write_nnunet(tmp_path_factory.mktemp("nn") / "Dataset101_tiny", phantoms), phantoms


def test_detected_and_listed_with_channels_by_name(tree):
    root, phantoms = tree
    assert detect_format(root) == "nnunet"
    fmt, refs, errors = list_studies(root)
    assert fmt == "nnunet" and errors == [] and len(refs) == 6
    ref = refs[0]
    assert ref.site == "Dataset101_tiny"
    assert (ref.patient_id, ref.study_id) == (phantoms[0].patient_id, phantoms[0].study_id)
    assert ref.paths["t2w"].endswith("_0001.nii.gz") and ref.paths["adc"].endswith("_0000.nii.gz")


def test_studies_carry_the_t2_grid_lesion_findings_and_case_labels(tree):
    root, phantoms = tree
    _, refs, _ = list_studies(root)
    by_id = {p.patient_id: p for p in phantoms}
    for ref in refs:
        study = load_study(ref, seed=0, negatives=2)
        p = by_id[study.patient_id]
        t2 = p.images()["t2w"]
        assert study.images["t2w"].GetOrigin() == pytest.approx(t2.GetOrigin())
        assert np.array_equal(
            sitk.GetArrayFromImage(study.images["t2w"]), sitk.GetArrayFromImage(t2)
        )
        lesions = [f for f in study.findings if f.clinsig]
        if ref.paths.get("lesion") is None:  # imagesTs: no label at all
            assert study.case_label is None and study.findings == []
            continue
        assert study.case_label == p.case_label
        assert len(lesions) == len(p.lesions)
        for (world, _, _), f in zip(p.lesions, lesions, strict=True):
            assert np.linalg.norm(np.subtract(f.world_mm, world)) < 1.5
        assert sum(f.source == "sampled" for f in study.findings) == 2


def test_missing_channel_and_unknown_channel_names(tmp_path):
    root = write_nnunet(tmp_path / "a", picai_phantoms(n=2), test_cases=0)
    next((root / "imagesTr").glob("*_0002.nii.gz")).unlink()
    _, refs, errors = list_studies(root)
    assert len(refs) == 1 and "missing channel(s) ['hbv']" in str(errors[0])
    bad = write_nnunet(tmp_path / "b", picai_phantoms(n=2), channels={"0": "ADC", "1": "T2"})
    with pytest.raises(DataFormatError, match="lack \\['hbv'\\]"):
        list_studies(bad)


def test_dataset_entry_overrides_the_folder_scan(tmp_path):
    root = write_nnunet(tmp_path / "c", picai_phantoms(n=3), test_cases=0)
    doc = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    case = sorted(p.name[:-12] for p in (root / "imagesTr").glob("*_0000.nii.gz"))[0]
    doc["dataset"] = {case: {"images": [f"imagesTr/{case}_{i:04d}.nii.gz" for i in range(3)],
                             "label": f"labelsTr/{case}.nii.gz"}}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(doc))
    _, refs, _ = list_studies(root)
    assert [r.row["case"] for r in refs] == [case]


def test_prepare_writes_a_cache_from_nnunet_raw(tree, tmp_path):
    root, _ = tree
    report = prepare(root, tmp_path / "cache", crop=32, progress=False)
    # the imagesTs case has no label: lesion mode has nothing to crop there and says so
    assert report.format == "nnunet" and report.kept == 5 and report.rejected == 1
    assert "imagesTs" in report.reasons[0]
    assert load_meta(tmp_path / "cache")["format"] == "nnunet"
    rows = load_index(tmp_path / "cache")
    assert {r["site"] for r in rows} == {"Dataset101_tiny"} and sum(r["label"] for r in rows) > 0
