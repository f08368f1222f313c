"""k-NN metrics against the `prdc` package, brute-force references on small sets, and chunk-size invariance.

Exactness (a duplicate at distance exactly 0, samples tied on a k-NN sphere) is checked under a
simulated bad BLAS kernel (`bad_kernel`), not left to the rounding of the machine's kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from prdc.prdc import compute_nearest_neighbour_distances
from scipy.spatial.distance import cdist

from augment.metrics import knn
from augment.metrics.knn import (
    kth_neighbour_radii,
    nearest_neighbours,
    prdc,
    realism_scores,
)


def _two_sets(rng: np.random.Generator, d: int, n_real: int = 300, n_fake: int = 250) -> tuple[np.ndarray, ...]:
    real = rng.normal(size=(n_real, d)).astype(np.float32)
    fake = (rng.normal(size=(n_fake, d)) * 1.1 + 0.25).astype(np.float32)
    return real, fake


# --- radii and nearest neighbours ---------------------------------------------------------------


def test_kth_neighbour_radii_match_prdc_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x[10:13] = x[0]  # duplicates count as neighbours at distance 0, as in prdc
    for k in (1, 3, 5):
        ours = kth_neighbour_radii(x, k)
        brute = np.sort(cdist(x.astype(np.float64), x.astype(np.float64)), axis=1)[:, k]  # column 0 is self
        np.testing.assert_allclose(ours, brute, rtol=1e-9, atol=1e-12)
        # prdc's radii come from |q|^2 + |r|^2 - 2 q.r: a duplicate may read ~1e-7 there, not 0
        np.testing.assert_allclose(ours, compute_nearest_neighbour_distances(x, k), rtol=1e-6, atol=1e-6)
    assert kth_neighbour_radii(x, 2)[0] == 0.0  # three copies of row 0 besides itself


def test_kth_neighbour_radii_do_not_depend_on_chunk() -> None:
    x = np.random.default_rng(1).normal(size=(150, 32))
    base = kth_neighbour_radii(x, 4)
    for chunk in (1, 7, 149, 10_000):
        np.testing.assert_allclose(kth_neighbour_radii(x, 4, chunk=chunk), base, rtol=1e-12)


def test_nearest_neighbours_match_brute_force_and_do_not_depend_on_chunk() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(120, 24)).astype(np.float32) * 1.5
    queries[:5] = reference[[7, 0, 299, 150, 7]]  # exact copies: distance 0, their own index
    full = cdist(queries.astype(np.float64), reference.astype(np.float64))
    for chunk in (None, 1, 16):
        distances, indices = nearest_neighbours(queries, reference, chunk=chunk)
        np.testing.assert_array_equal(indices, full.argmin(axis=1))
        np.testing.assert_allclose(distances, full.min(axis=1), rtol=1e-9)
        np.testing.assert_array_equal(distances[:5], 0.0)


# --- a BLAS kernel that rounds badly -----------------------------------------------------------

EPS = float(np.finfo(np.float64).eps)


@pytest.fixture()
def bad_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast pass with errors as large as a length-D float64 dot product may have.

    Each squared distance moves by (0.5 .. 1) x (D + 2) eps (|q|^2 + |r|^2), random sign (seeded),
    so a duplicate never reads 0 (about 1e-7 of the feature norm as a distance, a few times what
    OpenBLAS's Haswell kernel gives) and near-ties come out in random order.
    """
    exact_kernel = knn._sq_distance_block
    generator = torch.Generator().manual_seed(0)

    def noisy(queries: torch.Tensor, q_norm2: torch.Tensor, reference: torch.Tensor,
              r_norm2: torch.Tensor) -> torch.Tensor:
        d2 = exact_kernel(queries, q_norm2, reference, r_norm2)
        bound = (queries.shape[1] + 2) * EPS * (q_norm2.unsqueeze(1) + r_norm2.unsqueeze(0))
        u = torch.rand(d2.shape, generator=generator, dtype=torch.float64)
        sign = torch.where(torch.rand(d2.shape, generator=generator) < 0.5, -1.0, 1.0).double()
        return d2 + sign * (0.5 + 0.5 * u) * bound

    monkeypatch.setattr(knn, "_sq_distance_block", noisy)


def test_the_bad_kernel_puts_duplicates_apart(bad_kernel: None) -> None:
    x = torch.from_numpy(np.random.default_rng(9).normal(size=(1, 16))).repeat(50, 1)
    norm2 = (x * x).sum(dim=1)
    d2 = knn._sq_distance_block(x, norm2, x, norm2)
    assert (d2 != 0).all() and (d2.clamp(min=0).sqrt() > 1e-8).any()


