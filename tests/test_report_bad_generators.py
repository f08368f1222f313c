"""Deliberately bad "generators" built from real digits, judged in the domain feature space.

- one class only: every requested class gets images of digit 0;
- collapsed: each class gets one image repeated;
- a good one: unseen real images of the right class.
The numbers must move the right way and the verdict must name the problem.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.images import resize_image
from augment.metrics.features import DomainExtractor
from augment.report.compare import compare_per_class
from augment.report.verdict import judge

NAMES = [str(c) for c in range(10)]
KWARGS = {"k": 5, "kid_subsets": 10, "kid_subset_size": 100, "seed": 0}


@pytest.fixture(scope="module")
def digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.stack([resize_image((im * 255 / 16).astype(np.uint8)[..., None], 16) for im in data.images])
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    train, holdout, unseen = order[:1000], order[1000:1400], order[1400:]
    return {"train": (images[train], labels[train]), "holdout": (images[holdout], labels[holdout]),
            "unseen": (images[unseen], labels[unseen])}


@pytest.fixture(scope="module")
def domain(digits: dict[str, tuple[np.ndarray, np.ndarray]]) -> DomainExtractor:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return DomainExtractor.fit(*digits["train"], *digits["holdout"], 10, seed=0, steps=150, width=16)
    finally:
        torch.set_num_threads(threads)


def judge_set(domain: DomainExtractor, digits: dict, images: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
    train_f = domain(digits["train"][0])
    holdout_f, holdout_labels = domain(digits["holdout"][0]), digits["holdout"][1]
    floor = compare_per_class(holdout_f, holdout_labels, train_f, digits["train"][1], NAMES, **KWARGS)
    mine = compare_per_class(holdout_f, holdout_labels, domain(images), labels, NAMES, **KWARGS)
    probs = domain.probs(images)
    confidence = {NAMES[c]: float(probs[labels == c, c].mean()) for c in range(10)}
    verdicts = {name: judge(mine["per_class"][name], floor["per_class"][name], "FD (domain)", confidence[name])
                for name in NAMES}
    return mine, verdicts


def test_good_data_is_judged_good(domain: DomainExtractor, digits: dict) -> None:
    images, labels = digits["unseen"]
    mine, verdicts = judge_set(domain, digits, images, labels)
    assert sum(v["grade"] == "poor" for v in verdicts.values()) <= 1
    assert mine["overall"]["recall"] > 0.7


def test_one_class_only_is_caught_per_class(domain: DomainExtractor, digits: dict) -> None:
    zeros = digits["unseen"][0][digits["unseen"][1] == 0]
    labels = np.arange(len(zeros)) % 10  # asked for every class, drew a 0 each time
    mine, verdicts = judge_set(domain, digits, zeros, labels)
    good, _ = judge_set(domain, digits, *digits["unseen"])
    for name in NAMES[1:]:
        assert verdicts[name]["grade"] == "poor", verdicts[name]
        assert "not its class" in verdicts[name]["line"] or "unrealistic" in verdicts[name]["line"]
        assert mine["per_class"][name]["fd"] > good["per_class"][name]["fd"]
    assert verdicts["0"]["grade"] != "poor"


def test_a_collapsed_generator_loses_recall(domain: DomainExtractor, digits: dict) -> None:
    images, labels = digits["unseen"]
    first = {c: np.flatnonzero(labels == c)[0] for c in range(10)}
    collapsed = np.stack([images[first[c]] for c in labels])  # one image per class, repeated
    mine, verdicts = judge_set(domain, digits, collapsed, labels)
    good, _ = judge_set(domain, digits, images, labels)
    assert mine["overall"]["recall"] < 0.5 * good["overall"]["recall"]
    assert sum("diversity" in v["line"] for v in verdicts.values()) >= 8
