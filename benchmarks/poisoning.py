"""Poisoning benchmark: 6 sites, 1 malicious, each robust aggregation option vs plain FedAvg.

Workload (stated, sized for a 2-core CPU): a synthetic crop cache of 6 sites x 60 patients x 2
findings at 32 px (positives carry a darker ADC/T2 blob, a learnable signal with noise), the
reduced Swin (``swin_test``) with LoRA r=2, 5 local steps of batch 8 per round, ``--rounds``
rounds. The rounds are Flower's own ``Strategy.start`` driven by the project's ServerApp function
``run_server`` (every reply check, the site registry, the guards); only the transport is
in-process (:class:`InProcessGrid` hands each message to the real ClientApp), so 50 runs fit in
minutes instead of one Ray simulation each. The final test AUROC is the last round's, scored by
the server on the pooled test split of all 6 sites.

The malicious site (site6) trains honestly, then replaces its reply (g = the model it received,
a = its honest result):

- sign_flip: g - 10 (a - g)          - scaled: g + 100 (a - g)
- n_lie: g - (a - g) with num-examples = 1e12
- nan: a with NaN and Inf entries    - noise: g + N(0, 1) per entry
- stale: its round-1 reply, every round

Options: fedavg (the control; with and without the sites' registered sizes, which cap
num-examples), fedavg + update-norm clipping (fl.clip_norm = 2 x the median honest
update norm of the clean run), fedmedian, fedtrimmedavg (beta 0.2), krum and multikrum
(fl.num_malicious = 1), and bulyan, which needs 4f + 3 = 7 sites: it runs with a 7th honest site.

    python benchmarks/poisoning.py [--rounds 10] [--work DIR] [--options fedavg,krum]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedprostate.config import RunConfig
from fedprostate.data.cache import write_cache
from fedprostate.engine import setup
from fedprostate.fl import wire
from fedprostate.fl.client_app import make_client_app
from fedprostate.fl.registry import register_site
from fedprostate.fl.server import run_server
from fedprostate.fl.strategies import REPORT_KEY

ATTACKS = ("clean", "sign_flip", "scaled", "n_lie", "nan", "noise", "stale")
OPTIONS = {
    "fedavg (sizes unregistered)": {"fl.strategy": "fedavg", "_unregistered": True},
    "fedavg": {"fl.strategy": "fedavg"},
    "fedavg+clip": {"fl.strategy": "fedavg", "fl.clip_norm": None},  # set from the clean run
    "fedmedian": {"fl.strategy": "fedmedian"},
    "fedtrimmedavg": {"fl.strategy": "fedtrimmedavg", "fl.trim_beta": 0.2},
    "krum": {"fl.strategy": "krum", "fl.num_malicious": 1},
    "multikrum": {"fl.strategy": "multikrum", "fl.num_malicious": 1},
    "bulyan (7 sites)": {"fl.strategy": "bulyan", "fl.num_malicious": 1},
}
MALICIOUS = "site6"


def write_federation(out: Path, sites: int, patients: int = 60, crop: int = 32, seed: int = 0):
    """A tiny learnable crop cache: per site 60% train, 20% val, 20% test patients."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:crop, :crop]
    blob = np.exp(-((yy - crop / 2) ** 2 + (xx - crop / 2) ** 2) / (2 * (crop / 8) ** 2))
    rows, crops = [], {}
    names = [f"site{i + 1}" for i in range(sites)]
    for s_i, site in enumerate(names):
        site_crops = []
        for p in range(patients):
            split = ("train", "train", "train", "val", "test")[p % 5]
            for f in range(2):
                label = int(rng.random() < 0.4)
                x = rng.normal(0.5, 0.15, size=(3, crop, crop)) * (1 + 0.05 * s_i)
                strength = (0.3 if label else 0.1) + rng.normal(0, 0.08)
                x[0] -= strength * blob
                x[1] -= strength * blob
                x[2] += strength * blob
                rows.append(
                    {
                        "row": len(site_crops), "site": site, "patient_id": f"{site}-{p:03d}",
                        "study_id": "1", "finding_id": f"f{f}", "split": split, "label": label,
                        "isup": 3 if label else 0, "zone": "PZ", "source": "reader", "slice": -1,
                        "adc_mean": float(1400 - 600 * strength), "psad": 0.1, "case_label": label,
                    }
                )  # fmt: skip
                site_crops.append(x.astype(np.float32))
        crops[site] = np.stack(site_crops)
    meta = {
        "mode": "lesion", "crop": crop, "spacing": 0.5, "channels": ["t2w", "adc", "hbv"],
        "n_slices": 1, "seed": seed, "sites": names, "format": "benchmark",
    }  # fmt: skip
    write_cache(out, meta, rows, crops)
    return names


