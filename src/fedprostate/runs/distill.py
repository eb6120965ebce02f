"""Knowledge distillation of an exported teacher bundle into a compact student, and its report.

Federated distillation is an ordinary federated run of the student (``model.arch=<student>``,
``finetune.method=full``, no foundation) with ``distill.teacher`` set: every client loads the
frozen teacher (:func:`fedprostate.models.bundle.load_teacher`) and trains with (1 − α)·CE + α·T²·KL (``train.kd_loss``);
the server aggregates students with the configured strategy and codec. The centralized baseline
is ``pooled.centralize`` with the same configuration. :func:`run_distillation` runs the student
with the teacher, the same student without a teacher and (optionally) centralized distillation,
exports each as a bundle and writes :func:`distill_report`.

The report scores the teacher itself on the student's test split (same findings), measures CPU
latency (batch 1, median of ``n_latency`` forwards) and throughput (batch 64) of the *bundled*
models in this process with the current torch thread count, and compares AUROCs by the paired
patient bootstrap (``eval.compare.compare_models``): non-inferiority to the teacher with margin
``margin`` (0.02) and the gain over the teacher-free student.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

from fedprostate.config import ALPHA, NONINFERIORITY_MARGIN, RunConfig
from fedprostate.engine import setup
from fedprostate.engine.loop import predict_scores
from fedprostate.eval.compare import compare_models
from fedprostate.eval.metrics import evaluate_predictions, headline
from fedprostate.eval.verdicts import threshold, verdict_from_comparison
from fedprostate.models.bundle import load_bundle
from fedprostate.records import predictions
from fedprostate.runs.export import export_run
from fedprostate.runs.federated import federate
from fedprostate.runs.pooled import centralize

SPEEDUP_GOAL = 5.0
MARGIN = NONINFERIORITY_MARGIN


def footprint(model: nn.Module, crop: int, in_chans: int = 3, n_latency: int = 30) -> dict:
    """Parameters, fp32 safetensors size, CPU latency (batch 1) and throughput (batch 64)."""
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(path))
        size = path.stat().st_size
    gen = torch.Generator().manual_seed(0)
    one = torch.rand(1, in_chans, crop, crop, generator=gen)
    batch = torch.rand(64, in_chans, crop, crop, generator=gen)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(one)  # warm-up
        for _ in range(n_latency):
            t0 = time.perf_counter()
            model(one)
            times.append(time.perf_counter() - t0)
        model(batch)
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            model(batch)
        throughput = reps * 64 / (time.perf_counter() - t0)
    return {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "size_mb": size / 1e6,
        "latency_ms_batch1": float(np.median(times) * 1e3),
        "throughput_img_s_batch64": float(throughput),
        "threads": torch.get_num_threads(),
    }


def _auroc(rows: list[dict], n_boot: int, seed: int) -> dict:
    return evaluate_predictions(rows, n_boot=n_boot, seed=seed)["lesion"]["auroc"]


def teacher_test_rows(teacher: nn.Module, cfg: RunConfig) -> list[dict]:
    """The teacher's scores on the student's pooled test split, in prediction-row format."""

    dataset = setup.pooled_dataset(cfg, "test")
    scores, _ = predict_scores(teacher, dataset)
    return predictions.from_index(dataset.rows, scores, 0)


def _comparison(rows_a, rows_b, n_boot, seed, claim, margin) -> dict:
    """Paired test on the headline findings only (reader marks and proposals: sampled normal
    tissue never enters a verdict)."""
    comp = compare_models(
        headline(rows_a),
        headline(rows_b),
        n_boot=n_boot,
        seed=seed,
        level=1 - ALPHA,
        threshold=threshold(claim, margin),
    )
    comp["verdict"] = verdict_from_comparison(comp, claim=claim, alpha=ALPHA, margin=margin)
    comp["claim"] = claim
    comp["margin"] = margin
    return comp


def distill_report(
    teacher_bundle: str | Path,
    students: dict[str, dict],
    cfg: RunConfig,
    n_boot: int = 1000,
    seed: int = 0,
    margin: float = MARGIN,
    n_latency: int = 30,
) -> dict:
    """Compare students to the teacher and to the teacher-free student.

    ``students``: name → {"bundle": folder, "rows": test prediction rows}; must include
    ``"student_kd"`` (distilled) and may include ``"student_plain"`` (same student, no teacher)
    and ``"centralized_kd"``.
    """
    teacher, teacher_meta = load_bundle(teacher_bundle)
    crop = int(teacher_meta["crop"])
    t_rows = teacher_test_rows(teacher, cfg)
    report: dict = {
        "teacher": {
            "bundle": str(teacher_bundle),
            "arch": teacher_meta["arch"],
            **footprint(teacher, crop, len(teacher_meta["channel_names"]), n_latency=n_latency),
            "test_auroc": _auroc(t_rows, n_boot, seed),
        },
        "students": {},
        "margin": margin,
        "speedup_goal": SPEEDUP_GOAL,
    }
    t_lat = report["teacher"]["latency_ms_batch1"]
    t_thr = report["teacher"]["throughput_img_s_batch64"]
    for name, info in students.items():
        model, meta = load_bundle(info["bundle"])
        entry = {
            "arch": meta["arch"],
            **footprint(model, crop, len(meta["channel_names"]), n_latency=n_latency),
        }
        entry["test_auroc"] = _auroc(info["rows"], n_boot, seed)
        entry["speedup_latency"] = t_lat / entry["latency_ms_batch1"]
        entry["speedup_throughput"] = entry["throughput_img_s_batch64"] / t_thr
        entry["vs_teacher"] = _comparison(t_rows, info["rows"], n_boot, seed, "noninferior", margin)
        if name != "student_plain" and "student_plain" in students:
            entry["vs_student_without_teacher"] = _comparison(
                students["student_plain"]["rows"], info["rows"], n_boot, seed, "superior", 0.0
            )
        report["students"][name] = entry
    kd = report["students"].get("student_kd")
    if kd is not None:
        report["goal"] = {
            "speedup_latency": kd["speedup_latency"],
            "speedup_met": kd["speedup_latency"] >= SPEEDUP_GOAL,
            "noninferior_to_teacher": kd["vs_teacher"]["verdict"],
        }
    return report


def report_markdown(report: dict) -> str:
    def auc(d):
        if d["estimate"] is None:
            return "n/a"
        if d["low"] is None:
            return f"{d['estimate']:.3f}"
        return f"{d['estimate']:.3f} ({d['low']:.3f}–{d['high']:.3f})"

    t = report["teacher"]
    lines = [
        "# Distillation report",
        "",
        "| model | arch | params | size MB | latency ms (b=1) | img/s (b=64) | speed-up | "
        "test AUROC (95% CI) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        f"| teacher | {t['arch']} | {t['parameters']:,} | {t['size_mb']:.2f} | "
        f"{t['latency_ms_batch1']:.2f} | {t['throughput_img_s_batch64']:.0f} | 1.0× | "
        f"{auc(t['test_auroc'])} |",
    ]
    for name, s in report["students"].items():
        lines.append(
            f"| {name} | {s['arch']} | {s['parameters']:,} | {s['size_mb']:.2f} | "
            f"{s['latency_ms_batch1']:.2f} | {s['throughput_img_s_batch64']:.0f} | "
            f"{s['speedup_latency']:.1f}× | {auc(s['test_auroc'])} |"
        )
    lines += ["", f"Paired patient bootstrap, delta AUROC = student − reference "
              f"(non-inferiority margin {report['margin']}):", ""]  # fmt: skip
    for name, s in report["students"].items():
        for key, ref in (("vs_teacher", "teacher"), ("vs_student_without_teacher", "no teacher")):
            if key in s:
                b = s[key]["bootstrap"]
                low = "n/a" if b["low"] is None else f"{b['low']:+.3f}"
                high = "n/a" if b["high"] is None else f"{b['high']:+.3f}"
                lines.append(
                    f"- {name} vs {ref}: delta {b['delta']:+.3f} [{low}, {high}], "
                    f"{s[key]['claim']}: **{s[key]['verdict']}**"
                )
    if "goal" in report:
        g = report["goal"]
        lines += [
            "",
            f"Goal ≥ {report['speedup_goal']:.0f}× faster CPU inference: "
            f"{g['speedup_latency']:.1f}× ({'met' if g['speedup_met'] else 'not met'}); "
            f"non-inferior to the teacher: {g['noninferior_to_teacher']}.",
        ]
    return "\n".join(lines) + "\n"


def student_config(cfg: RunConfig, student: str, teacher: str | Path | None) -> RunConfig:
    """The student's run configuration: full fine-tuning from scratch, with or without KD."""
    return cfg.replace(
        **{
            "model.arch": student,
            "model.foundation": "",
            "model.foundation_sha256": "",
            "finetune.method": "full",
            "finetune.local_norms": False,
            "distill.teacher": str(Path(teacher).resolve()) if teacher else "",
        }
    )


