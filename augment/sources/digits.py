"""scikit-learn's handwritten digits as a built-in source.

1,797 8x8 gray images with values 0..16, bundled with scikit-learn (no download), so the
quickstart and the tests run offline. Licensed CC BY 4.0 (`augment.licences.DIGITS_LICENCE`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from augment.errors import ConfigError, InputRejected
from augment.images import Color, check_color, resize_image
from augment.licences import DIGITS_LICENCE
from augment.sample import Sample
from augment.sources.base import SourceRecord

CLASS_NAMES = [str(d) for d in range(10)]


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 Nx8x8 scaled to 0..255, targets int64 N); loaded once per process."""
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images.setflags(write=False)
    targets = np.asarray(bunch.target, dtype=np.int64)
    targets.setflags(write=False)
    return images, targets


class DigitsSource:
    """Built-in source `digits`: records `digits/0000`..`digits/1796`, label = the digit."""

    # Bundled arrays, not files: nothing to reject, so jobs skip their decode-everything scan.
    trusted = True

    def __init__(self, image_size: int = 32, color: Color = "rgb") -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"digits: image_size must be a positive integer, got {image_size!r}")
        try:
            self.color = check_color(color)
        except ValueError as exc:
            raise ConfigError(f"digits: {exc}") from None
        self.image_size = image_size

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    def records(self) -> list[SourceRecord]:
        _, targets = _digits()
        return [SourceRecord(id=f"digits/{i:04d}", label=int(t), ref=str(i)) for i, t in enumerate(targets)]

    def load(self, record: SourceRecord) -> Sample:
        images, targets = _digits()
        if not (record.ref.isascii() and record.ref.isdigit()) or int(record.ref) >= len(images):
            raise InputRejected(record.ref, f"no digits image with index {record.ref!r}")
        index = int(record.ref)
        # Bicubic in 8-bit: Pillow clips the overshoot to 0..255.
        image = resize_image(images[index][..., None], self.image_size)
        if self.color == "rgb":
            image = np.repeat(image, 3, axis=2)
        return Sample(id=record.id, image=image, label=int(targets[index]), source="real", licence=DIGITS_LICENCE)
