"""Parquet shards, schema version 1 (../shared/DESIGN.md, "Shard"), and their manifest.

A shard is a plain Parquet file: any reader (pyarrow, pandas, DuckDB, Ray Data, Hugging
Face `datasets`) reads it without this package. Images and label maps are PNG bytes in the
`datasets` Image layout (struct of `bytes` and a string `path`, always null here); the
file's key-value metadata holds the class names and schema version (`synthaug`), the
`datasets` features (`huggingface`), so `datasets` decodes images and class names, and the
`pandas` metadata, so pandas reads the nullable `seed` and `label` as exact `Int64`, not float64.

Shards are published atomically (temporary name, fsync, rename) and byte-deterministic for
the same rows. The manifest `_manifest.json`, written last, is the only truth of what
exists; `verify_shards` checks files against it.

Numeric note: box coordinates and scores are stored as float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from augment.failpoints import failpoint
from augment.images import decode_png, encode_png
from augment.sample import Box, GeneratorInfo, Sample, Scores
from augment.store import Folder, buffer_bytes

SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"
MAX_MANIFEST_BYTES = 256 * 2**20  # ~200 bytes per shard: over a million shards
ROW_GROUP_ROWS = 64
"""Fixed so identical tables give identical bytes; small so readers can fetch rows lazily."""
PARQUET_COMPRESSION = "zstd"
_PNG_COLUMNS = ("image", "mask", "instances", "depth")
# Statistics (for readers' row-group filters) only on small columns, not on PNG bytes.
_STATISTICS_COLUMNS = ["id", "height", "width", "label", "label_name", "source", "seed", "parent_id", "licence",
                       "parent_licence"]
_DICTIONARY_COLUMNS = ["label_name", "source", "licence", "parent_licence"]
# `licence` and `parent_licence` (augment.licences) came after the first shards: they are the last
# columns, and readers take a shard without them as one whose rows recorded no licence.
LICENCE_COLUMNS = ("licence", "parent_licence")


# ---------------------------------------------------------------- schema

_PNG = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_BOX = pa.struct([("x", pa.float32()), ("y", pa.float32()), ("w", pa.float32()), ("h", pa.float32()),
                  ("label", pa.int64())])
_GENERATOR = pa.struct([("name", pa.string()), ("checkpoint_sha256", pa.string()), ("params_json", pa.string())])
# label_preservation and label_consistency were added after the first shards were written: readers
# take a missing field as null.
SCORE_NAMES = ("realism", "confidence", "label_preservation", "label_consistency")
_SCORES = pa.struct([(name, pa.float32()) for name in SCORE_NAMES])


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


def _hf_features(class_names: list[str]) -> dict[str, Any]:
    """`datasets` features; a JSON list means 'list of' in every `datasets` version."""
    return {
        "id": _value("string"),
        "image": {"_type": "Image"},
        "height": _value("int32"),
        "width": _value("int32"),
        "label": {"names": list(class_names), "_type": "ClassLabel"},
        "label_name": _value("string"),
        "mask": {"_type": "Image"},
        "instances": {"_type": "Image"},
        "depth": {"_type": "Image"},
        "boxes": [{k: _value(t) for k, t in (("x", "float32"), ("y", "float32"), ("w", "float32"),
                                              ("h", "float32"), ("label", "int64"))}],
        "source": _value("string"),
        "generator": {k: _value("string") for k in ("name", "checkpoint_sha256", "params_json")},
        "seed": _value("int64"),
        "parent_id": _value("string"),
        "scores": {k: _value("float32") for k in SCORE_NAMES},
        "licence": _value("string"),
        "parent_licence": _value("string"),
    }


# Columns pandas should read as its nullable `Int64`: real rows have no seed and unlabelled rows
# no label, and without this pandas turns an int64 column with nulls into float64, which rounds
# seeds above 2**53 (most of them: seeds are uniform 63-bit). height and width are never null.
_PANDAS_NULLABLE_INT = ("label", "seed")


def _pandas_logical_type(arrow_type: pa.DataType) -> str:
    """The `pandas_type` pyarrow would record for a column (pyarrow.pandas_compat.get_logical_type)."""
    if pa.types.is_string(arrow_type):
        return "unicode"
    if pa.types.is_integer(arrow_type):
        return str(arrow_type)
    if pa.types.is_list(arrow_type):
        return f"list[{_pandas_logical_type(arrow_type.value_type)}]"
    return "object"


def _pandas_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The `pandas` metadata key: no index, and `numpy_type` Int64 for the nullable integer columns.

    pyarrow's to_pandas (so pd.read_parquet, and readers built on it) reads `numpy_type` and
    builds those columns as `Int64`, keeping every seed exact and nulls as <NA>. Written here
    rather than by pa.Schema.from_pandas so the bytes do not depend on the installed pandas or
    pyarrow version (from_pandas records both).
    """
    columns = []
    for f in schema:
        if f.name in _PANDAS_NULLABLE_INT:
            numpy_type = "Int64"
        elif pa.types.is_integer(f.type):
            numpy_type = str(f.type)
        else:
            numpy_type = "object"
        columns.append({"name": f.name, "field_name": f.name, "pandas_type": _pandas_logical_type(f.type),
                        "numpy_type": numpy_type, "metadata": None})
    return {"index_columns": [], "column_indexes": [], "columns": columns, "attributes": {},
            "creator": {"library": "synthaug", "version": f"shard schema {SCHEMA_VERSION}"}}


