"""augment.sources: digits, image folder, COCO and Parquet shards (files built in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from augment.errors import ConfigError, InputRejected
from augment.images import encode_png
from augment.sample import Box
from augment.sources import CocoSource, DigitsSource, ImageFolderSource, ParquetSource, SourceRecord


def _png(path: Path, size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (10, 20, 30)) -> Path:
    """Write a solid RGB PNG of `size` (width, height) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


# ---------------------------------------------------------------- digits


def test_digits_source_counts_and_shape() -> None:
    source = DigitsSource(image_size=32)
    records = source.records()
    assert len(records) == 1797
    assert source.class_names == [str(d) for d in range(10)]
    assert records[0] == SourceRecord(id="digits/0000", label=records[0].label, ref="0")
    assert records[-1].id == "digits/1796"
    assert [r.id for r in records] == sorted(r.id for r in records)
    assert {r.label for r in records} == set(range(10))
    sample = source.load(records[5])
    assert sample.id == "digits/0005" and sample.label == records[5].label
    assert sample.image.shape == (32, 32, 3) and sample.image.dtype == np.uint8
    assert sample.image.max() > 200  # scaled from 0..16 to 0..255
    assert np.array_equal(sample.image[..., 0], sample.image[..., 2])


def test_digits_gray_and_size() -> None:
    sample = DigitsSource(image_size=8, color="gray").load(SourceRecord("digits/0000", 0, "0"))
    assert sample.image.shape == (8, 8, 1)
    from sklearn.datasets import load_digits

    expected = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(sample.image[..., 0], expected)


def test_digits_bad_config() -> None:
    with pytest.raises(ConfigError, match="image_size"):
        DigitsSource(image_size=0)
    with pytest.raises(ConfigError, match="color"):
        DigitsSource(color="cmyk")  # type: ignore[arg-type]


# ---------------------------------------------------------------- image folder


