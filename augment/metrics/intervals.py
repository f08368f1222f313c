"""Bootstrap intervals for accuracies measured on a small real holdout.

A per-class accuracy rests on ~36 holdout images, the whole holdout on a few hundred: a
difference of one image moves it by 3 points. Each figure gets a 95% percentile bootstrap
interval over the holdout images (scipy.stats.bootstrap, seeded), and a comparison of two
classifiers scored on the same images a paired one: the gain's interval, and whether it
excludes zero (otherwise the holdout cannot tell the two apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


def _percentile_interval(data: np.ndarray, statistic: Any, seed: int, vectorized: bool) -> tuple[float, float]:
    """(low, high) of scipy's seeded percentile bootstrap of `statistic` over `data`."""
    # Imported here: scipy.stats takes ~2 s to import, and shard workers import this module
    # (through the report's helpers) without ever drawing an interval.
    from scipy.stats import bootstrap

    result = bootstrap((data,), statistic, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                       vectorized=vectorized, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def accuracy_interval(correct: Sequence[bool] | np.ndarray, seed: int) -> list[float] | None:
    """[low, high] of the mean of `correct` (one bool per holdout image); None for < 2 images."""
    hits = np.asarray(correct, dtype=np.float64)
    if hits.size < 2:
        return None
    if np.all(hits == hits[0]):  # every resample has the same mean; scipy would warn about it
        return [float(hits[0]), float(hits[0])]
    return list(_percentile_interval(hits, np.mean, seed, vectorized=True))


def paired_gain(baseline: Sequence[bool] | np.ndarray, other: Sequence[bool] | np.ndarray,
                seed: int) -> dict[str, Any]:
    """{"gain": mean(other) - mean(baseline), "interval": [low, high], "separable": bool}: both
    scored on the same images, so the images are resampled together (a paired bootstrap)."""
    a, b = np.asarray(baseline, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_gain: both must score the same images, got {a.shape} and {b.shape}")
    gain = float(b.mean() - a.mean()) if a.size else None
    differences = b - a
    if differences.size < 2:
        return {"gain": gain, "interval": None, "separable": False}
    if np.all(differences == differences[0]):
        low = high = float(differences[0])
    else:
        low, high = _percentile_interval(differences, np.mean, seed, vectorized=True)
    return {"gain": gain, "interval": [low, high], "separable": bool(low > 0 or high < 0)}


def _miou(confusions: np.ndarray, rows: np.ndarray) -> float:
    from augment.metrics.utility import mean_iou

    value, _ = mean_iou(confusions[rows].sum(axis=0))
    return np.nan if value is None else value


def _index_bootstrap(statistic: Any, n: int, seed: int) -> list[float] | None:
    """Percentile interval of `statistic(rows)` over resamples of the n holdout images."""
    if n < 2:
        return None
    low, high = _percentile_interval(np.arange(n), statistic, seed, vectorized=False)
    return None if np.isnan(low) or np.isnan(high) else [low, high]


def miou_interval(confusions: np.ndarray, seed: int) -> list[float] | None:
    """[low, high] of the mean IoU, resampling holdout images: `confusions` holds one [C, C]
    pixel confusion matrix per image (N x C x C), so IoU is pooled over each resample's pixels
    as the figure itself is."""
    confusions = np.asarray(confusions, dtype=np.int64)
    first = _miou(confusions, np.arange(len(confusions))) if len(confusions) else np.nan
    if len(confusions) >= 2 and (confusions == confusions[0]).all():
        return [float(first), float(first)]  # every resample pools the same pixels' proportions
    return _index_bootstrap(lambda rows: _miou(confusions, rows.astype(np.int64)), len(confusions), seed)


def paired_miou_gain(baseline: np.ndarray, other: np.ndarray, seed: int) -> dict[str, Any]:
    """`paired_gain` for mean IoU: both models' per-image confusions on the same images,
    resampled together."""
    a, b = np.asarray(baseline, dtype=np.int64), np.asarray(other, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"paired_miou_gain: both must score the same images, got {a.shape} and {b.shape}")
    every = np.arange(len(a))
    gain = float(_miou(b, every) - _miou(a, every)) if len(a) else None
    if (a == b).all():
        return {"gain": gain, "interval": None if len(a) < 2 else [0.0, 0.0], "separable": False}
    interval = _index_bootstrap(lambda rows: _miou(b, rows.astype(np.int64)) - _miou(a, rows.astype(np.int64)),
                                len(a), seed)
    return {"gain": gain, "interval": interval,
            "separable": bool(interval is not None and (interval[0] > 0 or interval[1] < 0))}
