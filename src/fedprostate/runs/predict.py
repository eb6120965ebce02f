"""``fedprostate predict``: a model bundle + raw bpMRI files → per-finding csPCa probabilities.

The inputs (a dataset root, a folder inside one, a bare study folder, a findings CSV) are read by
:func:`fedprostate.data.formats.loose.resolve_studies`. Preprocessing and crops are the training
code's own (``fit_normalization`` + ``study_crops``). Output: one row per finding (probability,
call at the bundle's threshold) and one patient score per study = max over its findings.

Over several studies (a dataset root), a study that cannot be read, fails a check or has no
finding to score is *skipped*: listed under ``skipped`` (patient, study, path, reason) in the
output and the run goes on. Only when nothing at all could be scored does :func:`predict` raise
(:class:`NothingScoredError`, a StudyError naming the first reason); the CLI turns that, and input that
cannot be read as a whole (DataFormatError), into exit code 2.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fedprostate.data.crops import CropSpec, study_crops
from fedprostate.data.detection_maps import write_detection_maps
from fedprostate.data.formats.loose import resolve_studies
from fedprostate.data.preprocess import fit_normalization
from fedprostate.data.study import Study, StudyError
from fedprostate.models.bundle import load_bundle, predict_proba
from fedprostate.records.csv_cells import safe_row

OUTPUT_COLUMNS = (
    "site", "patient_id", "study_id", "finding_id", "source", "zone", "x", "y", "z", "score",
    "positive",
)  # fmt: skip
PATIENT_COLUMNS = ("site", "patient_id", "study_id", "patient_score", "positive", "n_findings")
SKIPPED_COLUMNS = ("patient_id", "study_id", "path", "reason")
NO_FINDINGS = "no findings to score: give --findings CSV with x, y, z (LPS world mm)"


class NothingScoredError(StudyError):
    """Every study was skipped: there is no prediction to write."""


def study_findings_crops(study: Study, meta: dict, dropped: list[str] | None = None):
    """Crops [N, C, H, W] and the Crop records of one study, exactly as ``data prepare``
    (optional crops failing the crop checks are dropped, their reasons appended to ``dropped``)."""
    spec = CropSpec(
        mode=meta["mode"], crop=int(meta["crop"]), spacing=float(meta["spacing"]),
        n_slices=int(meta["n_slices"]),
    )  # fmt: skip
    if spec.mode == "lesion" and not study.findings:
        raise StudyError(study.patient_id, NO_FINDINGS, study.source_paths.get("t2w"))
    crops = study_crops(study, fit_normalization(study), spec, dropped)
    return np.stack([c.array for c in crops]).astype(np.float32), crops


def _skip_row(err: StudyError, study_id: str = "") -> dict:
    return {"patient_id": err.patient_id, "study_id": study_id, "path": err.path,
            "reason": err.reason}  # fmt: skip


def predict_studies(
    model, meta: dict, studies: list[Study], skipped: list[StudyError] | None = None
) -> dict:
    """Per-finding probabilities and per-study patient scores (max over findings); studies that
    cannot be scored (and those already in ``skipped``) are listed under ``skipped``."""
    threshold = float(meta.get("threshold", 0.5))
    rows, patients = [], []
    skips = [_skip_row(err) for err in skipped or []]
    dropped_notes = []
    for study in studies:
        dropped: list[str] = []
        try:
            arrays, crops = study_findings_crops(study, meta, dropped)
        except StudyError as err:
            skips.append(_skip_row(err, study.study_id))
            continue
        dropped_notes += [f"patient {study.patient_id}: {reason}" for reason in dropped]
        scores = predict_proba(model, arrays, temperature=float(meta.get("temperature", 1.0)))
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
        "skipped": skips,
        "dropped_crops": dropped_notes,
    }


def write_outputs(result: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "predictions.json", "csv": out / "predictions.csv"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    paths["patients_csv"] = out / "patients.csv"
    paths["skipped_csv"] = out / "skipped.csv"
    tables = (
        (paths["csv"], OUTPUT_COLUMNS, result["findings"]),
        (paths["patients_csv"], PATIENT_COLUMNS, result["patients"]),
        (paths["skipped_csv"], SKIPPED_COLUMNS, result.get("skipped", [])),
    )
    for path, columns, table in tables:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(safe_row(r) for r in table)
    return paths


def predict(
    bundle: str | Path,
    study: str | Path | None = None,
    findings: str | Path | None = None,
    out: str | Path | None = None,
    patient: str | None = None,
    detection_maps: bool = False,
    expected_sha256: str = "",
) -> dict:
    """Load the bundle (checked against ``expected_sha256``, the consortium's published bundle
    hash, when given), read the studies, score those that can be; write JSON/CSV to ``out``
    when given. Raises NothingScoredError when every study was skipped.

    ``detection_maps``: also write PI-CAI detection maps (each finding's probability on its
    region in T2 space) and the reference lesion labels under ``out`` for ``picai_eval``.
    """
    if detection_maps and out is None:
        raise ValueError("detection maps need an output folder (out)")
    model, meta = load_bundle(bundle, expected_sha256=expected_sha256)
    prep = meta.get("preprocessing", {})
    skipped: list[StudyError] = []
    studies = resolve_studies(
        study,
        findings,
        seed=int(prep.get("seed", 0)),
        negatives=int(prep.get("negatives_per_study", 0)) if meta["mode"] == "lesion" else 0,
        patient=patient,
        skipped=skipped,
    )
    result = predict_studies(model, meta, studies, skipped)
    if not result["findings"]:
        first = result["skipped"][0] if result["skipped"] else None
        n = len(result["skipped"])
        raise NothingScoredError(
            first["patient_id"] if first else "?",
            f"nothing could be scored ({n} study(ies) skipped; first: "
            f"{first['reason'] if first else 'no study found'})",
            first["path"] if first else study,
        )
    if out is not None:
        write_outputs(result, out)
    if detection_maps:
        result["detection_maps"] = write_detection_maps(studies, result["findings"], out)
        write_outputs(result, out)
    return result
