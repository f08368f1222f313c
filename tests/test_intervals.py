"""Bootstrap intervals of holdout accuracies, against the normal approximation."""

from __future__ import annotations

import numpy as np
import pytest

from augment.metrics.intervals import accuracy_interval, paired_gain


@pytest.mark.parametrize("n, p", [(400, 0.8), (900, 0.5)])
def test_accuracy_interval_matches_the_normal_approximation(n: int, p: float) -> None:
    """For a Bernoulli mean the bootstrap interval tends to p ± 1.96 √(p(1−p)/n) (Wald)."""
    correct = np.zeros(n, bool)
    correct[: int(n * p)] = True
    low, high = accuracy_interval(correct, seed=0)
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    assert low == pytest.approx(p - half, abs=0.01) and high == pytest.approx(p + half, abs=0.01)


def test_accuracy_interval_degenerate_cases() -> None:
    assert accuracy_interval(np.ones(50, bool), seed=0) == [1.0, 1.0]
    assert accuracy_interval([True], seed=0) is None
    first = accuracy_interval(np.arange(60) % 3 == 0, seed=4)
    assert first == accuracy_interval(np.arange(60) % 3 == 0, seed=4)  # seeded


def test_paired_gain_uses_the_pairs() -> None:
    """Two classifiers that agree on every image but 30 (all won by the second): the paired
    interval excludes 0, though their unpaired intervals overlap."""
    rng = np.random.default_rng(0)
    baseline = rng.random(300) < 0.7
    other = baseline.copy()
    other[np.flatnonzero(~baseline)[:30]] = True
    gain = paired_gain(baseline, other, seed=0)
    assert gain["gain"] == pytest.approx(30 / 300) and gain["separable"] and gain["interval"][0] > 0
    a, b = accuracy_interval(baseline, seed=0), accuracy_interval(other, seed=0)
    assert b[0] < a[1]  # unpaired, they would not be told apart
    same = paired_gain(baseline, baseline, seed=0)
    assert same == {"gain": 0.0, "interval": [0.0, 0.0], "separable": False}
    with pytest.raises(ValueError, match="same images"):
        paired_gain(baseline, other[:10], seed=0)


def _confusions(n: int, seed: int, skill: float) -> np.ndarray:
    """n images of 3 classes, 64 pixels each, predicted right with probability `skill`."""
    from augment.metrics.utility import confusion_matrix

    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=(n, 64))
    guess = np.where(rng.random((n, 64)) < skill, truth, rng.integers(0, 3, size=(n, 64)))
    return np.stack([confusion_matrix(t, g, 3) for t, g in zip(truth, guess)])


def test_miou_interval_matches_a_plain_bootstrap_loop() -> None:
    """Against an independent resampling loop (its own RNG): pooled-pixel mIoU per resample."""
    from augment.metrics.intervals import miou_interval
    from augment.metrics.utility import mean_iou

    confusions = _confusions(120, seed=1, skill=0.7)
    rng = np.random.default_rng(99)
    values = [mean_iou(confusions[rng.integers(0, 120, 120)].sum(axis=0))[0] for _ in range(4000)]
    low, high = miou_interval(confusions, seed=0)
    assert low == pytest.approx(np.percentile(values, 2.5), abs=0.01)
    assert high == pytest.approx(np.percentile(values, 97.5), abs=0.01)
    assert low < mean_iou(confusions.sum(axis=0))[0] < high
    assert miou_interval(np.repeat(confusions[:1], 5, axis=0), seed=0)[0] == pytest.approx(
        mean_iou(confusions[0])[0])  # every image alike: no spread
    assert miou_interval(confusions[:1], seed=0) is None


def test_paired_miou_gain_separates_a_better_segmenter_and_not_a_copy() -> None:
    from augment.metrics.intervals import paired_miou_gain

    weak, strong = _confusions(80, seed=2, skill=0.5), _confusions(80, seed=2, skill=0.8)
    better = paired_miou_gain(weak, strong, seed=0)
    assert better["gain"] > 0 and better["separable"] and better["interval"][0] > 0
    same = paired_miou_gain(weak, weak, seed=0)
    assert same == {"gain": 0.0, "interval": [0.0, 0.0], "separable": False}
    with pytest.raises(ValueError, match="same images"):
        paired_miou_gain(weak, strong[:10], seed=0)
