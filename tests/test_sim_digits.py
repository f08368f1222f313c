"""Digits simulator: labels match pixels, determinism, shape switch, look controls, benchmark smoke."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from simulators.digits import DigitsControls, DigitsFamily

FAMILY = DigitsFamily()
SIZE = 32


def frame(seed: int, size: int = SIZE, **controls):
    d = FAMILY.describe(seed, DigitsControls(**controls), size)
    return d, FAMILY.render(d)


def test_family_metadata() -> None:
    assert FAMILY.name == "digits"
    assert FAMILY.class_names == [str(d) for d in range(10)]
    assert FAMILY.controls_model is DigitsControls


@pytest.mark.parametrize("color, channels", [("rgb", 3), ("gray", 1)])
def test_label_mask_and_box_agree(color: str, channels: int) -> None:
    for seed in range(40):
        d, f = frame(seed, color=color)
        assert f.image.dtype == np.uint8 and f.image.shape == (SIZE, SIZE, channels)
        assert f.label == d["digit"]
        assert f.mask.dtype == np.uint16 and set(np.unique(f.mask)) <= {0, 1}
        assert f.instances is None and f.depth is None
        (box,) = f.boxes
        assert box.label == d["digit"]
        ys, xs = np.nonzero(f.mask)
        assert (box.x, box.y) == (xs.min(), ys.min())
        assert (box.w, box.h) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_mask_covers_only_the_centre_digit() -> None:
    """With and without neighbours (same seed → same centre), the mask is the same."""
    for seed in range(20):
        _, alone = frame(seed, neighbours=0.0, blur=0.0, noise=0.0)
        d, crowded = frame(seed, neighbours=1.0, blur=0.0, noise=0.0)
        assert len(d["neighbours"]) == 2
        np.testing.assert_array_equal(alone.mask, crowded.mask)
        # The neighbours do paint ink outside the mask.
        assert np.abs(crowded.image.astype(int) - alone.image.astype(int))[crowded.mask == 0].max() > 40


def test_without_mask() -> None:
    _, f = frame(3, with_mask=False)
    assert f.mask is None and len(f.boxes) == 1


def test_same_seed_same_bytes_and_seeds_differ() -> None:
    a, b, c = frame(7)[1], frame(7)[1], frame(8)[1]
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.image.tobytes() != c.image.tobytes()


def test_json_round_trip_renders_identically() -> None:
    for seed in range(10):
        d, f = frame(seed)
        again = FAMILY.render(json.loads(json.dumps(d)))
        assert again.image.tobytes() == f.image.tobytes()
        assert again.mask.tobytes() == f.mask.tobytes()
        assert again.boxes == f.boxes


def _shape_masks(shape: bool, digit: int, font: str) -> list[np.ndarray]:
    controls = DigitsControls(shape_randomisation=shape, fonts=[font], scale=(0.7, 0.7), rotation=(0.0, 0.0))
    masks = []
    for seed in range(400):
        d = FAMILY.describe(seed, controls, SIZE)
        if d["digit"] == digit:
            masks.append(FAMILY.render(d).mask)
    return masks


def test_plain_renders_share_the_glyph_shape() -> None:
    plain = _shape_masks(False, 5, "DejaVuSans.ttf")
    assert len(plain) >= 5
    for m in plain[1:]:
        np.testing.assert_array_equal(m, plain[0])
    shaped = _shape_masks(True, 5, "DejaVuSans.ttf")
    assert len({m.tobytes() for m in shaped}) == len(shaped)


def _high_frequency(image: np.ndarray) -> float:
    grey = image[..., 0].astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())


def test_blur_lowers_high_frequencies() -> None:
    sharp, blurred = [], []
    for seed in range(10):
        d = FAMILY.describe(seed, DigitsControls(color="gray", noise=0.0, blur=0.0), SIZE)
        sharp.append(_high_frequency(FAMILY.render(d).image))
        d["blur"] = 1.5
        blurred.append(_high_frequency(FAMILY.render(d).image))
    assert np.all(np.array(blurred) < 0.7 * np.array(sharp))


def test_noise_raises_std_on_a_flat_background() -> None:
    flat = {"color": "gray", "background_texture": "none", "blur": 0.0, "neighbours": 0.0, "scale": (0.5, 0.5)}
    d = FAMILY.describe(1, DigitsControls(noise=0.0, **flat), SIZE)
    d["fg"], d["bg"] = [250], [128]  # a mid-grey background, so noise is not clipped
    clean = FAMILY.render(d).image[:4, :, 0]  # top strip: far from a half-height glyph
    d["noise"]["std"] = 20.0
    noisy = FAMILY.render(d).image[:4, :, 0]
    assert clean.std() == 0
    assert noisy.std() > 15


@pytest.mark.parametrize(
    "bad",
    [
        {"fonts": ["NoSuchFont.ttf"]},
        {"fonts": []},
        {"blur": -1.0},
        {"noise": -0.5},
        {"scale": (0.9, 0.5)},
        {"background_texture": "plaid"},
        {"neighbours": 1.5},
        {"unknown_knob": 1},
    ],
)
def test_bad_controls_raise(bad: dict) -> None:
    with pytest.raises(ValidationError):
        DigitsControls(**bad)


def test_controls_are_frozen() -> None:
    with pytest.raises(ValidationError):
        DigitsControls().blur = 2.0  # type: ignore[misc]


def test_source_only_accuracy_smoke() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from digits_transfer import source_only_accuracy

    acc = source_only_accuracy(DigitsControls(), n_train=200, epochs=1, size=8)
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
