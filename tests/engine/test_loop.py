"""The one training loop: what it changes, what it must not, determinism, FedProx and KD."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from fedprostate.config import TrainConfig
from fedprostate.data.cache import CropDataset
from fedprostate.engine import setup
from fedprostate.engine.loop import (
    augment_batch,
    class_weights,
    kd_loss,
    lr_scale,
    predict_scores,
    sample_weights,
    train_local,
)
from fl_fixtures import tiny_config, write_tiny_cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = write_tiny_cache(tmp_path_factory.mktemp("cache"))
    cfg = tiny_config(cache)
    return cfg, setup.client_dataset(cfg, "siteA", "train")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trains_only_trainable_and_is_deterministic(tiny):
    cfg, ds = tiny
    models = [setup.build_model(cfg, fresh=True).ft.model for _ in range(2)]
    before = _state(models[0])
    tc = TrainConfig(steps=3, batch_size=8, lr=1e-2)
    results = [train_local(m, ds, tc, seed=5) for m in models]
    after = _state(models[0])
    trainable = {n for n, p in models[0].named_parameters() if p.requires_grad}
    assert trainable, "LoRA must leave something to train"
    for name in before:
        if name in trainable:
            assert not torch.equal(before[name], after[name]), f"{name} did not change"
        else:
            assert torch.equal(before[name], after[name]), f"frozen {name} changed"
    assert results[0].steps == 3 and results[0].num_examples == len(ds)
    assert results[0].loss == results[1].loss
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_fedprox_pulls_toward_the_global(tiny):
    cfg, ds = tiny
    base = setup.build_model(cfg, fresh=True).ft.model
    anchor = {n: p.detach().clone() for n, p in base.named_parameters() if p.requires_grad}

    def drift(mu):
        model = copy.deepcopy(base)
        tc = TrainConfig(steps=6, batch_size=8, lr=3e-2, prox_mu=mu)
        train_local(model, ds, tc, seed=1, global_params=anchor)
        return sum(
            float(((p.detach() - anchor[n]) ** 2).sum())
            for n, p in model.named_parameters()
            if p.requires_grad
        )

    assert drift(50.0) < 0.5 * drift(0.0)


def test_class_weights_balance_classes():
    w = class_weights(np.array([0, 0, 0, 1]))
    assert w[1] / w[0] == pytest.approx(3.0)
    balanced = class_weights(np.array([0, 1, 0, 1]))
    assert balanced[0] == pytest.approx(1.0) and balanced[1] == pytest.approx(1.0)


def test_augmentation_is_seeded_flips_left_right_and_never_anterior_posterior():
    # Anterior rows bright, posterior dark; and a bright left edge to see left-right flips.
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, :16, :] = 1.0
    x[:, :, :, :4] += 2.0
    a = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment_batch(x, torch.Generator().manual_seed(0)))
    out = augment_batch(x, torch.Generator().manual_seed(1))
    top, bottom = out[:, :, :16, 4:-4].mean((1, 2, 3)), out[:, :, 16:, 4:-4].mean((1, 2, 3))
    assert bool((top > bottom + 0.5).all())  # anterior stays anterior in every sample
    left, right = out[:, :, :, :8].mean((1, 2, 3)), out[:, :, :, -8:].mean((1, 2, 3))
    flipped = (right > left).float().mean()
    assert 0.3 < flipped < 0.7  # left-right is a true symmetry: about half are flipped


def test_learning_rate_schedule_warms_up_then_decays():
    cfg = TrainConfig(schedule="cosine", warmup_rounds=2)
    scales = [lr_scale(cfg, r, 10) for r in range(1, 11)]
    assert scales[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(scales[2:], scales[3:], strict=False))
    assert scales[-1] == pytest.approx(0.05)
    assert lr_scale(TrainConfig(), 7, 10) == 1.0  # constant by default


def test_sampled_tissue_weight_zero_trains_on_findings_only(tiny):
    """sampled_weight 0 equals training on the reader findings alone, seed for seed."""
    cfg, ds = tiny
    readers = CropDataset(ds.cache_dir, [r for r in ds.rows if r["source"] != "sampled"])
    a = setup.build_model(cfg, fresh=True).ft.model
    b = setup.build_model(cfg, fresh=True).ft.model
    tc = TrainConfig(steps=2, batch_size=4, lr=1e-2, augment=False)
    train_local(a, ds, dataclasses.replace(tc, sampled_weight=0.0), seed=3)
    train_local(b, readers, tc, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    weights = sample_weights(ds, 0.25)
    assert set(weights.tolist()) == {0.25, 1.0}


def test_kd_loss_zero_when_student_matches_teacher_and_pulls_otherwise():
    teacher = torch.nn.Linear(4, 2)
    x = torch.randn(16, 4)
    same = kd_loss(teacher(x).detach(), teacher, x, temperature=2.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(16, 2, requires_grad=True)
    loss = kd_loss(student, teacher, x, temperature=2.0)
    loss.backward()
    step = student - 0.5 * student.grad
    assert float(kd_loss(step, teacher, x, 2.0)) < float(loss)


def test_predict_scores_are_probabilities_in_dataset_order(tiny):
    cfg, ds = tiny
    model = setup.build_model(cfg, fresh=True).ft.model
    scores, labels = predict_scores(model, ds)
    assert scores.shape == (len(ds),) and ((scores >= 0) & (scores <= 1)).all()
    assert list(labels) == [int(r["label"]) for r in ds.rows]


def test_a_run_starts_from_the_initial_weights_even_after_the_cached_model_was_loaded(tiny):
    """The per-process model cache is reused by later runs: their start must not be its state."""
    cfg, _ = tiny
    first = setup.build_model(cfg)
    start = {k: v.copy() for k, v in first.initial_communicated.items()}
    setup.load_communicated(first.ft, {k: v + 1.0 for k, v in start.items()})  # a scored round
    again = setup.build_model(cfg)
    assert again is first  # cached
    for k, v in start.items():
        np.testing.assert_array_equal(again.initial_communicated[k], v)
    fresh = setup.build_model(cfg, fresh=True)
    for k, v in fresh.initial_communicated.items():
        np.testing.assert_array_equal(v, start[k])


def test_gradients_are_clipped_to_the_configured_global_norm(tiny):
    cfg, ds = tiny

    def last_grad_norm(clip):
        model = setup.build_model(cfg, fresh=True).ft.model
        train_local(model, ds, TrainConfig(steps=1, batch_size=8, lr=1e-2, grad_clip=clip), seed=4)
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    assert last_grad_norm(0.0) > 1e-3  # unclipped: the raw gradient
    assert last_grad_norm(1e-4) <= 1e-4 * 1.001


def test_bf16_autocast_only_when_asked_on_cpu(tiny):
    cfg, ds = tiny
    base = setup.build_model(cfg, fresh=True).ft.model

    def trained(precision):
        model = copy.deepcopy(base)
        tc = TrainConfig(steps=2, batch_size=8, lr=1e-2, precision=precision)
        loss = train_local(model, ds, tc, seed=3).loss
        return loss, [p.detach().clone() for p in model.parameters() if p.requires_grad]

    fp32, auto, bf16 = trained("fp32"), trained("auto"), trained("bf16")
    assert auto[0] == fp32[0] and all(
        torch.equal(a, b) for a, b in zip(auto[1], fp32[1], strict=True)
    )
    assert bf16[0] != fp32[0]  # bf16 arithmetic ran ...
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)  # ... and trains the same model
    assert all(p.dtype == torch.float32 for p in bf16[1])  # weights stay fp32
