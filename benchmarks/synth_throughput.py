"""Throughput of `fedprostate data synth`: studies/s and MB per study.

Runs the small preset and a sample of the default preset (2 patients per collection, all 17 scanner
profiles, 2 worker processes) into a temporary folder and prints a table. Usage:
    python benchmarks/synth_throughput.py [--small-patients 100] [--per-site 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedprostate.data.synth.federation import synthesize


def measure(out: Path, **kwargs) -> dict:
    report = synthesize(out, **kwargs)
    n = report.n_studies + report.n_unlabeled
    return {
        "studies": n,
        "seconds": report.seconds,
        "studies_per_s": n / report.seconds,
        "mb_per_study": report.bytes_written / 1e6 / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-patients", type=int, default=100)
    parser.add_argument("--per-site", type=int, default=2)
    args = parser.parse_args()
    runs = [
        ("small (picai, 1 proc)", {"preset": "small", "patients": args.small_patients}),
        ("small (prostatex DICOM)", {"preset": "small", "patients": 20, "layout": "prostatex"}),
        (
            "default sample (picai, 2 procs)",
            {"preset": "default", "sites": 17, "patients": 17 * args.per_site},
        ),
    ]
    print(f"{'run':34s} {'studies':>8s} {'seconds':>8s} {'studies/s':>10s} {'MB/study':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kwargs) in enumerate(runs):
            r = measure(Path(tmp) / str(i), **kwargs)
            print(
                f"{name:34s} {r['studies']:8d} {r['seconds']:8.1f} {r['studies_per_s']:10.2f} "
                f"{r['mb_per_study']:9.2f}"
            )


if __name__ == "__main__":
    main()