class Attacker:
    """What the malicious site does to its honest reply."""

    def __init__(self, kind: str, seed: int = 0):
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        self.first: dict[str, np.ndarray] | None = None

    def __call__(self, received: dict[str, np.ndarray], reply: Message) -> Message:
        content = reply.content
        honest = wire.from_record(content["arrays"])
        metrics = dict(content["metrics"])
        g = received
        if self.kind == "sign_flip":
            out = {k: g[k] - 10 * (v - g[k]) for k, v in honest.items()}
        elif self.kind == "scaled":
            out = {k: g[k] + 100 * (v - g[k]) for k, v in honest.items()}
        elif self.kind == "n_lie":
            out = {k: g[k] - (v - g[k]) for k, v in honest.items()}
            metrics["num-examples"] = 1e12
        elif self.kind == "nan":
            out = {k: v.copy() for k, v in honest.items()}
            first, second = sorted(out)[:2]
            out[first].flat[0], out[second].flat[0] = np.nan, np.inf
        elif self.kind == "noise":
            out = {k: g[k] + self.rng.normal(0, 1.0, v.shape) for k, v in honest.items()}
        elif self.kind == "stale":
            self.first = self.first or {k: v.copy() for k, v in honest.items()}
            out = self.first
        else:
            return reply
        out = {k: np.asarray(v, np.float32) for k, v in out.items()}
        reply.content = RecordDict(
            {
                "arrays": wire.to_record(out),
                "metrics": MetricRecord(metrics),
                REPORT_KEY: content[REPORT_KEY],
            }
        )
        return reply


class InProcessGrid(Grid):
    """Flower's Grid interface over ClientApps called in this process (no Ray, no network)."""

    def __init__(self, client_app, contexts: dict[int, Context], attack: dict[int, Attacker]):
        self.app, self.contexts, self.attack = client_app, contexts, attack

    def set_run(self, run) -> None:  # noqa: D102 - the Grid interface
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self):
        return []

    def push_messages(self, messages):
        raise NotImplementedError("send_and_receive only")

    def pull_messages(self, message_ids):
        raise NotImplementedError("send_and_receive only")

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            received = wire.from_record(msg.content["arrays"])
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # an error reply, as Flower's SuperNode would send
                reply = Message(Error(code=0, reason=str(exc)), reply_to=msg)
            if node in self.attack and msg.metadata.message_type == "train":
                reply = self.attack[node](received, reply)
            replies.append(reply)
        return replies


def run_once(cache: Path, names: list[str], work: Path, settings: dict, attack: str, rounds: int):
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    out = work / "runs" / f"{settings['_name']}__{attack}".replace(" ", "_")
    sites_file = out / "sites.json"
    out.mkdir(parents=True, exist_ok=True)
    sites_file.unlink(missing_ok=True)
    flat = {
        "data.cache": str(cache), "out": str(out), "seed": 0,
        "model.arch": "swin_test", "model.crop": 32, "finetune.method": "lora",
        "finetune.lora_r": 2, "train.batch_size": 8, "train.steps": 5, "train.lr": 3e-3,
        "train.threads": 1, "fl.rounds": rounds, "fl.fraction_evaluate": 0.0,
        "fl.min_train_nodes": len(names), "fl.min_available_nodes": len(names),
        "fl.sites": str(sites_file), "fl.eval_every": rounds, "eval.n_boot": 10,
        **{k: v for k, v in settings.items() if not k.startswith("_")},
    }  # fmt: skip
    cfg = RunConfig.from_flat(flat)
    contexts, attackers = {}, {}
    for node, site in enumerate(names, start=1):
        train = len(setup.client_dataset(cfg, site, "train"))
        val = len(setup.client_dataset(cfg, site, "val"))
        if settings.get("_unregistered"):  # no preflight sizes: only the 1e9 bound applies
            train = val = 0
        register_site(sites_file, node, site, train, val)
        node_config = {"site": site, "cache": str(cache), "state-dir": str(out / "state")}
        contexts[node] = Context(
            run_id=1, node_id=node, node_config=node_config, state=RecordDict(), run_config={}
        )
        if site == MALICIOUS and attack != "clean":
            attackers[node] = Attacker(attack)
    grid = InProcessGrid(make_client_app(cfg.to_flat()), contexts, attackers)
    started = time.time()
    summary = run_server(grid, cfg)  # a run that aggregated nothing has status "failed"
    rounds_log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    norms = [
        c["update_norm"]
        for r in rounds_log
        for c in r.get("clients", [])
        if "update_norm" in c and c["site"] != MALICIOUS
    ]
    return {
        "final_test_auroc": summary.get("last_round_test_auroc"),
        "status": summary["status"],
        "reason": summary.get("reason", ""),
        "rejected": summary.get("rejected_replies", 0),
        "dropped": sum(len(r.get("notes", [])) for r in rounds_log),
        "honest_norms": norms,
        "wall_s": round(time.time() - started, 1),
    }


