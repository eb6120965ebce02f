"""Summary of a raw synthetic (or same-layout) dataset: per-site sizes, findings, prevalence,
intensity histograms, and the classic ADC rule (mean ADC inside each biopsied finding) as a
difficulty check. Reads the files as written (MHA or DICOM), never the generator's internals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the library's own convention)

from fedprostate.data.formats.dicom import SERIES
from fedprostate.data.formats.picai import image_paths
from fedprostate.data.study import StudyError
from fedprostate.data.synth.writers import FINDINGS

STUDIES = Path("truth/studies.csv")


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is this a `fedprostate data synth` output?")
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def adc_to_micro(image: sitk.Image, adc_units: str) -> np.ndarray:
    """ADC array in 1e-6 mm2/s whatever the site stored."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    return arr * 1000.0 if adc_units.startswith("1e-3") else arr


def mean_in_ball(image: sitk.Image, array: np.ndarray, point, radius_mm: float) -> float:
    """Mean of ``array`` (numpy view of ``image``) over voxels within ``radius_mm`` of a world point
    (at least the nearest voxel)."""
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    idx = direction.T @ (np.asarray(point, dtype=float) - origin) / spacing
    half = radius_mm / spacing
    size = np.array(image.GetSize())
    lo = np.clip(np.floor(idx - half).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(idx + half).astype(int), 0, size - 1) + 1
    ii, jj, kk = (np.arange(lo[a], hi[a]) for a in range(3))
    block = array[kk[0] : kk[-1] + 1, jj[0] : jj[-1] + 1, ii[0] : ii[-1] + 1]
    offs = [(g - idx[a]) * spacing[a] for a, g in enumerate((ii, jj, kk))]
    d2 = offs[0][None, None, :] ** 2 + offs[1][None, :, None] ** 2 + offs[2][:, None, None] ** 2
    inside = d2 <= radius_mm**2
    if not inside.any():
        inside = d2 == d2.min()
    return float(block[inside].mean())


def _dicom_series(study_dir: Path, description: str) -> sitk.Image:
    folders = sorted(study_dir.glob(f"*/*-{description}"))
    if not folders:
        raise StudyError(study_dir.name, f"no {description} series", study_dir)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folders[0])))
    return reader.Execute()


def load_adc(
    root: Path, finding: dict, layout: str, adc_units: str
) -> tuple[sitk.Image, np.ndarray]:
    """ADC image of a finding's study, as micro-units array (DICOM ADC is always 1e-6)."""
    if layout == "prostatex":
        img = _dicom_series(root / finding["patient_id"], SERIES["adc"][1])
        return img, sitk.GetArrayFromImage(img).astype(np.float32)
    path = image_paths(root, finding["patient_id"], finding["study_id"])["adc"]
    if not path.is_file():
        raise StudyError(finding["patient_id"], "ADC file missing", path)
    img = sitk.ReadImage(str(path))
    return img, adc_to_micro(img, adc_units)


def detect_layout(root: Path) -> str:
    return "prostatex" if (Path(root) / "ProstateX-Findings-Train.csv").is_file() else "picai"


ROI_RADIUS_MM = 3.0  # the ROI a reader draws in a marked finding (what the pipeline's rule uses)


def marked(findings: list[dict]) -> list[dict]:
    """Truth rows the radiologist marked: the findings a site has (the clinical question)."""
    return [f for f in findings if f.get("mark_id")]


