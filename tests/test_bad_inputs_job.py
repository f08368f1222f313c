"""Bad inputs end to end: every one is a clear error or a recorded skip, never a half-written job.

Datasets are built in tmp_path; jobs run in process on the session Ray.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from augment.errors import ConfigError
from augment.images import decode_png, encode_png
from augment.shards import read_manifest, verify_shards
from jobs.config import parse_config
from jobs.plan import split_records
from jobs.runner import run_job
from jobs.sources import build_source

pytestmark = pytest.mark.usefixtures("ray_session")

TRANSFORMS = [{"name": "HorizontalFlip", "p": 0.5}]


# ---------------------------------------------------------------- helpers


def _noise(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, channels), dtype=np.uint8)


def _encoded(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _good_png(path: Path, seed: int, size: int = 16) -> Path:
    return _write(path, _encoded(Image.fromarray(_noise(size, size, seed)), "PNG"))


def _config(name: str, source: dict[str, Any], quota: dict[str, Any], **overrides: Any):
    raw: dict[str, Any] = {
        "name": name,
        "seed": 3,
        "source": source,
        "split": {"holdout": 0.2},
        "quota": quota,
        "augment": {"transforms": TRANSFORMS},
        "output": {"rows_per_shard": 16},
        "execution": {"num_workers": 1},
        "report": {"enabled": False},
    }
    raw.update(overrides)
    return parse_config(raw)


def _rejected(out: Path) -> dict[str, dict[str, str]]:
    lines = (out / "rejected.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    assert all(set(row) == {"id", "path", "reason"} for row in rows)
    return {row["id"]: row for row in rows}


def _rows(folder: Path) -> list[dict[str, Any]]:
    return pq.read_table(folder).to_pylist() if any(folder.glob("*.parquet")) else []


def _assert_nothing_half_written(out: Path) -> None:
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert not (out / ".synthaug.lock").exists()
    assert json.loads((out / "job.json").read_text())["status"] == "complete"
    for folder in ("shards", "holdout"):
        assert verify_shards(out / folder) == []


# ---------------------------------------------------------------- image folder


GOOD_PER_CLASS = 10
# file -> (class folder, substring the rejection reason must contain)
FOLDER_BAD = {
    "cat/corrupt.png": "not an image",
    "cat/truncated.png": "truncated",
    "dog/truncated.jpg": "truncated",
    "dog/empty.png": "empty file",
    "cat/bomb.png": "decompression bomb: 200x200 = 40000 pixels exceeds max_pixels=10000",
    "dog/link.png": "escapes the dataset root",
}
FOLDER_CONVERTED = ["cat/cmyk.jpg", "cat/deep16.png", "cat/palette.png", "dog/rgba.png"]


def _build_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for c, name in enumerate(("cat", "dog")):
        for i in range(GOOD_PER_CLASS):
            _good_png(root / name / f"good{i:02d}.png", seed=100 * c + i)
    # Bad files.
    _write(root / "cat/corrupt.png", np.random.default_rng(1).bytes(300))
    png = _encoded(Image.fromarray(_noise(64, 64, 2)), "PNG")
    _write(root / "cat/truncated.png", png[: len(png) // 2])
    jpeg = _encoded(Image.fromarray(_noise(64, 64, 3)), "JPEG", quality=95)
    _write(root / "dog/truncated.jpg", jpeg[: int(len(jpeg) * 0.6)])
    _write(root / "dog/empty.png", b"")
    _good_png(root / "cat/bomb.png", seed=4, size=200)
    outside = _good_png(tmp_path / "outside" / "secret.png", seed=5)
    os.symlink(outside, root / "dog/link.png")
    # Unusual but convertible modes.
    _write(root / "cat/cmyk.jpg", _encoded(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95))
    deep = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    _write(root / "cat/deep16.png", encode_png(deep))
    assert Image.open(root / "cat/deep16.png").mode.startswith("I;16")
    palette = Image.new("P", (16, 16))
    palette.putdata([x % 4 for _ in range(16) for x in range(16)])  # column x has index x % 4
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0, 0, 0] * 252)
    _write(root / "cat/palette.png", _encoded(palette, "PNG", transparency=0))
    _write(root / "dog/rgba.png", _encoded(Image.fromarray(_noise(16, 16, 6, channels=4)), "PNG"))
    # Hidden entries are ignored, not rejected.
    _write(root / "dog/.DS_Store", b"junk")
    return root


def test_folder_bad_files_are_skipped_and_recorded_and_the_rest_is_balanced(tmp_path: Path) -> None:
    root = _build_folder(tmp_path)
    config = _config(
        "bad-folder",
        {"kind": "folder", "root": str(root), "max_pixels": 10_000},
        {"balance": True},
    )
    out = tmp_path / "out"
    result = run_job(config, out)

    # Exactly the bad files are rejected, each with a reason that says what is wrong.
    rejected = _rejected(out)
    assert set(rejected) == set(FOLDER_BAD)
    for file, expected in FOLDER_BAD.items():
        assert rejected[file]["path"] == file
        assert expected in rejected[file]["reason"], (file, rejected[file]["reason"])
    assert {r["id"] for r in result.rejected} == set(FOLDER_BAD)

    # Converted modes are rows (train or holdout), decoded to 16x16 RGB.
    train_rows = _rows(out / "shards")
    holdout_rows = _rows(out / "holdout")
    real = {r["id"]: r for r in train_rows + holdout_rows if r["source"] == "real"}
    for file in FOLDER_CONVERTED:
        assert file in real, file
        pixels = decode_png(real[file]["image"]["bytes"])
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert set(real) == {f"{c}/good{i:02d}.png" for c in ("cat", "dog") for i in range(GOOD_PER_CLASS)} | set(
        FOLDER_CONVERTED
    )
    cmyk = decode_png(real["cat/cmyk.jpg"]["image"]["bytes"]).astype(int)
    np.testing.assert_allclose(cmyk[8, 8], [0, 255, 255], atol=3)  # cyan
    palette = decode_png(real["cat/palette.png"]["image"]["bytes"])
    assert np.all(palette[:, 0::4] == 0)  # the transparent index is composited onto black
    np.testing.assert_array_equal(palette[0, 1], [0, 255, 0])

    # Balance target computed from the usable training records.
    source = build_source(config.source)
    train, _ = split_records(source.records(), config.split.holdout, config.seed)
    usable = Counter(source.class_names[r.label] for r in train if r.id not in rejected)
    target = max(usable.values())
    assert usable["cat"] != usable["dog"]  # the quota really had work to do
    manifest = read_manifest(out / "shards")
    assert manifest.class_counts == {"cat": target, "dog": target} == result.class_counts
    assert manifest.total_rows == 2 * target == len(train_rows)
    real_train = Counter(r["label_name"] for r in train_rows if r["source"] == "real")
    assert real_train == usable
    assert manifest.source_counts == {"real": sum(usable.values()), "classical": 2 * target - sum(usable.values())}
    # No rejected file made it into any shard, as a row or as a parent.
    ids = {r["id"] for r in train_rows + holdout_rows}
    parents = {r["parent_id"] for r in train_rows if r["parent_id"]}
    assert not (ids | parents) & set(FOLDER_BAD)
    assert parents <= set(real)

    _assert_nothing_half_written(out)


# ---------------------------------------------------------------- COCO


CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]  # classes 1, 2


def _polygon(x0: float, y0: float, size: float) -> list[float]:
    return [x0, y0, x0 + size, y0, x0 + size, y0 + size, x0, y0 + size]


def _ann(ann_id: int, image_id: int, category_id: int, x0: float, y0: float, size: float,
         **extra: Any) -> dict[str, Any]:
    annotation = {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "bbox": [x0, y0, size, size], "area": size * size,
        "segmentation": [_polygon(x0, y0, size)],
    }
    annotation.update(extra)
    return annotation


GOOD_COCO = 6
# image id -> (file name, substring the rejection reason must contain)
COCO_BAD = {
    101: ("../escape.png", "escapes images_root"),
    102: ("missing.png", "file not found"),
    103: ("unknown_category.png", "unknown category id 99"),
    104: ("far_box.png", "lies more than 1 px outside the 32x32 image"),
    105: ("bad_rle.png", "mask size 16x16 does not match image 32x32"),
}


def _build_coco(tmp_path: Path) -> Path:
    base = tmp_path / "coco"
    images_root = base / "images"
    images, annotations = [], []
    ann_id = 1
    for i in range(GOOD_COCO):
        image_id = i + 1
        _good_png(images_root / f"good{i}.png", seed=200 + i, size=32)
        images.append({"id": image_id, "file_name": f"good{i}.png", "width": 32, "height": 32})
        # Objects near the edges, so augmentation pushes boxes across the border.
        annotations.append(_ann(ann_id, image_id, 1 + i % 2, x0=20 - i, y0=2 + 3 * i, size=10))
        annotations.append(_ann(ann_id + 1, image_id, 1 + (i + 1) % 2, x0=1, y0=1, size=5))
        ann_id += 2
    # The escaping file exists, so only the path check can refuse it.
    _good_png(base / "escape.png", seed=300, size=32)
    for image_id, (file_name, _) in COCO_BAD.items():
        if image_id not in (101, 102):
            _good_png(images_root / file_name, seed=image_id, size=32)
        images.append({"id": image_id, "file_name": file_name, "width": 32, "height": 32})
        annotations.append(_ann(ann_id, image_id, 1, x0=4, y0=4, size=8))
        ann_id += 1
    annotations.append(_ann(ann_id, 103, 99, x0=2, y0=2, size=4))
    annotations.append({"id": ann_id + 1, "image_id": 104, "category_id": 2,
                        "bbox": [100, 100, 10, 10], "area": 100})
    annotations.append({"id": ann_id + 2, "image_id": 105, "category_id": 2, "bbox": [0, 0, 8, 8],
                        "area": 64, "segmentation": {"size": [16, 16], "counts": [0, 256]}})
    path = base / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def test_coco_bad_entries_are_skipped_and_good_ones_keep_masks_and_boxes(tmp_path: Path) -> None:
    annotations = _build_coco(tmp_path)
    config = _config(
        "bad-coco",
        {"kind": "coco", "annotations": str(annotations), "images_root": str(annotations.parent / "images")},
        {"multiplier": 2.0},
        split={"holdout": 0.0},
        augment={"transforms": [
            {"name": "Affine", "p": 1.0, "params": {"rotate": [-25, 25], "translate_percent": [-0.25, 0.25]}},
            {"name": "HorizontalFlip", "p": 0.5},
        ]},
    )
    out = tmp_path / "out"
    result = run_job(config, out)

    rejected = _rejected(out)
    assert set(rejected) == {f"coco/{i}" for i in COCO_BAD}
    for image_id, (file_name, expected) in COCO_BAD.items():
        row = rejected[f"coco/{image_id}"]
        assert expected in row["reason"] and row["path"] == file_name, (image_id, row)

    rows = _rows(out / "shards")
    real = [r for r in rows if r["source"] == "real"]
    synthetic = [r for r in rows if r["source"] == "classical"]
    assert sorted(r["id"] for r in real) == sorted(f"coco/{i + 1}" for i in range(GOOD_COCO))
    assert len(synthetic) == len(real)  # multiplier 2.0: one child per real image
    manifest = read_manifest(out / "shards")
    assert manifest.class_names == ["background", "circle", "square"]
    assert manifest.class_counts == {"circle": 6, "square": 6} == result.class_counts
    assert {r["parent_id"] for r in synthetic} <= {r["id"] for r in real}

    for row in real:
        mask = decode_png(row["mask"]["bytes"])
        assert mask.shape == (32, 32)
        assert set(np.unique(mask)) == {0, 1, 2}  # both objects painted with their class ids
        assert np.count_nonzero(mask == row["label"]) >= 9 * 9
        assert len(row["boxes"]) == 2 and {b["label"] for b in row["boxes"]} == {1, 2}
    for row in synthetic:
        mask = decode_png(row["mask"]["bytes"])
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1, 2}
        assert np.count_nonzero(mask) > 0
        assert row["boxes"], row["id"]
        for box in row["boxes"]:
            assert box["label"] in (1, 2)
            assert box["w"] > 0 and box["h"] > 0
            assert box["x"] >= 0 and box["y"] >= 0
            assert box["x"] + box["w"] <= row["width"] + 1e-3 and box["y"] + box["h"] <= row["height"] + 1e-3
    # The augmentation did push objects across the border (so clipping was exercised).
    assert any(
        b["x"] == 0 or b["y"] == 0 or b["x"] + b["w"] >= 32 - 1e-3 or b["y"] + b["h"] >= 32 - 1e-3
        for row in synthetic for b in row["boxes"]
    )
    _assert_nothing_half_written(out)


# ---------------------------------------------------------------- config-level errors


def _folder_config(root: Path, quota: dict[str, Any] | None = None):
    return _config("cfg", {"kind": "folder", "root": str(root)}, quota or {"balance": True})


def _small_folder(root: Path, classes: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(classes.items()):
        for i in range(n):
            _good_png(root / name / f"{i}.png", seed=10 * c + i)
    return root


def _assert_no_shards(out: Path) -> None:
    assert not (out / "shards").exists() and not (out / "holdout").exists()
    assert not (out / ".synthaug.lock").exists()


def test_unsafe_class_folder_name_is_a_config_error(tmp_path: Path) -> None:
    root = _small_folder(tmp_path / "images", {"good": 2, "bad|name": 2})
    with pytest.raises(ConfigError, match=r"'bad\|name' is not a safe name"):
        run_job(_folder_config(root), tmp_path / "out")
    _assert_no_shards(tmp_path / "out")


def test_empty_class_folder_is_a_config_error(tmp_path: Path) -> None:
    root = _small_folder(tmp_path / "images", {"full": 2})
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match="empty: class folder has no image files"):
        run_job(_folder_config(root), tmp_path / "out")
    _assert_no_shards(tmp_path / "out")


def test_missing_folder_root_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere: image folder not found"):
        run_job(_folder_config(tmp_path / "nowhere"), tmp_path / "out")
    _assert_no_shards(tmp_path / "out")


def test_coco_json_that_is_not_json_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    annotations = tmp_path / "annotations.json"
    annotations.write_text("{'images': [oops")
    config = _config(
        "cfg",
        {"kind": "coco", "annotations": str(annotations), "images_root": str(tmp_path / "images")},
        {"multiplier": 2.0},
    )
    with pytest.raises(ConfigError, match="annotations.json: not valid JSON"):
        run_job(config, tmp_path / "out")
    _assert_no_shards(tmp_path / "out")


def test_quota_naming_an_unknown_class_is_a_config_error(tmp_path: Path) -> None:
    root = _small_folder(tmp_path / "images", {"cat": 3, "dog": 3})
    config = _folder_config(root, {"per_class": {"cat": 5, "zebra": 5}})
    with pytest.raises(ConfigError, match=r"quota.per_class: unknown class 'zebra' \(classes: cat, dog\)"):
        run_job(config, tmp_path / "out")
    _assert_no_shards(tmp_path / "out")


def test_quota_below_the_real_count_is_a_config_error(tmp_path: Path) -> None:
    root = _small_folder(tmp_path / "images", {"cat": 5, "dog": 5})
    # holdout 0.2 of 5 leaves 4 real training samples per class.
    config = _folder_config(root, {"per_class": {"cat": 6, "dog": 2}})
    with pytest.raises(ConfigError, match=r"quota.per_class\['dog'\]: 2 is below the 4 real training samples"):
        run_job(config, tmp_path / "out")
    _assert_no_shards(tmp_path / "out")


def test_a_config_error_does_not_lock_the_folder_to_the_broken_config(tmp_path: Path) -> None:
    """Fixing a typo in the config and rerunning on the same folder must not need --overwrite."""
    root = _small_folder(tmp_path / "images", {"cat": 5, "dog": 5})
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="image folder not found"):
        run_job(_folder_config(tmp_path / "imgs"), out)  # a typo in source.root
    with pytest.raises(ConfigError, match="is below the 4 real training samples"):
        run_job(_folder_config(root, {"per_class": {"cat": 6, "dog": 2}}), out)  # root fixed, quota wrong
    result = run_job(_folder_config(root, {"per_class": {"cat": 6, "dog": 6}}), out)
    assert result.class_counts == {"cat": 6, "dog": 6}
    _assert_nothing_half_written(out)
    # Once shards are published, a different config is refused again.
    with pytest.raises(ConfigError, match="different config"):
        run_job(_folder_config(root, {"per_class": {"cat": 7, "dog": 7}}), out)
