"""The one training loop: what it changes, what it must not, determinism, FedProx and KD."""

import copy

import numpy as np
import pytest
import torch

from fedprostate.config import TrainConfig
from fedprostate.engine import setup
from fedprostate.engine.loop import (
    augment_batch,
    class_weights,
    kd_loss,
    predict_scores,
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


def test_augmentation_is_seeded_and_never_flips_anterior_posterior():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    # Row sums are invariant to left-right flips and horizontal rolls but not to up-down flips.
    rows = x.sum(-1)
    for _ in range(5):
        out = augment_batch(x, torch.Generator().manual_seed(_))
        ratio = out.sum(-1) / rows.roll(0, -1)
        assert torch.isfinite(ratio).all()


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
