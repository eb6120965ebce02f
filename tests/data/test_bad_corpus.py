"""The bad-input corpus (``tests/bad_corpus_cases.py``): every case gives its expected outcome.

Each case copies a clean base dataset, damages it in one way and runs ``data prepare``; it must
be rejected with the stated reason (or, for good data, kept), crash nothing and lose no undamaged
study. Together: 100 % of the corpus, ``silently kept`` = ``crashed`` = ``good studies lost`` = 0.
"""

import pytest

from bad_corpus import BASES, build_bases, run_case, summary
from bad_corpus_cases import CASES

BY_NAME = {c.name: c for c in CASES}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return build_bases(tmp_path_factory.mktemp("corpus_bases"))


@pytest.mark.parametrize("name", list(BY_NAME))
def test_case_gives_its_expected_outcome(name, bases, tmp_path):
    outcome = run_case(BY_NAME[name], bases, tmp_path)
    assert outcome.ok, outcome.describe()
    if outcome.flagged:  # one line naming the patient, as every rejection
        assert "\n" not in outcome.reason


def test_corpus_covers_the_issue_and_every_format():
    assert len(CASES) >= 30
    assert {c.fmt for c in CASES} == set(BASES)
    assert sum(not c.expects_rejection for c in CASES) >= 5  # good data that must stay


def test_summary_counts_a_wrong_outcome(bases, tmp_path):
    """The counters can fail: a case expecting the wrong reason / a rejection of good data."""
    import dataclasses

    wrong = dataclasses.replace(BY_NAME["blank_hbv"], reason=("a reason nobody gives",))
    keep = dataclasses.replace(BY_NAME["blank_hbv"], reason=())
    outcomes = [run_case(c, bases, tmp_path) for c in (wrong, keep)]
    counts = summary(outcomes)
    assert counts["flagged"] == 1 and counts["right reason"] == 0
    assert counts["good studies lost"] == 1 and counts["as expected"] == 0
