"""Throughput of ``data prepare``: studies/s for lesion and organ mode.

    python benchmarks/prepare_throughput.py                 # synth 3 sites x 30 patients, small
    python benchmarks/prepare_throughput.py --src RAW_DIR   # any raw folder, format auto-detected
    python benchmarks/prepare_throughput.py --sites 5 --patients 150
    python benchmarks/prepare_throughput.py --src RAW_DIR --repeat 3   # best of 3 runs

Prints one row per mode: studies listed, kept, crops, wall seconds, CPU seconds of this process
and studies/s (from wall time). On a shared machine the wall time depends on the other jobs; the
CPU seconds much less, so compare those (best of ``--repeat``) between versions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.data.formats.base import DataFormatError
from fedprostate.data.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="raw data folder (default: synthesize one)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the best is shown")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src
        if src is None:
            from fedprostate.data.synth.federation import synthesize

            src = Path(tmp) / "raw"
            t0 = time.perf_counter()
            synthesize(
                src,
                sites=args.sites,
                patients=args.patients,
                seed=args.seed,
                preset="small",
                layout="picai",
                unlabeled=0,
            )
            console.print(
                f"synthesized {args.patients} patients in {time.perf_counter() - t0:.1f} s"
            )
        table = Table(title=f"data prepare throughput ({src})")
        cols = ("mode", "studies", "kept", "rejected", "crops", "seconds", "cpu s", "studies/s")
        for col in cols:
            table.add_column(col, justify="right")
        for mode in ("lesion", "organ"):
            runs = []
            try:
                for _ in range(max(1, args.repeat)):
                    cpu = time.process_time()
                    r = prepare(
                        src,
                        Path(tmp) / f"cache_{mode}",
                        mode=mode,
                        crop=args.crop,
                        seed=args.seed,
                        progress=False,
                        console=Console(quiet=True),
                    )
                    runs.append((r, time.process_time() - cpu))
            except DataFormatError as exc:  # e.g. organ mode on a layout without gland masks
                console.print(f"{mode}: {exc}")
                continue
            r = min(runs, key=lambda run: run[0].seconds)[0]
            table.add_row(
                mode,
                str(r.listed),
                str(r.kept),
                str(r.rejected),
                str(r.crops),
                f"{r.seconds:.2f}",
                f"{min(c for _, c in runs):.2f}",
                f"{r.studies_per_s:.1f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
