"""A FiftyOne dataset as a job's source: classification, segmentation and detection labels.

The dataset is read once when the source is built (sample ids, media paths and the named
label fields); pixels are read from the media files when a record is loaded. Class names,
in order: those `synthaug fiftyone` stored in `dataset.info["synthaug"]`, else the mask
targets of `mask_field` (ids 0..N-1), else `dataset.default_classes`, else the sorted label
names the label fields use. A record's id is the sample's `row_id` (set by `synthaug
fiftyone`, so a round trip keeps the job's ids), else `fiftyone/<sample id>`.

Bad records are recorded skips, as in every source: missing or unreadable media, a mask
whose size differs from its image's or holds ids outside the class list, a colour mask, a
box more than 1 px outside its image (boxes within 1 px are clipped), a label not in the
class list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import ConfigError, InputRejected
from augment.images import (
    DEFAULT_MAX_PIXELS,
    Color,
    check_color,
    decode_png,
    image_file_bound,
    load_image_file,
    read_regular_file,
)
from augment.sample import Box, Sample
from augment.sources.base import ListedRecordsSource, SourceRecord, check_class_name

LABEL_TYPES = {"label_field": "Classification", "mask_field": "Segmentation", "detections_field": "Detections"}


@dataclass(frozen=True)
class _Entry:
    filepath: str
    label: str | None
    mask_path: str | None
    mask: np.ndarray | None  # an inline mask (Segmentation.mask)
    boxes: list[tuple[str, list[float]]]


def _open(dataset: str) -> Any:
    try:
        import fiftyone as fo
    except ImportError:
        raise ConfigError("source.kind fiftyone needs FiftyOne: pip install '.[fiftyone]'") from None
    if not fo.dataset_exists(dataset):
        names = fo.list_datasets()
        raise ConfigError(f"source.dataset: no FiftyOne dataset named {dataset!r} "
                          f"(this database has: {', '.join(names[:20]) or 'none'})")
    return fo.load_dataset(dataset)


def _check_field(dataset: Any, key: str, field: str | None) -> None:
    if field is None:
        return
    schema = dataset.get_field_schema()
    if field not in schema:
        raise ConfigError(f"source.{key}: dataset {dataset.name!r} has no field {field!r} "
                          f"(fields: {', '.join(sorted(schema))})")
    document = getattr(schema[field], "document_type", None)
    if document is None or document.__name__ != LABEL_TYPES[key]:
        raise ConfigError(f"source.{key}: field {field!r} holds {getattr(document, '__name__', type(schema[field]).__name__)}, "
                          f"not {LABEL_TYPES[key]}")


class FiftyOneSource(ListedRecordsSource):
    """Samples of FiftyOne dataset `dataset` with the named label fields."""

    def __init__(self, dataset: str, *, label_field: str | None = None, mask_field: str | None = None,
                 detections_field: str | None = None, color: Color = "rgb",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.color = check_color(color)
        self.max_pixels = max_pixels
        ds = _open(dataset)
        for key, field in (("label_field", label_field), ("mask_field", mask_field),
                           ("detections_field", detections_field)):
            _check_field(ds, key, field)
        ids, paths = ds.values("id"), ds.values("filepath")
        row_ids = ds.values("row_id") if ds.has_field("row_id") else [None] * len(ids)
        labels = ds.values(f"{label_field}.label") if label_field else [None] * len(ids)
        mask_paths = ds.values(f"{mask_field}.mask_path") if mask_field else [None] * len(ids)
        masks = ds.values(f"{mask_field}.mask") if mask_field else [None] * len(ids)
        if detections_field:
            box_labels = ds.values(f"{detections_field}.detections.label")
            box_coords = ds.values(f"{detections_field}.detections.bounding_box")
        else:
            box_labels = box_coords = [None] * len(ids)
        self._class_names = self._names(ds, mask_field, labels, box_labels)
        index = {name: i for i, name in enumerate(self._class_names)}
        self._entries: dict[str, _Entry] = {}
        self._refused = {}
        records = []
        for sample_id, row_id, path, label, mask_path, mask, names, coords in zip(
                ids, row_ids, paths, labels, mask_paths, masks, box_labels, box_coords, strict=True):
            boxes = list(zip(names or [], coords or [], strict=True))
            self._entries[sample_id] = _Entry(path, label, mask_path, mask, boxes)
            records.append(SourceRecord(id=row_id or f"fiftyone/{sample_id}", label=index.get(label), ref=sample_id))
        if len({r.id for r in records}) != len(records):
            raise ConfigError(f"source.dataset {dataset!r}: row_id values repeat; ids must be unique")
        self._records = sorted(records, key=lambda r: r.id)
        self._mask_field = mask_field

    @staticmethod
    def _names(ds: Any, mask_field: str | None, labels: list[Any], box_labels: list[Any]) -> list[str]:
        stored = (ds.info or {}).get("synthaug", {}).get("class_names")
        names: list[str] | None = list(stored) if stored else None
        targets = ds.mask_targets.get(mask_field) if mask_field else None
        if names is None and targets:
            keys = sorted(int(k) for k in targets)
            if keys != list(range(len(keys))):
                raise ConfigError(f"source.mask_field: the mask targets of {mask_field!r} are ids {keys[:12]}, "
                                  "not 0..N-1 (class names are their values in id order)")
            names = [str(targets[k]) for k in keys]
        if names is None and ds.default_classes:
            names = list(ds.default_classes)
        if names is None:
            used = {x for x in labels if x is not None}
            used |= {x for group in box_labels if group for x in group if x is not None}
            names = sorted(used)
        if not names:
            raise ConfigError(f"source.dataset {ds.name!r}: no class names (no mask targets, default classes or labels)")
        return [check_class_name(n, f"source.dataset {ds.name!r}") for n in names]

    def load(self, record: SourceRecord) -> Sample:
        entry = self._entries.get(record.ref)
        if entry is None:
            raise InputRejected(record.id, f"no sample {record.ref} in the dataset")
        path = Path(entry.filepath)
        image = load_image_file(path, root=path.parent, color=self.color, max_pixels=self.max_pixels,
                                name=entry.filepath)
        height, width = image.shape[:2]
        label = None
        if entry.label is not None:
            if entry.label not in self._class_names:
                raise InputRejected(entry.filepath, f"label {entry.label!r} is not one of the class names")
            label = self._class_names.index(entry.label)
        mask = self._mask(entry, height, width)
        boxes = [self._box(entry.filepath, name, coords, width, height) for name, coords in entry.boxes]
        return Sample(id=record.id, image=image, label=label, mask=mask, boxes=boxes, source="real")

    def _mask(self, entry: _Entry, height: int, width: int) -> np.ndarray | None:
        if entry.mask_path is None and entry.mask is None:
            return None
        if entry.mask_path is not None:
            limit, bound = image_file_bound(self.max_pixels)
            data = read_regular_file(Path(entry.mask_path), name=entry.mask_path, max_bytes=limit, bound=bound)
            try:
                plane = decode_png(data)
            except (ValueError, OSError) as exc:
                raise InputRejected(entry.mask_path, f"mask is not a readable PNG ({exc})") from None
        else:
            plane = np.asarray(entry.mask)
        where = entry.mask_path or entry.filepath
        if plane.ndim == 3:
            if plane.shape[2] != 1:
                raise InputRejected(where, f"mask has {plane.shape[2]} channels; class-id masks have one")
            plane = plane[..., 0]
        if plane.shape != (height, width):
            raise InputRejected(where, f"mask is {plane.shape[1]}x{plane.shape[0]} but its image is {width}x{height}")
        if plane.dtype.kind not in "ui":
            raise InputRejected(where, f"mask values are {plane.dtype}, not integer class ids")
        top = int(plane.max(initial=0))
        if top >= len(self._class_names) or int(plane.min(initial=0)) < 0:
            raise InputRejected(where, f"mask holds id {top}, outside the {len(self._class_names)} class names")
        return plane.astype(np.uint16)

    def _box(self, where: str, name: str, coords: list[float], width: int, height: int) -> Box:
        if name not in self._class_names:
            raise InputRejected(where, f"box label {name!r} is not one of the class names")
        x, y, w, h = (float(v) for v in coords)
        x, y, w, h = x * width, y * height, w * width, h * height
        if w <= 0 or h <= 0 or x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
            raise InputRejected(where, f"box {[round(v, 2) for v in (x, y, w, h)]} (pixels) lies more than 1 px "
                                       f"outside the {width}x{height} image or is empty")
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        return Box(x=x0, y=y0, w=x1 - x0, h=y1 - y0, label=self._class_names.index(name))
