"""Integration: synth (PI-CAI layout) -> data prepare -> cache, checked against truth/findings.csv."""

import csv
from collections import Counter

import numpy as np
import pytest

from fedprostate.data.cache import CropDataset, load_index, load_rejected
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


def test_lesion_cache_matches_truth(raw, tmp_path):
    report = prepare(raw, tmp_path / "c", crop=32, progress=False)
    sheet = read(raw / "labels/clinical_information/marksheet.csv")
    truth = read(raw / "truth/findings.csv")
    in_mask = Counter(
        (t["patient_id"], t["study_id"])
        for t in truth
        if t["clinsig"] == "1" and t["in_mask"] == "1"
    )
    positives = {(m["patient_id"], m["study_id"]) for m in sheet if m["case_csPCa"] == "YES"}
    case_only = positives - set(in_mask)  # positive cases whose mask is empty
    assert report.listed == len(sheet) and report.kept == len(sheet) - len(case_only)
    rejected = load_rejected(tmp_path / "c")
    assert {(r["patient_id"], r["study_id"]) for r in rejected} == case_only
    assert all("excluded from lesion mode" in r["reason"] for r in rejected)

    rows = load_index(tmp_path / "c")
    got = Counter((r["patient_id"], r["study_id"]) for r in rows if r["source"] == "mask")
    # touching lesions may merge into one component: never more components than lesions
    assert all(got[k] <= n for k, n in in_mask.items()) and sum(got.values()) >= 0.8 * sum(
        in_mask.values()
    )
    assert all(r["label"] == 1 for r in rows if r["source"] == "mask")
    sampled = [r for r in rows if r["source"] == "sampled"]
    assert sampled and all(r["label"] == 0 for r in sampled)
    assert {r["site"] for r in rows} == {m["center"] for m in sheet}
    # restricted diffusion: mask lesions have lower ADC than sampled gland tissue
    les = np.median([r["adc_mean"] for r in rows if r["source"] == "mask"])
    assert les < np.median([r["adc_mean"] for r in sampled])
    psad = {(m["patient_id"], m["study_id"]): m["psad"] for m in sheet}
    for r in rows:  # psad copied from the marksheet (empty where the marksheet has none)
        expected = psad[(r["patient_id"], r["study_id"])]
        assert r["psad"] == (pytest.approx(float(expected)) if expected else None)
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
