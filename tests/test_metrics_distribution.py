"""FID, KID and IS against closed forms and independent implementations (scipy, sklearn, torchmetrics)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from sklearn.metrics.pairwise import polynomial_kernel

from augment.metrics import distribution
from augment.metrics.distribution import (
    GaussianStats,
    StatsAccumulator,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kid,
    mmd2_unbiased,
)


def _correlated(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Gaussian features with a random full covariance, so FID's matrix square root has work to do."""
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift + rng.normal(size=d)


def _fid_sqrtm(a: GaussianStats, b: GaussianStats) -> float:
    """The textbook formula with scipy's general matrix square root (as in pytorch-fid)."""
    covmean = scipy.linalg.sqrtm(a.cov @ b.cov).real
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(covmean))


# --- Fréchet distance ---------------------------------------------------------------------------


def test_frechet_distance_of_commuting_gaussians_has_a_closed_form() -> None:
    # C_a = Q diag(a) Q^T, C_b = Q diag(b) Q^T commute: Tr(C_a + C_b - 2 (C_a C_b)^1/2) = sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(0)
    d = 12
    var_a, var_b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    for q in (np.eye(d), rotation):
        a = GaussianStats(mu_a, q @ np.diag(var_a) @ q.T, 100)
        b = GaussianStats(mu_b, q @ np.diag(var_b) @ q.T, 100)
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
        assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_sqrtm_and_torchmetrics() -> None:
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(1)
    a = gaussian_stats(_correlated(rng, 600, 32))
    b = gaussian_stats(_correlated(rng, 500, 32, shift=0.3))
    ours = frechet_distance(a, b)
    assert ours > 1.0  # the sets differ: a test that cannot pass with 0
    assert ours == pytest.approx(_fid_sqrtm(a, b), rel=1e-4)
    tm = _compute_fid(*(torch.from_numpy(v) for v in (a.mean, a.cov, b.mean, b.cov)))
    assert ours == pytest.approx(float(tm), rel=1e-4)


@pytest.mark.parametrize("n", [300, 20])  # 20 < D: singular covariances
def test_frechet_distance_of_identical_features_is_zero(n: int) -> None:
    rng = np.random.default_rng(2)
    x = _correlated(rng, n, 48, shift=5.0)
    stats = gaussian_stats(x)
    scale = np.trace(stats.cov)
    fid = frechet_distance(stats, gaussian_stats(x.copy()))
    assert 0.0 <= fid <= 1e-9 * scale


def test_accumulator_is_batch_size_invariant_and_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    x = _correlated(rng, 1000, 16, shift=1e4).astype(np.float32)  # a large mean would cancel raw sums
    one_shot = gaussian_stats(x)
    acc = StatsAccumulator()
    for lo, hi in [(0, 1), (1, 8), (8, 300), (300, 301), (301, 1000)]:
        acc.update(x[lo:hi])
    streamed = acc.result()
    assert streamed.n == one_shot.n == 1000
    np.testing.assert_allclose(streamed.mean, one_shot.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.cov, one_shot.cov, rtol=1e-9, atol=1e-12 * np.abs(one_shot.cov).max())
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(one_shot.mean, x64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(one_shot.cov, np.cov(x64, rowvar=False), rtol=1e-8, atol=1e-10)


def test_stats_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.full((3, 4), np.nan))
    acc = StatsAccumulator()
    acc.update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="has 5 features"):
        acc.update(np.zeros((3, 5)))


# --- KID ----------------------------------------------------------------------------------------


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    kw = {"degree": 3, "gamma": 1.0 / x.shape[1], "coef0": 1.0}
    k_xx, k_yy, k_xy = polynomial_kernel(x, x, **kw), polynomial_kernel(y, y, **kw), polynomial_kernel(x, y, **kw)
    m, n = len(x), len(y)
    return ((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
            - 2 * k_xy.mean())


def test_mmd2_unbiased_matches_sklearn_kernel_and_is_chunk_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(120, 10)), rng.normal(size=(90, 10)) * 1.3
    expected = _mmd2_reference(x, y)
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(distribution, "_KERNEL_CHUNK", 7)
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-10)


