"""Metrics between a synthetic and a real feature set, overall and per class.

The same numbers for real train vs real holdout form the floor: "how far from
real-vs-real" is what a user can act on (small sets make FD and KID biased upwards, and
the floor carries the same bias). Every block keys the Fréchet distance "fd"; the block's
feature space names it for people (`fd_title`: "FID" only for the standard Inception-v3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from augment.metrics.distribution import frechet_distance, gaussian_stats, kid
from augment.metrics.knn import (
    kth_neighbour_radii,
    nearest_neighbours,
    prdc,
    realism_scores,
)

MIN_SET = 2  # below this a set has no covariance: metrics are left out (None)


def fd_title(extractor: str) -> str:
    """The Fréchet distance as people call it: FID in the standard Inception-v3 space only."""
    return "FID" if extractor == "inception" else f"FD ({extractor})"


def compare_sets(real: np.ndarray, fake: np.ndarray, *, k: int, kid_subsets: int,
                 kid_subset_size: int, seed: int, train: np.ndarray | None = None,
                 near_copy_threshold: float | None = None) -> dict[str, Any]:
    """FD, KID, precision/recall/density/coverage and realism of `fake` against `real`.

    FD and the k-NN numbers move with the set sizes, so a larger `fake` is subsampled (seeded)
    to `len(real)` for them (equal sizes, as Naeem et al. 2020 recommend): the floor and every
    synthetic source are then measured alike. Realism and near copies use every sample.
    With `train` (real training features) and a threshold, also the fraction of `fake`
    closer to a training image than the threshold (near copies).

    `k` is capped by the set sizes (a class with few rows has fewer neighbours): the k used
    is recorded as "k_effective" next to the requested "k" (None where nothing was measured)."""
    result: dict[str, Any] = {"n_real": len(real), "n_synthetic": len(fake), "k": k, "k_effective": None}
    if len(real) < MIN_SET or len(fake) < MIN_SET:
        return {**result, "fd": None, "kid_mean": None, "kid_std": None, "precision": None, "recall": None,
                "density": None, "coverage": None, "realism_median": None, "near_copy_fraction": None}
    every_fake = fake
    if len(fake) > len(real):
        pick = np.random.default_rng(seed).choice(len(fake), size=len(real), replace=False)
        fake = fake[np.sort(pick)]
    result["n_compared"] = len(fake)
    real64, fake64 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    result["fd"] = float(frechet_distance(gaussian_stats(real64), gaussian_stats(fake64)))
    # Subsets of at most half the smaller set, so that they differ and the std means something.
    size = max(2, min(kid_subset_size, min(len(real), len(fake)) // 2))
    result["kid_mean"], result["kid_std"] = (float(v) for v in kid(real64, fake64, subsets=kid_subsets,
                                                                     subset_size=size, seed=seed))
    neighbours = min(k, len(real) - 1, len(fake) - 1)
    if neighbours >= 1:
        result["k_effective"] = neighbours
        result.update({name: float(v) for name, v in prdc(real, fake, k=neighbours).items()})
        radii = kth_neighbour_radii(real, neighbours)
        result["realism_median"] = float(np.median(realism_scores(real, radii, every_fake)))
    else:
        result.update(precision=None, recall=None, density=None, coverage=None, realism_median=None)
    result["near_copy_fraction"] = None
    if train is not None and near_copy_threshold is not None and len(train):
        nearest, _ = nearest_neighbours(np.asarray(every_fake, np.float32), np.asarray(train, np.float32))
        result["near_copy_fraction"] = float(np.mean(nearest <= near_copy_threshold))
    return result


def compare_per_class(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                      class_names: list[str], **kwargs: Any) -> dict[str, Any]:
    """`compare_sets` overall and for every class with synthetic samples. Near copies are
    judged against the whole training set (a copy of any training image counts)."""
    out: dict[str, Any] = {"overall": compare_sets(real, fake, **kwargs), "per_class": {}}
    for c, name in enumerate(class_names):
        mine = fake_labels == c
        if mine.any():
            out["per_class"][name] = compare_sets(real[real_labels == c], fake[mine], **kwargs)
    return out
