"""Integration: synth (PI-CAI layout) -> data prepare -> cache, checked against truth/findings.csv."""

import csv

import numpy as np
import pytest

from fedprostate.data.cache import CropDataset, load_index, load_patients, load_rejected
from fedprostate.data.prepare import prepare

pytestmark = pytest.mark.slow


def read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    synth = pytest.importorskip("fedprostate.data.synth.federation")
    out = tmp_path_factory.mktemp("synth") / "raw"
    synth.synthesize(out, sites=3, patients=30, seed=0, preset="small", layout="picai", unlabeled=0)
    return out


def test_lesion_cache_holds_the_radiologists_marks_labelled_by_biopsy(raw, tmp_path):
    report = prepare(raw, tmp_path / "c", crop=32, progress=False)
    sheet = read(raw / "labels/clinical_information/marksheet.csv")
    truth = read(raw / "truth/findings.csv")
    marked = {(t["patient_id"], t["mark_id"]): t for t in truth if t["mark_id"]}
    # every study is kept (the table carries biopsy outcomes: no case is unlabellable)
    assert report.listed == report.kept == len(sheet) and report.rejected == 0
    assert not load_rejected(tmp_path / "c")

    rows = load_index(tmp_path / "c")
    readers = [r for r in rows if r["source"] == "reader"]
    # exactly the marks: no missed lesion, no mask component, each labelled by its biopsy
    assert {(r["patient_id"], r["finding_id"]) for r in readers} == set(marked)
    for r in readers:
        t = marked[(r["patient_id"], r["finding_id"])]
        assert r["label"] == int(t["clinsig"]) and r["pirads"] == int(t["pirads"]) >= 3
    missed = [t for t in truth if t["clinsig"] == "1" and not t["mark_id"]]
    assert {(t["patient_id"], t["finding_id"]) for t in missed}.isdisjoint(
        {(r["patient_id"], r["finding_id"]) for r in rows}
    )
    sampled = [r for r in rows if r["source"] == "sampled"]
    assert sampled and all(r["label"] == 0 for r in sampled)
    assert {r["site"] for r in rows} == {m["center"] for m in sheet}
    # restricted diffusion: marked cancers have lower ADC than marked mimics
    cancer = np.median([r["adc_mean"] for r in readers if r["label"]])
    assert cancer < np.median([r["adc_mean"] for r in readers if not r["label"]])
    psad = {(m["patient_id"], m["study_id"]): m["psad"] for m in sheet}
    for r in rows:  # psad copied from the marksheet (empty where the marksheet has none)
        expected = psad[(r["patient_id"], r["study_id"])]
        assert r["psad"] == (pytest.approx(float(expected)) if expected else None)
    patients = load_patients(tmp_path / "c")
    assert len(patients) == len(sheet)  # patients with no mark are patients too
    assert sum(p["n_findings"] == 0 for p in patients) == len(sheet) - len(
        {r["patient_id"] for r in readers}
    )
    x, _ = CropDataset(tmp_path / "c", rows)[0]
    assert x.shape == (3, 32, 32) and bool(x.isfinite().all())


def test_organ_cache_keeps_every_study_with_case_labels(raw, tmp_path):
    report = prepare(raw, tmp_path / "o", mode="organ", crop=32, progress=False)
    sheet = {
        (m["patient_id"], m["study_id"]): int(m["case_csPCa"] == "YES")
        for m in read(raw / "labels/clinical_information/marksheet.csv")
    }
    assert report.kept == len(sheet) and report.rejected == 0
    rows = load_index(tmp_path / "o")
    assert {(r["patient_id"], r["study_id"]) for r in rows} == set(sheet)
    assert all(
        r["label"] == r["case_label"] == sheet[(r["patient_id"], r["study_id"])] for r in rows
    )
    splits = {}
    for r in rows:
        assert splits.setdefault(r["patient_id"], r["split"]) == r["split"]