def test_duplicates_are_exactly_zero_on_a_bad_kernel(bad_kernel: None) -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x[10:13] = x[0]
    x[100:130] = x[50]  # more copies than the candidates taken up front
    brute = np.sort(cdist(x.astype(np.float64), x.astype(np.float64)), axis=1)
    for k in (1, 2, 5):
        radii = kth_neighbour_radii(x, k, chunk=64)
        np.testing.assert_allclose(radii, brute[:, k], rtol=1e-9)
        assert (radii[[0, 10, 11, 12]] == 0.0).all() == (k <= 3)
        assert (radii[100:130] == 0.0).all() and radii[50] == 0.0

    queries = np.concatenate([x[[12, 0, 115, 50, 199]], rng.normal(size=(40, 16)).astype(np.float32)])
    distances, indices = nearest_neighbours(queries, x)
    assert (distances[:5] == 0.0).all()
    assert indices[:5].tolist() == [0, 0, 50, 50, 199]  # ties: the lowest index
    full = cdist(queries.astype(np.float64), x.astype(np.float64))
    np.testing.assert_array_equal(indices, full.argmin(axis=1))
    np.testing.assert_allclose(distances, full.min(axis=1), rtol=1e-9)

    radii = kth_neighbour_radii(x, 3)
    scores = realism_scores(x, radii, queries)
    assert np.isinf(scores[:2]).all()  # copies of row 0, whose radius is at or below the median
    kept = radii <= np.median(radii)
    np.testing.assert_allclose(scores[5:], (radii[kept] / full[5:, kept]).max(axis=1), rtol=1e-9)


def test_points_closer_than_the_kernel_resolves_on_a_bad_kernel(bad_kernel: None) -> None:
    # 40 distinct points within 1e-9 of each other: the fast pass cannot order them at all
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 16))
    x[:40] = x[0] + 1e-9 * rng.normal(size=(40, 16))
    for k in (1, 5):
        brute = np.sort(cdist(x, x), axis=1)[:, k]
        assert (brute[:40] > 0).all() and (brute[:40] < 1e-7).all()
        np.testing.assert_allclose(kth_neighbour_radii(x, k, chunk=32), brute, rtol=1e-9)
    queries = x[:40] + 1e-10
    full = cdist(queries, x[::-1])
    distances, indices = nearest_neighbours(queries, x[::-1].copy())
    np.testing.assert_array_equal(indices, full.argmin(axis=1))
    np.testing.assert_allclose(distances, full.min(axis=1), rtol=1e-6)


# --- precision, recall, density, coverage -------------------------------------------------------


@pytest.mark.parametrize(("d", "k"), [(8, 5), (64, 5), (64, 3), (33, 1)])
def test_prdc_equals_the_prdc_package(d: int, k: int) -> None:
    real, fake = _two_sets(np.random.default_rng(d + k), d)
    expected = compute_prdc(real, fake, nearest_k=k)
    ours = prdc(real, fake, k=k)
    assert set(ours) == {"precision", "recall", "density", "coverage"}
    for name, value in expected.items():
        assert ours[name] == pytest.approx(float(value), abs=1e-6), name
    assert 0.0 < ours["precision"] < 1.0 and 0.0 < ours["recall"] < 1.0  # a test that can fail both ways


