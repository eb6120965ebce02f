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
