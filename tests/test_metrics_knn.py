"""k-NN metrics against the `prdc` package, brute-force references on small sets, and chunk-size invariance."""

from __future__ import annotations

import numpy as np
import pytest
from prdc import compute_prdc
from prdc.prdc import compute_nearest_neighbour_distances
from scipy.spatial.distance import cdist

from augment.metrics.knn import (
    kth_neighbour_radii,
    memorisation,
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
        np.testing.assert_allclose(ours, compute_nearest_neighbour_distances(x, k), rtol=1e-6)
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


@pytest.mark.parametrize("k", [1, 5])
def test_prdc_equals_the_prdc_package_when_fake_is_a_subset_of_real(k: int) -> None:
    # many fake samples sit exactly on a real sphere (the real sample's k-th neighbour): ties
    real = np.random.default_rng(k).normal(size=(300, 16)).astype(np.float32)
    fake = real[::2]
    expected = compute_prdc(real, fake, nearest_k=k)
    for chunk in (None, 7):
        ours = prdc(real, fake, k=k, chunk=chunk)
        for name, value in expected.items():
            assert ours[name] == pytest.approx(float(value), abs=1e-6), name


@pytest.mark.parametrize("copy", [False, True])
def test_prdc_of_identical_sets(copy: bool) -> None:
    real = np.random.default_rng(3).normal(size=(200, 16))
    # each real sample's k-th neighbour lies on its sphere, not inside: exactly k fakes per sphere
    result = prdc(real, real.copy() if copy else real, k=5)
    assert result == {"precision": 1.0, "recall": 1.0, "density": pytest.approx(1.0, abs=1e-12), "coverage": 1.0}


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


# --- memorisation -------------------------------------------------------------------------------


def test_memorisation_flags_copies_and_about_quantile_of_fresh_samples() -> None:
    rng = np.random.default_rng(8)
    d, n = 16, 2000
    train, holdout, fresh = (rng.normal(size=(n, d)) for _ in range(3))
    holdout_to_train = nearest_neighbours(holdout, train)[0]

    copies = train[rng.choice(n, 300, replace=False)]
    result = memorisation(nearest_neighbours(copies, train)[0], holdout_to_train, quantile=0.01)
    assert result["near_copy"].all() and result["near_copy_fraction"] == 1.0
    assert result["threshold"] == pytest.approx(np.quantile(holdout_to_train, 0.01))
    assert result["median_distance_ratio"] == 0.0

    quantile = 0.05
    result = memorisation(nearest_neighbours(fresh, train)[0], holdout_to_train, quantile=quantile)
    assert result["near_copy"].shape == (n,)
    assert abs(result["near_copy_fraction"] - quantile) < 0.025  # ~3.5 sd of two binomial-ish errors
    assert result["median_distance_ratio"] == pytest.approx(1.0, abs=0.05)


def test_memorisation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quantile"):
        memorisation(np.ones(3), np.ones(3), quantile=1.0)
    with pytest.raises(ValueError, match="holdout_to_train"):
        memorisation(np.ones(3), np.array([1.0, -1.0]))
