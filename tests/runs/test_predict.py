"""``fedprostate predict`` on raw files reproduces the scores evaluation gave the same findings."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedprostate.data.cache import CropDataset, load_index
from fedprostate.data.prepare import prepare
from fedprostate.engine.loop import predict_scores
from fedprostate.engine.setup import build_model, load_communicated
from fedprostate.eval.calibration import apply_temperature
from fedprostate.runs.export import export_run
from fedprostate.runs.pooled import centralize
from fl_fixtures import tiny_config
from mri_fixtures import CENTRE, Phantom, picai_phantoms, write_generic, write_picai


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from fedprostate.cli import app; app()", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    raw = write_picai(root / "raw", picai_phantoms(n=10, seed=3))
    prepare(raw, root / "cache", crop=32, progress=False, fractions=(0.5, 0.25, 0.25))
    cfg = tiny_config(root / "cache", **{"fl.rounds": 1, "train.steps": 3})
    centralize(cfg, root / "run")
    export_run(root / "run", root / "bundle", formats=("bundle",), n_boot=20)
    return root, raw, cfg


def _cache_scores(root: Path, cfg, patient: str) -> dict[str, float]:
    """What evaluation computes: the run's model on the cached (float16) crops of one patient,
    calibrated with the run's validation-fitted temperature (as the bundle is)."""
    from safetensors.numpy import load_file

    bundle = build_model(cfg, fresh=True)
    load_communicated(bundle.ft, load_file(str(root / "run" / "model.safetensors")))
    rows = [r for r in load_index(root / "cache") if r["patient_id"] == patient]
    scores, _ = predict_scores(bundle.ft.model, CropDataset(root / "cache", rows))
    summary = json.loads((root / "run" / "summary.json").read_text(encoding="utf-8"))
    temperature = (summary.get("calibration") or {}).get("temperature", 1.0)
    scores = apply_temperature(scores, temperature)
    return {r["finding_id"]: float(s) for r, s in zip(rows, scores, strict=True)}


