"""Parquet shards of this project's format (schema version 1) read back as a source.

Reads the columns directly with pyarrow (no dependency on the shard writer): `id`,
`image` and `mask`/`instances`/`depth` (PNG bytes in the `datasets` Image layout, a struct
of `bytes` and `path`), `label`, `label_name`, `boxes`, and `licence` (a row's terms stay its
own; absent in shards from before licences were recorded). Class names and schema version come
from the file's key-value metadata key `synthaug`. Listing reads only `id` and `label`;
`load` reads one row group at a time and keeps the last one for the next record.

A folder with a `_manifest.json` (written last by a job: it is the only truth of what
exists) is read as the manifest says: exactly the files it lists, each checked against
its `sha256` and `rows` before any row is used (a changed shard is a `ConfigError` naming
the file and both hashes); `*.parquet` files it does not list are ignored with a warning,
like every reader of the format does. A single file inside such a folder must be listed.
Without a manifest every `*.parquet` file is read unchecked. Only regular files are read.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from augment.errors import ConfigError, InputRejected
from augment.images import decode_png, format_bytes, read_regular_file
from augment.sample import Box, Sample
from augment.sources.base import SourceRecord, check_class_name
from augment.store import Folder, is_remote

SCHEMA_VERSION = 1
METADATA_KEY = b"synthaug"
_REQUIRED_COLUMNS = ("id", "image")
MANIFEST_NAME = "_manifest.json"  # the name augment.shards writes
# A manifest lists ~200 bytes per shard: 256 MiB is over a million shards.
MAX_MANIFEST_BYTES = 256 * 2**20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger("synthaug")

# (path, device, inode, size, mtime) -> sha256: a process builds a source more than once
# (the driver lists it, each Ray worker rebuilds it), an unchanged file is hashed once.
_verified: dict[tuple[str, int, int, int, int], str] = {}


def _regular_file(path: Path) -> os.stat_result:
    """stat() of `path` (symlinks followed); `ConfigError` unless it is a regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: Parquet source not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(info.st_mode) else "socket or device"
        raise ConfigError(f"{path}: not a regular file ({kind})")
    return info


