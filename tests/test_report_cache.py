"""The report remembers trained utility settings: a rerun retrains only what changed."""

from __future__ import annotations

import numpy as np

from jobs.report import remembered


def arm(name: str, images: np.ndarray, budget: dict) -> dict:
    return {"name": name, "mean": float(images.mean()) * budget["scale"]}


def test_remembered_runs_only_calls_it_has_not_seen(tmp_path) -> None:
    seen: list[list[str]] = []

    def run(fn, calls):
        seen.append([call[0] for call in calls])
        return [fn(*call) for call in calls]

    images = np.arange(12, dtype=np.uint8).reshape(3, 2, 2, 1)
    calls = [("a", images, {"scale": 1.0}), ("b", images, {"scale": 2.0})]
    first = remembered(run, tmp_path)(arm, calls)
    again = remembered(run, tmp_path)(arm, calls)
    assert first == again == [arm(*call) for call in calls] and seen == [["a", "b"]]
    changed = images.copy()
    changed[0, 0, 0, 0] = 99  # one pixel: a new training set
    remembered(run, tmp_path)(arm, [("a", changed, {"scale": 1.0}), ("b", images, {"scale": 3.0}), calls[1]])
    assert seen[-1] == ["a", "b"]  # the third is the remembered second call
    assert not list(tmp_path.glob("*.partial"))


def test_embedding_on_ray_actors_matches_the_driver(ray_session, tmp_path, monkeypatch) -> None:
    """Small sets are embedded in the driver, large ones on Ray Data actors: same features."""
    import jobs.report as report
    from augment.metrics.features import RandomExtractor

    quality = {"kinds": ["random"], "channels": 3, "seed": 7, "size": 16, "domain": False, "dir": str(tmp_path)}
    images = np.random.default_rng(0).integers(0, 256, (600, 16, 16, 3), dtype=np.uint8)
    here = report.embed(images, quality, "random", workers=2)
    monkeypatch.setattr(report, "LOCAL_EMBED_VALUES", 0)
    on_actors = report.embed(images, quality, "random", workers=2)
    expected = RandomExtractor(3, seed=7, input_size=16)(images)
    assert here.shape == on_actors.shape == (600, expected.shape[1])
    np.testing.assert_allclose(on_actors, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(here, expected, rtol=1e-4, atol=1e-5)
