"""Fine-tuning methods on tiny backbones: what trains, what travels, what stays bit-identical."""

import hashlib

import pytest
import torch
from peft.tuners.lora import LoraLayer

from fedprostate.config import METHODS, FinetuneConfig
from fedprostate.models.backbones import create_backbone
from fedprostate.models.finetune import (
    build_finetune,
    count_trainable,
    get_communicated,
    lora_target_regex,
    merge_for_inference,
    payload_bytes,
    set_communicated,
)

ARCHS = ("swin_test", "vit_test", "resnet_test")
CROP = 64  # at 32 px Swin stage 4 is a 1×1 grid whose bias table gets no gradient


def make(arch, method="lora", init_seed=0, seed=0, **spec_kwargs):
    """A fine-tunable tiny model; the backbone's init is seeded so two builds share frozen weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        backbone = create_backbone(arch, crop=CROP)
    return build_finetune(backbone, arch, FinetuneConfig(method=method, **spec_kwargs), seed=seed)


def batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, CROP, CROP, generator=g), torch.randint(0, 2, (n,), generator=g)


def randomize(ft, keys, seed=1):
    """Overwrite tensors (e.g. LoRA B, adapter up) with random values so they matter."""
    g = torch.Generator().manual_seed(seed)
    state = ft.model.state_dict()
    with torch.no_grad():
        for k in keys:
            if state[k].is_floating_point():
                noise = 0.2 * torch.randn(state[k].shape, generator=g)
                state[k].copy_(noise.abs() + 0.5 if k.endswith("running_var") else noise)


def train_steps(ft, steps=3, seed=0):
    params = [p for p in ft.model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)  # no weight decay: a tensor moves only by its gradient
    ft.model.train()
    for step in range(steps):
        x, y = batch(seed + step)
        loss = torch.nn.functional.cross_entropy(ft.model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def logits(model, seed=5):
    model.eval()
    with torch.no_grad():
        return model(batch(seed)[0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_training_changes_exactly_the_trainable_state(arch, method):
    ft = make(arch, method)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    train_steps(ft)
    after = ft.model.state_dict()
    trainable = set(ft.trainable)
    unchanged = [k for k in ft.trainable if torch.equal(before[k], after[k])]
    moved_frozen = [
        k for k in before if k not in trainable and not torch.equal(before[k], after[k])
    ]
    assert not unchanged, f"trainable tensors that did not change: {unchanged[:5]}"
    assert not moved_frozen, f"frozen tensors/buffers that changed: {moved_frozen[:5]}"
    for name, p in ft.model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} computed a weight gradient"


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_batchnorm_keeps_running_stats_and_local_norms_train(arch):
    ft = make(arch, "lora", local_norms=True)
    assert ft.local, "local_norms must name local tensors"
    assert not set(ft.local) & set(ft.communicated)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    train_steps(ft)
    after = ft.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in ft.trainable)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in set(ft.trainable))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("local_norms", [False, True])
def test_communicated_is_ordered_subset_of_trainable(arch, method, local_norms):
    ft = make(arch, method, local_norms=local_norms)
    keys = list(ft.model.state_dict())
    assert set(ft.communicated) <= set(ft.trainable)
    assert set(ft.local) <= set(ft.trainable)
    assert set(ft.communicated) | set(ft.local) == set(ft.trainable)
    assert ft.communicated == [k for k in keys if k in set(ft.communicated)]
    assert ft.communicated, "something must travel"
    # the head always trains and travels
    head = {"swin_test": "head.fc.weight", "vit_test": "head.weight", "resnet_test": "fc.weight"}
    assert head[arch] in ft.communicated
    # what the upload really carries: the ArrayRecord's bytes less each tensor's name and its
    # 128-byte .npy header (independent of how payload_bytes counts)
    from fedprostate.fl import wire

    sent = {k: v.detach().numpy() for k, v in get_communicated(ft).items()}
    counted = wire.to_record(sent).count_bytes()
    assert payload_bytes(ft) == counted - sum(len(k) + 128 for k in sent)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_into_fresh_model_reproduces_logits(arch, method):
    sender = make(arch, method)
    randomize(sender, sender.communicated)
    expected = logits(sender.model)
    receiver = make(arch, method)
    base = logits(receiver.model)
    assert not torch.allclose(expected, base), "randomised communicated set must change the output"
    set_communicated(receiver, get_communicated(sender))
    assert torch.equal(logits(receiver.model), expected)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["lora", "ffa-lora"])
def test_merged_lora_equals_unmerged(arch, method):
    ft = make(arch, method, lora_mlp=True)
    randomize(ft, [k for k in ft.trainable if "lora_B" in k])
    unmerged = logits(ft.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base_keys = set(create_backbone(arch, crop=CROP).state_dict())
    merged = merge_for_inference(ft)
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert set(merged.state_dict()) == base_keys
    assert torch.allclose(logits(merged), unmerged, atol=1e-5, rtol=0)
    assert not torch.allclose(logits(make(arch, "linear").model), unmerged, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_starts_at_base_model_and_then_acts(arch):
    base = logits(make(arch, "linear").model)
    ft = make(arch, "adapter", adapter_dim=8, adapter_blocks=2)
    assert torch.equal(logits(ft.model), base)
    randomize(ft, [k for k in ft.communicated if ".adapter.up." in k])
    assert not torch.allclose(logits(ft.model), base)


def _a_hashes(ft):
    state = ft.model.state_dict()
    return [hashlib.sha256(state[k].numpy().tobytes()).hexdigest() for k in state if "lora_A" in k]


@pytest.mark.parametrize("arch", ARCHS)
def test_ffa_lora_shares_a_and_averaging_is_exact(arch):
    client1 = make(arch, "ffa-lora", init_seed=0, seed=7)
    torch.manual_seed(123)  # a different global RNG state must not change A
    client2 = make(arch, "ffa-lora", init_seed=0, seed=7)
    assert _a_hashes(client1) == _a_hashes(client2)
    assert _a_hashes(make(arch, "ffa-lora", seed=8)) != _a_hashes(client1)
    assert not any("lora_A" in k for k in client1.communicated)
    train_steps(client1, seed=0)
    train_steps(client2, seed=50)
    s1, s2 = client1.model.state_dict(), client2.model.state_dict()
    b_keys = [k for k in client1.communicated if "lora_B" in k]
    for b_key in b_keys:
        a_key = b_key.replace("lora_B", "lora_A")
        a = s1[a_key].flatten(1)
        b1, b2 = s1[b_key].flatten(1), s2[b_key].flatten(1)
        assert not torch.equal(b1, b2)
        mean_of_products = (b1 @ a + b2 @ a) / 2
        assert torch.allclose(mean_of_products, ((b1 + b2) / 2) @ a, atol=1e-6)


def test_plain_lora_averaging_is_not_exact():
    """Contrast for the FFA-LoRA test: with A trained, mean(B·A) != mean(B)·mean(A)."""
    c1, c2 = make("vit_test", "lora"), make("vit_test", "lora")
    train_steps(c1, seed=0)
    train_steps(c2, seed=50)
    s1, s2 = c1.model.state_dict(), c2.model.state_dict()
    b_key = "blocks.0.attn.qkv.lora_B.default.weight"
    a_key = b_key.replace("lora_B", "lora_A")
    mean_prod = (s1[b_key] @ s1[a_key] + s2[b_key] @ s2[a_key]) / 2
    prod_mean = ((s1[b_key] + s2[b_key]) / 2) @ ((s1[a_key] + s2[a_key]) / 2)
    assert not torch.allclose(mean_prod, prod_mean, atol=1e-6)


def test_set_communicated_is_strict():
    ft = make("swin_test", "lora")
    tensors = get_communicated(ft)
    first = ft.communicated[0]
    missing = dict(tensors)
    del missing[first]
    with pytest.raises(ValueError, match="missing"):
        set_communicated(ft, missing)
    with pytest.raises(ValueError, match="extra.weight"):
        set_communicated(ft, {**tensors, "extra.weight": torch.zeros(1)})
    bad = dict(tensors)
    bad[first] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=first.replace(".", r"\.")):
        set_communicated(ft, bad)


def test_swin_tiny_lora_r8_counts_exactly():
    ft = build_finetune(create_backbone("swin_tiny", crop=64), "swin_tiny", FinetuneConfig())
    trainable = dict(ft.model.named_parameters())
    lora = sum(p.numel() for n, p in trainable.items() if "lora_" in n and p.requires_grad)
    head = sum(p.numel() for n, p in trainable.items() if n.startswith("head.") and p.requires_grad)
    assert (lora, head, count_trainable(ft)) == (211_968, 1_538, 213_506)
    assert payload_bytes(ft) == 854_024  # 0.85 MB fp32
    assert not any(k.startswith("patch_embed") for k in ft.trainable)


def test_spec_validation():
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig(method="prompt")
    with pytest.raises(ValueError, match="lora_r"):
        FinetuneConfig(lora_r=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        FinetuneConfig(lora_dropout=1.0)
    with pytest.raises(ValueError, match="adapter_blocks"):
        make("swin_test", "adapter", adapter_blocks=3)  # swin_test stage 4 has 2 blocks


@pytest.mark.parametrize("stages", [1, 2])
def test_lora_stages_adapt_only_the_last_stages_and_backward_stops_there(stages):
    spec = FinetuneConfig(method="lora", lora_r=2, lora_stages=stages)
    ft = build_finetune(create_backbone("swin_test", crop=CROP, num_classes=2), "swin_test", spec)
    first = 4 - stages
    adapted = {int(n.split(".")[1]) for n, _ in ft.model.named_modules() if ".lora_A" in n}
    assert adapted == set(range(first, 4))
    reached = []  # stages the backward pass went through
    for i, stage in enumerate(ft.model.layers):
        stage.register_full_backward_hook(lambda m, gi, go, i=i: reached.append(i))
    ft.model(torch.randn(2, 3, CROP, CROP)).sum().backward()
    assert sorted(reached) == list(range(first, 4))  # earlier stages: no backward at all
    for name, p in ft.model.named_parameters():
        if name.startswith(("patch_embed", *(f"layers.{i}." for i in range(first)))):
            assert p.grad is None, name
    everywhere = build_finetune(
        create_backbone("swin_test", crop=CROP, num_classes=2), "swin_test", FinetuneConfig()
    )
    reached.clear()
    for i, stage in enumerate(everywhere.model.layers):
        stage.register_full_backward_hook(lambda m, gi, go, i=i: reached.append(i))
    everywhere.model(torch.randn(2, 3, CROP, CROP)).sum().backward()
    assert sorted(reached) == [0, 1, 2, 3]


def test_lora_stages_on_resnet_and_refused_on_vit():
    assert lora_target_regex("resnet_test", stages=2) == r"layer[3-4]\.\d+\.conv[123]"
    with pytest.raises(ValueError, match="finetune.lora_stages"):
        lora_target_regex("vit_test", stages=1)
