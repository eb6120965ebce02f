"""Study runner: the plan, the shared reference arm, resumability, verdicts computed from data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fedprostate.config import RunConfig
from fedprostate.data.cache import load_index
from fedprostate.study import runner
from fedprostate.study.cells import REFERENCE, build_cells
from fedprostate.study.claims import Comparison, compare_arms, evaluate_claims
from fedprostate.study.config import Preregistration, StudyConfig
from fl_fixtures import write_tiny_cache
from report_checks import render_problems

STUDY = """
[study]
name = "test study"
alpha = 0.05
margin_noninferiority = 0.02
n_boot = 200
min_test_patients = 30
min_test_positives = 10
notes = ["tiny test study"]

[data]
cache = "{cache}"
organ_cache = "{cache}"

[pretrain]
enabled = false

[tuning]
learning_rates = [{lrs}]
seeds = [{seeds}]

[arms]
backbones = {{ swin = "swin_test", resnet = "resnet_test", vit = "vit_test" }}

[reference]
"model.arch" = "swin_test"
"model.crop" = 32
"fl.rounds" = 2
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # sampled tissue never counts: 40 patients per site give ~70 headline test findings
    return write_tiny_cache(tmp_path_factory.mktemp("study") / "cache", patients_per_site=40)


def _config(tmp_path: Path, cache: Path, lrs: str = "1e-3", seeds: str = "0") -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(cache=cache, lrs=lrs, seeds=seeds), encoding="utf-8")
    return path


def _plan(config: Path, out: Path):
    cfg = StudyConfig.load(config)
    paths = runner.planned_paths(cfg, out)
    return cfg, paths, *build_cells(cfg, paths)


def test_reference_arm_is_shared_across_sections(tmp_path, cache):
    cfg, paths, arms, cells = _plan(_config(tmp_path, cache, "1e-3, 3e-3"), tmp_path / "out")
    ids = [a.id for a in arms]
    assert len(ids) == len(set(ids))
    ref = next(a for a in arms if a.id == REFERENCE)
    assert set(ref.sections) == set(cfg.sections)  # one run folder serves every section
    assert [c.id for c in cells if c.arm == REFERENCE] == ["reference@lr0.001", "reference@lr0.003"]
    # every arm gets the same learning-rate budget
    for arm in arms:
        assert sorted(c.lr for c in cells if c.arm == arm.id) == [1e-3, 3e-3]
    by_id = {c.id: c.config for c in cells}
    assert by_id["method-full@lr0.001"].finetune.method == "full"
    assert by_id["agg-fedprox@lr0.001"].train.prox_mu > 0
    assert by_id["input-organ@lr0.001"].data.cache == str(cache)
    assert by_id["loso-siteA@lr0.001"].data.holdout_site == "siteA"
    mixed = by_id["uplink-mixed@lr0.003"].compress.site_codecs
    assert mixed.count("=") == len(paths.sites) == 3
    # apart from their change, arms equal the reference (same data, rounds, seed)
    assert (
        by_id["agg-fedavg@lr0.001"].replace(**{"fl.strategy": "fedadam"})
        == by_id["reference@lr0.001"]
    )


