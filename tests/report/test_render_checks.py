"""The offline render check (tests/report_checks.py) finds each flaw it is meant to find."""

from __future__ import annotations

import base64

import pytest

from report_checks import render_problems

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
GOOD = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title>"
    "<style>td{color:#222}</style></head><body><h1 id='a'>t</h1>"
    f'<figure><img src="data:image/png;base64,{PNG}" alt="x"></figure>'
    '<img src="fig.png" alt="y">'
    "<table><thead><tr><th>a</th><th>b</th></tr></thead>"
    "<tbody><tr><td>1</td><td>2</td></tr><tr><td colspan='2'>3</td></tr></tbody></table>"
    "</body></html>"
)


def _page(tmp_path, text: str):
    (tmp_path / "fig.png").write_bytes(base64.b64decode(PNG))
    page = tmp_path / "report.html"
    page.write_text(text, encoding="utf-8")
    return page


def test_a_sound_page_passes(tmp_path):
    assert render_problems(_page(tmp_path, GOOD)) == []


@pytest.mark.parametrize(
    "old, new, found",
    [
        ('src="fig.png"', 'src="missing.png"', "does not resolve"),
        (f"base64,{PNG}", "base64,", "empty"),
        (f"base64,{PNG}", "base64,bm90IGFuIGltYWdl", "holds no image"),
        ("<td>2</td>", "", "1 cells, header has 2"),
        ("<h1 id='a'>", "<h1 id='a'><span id='a'></span>", "id 'a' used twice"),
        ('src="fig.png"', 'src="https://example.org/fig.png"', "loads from the network"),
        ("td{color:#222}", "@import 'http://x.org/a.css';", "style sheet loads from the network"),
        ("<title>", "<link rel='stylesheet' href='https://x.org/a.css'><title>", "<link href>"),
        ("</table>", "", "closes table"),
        ("</body></html>", "", "left open"),
    ],
)
def test_each_flaw_is_found(tmp_path, old, new, found):
    assert old in GOOD
    problems = render_problems(_page(tmp_path, GOOD.replace(old, new, 1)))
    assert any(found in p for p in problems), problems
