"""Append-only audit logs (JSON lines) at the coordinator and at every site.

Each line is one event: ``{"time": ISO-8601 UTC, "event": NAME, ..., "prev": SHA}`` where
``prev`` is the SHA-256 of the previous line's bytes (``"0" * 64`` for the first line), so a line
edited, removed or reordered later breaks the chain (:func:`verify_chain` names the first broken
line). Writers open the file in append mode only, take an exclusive ``flock`` while they read the
last line and append (the coordinator's deploy process and its ServerApp process share one log),
and ``fsync`` the file before returning. The chain makes tampering *detectable* by whoever keeps a
copy of a later line's hash (e.g. the hash printed at the end of a run); it does not stop someone
with write access from rewriting the whole file.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"


class AuditError(ValueError):
    """An audit log whose chain is broken (the message names the line)."""


def _last_line(fd: int) -> bytes:
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return b""
    block = min(size, 1 << 16)
    while True:
        os.lseek(fd, size - block, os.SEEK_SET)
        data = os.read(fd, block)
        lines = data.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or block == size:
            return lines[-1]
        block = min(size, block * 4)


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


class AuditLog:
    """One append-only audit file; :meth:`append` writes one chained, fsynced line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = _last_line(fd)
            record = {
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "event": event,
                **fields,
                "prev": _line_hash(last) if last else GENESIS,
            }
            line = json.dumps(record, sort_keys=False, default=_json_default) + "\n"
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the lock
        return record

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [
            json.loads(line)
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]


def verify_chain(path: str | Path) -> int:
    """Number of lines of an intact audit log; :class:`AuditError` naming the first bad line."""
    prev = GENESIS
    count = 0
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                raise AuditError(f"{path}: line {number} is not JSON (truncated?)") from None
            if record.get("prev") != prev:
                raise AuditError(
                    f"{path}: line {number} does not follow line {number - 1} "
                    "(a line was edited, removed or inserted)"
                )
            prev = _line_hash(raw)
            count += 1
    return count


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
