"""Errors shared by every stage.

Two kinds of bad input exist: a bad *config* stops the job before anything runs
(`ConfigError`, exit code 2); a bad *record* (one image, one annotation) is skipped and
recorded in `OUT/rejected.jsonl` (`InputRejected`), so one broken file never kills a job.

Both keep their text printable: a file name that is not valid UTF-8 reaches Python as a
str with lone surrogates (PEP 383), which no UTF-8 writer (stderr, JSON, Arrow) accepts;
`readable` shows such bytes as backslash escapes (``g\\xff.png``) instead.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Leading "part: " segments that say *where* in a record the problem is, not what it is:
# "annotation 3: ", "label labels/a.png: ", "mask: " (a digit or a path character, or a column).
_RECORD_PARTS = frozenset({"image", "mask", "instances", "depth", "boxes", "label"})
_VALUE = [
    (re.compile(r"\s*\([^()]*\)"), ""),  # parenthesised details: "(FIFO)", "(12 px)"
    (re.compile(r",? e\.g\. .*$"), ""),  # examples: "2 unknown label colours, e.g. #0a0b0c"
    (re.compile(r"\[[^\[\]]*\]"), "[…]"),  # lists: "bbox [1, 2, 3, 4]"
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"),  # quoted values
    (re.compile(r"\S*/\S*"), "…"),  # paths
    (re.compile(r"#[0-9A-Fa-f]{6}\b"), "#…"),  # colours
    (re.compile(r"\b\d+x\d+\b"), "NxN"),  # sizes "32x24"
    (re.compile(r"(?<![\w.-])\d+(?:[.,]\d+)*(?!\w)"), "N"),  # numbers, not the 8 of "UTF-8"
]


def _surrogate_text(match: re.Match[str]) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF stand for the undecodable bytes 0x80..0xFF (surrogateescape).
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def readable(text: str) -> str:
    """`text` with lone surrogates shown as escapes, so it encodes as UTF-8.

    A file name made of the bytes b"g\\xff\\xfe.png" becomes the 10 characters
    ``g\\xff\\xfe.png``; text that is valid Unicode is returned unchanged.
    """
    return _SURROGATE.sub(_surrogate_text, text)


def is_valid_unicode(text: str) -> bool:
    """False when `text` holds lone surrogates (bytes that were not valid UTF-8)."""
    return _SURROGATE.search(text) is None


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason, for grouping in summaries.

    Drops the per-record context a reason starts with ("annotation 3: ", "label x.png: "),
    keeps what comes before the next ": " (reasons are written "kind: detail"), and
    replaces values (numbers, lists, quoted names) with placeholders, so that
    "annotation 1: malformed polygon (need >= 3 x,y points)" and
    "annotation 7: malformed polygon (...)" both count as "malformed polygon".
    """
    text = reason.strip()
    while True:
        head, sep, rest = text.partition(": ")
        if not sep or not rest.strip():
            break
        if head in _RECORD_PARTS or re.search(r"[\d/.#\\]", head):
            text = rest.strip()
            continue
        break
    text = text.partition(": ")[0]
    for pattern, replacement in _VALUE:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())
    return text or reason.strip() or "unknown"


class ConfigError(ValueError):
    """The job cannot start: a config value, a source layout or a quota is wrong.

    The message names what is wrong (file, field path, value).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*(readable(a) if isinstance(a, str) else a for a in args))


class InputRejected(ValueError):
    """One source record is unusable; the job skips it and records why."""

    def __init__(self, path: str, reason: str) -> None:
        path, reason = readable(str(path)), readable(str(reason))
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from (path, reason), not from the joined message (pickling through Ray).
        return (type(self), (self.path, self.reason))