def adc_rule_scores(
    root: str | Path, which: str = "marked"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(mean ADC in a 3 mm ROI at each finding, clinsig label, site), read from the files.

    ``which``: ``marked`` (the radiologist's findings, the default) or ``biopsied`` (every lesion
    pathology knows, marked or not, in its own radius).
    """
    root = Path(root)
    layout = detect_layout(root)
    units = {r["site"]: r["adc_units"] for r in read_csv(root / "truth" / "sites.csv")}
    findings = read_csv(root / FINDINGS)
    if which == "marked":
        findings = [{**f, "radius_mm": ROI_RADIUS_MM} for f in marked(findings)]
    else:
        findings = [f for f in findings if f["biopsied"] == "1" and f["kind"] != "normal"]
    cache: dict[str, tuple[sitk.Image, np.ndarray]] = {}
    scores, labels, sites = [], [], []
    for f in findings:
        key = f"{f['patient_id']}_{f['study_id']}"
        if key not in cache:
            cache = {key: load_adc(root, f, layout, units[f["site"]])}  # one study at a time
        img, arr = cache[key]
        point = (float(f["x"]), float(f["y"]), float(f["z"]))
        scores.append(mean_in_ball(img, arr, point, float(f["radius_mm"])))
        labels.append(int(f["clinsig"]))
        sites.append(f["site"])
    return np.array(scores), np.array(labels), sites


def rule_auroc(scores: np.ndarray, labels: np.ndarray, shuffles: int = 200, seed: int = 0) -> dict:
    """AUROC of "lower ADC = more suspicious" and its mean under shuffled labels."""
    from sklearn.metrics import roc_auc_score

    if len(set(labels.tolist())) < 2:
        return {"auroc": float("nan"), "shuffled": float("nan"), "n": len(labels)}
    rng = np.random.default_rng(seed)
    shuffled = [roc_auc_score(rng.permutation(labels), -scores) for _ in range(shuffles)]
    return {"auroc": float(roc_auc_score(labels, -scores)), "shuffled": float(np.mean(shuffled)),
            "n": int(len(labels)), "n_pos": int(labels.sum())}  # fmt: skip


def reader_performance(findings: list[dict]) -> dict:
    """The synthetic radiologist against the truth: sensitivity of PI-RADS >= 3 for csPCa
    lesions, csPCa share per PI-RADS score among marks, and PI-RADS AUROC on the marks."""
    from sklearn.metrics import roc_auc_score

    lesions = [f for f in findings if f["kind"] != "normal"]
    cancers = [f for f in lesions if f["clinsig"] == "1"]
    marks = marked(findings)
    share = {}
    for score in (3, 4, 5):
        at = [f for f in marks if int(f["pirads"]) == score]
        share[score] = {"n": len(at), "cspca": sum(f["clinsig"] == "1" for f in at)}
    labels = [int(f["clinsig"]) for f in marks]
    auroc = (roc_auc_score(labels, [int(f["pirads"]) for f in marks])
             if len(set(labels)) == 2 else float("nan"))  # fmt: skip
    return {
        "sensitivity": sum(bool(f["mark_id"]) for f in cancers) / max(len(cancers), 1),
        "n_cancers": len(cancers),
        "n_marks": len(marks),
        "csPCa_share": share,
        "pirads_auroc": float(auroc),
    }


def _site_samples(root: Path, layout: str, rows: list[dict], per_site: int) -> dict[str, dict]:
    """A few studies per site: raw T2/hbv values and ADC in 1e-6 mm2/s (for histograms)."""
    units = {r["site"]: r["adc_units"] for r in read_csv(root / "truth" / "sites.csv")}
    out: dict[str, dict] = {}
    for r in rows:
        site = r["site"]
        bucket = out.setdefault(site, {"t2w": [], "adc": [], "hbv": [], "n": 0})
        if bucket["n"] >= per_site:
            continue
        bucket["n"] += 1
        if layout == "prostatex":
            imgs = {s: _dicom_series(root / r["patient_id"], SERIES[s][1]) for s in SERIES}
        else:
            paths = image_paths(root, r["patient_id"], r["study_id"])
            imgs = {s: sitk.ReadImage(str(p)) for s, p in paths.items()}
        for seq, img in imgs.items():
            arr = (adc_to_micro(img, units[site]) if seq == "adc" and layout == "picai"
                   else sitk.GetArrayFromImage(img).astype(np.float32))  # fmt: skip
            bucket[seq].append(arr[arr > 0].ravel()[::7])
    return {
        s: {k: (np.concatenate(v) if k != "n" else v) for k, v in b.items()} for s, b in out.items()
    }


def summarize_raw(root: str | Path, plot_path: str | Path | None = None, per_site: int = 4) -> dict:
    """Per-site table, ADC-rule AUROC, and (optionally) a PNG of per-site histograms/prevalence."""
    root = Path(root)
    layout = detect_layout(root)
    sites = read_csv(root / "truth" / "sites.csv")
    findings = read_csv(root / FINDINGS)
    studies = [{**r, "positive": r["case_csPCa"] == "YES"} for r in read_csv(root / STUDIES)]
    samples = _site_samples(root, layout, studies, per_site)
    table = []
    for s in sites:
        mine = [r for r in studies if r["site"] == s["site"]]
        fs = [f for f in findings if f["site"] == s["site"]]
        smp = samples.get(s["site"], {})
        table.append({
            "site": s["site"], "vendor": s["vendor"], "field_T": float(s["field_T"]),
            "b_value": int(s["b_value"]), "patients": len(mine),
            "prevalence": (sum(r["positive"] for r in mine) / len(mine)) if mine else float("nan"),
            "findings": len(marked(fs)), "clinsig": sum(f["clinsig"] == "1" for f in marked(fs)),
            "t2_median": float(np.median(smp["t2w"])) if len(smp.get("t2w", [])) else float("nan"),
            "adc_median": float(np.median(smp["adc"])) if len(smp.get("adc", [])) else float("nan"),
        })  # fmt: skip
    scores, labels, _ = adc_rule_scores(root)
    result = {
        "layout": layout,
        "sites": table,
        "adc_rule": rule_auroc(scores, labels),
        "reader": reader_performance(findings),
    }
    if plot_path is not None:
        plot_summary(Path(plot_path), table, samples)
        result["plot"] = str(plot_path)
    return result


def plot_summary(path: Path, table: list[dict], samples: dict[str, dict]) -> None:
    """Per-site intensity histograms (T2, ADC, high-b DWI) and csPCa prevalence, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    cmap = plt.get_cmap("tab20")
    for i, row in enumerate(table):
        smp = samples.get(row["site"])
        if not smp:
            continue
        for ax, seq in zip(axes[:3], ("t2w", "adc", "hbv"), strict=True):
            vals = smp[seq]
            if len(vals) == 0:
                continue
            hi = np.percentile(vals, 99.5)
            ax.hist(vals, bins=80, range=(0, hi), density=True, histtype="step",
                    color=cmap(i % 20), label=row["site"])  # fmt: skip
    for ax, title in zip(axes[:3], ("T2w (scanner units)", "ADC (1e-6 mm²/s)", "high-b DWI"),
                         strict=True):  # fmt: skip
        ax.set_title(title)
        ax.set_yscale("log")
    names = [r["site"] for r in table]
    axes[3].barh(
        names, [r["prevalence"] for r in table], color=[cmap(i % 20) for i in range(len(names))]
    )
    axes[3].set_title("csPCa prevalence")
    axes[3].set_xlim(0, 1)
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
