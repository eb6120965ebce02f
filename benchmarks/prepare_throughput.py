"""Throughput of ``data prepare``: studies/s for lesion and organ mode.

    python benchmarks/prepare_throughput.py                 # synth 3 sites x 30 patients, small
    python benchmarks/prepare_throughput.py --src RAW_DIR   # any raw folder, format auto-detected
    python benchmarks/prepare_throughput.py --sites 5 --patients 150

Prints one row per mode: studies listed, kept, crops, seconds, studies/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedprostate.data.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="raw data folder (default: synthesize one)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
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
        for col in ("mode", "studies", "kept", "rejected", "crops", "seconds", "studies/s"):
            table.add_column(col, justify="right")
        for mode in ("lesion", "organ"):
            r = prepare(
                src,
                Path(tmp) / f"cache_{mode}",
                mode=mode,
                crop=args.crop,
                seed=args.seed,
                progress=False,
                console=Console(quiet=True),
            )
            table.add_row(
                mode,
                str(r.listed),
                str(r.kept),
                str(r.rejected),
                str(r.crops),
                f"{r.seconds:.2f}",
                f"{r.studies_per_s:.1f}",
            )
        console.print(table)


if __name__ == "__main__":
    main()
