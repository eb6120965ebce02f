"""Single-run report: computed from the run's predictions and cache, self-contained HTML."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedprostate.report.document import Doc
from fedprostate.report.run_data import load_run
from fedprostate.report.run_report import fmt_ci, write_run_report
from fl_fixtures import tiny_config, write_tiny_cache
from report_checks import render_problems


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from fedprostate.runs.pooled import centralize

    root = tmp_path_factory.mktemp("report")
    cache = write_tiny_cache(root / "cache", patients_per_site=15)
    out = root / "run"
    centralize(tiny_config(cache, **{"fl.rounds": 2, "eval.n_boot": 100}), out)
    return out


def _test_predictions(run_dir):
    """Labels and scores of the findings a reader marked (sampled tissue is never headline)."""
    with (run_dir / "predictions_test_best.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["source"] == "reader"]
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def test_run_report_is_computed_from_the_predictions(run_dir):
    page = write_run_report(run_dir)
    evaluation = json.loads((run_dir / "evaluation.json").read_text(encoding="utf-8"))
    labels, scores = _test_predictions(run_dir)
    auroc = evaluation["model"]["lesion"]["auroc"]
    assert auroc["estimate"] == pytest.approx(roc_auc_score(labels, scores))
    assert auroc["low"] <= auroc["estimate"] <= auroc["high"]
    # the radiologist, the ADC rule (same findings) and PSA density (same patients), with the
    # model's gain over each
    assert set(evaluation["baselines"]) == {"PI-RADS (radiologist)", "mean-ADC rule", "PSA density"}
    for name in ("PI-RADS (radiologist)", "mean-ADC rule"):
        assert evaluation["baselines"][name]["n_findings"] == len(labels)
    assert set(evaluation["added_value"]) == {
        "PI-RADS (radiologist) (lesion level)",
        "mean-ADC rule (lesion level)",
        "PSA density (patient level)",
    }
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert fmt_ci(auroc) in md  # the table shows the computed value with its CI
    assert "mean-ADC rule" in md and "PSA density" in md and "PI-RADS" in md
    # PSA density is one number per patient: no lesion-level AUROC/AP in its row (mutant: the
    # patient numbers repeated in the lesion columns -> fails)
    psad = next(line for line in md.splitlines() if line.startswith("| PSA density |"))
    cells = [c.strip() for c in psad.strip("|").split("|")]
    assert cells[3] == "– (patient level)" and cells[4] == "–"
    assert cells[5] == fmt_ci(evaluation["baselines"]["PSA density"]["patient"]["auroc"])
    assert page.name == "report.html"


def test_html_is_self_contained(run_dir):
    write_run_report(run_dir)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources, "the report should embed figures"
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html  # no external style sheet


def test_html_renders_complete_and_offline(run_dir):
    """Every figure present (a decodable data: URI), every table row as wide as its header, no
    id twice, nothing fetched from the network, no tag left open (tests/report_checks.py)."""
    page = write_run_report(run_dir)
    assert render_problems(page) == []
    html = page.read_text(encoding="utf-8")
    # the five figures of a two-class federated-style run: round curve, ROC, PR, sites, reliability
    assert html.count("<img ") == len(list((run_dir / "plots").glob("*.png"))) == 5


def test_curves_show_the_findings_the_tables_score(run_dir, monkeypatch):
    """The ROC/PR/reliability figures were drawn over every test row, sampled normal tissue
    included, so their legend's AUROC differed from the table's (0.843 vs 0.837)."""
    from fedprostate.report import plots

    drawn = {}
    for name in ("plot_roc_curves", "plot_pr_curves", "plot_reliability"):
        real = getattr(plots, name)

        def spy(models, path, *a, _real=real, _name=name, **k):
            drawn[_name] = models["model"]
            return _real(models, path, *a, **k)

        monkeypatch.setattr(plots, name, spy)
    write_run_report(run_dir)
    assert set(drawn) == {"plot_roc_curves", "plot_pr_curves", "plot_reliability"}
    for rows in drawn.values():
        assert rows and {r["source"] for r in rows} == {"reader"}


def test_report_joins_case_labels_from_the_cache(run_dir):
    data = load_run(run_dir)
    assert data.index and len(data.index) == len(data.test)
    assert all("case_label" in r for r in data.test)


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        write_run_report(tmp_path)


def test_report_command(run_dir):
    from fedprostate.cli import app

    result = CliRunner().invoke(app, ["report", str(run_dir), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output


def test_doc_renders_the_same_table_in_both_formats(tmp_path):
    doc = Doc("t")
    doc.table(["claim", "verdict"], [["1", "reproduced"], ["2", "a|b"]])
    md, page = doc.write(tmp_path)
    assert "| 2 | a\\|b |" in md.read_text(encoding="utf-8")
    assert '<td class="reproduced">reproduced</td>' in page.read_text(encoding="utf-8")


def _dp_copy(run_dir, tmp_path):
    """The run folder as a client-level (server-adaptive) + patient-level DP run recorded it:
    the accountant's numbers per round in metrics.jsonl, the run's in summary.json, the
    mechanism and budget in config.toml."""
    import shutil

    from fedprostate.config import RunConfig
    from fedprostate.engine import privacy

    dp_dir = tmp_path / "dp_run"
    shutil.copytree(run_dir, dp_dir)
    cfg = RunConfig.load(dp_dir / "config.toml", saved=True).replace(
        **{
            "fl.strategy": "fedavg", "finetune.lora_attn": False, "finetune.lora_mlp": True,
            "privacy.client": "server-adaptive", "privacy.noise_multiplier": 0.7,
            "privacy.clipped_count_stddev": 0.5, "privacy.clip_norm": 0.25,
            "privacy.dp_sgd": True, "privacy.dp_sgd_noise": 1.3, "privacy.dp_sgd_clip": 0.8,
            "privacy.delta": 2e-3, "privacy.epsilon": 40.0, "train.steps": 3,
        }
    )  # fmt: skip
    (dp_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    sizes = {"siteA": 12, "siteB": 30}
    lines = [json.loads(x) for x in (dp_dir / "metrics.jsonl").read_text("utf-8").splitlines()]
    for i, line in enumerate(r for r in lines if r["round"] > 0):
        line["privacy"] = privacy.round_report(cfg, sizes, line["round"])
        line["dp"] = {"clip_norm": 0.25 * 0.9**i, "noise_std": 0.1 + i, "replies": 2}
    last = max(r["round"] for r in lines)
    (dp_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8"
    )
    summary = json.loads((dp_dir / "summary.json").read_text(encoding="utf-8"))
    summary["privacy"] = {
        **privacy.round_report(cfg, sizes, last),
        "model_round_epsilon_patient_bound": 0.5,
    }
    (dp_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return dp_dir, summary["privacy"], [r for r in lines if r["round"] > 0]


def _row(md: str, first_cell: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_of_a_dp_run_shows_its_guarantee(run_dir, tmp_path):
    dp_dir, recorded, rounds = _dp_copy(run_dir, tmp_path)
    assert len(rounds) >= 2 and recorded["client"]["epsilon"] != recorded["patient"]["epsilon"]
    write_run_report(dp_dir, n_boot=50)
    md = (dp_dir / "report.md").read_text(encoding="utf-8")
    html = (dp_dir / "report.html").read_text(encoding="utf-8")
    assert "No differential privacy" not in md
    c, p = recorded["client"], recorded["patient"]
    # mutants: the section dropped, the round's ε shown as cumulative, the levels swapped -> fail
    client = _row(md, "client level (site)")
    assert "`server-adaptive`" in client[1] and "clipped at the server" in client[1]
    assert (
        client[2] == "0.7"
        and client[3] == f"0.25 → {0.25 * 0.9 ** (len(rounds) - 1):.3g} (adaptive)"
    )
    assert client[4:] == [f"{c['epsilon_round']:.3g}", f"{c['epsilon']:.3g}"]
    patient = _row(md, "patient level (DP-SGD)")
    assert patient[2:] == ["1.3", "0.8", f"{p['epsilon_round']:.3g}", f"{p['epsilon']:.3g}"]
    assert f"δ = {recorded['delta']:.3g}" in md
    assert f"budget ε = 40 not reached: ε {max(c['epsilon'], p['epsilon']):.3g} of 40" in md
    # ε per round, from each round's line of metrics.jsonl
    for r in rounds:
        cells = _row(md, str(r["round"]))
        rc, rp = r["privacy"]["client"], r["privacy"]["patient"]
        assert cells[1:5] == [f"{rc['epsilon_round']:.3g}", f"{rc['epsilon']:.3g}",
                              f"{rp['epsilon_round']:.3g}", f"{rp['epsilon']:.3g}"]  # fmt: skip
    assert (dp_dir / "plots" / "epsilon_vs_round.png").exists()
    assert "Cumulative ε vs round" in html and f"{c['epsilon']:.3g}" in html


def test_report_of_a_run_without_dp_says_so(run_dir):
    write_run_report(run_dir, n_boot=50)
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "No differential privacy" in md
    assert "ε cumulative" not in md and not (run_dir / "plots" / "epsilon_vs_round.png").exists()


def test_budget_status_says_whether_the_budget_was_reached():
    from fedprostate.config import RunConfig
    from fedprostate.engine import privacy
    from fedprostate.report.privacy_section import budget_status

    cfg = RunConfig.from_flat(
        {"fl.strategy": "fedavg", "privacy.client": "server-fixed",
         "privacy.noise_multiplier": 1.0, "privacy.delta": 1e-3, "privacy.epsilon": 6.0}
    )  # fmt: skip
    after = {r: privacy.round_report(cfg, {}, r) for r in (1, 2, 3)}
    eps = {r: a["client"]["epsilon"] for r, a in after.items()}
    assert eps[2] < 6.0 < eps[3]
    # the server's mid-run stop, with the reason it records (fl.server.PrivacyStop)
    stopped = {"round": 2, "best_round": 2, "reason": privacy.budget_problem(cfg, after[3])}
    assert budget_status(after[2], 6.0, stopped).startswith(
        "budget ε = 6 reached: training stopped after round 2"
    )
    assert budget_status(after[1], 6.0, None).startswith(
        f"budget ε = 6 not reached: ε {eps[1]:.3g} of 6 spent"
    )
    assert budget_status(after[3], 6.0, None).startswith("budget ε = 6 EXCEEDED")
    assert budget_status(after[2], eps[2], None).startswith(f"budget ε = {eps[2]:g} reached")
    assert budget_status(after[2], 0.0, None).startswith("no budget set")


def test_numbers_are_right_aligned_and_an_interval_gets_its_own_line(tmp_path):
    """A CI cell wrapped mid-interval over three lines in a narrow column; an arm name of
    ``;``-joined codecs had no break point and pushed its table past the page."""
    doc = Doc("t")
    doc.table(["arm", "AUROC"], [["a;b", "0.837 [0.595, 1.000]"], ["c", "–"]])
    md, page = doc.write(tmp_path)
    html = page.read_text(encoding="utf-8")
    assert '<th class="num">AUROC</th>' in html and "<th>arm</th>" in html
    assert '<td class="num">0.837<span class="ci">[0.595, 1.000]</span></td>' in html
    assert "<td>a;<wbr>b</td>" in html and '<td class="num">–</td>' in html
    assert "| a;b | 0.837 [0.595, 1.000] |" in md.read_text(encoding="utf-8")  # markdown as is
