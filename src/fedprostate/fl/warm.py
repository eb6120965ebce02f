"""A warm process per site, so a deployed message does not pay for imports and model build.

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message a SuperNode receives
(``--isolation process`` only moves that launcher into ``flower-superexec``). Each one imports
torch, timm and peft and rebuilds the model before a few seconds of training:
``benchmarks/deploy_overhead.py`` measures ~90% of a small message going there. With the node
config ``warm-seconds = S`` (> 0), the ClientApp process only imports Flower and this module and
hands the message's plain content (run config, node config, round, arrays) to the site's warm
process, which runs the very same ``train_round`` / ``evaluate_round`` with its models and crop
indexes cached (``engine/setup.py``) and answers. The first message starts it (and waits for it);
it exits after ``S`` idle seconds or when its SuperNode is gone.

A training message crosses whole (Flower's protobuf encoding of the message and the node's context)
and the site's mod chain (``site_mods``: decoding, clipping and noise, encoding, SecAgg+ masking)
runs in the warm process, so the per-message process imports no torch at all; an evaluation
message hands over its tensors. Nothing leaves the site that would not have left without it:
the warm process is the same site and returns the finished reply (already clipped, noised and
masked) and the updated node state to the ClientApp process, which audits and replies as before. Errors keep their
rule: a ``PublicError``'s text is passed on, any other error is logged in the warm process's log
(``<state-dir>/warm.log``) and only its type travels. The socket is a Unix socket with a random
key in ``<state-dir>/warm.key`` (owner-only), checked by ``multiprocessing``'s HMAC handshake
before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedprostate.fl.config_io import config_from_context
from fedprostate.fl.site import PublicError

log = logging.getLogger("fedprostate.site")
KEY_FILE = "warm.key"
LOG_FILE = "warm.log"


class RemoteError(RuntimeError):
    """A private error in the warm process: only its type name is known here."""

    def __init__(self, type_name: str):
        super().__init__(type_name)
        self.type_name = type_name


def socket_path(state_dir: str | Path) -> str:
    """A short Unix-socket path (the 108-byte limit) unique to the site's state folder."""
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:20]
    return os.path.join(tempfile.gettempdir(), f"fedprostate-warm-{digest}.sock")


def _handle(request: dict):
    if request["op"] == "message":  # a whole training message: the site's mod chain runs here
        from fedprostate.fl.site_mods import train_message  # torch etc., once per warm process

        msg = message_from_proto(ProtoMessage.FromString(request["message"]))
        context = context_from_proto(ProtoContext.FromString(request["context"]))
        reply = train_message(msg, context, request["overrides"])
        return {
            "reply": message_to_proto(reply).SerializeToString(),
            "state": recorddict_to_proto(context.state).SerializeToString(),
        }
    from fedprostate.fl import client  # the heavy imports, once per warm process

    cfg = config_from_context(request["run_config"], request["overrides"], request["node_config"])
    site = client.site_context(cfg, request["node_config"], cfg.out)
    return client.run_step(
        request["op"], cfg, site, request["server_round"], request["received"], request["kwargs"]
    )


def serve(state_dir: str | Path, idle_s: float, owner_pid: int = 0) -> None:
    """Answer requests until ``idle_s`` seconds pass without one or ``owner_pid`` is gone."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    address = socket_path(state)
    key = os.urandom(32)
    if os.path.exists(address):
        os.unlink(address)
    listener = Listener(address, family="AF_UNIX", authkey=key)
    key_tmp = state / f"{KEY_FILE}.tmp"
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    key_tmp.replace(state / KEY_FILE)  # clients read the key only once the socket listens
    last = [time.monotonic()]
    busy = threading.Lock()

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            gone = owner_pid and not _alive(owner_pid)
            if (gone or time.monotonic() - last[0] > idle_s) and busy.acquire(blocking=False):
                for path in (address, state / KEY_FILE):
                    Path(path).unlink(missing_ok=True)
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    while True:
        try:
            conn = listener.accept()
        except Exception:  # a failed handshake (wrong key): refuse it, keep serving
            log.warning("warm process: refused a connection")
            continue
        with busy, conn:
            request: dict = {}
            try:
                request = conn.recv()
                started = time.monotonic()
                result = _handle(request)
                log.info(
                    "warm process: %s round %s in %.2f s (idle %.2f s before it)",
                    request["op"],
                    request["server_round"],
                    time.monotonic() - started,
                    started - last[0],
                )
                conn.send(("ok", result))
            except PublicError as exc:
                conn.send(("public", str(exc)))
            except Exception as exc:
                log.exception("warm process: %s failed", request.get("op", "request"))
                conn.send(("private", type(exc).__name__))
            last[0] = time.monotonic()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _connect(state: Path):
    key = (state / KEY_FILE).read_bytes()
    return Client(socket_path(state), family="AF_UNIX", authkey=key)


def _start(state: Path, idle_s: float, timeout: float) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / KEY_FILE).unlink(missing_ok=True)
    with open(state / LOG_FILE, "a", encoding="utf-8") as out:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedprostate.fl.warm",
                str(state),
                str(idle_s),
                str(os.getppid()),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this one-message ClientApp process
        )
    deadline = time.monotonic() + timeout
    while not (state / KEY_FILE).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the warm site process did not start (see {state / LOG_FILE})")
        time.sleep(0.1)


def call(state_dir: str | Path, request: dict, idle_s: float, start_timeout: float = 300.0):
    """Run ``request`` in the site's warm process (started if none answers); its result."""
    state = Path(state_dir)
    try:
        conn = _connect(state)
    except (OSError, EOFError):
        _start(state, idle_s, start_timeout)
        conn = _connect(state)
    with conn:
        conn.send(request)
        status, value = conn.recv()
    if status == "public":
        raise PublicError(value)
    if status == "private":
        raise RemoteError(value)
    return value


def call_message(
    state_dir: str | Path, msg: Message, context: Context, overrides, idle_s: float
) -> Message:
    """A training message through the site's mod chain in its warm process: the reply, with
    ``context.state`` updated as the mods left it (SecAgg+ keeps its keys and shares there).
    Message and context cross as Flower's own protobuf encoding (what a SuperNode sends)."""
    request = {
        "op": "message",
        "server_round": next(  # for the log line: the round, from whichever config has it
            (r["server-round"] for r in msg.content.config_records.values() if "server-round" in r),
            msg.metadata.group_id,
        ),
        "overrides": overrides,
        "message": message_to_proto(msg).SerializeToString(),
        "context": context_to_proto(context).SerializeToString(),
    }
    result = call(state_dir, request, idle_s)
    context.state = recorddict_from_proto(ProtoRecordDict.FromString(result["state"]))
    return message_from_proto(ProtoMessage.FromString(result["reply"]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
