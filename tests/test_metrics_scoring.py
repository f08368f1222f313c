"""Row scores before publishing: the near-copy rule of `RealReference` / `RowScorer`, and the filter."""

from __future__ import annotations

import numpy as np
import pytest

from augment.metrics.knn import nearest_neighbours
from augment.metrics.scoring import RealReference, RowScorer, RowScores, filter_reasons


def _identity(features: np.ndarray) -> np.ndarray:
    """The "images" here are feature rows already."""
    return features


def test_near_copies_are_flagged_and_fresh_rows_about_the_quantile() -> None:
    rng = np.random.default_rng(8)
    d, n = 16, 2000
    train, holdout, fresh = (rng.normal(size=(n, d)).astype(np.float32) for _ in range(3))
    quantile = 0.05
    reference = RealReference.build({"name": "identity"}, train, holdout, k=5, near_copy_quantile=quantile)
    holdout_to_train = nearest_neighbours(holdout, train)[0]
    assert reference.near_copy_threshold == pytest.approx(np.quantile(holdout_to_train, quantile))
    scorer = RowScorer(_identity, reference)

    copies = train[rng.choice(n, 300, replace=False)]
    scores = scorer.score(copies, [None] * len(copies))
    assert scores.near_copy.all() and (scores.nearest_real == 0).all()
    assert np.isnan(scores.confidence).all()  # no classifier, no labels

    fresh_scores = scorer.score(fresh, [None] * n)
    assert abs(fresh_scores.near_copy.mean() - quantile) < 0.025  # ~3.5 sd of two binomial-ish errors


def test_without_a_holdout_nothing_is_a_near_copy() -> None:
    train = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    reference = RealReference.build({"name": "identity"}, train, None, k=3, near_copy_quantile=0.01)
    assert reference.near_copy_threshold is None
    assert not RowScorer(_identity, reference).score(train[:5], [None] * 5).near_copy.any()


def test_filter_reasons_name_every_failed_threshold() -> None:
    scores = RowScores(realism=np.array([0.5, 2.0, 2.0, np.nan]), confidence=np.array([0.9, 0.1, np.nan, 0.9]),
                       nearest_real=np.zeros(4), near_copy=np.array([False, False, True, False]))
    reasons = filter_reasons(scores, min_realism=1.0, min_confidence=0.5, drop_near_copies=True)
    # an unknown confidence (no label) never fails; an unknown realism does
    assert reasons == [["low_realism"], ["low_confidence"], ["near_copy"], ["low_realism"]]
    assert filter_reasons(scores, min_realism=None, min_confidence=None, drop_near_copies=False) == [[]] * 4
