"""``fedprostate predict``: a model bundle + raw bpMRI files → per-finding csPCa probabilities.

The inputs (a dataset root, a folder inside one, a bare study folder, a findings CSV) are read by
:func:`fedprostate.data.formats.loose.resolve_studies`. Preprocessing and crops are the training
code's own (``fit_normalization`` + ``study_crops``). Output: one row per finding (probability,
call at the bundle's threshold) and one patient score per study = max over its findings.
Unreadable input raises StudyError / DataFormatError naming the file; the CLI turns them into
exit code 2.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fedprostate.data.crops import CropSpec, study_crops
from fedprostate.data.formats.loose import resolve_studies
from fedprostate.data.preprocess import fit_normalization
from fedprostate.data.study import Study, StudyError
from fedprostate.models.bundle import load_bundle, predict_proba

OUTPUT_COLUMNS = (
    "site", "patient_id", "study_id", "finding_id", "source", "zone", "x", "y", "z", "score",
    "positive",
)  # fmt: skip


def study_findings_crops(study: Study, meta: dict):
    """Crops [N, C, H, W] and the Crop records of one study, exactly as ``data prepare``."""
    spec = CropSpec(
        mode=meta["mode"], crop=int(meta["crop"]), spacing=float(meta["spacing"]),
        n_slices=int(meta["n_slices"]),
    )  # fmt: skip
    if spec.mode == "lesion" and not study.findings:
        raise StudyError(
            study.patient_id,
            "no findings to score: give --findings CSV with x, y, z (LPS world mm)",
            study.source_paths.get("t2w"),
        )
    crops = study_crops(study, fit_normalization(study), spec)
    return np.stack([c.array for c in crops]).astype(np.float32), crops


def predict_studies(model, meta: dict, studies: list[Study]) -> dict:
    """Per-finding probabilities and per-study patient scores (max over findings)."""
    threshold = float(meta.get("threshold", 0.5))
    rows, patients = [], []
    for study in studies:
        arrays, crops = study_findings_crops(study, meta)
        scores = predict_proba(model, arrays)
        where = {f.finding_id: f.world_mm for f in study.findings}
        for c, s in zip(crops, scores, strict=True):
            x, y, z = where.get(c.finding_id, ("", "", ""))
            rows.append(
                {
                    "site": study.site, "patient_id": study.patient_id,
                    "study_id": study.study_id, "finding_id": c.finding_id, "source": c.source,
                    "zone": c.zone, "x": x, "y": y, "z": z, "score": float(s),
                    "positive": int(s >= threshold),
                }
            )  # fmt: skip
        top = float(scores.max())
        patients.append(
            {
                "site": study.site, "patient_id": study.patient_id,
                "study_id": study.study_id, "patient_score": top,
                "positive": int(top >= threshold), "n_findings": len(crops),
            }
        )  # fmt: skip
    model_info = {
        k: meta.get(k)
        for k in ("arch", "crop", "spacing", "mode", "weights_sha256", "bundle_sha256", "threshold")
    }
    return {
        "model": model_info | {"intended_use": "research only, not for clinical use"},
        "findings": rows,
        "patients": patients,
    }


def write_outputs(result: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "predictions.json", "csv": out / "predictions.csv"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=OUTPUT_COLUMNS)
        writer.writeheader()
        writer.writerows(result["findings"])
    paths["patients_csv"] = out / "patients.csv"
    with paths["patients_csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result["patients"][0]))
        writer.writeheader()
        writer.writerows(result["patients"])
    return paths


def predict(
    bundle: str | Path,
    study: str | Path | None = None,
    findings: str | Path | None = None,
    out: str | Path | None = None,
    patient: str | None = None,
    expected_sha256: str = "",
) -> dict:
    """Load the bundle (checked against ``expected_sha256``, the consortium's published bundle
    hash, when given), read the studies, score them; write JSON/CSV to ``out`` when given."""
    model, meta = load_bundle(bundle, expected_sha256=expected_sha256)
    prep = meta.get("preprocessing", {})
    studies = resolve_studies(
        study,
        findings,
        seed=int(prep.get("seed", 0)),
        negatives=int(prep.get("negatives_per_study", 0)) if meta["mode"] == "lesion" else 0,
        patient=patient,
    )
    result = predict_studies(model, meta, studies)
    if out is not None:
        write_outputs(result, out)
    return result
