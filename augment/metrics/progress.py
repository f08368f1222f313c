"""Progress of the report's training loops (domain classifier, utility models): steps, rate, ETA.

These loops run for minutes on a CPU. On a terminal a tqdm bar on stderr (like the job's
other bars) updates in place; elsewhere (a log file, CI) a log line every
`LOG_INTERVAL` seconds, so a long run leaves a readable trace instead of a flood:

    report: domain classifier step 120/400, 35 steps/s, ETA 8s
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

log = logging.getLogger("synthaug")

LOG_INTERVAL = 10.0  # seconds between log lines when stderr is not a terminal (the job's bars use the same)
BAR_INTERVAL = 0.5  # seconds between bar redraws on a terminal


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


def _rate(per_second: float) -> str:
    return f"{per_second:.1f}" if per_second < 10 else f"{per_second:.0f}"


class StepProgress:
    """Counts the steps of one training loop under `label`; `label=None` shows nothing.

    Use as a context manager and call `advance()` once per step.
    """

    def __init__(self, label: str | None, total: int) -> None:
        self.label, self.total = label, total
        self.done = 0
        self._started = self._last = time.monotonic()
        self._bar: Any = None
        if label is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr, dynamic_ncols=True,
                             mininterval=BAR_INTERVAL, leave=False)

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
            return
        now = time.monotonic()
        if self.label is None or now - self._last < LOG_INTERVAL or self.done >= self.total:
            return
        self._last = now
        rate = self.done / max(now - self._started, 1e-9)
        log.info("%s step %d/%d, %s steps/s, ETA %s", self.label, self.done, self.total, _rate(rate),
                 _duration((self.total - self.done) / rate))

    def close(self, finished: bool = True) -> None:
        """Remove the bar; with `finished`, one line with the steps, time and rate."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if finished and self.label is not None and self.done:
            seconds = time.monotonic() - self._started
            log.info("%s: %d steps in %s, %s steps/s", self.label, self.done, _duration(seconds),
                     _rate(self.done / max(seconds, 1e-9)))
            self.label = None  # once

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close(finished=kind is None)
