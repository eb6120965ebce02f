"""A run folder survives crashes and damaged files: durable writes, forgiving reads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fedprostate.records import run_folder
from fedprostate.records.audit import AuditError, AuditLog, verify_chain
from fedprostate.records.run_folder import Checkpoint, RunRecorder


def _round(recorder: RunRecorder, r: int) -> None:
    recorder.append_round({"round": r, "clients": []})
    if r > 0:
        arrays = {"w": np.full(3, float(r), np.float32)}
        state = {"v_t/w": np.full(3, r / 10, np.float32)}
        recorder.save_checkpoint(Checkpoint(r, arrays, state, {"wall_s": r}))


def test_a_torn_last_metrics_line_falls_back_to_the_last_good_round(tmp_path):
    """Finding 4: a half-written last line of metrics.jsonl crashed resume (JSONDecodeError)."""
    recorder = RunRecorder(tmp_path)
    for r in range(3):
        _round(recorder, r)
    with recorder.metrics_path.open("a", encoding="utf-8") as fh:
        fh.write('{"round": 3, "clients": [{"si')  # killed mid-write of round 3
    assert [e["round"] for e in recorder.read_rounds()] == [0, 1, 2]
    ckpt = recorder.last_good_round()
    assert ckpt.round == 2 and ckpt.arrays["w"][0] == 2.0
    recorder.truncate_after(ckpt.round)
    assert recorder.metrics_path.read_text(encoding="utf-8").count("\n") == 3
    json.loads(recorder.metrics_path.read_text(encoding="utf-8").splitlines()[-1])


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    """Finding 4: a corrupt newest checkpoint raised instead of falling back."""
    recorder = RunRecorder(tmp_path)
    for r in range(4):
        _round(recorder, r)
    newest = recorder.ckpt_dir / "round_0003.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])  # truncated file
    ckpt = recorder.last_good_round()
    assert ckpt.round == 2 and ckpt.strategy_state["v_t/w"][0] == pytest.approx(0.2)
    # A readable file whose bytes changed (bit rot) is caught by the recorded hash.
    second = recorder.ckpt_dir / "round_0002.safetensors"
    data = bytearray(second.read_bytes())
    data[-1] ^= 0xFF
    second.write_bytes(bytes(data))
    assert recorder.last_good_round().round == 1
    (recorder.ckpt_dir / "round_0001.json").write_text("{", encoding="utf-8")
    assert recorder.last_good_round() is None


def test_a_checkpoint_without_its_metrics_line_is_not_resumed_from(tmp_path):
    recorder = RunRecorder(tmp_path)
    for r in range(3):
        _round(recorder, r)
    recorder.truncate_after(1)  # as if round 2's line was lost
    assert recorder.last_good_round().round == 1


def test_files_and_their_folder_are_fsynced(tmp_path, monkeypatch):
    """Finding 4: no fsync of files or folders after the atomic rename."""
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(run_folder.os, "fsync", spy)
    recorder = RunRecorder(tmp_path)
    recorder.write_config("seed = 0\n")
    assert str(tmp_path / "config.toml.tmp") in synced  # the data, before the rename
    assert str(tmp_path) in synced  # the folder, after it
    synced.clear()
    recorder.save_checkpoint(Checkpoint(1, {"w": np.zeros(2, np.float32)}, {}, {}))
    assert str(recorder.ckpt_dir) in synced
    assert any(p.endswith("round_0001.safetensors.tmp") for p in synced)


def test_the_audit_log_is_an_append_only_chain(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("site_registered", site="siteA", node_id=5)
    log.append("round", round=1, replied=[{"site": "siteA", "bytes_up": 10}])
    log.append("run_finished", status="finished")
    assert verify_chain(log.path) == 3
    assert [e["event"] for e in log.read()] == ["site_registered", "round", "run_finished"]
    assert (log.path.stat().st_mode & 0o077) == 0
    lines = log.path.read_text(encoding="utf-8").splitlines()
    edited = lines[1].replace('"bytes_up": 10', '"bytes_up": 99')
    log.path.write_text("\n".join([lines[0], edited, lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(AuditError, match="line 3 does not follow line 2"):
        verify_chain(log.path)
    log.path.write_text("\n".join([lines[0], lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(AuditError, match="line 2"):
        verify_chain(log.path)
