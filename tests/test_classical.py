"""Classical augmentation: spec validation, joint geometry, determinism, dtypes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import albumentations as A
import numpy as np
import pytest

from augment.classical import ClassicalAugmenter, validate_transform
from augment.sample import Box, Sample


def _parent(channels: int = 3, size: tuple[int, int] = (48, 64)) -> Sample:
    """A noisy image with one object (mask value 1000 > 255) and its tight box."""
    h, w = size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint16)
    mask[10:20, 5:15] = 1000
    mask[30:40, 40:60] = 7
    instances = (mask > 0).astype(np.uint16) * 300
    return Sample(id="p0", image=image, label=2, mask=mask, instances=instances,
                  boxes=[Box(5, 10, 10, 10, 1000), Box(40, 30, 20, 10, 7)])


PIPELINE = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "p": 1.0, "params": {"rotate": [-20, 20], "scale": [0.8, 1.2]}},
    {"name": "RandomBrightnessContrast", "p": 1.0},
    {"name": "GaussNoise", "p": 0.5},
]


@pytest.mark.parametrize(
    ("name", "params", "p", "needle"),
    [
        ("NoSuchTransform", {}, None, "unknown transform 'NoSuchTransform'"),
        ("os.path", {}, None, "not a plain albumentations class name"),
        ("Compose", {}, None, "composition"),
        ("OneOf", {}, None, "composition"),
        ("Lambda", {}, None, "Lambda: not allowed"),
        ("Mosaic", {}, None, "mosaic_metadata"),
        ("RandomCropNearBBox", {}, None, "cropping_bbox"),
        ("CenterCrop3D", {"size": [2, 2, 2]}, None, "2-D images"),
        ("Normalize", {}, None, "float"),
        ("Rotate", {"limit": "abc"}, None, "Rotate.limit:"),
        ("Rotate", {"limitt": 3}, None, "Rotate.limitt: unknown parameter"),
        ("Rotate", {"border_mode": 99}, None, "Rotate.border_mode:"),
        ("Rotate", {}, 1.5, "Rotate.p:"),
        ("Rotate", {}, -0.1, "Rotate.p:"),
        ("Rotate", {"p": 0.5}, None, "Rotate.params.p"),
    ],
)
def test_validate_transform_rejects(name, params, p, needle):
    with pytest.raises(ValueError, match=None) as info:
        validate_transform(name, params, p)
    assert needle in str(info.value)


def test_validate_transform_generic_metadata_check():
    # Domain-adaptation transforms ask for reference images through metadata keys.
    for name in ("FDA", "HistogramMatching", "PixelDistributionAdaptation"):
        with pytest.raises(ValueError, match="needs extra inputs"):
            validate_transform(name, {}, None)


def test_validate_transform_accepts():
    validate_transform("HorizontalFlip", {}, 0.5)
    validate_transform("Rotate", {"limit": [-10, 10]}, None)
    validate_transform("MaskDropout", {}, 1.0)


def test_augmenter_meta_and_params_json():
    aug = ClassicalAugmenter(PIPELINE, generator_name="albu-test")
    child = aug(_parent(), child_id="c1", seed=5)
    assert (child.id, child.source, child.parent_id, child.seed, child.label) == ("c1", "classical", "p0", 5, 2)
    assert child.generator.name == "albu-test"
    params = json.loads(child.generator.params_json)
    assert params["albumentations"] == A.__version__
    # p omitted → albumentations' own default is recorded explicitly.
    assert params["transforms"][2]["p"] == 1.0 and params["transforms"][3]["p"] == 0.5
    assert child.generator.params_json == json.dumps(params, sort_keys=True, separators=(",", ":"))


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="non-empty list"):
        ClassicalAugmenter([])
    with pytest.raises(ValueError, match=r"transforms\[0\]: unknown keys"):
        ClassicalAugmenter([{"name": "HorizontalFlip", "prob": 1}])
    with pytest.raises(ValueError, match="seed"):
        ClassicalAugmenter(PIPELINE)(_parent(), child_id="c", seed=-1)


def test_horizontal_flip_moves_image_mask_and_boxes_together():
    parent = _parent()
    child = ClassicalAugmenter([{"name": "HorizontalFlip", "p": 1.0}])(parent, child_id="c", seed=0)
    np.testing.assert_array_equal(child.image, parent.image[:, ::-1])
    np.testing.assert_array_equal(child.mask, parent.mask[:, ::-1])
    np.testing.assert_array_equal(child.instances, parent.instances[:, ::-1])
    assert [b.label for b in child.boxes] == [1000, 7]
    for box in child.boxes:
        ys, xs = np.nonzero(child.mask == box.label)
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == pytest.approx(
            (box.x, box.y, box.w, box.h))


def test_same_seed_same_bytes_regardless_of_history():
    aug = ClassicalAugmenter(PIPELINE)
    parent = _parent()
    first = aug(parent, child_id="a", seed=123)
    for s in range(5):  # other calls, and global RNG noise, in between
        aug(parent, child_id="x", seed=s)
    np.random.random(7)  # advance the global RNGs: their state must not leak in
    random.random()
    again = aug(parent, child_id="a", seed=123)
    fresh = ClassicalAugmenter(PIPELINE)(parent, child_id="a", seed=123)
    for other in (again, fresh):
        assert first.image.tobytes() == other.image.tobytes()
        assert first.mask.tobytes() == other.mask.tobytes()
        assert first.boxes == other.boxes
    different = aug(parent, child_id="b", seed=124)
    assert first.image.tobytes() != different.image.tobytes()


def test_masks_stay_uint16_ids_and_gray_stays_one_channel():
    parent = _parent(channels=1)
    aug = ClassicalAugmenter([{"name": "Affine", "p": 1.0, "params": {"rotate": [15, 30]}},
                              {"name": "RandomBrightnessContrast", "p": 1.0}])
    child = aug(parent, child_id="c", seed=1)
    assert child.image.shape == (48, 64, 1) and child.image.dtype == np.uint8
    assert child.mask.dtype == np.uint16 and child.instances.dtype == np.uint16
    assert set(np.unique(child.mask)) <= {0, 7, 1000} and 1000 in child.mask
    assert set(np.unique(child.instances)) <= {0, 300}


def test_boxes_leaving_the_image_are_dropped_and_labels_stay_aligned():
    parent = _parent()
    # Shift far right: the object at x 40..60 leaves the 64-px-wide image, the other stays.
    aug = ClassicalAugmenter([{"name": "Affine", "p": 1.0,
                               "params": {"translate_px": {"x": [30, 30], "y": [0, 0]}}}])
    child = aug(parent, child_id="c", seed=0)
    assert [b.label for b in child.boxes] == [1000]
    assert child.boxes[0].x == pytest.approx(35) and child.boxes[0].w == pytest.approx(10)


def test_missing_mask_stays_missing():
    parent = _parent()
    parent.mask = None
    parent.instances = None
    child = ClassicalAugmenter([{"name": "MaskDropout", "p": 1.0}])(parent, child_id="c", seed=0)
    assert child.mask is None and child.instances is None and child.depth is None


def test_import_makes_no_network_call():
    """albumentations asks pypi.org for a newer release when imported, unless told not to;
    importing the augmenter (as the driver and every Ray worker do) must not."""
    code = ("import sys\n"
            "calls = []\n"
            "sys.addaudithook(lambda event, args: calls.append(event) "
            "if event in ('socket.connect', 'socket.getaddrinfo') else None)\n"
            "import augment.classical\n"
            "print(sorted(set(calls)))\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