def _check_class_names(class_names: list[str]) -> list[str]:
    if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {class_names!r}")
    return list(class_names)


def shard_schema(class_names: list[str]) -> pa.Schema:
    """The Arrow schema of a version-1 shard, with class names in its metadata.

    Every field is nullable at the Arrow level: `datasets` does not take a non-null
    `image` struct as an Image. Required values (id, image, ...) are enforced on write.
    """
    class_names = _check_class_names(class_names)
    schema = pa.schema([
        pa.field("id", pa.string()),
        pa.field("image", _PNG),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("label", pa.int64()),
        pa.field("label_name", pa.string()),
        pa.field("mask", _PNG),
        pa.field("instances", _PNG),
        pa.field("depth", _PNG),
        pa.field("boxes", pa.list_(_BOX)),
        pa.field("source", pa.string()),
        pa.field("generator", _GENERATOR),
        pa.field("seed", pa.int64()),
        pa.field("parent_id", pa.string()),
        pa.field("scores", _SCORES),
        pa.field("licence", pa.string()),
        pa.field("parent_licence", pa.string()),
    ])
    meta = {
        b"synthaug": json.dumps({"schema_version": SCHEMA_VERSION, "class_names": class_names}),
        b"huggingface": json.dumps({"info": {"features": _hf_features(class_names)}}),
        b"pandas": json.dumps(_pandas_metadata(schema)),
    }
    return schema.with_metadata(meta)


