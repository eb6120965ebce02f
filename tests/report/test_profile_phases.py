"""The profiler breakdown's attribution (report.profile_phases) on hand-made cProfile stats."""

import cProfile
import pstats

import pytest

from fedprostate.report.profile_phases import OTHER, attribute, table_rows

ROOT = ("flwr/simulation/run_simulation.py", 1, "server_th")
TRAIN = ("fedprostate/engine/loop.py", 10, "train_local")
EVAL = ("fedprostate/fl/server.py", 70, "evaluate")
CONV = ("~", 0, "<built-in method torch.conv2d>")
SLEEP = ("~", 0, "<built-in method time.sleep>")
APPEND = ("fedprostate/records/run_folder.py", 5, "append_round")
DUMPS = ("json/__init__.py", 1, "dumps")
REC_F = ("helpers.py", 1, "f")
REC_G = ("helpers.py", 2, "g")

RULES = [
    ("local training", r"engine/loop\.py:train_local$"),
    ("pooled evaluation", r"fl/server\.py:evaluate$"),
    ("logging", r"run_folder\.py:append_round$"),
    ("waiting", r"time\.sleep"),
    ("never used", r"loop\.py"),  # train_local matches a rule above first
]


def _row(tt, callers):
    """pstats row: (primitive calls, calls, tottime, cumtime, {caller: edge})."""
    return (1, 1, tt, tt, callers)


def _stats():
    return {
        ROOT: _row(0.1, {}),
        TRAIN: _row(0.5, {ROOT: (1, 1, 0.5, 3.0)}),
        EVAL: _row(0.2, {ROOT: (1, 1, 0.2, 0.7)}),
        # torch's kernel: three quarters of its time under training, one under evaluation
        CONV: _row(2.0, {TRAIN: (3, 3, 1.5, 1.5), EVAL: (1, 1, 0.5, 0.5)}),
        SLEEP: _row(1.0, {ROOT: (1, 1, 1.0, 1.0)}),
        APPEND: _row(0.1, {ROOT: (1, 1, 0.1, 0.4)}),
        DUMPS: _row(0.3, {APPEND: (1, 1, 0.3, 0.3)}),
        # mutual recursion under training must neither loop nor lose time
        REC_F: _row(0.2, {TRAIN: (1, 1, 0.1, 0.4), REC_G: (1, 1, 0.1, 0.2)}),
        REC_G: _row(0.2, {REC_F: (1, 1, 0.2, 0.2)}),
    }


def test_time_goes_to_the_nearest_matching_ancestor_split_by_call_edges():
    seconds = attribute(_stats(), RULES)
    assert seconds == pytest.approx(
        {
            "local training": 0.5 + 2.0 * 0.75 + 0.2 + 0.2,
            "pooled evaluation": 0.2 + 2.0 * 0.25,
            "logging": 0.1 + 0.3,
            "waiting": 1.0,
            OTHER: 0.1,
        }
    )
    assert sum(seconds.values()) == pytest.approx(sum(r[2] for r in _stats().values()))


def test_table_in_the_given_order_per_round_with_shares():
    rows = table_rows({"b": 2.0, OTHER: 1.0, "a": 1.0, "z": 0.0}, ["a", "b", "missing"], per=2)
    assert rows == [("a", 0.5, 0.25), ("b", 1.0, 0.5), (OTHER, 0.5, 0.25)]


def test_real_profile_attributes_a_callee_to_its_caller():
    def work():
        return sum(i * i for i in range(20000))

    def caller_phase():
        return work()

    prof = cProfile.Profile()
    prof.enable()
    caller_phase()
    prof.disable()
    seconds = attribute(pstats.Stats(prof).stats, [("mine", r"caller_phase$")])
    assert seconds["mine"] > 0.8 * sum(seconds.values())
