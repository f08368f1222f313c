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
