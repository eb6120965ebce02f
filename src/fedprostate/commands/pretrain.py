"""``fedprostate pretrain``: self-supervised pre-training of a backbone on unlabeled crops."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedprostate.cli_app import app, console


def load_pretrain_crops(
    data: Path, crop: int, spacing: float, per_study: int, seed: int
) -> tuple[object, dict]:
    """Crops [N, 3, crop, crop] from a ``.safetensors`` file (tensor ``crops``) or a raw study
    folder (images only, labels never read); also a description of their source."""
    import torch

    if data.is_file():
        if data.suffix != ".safetensors":
            raise typer.BadParameter(f"{data}: expected a .safetensors file or a study folder")
        from safetensors import safe_open

        with safe_open(str(data), framework="pt") as handle:
            if "crops" not in handle.keys():
                raise typer.BadParameter(f"{data}: no tensor named 'crops'")
            crops = handle.get_tensor("crops").float()
            file_meta = handle.metadata() or {}
        source = {"data": str(data), "normalization": file_meta.get("normalization", "as stored")}
    elif data.is_dir():
        from fedprostate.data.unlabeled import extract_unlabeled_crops

        array = extract_unlabeled_crops(
            data, crop=crop, spacing=spacing, per_study=per_study, seed=seed
        )
        crops = torch.from_numpy(array).float()
        source = {
            "data": str(data),
            "normalization": "per-sequence, as in `data prepare` (extract_unlabeled_crops)",
            "spacing": spacing,
            "per_study": per_study,
        }
    else:
        raise typer.BadParameter(f"{data}: no such file or folder")
    if crops.ndim != 4 or crops.shape[1] != 3 or tuple(crops.shape[2:]) != (crop, crop):
        raise typer.BadParameter(
            f"{data}: crops have shape {tuple(crops.shape)}, expected [N, 3, {crop}, {crop}]"
        )
    return crops, source


def save_loss_curve(history: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(history) + 1), history, marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command("pretrain")
def pretrain_command(
    data: Path = typer.Option(
        ..., help="Folder of unlabeled studies, or .safetensors with 'crops'."
    ),
    out: Path = typer.Option(
        ..., help="Output checkpoint (.safetensors; .json and .loss.png beside)."
    ),
    arch: str = typer.Option("swin_tiny", help="Backbone name (see models.backbones.BACKBONES)."),
    crop: int = typer.Option(64, help="Crop size in pixels."),
    method: str = typer.Option("simmim", help="simmim (Swin, ViT) or simclr (any backbone)."),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(64, min=2),
    lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0),
    spacing: float = typer.Option(0.5, help="mm per pixel when extracting from studies."),
    per_study: int = typer.Option(8, help="Crops per study when extracting from studies."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Pre-train a backbone self-supervised on unlabeled MRI crops (labels are never read)."""
    from fedprostate.models.foundation import save_checkpoint
    from fedprostate.models.pretrain import pretrain

    if out.suffix != ".safetensors":
        raise typer.BadParameter(f"{out}: the checkpoint must end in .safetensors")
    crops, source = load_pretrain_crops(data, crop, spacing, per_study, seed)
    backbone, history = pretrain(
        arch,
        crops,
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=progress,
    )
    meta = {
        "arch": arch,
        "crop": crop,
        "normalization": source.pop("normalization"),
        "pretrain": {
            "method": method,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "n_crops": int(crops.shape[0]),
            **source,
        },
        "loss_history": history,
    }
    written = save_checkpoint(out, backbone, meta)
    curve = out.with_suffix(".loss.png")
    save_loss_curve(history, curve, f"{method} pre-training, {arch} @ {crop}px")
    con = console()
    con.print(
        f"[green]saved[/green] {out} (sha256 {written['sha256'][:12]}…), "
        f"loss {history[0]:.4f} → {history[-1]:.4f}, curve {curve}"
    )
    typer.echo(
        json.dumps({"checkpoint": str(out), "loss_first": history[0], "loss_last": history[-1]})
    )