def shard_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The `synthaug` metadata of a shard schema: schema_version and class_names."""
    raw = (schema.metadata or {}).get(b"synthaug")
    if raw is None:
        raise ValueError("not a synthaug shard: no 'synthaug' key in the Parquet metadata")
    meta = json.loads(raw)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"shard schema_version {meta.get('schema_version')!r} is not supported "
                         f"(this package reads {SCHEMA_VERSION})")
    return meta


# ---------------------------------------------------------------- samples <-> table

def _png_cell(array: np.ndarray | None, level: int) -> dict[str, Any] | None:
    return None if array is None else {"bytes": encode_png(array, level), "path": None}


def samples_to_table(samples: Sequence[Sample], class_names: list[str], *,
                     png_compress_level: int = 1) -> pa.Table:
    """Rows of a shard: PNG-encode pixels, name labels, flatten meta. Order is kept."""
    schema = shard_schema(class_names)
    if not 0 <= png_compress_level <= 9:
        raise ValueError(f"png_compress_level must be in 0..9, got {png_compress_level!r}")
    rows = []
    for s in samples:
        if s.label is not None and not 0 <= s.label < len(class_names):
            raise ValueError(f"sample {s.id!r}: label {s.label!r} is not an index into "
                             f"{len(class_names)} class names")
        if not (isinstance(s.source, str) and s.source.replace("_", "").isalnum()):
            raise ValueError(f"sample {s.id!r}: source {s.source!r} is not a family name (real, classical, "
                             "simulator or a generator family's name)")
        if s.image.ndim != 3 or s.image.dtype != np.uint8 or s.image.shape[2] not in (1, 3):
            raise ValueError(f"sample {s.id!r}: image must be uint8 HxWx1 or HxWx3, "
                             f"got {s.image.dtype} {s.image.shape}")
        for key in _PNG_COLUMNS[1:]:
            plane = getattr(s, key)
            if plane is not None and (plane.dtype != np.uint16 or plane.shape != s.image.shape[:2]):
                raise ValueError(f"sample {s.id!r}: {key} must be uint16 of shape {s.image.shape[:2]}, "
                                 f"got {plane.dtype} {plane.shape}")
        for key in LICENCE_COLUMNS:
            if getattr(s, key) is not None and not isinstance(getattr(s, key), str):
                raise ValueError(f"sample {s.id!r}: {key} must be a string or None, got {getattr(s, key)!r}")
        g, sc = s.generator, s.scores
        rows.append({
            "id": s.id,
            "image": _png_cell(s.image, png_compress_level),
            "height": s.height,
            "width": s.width,
            "label": s.label,
            "label_name": None if s.label is None else class_names[s.label],
            "mask": _png_cell(s.mask, png_compress_level),
            "instances": _png_cell(s.instances, png_compress_level),
            "depth": _png_cell(s.depth, png_compress_level),
            "boxes": [asdict(b) for b in s.boxes],
            "source": s.source,
            "generator": None if g is None else asdict(g),
            "seed": s.seed,
            "parent_id": s.parent_id,
            "scores": None if sc is None else asdict(sc),
            "licence": s.licence,
            "parent_licence": s.parent_licence,
        })
    return pa.Table.from_pylist(rows, schema=schema)


def _decode_plane(data: bytes) -> np.ndarray:
    """A mask/instances/depth PNG as uint16 HxW (8-bit planes are widened)."""
    plane = decode_png(data)
    return plane[..., 0].astype(np.uint16) if plane.ndim == 3 else plane


def table_to_samples(table: pa.Table) -> list[Sample]:
    """Decode shard rows back into Samples (floats come back as their float32 values)."""
    samples = []
    for row in table.to_pylist():
        image = decode_png(row["image"]["bytes"])
        png = {k: None if row[k] is None else _decode_plane(row[k]["bytes"]) for k in _PNG_COLUMNS[1:]}
        samples.append(Sample(
            id=row["id"],
            image=image,
            label=row["label"],
            mask=png["mask"],
            boxes=[Box(**b) for b in row["boxes"] or []],
            instances=png["instances"],
            depth=png["depth"],
            source=row["source"],
            generator=None if row["generator"] is None else GeneratorInfo(**row["generator"]),
            seed=row["seed"],
            parent_id=row["parent_id"],
            scores=None if row["scores"] is None else Scores(**row["scores"]),  # old shards: fewer fields
            licence=row.get("licence"),  # shards from before licences were recorded have no such column
            parent_licence=row.get("parent_licence"),
        ))
    return samples


# ---------------------------------------------------------------- writing

@dataclass(frozen=True)
class ShardEntry:
    """One published shard as the manifest lists it. Unlabelled rows are in `rows` only."""

    file: str
    rows: int
    sha256: str
    class_counts: dict[str, int] = field(default_factory=dict)
    source_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "sha256": self.sha256,
                "class_counts": dict(sorted(self.class_counts.items())),
                "source_counts": dict(sorted(self.source_counts.items()))}


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB pieces (shards, model files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Any], None], point: str | None = None) -> None:
    """Write via `write(file)` to a hidden temporary sibling, fsync, then rename into place
    (`point`: the failpoint between the two, see augment.failpoints)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if point:
            failpoint(point)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_shard(table: pa.Table, path: Path) -> ShardEntry:
    """Publish `table` at `path` atomically; same table → same bytes. Returns its entry."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise ValueError(f"shard path must end in .parquet, got {str(path)!r}")
    shard_metadata(table.schema)  # refuse tables that are not version-1 shards
    # pandas' reading of the nullable integers, also for tables that did not come from shard_schema
    metadata = {**table.schema.metadata, b"pandas": json.dumps(_pandas_metadata(table.schema)).encode()}
    table = table.replace_schema_metadata(metadata)

    def write(f: Any) -> None:
        pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS, compression=PARQUET_COMPRESSION,
                       use_dictionary=_DICTIONARY_COLUMNS, write_statistics=_STATISTICS_COLUMNS)

    _atomic_write(path, write, point="shard_written")
    return _entry(path.name, table, file_sha256(path))


def _entry(file: str, table: pa.Table, sha256: str) -> ShardEntry:
    label_names = [n for n in table.column("label_name").to_pylist() if n is not None]
    return ShardEntry(
        file=file,
        rows=table.num_rows,
        sha256=sha256,
        class_counts=dict(sorted(Counter(label_names).items())),
        source_counts=dict(sorted(Counter(table.column("source").to_pylist()).items())),
    )


def _table_bytes(table: pa.Table) -> bytes:
    """The shard file's bytes, as write_shard writes them."""
    return buffer_bytes(lambda sink: pq.write_table(
        table, sink, row_group_size=ROW_GROUP_ROWS, compression=PARQUET_COMPRESSION,
        use_dictionary=_DICTIONARY_COLUMNS, write_statistics=_STATISTICS_COLUMNS))


