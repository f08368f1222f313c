"""Training progress off a terminal: a log line with rate and ETA every LOG_INTERVAL seconds, then a summary."""

from __future__ import annotations

import logging

import pytest

from augment.metrics import progress
from augment.metrics.progress import LOG_INTERVAL, StepProgress


def test_log_lines_are_spaced_and_name_rate_and_eta(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="synthaug"):
        with StepProgress("report: domain classifier", 400) as shown:
            for _ in range(400):
                clock[0] += 0.125  # 8 steps/s: a line every LOG_INTERVAL seconds, not per step
                shown.advance()
    lines = [r.getMessage() for r in caplog.records]
    # 50 s: lines at 10, 20, 30 and 40 s, then the summary (none at the end itself)
    assert len(lines) == 400 * 0.125 / LOG_INTERVAL
    assert lines[0] == "report: domain classifier step 80/400, 8.0 steps/s, ETA 40s"
    assert lines[-1] == "report: domain classifier: 400 steps in 50s, 8.0 steps/s"


def test_no_label_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="synthaug"):
        with StepProgress(None, 3) as shown:
            for _ in range(3):
                shown.advance()
    assert not caplog.records
