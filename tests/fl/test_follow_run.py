"""A deployment keeps following its run when ``flwr run --stream`` ends before the run does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedprostate.fl.deploy.processes import ManagedProcess, follow_run, run_is_active


def _python(tmp: Path, name: str, code: str) -> ManagedProcess:
    return ManagedProcess(name, [sys.executable, "-c", code], tmp / f"{name}.log", {}, tmp)


def test_a_dropped_log_stream_is_followed_again_until_the_run_writes_its_summary(tmp_path):
    """17 SuperNodes on 2 cores: `flwr run --stream` ended in round 1 (the SuperLink answered
    "database is locked") and the still-running run was stopped. Mutant: no re-attach (follow
    the first process only) -> returns before the summary exists -> fails."""
    summary = tmp_path / "summary.json"
    first = _python(tmp_path, "run", "print('Successfully started run 42', flush=True)")
    calls, echoed = [], []

    def reattach(run_id: str, n: int) -> ManagedProcess:
        calls.append((run_id, n))
        code = f"import time, pathlib; time.sleep(1); pathlib.Path({str(summary)!r}).write_text('{{}}')"
        return _python(tmp_path, f"log{n}", code)

    last = follow_run(first, reattach, lambda run_id: not summary.exists(), echoed.append, 60,
                      summary.exists)  # fmt: skip
    last.stop()
    assert summary.exists()
    assert calls == [("42", 0)]
    assert any("following it again" in line for line in echoed)


def test_a_run_that_really_ended_is_not_followed_again(tmp_path):
    first = _python(tmp_path, "run", "print('Successfully started run 7', flush=True)")
    calls = []
    last = follow_run(first, lambda r, n: calls.append(r), lambda r: False, print, 60,
                      lambda: False)  # fmt: skip
    assert last is first and calls == []


def test_run_status_from_flwr_ls_json():
    def ls(status: str) -> str:
        return json.dumps({"success": True, "runs": [{"run-id": "42", "status": status}]})

    assert run_is_active(ls("running"), "42")
    assert run_is_active(ls("starting"), "42")
    assert not run_is_active(ls("finished:completed"), "42")
    assert not run_is_active(ls("finished:failed"), "42")
    assert not run_is_active(ls("running"), "43")  # another run's status says nothing