# ---------------------------------------------------------------- object stores: one name per attempt

_ATTEMPT = re.compile(r"^(?P<stem>.+)\.(?P<attempt>[0-9a-f]{12})\.parquet$")


def attempt_name(planned: str) -> str:
    """`train-00003.parquet` -> `train-00003.<12 hex>.parquet`: on a store every attempt writes
    its own object, so a late retry or a zombie worker can never replace bytes a manifest lists."""
    return f"{planned.removesuffix('.parquet')}.{uuid.uuid4().hex[:12]}.parquet"


def planned_name(file: str) -> str:
    """The planned shard name an attempt's object stands for (a plain local name is its own)."""
    match = _ATTEMPT.match(file)
    return f"{match['stem']}.parquet" if match else file


def publish_shard(table: pa.Table, folder: Folder, name: str) -> ShardEntry:
    """`write_shard` into a shard folder; on a store, under a fresh attempt name that only a
    manifest makes visible to readers."""
    if not folder.remote:
        return write_shard(table, Path(folder.path) / name)
    shard_metadata(table.schema)
    metadata = {**table.schema.metadata, b"pandas": json.dumps(_pandas_metadata(table.schema)).encode()}
    table = table.replace_schema_metadata(metadata)
    data = _table_bytes(table)
    file = attempt_name(name)
    folder.write_bytes(file, data, point="shard_written")
    return _entry(file, table, hashlib.sha256(data).hexdigest())


def published_files(folder: Folder) -> dict[str, str]:
    """{planned name: file holding it} of the shards in a folder (on a store, the first attempt
    by name; every attempt of a shard holds the same rows)."""
    found: dict[str, str] = {}
    for file in folder.names():
        if file.endswith(".parquet") and not file.startswith("."):
            found.setdefault(planned_name(file), file)
    return found


def shard_entry_in(folder: Folder, file: str) -> ShardEntry:
    """The manifest entry of a published shard file of `folder`."""
    try:
        schema = pq.read_schema(folder.open(file))
        shard_metadata(schema)
        table = pq.read_table(folder.open(file), columns=["label_name", "source"])
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{folder.show(file)}: unreadable as a shard ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{folder.show(file)}: {exc}") from None
    return _entry(file, table, folder.sha256(file))


def shard_entry_from_file(path: Path) -> ShardEntry:
    """The manifest entry of an already published local shard (e.g. when a job resumes)."""
    path = Path(path)
    return shard_entry_in(Folder(path.parent), path.name)


# ---------------------------------------------------------------- manifest

@dataclass(frozen=True)
class Manifest:
    """What a shard folder holds; the manifest file is the only truth of that."""

    schema_version: int
    class_names: list[str]
    total_rows: int
    class_counts: dict[str, int]
    source_counts: dict[str, int]
    shards: list[ShardEntry]
    extra: dict[str, Any] = field(default_factory=dict)


