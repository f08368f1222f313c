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
from scipy.stats import bootstrap

LEVEL = 0.95
RESAMPLES = 2000


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def accuracy_interval(correct: Sequence[bool] | np.ndarray, seed: int) -> list[float] | None:
    """[low, high] of the mean of `correct` (one bool per holdout image); None for < 2 images."""
    hits = np.asarray(correct, dtype=np.float64)
    if hits.size < 2:
        return None
    if np.all(hits == hits[0]):  # every resample has the same mean; scipy would warn about it
        return [float(hits[0]), float(hits[0])]
    result = bootstrap((hits,), np.mean, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                       vectorized=True, rng=_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


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
        result = bootstrap((differences,), np.mean, n_resamples=RESAMPLES, confidence_level=LEVEL,
                           method="percentile", vectorized=True, rng=_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {"gain": gain, "interval": [low, high], "separable": bool(low > 0 or high < 0)}
