"""Downstream utility: train on real / synthetic / both, test on the real holdout."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from augment.images import resize_image
from augment.metrics.utility import (
    classification_utility,
    confusion_matrix,
    mean_iou,
    segmentation_utility,
)

SHORT = {"steps": 150, "width": 16, "feature_dim": 64}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@lru_cache(maxsize=1)
def digits16() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits as uint8 16x16x1: (train 1200, holdout 597)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)[..., None]
    images = np.stack([resize_image(image, 16) for image in images])
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    train, holdout = order[:1200], order[1200:]
    return (images[train], labels[train]), (images[holdout], labels[holdout])


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares (4..8 px) on a dark noisy 16x16 background; mask 1 on the square."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, 16, 16, 1)).astype(np.uint8)
    masks = np.zeros((n, 16, 16), np.uint16)
    for i in range(n):
        side = int(rng.integers(4, 9))
        y, x = rng.integers(0, 17 - side, size=2)
        images[i, y:y + side, x:x + side] = rng.integers(180, 256, size=(side, side, 1))
        masks[i, y:y + side, x:x + side] = 1
    return images, masks


def test_mean_iou_closed_form() -> None:
    confusion = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2 absent from truth and prediction
    miou, per_class = mean_iou(confusion)
    assert per_class[0] == pytest.approx(3 / 6) and per_class[1] == pytest.approx(4 / 7) and per_class[2] is None
    assert miou == pytest.approx((3 / 6 + 4 / 7) / 2)
    # a class predicted but never true has IoU 0 and counts in the mean
    assert mean_iou(np.array([[2, 1], [0, 0]])) == (pytest.approx(1 / 3), [pytest.approx(2 / 3), 0.0])


def test_confusion_matrix_counts_and_ignores() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 9]])
    predicted = np.array([[0, 1, 1], [0, 2, 2]])
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(truth, predicted, 3, ignore_index=9), expected)


def test_classification_utility_real_vs_shuffled_labels() -> None:
    (train_x, train_y), holdout = digits16()
    shuffled = (train_x, np.random.default_rng(1).permutation(train_y))  # a generator with wrong labels
    result = classification_utility((train_x, train_y), shuffled, holdout, 10, seed=0, **SHORT)
    settings = result["settings"]
    assert settings["real_only"]["accuracy"] >= 0.95
    assert result["classification_accuracy_score"] == settings["synthetic_only"]["accuracy"] <= 0.25  # chance 0.1
    assert settings["real_plus_synthetic"]["accuracy"] < settings["real_only"]["accuracy"]
    assert [settings[name]["n_train"] for name in ("real_only", "synthetic_only", "real_plus_synthetic")] == [
        1200, 1200, 2400]
    assert len(settings["real_only"]["per_class"]) == 10 and result["budget"]["steps"] == 150


def test_classification_utility_is_deterministic_and_skips_without_synthetic() -> None:
    (train_x, train_y), (hold_x, hold_y) = digits16()
    keep = hold_y != 3  # the holdout has no 3: per-class accuracy None there
    args = ((train_x[:300], train_y[:300]), None, (hold_x[keep], hold_y[keep]), 10)
    first = classification_utility(*args, seed=5, steps=20, width=4, feature_dim=16)
    second = classification_utility(*args, seed=5, steps=20, width=4, feature_dim=16)
    assert first == second
    assert first["settings"]["real_only"]["per_class"][3] is None
    assert first["classification_accuracy_score"] is None
    skipped = first["settings"]["synthetic_only"]
    assert skipped["skipped"] == "no synthetic data" and skipped["accuracy"] is None


def test_a_matching_real_only_model_is_reused_and_the_rest_go_through_run() -> None:
    """A classifier trained with the utility's budget, seed and data is its real_only model:
    reused (same accuracy, not trained again); one trained otherwise is not."""
    from augment.metrics.classifier import data_fingerprint, train_classifier

    (train_x, train_y), (hold_x, hold_y) = digits16()
    real, synthetic, holdout = (train_x[:300], train_y[:300]), (train_x[300:600], train_y[300:600]), (hold_x, hold_y)
    budget = {"steps": 20, "width": 4, "feature_dim": 16}
    calls: list[list[str]] = []

    def recording(fn, arms):
        calls.append([arm[0] for arm in arms])
        return [fn(*arm) for arm in arms]

    fresh = classification_utility(real, synthetic, holdout, 10, seed=5, run=recording, **budget)
    model = train_classifier(*real, 10, seed=5, **budget)
    record = {"seed": 5, **budget, "data_sha256": data_fingerprint(*real)}
    reused = classification_utility(real, synthetic, holdout, 10, seed=5, run=recording, trained=(model, record),
                                    **budget)
    other = classification_utility(real, synthetic, holdout, 10, seed=5, run=recording,
                                   trained=(model, {**record, "steps": 21}), **budget)
    assert calls == [["real_only", "synthetic_only", "real_plus_synthetic"], ["synthetic_only", "real_plus_synthetic"],
                     ["real_only", "synthetic_only", "real_plus_synthetic"]]
    assert reused["settings"]["real_only"]["reused"] and other["settings"]["real_only"]["reused"] is None
    for name in ("real_only", "synthetic_only", "real_plus_synthetic"):
        assert reused["settings"][name]["accuracy"] == pytest.approx(fresh["settings"][name]["accuracy"], abs=0.02)
    stale = {**record, "data_sha256": data_fingerprint(train_x[:299], train_y[:299])}
    classification_utility(real, None, holdout, 10, seed=5, run=recording, trained=(model, stale), **budget)
    assert calls[-1] == ["real_only"]


def test_utility_settings_carry_bootstrap_intervals_and_paired_gains() -> None:
    (train_x, train_y), (hold_x, hold_y) = digits16()
    shuffled = (train_x[:300], np.random.default_rng(1).permutation(train_y[:300]))
    result = classification_utility((train_x[:300], train_y[:300]), shuffled, (hold_x, hold_y), 10, seed=0,
                                    steps=60, width=8, feature_dim=32)
    real, fake = result["settings"]["real_only"], result["settings"]["synthetic_only"]
    for scores in (real, fake):
        low, high = scores["interval"]
        assert low <= scores["accuracy"] <= high and high - low < 0.15
        per_class = [i for i in scores["per_class_interval"] if i is not None]
        assert len(per_class) == 10 and all(a <= b for a, b in per_class)
    gain = fake["gain_over_real_only"]  # shuffled labels: far worse, and the holdout can tell
    assert gain["gain"] == pytest.approx(fake["accuracy"] - real["accuracy"])
    assert gain["interval"][1] < 0 and gain["separable"]
    assert real["gain_over_real_only"] is None and "correct" not in real


def test_classification_utility_refuses_mixed_sizes() -> None:
    images, labels = np.zeros((4, 16, 16, 1), np.uint8), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="same image size"):
        classification_utility((images, labels), (np.zeros((4, 8, 8, 1), np.uint8), labels), (images, labels), 2,
                               seed=0, steps=1)


def test_segmentation_utility_on_squares() -> None:
    real, holdout = squares(96, seed=0), squares(32, seed=1)
    empty = (real[0], np.zeros_like(real[1]))  # a generator whose masks miss every square
    result = segmentation_utility(real, empty, holdout, 2, seed=0, steps=80, width=8)
    settings = result["settings"]
    assert settings["real_only"]["mean_iou"] >= 0.85
    assert min(settings["real_only"]["per_class_iou"]) >= 0.75
    bad = settings["synthetic_only"]
    assert result["mean_iou_synthetic_only"] == bad["mean_iou"] < settings["real_only"]["mean_iou"] - 0.2
    assert bad["per_class_iou"][1] < 0.6
    assert settings["real_plus_synthetic"]["n_train"] == 192
    low, high = settings["real_only"]["interval"]  # over the 32 holdout images
    assert low <= settings["real_only"]["mean_iou"] <= high
    assert bad["gain_over_real_only"]["gain"] < 0 and bad["gain_over_real_only"]["separable"]
    assert "confusions" not in bad  # per-image work stays out of the report


def test_segmentation_utility_checks_mask_ids() -> None:
    images, masks = squares(4, seed=0)
    with pytest.raises(ValueError, match="class id 1, outside 0..0"):
        segmentation_utility((images, masks), None, (images, masks), 1, seed=0, steps=1)


@pytest.mark.parametrize("levels, sees_far", [(1, False), (3, True)])
def test_segmenter_levels_set_how_far_a_pixel_sees(levels: int, sees_far: bool) -> None:
    """One level: a pixel's logits ignore a change 20 pixels away; three levels see it. Any
    size (odd ones too) comes back at its own size."""
    import torch

    from augment.metrics.classifier import build_on_meta, init_parameters
    from augment.metrics.utility import TinySegmenter

    net = build_on_meta(lambda: TinySegmenter(3, 4, 8, levels=levels))
    init_parameters(net, torch.Generator().manual_seed(0))
    net.eval()
    x = torch.zeros(1, 3, 37, 45)
    moved = x.clone()
    moved[0, :, 18, 42] = 1.0  # 20 columns right of the pixel read below
    with torch.no_grad():
        before, after = net(x), net(moved)
    assert before.shape == (1, 4, 37, 45)
    assert bool((before[0, :, 18, 22] != after[0, :, 18, 22]).any()) is sees_far


def test_a_one_level_segmenter_keeps_its_weight_names() -> None:
    """Saved one-level segmenters (label-preservation models of earlier jobs) still load."""
    from augment.metrics.utility import TinySegmenter

    names = {k.split(".")[0] for k in TinySegmenter(3, 4, 8).state_dict()}
    assert names == {"stem", "down", "fuse", "head"}
    assert {k.split(".")[0] for k in TinySegmenter(3, 4, 8, levels=3).state_dict()} == names | {"deeper"}


def test_separation_says_when_the_holdout_cannot_tell_the_settings_apart() -> None:
    from augment.metrics.utility import separation

    def scores(accuracy, interval, gain=None):
        return {"accuracy": accuracy, "interval": interval, "gain_over_real_only": gain}

    tied = {"gain": 0.0, "interval": [-0.008, 0.008], "separable": False}
    easy = separation({"real_only": scores(0.989, [0.978, 0.997]), "synthetic_only": scores(0.989, [0.97, 1.0], tied),
                       "real_plus_synthetic": scores(0.989, [0.97, 1.0], tied)})
    assert not easy["separable"] and "too easy" in easy["note"] and "0.989" in easy["note"]
    hard = separation({"real_only": scores(0.70, [0.65, 0.75]), "synthetic_only": scores(0.70, [0.6, 0.8], tied)})
    assert not hard["separable"] and "too easy" not in hard["note"]
    won = {"gain": 0.06, "interval": [0.02, 0.10], "separable": True}
    told = separation({"real_only": scores(0.70, [0.65, 0.75]), "real_plus_synthetic": scores(0.76, [0.7, 0.8], won)})
    assert told["separable"] and "real plus synthetic +0.060" in told["note"]
    assert separation({"real_only": scores(0.7, [0.6, 0.8])}) is None
