"""DP-SGD with Opacus on peft LoRA tensors, one patient per privacy unit (engine.dp_sgd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

import opacus.optimizers  # noqa: E402
import opacus.utils.uniform_sampler as uniform_sampler  # noqa: E402

from fedprostate.engine import setup  # noqa: E402
from fedprostate.engine.dp_sgd import patient_groups, train_local_private  # noqa: E402
from fl_fixtures import tiny_config, write_tiny_cache  # noqa: E402


def test_per_patient_clipping_on_the_lora_tensors_only(tmp_path, monkeypatch):
    cache = write_tiny_cache(tmp_path / "cache", sites=("siteA",))
    cfg = tiny_config(
        cache,
        **{
            "fl.strategy": "fedavg",
            "finetune.lora_attn": False,
            "finetune.lora_mlp": True,
            "privacy.dp_sgd": True,
            "privacy.dp_sgd_noise": 1.0,
            "privacy.delta": 1e-3,
            "train.steps": 3,
        },
    )
    ds = setup.client_dataset(cfg, "siteA", "train")
    groups = patient_groups(ds, np.arange(len(ds)))
    assert len(groups) == 6 and all(len(g) == 2 for g in groups)  # two crops per patient

    drawn: list[int] = []
    rows: list[int] = []
    real_iter = uniform_sampler.UniformWithReplacementSampler.__iter__
    real_clip = opacus.optimizers.DPOptimizer.clip_and_accumulate

    def sampled(self):
        for chosen in real_iter(self):
            drawn.append(len(chosen))
            yield chosen

    def clipped(self):
        rows.append(self.params[0].grad_sample.shape[0])
        return real_clip(self)

    monkeypatch.setattr(uniform_sampler.UniformWithReplacementSampler, "__iter__", sampled)
    monkeypatch.setattr(opacus.optimizers.DPOptimizer, "clip_and_accumulate", clipped)

    ft = setup.build_model(cfg).ft
    before = {n: p.detach().clone() for n, p in ft.model.named_parameters()}
    trainable = {n for n, p in ft.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head") for n in trainable)
    result = train_local_private(ft.model, ds, cfg.train, cfg.privacy, seed=0)
    assert result.steps == 3 == len(drawn)
    assert rows == drawn  # one gradient row per sampled patient, not per crop
    for name, p in ft.model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == (name in trainable), name  # noise moves every trainable tensor
        assert not hasattr(p, "grad_sample")
    assert not any(m._forward_hooks or m._backward_hooks for m in ft.model.modules())
