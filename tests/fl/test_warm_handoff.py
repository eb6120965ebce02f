"""A deployed training message handed to the site's warm process: the one-message ClientApp
process imports no torch (the mod chain runs in the warm process) and passes the warm process's
reply and node state on unchanged. The warm process is replaced by a stub answering in Flower's
protobuf encoding, so this runs in a fresh interpreter in about a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, time
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common.serde import message_to_proto, recorddict_to_proto
import numpy as np

from fedprostate.fl import warm, wire
from fedprostate.fl.client_app import make_client_app

seen = {}

def stub_call(state_dir, request, idle_s, start_timeout=300.0):
    seen["op"] = request["op"]
    msg = warm.message_from_proto(warm.ProtoMessage.FromString(request["message"]))
    content = RecordDict({
        "arrays": wire.to_record({"w": np.full(3, 0.5, np.float32)}),
        "metrics": MetricRecord({"num-examples": 4}),
    })
    reply = Message(content=content, reply_to=msg)
    state = RecordDict({"secagg-like": ConfigRecord({"stage": "setup"})})
    return {
        "reply": message_to_proto(reply).SerializeToString(),
        "state": recorddict_to_proto(state).SerializeToString(),
    }

warm.call = stub_call
node_config = {"site": "siteA", "state-dir": sys.argv[1], "warm-seconds": 30.0}
context = Context(1, 7, node_config, RecordDict(), {})
arrays = wire.to_record({"w": np.zeros(3, np.float32)})
content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
msg = make_message(Metadata(1, "m1", 1, 7, "", "1", time.time(), 3600.0, "train"), content)
reply = make_client_app({"model.arch": "swin_test"})(msg, context)
print(json.dumps({
    "op": seen.get("op"),
    "torch": "torch" in sys.modules,
    "w": wire.from_record(reply.content["arrays"])["w"].tolist(),
    "state": sorted(context.state.config_records),
    "reply_to": reply.metadata.reply_to_message_id,
}))
"""


def test_training_message_goes_whole_to_the_warm_process_and_torch_stays_out(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "state")],
        capture_output=True, text=True, encoding="utf-8", env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["op"] == "message", "the training message must cross whole (its mod chain there)"
    assert out["torch"] is False, "the one-message ClientApp process imported torch"
    assert out["w"] == [0.5, 0.5, 0.5]  # the warm process's reply, passed on as it came
    assert out["state"] == ["secagg-like"]  # the node state as the mods left it (SecAgg+ keys)
    assert out["reply_to"] == "m1"
    audit = (tmp_path / "state" / "siteA" / "audit.jsonl").read_text(encoding="utf-8")
    assert '"phase": "training"' in audit  # audited here, before it is sent
