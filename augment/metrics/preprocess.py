"""The metric size: every image is brought to one square size and channel count before any
feature extractor sees it (row scores and the report alike). A named, recorded choice,
since preprocessing changes the scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from augment.images import resize_image


def metric_preprocessing(size: int, channels: int) -> dict[str, Any]:
    """What `to_metric_size` and `resize_mask` do, for the report."""
    return {"resize": "bicubic (Pillow)", "size": size, "channels": channels,
            "channel_rule": "gray->RGB by repetition, RGB->gray by ITU-R 601 luma",
            "masks": "nearest neighbour"}


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Gray to RGB by repetition, RGB to gray by ITU-R 601 luma; anything else unchanged."""
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def to_metric_size(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 H x W x C to size x size x `channels` (bicubic)."""
    return resize_image(match_channels(image, channels), size)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour, so class ids stay class ids."""
    if mask.shape == (size, size):
        return mask
    rows = (np.arange(size) * mask.shape[0] / size).astype(int)
    cols = (np.arange(size) * mask.shape[1] / size).astype(int)
    return mask[rows[:, None], cols[None, :]]