def test_dry_run_lists_cells_and_runs_nothing(tmp_path, cache, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run_function", lambda kind: calls.append(kind))
    console = Console(record=True, width=200)
    out = tmp_path / "out"
    assert runner.run_study(_config(tmp_path, cache), out, dry_run=True, console=console) is None
    text = console.export_text()
    assert "reference" in text and "method-full" in text and "estimated time" in text
    assert calls == [] and not out.exists()


def _fake_run(quality: dict[str, float], counter: list):
    """A stand-in for federate/centralize/local writing a run folder from constructed scores:
    the better the arm's quality, the more its scores separate the classes."""

    def run(cfg: RunConfig, out: Path) -> dict:
        counter.append(Path(out).name)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        arm = out.name.split("@")[0]
        q = quality.get(arm, 1.0) + (0.5 if cfg.train.lr > 2e-3 else 0.0)
        rng = np.random.default_rng([len(arm), cfg.seed])
        rows = load_index(cfg.data.cache)
        for split in ("val", "test"):
            sel = [r for r in rows if r["split"] == split]
            if cfg.data.partition == "loso" and split == "test":
                sel = [r for r in sel if r["site"] == cfg.data.holdout_site]
            with (out / f"predictions_{split}_best.csv").open(
                "w", newline="", encoding="utf-8"
            ) as fh:
                w = csv.writer(fh)
                w.writerow(["site", "patient_id", "study_id", "finding_id", "source", "label",
                            "score", "round"])  # fmt: skip
                for r in sel:
                    score = 1 / (1 + np.exp(-(q * (2 * r["label"] - 1) + rng.normal())))
                    w.writerow([r["site"], r["patient_id"], r["study_id"], r["finding_id"],
                                r["source"], r["label"], score, 1])  # fmt: skip
        (out / "metrics.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "round": k,
                        "val": {"auroc": 0.5 + 0.1 * k * q / 4},
                        "test": {"auroc": 0.6},
                        "clients": [{"bytes_up": 1000 * k, "bytes_down": 2000}],
                        "examples_seen": 64,
                    }
                )
                + "\n"
                for k in (1, 2)
            ),  # fmt: skip
            encoding="utf-8",
        )
        summary = {"kind": "federated", "val_auroc": 0.6 + 0.01 * q, "test_auroc": 0.7,
                   "trainable_params": 1000 if cfg.finetune.method == "full" else 5,
                   "uplink_mb_per_client_round": 0.001}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        return summary

    return run


def test_study_is_resumable_and_verdicts_come_from_the_data(tmp_path, cache, monkeypatch):
    calls: list[str] = []
    quality = {REFERENCE: 3.0, "backbone-resnet": 0.0, "backbone-vit": 0.0}
    monkeypatch.setattr(runner, "run_function", lambda kind: _fake_run(quality, calls))
    config, out = _config(tmp_path, cache, "1e-3, 3e-3"), tmp_path / "out"
    sections = 'sections = ["backbone", "method", "aggregator"]\n'
    config.write_text(
        config.read_text(encoding="utf-8").replace('name = "test study"\n', sections),
        encoding="utf-8",
    )
    console = Console(record=True, width=200)
    page = runner.run_study(config, out, console=console)
    n_cells = len(list((out / "cells").iterdir()))
    assert len(calls) == n_cells == 2 * 9  # 9 arms (reference shared) x 2 learning rates
    # the higher LR always scores better on validation in the fake: it must be chosen
    chosen = json.loads((out / "arms.json").read_text(encoding="utf-8"))
    assert chosen[REFERENCE]["cell"] == "reference@lr0.003"
    claims = {
        c["id"]: c for c in json.loads((out / "claims.json").read_text(encoding="utf-8"))["claims"]
    }
    assert claims["1"]["verdict"] == "reproduced", claims["1"]  # reference separates better
    assert claims["2b"]["verdict"] == "reproduced"  # 5 vs 1000 trainable parameters
    html = page.read_text(encoding="utf-8")
    assert "reproduced" in html and 'src="http' not in html
    assert render_problems(page) == []  # every figure there, tables square, offline
    # second call: every cell is finished, nothing reruns
    calls.clear()
    runner.run_study(config, out, console=console, report=False)
    assert calls == []
    # a finished cell is skipped but a removed one reruns
    (out / "cells" / "agg-fedavg@lr0.001" / "summary.json").unlink()
    runner.run_study(config, out, console=console, report=False)
    assert calls == ["agg-fedavg@lr0.001"]


