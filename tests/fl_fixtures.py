"""A tiny crop cache written through the real cache writer, for training and federation tests.

Positives get a darker ADC channel (restricted diffusion) and a T2-dark blob: a learnable,
physically motivated signal, with noise so that AUROC is not trivially 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedprostate.config import RunConfig
from fedprostate.data.cache import write_cache


def write_tiny_cache(
    out: Path,
    sites=("siteA", "siteB", "siteC"),
    patients_per_site=12,
    crop=32,
    seed=0,
    beyond_ten=("test",),
) -> Path:
    """Patients 0-9 of a site cycle train/train/train/val/test; later ones cycle ``beyond_ten``
    (``("val", "test")`` gives a validation split large enough to choose a round on)."""
    rng = np.random.default_rng(seed)
    rows, crops = [], {}
    yy, xx = np.mgrid[:crop, :crop]
    blob = np.exp(-((yy - crop / 2) ** 2 + (xx - crop / 2) ** 2) / (2 * (crop / 8) ** 2))
    for s_i, site in enumerate(sites):
        site_crops = []
        for p in range(patients_per_site):
            split = (
                ("train", "train", "train", "val", "test")[p % 5]
                if p < 10
                else beyond_ten[(p - 10) % len(beyond_ten)]
            )
            for f in range(2):
                label = int(rng.random() < 0.4)
                x = rng.normal(0.5, 0.15, size=(3, crop, crop)) * (1 + 0.1 * s_i)
                strength = (0.35 if label else 0.1) + rng.normal(0, 0.1)
                x[0] -= strength * blob
                x[1] -= strength * blob
                x[2] += strength * blob
                rows.append(
                    {
                        "row": len(site_crops),
                        "site": site,
                        "patient_id": f"{site}-{p:03d}",
                        "study_id": "1",
                        "finding_id": f"f{f}",
                        "split": split,
                        "label": label,
                        "isup": 3 if label else 0,
                        "zone": "PZ",
                        "source": "reader" if f == 0 else "sampled",
                        "slice": -1,
                        "adc_mean": float(1400 - 600 * strength),
                        "psad": 0.1,
                        "case_label": label,
                        # the radiologist's score: informative, noisy (sampled tissue has none)
                        "pirads": int(np.clip(3 + label + rng.integers(-1, 2), 1, 5))
                        if f == 0
                        else None,
                    }
                )
                site_crops.append(x.astype(np.float32))
        crops[site] = np.stack(site_crops)
    meta = {
        "mode": "lesion",
        "crop": crop,
        "spacing": 0.5,
        "channels": ["t2w", "adc", "hbv"],
        "n_slices": 1,
        "seed": seed,
        "sites": list(sites),
        "format": "fixture",
    }
    write_cache(out, meta, rows, crops)
    return out


def tiny_config(cache: Path, **dotted) -> RunConfig:
    base = {
        "data.cache": str(cache),
        "model.arch": "swin_test",
        "model.crop": 32,
        "finetune.method": "lora",
        "finetune.lora_r": 2,
        "train.batch_size": 8,
        "train.steps": 2,
        "train.lr": 3e-3,
        "fl.rounds": 2,
        "fl.strategy": "fedadam",
        "fl.server_lr": 0.05,
        "eval.n_boot": 50,
    }
    base.update(dotted)
    return RunConfig.from_flat(base)
