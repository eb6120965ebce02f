"""Flower's console log during a simulation: no colour codes in files, no run_simulation notice."""

import io
import logging

from flwr.common.logger import FLOWER_LOGGER, warn_deprecated_feature
from flwr.supercore.logger import console_handler

from fedprostate.fl.simulation import plain_flower_log


def test_plain_flower_log_drops_the_notice_and_the_colours(monkeypatch):
    stream = io.StringIO()  # not a terminal, like a log file
    monkeypatch.setattr(console_handler, "stream", stream)
    monkeypatch.setattr("sys.stderr", stream)
    with plain_flower_log():
        warn_deprecated_feature(
            "The `run_simulation` function is deprecated and will be removed in a future version"
        )
        FLOWER_LOGGER.log(logging.INFO, "round %d done", 1)
    text = stream.getvalue()
    assert "round 1 done" in text
    assert "deprecated" not in text
    assert "\x1b[" not in text
    FLOWER_LOGGER.log(logging.INFO, "after")  # Flower's own settings are back afterwards
    assert "\x1b[" in stream.getvalue().split("round 1 done")[1]