def test_preregistered_values_cannot_change_on_resume(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(runner, "run_function", lambda kind: _fake_run({}, []))
    config, out = _config(tmp_path, cache), tmp_path / "out"
    runner.run_study(config, out, console=Console(quiet=True), report=False)
    config.write_text(
        config.read_text(encoding="utf-8").replace("alpha = 0.05", "alpha = 0.1"), encoding="utf-8"
    )
    with pytest.raises(ValueError, match="pre-registered"):
        runner.run_study(config, out, console=Console(quiet=True), report=False)


def _rows(n_patients: int, scores_for, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for f in range(2):
            label = int(rng.random() < 0.4)
            rows.append({"site": "s", "patient_id": str(p), "finding_id": f"f{f}",
                         "source": "reader", "label": label,
                         "score": scores_for(label, rng)})  # fmt: skip
    return rows


PREREG = Preregistration(
    alpha=0.05, margin_noninferiority=0.02, n_boot=300, min_test_patients=40, min_test_positives=10
)


def test_verdict_reproduced_when_b_is_clearly_better():
    weak = _rows(60, lambda y, rng: rng.normal())
    strong = [dict(r, score=2.5 * r["label"] + np.random.default_rng(i).normal())
              for i, r in enumerate(weak)]  # fmt: skip
    result = compare_arms(weak, strong, Comparison("a", "b"), PREREG)
    assert result["verdict"] == "reproduced"
    assert result["comparison"]["bootstrap"]["low"] > 0
    # the reverse claim (A beats B) is rejected by the same rule
    assert compare_arms(strong, weak, Comparison("b", "a"), PREREG)["verdict"] == "not reproduced"


def test_identical_arms_decide_nothing():
    """Two arms that rank every finding the same give Δ* = 0 in every resample (CI [0, 0]):
    that is no evidence of non-inferiority. Mutant: the zero-variance check removed from
    compare_arms -> 'reproduced' -> fails."""
    rows = _rows(60, lambda y, rng: y + rng.normal())
    same = [dict(r) for r in rows]
    sup = compare_arms(rows, same, Comparison("a", "b"), PREREG)
    assert sup["verdict"] == "inconclusive"
    non = compare_arms(rows, same, Comparison("a", "b", "noninferior"), PREREG)
    assert non["verdict"] == "inconclusive" and "zero-variance" in non["reason"]
    assert non["verdict_ungated"] == "reproduced"  # what the CI rule alone would have said


def test_claims_need_all_comparisons(tmp_path):
    good = _rows(60, lambda y, rng: 3 * y + rng.normal())
    bad = _rows(60, lambda y, rng: rng.normal())
    preds = {REFERENCE: good, "backbone-resnet": bad, "backbone-vit": good}
    out = evaluate_claims(preds, {}, PREREG)
    claim = next(c for c in out["claims"] if c["id"] == "1")
    assert [c["verdict"] for c in claim["comparisons"]] == ["reproduced", "inconclusive"]
    assert claim["verdict"] == "inconclusive"


def test_lesion_vs_organ_is_paired_on_every_patient_and_never_on_sampled_tissue():
    """Claim 4 made fair: the lesion arm sees only reader/proposal findings, sampled tissue is
    ignored, and a patient it has no finding for is still compared (negative by reading)."""
    from fedprostate.study.claims import paired_rows

    def row(pid, fid, source, label, score):
        return {"site": "A", "patient_id": pid, "study_id": "s" + pid, "finding_id": fid,
                "source": source, "label": label, "score": score, "case_label": label}  # fmt: skip

    lesion = [row("1", "M1", "reader", 1, 0.9), row("1", "N1", "sampled", 0, 0.99),
              row("2", "N1", "sampled", 0, 0.95)]  # fmt: skip
    organ = [row(p, f"slice{k}", "organ", lab, 0.5) for p, lab in (("1", 1), ("2", 0), ("3", 1))
             for k in range(2)]  # fmt: skip
    patients = [
        {"site": "A", "patient_id": p, "case_label": c} for p, c in (("1", 1), ("2", 0), ("3", 1))
    ]
    a, b = paired_rows(lesion, organ, "patient", patients, None)
    assert (
        sorted(r["patient_id"] for r in a) == sorted(r["patient_id"] for r in b) == ["1", "2", "3"]
    )
    scores = {r["patient_id"]: r["score"] for r in a}
    assert scores["1"] == 0.9  # the sampled 0.99 never counts
    assert scores["2"] == scores["3"] < 0.9  # nothing marked: negative by reading
    a, _ = paired_rows(lesion, lesion, "lesion")  # lesion level: the reader's mark only
    assert [r["finding_id"] for r in a] == ["M1"]


def test_minimum_test_size_gates_every_verdict():
    """Mutant: the size gate removed from compare_arms -> 'reproduced' on 20 patients -> fails."""
    weak = _rows(60, lambda y, rng: rng.normal())
    strong = [dict(r, score=3.0 * r["label"] + np.random.default_rng(i).normal())
              for i, r in enumerate(weak)]  # fmt: skip
    assert compare_arms(weak, strong, Comparison("a", "b"), PREREG)["verdict"] == "reproduced"
    few = [r for r in weak if int(r["patient_id"]) < 20]
    few_b = [r for r in strong if int(r["patient_id"]) < 20]
    small = compare_arms(few, few_b, Comparison("a", "b"), PREREG)
    assert small["verdict"] == "inconclusive" and "20 test patients" in small["reason"]
    strict = Preregistration(n_boot=300, min_test_patients=40, min_test_positives=200)
    assert "positives" in compare_arms(weak, strong, Comparison("a", "b"), strict)["reason"]


def test_no_verdict_unless_the_reference_arm_is_above_chance():
    """The reference arm scores at chance; FedAvg is anti-correlated, so 'FedAdam beats FedAvg'
    would be reproduced by the CI rule. Mutant: the reference gate skipped -> fails."""
    chance = _rows(80, lambda y, rng: rng.normal(), seed=1)
    worse = [dict(r, score=-2.0 * r["label"] + np.random.default_rng(i).normal())
             for i, r in enumerate(chance)]  # fmt: skip
    out = evaluate_claims({REFERENCE: chance, "agg-fedavg": worse}, {}, PREREG)
    claim = next(c for c in out["claims"] if c["id"] == "5")
    assert not out["reference_gate"]["passed"]
    assert claim["comparisons"][0]["verdict_ungated"] == "reproduced"
    assert claim["verdict"] == "inconclusive"
    assert "not above 0.5" in claim["comparisons"][0]["reason"]


def test_holm_runs_over_the_whole_primary_family(monkeypatch):
    """Seven primary comparisons, each significant alone (p = 0.01 < 0.05): after Holm over
    the family of 7 none is (0.01 x 7 = 0.07). Mutant: Holm per claim (or none) -> fails."""
    from fedprostate.study import claims as claims_mod

    def fake(rows_a, rows_b, comp, prereg, seed=0, patients=None):
        return {"a": comp.a, "b": comp.b, "test": comp.test, "level": comp.level,
                "verdict": "reproduced", "p_for": 0.01, "p_against": 1.0}  # fmt: skip

    monkeypatch.setattr(claims_mod, "compare_arms", fake)
    monkeypatch.setattr(claims_mod, "reference_gate", lambda *a, **k: {"passed": True})
    arms = {a: [] for c in claims_mod.primary_comparisons() for a in (c.a, c.b)}
    out = evaluate_claims(arms, {}, PREREG)
    assert out["multiplicity"]["primary"] == 7
    verdicts = [c["verdict"] for c in out["claims"]]
    assert verdicts == ["inconclusive"] * 5
    assert all(r["p_for_holm"] == pytest.approx(0.07) for c in out["claims"]
               for r in c["comparisons"])  # fmt: skip


class _Spy(dict):
    """A summary that records which keys the code under test reads."""

    read: list[str] = []

    def get(self, key, default=None):
        _Spy.read.append(key)
        return super().get(key, default)

    def __getitem__(self, key):
        _Spy.read.append(key)
        return super().__getitem__(key)


def test_learning_rate_choice_never_reads_a_test_number(tmp_path, cache, monkeypatch):
    """Validation prefers lr 1e-3, every test number prefers 3e-3 (poisoned: 1e9, NaN, a
    local-only arm without pooled validation). The choice must follow validation only, and no
    key naming a test split may even be read. Mutant: the old choose_arms (test AUROC for
    local-only, pooled test as a fallback) -> fails both ways."""
    cfg, paths, arms, cells = _plan(_config(tmp_path, cache, "1e-3, 3e-3"), tmp_path / "out")
    out = tmp_path / "out"
    for c in cells:
        folder = c.folder(out)
        folder.mkdir(parents=True)
        low = c.lr < 2e-3
        summary = {"kind": c.kind if c.kind != "local" else "local",
                   "val_auroc": 0.8 if low else 0.6,
                   "test_auroc": 0.1 if low else 1e9, "mean_pooled_test_auroc": 0.0 if low else 1.0,
                   "last_round_test_auroc": float("nan") if low else 1.0,
                   "per_site": {"s": {"own_test_auroc": 0.0 if low else 1.0}}}  # fmt: skip
        (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    chosen = runner.choose_arms(arms, cells, out)
    assert {a: c["lr"] for a, c in chosen.items()} == {a.id: 1e-3 for a in arms}
    _Spy.read = []
    monkeypatch.setattr(runner, "read_summary", lambda folder: _Spy(json.loads(
        (folder / "summary.json").read_text(encoding="utf-8"))))  # fmt: skip
    runner.choose_arms(arms, cells, out)
    assert _Spy.read and not [k for k in _Spy.read if "test" in k]


def test_every_arm_runs_each_seed_at_its_validation_chosen_rate(tmp_path, cache, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(runner, "run_function", lambda kind: _fake_run({REFERENCE: 3.0}, calls))
    config, out = _config(tmp_path, cache, "1e-3, 3e-3", seeds="0, 1, 2"), tmp_path / "out"
    config.write_text(config.read_text(encoding="utf-8").replace(
        'name = "test study"\n', 'sections = ["aggregator"]\n'), encoding="utf-8")  # fmt: skip
    console = Console(record=True, width=250)
    runner.run_study(config, out, dry_run=True, console=console)
    assert "reference@lr0.001@seed1" in console.export_text()  # provisional until chosen
    page = runner.run_study(config, out, console=console)
    # 4 aggregator arms: 2 tuning cells (seed 0) + 2 seed cells at the chosen (higher) rate
    assert len(calls) == 4 * (2 + 2)
    assert "reference@lr0.003@seed2" in calls and "reference@lr0.001@seed1" not in calls
    chosen = json.loads((out / "arms.json").read_text(encoding="utf-8"))
    assert chosen[REFERENCE]["seeds"] == {"0": "reference@lr0.003", "1": "reference@lr0.003@seed1",
                                          "2": "reference@lr0.003@seed2"}  # fmt: skip
    saved = RunConfig.load(out / "cells" / "reference@lr0.003@seed2" / "config.toml", saved=True)
    assert saved.seed == 2 and saved.train.lr == 3e-3
    claims = json.loads((out / "claims.json").read_text(encoding="utf-8"))
    comp = claims["claims"][0]["comparisons"][0]["comparison"]["bootstrap"]
    assert comp["seeds_a"] == comp["seeds_b"] == 3
    html = page.read_text(encoding="utf-8")
    assert "Seed spread" in html and "Equal budgets" in html and "half-width" in html


def test_a_failing_cell_is_named_skipped_and_retried(tmp_path, cache, monkeypatch):
    calls: list[str] = []
    good = _fake_run({}, calls)

    def flaky(cfg, out):
        if Path(out).name.startswith("agg-fedyogi"):
            raise RuntimeError("disk full\nsecond line")
        return good(cfg, out)

    monkeypatch.setattr(runner, "run_function", lambda kind: flaky)
    config, out = _config(tmp_path, cache), tmp_path / "out"
    config.write_text(config.read_text(encoding="utf-8").replace(
        'name = "test study"\n', 'sections = ["aggregator"]\n'), encoding="utf-8")  # fmt: skip
    console = Console(record=True, width=200)
    runner.run_study(config, out, console=console, report=False)
    text = console.export_text()
    assert "cell agg-fedyogi failed, skipped: RuntimeError: disk full" in text
    failed = json.loads((out / "cells" / "agg-fedyogi" / "failed.json").read_text("utf-8"))
    assert failed["error"] == "RuntimeError: disk full"
    assert "agg-fedyogi" not in json.loads((out / "arms.json").read_text(encoding="utf-8"))
    monkeypatch.setattr(runner, "run_function", lambda kind: good)
    calls.clear()
    runner.run_study(config, out, console=console, report=False)
    assert calls == ["agg-fedyogi"]
