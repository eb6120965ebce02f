"""``fedprostate data pool`` and ``fedprostate pretrain`` (central or ``--federated``).

``data pool`` extracts the unlabeled crops once (images only, labels never read) into one
``.safetensors`` file; ``pretrain`` reads that file or a study folder. Outputs of ``pretrain
--out F.safetensors``: the backbone ``F.safetensors`` with ``F.json`` (metadata, loss history,
throughput and, with ``--eval``, the probes), the loss curve ``F.loss.png`` and the resumable
state ``F.state.pt`` (central, written after every epoch) or the run folder ``F.fl/`` (federated).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from fedprostate.cli_app import JSON_OPT, app, console, data_app, print_json

CACHE_HELP = "A crop cache from `data prepare`: take its crop size and spacing (fine-tuning's)."


def cache_geometry(cache: Path) -> tuple[int, float]:
    from fedprostate.data.cache import load_meta

    if not (cache / "meta.json").is_file():
        raise ValueError(f"{cache}: not a crop cache (no meta.json)")
    meta = load_meta(cache)
    return int(meta["crop"]), float(meta.get("spacing", 0.5))


@data_app.command("pool")
def pool_command(
    data: Path = typer.Option(..., "--data", help="Unlabeled studies (a synth output, images/)."),
    out: Path = typer.Option(..., "--out", help="Pool file to write (.safetensors)."),
    crop: int = typer.Option(64, help="Crop size in pixels (ignored with --like)."),
    spacing: float = typer.Option(0.5, help="mm per pixel (ignored with --like)."),
    like: Path | None = typer.Option(None, "--like", help=CACHE_HELP),
    per_study: int = typer.Option(16, min=1, help="Crops per study."),
    seed: int = typer.Option(0),
    workers: int = typer.Option(1, min=1, help="Processes reading studies."),
    as_json: bool = JSON_OPT,
) -> None:
    """Extract unlabeled pre-training crops across the gland and its surroundings (no labels)."""
    from fedprostate.data.unlabeled import extract_pool, save_pool

    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the pool file must end in .safetensors")
    if like is not None:
        crop, spacing = cache_geometry(like)
    t0 = time.time()
    pool = extract_pool(data, crop, spacing, per_study, seed, workers)
    save_pool(out, pool)
    summary = {"pool": str(out), "studies": len(pool.studies), "crops": len(pool), "crop": crop,
               "spacing": spacing, "skipped": len(pool.skipped),
               "seconds": round(time.time() - t0, 1)}  # fmt: skip
    if as_json:
        print_json(summary)
        return
    console().print(
        f"{out}: {summary['crops']} crops of {summary['studies']} studies ({crop} px at "
        f"{spacing} mm, {summary['skipped']} studies skipped) in {summary['seconds']} s"
    )


def load_pretrain_pool(data: Path, crop: int | None, spacing: float, per_study: int, seed: int,
                       workers: int = 1):  # fmt: skip
    """The pool from a ``.safetensors`` file (``crops``) or a study folder; its crop size must
    be ``crop`` when given."""
    from fedprostate.data.unlabeled import extract_pool, load_pool

    if data.is_file():
        if data.suffix != ".safetensors":
            raise ValueError(f"{data}: expected a .safetensors file or a study folder")
        pool = load_pool(data)
    elif data.is_dir():
        pool = extract_pool(data, crop or 64, spacing, per_study, seed, workers)
    else:
        raise ValueError(f"{data}: no such file or folder")
    size = int(pool.crops.shape[-1])
    if crop is not None and size != crop:
        raise ValueError(
            f"{data}: crops have shape {tuple(pool.crops.shape)}, expected [N, 3, {crop}, {crop}]"
        )
    pool.meta.setdefault("crop", size)
    return pool


@app.command("pretrain")
def pretrain_command(
    data: Path = typer.Option(
        ..., help="Unlabeled pool (.safetensors from `data pool`) or a folder of studies."
    ),
    out: Path = typer.Option(
        ..., help="Output checkpoint (.safetensors; .json, .loss.png and .state.pt beside)."
    ),
    arch: str = typer.Option("swin_tiny", help="Backbone name (see models.backbones.BACKBONES)."),
    crop: int | None = typer.Option(None, help="Crop size in pixels (default: the pool's, or 64)."),
    method: str = typer.Option("dino", help="dino (any backbone), simclr, simmim (Swin, ViT)."),
    epochs: int = typer.Option(10, min=1, help="Epochs (federated: local epochs per round)."),
    batch_size: int = typer.Option(64, min=2),
    lr: float = typer.Option(5e-4),
    seed: int = typer.Option(0),
    spacing: float = typer.Option(0.5, help="mm per pixel when extracting from studies."),
    per_study: int = typer.Option(16, help="Crops per study when extracting from studies."),
    workers: int = typer.Option(1, min=1, help="Processes reading studies."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N (bf16 autocast on CUDA)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's saved state."),
    eval_cache: Path | None = typer.Option(
        None,
        "--eval",
        help="Crop cache: probe the result on its reader findings (foundation eval).",
    ),
    federated: bool = typer.Option(False, "--federated", help="Federated pre-training (Flower)."),
    sites: int = typer.Option(4, min=1, help="Federated: sites the pool is split across."),
    rounds: int = typer.Option(10, min=1, help="Federated: rounds."),
    overrides: list[str] = typer.Option(
        None, "--set", "-s", help="Federated: run config key=value (fl.strategy=fedadam, ...)."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    as_json: bool = JSON_OPT,
) -> None:
    """Pre-train a backbone self-supervised on unlabeled MRI crops (labels are never read)."""
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the checkpoint must end in .safetensors")
    if eval_cache is not None:
        cache_crop, _ = cache_geometry(eval_cache)
        if crop is not None and crop != cache_crop:
            raise ValueError(
                f"--eval {eval_cache} holds {cache_crop} px crops, this run pre-trains at {crop} px"
            )
    if federated:
        from fedprostate.runs.federated_pretrain import federate_pretrain, pretrain_config

        cfg = pretrain_config(data, arch, crop, method, epochs, batch_size, lr, seed, sites,
                              rounds, device, overrides or [])  # fmt: skip
        summary = federate_pretrain(cfg, out, resume=resume)
        draw_loss_curve(out)
    else:
        summary = _central(data, out, arch, crop, method, epochs, batch_size, lr, seed, spacing,
                           per_study, workers, device, resume, progress)  # fmt: skip
    if eval_cache is not None:
        summary["foundation_eval"] = evaluate_and_record(out, eval_cache, seed=seed, device=device)
    _show(summary, as_json)


def _central(data, out, arch, crop, method, epochs, batch_size, lr, seed, spacing, per_study,
             workers, device, resume, progress) -> dict:  # fmt: skip
    import torch

    from fedprostate.models.foundation import save_checkpoint
    from fedprostate.models.pretrain import Pretrainer, PretrainSettings, PretrainStateError

    state_path = out.with_suffix(".state.pt")
    state = None
    if resume:
        if not state_path.is_file():
            raise ValueError(f"--resume: no saved state {state_path}")
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (any unreadable state is the same user error)
            raise PretrainStateError(f"{state_path}: unreadable state ({exc})") from None
        crop = crop or state.get("crop")
    elif state_path.exists():
        raise ValueError(
            f"{state_path}: a pre-training state is there: --resume continues it (or extends it "
            "with more --epochs); remove it to start over"
        )
    pool = load_pretrain_pool(data, crop, spacing, per_study, seed, workers)
    crop = int(pool.crops.shape[-1])
    settings = PretrainSettings(method, epochs, batch_size, lr, seed=seed, device=device)
    trainer = Pretrainer(arch, crop, settings)
    if state is not None:
        trainer.load_state_dict(state, source=str(state_path))
    crops = torch.from_numpy(pool.crops)
    if trainer.n_crops not in (None, len(crops)):
        raise PretrainStateError(
            f"{state_path}: cannot resume: it was trained on {trainer.n_crops} crops, "
            f"{data} has {len(crops)}"
        )
    t0 = time.time()
    seconds_before = float((state or {}).get("seconds", 0.0))

    def save_state(tr: Pretrainer) -> None:
        snapshot = tr.state_dict() | {"seconds": seconds_before + time.time() - t0}
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save(snapshot, tmp)
        os.replace(tmp, state_path)

    out.parent.mkdir(parents=True, exist_ok=True)
    history = trainer.fit(crops, progress=progress, on_epoch=save_state)
    seconds = seconds_before + time.time() - t0
    meta = {
        "arch": arch,
        "crop": crop,
        "spacing": pool.meta.get("spacing"),
        "normalization": pool.meta.get("normalization", "as stored"),
        "pretrain": {
            "method": method,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "n_crops": len(crops),
            "n_studies": len(pool.studies),
            "data": str(data),
            "device": device,
            "bf16": settings.autocast,
            "seconds": round(seconds, 1),
            "img_per_s": round(sum(trainer.throughput) / len(trainer.throughput), 1),
            "pool": {k: v for k, v in pool.meta.items() if k != "normalization"},
        },  # fmt: skip
        "loss_history": history,
    }
    written = save_checkpoint(out, trainer.encoder(), meta)
    draw_loss_curve(out)
    return {"checkpoint": str(out), "sha256": written["sha256"], "loss_first": history[0],
            "loss_last": history[-1], "epochs": len(history), "seconds": round(seconds, 1),
            "img_per_s": meta["pretrain"]["img_per_s"]}  # fmt: skip


def draw_loss_curve(ckpt: Path, probe: dict | None = None) -> Path | None:
    """``CKPT.loss.png`` from the loss history in CKPT's JSON (per epoch, or per round when
    federated), with the foundation evaluation under it when there is one."""
    from fedprostate.models.foundation import checkpoint_meta
    from fedprostate.report.plots import loss_curve

    meta = checkpoint_meta(ckpt) or {}
    history = meta.get("loss_history") or meta.get("round_history")
    if not history:
        return None
    p = meta.get("pretrain", {})
    where = f"federated, {p.get('sites')} sites" if p.get("federated") else "central"
    title = f"{p.get('method', '')} pre-training ({where}), {meta['arch']} @ {meta['crop']}px"
    xlabel = "round" if "round_history" in meta else "epoch"
    probe = probe or meta.get("foundation_eval")
    return loss_curve(history, Path(ckpt).with_suffix(".loss.png"), title, xlabel, probe=probe)


def evaluate_and_record(ckpt: Path, cache: Path, seed: int = 0, device: str = "cpu",
                        arch: str | None = None, n_boot: int = 1000) -> dict:  # fmt: skip
    """Probe ``ckpt`` on ``cache`` and write the result into its JSON and loss-curve figure."""
    from fedprostate.engine.probe import evaluate_foundation
    from fedprostate.models.foundation import checkpoint_meta, update_checkpoint_meta

    report = evaluate_foundation(ckpt, cache, arch=arch, seed=seed, n_boot=n_boot, device=device)
    extra = {} if checkpoint_meta(ckpt) else {"arch": report["arch"], "crop": report["crop"]}
    update_checkpoint_meta(ckpt, foundation_eval=report, **extra)
    draw_loss_curve(ckpt, report)
    return report


def _show(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    con = console()
    con.print(
        f"[green]saved[/green] {summary['checkpoint']} (sha256 {summary['sha256'][:12]}…), "
        f"loss {summary['loss_first']:.4f} → {summary['loss_last']:.4f} in "
        f"{summary['seconds']:.0f} s"
        + (f", {summary['img_per_s']:.0f} img/s" if summary.get("img_per_s") else "")
    )
    if "foundation_eval" in summary:
        print_probe_table(summary["foundation_eval"], con)
    typer.echo(json.dumps({k: summary[k] for k in ("checkpoint", "loss_first", "loss_last")}))


def print_probe_table(report: dict, con) -> None:
    n = report["n_findings"]
    from rich.table import Table

    table = Table(
        title=f"frozen {report['arch']} @ {report['crop']} px: probes on reader findings "
        f"(train {n['train']} / val {n['val']} / test {n['test']}, "
        f"{report['n_patients_test']} test patients)"
    )
    for col in ("probe", "backbone", "setting", "val AUROC", "test AUROC [95% CI]",
                "Δ vs random [95% CI], p"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("probe", "backbone") else "right")
    for probe in ("linear", "knn"):
        d = report[probe]["delta"]
        for arm in ("pretrained", "random"):
            r = report[probe][arm]
            setting = f"C={r['C']}" if "C" in r else f"k={r['k']}"
            delta = (
                f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], p={d['p_value']:.3f}"
                if arm == "pretrained"
                else ""
            )
            table.add_row(probe, arm, setting, f"{r['val_auroc']:.3f}",
                          f"{r['test_auroc']:.3f} [{r['test_low']:.3f}, {r['test_high']:.3f}]",
                          delta)  # fmt: skip
    con.print(table)
