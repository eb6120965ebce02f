"""``fedprostate export``: a finished run → a deployable bundle folder (see ``bundle.py``).

The run's model is rebuilt exactly as training built it (``setup.build_model`` from the run's
``config.toml``: backbone, foundation weights, fine-tuning method), the communicated tensors of
the *best* round are loaded (``checkpoints/round_<best>.safetensors`` of a federated run, whose
predictions are ``predictions_*_best.csv``; else ``model.safetensors``), then LoRA is merged
(``merge_for_inference``) and the plain state dict is written. Tensors that trained but stayed
local (``finetune.local_norms``) are per-site and not in a run folder: the bundle carries their
initial values, which bundle.json records as ``local_tensors_from_run = false``.

The exported bundle is then loaded back (``load_bundle``: exactly what a hospital will run) and
re-scores the run's validation and test sets from the crop cache: the operating threshold is
chosen on those validation scores (``eval.threshold_rule``, Youden by default) and the model card
reports those test scores with patient bootstrap CIs, so every number on the card and the
threshold come from the shipped weights (written as ``predictions_{val,test}.csv`` in the bundle).
ONNX parity is checked against the *unmerged* (peft) model on random crops. ``bundle.json``
carries no absolute path; its ``bundle_sha256`` covers every other field (threshold,
preprocessing, the weights' and the ONNX file's hashes): publish it out of band and check it with
``predict --expected-sha256``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save_file

from fedprostate.config import RunConfig
from fedprostate.data.cache import load_index, load_meta
from fedprostate.data.preprocess import ADC_SCALE, CLIP
from fedprostate.engine import setup
from fedprostate.engine.loop import predict_scores
from fedprostate.eval.calibration import apply_temperature, calibration_report
from fedprostate.eval.metrics import choose_threshold, evaluate_predictions, headline
from fedprostate.eval.picai import picai_metrics
from fedprostate.models.bundle import (
    BUNDLE_JSON,
    BUNDLE_VERSION,
    MODEL_CARD,
    ONNX,
    WEIGHTS,
    bundle_sha256,
    load_bundle,
)
from fedprostate.models.finetune import inference_structure, merge_for_inference
from fedprostate.models.foundation import backbone_sha256
from fedprostate.records import predictions, tracking
from fedprostate.runs.model_card import data_provenance, model_card

FORMATS = ("bundle", "onnx")
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(ValueError):
    """A run folder that cannot be exported (the message names the file)."""


def _calibrated(rows: list[dict], temperature: float) -> list[dict]:
    if temperature == 1.0:
        return rows
    scores = apply_temperature([r["score"] for r in rows], temperature)
    return [{**r, "score": float(s)} for r, s in zip(rows, scores, strict=True)]


def _best_weights(run: Path, summary: dict) -> tuple[dict[str, np.ndarray], str]:
    best = summary.get("best_round", summary.get("model_round"))
    if best:
        ckpt = run / "checkpoints" / f"round_{int(best):04d}.safetensors"
        if ckpt.is_file():
            return load_numpy(str(ckpt)), str(ckpt.relative_to(run))
    model = run / WEIGHTS
    if not model.is_file():
        raise ExportError(f"{model}: not found (not a finished run folder)")
    return load_numpy(str(model)), WEIGHTS


def load_run_model(run_dir: str | Path):
    """(cfg, Finetuned model with the run's best weights, foundation sha256, weights source)."""

    run = Path(run_dir)
    config = run / "config.toml"
    if not config.is_file():
        raise ExportError(f"{config}: not found (not a run folder)")
    cfg = RunConfig.load(config, saved=True)
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    if summary.get("kind") == "local":
        raise ExportError(f"{run}: a local-only run has one model per site; export one of them")
    arrays, source = _best_weights(run, summary)
    bundle = setup.build_model(cfg, fresh=True)
    setup.load_communicated(bundle.ft, arrays)
    bundle.ft.model.eval()
    return cfg, bundle.ft, bundle.foundation_sha256, source, summary


def _preprocessing(cache_meta: dict) -> dict:
    return {
        "description": cache_meta.get("normalization", {}),
        "t2w_hbv": {"percentiles": [1.0, 99.0], "maps_to": [0.0, 1.0], "per": "study"},
        "adc": {"unit": "1e-6 mm2/s (auto-detected)", "divide_by": ADC_SCALE},
        "clip": list(CLIP),
        "outside_fov": 0.0,
        "negatives_per_study": cache_meta.get("negatives_per_study", 0),
        "seed": cache_meta.get("seed", 0),
        "labels": cache_meta.get("labels", ""),
    }


def _data_summary(cfg: RunConfig) -> dict:
    rows = load_index(cfg.data.cache)
    sites: dict[str, dict] = {}
    for r in rows:
        entry = sites.setdefault(r["site"], {"train": 0, "val": 0, "test": 0, "positives": 0})
        entry[r["split"]] = entry.get(r["split"], 0) + 1
        entry["positives"] += int(r["label"])
    return {"n_crops": len(rows), "sites": sites}


def _relative_run(run: Path, out: Path) -> str:
    """The run folder as seen from the bundle (``..`` for RUN/bundle), else its name only: a
    bundle travels to other machines and must not carry this one's absolute paths."""
    run, out = run.resolve(), out.resolve()
    if out.is_relative_to(run):
        return "/".join([".."] * len(out.relative_to(run).parts)) or "."
    return run.name


def onnx_export(model: torch.nn.Module, path: Path, crop: int, in_chans: int) -> None:
    """TorchScript-based exporter (no onnxscript needed), dynamic batch axis."""
    example = torch.zeros(2, in_chans, crop, crop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on timm's shape asserts
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["crops"],
            output_names=["logits"],
            dynamic_axes={"crops": {0: "batch"}, "logits": {0: "batch"}},
        )


def onnx_logits(path: Path, crops: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"crops": crops.astype(np.float32)})[0]


