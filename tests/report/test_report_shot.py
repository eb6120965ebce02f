"""A report page in a real headless browser (report-shot: Chromium via puppeteer): no console
or page error, and the screenshot is taken. Skipped where ``node`` or report-shot's
``node_modules`` is missing (CI): set FEDPROSTATE_REPORT_SHOT to the tool's folder, else the
``shared/tools/report-shot`` folder next to this checkout is used."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedprostate.report import plots
from fedprostate.report.document import Doc

TOOL = Path(
    os.environ.get("FEDPROSTATE_REPORT_SHOT")
    or Path(__file__).resolve().parents[3] / "shared" / "tools" / "report-shot"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or not (TOOL / "node_modules").is_dir(),
        reason=f"needs node and report-shot's node_modules ({TOOL})",
    ),
]


def test_a_report_page_has_no_browser_errors(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    doc = Doc("render check")
    doc.table(["arm", "AUROC"], [["a;b", "0.837 [0.595, 1.000]"], ["c", "–"]], "a caption")
    doc.figure(
        plots.plot_roc_curves({"m": (y, y + rng.normal(0, 1, 60))}, tmp_path / "r.png"), "roc"
    )
    _, page = doc.write(tmp_path)
    shot = tmp_path / "shot.png"
    out = subprocess.run(
        ["node", str(TOOL / "shot.mjs"), page.resolve().as_uri(), str(shot), "1000", "700"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
        check=True,
    ).stdout
    assert "errors []" in out, out
    assert shot.stat().st_size > 10_000
