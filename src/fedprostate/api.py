"""The Python entry points a notebook needs, one call per step of the command line.

Each is also importable from the package root (``import fedprostate as fp; fp.federate(...)``),
loaded on first use so that ``import fedprostate`` stays fast. Paths may be ``str`` or ``Path``;
a configuration may be a :class:`~fedprostate.config.RunConfig` or a TOML path.

| step      | command line                  | Python                                       |
|-----------|-------------------------------|----------------------------------------------|
| configure | `-c FILE --set k=v`           | `cfg = load_config(FILE, ["k=v"])`           |
| prepare   | `fedprostate data prepare`    | `prepare(raw, cache)`                        |
| train     | `fedprostate federate`        | `federate(cfg, run)`, `centralize(cfg, run)` |
| evaluate  | `fedprostate report`          | `evaluate(run)`                              |
| export    | `fedprostate export`          | `export(run)`                                |
| use       | `fedprostate predict`         | `load_bundle(bundle)`, `predict(bundle, ...)` |
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedprostate.config import RunConfig
from fedprostate.data import prepare as _prepare
from fedprostate.eval.metrics import evaluate_predictions
from fedprostate.eval.picai import picai_metrics
from fedprostate.models import bundle as _bundle
from fedprostate.records import predictions as _predictions
from fedprostate.runs import export as _export
from fedprostate.runs import federated as _federated
from fedprostate.runs import pooled as _pooled
from fedprostate.runs import predict as _predict

__all__ = [
    "load_config",
    "prepare",
    "federate",
    "centralize",
    "evaluate",
    "export",
    "load_bundle",
    "predict",
]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A run configuration: a TOML file (``configs/*.toml``) plus ``key=value`` overrides.

    Every value is checked: an unknown key, a value out of range or a meaningless combination
    raises :class:`~fedprostate.config.ConfigError` naming the key and what is allowed.

    >>> cfg = load_config(None, ["fl.rounds=3", "model.arch=swin_test"])
    >>> cfg.fl.rounds, cfg.model.arch
    (3, 'swin_test')
    """
    return RunConfig.load(path, overrides or [])


def prepare(data: str | Path, out: str | Path, **options) -> _prepare.PrepareReport:
    """Read raw studies (PI-CAI, ProstateX, Prostate158, nnU-Net raw, generic CSV), crop them and
    write the per-site crop cache ``out`` that training reads.

    ``options`` are those of ``fedprostate data prepare`` (``fmt="auto"``, ``mode="lesion"``,
    ``crop=64``, ``spacing=0.5``, ``n_slices=1``, ``seed=0``, ``negatives=2``, ...). Returns the
    counts (studies kept / rejected, crops per site); unreadable studies are listed in
    ``out/rejected.csv``.
    """
    options.setdefault("progress", False)
    return _prepare.prepare(data, out, **options)


def _config(cfg: RunConfig | str | Path, data: str | Path | None) -> RunConfig:
    cfg = cfg if isinstance(cfg, RunConfig) else load_config(cfg)
    return cfg.replace(**{"data.cache": str(data)}) if data is not None else cfg


def federate(
    cfg: RunConfig | str | Path,
    out: str | Path,
    data: str | Path | None = None,
    resume: bool = False,
) -> dict:
    """Federated fine-tuning in Flower's simulation (one simulated hospital per site).

    ``data`` (a crop cache) replaces ``data.cache``. Writes the run folder ``out``
    (config.toml, metrics.jsonl, checkpoints/, predictions, summary.json) and returns the
    summary. Raises :class:`~fedprostate.runs.federated.RunFailedError` when no update was
    aggregated.
    """
    return _federated.federate(_config(cfg, data), out, resume=resume)


def centralize(
    cfg: RunConfig | str | Path, out: str | Path, data: str | Path | None = None
) -> dict:
    """Pooled training on every site's data with the same loop (the upper bound); the run folder
    has the federated layout and the summary is returned."""
    return _pooled.centralize(_config(cfg, data), out)


def evaluate(run: str | Path, split: str = "test", n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of a finished run's best-round predictions on ``split`` (``test`` or ``val``).

    Finding- and patient-level AUROC/AP with patient-bootstrap 95 % CIs, per site, the operating
    point chosen on validation, and ``picai``: case AUROC, finding-level AP and the PI-CAI
    ranking score (see :mod:`fedprostate.eval.picai`).
    """
    run = Path(run)
    rows = _predictions.read(run / f"predictions_{split}_best.csv")
    val_path = run / "predictions_val_best.csv"
    val = _predictions.read(val_path) if split == "test" and val_path.is_file() else None
    metrics = evaluate_predictions(rows, n_boot=n_boot, seed=seed, val_rows=val)
    metrics["picai"] = picai_metrics(rows, n_boot=n_boot, seed=seed)
    return metrics


def export(run: str | Path, out: str | Path | None = None, onnx: bool = True) -> dict:
    """Export a finished run as a model bundle (``out``, default ``RUN/bundle``): merged weights,
    optional ONNX, preprocessing, validation threshold and MODEL_CARD.md. Returns bundle.json."""
    run = Path(run)
    formats = ("bundle", "onnx") if onnx else ("bundle",)
    return _export.export_run(run, out or run / "bundle", formats=formats)


def load_bundle(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """An exported bundle as (frozen eval-mode timm model, bundle.json metadata); no peft needed.

    The model takes crops ``[N, C, crop, crop]`` preprocessed as ``meta["preprocessing"]``
    says and returns logits ``[N, 2]`` (softmax column 1 = csPCa probability).
    """
    return _bundle.load_bundle(path)


def predict(
    bundle: str | Path,
    data: str | Path | None = None,
    findings: str | Path | None = None,
    out: str | Path | None = None,
    patient: str | None = None,
    detection_maps: bool = False,
) -> dict:
    """Per-finding csPCa probabilities for new studies (research only, not for clinical use).

    ``data``: a study folder or a dataset root of any supported layout; ``findings``: a CSV of
    x, y, z (LPS mm) locations when the studies carry none. Returns ``{"model", "findings",
    "patients"}``; with ``out`` also writes predictions.json/.csv and, with ``detection_maps``,
    PI-CAI detection maps + reference labels that ``picai_eval`` reads.
    """
    return _predict.predict(bundle, data, findings, out, patient, detection_maps=detection_maps)
