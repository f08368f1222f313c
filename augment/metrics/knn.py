"""k-nearest-neighbour metrics on feature matrices: precision/recall/density/coverage, realism, nearest neighbours.

Two passes per block of `chunk` query rows against the whole reference set, so memory is
O(chunk x M) and never a full N x M matrix (by default a block of float64 is about `BLOCK_BYTES`):

1. fast: squared distances |q|^2 + |r|^2 - 2 q.r in float64 by a matmul, after centring both sets
   on one centre (distances are unchanged, the cancellation is smaller). Its rounding depends on
   the BLAS kernel: OpenBLAS's Haswell kernel puts two copies of a row 4e-8 apart, not 0.
2. exact: every result that the matmul cannot decide within its error bound (`_Pairs.tolerance`)
   is recomputed directly as sum((q - r)^2) in float64 on the features as given. The k nearest
   candidates (plus `_MARGIN` more, so near-ties are not lost) for radii and nearest neighbours;
   the pairs within the bound of a radius for the ball counts; the pairs that could give the
   largest ratio for realism.

The direct distance of a pair does the same operations in the same order wherever it is computed,
and is symmetric, so a duplicate is exactly 0 and two equal difference vectors give bitwise-equal
distances (a sample on a k-NN sphere stays on it, as in exact arithmetic and in `prdc`). Results
therefore depend neither on the BLAS kernel nor on the chunk size. The direct pass costs O(D) per
undecided pair, about k per row for real features (a few % of the matmul at N = 10k). Rows the
matmul cannot resolve at all (more near copies than candidates, e.g. a generator that collapsed
to one image up to float noise inside a spread-out set) are solved again centred on their own
neighbourhood, where the matmul's error bound shrinks with the neighbourhood's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from augment.metrics.distribution import check_features

BLOCK_BYTES = 256 * 2**20  # default size of one block of float64 distances (chunk x M)
# A dot product of length D is off by at most about D eps |q| |r| in float64, so the matmul's
# |q|^2 + |r|^2 - 2 q.r and the direct sum of squares both lie within about 2 (D + 2) eps
# (|q|^2 + |r|^2) of the true value; the factor leaves room for kernels that round worse.
_TOLERANCE_FACTOR = 16.0
_MARGIN = 8  # candidates beyond the k needed, taken up front so that near-ties are not lost
_MAX_DEPTH = 8  # times crowded rows are re-centred on their neighbourhood before going row by row


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


def _sq_distance_block(queries: torch.Tensor, q_norm2: torch.Tensor, reference: torch.Tensor,
                       r_norm2: torch.Tensor) -> torch.Tensor:
    """|q|^2 + |r|^2 - 2 q.r for centred query rows against all centred reference rows (the fast pass).

    Only its error bound is relied on (`_Pairs.tolerance`), never its rounding: a duplicate may come
    out at 1e-15 instead of 0, and slightly negative values are possible.
    """
    d2 = torch.addmm(r_norm2.unsqueeze(0), queries, reference.T, beta=1.0, alpha=-2.0)
    return d2.add_(q_norm2.unsqueeze(1))


@dataclass(frozen=True)
class _Pairs:
    """Queries against reference: the features as given (for direct distances) and, for the matmul,
    both centred on one centre as float64 tensors with their squared norms."""

    queries: np.ndarray
    reference: np.ndarray
    q_centred: torch.Tensor
    q_norm2: torch.Tensor
    r_centred: torch.Tensor
    r_norm2: torch.Tensor

    @classmethod
    def build(cls, queries: np.ndarray, reference: np.ndarray) -> _Pairs:
        """Centre on the reference mean (a copy: the caller's arrays are not touched)."""
        centre = reference.mean(axis=0, dtype=np.float64)
        ref = reference.astype(np.float64)
        ref -= centre
        r = torch.from_numpy(ref)
        if queries is reference:
            q = r
        else:
            qs = queries.astype(np.float64)
            qs -= centre
            q = torch.from_numpy(qs)
        return cls(queries, reference, q, (q * q).sum(dim=1), r, (r * r).sum(dim=1))

    def blocks(self, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start, d2): d2[i, j] = fast squared distance of query start + i to reference j."""
        for start in range(0, self.q_centred.shape[0], chunk):
            stop = start + chunk
            yield start, _sq_distance_block(self.q_centred[start:stop], self.q_norm2[start:stop],
                                            self.r_centred, self.r_norm2)

    def tolerance(self, start: int, rows: int) -> float:
        """Bound on |fast - direct| squared distance for the query rows start .. start + rows."""
        eps = torch.finfo(torch.float64).eps
        scale = float(self.q_norm2[start:start + rows].max()) + float(self.r_norm2.max())
        return _TOLERANCE_FACTOR * (self.q_centred.shape[1] + 2) * eps * scale

    def direct(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """sum((queries[i] - reference[j])^2) in float64 for each pair (rows[p], cols[p]).

        Per pair the same operations in the same order whatever the batch (numpy sums each
        contiguous row on its own), and a - b is exactly -(b - a): equal difference vectors give
        bitwise-equal results, and a duplicate gives exactly 0.
        """
        out = np.empty(len(rows))
        step = max(1, BLOCK_BYTES // (32 * self.queries.shape[1]))  # a quarter block of float64 differences
        for s in range(0, len(rows), step):
            diff = np.subtract(self.queries[rows[s:s + step]], self.reference[cols[s:s + step]], dtype=np.float64)
            np.square(diff, out=diff)
            out[s:s + step] = diff.sum(axis=1)
        return out

    def smallest(self, start: int, d2: torch.Tensor, m: int, *, values_only: bool = False,
                 depth: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The m smallest direct squared distances of each row of a block, ascending: [rows, m] values
        and reference indices (ties: lowest index first; with `values_only`, whichever indices).

        Candidates are the m + `_MARGIN` smallest by the fast pass; the direct distance is computed
        for the first m, and for the others only where they might come before the m-th. A row is
        settled when no other reference row can: every other row is at least the largest
        candidate's fast distance minus the tolerance away. The other rows ("crowded": more rows
        within the tolerance of each other than candidates, e.g. a sub-cluster of near copies in a
        spread-out set) are solved again among the reference rows the fast pass cannot rule out,
        centred on those rows, where the fast pass resolves much finer; or directly row by row where
        that centring does not help.
        """
        rows, columns = d2.shape
        tol = self.tolerance(start, rows)
        width = min(columns, m + _MARGIN)
        fast, idx = torch.topk(d2, width, dim=1, largest=False, sorted=True)
        fast, idx = fast.numpy(), idx.numpy()
        query = np.arange(start, start + rows)
        values = np.full((rows, width), math.inf)
        values[:, :m] = self.direct(np.repeat(query, m), idx[:, :m].ravel()).reshape(rows, m)
        # a row closer than the m-th of these has a fast distance below this bound
        i, j = np.nonzero(fast[:, m:] <= values[:, :m].max(axis=1, keepdims=True) + tol)
        values[i, j + m] = self.direct(query[i], idx[i, j + m])
        order = np.lexsort((idx, values), axis=-1)[:, :m]
        values = np.take_along_axis(values, order, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        if width == columns:
            return values, idx
        last = fast[:, -1]
        settled = values[:, -1] < last - tol
        if values_only:  # nothing is closer than 0: exact copies settle a row however many there are
            settled |= (values[:, -1] <= last - tol) | (values[:, -1] == 0.0)
        crowded = np.flatnonzero(~settled)
        if len(crowded) == 0:
            return values, idx
        # every reference row that might come before a crowded row's m-th candidate (includes those)
        window = d2[torch.from_numpy(crowded)] <= torch.from_numpy(values[crowded, -1] + tol).unsqueeze(1)
        cols = torch.nonzero(window.any(dim=0)).squeeze(1).numpy()  # ascending: index ties keep their order
        local = _Pairs.build(self.queries[start + crowded], self.reference[cols])
        if depth < _MAX_DEPTH and local.tolerance(0, len(crowded)) < tol / 4:
            for s, block in local.blocks(_chunk_rows(None, len(cols))):
                v, i = local.smallest(s, block, m, values_only=values_only, depth=depth + 1)
                values[crowded[s:s + len(v)]], idx[crowded[s:s + len(v)]] = v, cols[i]
            return values, idx
        for r, row in enumerate(crowded):
            cols = torch.nonzero(window[r]).squeeze(1).numpy()
            exact = self.direct(np.full(len(cols), start + row), cols)
            order = np.lexsort((cols, exact))[:m]
            values[row], idx[row] = exact[order], cols[order]
        return values, idx

    def inside(self, start: int, d2: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        """Bool block: direct squared distance < threshold, thresholds broadcast against d2 ([rows, 1] or [1, M]).

        The fast pass decides pairs farther than the tolerance from their threshold; the others
        (ties on a k-NN sphere, duplicates) are decided by the direct distance.
        """
        tol = self.tolerance(start, d2.shape[0])
        inside = d2 < thresholds - tol
        undecided = (d2 <= thresholds + tol).logical_xor_(inside)  # within tol of the threshold
        i, j = torch.nonzero(undecided, as_tuple=True)
        if len(i):
            exact = torch.from_numpy(self.direct(i.numpy() + start, j.numpy()))
            inside[i, j] = exact < thresholds.expand_as(d2)[i, j]
        return inside


def kth_neighbour_radii(features: np.ndarray, k: int, chunk: int | None = None) -> np.ndarray:
    """Distance from each row to its k-th nearest neighbour in the same set, itself excluded: [N] float64.

    As in `prdc` (Naeem et al. 2020): the (k+1)-th smallest distance with the row's distance to
    itself counted as 0, so duplicates of a row do count as its neighbours (a row with k copies
    has radius exactly 0). Exact direct distances, see the module docstring.
    """
    x = check_features("features", features)
    _check_k(k, x.shape[0], "features")
    pairs = _Pairs.build(x, x)
    radii = np.empty(x.shape[0])
    for start, d2 in pairs.blocks(_chunk_rows(chunk, x.shape[0])):
        rows = torch.arange(d2.shape[0])
        d2[rows, start + rows] = -math.inf  # itself: always a candidate (its direct distance is 0)
        values, _ = pairs.smallest(start, d2, k + 1, values_only=True)
        radii[start:start + d2.shape[0]] = np.sqrt(values[:, k])
    return radii


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray,
                       chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-NN of each query row in `reference`: distances [Nq] float64 and indices [Nq] int64.

    Distances are direct (sqrt(sum((q - r)^2)) in float64), so an exact copy reads exactly 0 on any
    BLAS kernel. Ties go to the lowest reference index.
    """
    q = check_features("queries", queries)
    ref = check_features("reference", reference)
    if q.shape[1] != ref.shape[1]:
        raise ValueError(f"nearest_neighbours: queries have {q.shape[1]} features, reference has {ref.shape[1]}")
    pairs = _Pairs.build(q, ref)
    distances = np.empty(q.shape[0])
    indices = np.empty(q.shape[0], dtype=np.int64)
    for start, d2 in pairs.blocks(_chunk_rows(chunk, ref.shape[0])):
        values, idx = pairs.smallest(start, d2, 1)
        distances[start:start + d2.shape[0]] = np.sqrt(values[:, 0])
        indices[start:start + d2.shape[0]] = idx[:, 0]
    return distances, indices


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int | None = None, *,
         real_radii: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    With B(x, r) the open ball and r_i the k-NN radius of real sample i (r'_j of fake j):
      precision = share of fake j inside some B(real_i, r_i)
      recall    = share of real i inside some B(fake_j, r'_j)
      density   = (1 / kM) sum_j #{i : fake_j in B(real_i, r_i)}
      coverage  = share of real i whose nearest fake sample is inside B(real_i, r_i)
    Equal to `prdc.compute_prdc(real, fake, k)` in exact arithmetic, without its N x M matrices
    (and without its dependence on the BLAS kernel where samples tie). Pass
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
    fake_r2 = _inside_threshold(kth_neighbour_radii(fake, k, chunk)).unsqueeze(0)

    # one pass over real (rows) x fake (columns), strict "<" as in prdc
    pairs = _Pairs.build(real, fake)
    in_balls = torch.zeros(fake.shape[0], dtype=torch.int64)  # real balls containing each fake sample
    covered = np.empty(real.shape[0], dtype=bool)  # some fake sample inside the real ball (nearest one is)
    recalled = np.empty(real.shape[0], dtype=bool)  # real sample inside some fake ball
    for start, d2 in pairs.blocks(_chunk_rows(chunk, fake.shape[0])):
        stop = start + d2.shape[0]
        inside = pairs.inside(start, d2, real_r2[start:stop].unsqueeze(1))
        in_balls += inside.sum(dim=0)
        covered[start:stop] = inside.any(dim=1).numpy()
        del inside
        recalled[start:stop] = pairs.inside(start, d2, fake_r2).any(dim=1).numpy()
    in_balls = in_balls.numpy()
    return {
        "precision": float((in_balls > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(in_balls.sum() / (k * fake.shape[0])),
        "coverage": float(covered.mean()),
    }


def realism_scores(real: np.ndarray, real_radii: np.ndarray, fake: np.ndarray,
                   chunk: int | None = None) -> np.ndarray:
    """Realism score of each fake sample (Kynkäänniemi et al. 2019, sec. 5): [Nf] float64.

    R(phi_g) = max_i r_i / ||phi_r_i - phi_g|| over the real samples whose k-NN radius r_i
    (`kth_neighbour_radii(real, k)`) is at or below the median radius: the paper drops the half
    with the largest radii, which are outliers whose big spheres would call anything realistic.
    R >= 1 iff phi_g lies in one of the kept real spheres (closed); R < 1 is outside all of them.

    A fake sample at distance exactly 0 from a kept real sample (a copy) scores `inf`: the ratio
    has no finite bound there, and any cap would be arbitrary. `inf` still compares as realistic,
    sorts first, and points at a copy of a real sample (the report's near-copy share counts those).
    The maximising ratio is computed from the direct distance, so it does not depend on the
    BLAS kernel.
    """
    real = check_features("real", real)
    fake = check_features("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"realism_scores: real has {real.shape[1]} features, fake has {fake.shape[1]}")
    radii = _check_distances("real_radii", real_radii, real.shape[0])
    keep = radii <= np.median(radii)
    kept = np.ascontiguousarray(real[keep])
    kept_radii = radii[keep]
    r = torch.from_numpy(kept_radii).unsqueeze(0)
    pairs = _Pairs.build(fake, kept)

    def ratio(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = kept_radii[cols] / np.sqrt(pairs.direct(rows, cols))
        out[np.isnan(out)] = math.inf  # 0 / 0: a copy of a real sample whose radius is 0
        return out

    scores = np.empty(fake.shape[0])
    for start, d2 in pairs.blocks(_chunk_rows(chunk, kept.shape[0])):
        rows = d2.shape[0]
        # in place (one block in memory): an upper bound of each ratio, r / sqrt(max(d2 - tol, 0))
        upper = d2.sub_(pairs.tolerance(start, rows)).clamp_(min=0.0).sqrt_()
        torch.div(r, upper, out=upper).nan_to_num_(nan=math.inf)
        # the exact ratio of each row's best bound is a lower bound of the row's maximum; only pairs
        # whose bound reaches it can beat it
        block = ratio(np.arange(start, start + rows), upper.argmax(dim=1).numpy())
        i, j = torch.nonzero(upper >= torch.from_numpy(block).unsqueeze(1), as_tuple=True)
        np.maximum.at(block, i.numpy(), ratio(i.numpy() + start, j.numpy()))
        scores[start:start + rows] = block
    return scores
