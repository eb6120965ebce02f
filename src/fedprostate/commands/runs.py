"""``federate``, ``centralize`` and ``local``: the three kinds of training run, same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from fedprostate.cli_app import JSON_OPT, app, console, fail, print_json
from fedprostate.config import RunConfig

CONFIG_OPT = typer.Option(None, "--config", "-c", help="Run configuration TOML (configs/*.toml).")
SET_OPT = typer.Option(None, "--set", "-s", help="Override a key: --set fl.rounds=5 (repeatable).")
OUT_OPT = typer.Option(..., "--out", "-o", help="Run folder to write.")
DATA_OPT = typer.Option(
    None, "--data", "--cache", help="Crop cache from `data prepare` (= --set data.cache=DIR)."
)
SEEDS_OPT = typer.Option(
    None,
    "--seeds",
    help="Run once per seed (0,1,2 or 0-4) into OUT/seed_<s>; OUT/seeds.json holds seed CIs.",
)
SUMMARY_KEYS = (
    "kind", "status", "strategy", "method", "arch", "best_round", "val_auroc", "test_auroc",
    "test_ap", "trainable_params", "uplink_mb_per_client_round", "downlink_mb_per_client_round",
    "wall_s",
)  # fmt: skip


def _load(
    config: Path | None, overrides: list[str] | None, data: Path | None = None, saved=False
) -> RunConfig:
    extra = [f"data.cache={json.dumps(str(data))}"] if data is not None else []
    try:
        return RunConfig.load(config, [*(overrides or []), *extra], saved=saved)
    except (ValueError, OSError) as exc:
        fail(f"configuration: {exc}")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (or a mix) → sorted distinct seeds."""
    seeds: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, sep, hi = part.partition("-")
            seeds.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise typer.BadParameter(f"{text!r}: write seeds as 0,1,2 or 0-4") from None
    if not seeds:
        raise typer.BadParameter(f"{text!r}: no seed given")
    return sorted(seeds)


def _show(summary: dict, out: Path, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"run {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SUMMARY_KEYS:
        if key in summary:
            value = summary[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console().print(table)


def _show_seeds(result: dict, out: Path, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    table = Table(title=f"{len(result['seeds'])} seeds in {out} (mean, 95% t-interval)")
    for col in ("metric", "mean", "sd", "95% CI", "n"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, ci in result["metrics"].items():
        if ci["mean"] is None:
            continue
        interval = f"{ci['low']:.4f}–{ci['high']:.4f}" if ci["low"] is not None else "n/a"
        sd = f"{ci['sd']:.4f}" if ci["sd"] is not None else "n/a"
        table.add_row(name, f"{ci['mean']:.4f}", sd, interval, str(ci["n"]))
    console().print(table)


def _run(kind: str, cfg: RunConfig, out: Path, seeds: str | None, as_json: bool, **kwargs):
    from fedprostate.runs.seeds import RUNNERS, run_seeds

    if seeds:
        _show_seeds(run_seeds(kind, cfg, parse_seeds(seeds), out), out, as_json)
        return
    summary = RUNNERS[kind](cfg, out, **kwargs)
    if summary.get("resume") == "noop" and not as_json:
        console().print(
            f"run {out} already finished {summary['rounds']} rounds: nothing to do", soft_wrap=True
        )
    _show(summary, out, as_json)


@app.command()
def federate(
    config: Path = CONFIG_OPT,
    overrides: list[str] = SET_OPT,
    data: Path = DATA_OPT,
    out: Path = typer.Option(None, "--out", "-o", help="Run folder to write."),
    resume: Path = typer.Option(None, "--resume", help="Continue this killed run folder."),
    keep_last: int = typer.Option(
        None, "--keep-last", min=0, help="Keep the newest N round checkpoints + the best (0 = all)."
    ),
    seeds: str = SEEDS_OPT,
    force: bool = typer.Option(
        False, "--force", help="With --resume: accept a configuration that differs from the run's."
    ),
    verbose: bool = typer.Option(False, help="Show Flower's debug log."),
    as_json: bool = JSON_OPT,
) -> None:
    """Federated fine-tuning in a Flower simulation (one SuperNode per client)."""
    from fedprostate.runs.federated import ResumeRefusedError, RunFailedError

    extra = [*(overrides or []), *([f"keep_last={keep_last}"] if keep_last is not None else [])]
    if resume is not None:
        saved = resume / "config.toml"
        if not saved.exists():
            fail(f"{saved} not found: not a run folder")
        cfg, out = _load(saved, extra, data, saved=True), resume
    elif out is None:
        fail("--out RUN is required (or --resume RUN)")
    else:
        cfg = _load(config, extra, data)
    try:
        _run(
            "federated", cfg, out, seeds, as_json,
            resume=resume is not None, verbose=verbose, force=force,
        )  # fmt: skip
    except ResumeRefusedError as exc:
        fail(exc)
    except RunFailedError as exc:
        console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None


@app.command()
def centralize(
    config: Path = CONFIG_OPT,
    overrides: list[str] = SET_OPT,
    data: Path = DATA_OPT,
    out: Path = OUT_OPT,
    seeds: str = SEEDS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Pooled training on every site's data with the same loop (the upper bound)."""
    _run("centralized", _load(config, overrides, data), out, seeds, as_json)


@app.command("local")
def local_only(
    config: Path = CONFIG_OPT,
    overrides: list[str] = SET_OPT,
    data: Path = DATA_OPT,
    out: Path = OUT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Each site trains alone on its own data (the lower bound federation must beat)."""
    from fedprostate.runs.pooled import local_only as run_local

    summary = run_local(_load(config, overrides, data), out)
    _show(summary, out, as_json)
    if not as_json:
        table = Table(title="per site")
        for col in ("site", "best round", "chosen on", "own test AUROC", "pooled test AUROC"):
            table.add_column(col)
        for site, row in summary["per_site"].items():
            table.add_row(site, str(row["best_round"]), row.get("best_round_chosen_on", ""),
                          f"{row['own_test_auroc']:.4f}", f"{row['pooled_test_auroc']:.4f}")  # fmt: skip
        console().print(table)
