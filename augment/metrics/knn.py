"""k-nearest-neighbour metrics on feature matrices: precision/recall/density/coverage, realism, memorisation.

Pairwise distances are computed in blocks of `chunk` query rows against the whole reference
set, so memory is O(chunk x M) and never a full N x M matrix; by default `chunk` is chosen so a
block of float64 distances is about `BLOCK_BYTES`. Squared distances are |q|^2 + |r|^2 - 2 q.r
in float64, after centring both sets on one centre (distances are unchanged, the cancellation is
smaller). Float64 doubles the matmul time against float32; in exchange, a distance and a radius
are only confused at the 1e-16 level, so results match `prdc` (whose sklearn path also works in
float64) and do not depend on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from augment.metrics.distribution import check_features

BLOCK_BYTES = 256 * 2**20  # default size of one block of float64 distances (chunk x M)
# |q|^2 + |r|^2 - 2 q.r is off by at most about (D + 2) eps (|q|^2 + |r|^2) in float64 (a dot
# product's error bound); squared distances below a few times that cannot be told from 0.
_RESOLUTION_FACTOR = 4.0


def _chunk_rows(chunk: int | None, columns: int) -> int:
    if chunk is None:
        return max(1, BLOCK_BYTES // (8 * max(columns, 1)))
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive number of rows, got {chunk!r}")
    return chunk


def _check_k(k: int, n: int, name: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if n < k + 1:
        raise ValueError(f"{name}: the k={k} nearest neighbours need at least {k + 1} rows, got {n}")


def _check_distances(name: str, values: np.ndarray, n: int | None = None) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        expected = "[N]" if n is None else f"[{n}]"
        raise ValueError(f"{name}: expected a {expected} vector of distances, got shape {x.shape}")
    if x.shape[0] == 0 or not np.isfinite(x).all() or (x < 0).any():
        raise ValueError(f"{name}: expected a non-empty vector of finite distances >= 0")
    return x


def _inside_threshold(radii: np.ndarray) -> torch.Tensor:
    """Squared thresholds t with: sqrt(max(d2, 0)) < r exactly when d2 < t.

    Lets the N x M comparisons run on squared distances, no sqrt per pair, with the same ties
    as comparing distances to the radii (a duplicate of a sample's k-th neighbour lies on its
    sphere, not inside, as in prdc). fl(r * r) has sqrt exactly r; step down to the smallest
    value whose sqrt still reaches r. r = 0 contains nothing.
    """
    r = np.asarray(radii, dtype=np.float64)
    t = r * r
    while True:
        below = np.nextafter(t, -np.inf)
        step = (t > 0) & (np.sqrt(np.maximum(below, 0.0)) >= r)
        if not step.any():
            break
        t = np.where(step, below, t)
    t[r == 0] = -np.inf
    return torch.from_numpy(t)


@dataclass(frozen=True)
class _Pairs:
    """Queries and reference centred on one centre, as float64 tensors, with their squared norms."""

    queries: torch.Tensor
    q_norm2: torch.Tensor
    reference: torch.Tensor
    r_norm2: torch.Tensor

    @classmethod
    def build(cls, queries: np.ndarray, reference: np.ndarray, centre: np.ndarray | None = None) -> _Pairs:
        """Centre on `centre` (default: the reference mean)."""
        if centre is None:
            centre = reference.mean(axis=0, dtype=np.float64)
        ref = reference.astype(np.float64)  # always a copy: centring must not touch the caller's array
        ref -= centre
        r = torch.from_numpy(ref)
        if queries is reference:
            q = r
        else:
            qs = queries.astype(np.float64)
            qs -= centre
            q = torch.from_numpy(qs)
        return cls(q, (q * q).sum(dim=1), r, (r * r).sum(dim=1))

    def blocks(self, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start, d2): d2[i, j] = squared distance of query start + i to reference j (may be ~ -1e-13)."""
        for start in range(0, self.queries.shape[0], chunk):
            q = self.queries[start:start + chunk]
            d2 = torch.addmm(self.r_norm2.unsqueeze(0), q, self.reference.T, beta=1.0, alpha=-2.0)
            d2.add_(self.q_norm2[start:start + chunk].unsqueeze(1))
            yield start, d2

    def zero_below(self, start: int, rows: int) -> torch.Tensor:
        """Per query row of a block: squared distances at or below this are rounding noise, i.e. 0."""
        eps = torch.finfo(torch.float64).eps
        dim = self.queries.shape[1]
        scale = self.q_norm2[start:start + rows] + self.r_norm2.max()
        return _RESOLUTION_FACTOR * (dim + 2) * eps * scale