def onnx_parity(path: Path, reference: torch.nn.Module, crop: int, in_chans: int, seed=0) -> float:
    """Max |logit difference| between the ONNX file and ``reference`` on seeded random crops."""
    x = torch.from_numpy(
        np.random.default_rng(seed).normal(0.5, 0.3, (5, in_chans, crop, crop)).astype(np.float32)
    )
    with torch.no_grad():
        expected = reference.eval()(x).numpy()
    return float(np.abs(onnx_logits(path, x.numpy()) - expected).max())


def rescore(model: torch.nn.Module, cfg: RunConfig, label_round) -> dict[str, list[dict]]:
    """Prediction rows of the run's validation and test sets scored by ``model``."""
    out = {}
    for split in ("val", "test"):
        ds = setup.pooled_dataset(cfg, split)
        scores, _ = predict_scores(model, ds)
        out[split] = predictions.from_index(ds.rows, scores, label_round)
    return out


def _write_json(path: Path, meta: dict) -> None:
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def export_run(
    run_dir: str | Path, out: str | Path, formats=("bundle", "onnx"), n_boot: int | None = None
) -> dict:
    """Write the bundle folder ``out`` from run ``run_dir``; returns bundle.json's content."""

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}; choose from {FORMATS}")
    run, out = Path(run_dir), Path(out)
    cfg, ft, foundation_sha, source, summary = load_run_model(run)
    if not cfg.data.cache or not (Path(cfg.data.cache) / "index.csv").is_file():
        raise ExportError(
            f"{run / 'config.toml'}: data.cache {cfg.data.cache!r} is not a readable crop cache; "
            "export re-scores the exported weights on the run's validation and test sets"
        )
    cache_meta = load_meta(cfg.data.cache)

    merged = merge_for_inference(ft)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in merged.state_dict().items()}
    n_slices = int(cache_meta.get("n_slices", 1))
    meta = {
        "bundle_version": BUNDLE_VERSION,
        "arch": cfg.model.arch,
        "crop": cfg.model.crop,
        "num_classes": 2,
        "spacing": float(cache_meta.get("spacing", 0.5)),
        "mode": cache_meta.get("mode", "lesion"),
        "n_slices": n_slices,
        "channels": list(cache_meta.get("channels", ["t2w", "adc", "hbv"])),
        "channel_names": cache_meta.get("channel_names", ["t2w", "adc", "hbv"]),
        "preprocessing": _preprocessing(cache_meta),
        "output": "softmax(logits)[:, 1] = csPCa probability",
        "finetune_method": cfg.finetune.method,
        **inference_structure(cfg.finetune),
        "local_tensors_from_run": not ft.local,
        "foundation_sha256": foundation_sha,
        "weights_sha256": backbone_sha256(state),
        "weights_source": source,
        "parameters": int(sum(p.numel() for p in merged.parameters())),
        "source_run": _relative_run(run, out),  # never an absolute path
        "data_provenance": data_provenance(cache_meta),
        "run_kind": summary.get("kind", "federated"),
        "best_round": summary.get("best_round", summary.get("model_round")),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"arch": cfg.model.arch})
    _write_json(out / BUNDLE_JSON, meta)
    plain, _ = load_bundle(out)  # exactly what a hospital loads
    rows = rescore(plain, cfg, meta["best_round"])
    # calibration of the exported weights: a temperature fitted on their validation findings
    calibration = calibration_report(rows["val"], rows["test"]) or {"temperature": 1.0}
    temperature = float(calibration["temperature"])
    rows = {split: _calibrated(split_rows, temperature) for split, split_rows in rows.items()}
    for split, split_rows in rows.items():
        predictions.write(out / f"predictions_{split}.csv", split_rows)
    val_scored = headline(rows["val"])
    val_labels = [r["label"] for r in val_scored]
    if 0 < sum(val_labels) < len(val_labels):
        threshold = choose_threshold(
            val_labels, [r["score"] for r in val_scored], cfg.eval.threshold_rule
        )
        rule = f"{cfg.eval.threshold_rule} on the exported weights' validation findings"
    else:
        threshold, rule = 0.5, "fixed 0.5 (validation findings of one class only)"
    metrics = evaluate_predictions(
        rows["test"], threshold=threshold, n_boot=n_boot or cfg.eval.n_boot, seed=cfg.seed
    )
    meta.update(
        threshold=threshold,
        threshold_rule=rule,
        temperature=temperature,
        calibration=calibration,
        test_auroc=metrics["lesion"]["auroc"],
    )
    if "onnx" in formats:
        in_chans = len(meta["channel_names"])
        onnx_export(plain, out / ONNX, cfg.model.crop, in_chans)
        meta["onnx"] = {
            "file": ONNX,
            "sha256": hashlib.sha256((out / ONNX).read_bytes()).hexdigest(),
            "opset": ONNX_OPSET,
            "input": "crops [batch, C, H, W] float32",
            "output": "logits [batch, 2]",
            "parity_max_abs_logit_diff_vs_unmerged": onnx_parity(
                out / ONNX, ft.model, cfg.model.crop, in_chans
            ),
        }
    picai = picai_metrics(rows["test"], n_boot=n_boot or cfg.eval.n_boot, seed=cfg.seed)
    meta["bundle_sha256"] = bundle_sha256(meta)
    _write_json(out / BUNDLE_JSON, meta)
    (out / MODEL_CARD).write_text(
        model_card(cfg, meta, metrics, _data_summary(cfg), cache_meta, picai), encoding="utf-8"
    )
    tracking.log_artifacts(run, [out], "bundle")  # when the run is tracked with MLflow
    return meta
