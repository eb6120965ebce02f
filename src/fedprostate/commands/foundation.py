"""``fedprostate foundation eval``: how good a frozen backbone is, on the clinical question."""

from __future__ import annotations

from pathlib import Path

import typer

from fedprostate.cli_app import JSON_OPT, app, console, print_json

foundation_app = typer.Typer(help="Foundation checkpoints: evaluate them.", no_args_is_help=True)
app.add_typer(foundation_app, name="foundation")


@foundation_app.command("eval")
def eval_command(
    ckpt: Path = typer.Argument(..., help="Checkpoint (.safetensors from pretrain, or .pth/.pt)."),
    data: Path = typer.Option(..., "--data", "--cache", help="Crop cache from `data prepare`."),
    arch: str | None = typer.Option(
        None, help="Architecture, for a checkpoint without our .json (e.g. resnet50)."
    ),
    seed: int = typer.Option(0, help="Seed of the random-init baseline and the bootstrap."),
    n_boot: int = typer.Option(1000, min=10, help="Patient bootstrap resamples."),
    device: str = typer.Option("cpu"),
    as_json: bool = JSON_OPT,
) -> None:
    """Linear probe and kNN AUROC on reader findings vs the same backbone with random weights;
    written into CKPT's .json and loss-curve figure."""
    from fedprostate.commands.pretrain import evaluate_and_record, print_probe_table
    from fedprostate.models.foundation import FoundationError

    if not ckpt.is_file():
        raise FoundationError(f"{ckpt}: no such checkpoint file")
    if not (data / "index.csv").is_file():
        raise ValueError(f"{data}: not a crop cache (no index.csv)")
    report = evaluate_and_record(ckpt, data, seed=seed, device=device, arch=arch, n_boot=n_boot)
    if as_json:
        print_json(report)
    else:
        print_probe_table(report, console())
