"""Child processes of a local deployment, each in its own process group, always stopped.

Flower's SuperLink and SuperNodes start helpers of their own (``flower-superexec``, then one
``flwr-serverapp`` / ``flwr-clientapp`` per run or message) in *new sessions*, so killing a
process group is not enough: before stopping a process we collect all its descendants and stop
them too. A process killed on purpose (a simulated crash) leaves its descendants to Flower's own
parent monitors; we remember them and make sure they are gone when the deployment closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_processes(procs: list[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is left."""
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            alive.append(proc)
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=grace)


class ManagedProcess:
    """One long-running Flower process, its output in a log file."""

    def __init__(
        self, name: str, cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # own process group: a Ctrl-C in the terminal is ours to handle
        )
        self.orphans: list[psutil.Process] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace", encoding="utf-8")

    def wait_for_log(self, needle: str, timeout: float) -> bool:
        """True once ``needle`` appears in the log; False on timeout or if the process exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            if not self.running():
                return needle in self.log_text()
            time.sleep(0.3)
        return False

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def crash(self) -> None:
        """SIGKILL only this process (a power cut); its helpers notice and exit on their own."""
        self.orphans = _descendants(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process and every descendant (terminate, then kill)."""
        procs = []
        if self.running():
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(self.pid))
            procs += _descendants(self.pid)
        procs += [p for p in self.orphans if p.is_running()]
        stop_processes(procs, grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        self.orphans = []
        self._log.close()


def written_after(path: Path, t0: float) -> bool:
    return path.exists() and path.stat().st_mtime >= t0


def follow(
    proc: ManagedProcess, echo: Callable[[str], None], timeout: float, done: Callable[[], bool]
) -> None:
    """Echo a process's log lines as they come until it exits, ``done()`` or the timeout."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        text = proc.log_text()
        for line in text[seen:].splitlines():
            echo(line)
        seen = len(text)
        if not proc.running() or done():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not finish within {timeout:.0f} s")
        time.sleep(0.5)


STARTED_RUN = re.compile(r"Successfully started run (\d+)")
ACTIVE = ("pending", "starting", "running")
MAX_REATTACH = 5


def started_run_id(log_text: str) -> str | None:
    """The run id ``flwr run`` printed, if it printed one."""
    match = STARTED_RUN.search(log_text)
    return match.group(1) if match else None


def run_is_active(ls_json: str, run_id: str) -> bool:
    """From ``flwr ls --run-id ID --format json``: the run is pending, starting or running."""
    runs = json.loads(ls_json).get("runs", [])
    status = next((str(r.get("status", "")) for r in runs if str(r.get("run-id")) == run_id), "")
    return status.split(":")[0].strip().lower() in ACTIVE


def follow_run(
    first: ManagedProcess,
    reattach: Callable[[str, int], ManagedProcess],
    active: Callable[[str], bool],
    echo: Callable[[str], None],
    timeout: float,
    done: Callable[[], bool],
) -> ManagedProcess:
    """Follow ``first`` (``flwr run --stream``) until ``done()``; when its log stream ends while
    ``active(run_id)`` says the run goes on, follow ``reattach(run_id, n)`` (``flwr log
    --stream``) instead, at most ``MAX_REATTACH`` times. Returns the process followed last.

    Seen with 17 SuperNodes on 2 cores: the SuperLink answered some requests with "database is
    locked", ``flwr run --stream`` ended in round 1 and the run, still running, was stopped.
    """
    deadline = time.monotonic() + timeout
    proc = first
    for n in range(MAX_REATTACH + 1):
        follow(proc, echo, max(deadline - time.monotonic(), 0.0), done)
        run_id = started_run_id(first.log_text())
        if done() or run_id is None or n == MAX_REATTACH or not active(run_id):
            break
        echo(f"the log stream of run {run_id} ended while the run goes on: following it again")
        proc.stop()
        proc = reattach(run_id, n)
    return proc