def kth_neighbour_radii(features: np.ndarray, k: int, chunk: int | None = None) -> np.ndarray:
    """Distance from each row to its k-th nearest neighbour in the same set, itself excluded: [N] float64.

    As in `prdc` (Naeem et al. 2020): the (k+1)-th smallest distance with the row's distance to
    itself set to exactly 0, so duplicates of a row do count as its neighbours.
    """
    x = check_features("features", features)
    _check_k(k, x.shape[0], "features")
    pairs = _Pairs.build(x, x)
    radii = np.empty(x.shape[0])
    for start, d2 in pairs.blocks(_chunk_rows(chunk, x.shape[0])):
        rows = torch.arange(d2.shape[0])
        d2[rows, start + rows] = 0.0
        kth = torch.topk(d2, k + 1, dim=1, largest=False, sorted=False).values.amax(dim=1)
        radii[start:start + d2.shape[0]] = kth.clamp(min=0.0).sqrt().numpy()
    return radii


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray,
                       chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-NN of each query row in `reference`: distances [Nq] float64 and indices [Nq] int64.

    Distances below the float64 resolution of the computation (under 1e-6 of the centred feature
    norm) are reported as exactly 0, so an exact copy reads 0 whatever the rounding. Ties go to the
    lowest reference index.
    """
    q = check_features("queries", queries)
    ref = check_features("reference", reference)
    if q.shape[1] != ref.shape[1]:
        raise ValueError(f"nearest_neighbours: queries have {q.shape[1]} features, reference has {ref.shape[1]}")
    pairs = _Pairs.build(q, ref)
    distances = np.empty(q.shape[0])
    indices = np.empty(q.shape[0], dtype=np.int64)
    for start, d2 in pairs.blocks(_chunk_rows(chunk, ref.shape[0])):
        best, idx = d2.min(dim=1)
        best = torch.where(best <= pairs.zero_below(start, d2.shape[0]), 0.0, best)
        distances[start:start + d2.shape[0]] = best.sqrt().numpy()
        indices[start:start + d2.shape[0]] = idx.numpy()
    return distances, indices


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int | None = None, *,
         real_radii: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    With B(x, r) the open ball and r_i the k-NN radius of real sample i (r'_j of fake j):
      precision = share of fake j inside some B(real_i, r_i)
      recall    = share of real i inside some B(fake_j, r'_j)
      density   = (1 / kM) sum_j #{i : fake_j in B(real_i, r_i)}
      coverage  = share of real i whose nearest fake sample is inside B(real_i, r_i)
    Equal to `prdc.compute_prdc(real, fake, k)`, without its N x M matrices. Pass
    `real_radii = kth_neighbour_radii(real, k)` if you already have them (e.g. for
    `realism_scores`) to skip one N x N pass.
    """
    real = check_features("real", real)
    fake = check_features("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"prdc: real has {real.shape[1]} features, fake has {fake.shape[1]}")
    _check_k(k, real.shape[0], "real")
    _check_k(k, fake.shape[0], "fake")
    if real_radii is None:
        real_radii = kth_neighbour_radii(real, k, chunk)
    real_r2 = _inside_threshold(_check_distances("real_radii", real_radii, real.shape[0]))
    fake_r2 = _inside_threshold(kth_neighbour_radii(fake, k, chunk))

    # one pass over real (rows) x fake (columns), strict "<" as in prdc. Real rows and the real
    # mean as centre, as in the real radii's pass: a fake sample that duplicates a real sample's
    # k-th neighbour then gets bitwise the same distance as the radius, and is not inside.
    pairs = _Pairs.build(real, fake, centre=real.mean(axis=0, dtype=np.float64))
    in_balls = torch.zeros(fake.shape[0], dtype=torch.int64)  # real balls containing each fake sample
    recalled = np.empty(real.shape[0], dtype=bool)  # real samples inside some fake ball
    nearest_fake = np.empty(real.shape[0])  # squared distance to the nearest fake sample
    for start, d2 in pairs.blocks(_chunk_rows(chunk, fake.shape[0])):
        stop = start + d2.shape[0]
        in_balls += (d2 < real_r2[start:stop].unsqueeze(1)).sum(dim=0)
        recalled[start:stop] = (d2 < fake_r2.unsqueeze(0)).any(dim=1).numpy()
        nearest_fake[start:stop] = d2.amin(dim=1).numpy()
    in_balls = in_balls.numpy()
    return {
        "precision": float((in_balls > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(in_balls.sum() / (k * fake.shape[0])),
        "coverage": float((nearest_fake < real_r2.numpy()).mean()),
    }


def realism_scores(real: np.ndarray, real_radii: np.ndarray, fake: np.ndarray,
                   chunk: int | None = None) -> np.ndarray:
    """Realism score of each fake sample (Kynkäänniemi et al. 2019, sec. 5): [Nf] float64.

    R(phi_g) = max_i r_i / ||phi_r_i - phi_g|| over the real samples whose k-NN radius r_i
    (`kth_neighbour_radii(real, k)`) is at or below the median radius: the paper drops the half
    with the largest radii, which are outliers whose big spheres would call anything realistic.
    R >= 1 iff phi_g lies in one of the kept real spheres (closed); R < 1 is outside all of them.

    A fake sample at distance 0 from a kept real sample (below float64 resolution, about 1e-6 of
    the feature norm) scores `inf`: the ratio has no finite bound there, and any cap would be
    arbitrary. `inf` still compares as realistic, sorts first, and points at a copy of a real
    sample, which `memorisation` is there to report.
    """
    real = check_features("real", real)
    fake = check_features("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"realism_scores: real has {real.shape[1]} features, fake has {fake.shape[1]}")
    radii = _check_distances("real_radii", real_radii, real.shape[0])
    keep = radii <= np.median(radii)
    kept = np.ascontiguousarray(real[keep])
    r = torch.from_numpy(radii[keep]).unsqueeze(0)
    pairs = _Pairs.build(fake, kept)
    scores = np.empty(fake.shape[0])
    for start, d2 in pairs.blocks(_chunk_rows(chunk, kept.shape[0])):
        zero = d2 <= pairs.zero_below(start, d2.shape[0]).unsqueeze(1)
        ratio = d2.clamp_(min=0.0).sqrt_()  # in place: one block in memory, not three
        torch.div(r, ratio, out=ratio).masked_fill_(zero, math.inf)
        scores[start:start + d2.shape[0]] = ratio.amax(dim=1).numpy()
    return scores


def memorisation(synth_to_train: np.ndarray, holdout_to_train: np.ndarray,
                 quantile: float = 0.01) -> dict[str, Any]:
    """Flag synthetic samples that sit closer to a training image than real unseen images do.

    Inputs are nearest-training-sample distances (`nearest_neighbours(x, train)[0]`) of the
    synthetic samples and of a real holdout split that was not used for training.
    Rule: threshold = the `quantile` quantile of the holdout-to-train distances (numpy's linear
    interpolation); a synthetic sample is a near copy if its distance is <= threshold. A fresh
    sample from the real distribution is flagged with probability about `quantile`, so a
    near-copy fraction well above `quantile` points at memorised training images (in the spirit
    of the data-copying test of Meehan et al. 2020, per sample rather than per cell).

    Returns: threshold, near_copy ([Ns] bool), near_copy_fraction, quantile (the expected
    fraction for a generator that does not copy), median_distance_ratio = median synthetic /
    median holdout distance (< 1: closer to training images than unseen real images are).
    """
    synth = _check_distances("synth_to_train", synth_to_train)
    holdout = _check_distances("holdout_to_train", holdout_to_train)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile: expected a value in (0, 1), got {quantile!r}")
    threshold = float(np.quantile(holdout, quantile))
    near_copy = synth <= threshold
    synth_median, holdout_median = float(np.median(synth)), float(np.median(holdout))
    if holdout_median > 0:
        ratio = synth_median / holdout_median
    else:  # most holdout images duplicate a training image: no scale to compare against
        ratio = math.inf if synth_median > 0 else math.nan
    return {
        "threshold": threshold,
        "near_copy": near_copy,
        "near_copy_fraction": float(near_copy.mean()),
        "quantile": float(quantile),
        "median_distance_ratio": ratio,
    }
