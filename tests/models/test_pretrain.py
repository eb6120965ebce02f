"""Self-supervised pre-training: SimMIM learns, runs are reproducible, the CLI writes a checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from fedprostate.models.foundation import backbone_sha256, load_foundation
from fedprostate.models.pretrain import pretrain


def smooth_crops(n=16, crop=32, seed=0):
    """Spatially smooth random images: structure a masked-image model can learn to fill in."""
    noise = torch.randn(n, 3, crop, crop, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)


@pytest.mark.parametrize("arch", ["swin_test", "vit_test"])
def test_simmim_loss_decreases(arch):
    _, history = pretrain(arch, smooth_crops(), epochs=8, batch_size=16, lr=2e-3, progress=False)
    assert len(history) == 8
    assert history[-1] < 0.7 * history[0], history


def test_pretrain_is_deterministic_and_leaves_global_rng_alone():
    crops = smooth_crops(n=12)
    rng_before = torch.get_rng_state()
    model_a, hist_a = pretrain("vit_test", crops, epochs=3, batch_size=4, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)
    model_b, hist_b = pretrain("vit_test", crops, epochs=3, batch_size=4, seed=3, progress=False)
    _, hist_c = pretrain("vit_test", crops, epochs=3, batch_size=4, seed=4, progress=False)
    assert hist_a == hist_b
    assert backbone_sha256(model_a) == backbone_sha256(model_b)
    assert hist_c != hist_a


def test_simclr_trains_resnet_and_simmim_refuses_it():
    crops = smooth_crops(n=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from fedprostate.models.backbones import create_backbone

        start = backbone_sha256(create_backbone("resnet_test", crop=32))
    model, history = pretrain(
        "resnet_test", crops, method="simclr", epochs=2, batch_size=8, progress=False
    )
    assert all(torch.isfinite(torch.tensor(history)))
    assert backbone_sha256(model) != start
    with pytest.raises(ValueError, match="simclr"):
        pretrain("resnet_test", crops, method="simmim", epochs=1, progress=False)


def test_pretrain_command_writes_checkpoint_metadata_and_curve(tmp_path):
    import fedprostate.commands.pretrain  # noqa: F401  registers the command
    from fedprostate.cli_app import app

    data = tmp_path / "crops.safetensors"
    save_file({"crops": smooth_crops(n=8).half()}, str(data))
    out = tmp_path / "foundation.safetensors"
    args = [
        "pretrain",
        "--data",
        str(data),
        "--arch",
        "swin_test",
        "--crop",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["arch"] == "swin_test" and meta["crop"] == 32
    assert meta["channels"] == ["t2w", "adc", "hbv"]
    assert len(meta["loss_history"]) == 2 and meta["pretrain"]["n_crops"] == 8
    assert out.with_suffix(".loss.png").stat().st_size > 0
    assert backbone_sha256(load_foundation(out, "swin_test", 32)) == meta["sha256"]
    bad = CliRunner().invoke(app, [*args[:6], "64", *args[7:]])
    assert bad.exit_code != 0 and "expected [N, 3, 64, 64]" in bad.output


def test_pretrain_command_reads_a_folder_of_unlabeled_studies_without_labels(tmp_path):
    import fedprostate.commands.pretrain  # noqa: F401  registers the command
    from fedprostate.cli_app import app
    from mri_fixtures import picai_phantoms, write_picai

    root = write_picai(tmp_path / "raw", picai_phantoms(2))
    (root / "labels").rename(tmp_path / "hidden_labels")  # labels are never read
    out = tmp_path / "f.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--data",
            str(root),
            "--arch",
            "swin_test",
            "--crop",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["pretrain"]["n_crops"] > 0 and meta["crop"] == 32


def test_simclr_views_flip_left_right_and_never_anterior_posterior():
    """Channel 0 a top-to-bottom ramp (anterior bright), channel 1 a left-to-right ramp. Every
    view keeps anterior above posterior (random crop, jitter and noise keep the ramp's sign);
    about half the views are mirrored left-right. Mutants: the flip applied to the vertical
    axis (theta[1, 1]) or to both, or no flip at all -> fail."""
    from fedprostate.models.pretrain import augment

    ramp = torch.linspace(1.0, -1.0, 32)
    x = torch.zeros(200, 3, 32, 32)
    x[:, 0] = ramp[:, None]
    x[:, 1] = -ramp[None, :]  # right bright
    out = augment(x, torch.Generator().manual_seed(0))
    top, bottom = out[:, 0, :8].mean((1, 2)), out[:, 0, -8:].mean((1, 2))
    assert bool((top > bottom).all())
    left, right = out[:, 1, :, :8].mean((1, 2)), out[:, 1, :, -8:].mean((1, 2))
    mirrored = (left > right).float().mean()
    assert 0.35 < mirrored < 0.65