def table(results: dict, options: list[str]) -> str:
    lines = [
        "| option | " + " | ".join(ATTACKS) + " | worst Δ vs its clean run |",
        "|---|" + "---:|" * len(ATTACKS) + "---:|",
    ]
    for option in options:
        row = results[option]
        clean = row["clean"]["final_test_auroc"]
        cells, worst = [], float("inf")
        for attack in ATTACKS:
            auroc = row[attack]["final_test_auroc"]
            if auroc is None:  # the run aggregated nothing
                cells.append("failed ✗")
                worst = float("-inf")
                continue
            mark = ""
            if attack != "clean":
                delta = auroc - clean
                worst = min(worst, delta)
                mark = " ✓" if delta >= -0.02 else " ✗"
            cells.append(f"{auroc:.3f}{mark}")
        shown = "run failed" if worst == float("-inf") else f"{worst:+.3f}"
        lines.append(f"| {option} | " + " | ".join(cells) + f" | {shown} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--work", type=Path, default=None, help="Folder for data and runs.")
    ap.add_argument("--options", default=",".join(OPTIONS), help="Comma-separated subset.")
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core per run: the machine is shared
    work = args.work or Path(tempfile.mkdtemp(prefix="poisoning_"))
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    caches = {}
    for n in (6, 7):
        caches[n] = work / f"cache{n}"
        if not (caches[n] / "index.csv").exists():
            write_federation(caches[n], n)
    names = {n: [f"site{i + 1}" for i in range(n)] for n in (6, 7)}
    # The clipping bound comes from honest updates: the clean run with clipping that never bites.
    probe = run_once(
        caches[6],
        names[6],
        work,
        {"_name": "probe", "fl.strategy": "fedavg", "fl.clip_norm": 1e9},
        "clean",
        args.rounds,
    )
    clip = round(2 * float(np.median(probe["honest_norms"])), 4)
    print(f"honest update norm median {clip / 2:.4f} -> fl.clip_norm = {clip}", flush=True)
    results: dict = {}
    for option in options:
        settings = dict(OPTIONS[option], _name=option)
        if settings.get("fl.clip_norm", 0) is None:
            settings["fl.clip_norm"] = clip
        n = 7 if option.startswith("bulyan") else 6
        results[option] = {}
        for attack in ATTACKS:
            res = run_once(caches[n], names[n], work, settings, attack, args.rounds)
            results[option][attack] = res
            auroc = res["final_test_auroc"]
            shown = f"{auroc:.3f}" if auroc is not None else f"none ({res['reason']})"
            print(f"{option:18s} {attack:10s} final test AUROC {shown} "
                  f"(rejected {res['rejected']}, dropped {res['dropped']}, {res['wall_s']} s)",
                  flush=True)  # fmt: skip
    (work / "poisoning.json").write_text(json.dumps({"clip_norm": clip, **results}, indent=1))
    print()
    print(table(results, options))
    print(f"\n(results in {work / 'poisoning.json'})")


if __name__ == "__main__":
    main()
