"""What every data source provides.

A source lists lightweight `SourceRecord`s cheaply (no pixels decoded), so the driver can
plan a job; workers then `load` records into `Sample`s. `load` raises `InputRejected` for
a bad record; constructing a source raises `ConfigError` for a bad layout (missing root,
empty or unsafe class folder, unreadable annotation file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from augment.errors import ConfigError
from augment.sample import Sample

# Class names end up in file metadata, report tables and (for folder sources) paths.
SAFE_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


def check_class_name(name: str, where: str) -> str:
    """Return `name` if it is safe as a class name, else raise `ConfigError` naming `where`."""
    if not SAFE_CLASS_NAME.match(name) or name.strip() != name:
        raise ConfigError(
            f"{where}: class name {name!r} is not a safe name "
            "(letters, digits, space, '_', '.', '+', '-'; must start with a letter or digit; "
            "at most 64 characters)"
        )
    return name


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

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def records(self) -> list[SourceRecord]:
        return list(self._records)
