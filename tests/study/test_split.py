"""data.split: the study prepares its caches with it, refuses caches split otherwise, and a
resumed study cannot change it (it is pre-registered)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from fedprostate.study import inputs
from fedprostate.study.config import StudyConfig

BASE = {"study": {"name": "t"}, "reference": {"model.arch": "swin_test", "model.crop": 32}}


def _cfg(split=None, **data) -> StudyConfig:
    raw = {**BASE, "data": {**data, **({"split": split} if split is not None else {})}}
    return StudyConfig.from_dict(raw, source="t.toml")


@pytest.mark.parametrize("bad", [[0.5, 0.5], [0.6, 0.3, 0.2], [0.8, 0.2, 0.0], [1.2, -0.4, 0.2]])
def test_a_split_that_is_not_three_positive_fractions_summing_to_one_is_refused(bad):
    with pytest.raises(ValueError, match="data.split"):
        _cfg(split=bad)


def test_the_split_is_preregistered_only_when_set():
    """Mutant: split left out of the pre-registered values -> a resume could change it."""
    assert _cfg(split=[0.5, 0.2, 0.3]).preregistered()["split"] == [0.5, 0.2, 0.3]
    assert "split" not in _cfg().preregistered()  # older study folders still resume
    assert _cfg().data.fractions() == (0.6, 0.2, 0.2)


def test_the_study_prepares_its_caches_with_the_split(tmp_path, monkeypatch):
    """Mutant: fractions not passed to prepare -> every study gets a 20 % test split."""
    seen = {}

    def fake_prepare(raw, cache, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(inputs, "prepare", fake_prepare)
    with pytest.raises(RuntimeError, match="stop here"):
        inputs.prepare_cache(tmp_path, tmp_path / "c", "lesion", _cfg(split=[0.5, 0.2, 0.3]),
                             Console(quiet=True))  # fmt: skip
    assert seen["fractions"] == (0.5, 0.2, 0.3)


def _cache(tmp_path: Path, fractions) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    meta = {"mode": "lesion", "sites": ["s"]} | (
        {"fractions": fractions} if fractions is not None else {}
    )
    (cache / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return cache


@pytest.mark.parametrize("have", [[0.6, 0.2, 0.2], None])
def test_a_cache_split_otherwise_is_refused_with_one_line_naming_it(tmp_path, have):
    """Mutant: the check skipped (or skipped when the cache records no split) -> a study reports
    a 30 % test split it never used."""
    cache = _cache(tmp_path, have)
    with pytest.raises(ValueError, match=r"cache.*split.*\[0\.5, 0\.2, 0\.3\]") as err:
        inputs.check_split(cache, _cfg(split=[0.5, 0.2, 0.3]))
    assert str(cache) in str(err.value) and "\n" not in str(err.value)


def test_a_cache_with_the_same_split_or_no_split_asked_is_kept(tmp_path):
    cache = _cache(tmp_path, [0.5, 0.2, 0.3])
    inputs.check_split(cache, _cfg(split=[0.5, 0.2, 0.3]))
    inputs.check_split(cache, _cfg())  # no split asked: the cache's own split serves


def test_a_study_on_a_given_cache_split_otherwise_stops_before_any_cell(tmp_path):
    """Mutant: ensure_caches does not check caches that already exist -> the study trains on
    the cache's 20 % test split while pre-registering 30 %."""
    from fedprostate.study import runner

    cache = _cache(tmp_path, [0.6, 0.2, 0.2])
    (cache / "index.csv").write_text("row\n", encoding="utf-8")
    cfg = _cfg(split=[0.5, 0.2, 0.3], cache=str(cache), organ_cache=str(cache))
    paths = runner.planned_paths(cfg, tmp_path / "out")
    with pytest.raises(ValueError, match="split"):
        inputs.ensure_caches(cfg, tmp_path / "out", paths, False, Console(quiet=True))
