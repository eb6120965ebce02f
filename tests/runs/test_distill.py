"""Knowledge distillation: the KD loss, the teacher loader, footprints, one federated KD run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedprostate.config import TrainConfig
from fedprostate.engine.loop import kd_loss, train_local
from fedprostate.models.bundle import load_teacher
from fedprostate.records import predictions
from fedprostate.runs.distill import (
    distill_report,
    footprint,
    report_markdown,
    student_config,
)
from fedprostate.runs.export import export_run
from fedprostate.runs.pooled import centralize
from fl_fixtures import tiny_config, write_tiny_cache


class _Fixed(torch.nn.Module):
    """A 'teacher' that returns fixed logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_kd_gradient_pulls_softened_student_toward_teacher():
    temperature = 3.0
    teacher = _Fixed([2.0, -1.0])
    student = torch.tensor([[-1.0, 1.5], [0.3, 0.2], [4.0, -2.0]], requires_grad=True)
    x = torch.zeros(3, 1)
    kd_loss(student, teacher, x, temperature).backward()
    p_s = torch.softmax(student.detach() / temperature, 1)
    p_t = torch.softmax(teacher(x) / temperature, 1)
    # d/dz of T²·KL(p_t ‖ softmax(z/T)) / B  =  T·(p_s − p_t) / B
    torch.testing.assert_close(student.grad, temperature * (p_s - p_t) / 3)
    # a small step down the gradient moves every softened student distribution toward the teacher
    stepped = student.detach() - 0.5 * student.grad
    before = (p_s - p_t).abs().sum(1)
    after = (torch.softmax(stepped / temperature, 1) - p_t).abs().sum(1)
    assert torch.all(after < before)


def _kl_to_teacher(model, teacher, x, temperature):
    with torch.no_grad():
        return float(kd_loss(model(x), teacher, x, temperature))


def test_alpha_one_learns_the_teacher_and_ignores_labels(tmp_path):
    from fedprostate.data.cache import CropDataset, load_index
    from fedprostate.models.backbones import create_backbone

    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",))
    ds = CropDataset(cache, load_index(cache))
    teacher = _Fixed([-2.0, 1.0])
    cfg = TrainConfig(steps=8, batch_size=8, lr=3e-3, augment=False, class_weighting=False)
    x = torch.stack([ds[i][0] for i in range(8)])
    results = []
    for flip in (False, True):
        if flip:  # same crops, inverted labels: with α = 1 labels must not matter
            for r in ds.rows:
                r["label"] = 1 - r["label"]
            ds = CropDataset(cache, ds.rows)
        torch.manual_seed(0)
        student = create_backbone("student_test", crop=32)
        before = _kl_to_teacher(student.eval(), teacher, x, 2.0)
        train_local(student, ds, cfg, seed=1, teacher=teacher, kd_temperature=2.0, kd_alpha=1.0)
        after = _kl_to_teacher(student.eval(), teacher, x, 2.0)
        assert after < 0.5 * before
        results.append(student(x).detach())
    torch.testing.assert_close(results[0], results[1])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    cache = write_tiny_cache(root / "cache")
    cfg = tiny_config(cache, **{"fl.rounds": 2, "train.steps": 4})
    centralize(cfg, root / "teacher_run")
    export_run(root / "teacher_run", root / "teacher", formats=("bundle",), n_boot=20)
    return root, root / "teacher", cfg


def test_load_teacher_is_frozen_and_matches_bundle(teacher):
    _, bundle, _ = teacher
    model = load_teacher(bundle)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert not any("lora" in k for k in model.state_dict())
    from fedprostate.models.bundle import load_bundle

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_bundle(bundle)[0](x))


def _auroc(rows) -> float:
    from sklearn.metrics import roc_auc_score

    rows = [r for r in rows if r["source"] in ("reader", "proposal")]
    return float(roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows]))


def _scored(n_patients: int, gain: float, seed: int, noise: float = 1.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_patients)
    return [
        {"site": "S", "patient_id": str(i), "finding_id": "f1", "source": "reader",
         "label": int(t), "score": float(gain * t + noise * rng.normal())}
        for i, t in enumerate(y)
    ]  # fmt: skip


