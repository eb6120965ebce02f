"""MODEL_CARD.md metadata header and data provenance; bundle.json without absolute paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedprostate.data.cache import load_meta
from fedprostate.data.prepare import SYNTH_MARKER, prepare, provenance_of
from fedprostate.runs.export import export_run
from fedprostate.runs.pooled import centralize
from fl_fixtures import tiny_config, write_tiny_cache
from mri_fixtures import picai_phantoms, write_picai


def _front_matter(card: str) -> dict:
    yaml = pytest.importorskip("yaml")
    assert card.startswith("---\n")
    header = card.split("---\n")[1]
    return yaml.safe_load(header)


def test_provenance_from_the_synth_marker(tmp_path):
    assert provenance_of(tmp_path / "absent") == "unknown" and provenance_of(None) == "unknown"
    assert provenance_of(tmp_path) == "real"
    (tmp_path / SYNTH_MARKER).parent.mkdir(parents=True)
    (tmp_path / SYNTH_MARKER).write_text("site\n")
    assert provenance_of(tmp_path) == "synthetic"
    (tmp_path / "findings.csv").write_text("x,y,z\n")
    assert provenance_of(tmp_path / "findings.csv") == "synthetic"  # a CSV inside the tree


def test_prepare_records_provenance(tmp_path):
    raw = write_picai(tmp_path / "raw", picai_phantoms(n=4))
    prepare(raw, tmp_path / "real", crop=32, progress=False)
    assert load_meta(tmp_path / "real")["provenance"] == "real"
    (raw / SYNTH_MARKER).parent.mkdir(parents=True)
    (raw / SYNTH_MARKER).write_text("site\n")
    prepare(raw, tmp_path / "synth", crop=32, progress=False)
    assert load_meta(tmp_path / "synth")["provenance"] == "synthetic"


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.slow
def test_exported_card_header_provenance_and_no_absolute_paths(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache", sites=("eu_nijmegen", "us_boston"))
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta_path.write_text(json.dumps({**meta, "provenance": "synthetic"}))
    run = tmp_path / "run"
    centralize(tiny_config(cache, **{"fl.rounds": 1}), run)
    bundle_meta = export_run(run, run / "bundle", formats=("bundle",), n_boot=20)
    card = (run / "bundle" / "MODEL_CARD.md").read_text(encoding="utf-8")
    header = _front_matter(card)
    assert header["license"] == "apache-2.0" and header["library_name"] == "timm"
    assert header["datasets"] == ["fedprostate-synthetic"] and "synthetic-data" in header["tags"]
    assert set(header["metrics"]) == {"roc_auc", "average_precision"}
    assert header["data_provenance"] == "synthetic"
    assert header["sites"] == ["eu_nijmegen", "us_boston"]
    assert header["test_auroc"] == pytest.approx(bundle_meta["test_auroc"]["estimate"])
    assert "invented" in card and "PI-CAI ranking score" in card
    written = json.loads((run / "bundle" / "bundle.json").read_text(encoding="utf-8"))
    assert written["source_run"] == ".." and written["data_provenance"] == "synthetic"
    absolute = [s for s in _strings(written) if Path(s).is_absolute() or str(tmp_path) in s]
    assert absolute == []
    other = export_run(run, tmp_path / "elsewhere", formats=("bundle",), n_boot=20)
    assert other["source_run"] == "run"
