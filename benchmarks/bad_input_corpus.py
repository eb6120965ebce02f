"""The bad-input corpus as a table: what ``data prepare`` does with each damaged input.

    python benchmarks/bad_input_corpus.py             # markdown table + counts
    python benchmarks/bad_input_corpus.py --reasons   # also the reason each rejection gave

The cases are the test fixtures of ``tests/bad_corpus_cases.py`` (the corpus is test data, so it
lives with the tests; this script puts ``tests/`` on the import path the way pytest's rootdir
``conftest.py`` does). Counts: flagged (rejected, out of the cases expected rejected), right
reason, silently kept (goal 0), crashed (goal 0), good studies lost (goal 0: undamaged studies
and cases that must be kept). Exit status 1 when any case is not as expected.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bad_corpus import build_bases, markdown_table, run_case, summary  # noqa: E402
from bad_corpus_cases import CASES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reasons", action="store_true", help="print every rejection reason")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bases = build_bases(Path(tmp) / "bases")
        outcomes = [run_case(case, bases, Path(tmp) / "cases") for case in CASES]
    print(markdown_table(outcomes))
    if args.reasons:
        print()
        for o in outcomes:
            print(f"- {o.case.name}: {o.reason or 'kept'}")
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        print(f"NOT AS EXPECTED: {o.describe()}", file=sys.stderr)
    counts = summary(outcomes)
    print(
        f"\n{counts['as expected']}/{counts['cases']} as expected in {time.perf_counter() - start:.0f} s"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