def test_student_vs_teacher_verdict_follows_the_margin():
    """The student-vs-teacher verdict is computed, not typed: a student far worse than its
    teacher is 'not reproduced', a same-ranking copy decides nothing (zero variance), a student
    with the same signal and its own noise on 400 patients is 'reproduced'. Mutants: the claim
    passed as superiority, the margin ignored, or the zero-variance rule dropped -> fail."""
    from fedprostate.runs.distill import _comparison

    teacher = _scored(400, 3.0, 0)
    worse = [dict(r, score=r["score"] * 0.0 + np.random.default_rng(i).normal())
             for i, r in enumerate(teacher)]  # fmt: skip
    assert _comparison(teacher, worse, 300, 0, "noninferior", 0.02)["verdict"] == "not reproduced"
    copy = [dict(r, score=2 * r["score"] + 1) for r in teacher]  # same ranking
    out = _comparison(teacher, copy, 300, 0, "noninferior", 0.02)
    assert out["verdict"] == "inconclusive" and out["bootstrap"]["flat"]
    close = [dict(r, score=r["score"] + 0.05 * np.random.default_rng(i).normal())
             for i, r in enumerate(teacher)]  # fmt: skip
    out = _comparison(teacher, close, 300, 0, "noninferior", 0.02)
    assert out["bootstrap"]["low"] < 0 and out["verdict"] == "reproduced"
    # sampled normal tissue never enters the verdict (mutant: rows not filtered -> 800 findings)
    tissue = [dict(r, finding_id="s1", source="sampled", label=0) for r in teacher]
    mixed = _comparison(teacher + tissue, close + tissue, 300, 0, "noninferior", 0.02)
    assert mixed["n_findings"] == 400 and mixed["bootstrap"]["low"] == out["bootstrap"]["low"]


def test_footprint_counts_and_times():
    from fedprostate.models.backbones import create_backbone

    model = create_backbone("student_test", crop=32)
    fp = footprint(model, 32, n_latency=5)
    n = sum(p.numel() for p in model.parameters())
    assert fp["parameters"] == n
    buffers = sum(b.numel() for b in model.buffers())
    assert 4 * (n + buffers) <= fp["size_mb"] * 1e6 < 4 * (n + buffers) + 200_000
    assert fp["latency_ms_batch1"] > 0 and fp["throughput_img_s_batch64"] > 0


@pytest.mark.slow
def test_federated_and_centralized_distillation_report(teacher):
    """One Flower simulation (federated KD) + centralized with and without the teacher."""
    from fedprostate.runs.federated import federate

    root, bundle, cfg = teacher
    cfg = cfg.replace(**{"fl.rounds": 2, "distill.alpha": 0.7})
    kd_cfg = student_config(cfg, "student_test", bundle)
    assert kd_cfg.finetune.method == "full" and kd_cfg.distill.teacher
    federate(kd_cfg, root / "fed_kd")
    centralize(kd_cfg, root / "cen_kd")
    centralize(student_config(cfg, "student_test", None), root / "plain")
    # the teacher reaches the pooled loop: same seed and data, different weights
    kd_w, plain_w = (load_file(str(root / r / "model.safetensors")) for r in ("cen_kd", "plain"))
    assert any(not np.allclose(kd_w[k], plain_w[k]) for k in kd_w)
    saved = (root / "fed_kd" / "config.toml").read_text(encoding="utf-8")
    assert str(bundle.resolve()) in saved and 'arch = "student_test"' in saved

    students = {}
    for name, run in (
        ("student_kd", "fed_kd"),
        ("student_plain", "plain"),
        ("centralized_kd", "cen_kd"),
    ):
        export_run(root / run, root / run / "bundle", formats=("bundle",), n_boot=20)
        rows = predictions.read(root / run / "predictions_test_best.csv")
        students[name] = {"bundle": root / run / "bundle", "rows": rows}
    report = distill_report(bundle, students, cfg, n_boot=50, n_latency=5)
    kd = report["students"]["student_kd"]
    assert kd["parameters"] < report["teacher"]["parameters"]
    assert kd["vs_teacher"]["claim"] == "noninferior" and kd["vs_teacher"]["margin"] == 0.02
    boot = kd["vs_teacher"]["bootstrap"]
    assert boot["auroc_b"] == pytest.approx(_auroc(students["student_kd"]["rows"]))
    expected = "reproduced" if boot["low"] > -0.02 and not boot["flat"] else None
    assert expected is None or kd["vs_teacher"]["verdict"] == expected
    assert "vs_student_without_teacher" in kd
    assert kd["speedup_latency"] == pytest.approx(
        report["teacher"]["latency_ms_batch1"] / kd["latency_ms_batch1"]
    )
    assert report["goal"]["speedup_met"] == (kd["speedup_latency"] >= 5)
    md = report_markdown(report)
    assert "student_kd" in md and "teacher" in md
    json.dumps(report, default=str)
