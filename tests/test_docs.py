"""`make docs`: pdoc renders the API page with every entry point and its documentation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fedprostate
from fedprostate import api

ROOT = Path(__file__).resolve().parents[1]


def _make_docs_modules() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^docs: ", text, re.M), "no docs target"
    return re.search(r"^API_MODULES := (.+)$", text, re.M).group(1).split()


def test_the_api_page_documents_every_entry_point(tmp_path):
    pytest.importorskip("pdoc")
    modules = _make_docs_modules()
    assert "fedprostate.api" in modules
    command = [sys.executable, "-m", "pdoc", "--docformat", "restructuredtext", "-o",
               str(tmp_path), *modules]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    page = (tmp_path / "fedprostate" / "api.html").read_text(encoding="utf-8")
    for name in fedprostate.API:
        assert f'id="{name}"' in page, name
        first = getattr(api, name).__doc__.split("\n")[0].split(":")[0][:40]
        assert first.split("(")[0].strip() in page, name
    assert "<table>" in page  # the command line / Python correspondence
    assert (tmp_path / "fedprostate" / "config.html").is_file()
