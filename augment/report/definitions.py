"""What the report's numbers mean, written once for report.json ("definitions") and the page.

A user reading "KID -0.17" or "11% near copies" needs the rule behind the number, with the
values this job used (feature space, threshold, subset sizes), next to it.
"""

from __future__ import annotations

from typing import Any

from augment.metrics.intervals import LEVEL, RESAMPLES
from augment.report.verdict import grade_rules


def definitions(kind: str, *, k: int, kid_subsets: int, kid_subset_size: int, resize: str, size: int,
                near_copy_threshold: float | None, near_copy_quantile: float | None) -> dict[str, Any]:
    """The definitions block; `kind` is the first feature space (the one that scored rows)."""
    if near_copy_threshold is None:
        threshold = "not calibrated: the job keeps no real holdout, so no row is called a near copy"
    else:
        threshold = (f"{near_copy_threshold:.4g}: the {100 * (near_copy_quantile or 0):g}% quantile of the distances from real "
                     "holdout images to their nearest real training image")
    return {
        "feature_space": kind,
        "resize": f"every image to {size}x{size} with {resize} before any feature extractor; the extractors "
                  "then see images at their input size and resize nothing",
        "fd": "Fréchet distance between Gaussians fitted to the two feature sets (FID in the Inception-v3 space "
              "only); biased upwards on small sets, so read it against the real-vs-real floor, measured on the "
              "same set sizes",
        "kid": ("Kernel Inception Distance: the unbiased MMD² estimate with the cubic polynomial kernel "
                f"(x·y/d + 1)³ in the {kind} feature space (d its dimension), averaged over {kid_subsets} random "
                f"subsets of at most {kid_subset_size} rows (at most half the smaller set); ± is the std over "
                "subsets (their noise, not a standard error). Unscaled (papers often print ×1000), comparable "
                "only within one feature space, and, being unbiased, negative when the two sets are as close "
                "as two samples of one distribution: the floor's KID sits around 0"),
        "precision_recall": (f"k-NN manifolds with k = {k} (Kynkäänniemi et al. 2019; density and coverage: "
                             "Naeem et al. 2020): precision is the share of synthetic rows inside the real "
                             "holdout's manifold (fidelity), recall the share of real images inside the synthetic "
                             "manifold (diversity); realism ≥ 1 lies inside the real manifold"),
        "near_copy": {"threshold": near_copy_threshold, "quantile": near_copy_quantile,
                      "rule": (f"a synthetic row whose Euclidean distance in the {kind} feature space to its "
                               f"nearest real training image is at most the threshold, {threshold}")},
        "intervals": (f"{LEVEL:.0%} percentile bootstrap intervals over the real holdout images ({RESAMPLES} "
                      "resamples); a gain is paired (both classifiers scored on the same images) and "
                      "'separable' when its interval excludes 0"),
        "grades": grade_rules(),
    }
