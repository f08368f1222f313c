"""Licences of rows: the values, where the built-in ones come from, and how they combine.

Every shard row records `licence` (the terms of whatever made it: for a real row its
source, for a generated row the generator, for a classical child its parent's) and
`parent_licence` (the terms of its parent sample; null for rows without one). Values are
SPDX-like strings ("CC-BY-4.0", "MIT", "CC-BY-4.0 AND MIT") or free text a user sets
("proprietary"); `UNKNOWN` is recorded where nothing names the terms: a licence is never
guessed.

Where a real row's licence comes from, first match wins: the source's `licence:` in the
config; what the source itself knows (`DIGITS_LICENCE`, `PROJECT_LICENCE` for the
project's own simulator renders, a shard row's `licence` column when a job reads shards);
else `UNKNOWN`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from augment.sample import Sample

UNKNOWN = "unknown"
MAX_LICENCE = 100

# scikit-learn's `load_digits` is a copy of the test set of the UCI "Optical Recognition of
# Handwritten Digits" data set (its DESCR text, sklearn/datasets/descr/digits.rst, says so and
# names no licence; scikit-learn's own BSD-3-Clause covers its code, not this data). The UCI
# page (https://archive.ics.uci.edu/dataset/80) licenses the data set under CC BY 4.0.
DIGITS_LICENCE = "CC-BY-4.0"
# The project's own simulator renders are the project's work: pyproject.toml's `license`
# (tests/test_licences.py keeps the two the same).
PROJECT_LICENCE = "MIT"


def check_licence(value: object, where: str | None = None) -> str:
    """`value` if it is a usable licence string, else ValueError naming `where` (when given)
    and the value: 1 to 100 printable characters, no leading or trailing space."""
    at = f"{where}: " if where else ""
    if not isinstance(value, str):
        raise ValueError(f"{at}a licence must be a string (an SPDX id such as 'CC-BY-4.0', or free text such "
                         f"as 'proprietary'), got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError(f"{at}a licence must not be empty (write 'unknown' if the terms are not known)")
    if len(value) > MAX_LICENCE or not value.isprintable() or value != value.strip():
        shown = value if len(value) <= 60 else f"{value[:55]}... ({len(value)} characters)"
        raise ValueError(f"{at}licence {shown!r} must be 1 to {MAX_LICENCE} printable characters without leading "
                         "or trailing space (an SPDX id such as 'CC-BY-4.0', or free text)")
    return value


def combine_licences(licences: Iterable[str | None]) -> str:
    """One licence for something made from all of `licences` (a model fitted on rows under
    several): the distinct values joined with SPDX's AND, sorted; a missing one is `UNKNOWN`,
    and stays visible in the result ("CC-BY-4.0 AND unknown")."""
    distinct = sorted({UNKNOWN if value is None else value for value in licences})
    if not distinct:
        return UNKNOWN
    if len(distinct) == 1:
        return distinct[0]
    # An OR expression is one operand of the AND: parenthesised, as SPDX writes it.
    return " AND ".join(f"({value})" if " OR " in value else value for value in distinct)


def licensed(sample: Sample, configured: str | None) -> Sample:
    """A source's sample with its licence set: the config's `licence` when given, else the one
    the source gave it, else `UNKNOWN`. A source's samples have no parent."""
    return replace(sample, licence=configured or sample.licence or UNKNOWN, parent_licence=None)