def run_distillation(
    teacher: str | Path,
    cfg: RunConfig,
    student: str,
    out: str | Path,
    centralized: bool = False,
    n_latency: int = 30,
) -> dict:
    """Federated KD, the same student without a teacher, optional centralized KD; report."""

    out = Path(out)
    meta = load_bundle(teacher)[1]
    if int(meta["crop"]) != cfg.model.crop:
        raise ValueError(
            f"{teacher}: teacher crop {meta['crop']} differs from model.crop {cfg.model.crop}"
        )
    runs = {
        "student_kd": (federate, student_config(cfg, student, teacher)),
        "student_plain": (federate, student_config(cfg, student, None)),
    }
    if centralized:
        runs["centralized_kd"] = (centralize, student_config(cfg, student, teacher))
    students = {}
    for name, (fn, run_cfg) in runs.items():
        fn(run_cfg, out / name)
        export_run(out / name, out / name / "bundle", formats=("bundle",), n_boot=50)
        rows = predictions.read(out / name / "predictions_test_best.csv")
        students[name] = {"bundle": out / name / "bundle", "rows": rows}
    report = distill_report(
        teacher, students, cfg, n_boot=cfg.eval.n_boot, seed=cfg.seed, n_latency=n_latency
    )
    (out / "distill_report.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (out / "distill_report.md").write_text(report_markdown(report), encoding="utf-8")
    return report
