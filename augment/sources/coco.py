"""A COCO detection/segmentation dataset: one JSON file plus an images folder.

Class ids: 0 is background, then the categories ordered by category id (1, 2, ...), so
the same ids serve as box labels, image labels and mask values. An image's label is the
class of its largest annotation (by `area`, else bbox area; ties go to the first one).

Annotations of an image are taken in (annotation id, file position) order. Boxes more than
1 px outside the image are refused, within 1 px clipped. Masks are painted larger objects
first so smaller ones stay on top; `instances` numbers the annotations 1, 2, ... in that
order (0 is none). Crowd annotations (`iscrowd`) are kept like any other.

Polygons are rasterised with pycocotools (coordinates first checked to lie within 1 px of
the image); RLE counts are checked (non-negative, summing to height * width) and decoded
here, never by pycocotools' C decoder, which writes without bounds checks.

With `size` (width, height) every image is annotated at its stored size, then all its layers
are cut to the same centred window of that aspect ratio and resized: the image bicubic, the
mask and instances nearest-neighbour (ids stay ids), the boxes cut to the window and scaled
(a box left under a pixel wide or high is dropped). That is how images of mixed sizes share
the one size a fit needs (label-map families learn from COCO masks this way).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from augment.errors import ConfigError, InputRejected, is_valid_unicode
from augment.images import (
    DEFAULT_MAX_PIXELS,
    Color,
    check_color,
    crop_resize,
    crop_resize_boxes,
    crop_resize_ids,
    format_bytes,
    load_image_file,
    read_regular_file,
)
from augment.sample import Box, Sample
from augment.sources.base import ListedRecordsSource, SourceRecord, check_class_name


# The largest COCO-format files in use (LVIS v1 train, 1.1 GB) fit; parsing a bigger JSON
# document needs tens of GB of memory, so such a file is refused before it is read.
MAX_ANNOTATIONS_BYTES = 2 * 2**30


@dataclass(frozen=True)
class _Image:
    entry: dict[str, Any]
    annotations: tuple[dict[str, Any], ...]  # in sorted order


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _area(annotation: dict[str, Any]) -> float:
    area = annotation.get("area")
    if _is_number(area):
        return float(area)
    bbox = annotation.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox):
        return float(bbox[2]) * float(bbox[3])
    return 0.0


def _rle_string_counts(counts: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (port of pycocotools' rleFrString)."""
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    while p < len(raw):
        x, k, more = 0, 0, True
        while more:
            if p >= len(raw):
                raise ValueError("compressed RLE string ends inside a number")
            c = raw[p] - 48
            if not 0 <= c < 64:
                raise ValueError("compressed RLE string has an invalid character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _decode_counts(counts: list[int], height: int, width: int) -> np.ndarray:
    """Binary HxW mask from checked RLE counts (alternating 0/1 runs, column-major).

    Done here rather than with `pycocotools.mask.decode`, whose C decoder trusts the counts
    and which warns under NumPy 2.
    """
    runs = np.arange(len(counts), dtype=np.int64) % 2
    flat = np.repeat(runs.astype(np.uint8), np.asarray(counts, dtype=np.int64))
    return flat.reshape((height, width), order="F")


def _text_size(height: int, width: int) -> str:
    return f"{height}x{width}"


class CocoSource(ListedRecordsSource):
    """COCO JSON `annotations` with image files under `images_root`."""

    def __init__(
        self,
        annotations: Path,
        images_root: Path,
        *,
        color: Color = "rgb",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        with_masks: bool = True,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.annotations_path = Path(annotations)
        self.images_root = Path(images_root)
        where = str(self.annotations_path)
        try:
            self.color = check_color(color)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        self.max_pixels = max_pixels
        self.with_masks = with_masks
        self.size = size  # (width, height): every sample cut to that aspect ratio and resized
        if not self.images_root.is_dir():
            raise ConfigError(f"{self.images_root}: COCO images folder not found (or not a directory)")
        try:
            data = read_regular_file(
                self.annotations_path, name=where, max_bytes=MAX_ANNOTATIONS_BYTES,
                bound=f"the {format_bytes(MAX_ANNOTATIONS_BYTES)} limit for COCO annotation files",
            )
        except InputRejected as exc:
            raise ConfigError(f"{where}: cannot read COCO annotations: {exc.reason}") from None
        try:
            document = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ConfigError(f"{where}: expected a JSON object at the top level")
        for key in ("images", "annotations", "categories"):
            if not isinstance(document.get(key), list):
                raise ConfigError(f"{where}: missing key {key!r} (or it is not a list)")
        self._class_names, self._class_of_category = self._parse_categories(document["categories"], where)
        self._images = self._parse_images(document["images"], document["annotations"], where)
        self._records = sorted(
            (
                SourceRecord(id=f"coco/{ref}", label=self._image_label(image), ref=ref)
                for ref, image in self._images.items()
            ),
            key=lambda r: r.id,
        )

    # ---- parsing (a malformed file is a ConfigError) -------------------------------------

    @staticmethod
    def _parse_categories(categories: list[Any], where: str) -> tuple[list[str], dict[int, int]]:
        by_id: dict[int, str] = {}
        for i, category in enumerate(categories):
            if not (
                isinstance(category, dict)
                and _is_int(category.get("id"))
                and isinstance(category.get("name"), str)
            ):
                raise ConfigError(f"{where}: categories[{i}] needs an integer 'id' and a string 'name'")
            if category["id"] in by_id:
                raise ConfigError(f"{where}: categories[{i}]: duplicate category id {category['id']}")
            by_id[category["id"]] = check_class_name(category["name"], f"{where}: categories[{i}]")
        names = ["background"]
        class_of: dict[int, int] = {}
        for category_id in sorted(by_id):
            name = by_id[category_id]
            if name in names:
                reserved = " ('background' is reserved for class 0)" if name == "background" else ""
                raise ConfigError(f"{where}: duplicate class name {name!r} (category id {category_id}){reserved}")
            class_of[category_id] = len(names)
            names.append(name)
        return names, class_of

    @staticmethod
    def _parse_images(images: list[Any], annotations: list[Any], where: str) -> dict[str, _Image]:
        entries: dict[Any, dict[str, Any]] = {}
        for i, entry in enumerate(images):
            image_id = entry.get("id") if isinstance(entry, dict) else None
            if not (_is_int(image_id) or (isinstance(image_id, str) and image_id)):
                raise ConfigError(f"{where}: images[{i}] needs an integer or string 'id'")
            if isinstance(image_id, str) and not is_valid_unicode(image_id):
                # JSON's "\udcff" escapes decode to lone surrogates: no valid record id.
                raise ConfigError(f"{where}: images[{i}]: id {image_id!r} is not valid Unicode text")
            if image_id in entries:
                raise ConfigError(f"{where}: images[{i}]: duplicate image id {image_id!r}")
            entries[image_id] = entry
        grouped: dict[Any, list[tuple[tuple[int, int, int], dict[str, Any]]]] = {k: [] for k in entries}
        for i, annotation in enumerate(annotations):
            got = annotation.get("image_id") if isinstance(annotation, dict) else None
            if not (_is_int(got) or isinstance(got, str)) or got not in entries:
                raise ConfigError(f"{where}: annotations[{i}]: unknown image id {got!r}")
            ann_id = annotation.get("id")
            key = (0, ann_id, i) if _is_int(ann_id) else (1, i, i)
            grouped[annotation["image_id"]].append((key, annotation))
        out: dict[str, _Image] = {}
        for image_id, entry in entries.items():
            ref = str(image_id)
            if ref in out:
                raise ConfigError(f"{where}: image ids {image_id!r} and {ref!r} collide")
            ordered = tuple(a for _, a in sorted(grouped[image_id], key=lambda t: t[0]))
            out[ref] = _Image(entry=entry, annotations=ordered)
        return out

    def _image_label(self, image: _Image) -> int | None:
        best: tuple[float, int] | None = None
        for annotation in image.annotations:
            category_id = annotation.get("category_id")
            class_id = self._class_of_category.get(category_id) if _is_int(category_id) else None
            if class_id is None:
                continue
            area = _area(annotation)
            if best is None or area > best[0]:
                best = (area, class_id)
        return None if best is None else best[1]

    # ---- Source protocol -------------------------------------------------------------------

    def load(self, record: SourceRecord) -> Sample:
        image_info = self._images.get(record.ref)
        if image_info is None:
            raise InputRejected(record.id, f"no COCO image with id {record.ref}")
        entry = image_info.entry
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise InputRejected(record.id, "image entry has no 'file_name'")
        if not is_valid_unicode(file_name):  # "\udcff" escapes in the JSON text
            raise InputRejected(file_name, "file_name is not valid Unicode text (lone surrogate escapes)")
        pure = PurePosixPath(file_name.replace("\\", "/"))
        windows = PureWindowsPath(file_name)
        if pure.is_absolute() or windows.is_absolute() or windows.drive or ".." in pure.parts:
            raise InputRejected(file_name, "file_name is absolute or escapes images_root")
        image = load_image_file(
            Path(pure),
            root=self.images_root,
            color=self.color,
            max_pixels=self.max_pixels,
            name=file_name,
        )
        height, width = image.shape[:2]
        want_w, want_h = entry.get("width"), entry.get("height")
        if want_w is not None or want_h is not None:
            if (want_w, want_h) != (width, height):
                raise InputRejected(
                    file_name, f"image is {width}x{height} (WxH) but the annotations say {want_w}x{want_h}"
                )
        boxes, class_ids = self._boxes(image_info.annotations, file_name, width, height)
        mask = instances = None
        if self.with_masks:
            mask, instances = self._masks(image_info.annotations, class_ids, file_name, width, height)
        if self.size is not None:  # annotated at the stored size, then all layers cut the same way
            size_w, size_h = self.size
            boxes = crop_resize_boxes(boxes, height, width, size_h, size_w)
            image = crop_resize(image, size_h, size_w)
            if mask is not None:
                mask, instances = crop_resize_ids(mask, size_h, size_w), crop_resize_ids(instances, size_h, size_w)
        return Sample(
            id=record.id,
            image=image,
            label=self._image_label(image_info),
            mask=mask,
            boxes=boxes,
            instances=instances,
            source="real",
        )

    # ---- annotations (a bad annotation rejects its image) ----------------------------------

    def _boxes(
        self, annotations: tuple[dict[str, Any], ...], name: str, width: int, height: int
    ) -> tuple[list[Box], list[int]]:
        boxes: list[Box] = []
        class_ids: list[int] = []
        for k, annotation in enumerate(annotations):
            category_id = annotation.get("category_id")
            class_id = self._class_of_category.get(category_id) if _is_int(category_id) else None
            if class_id is None:
                raise InputRejected(name, f"unknown category id {category_id}")
            bbox = annotation.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise InputRejected(name, f"annotation {k + 1}: missing or malformed bbox {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                raise InputRejected(name, f"degenerate bbox {bbox} (width and height must be > 0)")
            if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
                raise InputRejected(
                    name, f"bbox {bbox} lies more than 1 px outside the {width}x{height} image"
                )
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, float(width)), min(y + h, float(height))
            if x1 <= x0 or y1 <= y0:
                raise InputRejected(name, f"degenerate bbox {bbox} after clipping to the image")
            boxes.append(Box(x=x0, y=y0, w=x1 - x0, h=y1 - y0, label=class_id))
            class_ids.append(class_id)
        return boxes, class_ids

    def _masks(
        self,
        annotations: tuple[dict[str, Any], ...],
        class_ids: list[int],
        name: str,
        width: int,
        height: int,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        decoded: list[tuple[int, np.ndarray]] = []  # (annotation index, binary mask)
        for k, annotation in enumerate(annotations):
            segmentation = annotation.get("segmentation")
            if segmentation is None or segmentation == [] or segmentation == {}:
                continue
            decoded.append((k, self._decode_segmentation(segmentation, k, name, width, height)))
        if not decoded:
            return None, None
        if len(annotations) > np.iinfo(np.uint16).max:
            raise InputRejected(name, f"{len(annotations)} annotations do not fit uint16 instance ids")
        mask = np.zeros((height, width), dtype=np.uint16)
        instances = np.zeros((height, width), dtype=np.uint16)
        # Larger first, so smaller objects stay on top; ties keep annotation order.
        for k, binary in sorted(decoded, key=lambda t: -int(t[1].sum())):
            on = binary.astype(bool)
            mask[on] = class_ids[k]
            instances[on] = k + 1
        return mask, instances

    @staticmethod
    def _decode_segmentation(segmentation: Any, k: int, name: str, width: int, height: int) -> np.ndarray:
        what = f"annotation {k + 1}"
        if isinstance(segmentation, list):
            for polygon in segmentation:
                if not (
                    isinstance(polygon, list)
                    and len(polygon) >= 6
                    and len(polygon) % 2 == 0
                    and all(_is_number(v) for v in polygon)
                ):
                    raise InputRejected(name, f"{what}: malformed polygon (need >= 3 x,y points)")
                xs, ys = polygon[0::2], polygon[1::2]
                if min(xs) < -1 or min(ys) < -1 or max(xs) > width + 1 or max(ys) > height + 1:
                    raise InputRejected(name, f"{what}: polygon lies more than 1 px outside the image")
            merged = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            return _decode_counts(_rle_string_counts(merged["counts"]), height, width)
        if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            size = segmentation["size"]
            if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
                raise InputRejected(name, f"{what}: malformed RLE size {size!r}")
            if tuple(size) != (height, width):
                raise InputRejected(
                    name,
                    f"mask size {_text_size(*size)} does not match image {_text_size(height, width)} "
                    "(height x width)",
                )
            counts = segmentation["counts"]
            try:
                if isinstance(counts, list):
                    if not all(_is_int(c) for c in counts):
                        raise ValueError("RLE counts must be integers")
                    values = counts
                elif isinstance(counts, (str, bytes)):
                    values = _rle_string_counts(counts)
                else:
                    raise ValueError(f"RLE counts of type {type(counts).__name__}")
            except ValueError as exc:
                raise InputRejected(name, f"{what}: malformed RLE: {exc}") from None
            if any(c < 0 for c in values) or sum(values) != height * width:
                raise InputRejected(
                    name, f"{what}: malformed RLE: counts must be >= 0 and sum to {height * width}"
                )
            return _decode_counts(values, height, width)
        raise InputRejected(name, f"{what}: unsupported segmentation (expected polygons or RLE)")
