"""COCO masks as label maps: a COCO file of images in mixed sizes, brought to one size by the
source's `width`/`height`, fits a real (tiny) SPADE and every training record's mask is painted.
The painted rows carry their parent's mask, instances and boxes byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.shards import verify_shards
from jobs.config import parse_config
from jobs.runner import run_job
from tests.test_families import png, rows_by_id

pytestmark = pytest.mark.usefixtures("ray_session")

SIZES = [(40, 30), (32, 32), (48, 24), (30, 40), (36, 27), (64, 48)]  # (width, height)


def write_coco(root: Path) -> Path:
    """Grey road below, a red car and a blue sign as rectangles, at each image's own size."""
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        pixels = np.full((h, w, 3), 90, np.uint8)
        car = [w // 4, h // 2, w // 3, h // 3]
        sign = [2 * w // 3, h // 6, w // 6, h // 3]
        for (x, y, bw, bh), colour in ((car, (200, 30, 30)), (sign, (30, 30, 200))):
            pixels[y:y + bh, x:x + bw] = colour
        pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / f"f{i}.png")
        images.append({"id": i + 1, "file_name": f"f{i}.png", "width": w, "height": h})
        for k, ((x, y, bw, bh), category) in enumerate(((car, 1), (sign, 2))):
            polygon = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
            annotations.append({"id": 2 * i + k + 1, "image_id": i + 1, "category_id": category,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "segmentation": [polygon]})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "sign"}]}))
    return path


def test_coco_masks_of_mixed_sizes_are_painted_by_spade(tmp_path: Path) -> None:
    annotations = write_coco(tmp_path / "coco")
    config = parse_config({
        "name": "coco-spade", "seed": 4,
        "source": {"kind": "coco", "annotations": str(annotations), "images_root": str(tmp_path / "coco" / "images"),
                   "width": 24, "height": 16},
        "split": {"holdout": 0.0},
        "generate": [{"kind": "spade", "maps": "source", "per_parent": 1,
                      "fit": {"steps": 2, "batch_size": 2, "ngf": 4, "ndf": 4, "spade_hidden": 4}}],
        "report": {"enabled": False}, "output": {"rows_per_shard": 8},
    })
    run_job(config, tmp_path / "out")
    out = tmp_path / "out"
    assert verify_shards(out / "shards") == []
    rows = rows_by_id(out / "shards")
    real = [r for r in rows.values() if r["source"] == "real"]
    painted = [r for r in rows.values() if r["source"] == "spade"]
    assert len(real) == len(painted) == len(SIZES)
    for row in painted:
        parent = rows[row["parent_id"]]
        for column in ("mask", "instances", "boxes", "label"):
            assert row[column] == parent[column], column
        mask = png(parent["mask"]["bytes"])
        assert mask.shape == (16, 24) and set(np.unique(mask)) == {0, 1, 2}  # both objects survive the crop
        assert png(row["image"]["bytes"]).shape == (16, 24, 3)
        assert {b["label"] for b in parent["boxes"]} == {1, 2}
        for box in parent["boxes"]:  # inside the 24x16 frame, around its object's pixels
            assert 0 <= box["x"] and box["x"] + box["w"] <= 24 + 1e-4 and 0 <= box["y"] and box["y"] + box["h"] <= 16 + 1e-4  # float32 in shards
            ys, xs = np.nonzero(mask == box["label"])
            assert box["x"] - 1 <= xs.min() and xs.max() <= box["x"] + box["w"] + 1


def test_mixed_sizes_without_a_size_are_a_config_error_naming_the_fix(tmp_path: Path) -> None:
    from augment.errors import ConfigError

    annotations = write_coco(tmp_path / "coco")
    config = parse_config({
        "name": "coco-spade", "seed": 4,
        "source": {"kind": "coco", "annotations": str(annotations), "images_root": str(tmp_path / "coco" / "images")},
        "split": {"holdout": 0.0},
        "generate": [{"kind": "spade", "maps": "source", "fit": {"steps": 2, "batch_size": 2, "ngf": 4, "ndf": 4,
                                                                 "spade_hidden": 4}}],
        "report": {"enabled": False},
    })
    with pytest.raises(ConfigError, match=r"6 sizes .*width and height"):
        run_job(config, tmp_path / "out")
