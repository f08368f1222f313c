"""Distribution-level metrics on feature matrices: Fréchet distance (FID), KID and Inception Score.

Features are [N, D] float arrays from some extractor (Inception-v3 pool3 for the published
numbers; any extractor gives a "Fréchet distance in that feature space"). Every statistic is
accumulated in float64: covariances of 2048-d features lose digits in float32, and FID is a
small difference of large traces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KID_DEGREE = 3  # k(x, y) = (x.y / D + 1)^3, Bińkowski et al. 2018
_KERNEL_CHUNK = 1024  # rows per block of the kernel matrix in `mmd2_unbiased`


def check_features(name: str, features: np.ndarray, *, min_rows: int = 1) -> np.ndarray:
    """`features` as a 2-D float array with at least `min_rows` finite rows; ValueError naming `name` otherwise."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a [N, D] feature matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected float32 or float64 features, got dtype {x.dtype}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name}: needs at least {min_rows} rows and 1 column, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


@dataclass(frozen=True)
class GaussianStats:
    """Mean [D] and unbiased covariance [D, D] (float64) of `n` feature vectors."""

    mean: np.ndarray
    cov: np.ndarray
    n: int


class StatsAccumulator:
    """Streaming mean and covariance of features that arrive in batches.

    Each batch is reduced to (n, mean, M2 = sum of centred outer products) and merged with
    the pairwise update of Chan, Golub & LeVeque (1979): M2 = M2_a + M2_b + d d^T n_a n_b / n,
    d = mean_b - mean_a. Unlike raw sums of x x^T this does not cancel when the features have a
    large mean, and the result does not depend on how the rows were batched (up to rounding).
    """

    def __init__(self) -> None:
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, batch: np.ndarray) -> None:
        """Add the rows of a [B, D] batch."""
        x = check_features("batch", batch).astype(np.float64)
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"batch: has {x.shape[1]} features, earlier batches had {self._mean.shape[0]}")
        n_b = x.shape[0]
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self._mean is None:
            self.n, self._mean, self._m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

    def result(self) -> GaussianStats:
        """Mean and unbiased (n - 1) covariance of everything seen so far."""
        if self._mean is None or self.n < 2:
            raise ValueError(f"StatsAccumulator: a covariance needs at least 2 rows, got {self.n}")
        cov = self._m2 / (self.n - 1)
        return GaussianStats(mean=self._mean.copy(), cov=(cov + cov.T) / 2, n=self.n)


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance of a [N, D] feature matrix (N >= 2)."""
    acc = StatsAccumulator()
    acc.update(check_features("features", features, min_rows=2))
    return acc.result()


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; rounding-level negative eigenvalues count as 0."""
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Fréchet distance between N(mu_a, C_a) and N(mu_b, C_b) (Dowson & Landau 1982; Heusel et al. 2017).

    d^2 = ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2}).
    C_a C_b is similar to the symmetric PSD matrix C_a^{1/2} C_b C_a^{1/2} (same eigenvalues), so
    Tr((C_a C_b)^{1/2}) is the sum of square roots of that matrix's eigenvalues, computed with
    `eigh` and clipped at 0: real by construction, with no complex `sqrtm` and no "imaginary
    component" fallback for singular covariances (N < D). The result is clipped at 0.
    """
    if a.mean.shape != b.mean.shape or a.cov.shape != b.cov.shape:
        raise ValueError(f"frechet_distance: dimensions differ, {a.mean.shape[0]} vs {b.mean.shape[0]}")
    diff = a.mean - b.mean
    sqrt_a = _psd_sqrt(a.cov)
    middle = sqrt_a @ b.cov @ sqrt_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    d2 = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt
    return max(float(d2), 0.0)


def _kernel_sum(x: np.ndarray, y: np.ndarray) -> float:
    """Sum of k(x_i, y_j) over all pairs, in row blocks so the kernel matrix is never whole."""
    d = x.shape[1]
    total = 0.0
    for start in range(0, x.shape[0], _KERNEL_CHUNK):
        block = x[start:start + _KERNEL_CHUNK] @ y.T
        total += float((((block / d) + 1.0) ** KID_DEGREE).sum())
    return total


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two feature sets with the KID kernel (Bińkowski et al. 2018).

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum k(x_i, y_j) / (mn),
    k(x, y) = (x.y / D + 1)^3. Can be negative: it is an unbiased estimate of a quantity >= 0.
    """
    x = check_features("x", x, min_rows=2).astype(np.float64)
    y = check_features("y", y, min_rows=2).astype(np.float64)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd2_unbiased: x has {x.shape[1]} features, y has {y.shape[1]}")
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    # the diagonals k(x_i, x_i) are dropped from the within-set sums (the "unbiased" part)
    diag_x = float((((x * x).sum(axis=1) / d + 1.0) ** KID_DEGREE).sum())
    diag_y = float((((y * y).sum(axis=1) / d + 1.0) ** KID_DEGREE).sum())
    k_xx = (_kernel_sum(x, x) - diag_x) / (m * (m - 1))
    k_yy = (_kernel_sum(y, y) - diag_y) / (n * (n - 1))
    k_xy = _kernel_sum(x, y) / (m * n)
    return k_xx + k_yy - 2.0 * k_xy


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of `mmd2_unbiased` over random subsets (Bińkowski et al. 2018).

    Subsets have s = min(subset_size, len(real), len(fake)) rows, drawn without replacement by
    `np.random.default_rng(seed)` in this order: for each subset, `rng.choice(len(real), s,
    replace=False)` then `rng.choice(len(fake), s, replace=False)`. The std is over subsets with
    ddof=0, as in torchmetrics and torch-fidelity; it measures subset noise, not a standard error.
    """
    real = check_features("real", real, min_rows=2)
    fake = check_features("fake", fake, min_rows=2)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"kid: real has {real.shape[1]} features, fake has {fake.shape[1]}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"kid: subset_size must be >= 2, got {subset_size}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    scores = np.empty(subsets)
    for i in range(subsets):
        real_idx = rng.choice(real.shape[0], size, replace=False)
        fake_idx = rng.choice(fake.shape[0], size, replace=False)
        scores[i] = mmd2_unbiased(real[real_idx], fake[fake_idx])
    return float(scores.mean()), float(scores.std())


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) per split: mean and std over splits (Salimans et al. 2016).

    `probs` are [N, C] class probabilities (softmax outputs, rows summing to 1), not logits.
    p(y) is the mean of p(y|x) within each split. Splits are the contiguous row ranges
    [i N / splits, (i + 1) N / splits), as in the original code: shuffle first if the rows are
    ordered by class. 0 log 0 counts as 0. The std is over splits with ddof=0, as in the
    original code and torch-fidelity (torchmetrics uses ddof=1).
    """
    p = check_features("probs", probs).astype(np.float64)
    if (p < 0).any():
        raise ValueError("probs: contains negative values; expected probabilities (softmax outputs), not logits")
    row_sums = p.sum(axis=1)
    worst = float(np.abs(row_sums - 1.0).max())
    if worst > 1e-3:
        raise ValueError(f"probs: rows must sum to 1 (softmax outputs), one is off by {worst:.3g}")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"inception_score: splits must be in [1, {n}] for {n} rows, got {splits}")
    # log only where p > 0; p(y) > 0 wherever some p(y|x) > 0, so the masked terms are exactly the 0 log 0 ones
    log_p = np.log(np.where(p > 0, p, 1.0))
    scores = np.empty(splits)
    for i in range(splits):
        part, log_part = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0)
        log_marginal = np.log(np.where(marginal > 0, marginal, 1.0))
        kl = (part * (log_part - log_marginal)).sum(axis=1)
        scores[i] = np.exp(kl.mean())
    return float(scores.mean()), float(scores.std())