def _sha256(path: Path) -> str:
    """sha256 of a regular file, read in 1 MiB pieces (never blocks on a FIFO)."""
    info = _regular_file(path)
    key = (str(path.resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _verified:
        return _verified[key]
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"{path}: not a regular file")
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    _verified[key] = digest.hexdigest()
    return _verified[key]


@dataclass(frozen=True)
class RemoteFile:
    """A shard object in a store prefix (`--out s3://...` jobs): read through pyarrow.fs."""

    folder: Folder
    name: str

    def __str__(self) -> str:
        return self.folder.show(self.name)


def _open(file: Path | RemoteFile) -> Any:
    """What pyarrow.parquet reads: the path, or the store object opened for random access."""
    return file.folder.open(file.name) if isinstance(file, RemoteFile) else file


def _read_manifest(folder: Path | Folder) -> dict[str, tuple[int, str]] | None:
    """{file: (rows, sha256)} from `folder/_manifest.json`; None when there is none."""
    try:
        if isinstance(folder, Folder):
            path = folder.show(MANIFEST_NAME)
            if not folder.exists(MANIFEST_NAME):
                return None
            try:
                data = folder.read_bytes(MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
            except (OSError, ValueError) as exc:
                raise InputRejected(path, str(exc)) from None
        else:
            path = folder / MANIFEST_NAME
            if not os.path.lexists(path):
                return None
            data = read_regular_file(path, name=str(path), max_bytes=MAX_MANIFEST_BYTES,
                                     bound=f"the {format_bytes(MAX_MANIFEST_BYTES)} limit for a manifest")
        doc = json.loads(data.decode("utf-8"))
    except InputRejected as exc:
        raise ConfigError(f"{path}: cannot read the shard manifest: {exc.reason}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: the shard manifest is not valid JSON: {exc}") from None
    shards = doc.get("shards") if isinstance(doc, dict) else None
    if not isinstance(shards, list):
        raise ConfigError(f"{path}: the shard manifest has no 'shards' list")
    entries: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(shards):
        file = entry.get("file") if isinstance(entry, dict) else None
        rows = entry.get("rows") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        plain = isinstance(file, str) and file and Path(file).name == file and not file.startswith(".")
        if not (plain and isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0
                and isinstance(digest, str) and _SHA256.match(digest)):
            raise ConfigError(
                f"{path}: shards[{i}] needs 'file' (a plain file name), 'rows' (an integer >= 0) "
                f"and 'sha256' (64 hex digits), got {entry!r}"
            )
        if file in entries:
            raise ConfigError(f"{path}: shards[{i}]: {file!r} is listed twice")
        entries[file] = (rows, digest)
    return entries


def _remote_files(url: str) -> list[tuple[RemoteFile, tuple[int, str]]]:
    """A store prefix is read only through its manifest: without one nothing there is published."""
    folder = Folder(url)
    try:
        manifest = _read_manifest(folder)
    except OSError as exc:
        raise ConfigError(f"{url}: cannot read the store: {exc}") from None
    if manifest is None:
        raise ConfigError(f"{folder.show(MANIFEST_NAME)}: no shard manifest (an s3:// source is read only "
                          "through the manifest its job wrote last; was the job finished?)")
    if not manifest:
        raise ConfigError(f"{folder.show(MANIFEST_NAME)}: the shard manifest lists no shards")
    present = set(folder.names())
    for name in manifest:
        if name not in present:
            raise ConfigError(f"{folder.show(name)}: listed in {MANIFEST_NAME} but missing")
    return [(RemoteFile(folder, name), expected) for name, expected in sorted(manifest.items())]


def _shard_files(path: Path | str) -> list[tuple[Path | RemoteFile, tuple[int, str] | None]]:
    """The files to read, each with the (rows, sha256) its manifest promises (or None)."""
    if is_remote(path):
        return _remote_files(str(path))
    if path.is_dir():
        manifest = _read_manifest(path)
        present = sorted(
            p for p in path.iterdir()
            if p.suffix == ".parquet" and not p.name.startswith(("_", ".")) and not p.is_dir()
        )
        if manifest is None:
            if not present:
                raise ConfigError(f"{path}: no *.parquet files")
            return [(p, None) for p in present]
        unlisted = [p.name for p in present if p.name not in manifest]
        if unlisted:
            log.warning("%s: ignoring %d *.parquet files not in %s (the manifest is the only truth "
                        "of what exists): %s", path, len(unlisted), MANIFEST_NAME, ", ".join(unlisted[:5]))
        if not manifest:
            raise ConfigError(f"{path / MANIFEST_NAME}: the shard manifest lists no shards")
        for name in manifest:
            if not os.path.lexists(path / name):
                raise ConfigError(f"{path / name}: listed in {MANIFEST_NAME} but missing")
        return [(path / name, expected) for name, expected in sorted(manifest.items())]
    _regular_file(path)
    manifest = _read_manifest(path.parent)
    if manifest is None:
        return [(path, None)]
    if path.name not in manifest:
        raise ConfigError(
            f"{path}: not listed in {path.parent / MANIFEST_NAME} (the manifest is the only truth "
            "of what exists in its folder)"
        )
    return [(path, manifest[path.name])]


def _check_sha256(file: Path | RemoteFile, want: str) -> None:
    """`ConfigError` naming both hashes unless `file` is what its manifest published."""
    if isinstance(file, RemoteFile):
        try:
            got = file.folder.sha256(file.name)
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
    else:
        got = _sha256(file)
    if got != want:
        raise ConfigError(
            f"{file}: sha256 {got} does not match {want} listed in {MANIFEST_NAME} "
            "(the shard changed after it was published)"
        )


def _class_names_of(schema: pa.Schema, file: Path) -> list[str]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ConfigError(f"{file}: not a synthaug shard (no 'synthaug' key in the Parquet metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: 'synthaug' metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        version = meta.get("schema_version") if isinstance(meta, dict) else None
        raise ConfigError(
            f"{file}: shard schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
        )
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{file}: 'synthaug' metadata needs 'class_names', a list of strings")
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: duplicate class names in {names!r}")
    return [check_class_name(n, str(file)) for n in names]


class ParquetSource:
    """A shard folder (`*.parquet`, skipping names starting with '_' or '.') or one shard file."""

    def __init__(self, path: Path | str) -> None:
        self.path = path if is_remote(path) else Path(path)
        self._files: dict[str, Path | RemoteFile] = {}
        self._class_names: list[str] | None = None
        self._group_starts: dict[str, list[int]] = {}  # first row of each row group, per file
        self._num_rows: dict[str, int] = {}
        records: list[SourceRecord] = []
        where_of: dict[str, str] = {}
        for file, expected in _shard_files(self.path):
            if not isinstance(file, RemoteFile):
                _regular_file(file)
            if expected is not None:  # before any byte of it is parsed as Parquet
                _check_sha256(file, expected[1])
            try:
                schema = pq.read_schema(_open(file))
            except (OSError, pa.ArrowException) as exc:
                raise ConfigError(f"{file}: not a readable Parquet file: {exc}") from None
            names = _class_names_of(schema, file)
            if self._class_names is None:
                self._class_names = names
            elif names != self._class_names:
                raise ConfigError(
                    f"{file}: class names {names!r} differ from those of the other shards "
                    f"{self._class_names!r}"
                )
            for column in _REQUIRED_COLUMNS:
                if column not in schema.names:
                    raise ConfigError(f"{file}: missing column {column!r}")
            columns = ["id"] + (["label"] if "label" in schema.names else [])
            try:
                table = pq.read_table(_open(file), columns=columns)
            except (OSError, pa.ArrowException) as exc:
                raise ConfigError(f"{file}: cannot read columns {columns}: {exc}") from None
            try:
                metadata = pq.read_metadata(_open(file))
            except (OSError, pa.ArrowException) as exc:
                raise ConfigError(f"{file}: cannot read the Parquet footer: {exc}") from None
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            if expected is not None and sum(sizes) != expected[0]:
                raise ConfigError(f"{file}: {sum(sizes)} rows, but {MANIFEST_NAME} lists {expected[0]}")
            self._group_starts[file.name] = [0, *itertools.accumulate(sizes)][:-1]
            self._num_rows[file.name] = sum(sizes)
            try:
                ids = table.column("id").to_pylist()
            except UnicodeDecodeError as exc:  # Parquet does not promise valid UTF-8 strings
                raise ConfigError(f"{file}: column 'id' holds text that is not valid UTF-8 ({exc})") from None
            labels = table.column("label").to_pylist() if "label" in columns else [None] * len(ids)
            self._files[file.name] = file
            for row, (record_id, label) in enumerate(zip(ids, labels)):
                where = f"{file.name}#{row}"
                if not isinstance(record_id, str) or not record_id:
                    raise ConfigError(f"{file}: row {row} has no id")
                if record_id in where_of:
                    raise ConfigError(
                        f"{file}: duplicate id {record_id!r} (rows {where_of[record_id]} and {where})"
                    )
                if label is not None and not 0 <= label < len(names):
                    raise ConfigError(
                        f"{file}: row {row} has label {label}, outside the {len(names)} class names"
                    )
                where_of[record_id] = where
                records.append(SourceRecord(id=record_id, label=label, ref=where))
        self._records = sorted(records, key=lambda r: r.id)
        self._cache: tuple[str, int, pa.Table] | None = None  # (file name, row group, rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # do not ship cached rows to workers
        return state

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names or [])

    def records(self) -> list[SourceRecord]:
        return list(self._records)

    def _row(self, ref: str) -> dict[str, Any]:
        name, _, row_text = ref.rpartition("#")
        file = self._files.get(name)
        if file is None or not (row_text.isascii() and row_text.isdigit()):
            raise InputRejected(ref, "no such shard row")
        row = int(row_text)
        starts = self._group_starts[name]
        group = bisect.bisect_right(starts, row) - 1
        if group < 0 or row >= self._num_rows[name]:
            raise InputRejected(ref, "no such shard row")
        if self._cache is None or self._cache[:2] != (name, group):
            try:
                with pq.ParquetFile(_open(file)) as parquet:
                    self._cache = (name, group, parquet.read_row_group(group))
            except (OSError, pa.ArrowException) as exc:
                raise InputRejected(ref, f"cannot read shard row: {exc}") from None
        try:
            return self._cache[2].slice(row - starts[group], 1).to_pylist()[0]
        except UnicodeDecodeError as exc:
            raise InputRejected(ref, f"shard row holds text that is not valid UTF-8 ({exc})") from None

    def load(self, record: SourceRecord) -> Sample:
        ref = record.ref
        row = self._row(ref)
        image = _png_cell(row.get("image"), ref, "image")
        if image is None:
            raise InputRejected(ref, "image has no PNG bytes")
        if image.dtype != np.uint8:
            raise InputRejected(ref, "image is a 16-bit PNG; expected 8-bit gray or RGB")
        height, width = image.shape[:2]
        label = row.get("label")
        names = self.class_names
        if label is not None and not 0 <= label < len(names):
            raise InputRejected(ref, f"label {label} outside the {len(names)} class names")
        label_name = row.get("label_name")
        if label is not None and label_name is not None and label_name != names[label]:
            raise InputRejected(
                ref, f"label_name {label_name!r} disagrees with class {label} {names[label]!r}"
            )
        maps = {}
        for column in ("mask", "instances", "depth"):
            array = _png_cell(row.get(column), ref, column)
            if array is not None:
                if array.ndim == 3:  # an 8-bit gray PNG holding small ids
                    if array.shape[2] != 1:
                        raise InputRejected(
                            ref, f"{column} must be a gray PNG, got {array.shape[2]} channels"
                        )
                    array = array[..., 0].astype(np.uint16)
                if array.shape != (height, width):
                    raise InputRejected(
                        ref,
                        f"{column} size {array.shape[1]}x{array.shape[0]} does not match "
                        f"image {width}x{height} (WxH)",
                    )
            maps[column] = array
        boxes = []
        for box in row.get("boxes") or []:
            values = [box.get(k) if isinstance(box, dict) else None for k in ("x", "y", "w", "h", "label")]
            if any(v is None for v in values):
                raise InputRejected(ref, f"malformed box {box!r}")
            x, y, w, h, box_label = values
            boxes.append(Box(x=float(x), y=float(y), w=float(w), h=float(h), label=int(box_label)))
        return Sample(
            id=record.id,
            image=image,
            label=label,
            mask=maps["mask"],
            boxes=boxes,
            instances=maps["instances"],
            depth=maps["depth"],
            source="real",
            licence=row.get("licence"),  # the row's own terms travel with it (None: not recorded)
        )


def _png_cell(cell: Any, ref: str, column: str) -> np.ndarray | None:
    """Decode a `datasets` Image cell ({bytes, path}); None for a null cell or null bytes."""
    if cell is None:
        return None
    data = cell.get("bytes") if isinstance(cell, dict) else None
    if data is None:
        return None
    try:
        return decode_png(data)
    except ValueError as exc:
        raise InputRejected(ref, f"{column}: {exc}") from None
