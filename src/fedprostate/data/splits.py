"""Patient-level splits and federated partitions.

``assign_splits`` gives every patient one split (train/val/test) per site, stratified by the
patient's case label (max over its studies), from a seeded generator; all rows of a patient share
it. ``partition`` deals rows to federated clients: a patient is never cut between clients.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from fedprostate.config import PARTITIONS

SPLITS = ("train", "val", "test")


def _patients(rows: list[dict]) -> dict[tuple[str, str], int]:
    """(site, patient_id) -> patient label (max case_label)."""
    out: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["site"], r["patient_id"])
        out[key] = max(out.get(key, 0), int(r.get("case_label") or 0))
    return out


def _counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding of ``n`` into parts proportional to ``fractions``."""
    raw = np.asarray(fractions, dtype=float) / sum(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_patients(
    patients: dict[tuple[str, str], int], fractions=(0.6, 0.2, 0.2), seed: int = 0
) -> dict[tuple[str, str], str]:
    """Stratified per site and label; returns (site, patient) -> split."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list] = defaultdict(list)
    for key, label in sorted(patients.items()):
        groups[(key[0], label)].append(key)
    out = {}
    for _, members in sorted(groups.items()):
        order = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for split, count in zip(SPLITS, _counts(len(order), fractions), strict=True):
            for key in order[start : start + count]:
                out[key] = split
            start += count
    return out


def assign_splits(rows: list[dict], fractions=(0.6, 0.2, 0.2), seed: int = 0) -> list[dict]:
    """Set ``row["split"]`` in place (and return the rows)."""
    assigned = split_patients(_patients(rows), fractions, seed)
    for r in rows:
        r["split"] = assigned[(r["site"], r["patient_id"])]
    return rows


def partition(
    rows: list[dict],
    scheme: str = "natural",
    num_partitions: int | None = None,
    alpha: float = 0.5,
    seed: int = 0,
    holdout_site: str | None = None,
) -> dict[str, list[dict]]:
    """Client name -> its rows (every split; each row keeps its split).

    natural: one client per site. iid / dirichlet: patients (all splits, each keeping its split)
    are re-dealt over ``num_partitions`` clients (default: number of sites), uniformly or with
    label proportions drawn from Dirichlet(``alpha``) per class. loso: every site but
    ``holdout_site`` (evaluate on ``select(rows, sites=[holdout_site])``).
    """
    sites = sorted({r["site"] for r in rows})
    if scheme == "natural":
        return {s: [r for r in rows if r["site"] == s] for s in sites}
    if scheme == "loso":
        if holdout_site not in sites:
            raise ValueError(f"loso needs holdout_site in {sites}, got {holdout_site!r}")
        return {s: [r for r in rows if r["site"] == s] for s in sites if s != holdout_site}
    if scheme not in PARTITIONS:
        raise ValueError(f"scheme {scheme!r}: choose one of {PARTITIONS}")
    k = int(num_partitions or len(sites))
    if k < 1:
        raise ValueError("num_partitions must be >= 1")
    if scheme == "dirichlet" and alpha <= 0:
        raise ValueError("alpha must be > 0")
    patients = _patients(rows)
    rng = np.random.default_rng(seed)
    owner = (
        _deal_iid(patients, k, rng) if scheme == "iid" else _deal_dirichlet(patients, k, alpha, rng)
    )
    clients: dict[str, list[dict]] = {f"client{i}": [] for i in range(k)}
    for r in rows:
        clients[f"client{owner[(r['site'], r['patient_id'])]}"].append(r)
    return clients


def _deal_iid(patients: dict, k: int, rng: np.random.Generator) -> dict:
    keys = sorted(patients)
    order = rng.permutation(len(keys))
    return {keys[j]: n % k for n, j in enumerate(order)}


def _deal_dirichlet(patients: dict, k: int, alpha: float, rng: np.random.Generator) -> dict:
    """Per class, split the shuffled patients by proportions ~ Dirichlet(alpha).

    Redraws (same generator) up to 100 times until every client has at least one patient.
    """
    by_label: dict[int, list] = defaultdict(list)
    for key, label in sorted(patients.items()):
        by_label[label].append(key)
    owner: dict = {}
    for _attempt in range(100):
        owner = {}
        for _, keys in sorted(by_label.items()):
            order = [keys[i] for i in rng.permutation(len(keys))]
            cuts = (np.cumsum(rng.dirichlet(np.full(k, alpha)))[:-1] * len(order)).astype(int)
            for client, part in enumerate(np.split(np.arange(len(order)), cuts)):
                for i in part:
                    owner[order[i]] = client
        if len(set(owner.values())) == min(k, len(patients)):
            break
    return owner