def _prdc_brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """prdc from full matrices of direct distances (scipy's cdist): equal pairs of points tie exactly."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    real_radii = np.sort(cdist(real, real), axis=1)[:, k]
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    distances = cdist(real, fake)
    inside = distances < real_radii[:, None]
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((distances < fake_radii[None, :]).any(axis=1).mean()),
        "density": float(inside.sum() / (k * fake.shape[0])),
        "coverage": float(inside.any(axis=1).mean()),
    }


@pytest.mark.parametrize("kernel", ["machine", "bad"])
@pytest.mark.parametrize("k", [1, 5])
def test_prdc_equals_the_prdc_package_when_fake_is_a_subset_of_real(k: int, kernel: str,
                                                                    request: pytest.FixtureRequest) -> None:
    if kernel == "bad":
        request.getfixturevalue("bad_kernel")
    # many fake samples sit exactly on a real sphere (the real sample's k-th neighbour): ties
    real = np.random.default_rng(k).normal(size=(300, 16)).astype(np.float32)
    real[1] = real[0]  # and a duplicate in each set
    fake = real[::2]
    expected = compute_prdc(real, fake, nearest_k=k)
    exact = _prdc_brute_force(real, fake, k)
    for chunk in (None, 7):
        ours = prdc(real, fake, k=k, chunk=chunk)
        for name, value in expected.items():
            assert ours[name] == pytest.approx(float(value), abs=1e-6), name
            assert ours[name] == pytest.approx(exact[name], abs=1e-12), name


@pytest.mark.parametrize("kernel", ["machine", "bad"])
@pytest.mark.parametrize("copy", [False, True])
def test_prdc_of_identical_sets(copy: bool, kernel: str, request: pytest.FixtureRequest) -> None:
    if kernel == "bad":
        request.getfixturevalue("bad_kernel")
    real = np.random.default_rng(3).normal(size=(200, 16))
    # each real sample's k-th neighbour lies on its sphere, not inside: exactly k fakes per sphere
    result = prdc(real, real.copy() if copy else real, k=5)
    assert result == {"precision": 1.0, "recall": 1.0, "density": pytest.approx(1.0, abs=1e-12), "coverage": 1.0}
    expected = compute_prdc(real, real.copy(), nearest_k=5)
    for name, value in expected.items():
        assert result[name] == pytest.approx(float(value), abs=1e-6), name


def test_prdc_of_a_collapsed_generator_on_a_bad_kernel(bad_kernel: None) -> None:
    # every fake sample is one copy of a real sample: fake radii are 0 (no recall), and the copy
    # lies inside the real balls that contain that sample and on the sphere of those whose k-th it is
    real = np.random.default_rng(12).normal(size=(200, 8))
    fake = np.repeat(real[:1], 50, axis=0)
    ours, exact = prdc(real, fake, k=3), _prdc_brute_force(real, fake, 3)
    for name, value in compute_prdc(real, fake, nearest_k=3).items():
        assert ours[name] == pytest.approx(float(value), abs=1e-6), name
        assert ours[name] == pytest.approx(exact[name], abs=1e-12), name
    assert ours["precision"] == 1.0 and ours["recall"] == 0.0


def test_prdc_when_fake_covers_one_of_two_real_clusters() -> None:
    rng = np.random.default_rng(4)
    d, n = 8, 300
    centres = np.zeros((2, d))
    centres[1, 0] = 50.0  # far apart compared with the unit spread
    real = np.concatenate([rng.normal(size=(n, d)) + c for c in centres])
    one_cluster = rng.normal(size=(2 * n, d)) + centres[0]
    both = np.concatenate([rng.normal(size=(n, d)) + c for c in centres])
    partial, full = prdc(real, one_cluster, k=5), prdc(real, both, k=5)
    # the far cluster's real samples can be neither recalled nor covered: at most 0.5
    assert 0.4 <= partial["recall"] <= 0.5 and 0.4 <= partial["coverage"] <= 0.5
    assert partial["precision"] >= 0.8 and partial["precision"] >= full["precision"] - 0.05
    assert full["recall"] >= 0.8 and full["coverage"] >= 0.8


def test_prdc_does_not_depend_on_chunk_or_precomputed_radii() -> None:
    real, fake = _two_sets(np.random.default_rng(5), 16, n_real=130, n_fake=170)
    base = prdc(real, fake, k=4)
    for chunk in (1, 9, 129, 10_000):
        assert prdc(real, fake, k=4, chunk=chunk) == base
    assert prdc(real, fake, k=4, real_radii=kth_neighbour_radii(real, 4, chunk=3)) == base


def test_knn_functions_reject_bad_arguments() -> None:
    x = np.zeros((5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="at least 6 rows"):
        prdc(x, x, k=5)
    with pytest.raises(ValueError, match="chunk"):
        kth_neighbour_radii(x, 1, chunk=0)
    with pytest.raises(ValueError, match="float32 or float64"):
        nearest_neighbours(np.zeros((5, 3), dtype=np.int64), x)
    with pytest.raises(ValueError, match="real_radii"):
        realism_scores(x, np.ones(4), x)


# --- realism --------------------------------------------------------------------------------


def _realism_brute_force(real: np.ndarray, radii: np.ndarray, fake: np.ndarray) -> np.ndarray:
    keep = radii <= np.median(radii)
    with np.errstate(divide="ignore"):
        return (radii[keep][None, :] / cdist(fake, real[keep])).max(axis=1)


def test_realism_matches_brute_force_and_does_not_depend_on_chunk() -> None:
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(200, 12)), rng.normal(size=(90, 12)) * 1.3
    radii = kth_neighbour_radii(real, 5)
    expected = _realism_brute_force(real, radii, fake)
    assert (expected >= 1).any() and (expected < 1).any()
    for chunk in (None, 1, 17):
        np.testing.assert_allclose(realism_scores(real, radii, fake, chunk=chunk), expected, rtol=1e-9)


def test_realism_at_a_real_sample_and_far_away() -> None:
    rng = np.random.default_rng(7)
    real = rng.normal(size=(200, 12)).astype(np.float32)
    radii = kth_neighbour_radii(real, 5)
    kept = np.flatnonzero(radii <= np.median(radii))
    near = real[kept[:3]] + 1e-3 * radii[kept[:3], None] / np.sqrt(12)  # 0.1% of its radius away
    far = real[:3] + 100.0
    scores = realism_scores(real, radii, np.concatenate([real[kept[:3]], near, far]))
    assert np.isinf(scores[:3]).all()  # at a kept real sample: distance 0
    assert (scores[3:6] > 100).all()
    assert (scores[6:] < 1).all()
    np.testing.assert_allclose(scores[3:6], _realism_brute_force(real, radii, near), rtol=1e-6)
