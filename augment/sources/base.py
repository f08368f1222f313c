"""What every data source provides.

A source lists lightweight `SourceRecord`s cheaply (no pixels decoded), so the driver can
plan a job; workers then `load` records into `Sample`s. `load` raises `InputRejected` for
a bad record; constructing a source raises `ConfigError` for a bad layout (missing root,
empty or unsafe class folder, unreadable annotation file).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from augment.errors import ConfigError, InputRejected, is_valid_unicode, readable
from augment.sample import Sample

log = logging.getLogger("synthaug")

# Class names end up in file metadata, report tables and (for folder sources) paths.
# Letters and digits of any script count (a folder may be named "café" or "猫"); marks
# (accents in NFD form, as macOS file systems give them, vowel signs) may follow them.
_NAME_PUNCTUATION = frozenset(" _.+-")
MAX_CLASS_NAME = 64


def _is_letter_or_digit(char: str) -> bool:
    return unicodedata.category(char)[0] in "LN"


def is_safe_class_name(name: str) -> bool:
    """True for 1..64 characters: a letter or digit first, then letters, digits, marks or
    space _ . + - (no path separators, control or format characters, no trailing space)."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_CLASS_NAME:
        return False
    if not _is_letter_or_digit(name[0]) or name.rstrip() != name:
        return False
    return all(
        c in _NAME_PUNCTUATION or unicodedata.category(c)[0] in "LNM" for c in name[1:]
    )


def check_class_name(name: str, where: str) -> str:
    """Return `name` if it is safe as a class name, else raise `ConfigError` naming `where`."""
    if not is_safe_class_name(name):
        raise ConfigError(
            f"{where}: class name {readable(name)!r} is not a safe name "
            "(letters, digits, space, '_', '.', '+', '-'; must start with a letter or digit; "
            f"at most {MAX_CLASS_NAME} characters)"
        )
    return name


def listed_name(name: str) -> tuple[str, str | None]:
    """A listed file name as a record id, and why it cannot be loaded (None if it can).

    A name that is not valid UTF-8 gets a readable id with its bytes escaped
    (``cat/g\\xff.png``): the raw name cannot travel as Arrow/JSON text, so the record is
    listed under that id and rejected when loaded (a recorded skip, like any bad file).
    """
    if is_valid_unicode(name):
        return name, None
    return readable(name), "file name is not valid UTF-8"


@dataclass(frozen=True)
class SourceRecord:
    """A pointer to one sample of a source: stable `id`, class id, and a source-specific ref.

    `ref` is a string (a path relative to the dataset root, an index, a file#row) so that
    records are cheap to ship to workers.
    """

    id: str
    label: int | None
    ref: str


class Source(Protocol):
    """A dataset the job reads real samples from."""

    @property
    def class_names(self) -> list[str]: ...

    def records(self) -> list[SourceRecord]:
        """All records, in a deterministic order (sorted by id)."""
        ...

    def load(self, record: SourceRecord) -> Sample:
        """Decode one record; raise `InputRejected` if it is unusable."""
        ...


class ListedRecordsSource:
    """Base for sources that list their class names and records once, at construction."""

    _class_names: list[str]
    _records: list[SourceRecord]
    # Records listed only to be rejected when loaded: ref -> reason (see `listed_name`).
    _refused: dict[str, str] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def records(self) -> list[SourceRecord]:
        return list(self._records)

    def _check_refused(self, record: SourceRecord) -> None:
        """Raise `InputRejected` for a record the listing already knew to be unusable."""
        reason = self._refused.get(record.ref)
        if reason is not None:
            raise InputRejected(record.ref, reason)


def loaded(source: Source, records: Iterable[SourceRecord], stage: str,
           skipped: list[str] | None = None) -> Iterator[tuple[SourceRecord, Sample]]:
    """Each usable record with its sample, for the driver's own reads (report models, targets).

    A record that fails to load is left out, as workers skip it: a warning names it and its
    reason (prefixed by `stage`), or, with `skipped` given, "path: reason" is appended there
    for the caller to summarise."""
    for record in records:
        try:
            sample = source.load(record)
        except InputRejected as rejected:
            if skipped is None:
                log.warning("%s: skipped %s: %s", stage, rejected.path, rejected.reason)
            else:
                skipped.append(f"{rejected.path}: {rejected.reason}")
            continue
        yield record, sample
