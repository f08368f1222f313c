"""Errors shared by every stage.

Two kinds of bad input exist: a bad *config* stops the job before anything runs
(`ConfigError`, exit code 2); a bad *record* (one image, one annotation) is skipped and
recorded in `OUT/rejected.jsonl` (`InputRejected`), so one broken file never kills a job.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The job cannot start: a config value, a source layout or a quota is wrong.

    The message names what is wrong (file, field path, value).
    """


class InputRejected(ValueError):
    """One source record is unusable; the job skips it and records why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def as_record(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}