def test_folder_source_lists_and_loads(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "001.png", (5, 4))
    _png(tmp_path / "cat" / "sub" / "002.PNG", (6, 6))
    _png(tmp_path / "dog" / "a.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    _png(tmp_path / "dog" / ".hidden.png")
    _png(tmp_path / ".cache" / "x.png")
    source = ImageFolderSource(tmp_path)
    assert source.class_names == ["cat", "dog"]
    assert [(r.id, r.label) for r in source.records()] == [
        ("cat/001.png", 0),
        ("cat/sub/002.PNG", 0),
        ("dog/a.png", 1),
    ]
    sample = source.load(source.records()[0])
    assert sample.image.shape == (4, 5, 3) and sample.label == 0 and sample.id == "cat/001.png"
    resized = ImageFolderSource(tmp_path, image_size=8, color="gray").load(source.records()[0])
    assert resized.image.shape == (8, 8, 1)


def test_folder_unsafe_class_name_is_config_error(tmp_path: Path) -> None:
    _png(tmp_path / "ok" / "1.png")
    _png(tmp_path / "bad|name" / "1.png")
    with pytest.raises(ConfigError) as excinfo:
        ImageFolderSource(tmp_path)
    assert str(tmp_path / "bad|name") in str(excinfo.value)


def test_folder_empty_class_is_config_error(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError) as excinfo:
        ImageFolderSource(tmp_path)
    assert str(tmp_path / "dog") in str(excinfo.value)
    assert "no image files" in str(excinfo.value)


def test_folder_missing_root_and_no_classes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class folders"):
        ImageFolderSource(tmp_path / "empty")


def test_folder_symlink_escaping_root_is_rejected_on_load(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _png(root / "cat" / "1.png")
    secret = _png(tmp_path / "secret.png")
    (root / "cat" / "2.png").symlink_to(secret)
    source = ImageFolderSource(root)
    record = next(r for r in source.records() if r.id == "cat/2.png")
    with pytest.raises(InputRejected) as excinfo:
        source.load(record)
    assert excinfo.value.path == "cat/2.png" and "escapes" in excinfo.value.reason


def test_folder_corrupt_file_is_rejected_on_load(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "1.png")
    (tmp_path / "cat" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    source = ImageFolderSource(tmp_path)
    with pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[1])
    assert excinfo.value.path == "cat/2.png"


# ---------------------------------------------------------------- COCO

CATEGORIES = [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}]  # class ids: cat 1, dog 2


def _coco(
    tmp_path: Path,
    annotations: list[dict[str, Any]],
    *,
    images: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> CocoSource:
    """Write a COCO file with one 32x32 image `img.png` (id 1) unless `images` is given."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    if images is None:
        _png(root / "img.png")
        images = [{"id": 1, "file_name": "img.png", "width": 32, "height": 32}]
    document = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(document))
    return CocoSource(path, root, **kwargs)


def _ann(ann_id: int, bbox: list[float], category_id: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": ann_id, "image_id": 1, "category_id": category_id, "bbox": bbox, **extra}


def test_coco_records_labels_and_class_names(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png"):
        _png(root / name)
    images = [
        {"id": 10, "file_name": "a.png", "width": 32, "height": 32},
        {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
        {"id": 3, "file_name": "c.png", "width": 32, "height": 32},
    ]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9},
    ]
    source = _coco(tmp_path, annotations, images=images)
    assert source.class_names == ["background", "cat", "dog"]
    records = source.records()
    assert [r.id for r in records] == sorted(r.id for r in records)
    by_id = {r.id: r for r in records}
    assert by_id["coco/10"].label == 2  # largest annotation is the dog
    assert by_id["coco/2"].label == 1
    assert by_id["coco/3"].label is None
    assert by_id["coco/10"].ref == "10"
    sample = source.load(by_id["coco/10"])
    assert sample.boxes == [Box(0, 0, 4, 4, 1), Box(0, 0, 10, 10, 2)]
    assert sample.mask is None and sample.instances is None  # no segmentation info
    assert source.load(by_id["coco/3"]).boxes == []


def test_coco_file_name_escaping_root_is_rejected(tmp_path: Path) -> None:
    _png(tmp_path / "x.png")
    source = _coco(tmp_path, [], images=[{"id": 1, "file_name": "../x.png", "width": 32, "height": 32}])
    with pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[0])
    assert excinfo.value.path == "../x.png" and "escapes" in excinfo.value.reason


def test_coco_absolute_file_name_is_rejected(tmp_path: Path) -> None:
    absolute = str(_png(tmp_path / "abs.png"))
    source = _coco(tmp_path, [], images=[{"id": 1, "file_name": absolute, "width": 32, "height": 32}])
    with pytest.raises(InputRejected, match="absolute"):
        source.load(source.records()[0])


def test_coco_missing_file_is_rejected(tmp_path: Path) -> None:
    source = _coco(tmp_path, [], images=[{"id": 1, "file_name": "gone.png", "width": 32, "height": 32}])
    with pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[0])
    assert excinfo.value.path == "gone.png" and excinfo.value.reason == "file not found"


def test_coco_image_size_mismatch_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _png(root / "img.png", (30, 32))
    source = _coco(tmp_path, [], images=[{"id": 1, "file_name": "img.png", "width": 32, "height": 32}])
    with pytest.raises(InputRejected, match="30x32"):
        source.load(source.records()[0])


def test_coco_unknown_category_is_rejected(tmp_path: Path) -> None:
    source = _coco(tmp_path, [_ann(1, [0, 0, 4, 4], category_id=7)])
    assert source.records()[0].label is None
    with pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[0])
    assert excinfo.value.reason == "unknown category id 7"


def test_coco_bbox_out_of_bounds_is_rejected(tmp_path: Path) -> None:
    source = _coco(tmp_path, [_ann(1, [30, 0, 10, 10])])
    with pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[0])
    assert "[30, 0, 10, 10]" in excinfo.value.reason and "outside" in excinfo.value.reason


def test_coco_bbox_within_one_pixel_is_clipped(tmp_path: Path) -> None:
    source = _coco(tmp_path, [_ann(1, [-0.5, 2, 10, 30.5])])
    sample = source.load(source.records()[0])
    assert sample.boxes == [Box(x=0.0, y=2.0, w=9.5, h=30.0, label=1)]


def test_coco_degenerate_bbox_is_rejected(tmp_path: Path) -> None:
    source = _coco(tmp_path, [_ann(1, [3, 3, 0, 5])])
    with pytest.raises(InputRejected, match="degenerate"):
        source.load(source.records()[0])


def test_coco_polygon_rasterisation(tmp_path: Path) -> None:
    square = [4, 4, 12, 4, 12, 12, 4, 12]
    source = _coco(tmp_path, [_ann(1, [4, 4, 8, 8], category_id=3, segmentation=[square])])
    sample = source.load(source.records()[0])
    assert sample.mask is not None and sample.mask.dtype == np.uint16 and sample.mask.shape == (32, 32)
    assert np.all(sample.mask[5:11, 5:11] == 2)  # dog is class 2
    outside = np.ones((32, 32), dtype=bool)
    outside[3:13, 3:13] = False
    assert np.all(sample.mask[outside] == 0)
    assert sample.instances is not None and np.all(sample.instances[5:11, 5:11] == 1)
    assert set(np.unique(sample.mask)) == {0, 2}


def test_coco_smaller_object_painted_on_top(tmp_path: Path) -> None:
    big = [0, 0, 20, 0, 20, 20, 0, 20]
    small = [5, 5, 10, 5, 10, 10, 5, 10]
    # The small one comes first in annotation order; it must still end up on top.
    source = _coco(
        tmp_path,
        [
            _ann(1, [5, 5, 5, 5], category_id=1, segmentation=[small]),
            _ann(2, [0, 0, 20, 20], category_id=3, segmentation=[big]),
        ],
    )
    sample = source.load(source.records()[0])
    assert sample.mask[7, 7] == 1 and sample.mask[15, 15] == 2
    assert sample.instances[7, 7] == 1 and sample.instances[15, 15] == 2


def test_coco_compressed_and_uncompressed_rle(tmp_path: Path) -> None:
    binary = np.zeros((32, 32), dtype=np.uint8)
    binary[2:9, 20:30] = 1
    rle = mask_utils.encode(np.asfortranarray(binary))
    compressed = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    column_major = binary.flatten(order="F")
    runs, value, count = [], 0, 0
    for pixel in column_major:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    uncompressed = {"size": [32, 32], "counts": runs}
    for segmentation in (compressed, uncompressed):
        source = _coco(tmp_path, [_ann(1, [20, 2, 10, 7], category_id=1, segmentation=segmentation)])
        sample = source.load(source.records()[0])
        np.testing.assert_array_equal(sample.mask, binary.astype(np.uint16))


def test_coco_rle_size_mismatch_is_rejected(tmp_path: Path) -> None:
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 12), dtype=np.uint8)))
    segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    source = _coco(tmp_path, [_ann(1, [0, 0, 4, 4], segmentation=segmentation)])
    with pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[0])
    assert "mask size 10x12 does not match image 32x32" in excinfo.value.reason


def test_coco_rle_counts_not_covering_the_image_are_rejected(tmp_path: Path) -> None:
    # pycocotools would write past its buffer for counts summing beyond height * width.
    segmentation = {"size": [32, 32], "counts": [0, 5000]}
    source = _coco(tmp_path, [_ann(1, [0, 0, 4, 4], segmentation=segmentation)])
    with pytest.raises(InputRejected, match="malformed RLE"):
        source.load(source.records()[0])


def test_coco_with_masks_false_skips_masks(tmp_path: Path) -> None:
    square = [4, 4, 12, 4, 12, 12, 4, 12]
    source = _coco(tmp_path, [_ann(1, [4, 4, 8, 8], segmentation=[square])], with_masks=False)
    sample = source.load(source.records()[0])
    assert sample.mask is None and len(sample.boxes) == 1


def test_coco_bad_json_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    path = tmp_path / "coco.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError) as excinfo:
        CocoSource(path, tmp_path / "images")
    assert str(path) in str(excinfo.value) and "JSON" in str(excinfo.value)


def test_coco_missing_key_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ConfigError) as excinfo:
        CocoSource(path, tmp_path / "images")
    assert str(path) in str(excinfo.value) and "'categories'" in str(excinfo.value)


def test_coco_duplicate_and_unsafe_category_names_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    path = tmp_path / "coco.json"
    for categories, match in (
        ([{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}], "duplicate class name"),
        ([{"id": 1, "name": "background"}], "duplicate class name"),
        ([{"id": 1, "name": "bad/name"}], "not a safe name"),
    ):
        path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
        with pytest.raises(ConfigError, match=match):
            CocoSource(path, tmp_path / "images")


# ---------------------------------------------------------------- Parquet shards

PNG_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
BOX_TYPE = pa.struct(
    [(k, pa.float32()) for k in ("x", "y", "w", "h")] + [("label", pa.int64())]
)


def _shard(
    path: Path,
    rows: list[dict[str, Any]],
    class_names: list[str],
    *,
    schema_version: int = 1,
    with_metadata: bool = True,
) -> Path:
    """Write a shard in the schema-version-1 layout by hand (no augment.shards)."""
    metadata = {}
    if with_metadata:
        metadata[b"synthaug"] = json.dumps({"schema_version": schema_version, "class_names": class_names})
    schema = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("image", PNG_TYPE, nullable=False),
            pa.field("height", pa.int32()),
            pa.field("width", pa.int32()),
            pa.field("label", pa.int64()),
            pa.field("label_name", pa.string()),
            pa.field("mask", PNG_TYPE),
            pa.field("boxes", pa.list_(BOX_TYPE)),
            pa.field("source", pa.string()),
            pa.field("seed", pa.int64()),
            pa.field("parent_id", pa.string()),
        ],
        metadata=metadata,
    )
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        image, mask = row["image"], row.get("mask")
        label = row.get("label")
        columns["id"].append(row["id"])
        columns["image"].append({"bytes": encode_png(image), "path": None})
        columns["height"].append(image.shape[0])
        columns["width"].append(image.shape[1])
        columns["label"].append(label)
        columns["label_name"].append(None if label is None else class_names[label])
        columns["mask"].append(None if mask is None else {"bytes": encode_png(mask), "path": None})
        columns["boxes"].append(row.get("boxes", []))
        columns["source"].append("classical")
        columns["seed"].append(7)
        columns["parent_id"].append(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=1)
    return path


def _rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    mask = np.zeros((6, 5), dtype=np.uint16)
    mask[1:3, 1:4] = 1
    mask[4, 4] = 300  # above 255: needs the 16-bit PNG path
    return [
        {"id": "b", "image": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "label": 1, "mask": mask,
         "boxes": [{"x": 1.0, "y": 1.0, "w": 3.0, "h": 2.0, "label": 1}]},
        {"id": "a", "image": rng.integers(0, 256, (4, 4, 1), dtype=np.uint8), "label": None},
    ]


def test_parquet_round_trip(tmp_path: Path) -> None:
    rows = _rows()
    _shard(tmp_path / "shards" / "part-0.parquet", rows[:1], ["cat", "dog"])
    _shard(tmp_path / "shards" / "part-1.parquet", rows[1:], ["cat", "dog"])
    _shard(tmp_path / "shards" / "_staging.parquet", [{"id": "z", "image": rows[1]["image"]}], ["x"])
    source = ParquetSource(tmp_path / "shards")
    assert source.class_names == ["cat", "dog"]
    records = source.records()
    assert records == [SourceRecord("a", None, "part-1.parquet#0"), SourceRecord("b", 1, "part-0.parquet#0")]
    b = source.load(records[1])
    np.testing.assert_array_equal(b.image, rows[0]["image"])
    assert b.mask is not None and b.mask.dtype == np.uint16
    np.testing.assert_array_equal(b.mask, rows[0]["mask"])
    assert b.boxes == [Box(1.0, 1.0, 3.0, 2.0, 1)]
    assert b.label == 1 and b.source == "real" and b.id == "b"
    a = source.load(records[0])
    assert a.image.shape == (4, 4, 1) and a.mask is None and a.boxes == [] and a.label is None
    np.testing.assert_array_equal(a.image, rows[1]["image"])


def test_parquet_single_file_with_several_row_groups(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        {"id": f"r{i}", "image": rng.integers(0, 256, (3, 3, 3), dtype=np.uint8), "label": i % 2}
        for i in range(5)
    ]
    source = ParquetSource(_shard(tmp_path / "one.parquet", rows, ["cat", "dog"]))
    for record in reversed(source.records()):
        row = rows[int(record.id[1:])]
        np.testing.assert_array_equal(source.load(record).image, row["image"])
        assert record.ref == f"one.parquet#{record.id[1:]}" and record.label == row["label"]


def test_parquet_mask_size_mismatch_is_rejected(tmp_path: Path) -> None:
    image, mask = np.zeros((6, 5, 3), dtype=np.uint8), np.zeros((4, 4), dtype=np.uint16)
    rows = [{"id": "x", "image": image, "label": 0, "mask": mask}]
    source = ParquetSource(_shard(tmp_path / "s.parquet", rows, ["cat"]))
    with pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[0])
    assert excinfo.value.path == "s.parquet#0"
    assert "mask size 4x4 does not match image 5x6" in excinfo.value.reason


def test_parquet_metadata_is_required_and_checked(tmp_path: Path) -> None:
    row = [{"id": "x", "image": np.zeros((2, 2, 3), dtype=np.uint8), "label": 0}]
    plain = _shard(tmp_path / "plain.parquet", row, ["cat"], with_metadata=False)
    with pytest.raises(ConfigError, match="not a synthaug shard"):
        ParquetSource(plain)
    future = _shard(tmp_path / "v2" / "s.parquet", row, ["cat"], schema_version=2)
    with pytest.raises(ConfigError, match="schema_version 2"):
        ParquetSource(future)


def test_parquet_shards_must_agree(tmp_path: Path) -> None:
    row = [{"id": "x", "image": np.zeros((2, 2, 3), dtype=np.uint8), "label": 0}]
    _shard(tmp_path / "names" / "a.parquet", row, ["cat"])
    _shard(tmp_path / "names" / "b.parquet", [{**row[0], "id": "y"}], ["dog"])
    with pytest.raises(ConfigError, match="class names"):
        ParquetSource(tmp_path / "names")
    _shard(tmp_path / "dups" / "a.parquet", row, ["cat"])
    _shard(tmp_path / "dups" / "b.parquet", row, ["cat"])
    with pytest.raises(ConfigError, match="duplicate id 'x'"):
        ParquetSource(tmp_path / "dups")
    (tmp_path / "none").mkdir()
    with pytest.raises(ConfigError, match="no \\*.parquet"):
        ParquetSource(tmp_path / "none")


def test_folder_source_works_from_a_relative_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (6, 5), (1, 2, 3)).save(tmp_path / "data" / name / "x.png")
    monkeypatch.chdir(tmp_path)
    source = ImageFolderSource(Path("data"))
    assert [source.load(r).image.shape for r in source.records()] == [(5, 6, 3), (5, 6, 3)]