def _folder(shard_dir: Path | str | Folder) -> Folder:
    return shard_dir if isinstance(shard_dir, Folder) else Folder(shard_dir)


def write_manifest(shard_dir: Path | str | Folder, entries: list[ShardEntry], class_names: list[str],
                   extra: dict | None = None) -> str:
    """Write `_manifest.json` atomically (last step of a job): totals plus the shard list."""
    folder = _folder(shard_dir)
    class_names = _check_class_names(class_names)
    files = [e.file for e in entries]
    if len(set(files)) != len(files):
        raise ValueError(f"manifest entries name a file twice: {sorted(files)}")
    classes: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for e in entries:
        classes.update(e.class_counts)
        sources.update(e.source_counts)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "class_names": class_names,
        "total_rows": sum(e.rows for e in entries),
        "class_counts": dict(sorted(classes.items())),
        "source_counts": dict(sorted(sources.items())),
        "shards": [e.to_dict() for e in sorted(entries, key=lambda e: e.file)],
        "extra": extra or {},
    }
    data = (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()
    folder.write_bytes(MANIFEST_NAME, data)
    return folder.show(MANIFEST_NAME)


def _entry_from_dict(raw: Any, where: str) -> ShardEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {raw!r}")
    try:
        entry = ShardEntry(file=raw["file"], rows=int(raw["rows"]), sha256=str(raw["sha256"]),
                           class_counts=dict(raw.get("class_counts", {})),
                           source_counts=dict(raw.get("source_counts", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: malformed entry ({exc!r})") from None
    if not isinstance(entry.file, str) or Path(entry.file).name != entry.file or entry.file.startswith("."):
        raise ValueError(f"{where}: file {entry.file!r} must be a plain file name in the shard folder")
    return entry


def read_manifest(shard_dir: Path | str | Folder) -> Manifest:
    """Read and check `_manifest.json`; FileNotFoundError or ValueError naming the file."""
    folder = _folder(shard_dir)
    path = folder.show(MANIFEST_NAME)
    if not folder.exists(MANIFEST_NAME):
        raise FileNotFoundError(f"{path}: no shard manifest (was the job finished?)")
    try:
        doc = json.loads(folder.read_bytes(MANIFEST_NAME, limit=MAX_MANIFEST_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {doc.get('schema_version')!r} is not supported "
                         f"(expected {SCHEMA_VERSION})")
    try:
        shards = [_entry_from_dict(e, f"{path}: shards[{i}]") for i, e in enumerate(doc["shards"])]
        return Manifest(
            schema_version=SCHEMA_VERSION,
            class_names=_check_class_names(doc["class_names"]),
            total_rows=int(doc["total_rows"]),
            class_counts=dict(doc.get("class_counts", {})),
            source_counts=dict(doc.get("source_counts", {})),
            shards=shards,
            extra=dict(doc.get("extra") or {}),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed manifest ({exc!r})") from None


def verify_shards(shard_dir: Path | str | Folder) -> list[str]:
    """Check every listed shard (exists, sha256, rows); an empty list means all good."""
    folder = _folder(shard_dir)
    manifest = read_manifest(folder)
    present = set(folder.names())
    problems = []
    for entry in manifest.shards:
        if entry.file not in present:
            problems.append(f"{entry.file}: missing")
            continue
        digest = folder.sha256(entry.file)
        if digest != entry.sha256:
            problems.append(f"{entry.file}: sha256 {digest} does not match the manifest's {entry.sha256}")
        try:
            rows = pq.ParquetFile(folder.open(entry.file)).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"{entry.file}: unreadable as Parquet ({exc})")
            continue
        if rows != entry.rows:
            problems.append(f"{entry.file}: {rows} rows, the manifest says {entry.rows}")
    listed = {e.file for e in manifest.shards}
    for name in sorted(present):
        if name.endswith(".parquet") and not name.startswith(".") and name not in listed:
            problems.append(f"{name}: not in manifest (ignored by readers)")
    return problems