def test_kid_matches_an_independent_computation_on_the_same_subsets() -> None:
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) + 0.2
    subsets, size, seed = 6, 100, 11
    draw = np.random.default_rng(seed)  # the documented order: real indices, then fake indices
    scores = []
    for _ in range(subsets):
        real_idx = draw.choice(len(real), size, replace=False)
        fake_idx = draw.choice(len(fake), size, replace=False)
        scores.append(_mmd2_reference(real[real_idx], fake[fake_idx]))
    mean, std = kid(real, fake, subsets=subsets, subset_size=size, seed=seed)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10)
    assert std == pytest.approx(np.std(scores), rel=1e-8)
    assert kid(real, fake, subsets=subsets, subset_size=size, seed=seed + 1)[0] != mean


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchmetrics: "Metric `Kernel...` will save all targets"
def test_kid_matches_torchmetrics_on_whole_sets() -> None:
    from torchmetrics.image.kid import KernelInceptionDistance

    # with subset_size = N, torchmetrics' random subsets are permutations, which MMD^2 ignores
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(200, 16)), rng.normal(size=(200, 16)) * 1.2 + 0.1
    metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=2, subset_size=200)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    tm_mean, _ = metric.compute()
    mean, std = kid(real, fake, subsets=2, subset_size=1000)  # capped at the set size
    assert mean == pytest.approx(float(tm_mean), rel=1e-8)
    assert std == pytest.approx(0.0, abs=1e-12 * abs(mean))


def test_kid_is_near_zero_for_the_same_distribution() -> None:
    rng = np.random.default_rng(7)
    real, same, shifted = rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), rng.normal(size=(400, 16)) + 0.5
    kid_same, std_same = kid(real, same, subsets=20, subset_size=200)
    kid_shifted, _ = kid(real, shifted, subsets=20, subset_size=200)
    assert abs(kid_same) < 0.05 * kid_shifted
    assert abs(kid_same) < 2 * std_same  # unbiased: the mean sits inside the subset noise


def test_kid_rejects_bad_arguments() -> None:
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="subsets"):
        kid(x, x, subsets=0)
    with pytest.raises(ValueError, match="fake has 5"):
        kid(x, np.zeros((10, 5)))


# --- Inception Score ----------------------------------------------------------------------------


def test_inception_score_closed_forms() -> None:
    classes = 10
    uniform = np.full((200, classes), 1.0 / classes)
    assert inception_score(uniform) == pytest.approx((1.0, 0.0), abs=1e-12)
    # confident and balanced in every split (20 rows = 2 per class): KL = log C per row
    one_hot = np.tile(np.eye(classes), (20, 1))
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(classes, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    # confident but a single class: p(y) = p(y|x), nothing diverges
    assert inception_score(np.tile(np.eye(classes)[:1], (50, 1)), splits=5)[0] == pytest.approx(1.0)


def test_inception_score_matches_rel_entr_per_split() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(240, 7)) * 3
    probs = scipy.special.softmax(logits, axis=1)
    probs[::5, 0] = 0.0  # exact zeros: 0 log 0 must count as 0
    probs /= probs.sum(axis=1, keepdims=True)
    splits = 4
    per_split = []
    for part in np.array_split(probs, splits):  # 240 / 4: the same contiguous splits
        kl = scipy.special.rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1)
        per_split.append(np.exp(kl.mean()))
    mean, std = inception_score(probs, splits=splits)
    assert mean == pytest.approx(np.mean(per_split), rel=1e-12)
    assert std == pytest.approx(np.std(per_split), rel=1e-9)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchmetrics: feature-storage notice, std of one split
def test_inception_score_matches_torchmetrics() -> None:
    from torchmetrics.image.inception import InceptionScore

    rng = np.random.default_rng(9)
    logits = rng.normal(size=(300, 10)) * 3
    metric = InceptionScore(feature=torch.nn.Identity(), splits=1)  # one split: its shuffle is moot
    metric.update(torch.from_numpy(logits))
    tm_mean, _ = metric.compute()
    mean, _ = inception_score(scipy.special.softmax(logits, axis=1), splits=1)
    assert mean == pytest.approx(float(tm_mean), rel=1e-8)


def test_inception_score_rejects_logits_and_bad_splits() -> None:
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match="logits"):
        inception_score(rng.normal(size=(20, 5)))
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(np.full((20, 5), 0.5))
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.full((4, 5), 0.2), splits=5)
