"""Time estimate of a study's cells, calibrated on measured training throughput.

``TRAIN_IMG_PER_S`` holds images per second of forward + backward (LoRA, batch 32, one torch
thread) measured on this project's 2-core CPU machine; other crops are scaled by pixel count
(cost grows about linearly with tokens). Full fine-tuning is slower by ``FULL_FT_SLOWDOWN``
(measured by benchmarks/finetune_cost.py, README "Cost": Swin-T at 64 px trains at 71.7 img/s
with LoRA and 44.6 img/s fully, 2 threads).
Evaluation (validation + test each round) costs about a third of a training step per image.
A Flower Ray simulation has a fixed start-up cost (``OVERHEAD_S``; 17–24 s measured on an idle
machine for a 2-client toy, more when the machine is loaded).

Every cell is costed at its round cap: the pre-registered stopping rule ends many arms earlier,
which is not predicted, so a cell's estimate is an upper bound (study-medium run 1: 76 min of
cells measured against 102 min estimated before this calibration).
"""

from __future__ import annotations

import math
import os

from fedprostate.study.cells import Cell

# (arch, crop) -> images/s, 1 thread. swin_tiny@64: DESIGN's 71.7 img/s on 2 threads, halved;
# resnet50 / vit_small / vit_base at 64 px: scaled from Swin-T by their FLOPs (not measured).
# The reduced variants were measured here (3 SGD steps of batch 32, full backward, 1 thread,
# machine shared with other jobs, load ~9): swin_test 350, resnet_test 375, vit_test 1290 img/s.
# student_test is not measured: resnet_test's rate scaled by forward + backward FLOPs per 32-px
# image (torch FlopCounterMode: resnet_test 13.5 M, student_test 12.9 M) -> 390 img/s.
TRAIN_IMG_PER_S: dict[tuple[str, int], float] = {
    ("swin_tiny", 64): 36.0,
    ("resnet50", 64): 30.0,
    ("vit_small", 64): 40.0,
    ("vit_base", 64): 12.0,
    ("swin_test", 32): 350.0,
    ("resnet_test", 32): 375.0,
    ("vit_test", 32): 1290.0,
    ("student_test", 32): 390.0,
}
FULL_FT_SLOWDOWN = 71.7 / 44.6
EVAL_COST = 1 / 3
OVERHEAD_S = {"federate": 30.0, "centralize": 3.0, "local": 3.0}
# Flower round trip (Ray actor calls, (de)serialization, server evaluation) per round; measured
# ~1.2 s for a 3-client toy round here.
ROUND_OVERHEAD_S = {"federate": 1.5, "centralize": 0.0, "local": 0.0}
# Crops per patient measured on `data synth --preset small` (120 patients): lesion mode 294
# crops (1 finding + sampled negatives per study), organ mode 1,605 (every gland slice).
CROPS_PER_PATIENT = {"lesion": 2.45, "organ": 13.4}


def images_per_second(arch: str, crop: int, method: str = "lora") -> float:
    known = [(c, v) for (a, c), v in TRAIN_IMG_PER_S.items() if a == arch]
    if not known:
        known = [(64, TRAIN_IMG_PER_S[("swin_tiny", 64)])]  # unknown arch: assume Swin-T cost
    ref_crop, ips = min(known, key=lambda cv: abs(cv[0] - crop))
    ips *= (ref_crop / crop) ** 2
    return ips / FULL_FT_SLOWDOWN if method == "full" else ips


def cell_seconds(
    cell: Cell,
    n_clients: int,
    train_rows_per_client: float,
    val_rows: float,
    test_rows: float,
    cores: int = 0,
) -> float:
    """Estimated wall seconds of one cell at its round cap (``val_rows``/``test_rows``: pooled).

    Scored each round: a federated or centralized run scores the pooled validation and test
    splits; local-only scores each site's own validation and test splits (together the pooled
    ones) and the pooled test split once per site.
    """
    cfg = cell.config
    cores = cores or os.cpu_count() or 2
    ips = images_per_second(cfg.model.arch, cfg.model.crop, cfg.finetune.method)
    if cfg.train.steps > 0:
        per_client = cfg.train.steps * cfg.train.batch_size
    else:
        per_client = cfg.train.epochs * train_rows_per_client
    if cfg.data.max_train_per_client > 0 and cfg.train.steps == 0:
        per_client = min(per_client, cfg.train.epochs * cfg.data.max_train_per_client)
    train_imgs = per_client * n_clients
    if cell.kind == "federate":
        parallel = max(1, min(n_clients, cores))
    else:
        parallel = 1
    eval_imgs = val_rows + test_rows
    if cell.kind == "local":
        eval_imgs += n_clients * test_rows
    per_round = train_imgs / (ips * parallel) + EVAL_COST * eval_imgs / (ips * cores)
    return OVERHEAD_S[cell.kind] + cfg.fl.rounds * (per_round + ROUND_OVERHEAD_S[cell.kind])


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


# Input preparation, measured in study-medium run 1 on an idle 2-core machine: synthesis
# 224 s for 2,100 studies (2 workers), lesion crops 192 s and organ slices 128 s for 2,040
# studies, SimMIM 5 epochs of 480 32-px crops with the reduced Swin in 5 s (scaled by pixels and
# crops for other settings).
SYNTH_S_PER_STUDY = 0.107
PREPARE_S_PER_STUDY = {"lesion": 0.094, "organ": 0.063}
PRETRAIN_S_PER_CROP_EPOCH_32PX = 5.0 / (480 * 5)


def inputs_seconds(
    studies: int,
    unlabeled: int,
    caches: tuple[str, ...],
    archs: int,
    crops: int,
    epochs: int,
    crop: int,
) -> float:
    """Estimated seconds to synthesize, prepare the ``caches`` ("lesion", "organ") and pre-train
    ``archs`` backbones."""
    pretrain = archs * crops * epochs * PRETRAIN_S_PER_CROP_EPOCH_32PX * (crop / 32) ** 2
    prepare = sum(PREPARE_S_PER_STUDY[mode] for mode in caches) * studies
    return SYNTH_S_PER_STUDY * (studies + unlabeled) + prepare + pretrain
