"""Crop cache layout and API, patient-level splits, partitions, unlabeled crops, CLI."""

import io
import json

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from rich.console import Console
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedprostate.data.cache import (
    INDEX_COLUMNS,
    CropDataset,
    load_index,
    load_meta,
    select,
    site_file,
    summarize_cache,
)
from fedprostate.data.prepare import prepare
from fedprostate.data.splits import assign_splits, partition
from fedprostate.data.unlabeled import extract_unlabeled_crops
from mri_fixtures import picai_phantoms, write_picai


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("c")
    write_picai(root / "raw", picai_phantoms(10, site_names=("siteA", "siteB")))
    report = prepare(
        root / "raw", root / "cache", crop=16, spacing=1.0, n_slices=3, seed=1, progress=False
    )
    return root / "cache", report


def test_layout_meta_index_and_site_tensors(cache):
    cache_dir, report = cache
    meta = load_meta(cache_dir)
    assert meta["mode"] == "lesion" and meta["crop"] == 16 and meta["n_slices"] == 3
    assert meta["channels"] == ["t2w", "adc", "hbv"] and meta["sites"] == ["siteA", "siteB"]
    assert meta["version"] == 2 and meta["format"] == "picai"
    header = (cache_dir / "index.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert tuple(header) == INDEX_COLUMNS
    rows = load_index(cache_dir)
    # one reader mark per study (5 csPCa lesions, 5 benign) + 2 sampled negatives each
    assert len(rows) == report.crops == 10 + 10 * 2
    assert {r["source"] for r in rows} == {"reader", "sampled"}
    assert sum(r["label"] for r in rows) == 5 and all(
        r["source"] == "reader" for r in rows if r["label"]
    )
    for site in meta["sites"]:
        crops = load_file(str(site_file(cache_dir, site)))["crops"]
        assert crops.dtype == np.float16 and crops.shape[1:] == (9, 16, 16)
        assert sorted(r["row"] for r in rows if r["site"] == site) == list(range(len(crops)))
    assert all(isinstance(r["label"], int) and isinstance(r["adc_mean"], float) for r in rows)
    assert (
        (cache_dir / "rejected.csv")
        .read_text(encoding="utf-8")
        .startswith("path,patient_id,study_id,finding_id,reason")
    )


def test_crop_dataset_items_match_site_file(cache):
    cache_dir, _ = cache
    rows = select(load_index(cache_dir), sites="siteB", split=["train", "val", "test"])
    ds = CropDataset(cache_dir, rows)
    assert len(ds) == len(rows) and ds.rows == rows
    x, y = ds[len(ds) - 1]
    assert x.dtype == torch.float32 and x.shape == (9, 16, 16) and y.dtype == torch.int64
    raw = load_file(str(site_file(cache_dir, "siteB")))["crops"][rows[-1]["row"]]
    np.testing.assert_array_equal(x.numpy(), raw.astype(np.float32))
    assert int(y) == rows[-1]["label"]


def test_splits_by_patient_stratified():
    rows = [
        {"site": s, "patient_id": f"{s}{p}", "case_label": int(p % 3 == 0), "finding_id": f}
        for s in ("A", "B")
        for p in range(40)
        for f in ("x", "y")
    ]
    assign_splits(rows, seed=0)
    owner = {}
    for r in rows:
        assert owner.setdefault((r["site"], r["patient_id"]), r["split"]) == r["split"]
    for site in ("A", "B"):
        splits = [v for (s, _), v in owner.items() if s == site]
        assert [splits.count(x) for x in ("train", "val", "test")] == [24, 8, 8]
        for split in ("train", "val", "test"):
            pos = [owner[(site, f"{site}{p}")] == split for p in range(40) if p % 3 == 0]
            assert sum(pos) >= 2  # positives present in every split (14 positives per site)
    again = assign_splits([dict(r) for r in rows], seed=0)
    assert [r["split"] for r in again] == [r["split"] for r in rows]


@pytest.mark.parametrize("scheme", ["natural", "iid", "dirichlet", "loso"])
def test_partitions_never_cut_a_patient(scheme):
    rows = [
        {"site": s, "patient_id": f"{s}{p}", "case_label": int(p % 4 == 0), "split": "train"}
        for s in ("A", "B", "C")
        for p in range(30)
        for _ in range(2)
    ]
    parts = partition(rows, scheme=scheme, num_partitions=4, alpha=0.3, seed=2, holdout_site="B")
    seen = {}
    for client, client_rows in parts.items():
        for r in client_rows:
            assert seen.setdefault((r["site"], r["patient_id"]), client) == client
    total = sum(len(v) for v in parts.values())
    if scheme == "natural":
        assert sorted(parts) == ["A", "B", "C"] and total == len(rows)
    elif scheme == "loso":
        assert sorted(parts) == ["A", "C"] and total == 120
    else:
        assert len(parts) == 4 and total == len(rows) and all(parts.values())
    if scheme == "dirichlet":  # label skew: positive share differs between clients
        shares = [np.mean([r["case_label"] for r in v]) for v in parts.values()]
        assert max(shares) - min(shares) > 0.1


def test_summary_prints_sites_and_prevalence(cache):
    cache_dir, _ = cache
    buf = io.StringIO()
    stats = summarize_cache(cache_dir, console=Console(file=buf, width=120))
    text = buf.getvalue()
    assert "siteA" in text and "siteB" in text and "prevalence" in text
    assert sum(s["patients"] for s in stats) == 10


def test_unlabeled_crops_from_images_only(tmp_path):
    root = write_picai(tmp_path / "raw", picai_phantoms(3))
    (root / "labels").rename(tmp_path / "hidden_labels")  # labels are never needed
    crops = extract_unlabeled_crops(root, crop=16, spacing=1.0, per_study=4, seed=0)
    assert crops.shape == (12, 3, 16, 16) and crops.dtype == np.float32
    assert np.isfinite(crops).all() and crops.std() > 0
    again = extract_unlabeled_crops(root, crop=16, spacing=1.0, per_study=4, seed=0)
    np.testing.assert_array_equal(crops, again)


def test_cli_prepare_reports_counts_and_strict_stops(tmp_path):
    import fedprostate.commands.data_prepare  # noqa: F401  (registers `data prepare`)
    from fedprostate.cli_app import app

    root = write_picai(tmp_path / "raw", picai_phantoms(4))
    bad = root / "images/10001/10001_1000001_adc.mha"
    image = sitk.ReadImage(str(bad))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32) * float("nan"), str(bad))
    args = ["data", "prepare", "--src", str(root), "--out", str(tmp_path / "c"), "--crop", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 studies listed, 3 kept, 1 rejected" in " ".join(result.output.split())
    assert (
        json.loads((tmp_path / "c/meta.json").read_text(encoding="utf-8"))["counts"]["rejected"]
        == 1
    )
    strict = CliRunner().invoke(app, [*args[:-3], str(tmp_path / "s"), "--strict"])
    assert strict.exit_code == 1 and "10001" in strict.output
    assert not (tmp_path / "s/index.csv").exists()