def test_predict_cli_on_raw_picai_study_matches_evaluation(trained, tmp_path):
    root, raw, cfg = trained
    patient = "10002"  # a lesion + two sampled negatives
    out = tmp_path / "pred"
    proc = _cli(
        "predict", "--model", str(root / "bundle"), "--study", str(raw / "images" / patient),
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    got = {r["finding_id"]: r["score"] for r in result["findings"]}
    expected = _cache_scores(root, cfg, patient)
    assert set(got) == set(expected) and len(got) == 3
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-3
    assert result["patients"][0]["patient_score"] == pytest.approx(max(got.values()))
    with (out / "predictions.csv").open(encoding="utf-8") as fh:
        assert {r["finding_id"] for r in csv.DictReader(fh)} == set(got)


def test_predict_plain_image_paths_and_coordinates(trained, tmp_path):
    root, raw, cfg = trained
    patient = "10004"
    key = f"{patient}_{1000004}"
    # the cached findings' world positions, as a reader would give them to a radiologist
    from fedprostate.data.formats.loose import resolve_studies

    study = resolve_studies(raw / "images" / patient, seed=0, negatives=2)[0]
    table = tmp_path / "findings.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "finding_id", "t2w", "adc", "hbv", "x", "y", "z"])
        for f in study.findings:
            seqs = [str(raw / "images" / patient / f"{key}_{s}.mha") for s in ("t2w", "adc", "hbv")]
            writer.writerow([patient, f.finding_id, *seqs, *f.world_mm])
    from fedprostate.runs.predict import predict

    result = predict(root / "bundle", findings=table)
    got = {r["finding_id"]: r["score"] for r in result["findings"]}
    expected = _cache_scores(root, cfg, patient)
    # the gland mask is not given here: ADC units are detected from the central field instead,
    # which gives the same factor on these phantoms, so scores still match
    assert set(got) == set(expected)
    assert max(abs(got[k] - expected[k]) for k in got) < 1e-3


def test_predict_unreadable_study_exits_2_naming_the_file(trained, tmp_path):
    root, raw, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    for seq in ("t2w", "adc", "hbv"):
        (bad / f"x_{seq}.mha").write_bytes(b"not an image")
    proc = _cli("predict", "--model", str(root / "bundle"), "--study", str(bad))
    assert proc.returncode == 2
    assert "x_t2w.mha" in proc.stdout + proc.stderr
    # a study with images but no finding to score in lesion mode is a clear error too
    good = tmp_path / "nofind"
    good.mkdir()
    for seq in ("t2w", "adc", "hbv"):
        src = raw / "images" / "10001" / f"10001_1000001_{seq}.mha"
        (good / src.name).write_bytes(src.read_bytes())
    proc = _cli("predict", "--model", str(root / "bundle"), "--study", str(good))
    assert proc.returncode == 2
    assert "--findings" in proc.stdout + proc.stderr


def _generic_root(path: Path, names: list[str]) -> Path:
    """A generic-CSV dataset: g1 (lesion), g2 (benign finding), g3 (a row without finding),
    g4 (benign finding, T2 truncated); only the studies in ``names``."""
    everyone = {
        "g1": Phantom("g1", "s1", "hospA", lesions=[(tuple(CENTRE + [2.0, 2.0, 0]), 4.0, 3)]),
        "g2": Phantom("g2", "s2", "hospB", benign=[(tuple(CENTRE - 5.0), "TZ")], seed=2),
        "g3": Phantom("g3", "s3", "hospB", seed=3),
        "g4": Phantom("g4", "s4", "hospA", benign=[(tuple(CENTRE - 5.0), "TZ")], seed=4),
    }
    root = write_generic(path, [everyone[n] for n in names])
    if "g3" in names:  # a study listed without a finding (organ mode only)
        with (root / "findings.csv").open("a", newline="", encoding="utf-8") as fh:
            paths = [f"g3/{s}.nii.gz" for s in ("t2w", "adc", "hbv")]
            csv.writer(fh).writerow(["g3", "s3", "hospB", *paths, "", "", "", "0", "", "", ""])
    if "g4" in names:
        t2 = root / "g4" / "t2w.nii.gz"
        t2.write_bytes(t2.read_bytes()[: t2.stat().st_size // 2])
    return root


def test_predict_over_a_dataset_root_skips_studies_it_cannot_score(trained, tmp_path):
    """No finding or unreadable: listed as skipped, the rest scored, exit 0; exit 2 only when
    nothing at all could be scored."""
    root, _, _ = trained
    raw = _generic_root(tmp_path / "gen", ["g1", "g2", "g3", "g4"])
    out = tmp_path / "pred"
    proc = _cli("predict", "--model", str(root / "bundle"), "--study", str(raw), "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert {p["patient_id"] for p in result["patients"]} == {"g1", "g2"}
    skipped = {s["patient_id"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"g3", "g4"}
    assert "no findings to score" in skipped["g3"]
    assert "corrupt or truncated t2w image" in skipped["g4"]
    assert "skipped patient g3" in proc.stderr and "skipped patient g4" in proc.stderr
    with (out / "skipped.csv").open(encoding="utf-8") as fh:
        assert {r["patient_id"] for r in csv.DictReader(fh)} == {"g3", "g4"}
    only_unscorable = _generic_root(tmp_path / "none", ["g3"])
    proc = _cli("predict", "--model", str(root / "bundle"), "--study", str(only_unscorable))
    assert proc.returncode == 2
    assert "nothing could be scored" in proc.stderr and "--findings" in proc.stderr


def test_bundle_scores_are_deterministic_probabilities(trained):
    from fedprostate.models.bundle import load_bundle, predict_proba

    root, _, _ = trained
    model, meta = load_bundle(root / "bundle")
    x = np.random.default_rng(0).normal(0.5, 0.2, (4, 3, 32, 32)).astype(np.float32)
    p = predict_proba(model, x)
    assert p.shape == (4,) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_array_equal(p, predict_proba(model, x))


def test_a_three_slice_cache_trains_exports_and_predicts_end_to_end(tmp_path):
    """--slices 3 writes 9-channel crops: the model, the bundle, ONNX and predict all follow."""
    raw = write_picai(tmp_path / "raw", picai_phantoms(n=6, seed=5))
    prepare(
        raw, tmp_path / "cache", crop=32, n_slices=3, progress=False, fractions=(0.5, 0.25, 0.25)
    )
    cfg = tiny_config(tmp_path / "cache", **{"fl.rounds": 1, "train.steps": 2})
    assert build_model(cfg, fresh=True).ft.model.patch_embed.proj.in_channels == 9
    centralize(cfg, tmp_path / "run")
    meta = export_run(tmp_path / "run", tmp_path / "bundle", formats=("bundle", "onnx"), n_boot=20)
    assert len(meta["channel_names"]) == 9
    assert meta["onnx"]["parity_max_abs_logit_diff_vs_unmerged"] < 1e-4
    patient = load_index(tmp_path / "cache")[0]["patient_id"]
    proc = _cli(
        "predict", "--model", str(tmp_path / "bundle"), "--study", str(raw / "images" / patient),
        "--out", str(tmp_path / "pred"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    got = json.loads((tmp_path / "pred" / "predictions.json").read_text(encoding="utf-8"))
    expected = _cache_scores(tmp_path, cfg, patient)
    scores = {r["finding_id"]: r["score"] for r in got["findings"]}
    assert set(scores) == set(expected)
    assert max(abs(scores[k] - expected[k]) for k in scores) < 1e-3
