"""Report assembly from plain values, without Ray: keys, the effective k, "unlabelled", the filter block."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest

from augment.report.assemble import (
    REPORT_SCHEMA,
    ReportSettings,
    assemble_report,
    filter_summary,
    measure_features,
)
from augment.report.compare import compare_sets, fd_title
from augment.report.files import write_report
from augment.report.inputs import RealImages, RealSide, SyntheticRows

NAMES = ["a", "b"]
SIZE = 8


def _images(rng: np.random.Generator, labels: list[int], shift: int = 0) -> np.ndarray:
    """Class c is brightness 60 + 120 c (+ shift) plus noise: separable and easy to embed."""
    base = np.array([60 + 120 * max(c, 0) + shift for c in labels], np.float64)[:, None, None, None]
    noise = rng.normal(0, 12, size=(len(labels), SIZE, SIZE, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _embed(images: np.ndarray, kind: str) -> np.ndarray:
    """A stand-in feature space: the mean and spread of the four image quadrants."""
    x = images.astype(np.float32)[..., 0]
    half = SIZE // 2
    quads = [x[:, :half, :half], x[:, :half, half:], x[:, half:, :half], x[:, half:, half:]]
    return np.stack([q.mean(axis=(1, 2)) for q in quads] + [q.std(axis=(1, 2)) for q in quads], axis=1)


@pytest.fixture()
def sides() -> tuple[RealSide, dict[str, SyntheticRows]]:
    rng = np.random.default_rng(0)
    train_labels = [0] * 40 + [1] * 40
    holdout_labels = [0] * 20 + [1] * 20
    real = RealSide(RealImages(_images(rng, train_labels), np.array(train_labels), None),
                    RealImages(_images(rng, holdout_labels), np.array(holdout_labels), None),
                    SIZE, 1, "source", "real")
    # class b has 3 synthetic rows only: k is capped to 2 there; 4 rows carry no label
    labels = [0] * 30 + [1] * 3 + [-1] * 4
    images = _images(rng, labels, shift=10)
    synthetic = {"classical": SyntheticRows("classical", 50, images, np.array(labels), None,
                                            np.ones(len(labels)), np.full(len(labels), np.nan))}
    return real, synthetic


def test_fd_key_and_effective_k() -> None:
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(30, 4)), rng.normal(size=(3, 4))
    result = compare_sets(real, fake, k=5, kid_subsets=2, kid_subset_size=10, seed=0)
    assert result["k"] == 5 and result["k_effective"] == 2 and result["fd"] is not None
    tiny = compare_sets(real, fake[:1], k=5, kid_subsets=2, kid_subset_size=10, seed=0)
    assert tiny["k_effective"] is None and tiny["fd"] is None
    assert (fd_title("inception"), fd_title("domain")) == ("FID", "FD (domain)")


def test_assembled_report_has_stable_keys(sides: tuple[RealSide, dict[str, SyntheticRows]], tmp_path) -> None:
    real, synthetic = sides
    settings = ReportSettings(kinds=("random",), requested=("domain",), k=5, kid_subsets=2, kid_subset_size=10,
                              seed=3, utility=False)
    measured = measure_features(real, synthetic, NAMES, settings, _embed, near_copy_threshold=1.0)
    assert measured.first_holdout is not None and len(measured.first_holdout) == len(real.holdout)
    filtered = [{"label": 1, "reasons": ["low_realism"]}, {"label": None, "reasons": ["low_realism", "near_copy"]}]
    report = assemble_report({"name": "t", "config_hash": "0" * 64}, real, synthetic, NAMES, settings, measured,
                             {"random": {"name": "random", "preprocessing": {"input_size": real.size,
                                                                             "resize_filter": "bilinear"}}}, None,
                             filter_summary(filtered, {"min_realism": 1.0}, NAMES), near_copy_quantile=0.01)
    assert report["schema"] == REPORT_SCHEMA
    # one resize filter named: the extractor resizes nothing, the report did once
    assert report["extractors"]["random"]["preprocessing"]["resize_filter"].startswith("none")
    defined = report["definitions"]
    assert defined["near_copy"]["threshold"] == 1.0 and "1% quantile" in defined["near_copy"]["rule"]
    assert "negative" in defined["kid"] and "random feature space" in defined["kid"]
    assert set(defined["grades"]) == {"good", "fair", "poor", "none"}
    floor = report["metrics"]["random"]["floor"]  # the floor counts real training images, and says so
    assert floor["overall"]["n_train"] == len(real.train) and "n_synthetic" not in floor["overall"]
    block = report["metrics"]["random"]["classical"]
    assert block["overall"]["k_effective"] == 5 and block["per_class"]["b"]["k_effective"] == 2
    assert "fd" in block["overall"] and not any(k.startswith("fd_") or k == "fid" for k in block["overall"])
    assert report["sources"]["classical"]["class_counts"] == {"a": 30, "b": 3, "unlabelled": 4}
    assert report["filter"] == {"active": True, "settings": {"min_realism": 1.0}, "filtered": 2,
                                "by_reason": {"low_realism": 2, "near_copy": 1},
                                "by_class": {"b": 1, "unlabelled": 1}}
    assert report["utility"] == {"skipped": "report.utility.enabled is false"}
    assert "no class labels" in report["notes"][0]  # domain was asked for, none could be trained
    assert set(report["verdicts"]["classical"]) == {"overall", "a", "b"}
    assert "FD (random)" in report["verdicts"]["classical"]["overall"]["line"]

    path = write_report(report, tmp_path / "report", real, synthetic, per_class=2)
    assert json.loads(path.read_text())["filter"]["filtered"] == 2
    page = path.with_name("report.html").read_text()
    assert "Quality filter" in page and "<th>FD (random)</th>" in page and "unlabelled: 1" in page
    kid = block["overall"]
    from augment.report.html import _value

    assert " ± " in _value(kid, "kid_mean") and _value(kid, "kid_mean") in page
    assert "Kernel Inception Distance" in page
    assert html.escape(defined["grades"]["poor"]) in page
