"""Sanity of the synthetic task: realistic difficulty for the ADC rule, and sites that really differ."""

import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the library's own convention)
from typer.testing import CliRunner

from fedprostate.data.synth.exam import generate_study
from fedprostate.data.synth.federation import patient_rng, plan_site, synthesize
from fedprostate.data.synth.sites import make_site_profiles
from fedprostate.data.synth.summary import (
    ROI_RADIUS_MM,
    adc_rule_scores,
    adc_to_micro,
    mean_in_ball,
    rule_auroc,
    summarize_raw,
)


def _fast_adc_rule(per_site: int, seed: int = 0):
    """Mean ADC in a 3 mm ROI at each radiologist mark over every site (the clinical question),
    ADC-only generation (no T2, no files)."""
    scores, labels = [], []
    for s, prof in enumerate(make_site_profiles(17, 2040)):
        positive, _ = plan_site(prof, s, seed)
        for p in range(per_site):
            st = generate_study(
                prof, patient_rng(seed, s, p), bool(positive[p]), "x", "y", ("adc",)
            )
            arr = adc_to_micro(st.images["adc"], prof.adc_units)
            for m in st.marks:
                scores.append(mean_in_ball(st.images["adc"], arr, m.center, ROI_RADIUS_MM))
                labels.append(int(m.isup >= 2))
    return np.array(scores), np.array(labels)


def test_adc_rule_auroc_on_the_radiologists_findings_is_realistic_not_trivial():
    scores, labels = _fast_adc_rule(per_site=30)
    assert len(labels) >= 400 and 100 <= labels.sum() <= len(labels) - 100
    result = rule_auroc(scores, labels, shuffles=300)
    assert 0.70 <= result["auroc"] <= 0.85, result  # literature range for ADC alone
    assert abs(result["shuffled"] - 0.5) <= 0.05, result


def test_fast_path_matches_written_files_and_rule_on_files(tmp_path):
    out = synthesize(tmp_path, sites=4, patients=40, seed=0, preset="small").out
    # The ADC-only path reproduces the written ADC exactly (separate noise streams per sequence).
    prof = make_site_profiles(4, 40, "small")[1]
    positive, _ = plan_site(prof, 1, 0)
    st = generate_study(prof, patient_rng(0, 1, 0), bool(positive[0]), "x", "y", ("adc",))
    pid = 10000 + make_site_profiles(4, 40, "small")[0].n_patients
    written = sitk.ReadImage(
        str(out / "images" / str(pid) / f"{pid}_{1000000 + pid - 10000}_adc.mha")
    )
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(st.images["adc"])
    )
    scores, labels, _ = adc_rule_scores(out)  # the radiologist's marks, read from the files
    assert len(labels) >= 25 and 0 < labels.sum() < len(labels)
    assert rule_auroc(scores, labels)["auroc"] > 0.6  # the signal survives writing and reading
    everything, truth, _ = adc_rule_scores(out, which="biopsied")
    assert len(truth) > len(labels)  # pathology knows lesions the radiologist did not mark


def test_sites_differ_in_intensity_prevalence_and_adc_scale():
    profs = make_site_profiles(17, 2040)
    nij, bos, tok, zwo = profs[0], profs[1], profs[2], profs[3]
    prevalences = {}
    for s, prof in enumerate(profs):
        positive, _ = plan_site(prof, s, 0)
        prevalences[prof.name] = positive.mean()
        assert 0.15 <= prof.prevalence <= 0.60
        assert (
            abs(positive.mean() - prof.prevalence) <= 1.0 / prof.n_patients
        )  # exact up to rounding
    assert len({round(v, 2) for v in prevalences.values()}) >= 12
    t2 = {}
    for prof, s in ((nij, 0), (bos, 1)):
        vals = [np.median(sitk.GetArrayViewFromImage(
                    generate_study(prof, patient_rng(0, s, p), False, "x", "y").images["t2w"]))
                for p in range(3)]  # fmt: skip
        t2[prof.name] = np.median(vals)
    assert t2["na_boston"] > 1.6 * t2["eu_nijmegen"]  # scale 2200 vs 900 shows in the files
    # Non-Gaussian diffusion: a b=2000 site measures lower ADC than a b=800 site in healthy PZ/TZ.
    med = {}
    for prof, s in ((tok, 2), (zwo, 3)):
        vals = []
        for p in range(4):
            st = generate_study(prof, patient_rng(0, s, p), False, "x", "y", ("adc",))
            arr = adc_to_micro(st.images["adc"], prof.adc_units)
            vals.append(np.median(arr[(arr > 500) & (arr < 2500)]))
        med[prof.name] = np.median(vals)
    assert med["asia_tokyo"] < 0.9 * med["eu_zwolle"]


def test_sizes_are_heavy_tailed_and_sum():
    profs = make_site_profiles(17, 2040)
    sizes = [p.n_patients for p in profs]
    assert sum(sizes) == 2040 and min(sizes) >= 30 and 300 <= max(sizes) <= 450
    assert {p.region for p in profs} == {"NA", "EU", "ASIA"}
    assert all(800 <= p.b_value <= 2000 and 0.3 <= p.t2_inplane_mm <= 0.8 for p in profs)
    small = make_site_profiles(5, 100, "small")
    assert sum(p.n_patients for p in small) == 100
    with pytest.raises(ValueError, match="sites"):
        make_site_profiles(18, 2040)


def test_cli_synth_and_summary(tmp_path):
    from fedprostate.cli import app

    runner = CliRunner()
    out = tmp_path / "raw"
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--preset", "small", "--sites", "2",
                              "--patients", "6"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "summary", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "summary.png").stat().st_size > 10_000
    result = summarize_raw(out)
    assert [r["patients"] for r in result["sites"]] == [3, 3]
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--layout", "nifti"])
    assert bad.exit_code != 0 and "layout" in bad.output


def test_summary_dispatches_to_cache_summary(tmp_path, monkeypatch):
    from fedprostate.cli import app

    calls = []
    fake = types.ModuleType("fedprostate.data.cache")
    fake.summarize_cache = lambda path, **_: calls.append(path)
    monkeypatch.setitem(sys.modules, "fedprostate.data.cache", fake)
    (tmp_path / "index.csv").write_text("row,site\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["data", "summary", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert calls == [tmp_path]
