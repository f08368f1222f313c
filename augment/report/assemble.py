"""Every number of report.json, from plain values: the real side, the synthetic rows, features.

Two calls, so that the caller owns how features are computed (the job: Ray actors) and
what runs between them (the job: the generator sweep, which needs the real holdout's
features):

1. `measure_features`: per feature space, synthetic vs real holdout and the real-vs-real
   floor (`compare_per_class`), overall and per class;
2. `assemble_report`: the domain classifier's Inception Score and label confidence,
   downstream utility, the verdicts, and the report dict with its stable keys.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from augment.metrics.distribution import inception_score
from augment.metrics.features import DomainExtractor
from augment.metrics.knn import nearest_neighbours
from augment.metrics.preprocess import metric_preprocessing
from augment.metrics.utility import Run, classification_utility, run_here, segmentation_utility
from augment.report.compare import compare_per_class, fd_title
from augment.report.definitions import definitions
from augment.report.inputs import NearestTrain, RealImages, RealSide, SyntheticRows, class_name
from augment.report.verdict import judge
from augment.seeding import derive_seed

log = logging.getLogger("synthaug")

REPORT_SCHEMA = 2  # 2: one "fd" key per metric block, "k_effective", filter counts "filtered"/"by_class"
KID_STREAM, UTILITY_STREAM = 82, 83  # derive_seed(job seed, stream): KID subsets, utility training

Embed = Callable[[np.ndarray, str], np.ndarray]  # (images at the metric size, feature space) -> features


def utility_seed(job_seed: int) -> int:
    """The seed of every report classifier trained on real data: the utility settings, and the
    domain classifier, which is then the real-only setting's model (trained once)."""
    return derive_seed(job_seed, UTILITY_STREAM)


@dataclass(frozen=True)
class ReportSettings:
    """What the report measures, as plain values (the job's `report:` section)."""

    kinds: tuple[str, ...]  # feature spaces in use; the first one also scored the rows
    requested: tuple[str, ...]  # as configured ("domain" is left out of `kinds` without labels)
    k: int
    kid_subsets: int
    kid_subset_size: int
    seed: int  # the job's seed
    utility: bool = True
    utility_steps: int = 300
    segmentation: bool = True

    def utility_seed(self) -> int:
        return utility_seed(self.seed)

    def kid_seed(self) -> int:
        return derive_seed(self.seed, KID_STREAM)

    def compare_kwargs(self) -> dict[str, Any]:
        """The `compare_sets` settings."""
        return {"k": self.k, "kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size,
                "seed": self.kid_seed()}


@dataclass
class FeatureMetrics:
    """`measure_features`' result: {feature space: {"floor" | source: compare_per_class}}."""

    blocks: dict[str, dict[str, Any]]
    first_holdout: np.ndarray | None  # the real holdout in the first feature space (None: no holdout)
    nearest: dict[str, NearestTrain] = field(default_factory=dict)  # by source, first feature space
    near_copy_threshold: float | None = None  # the first feature space's (None: not calibrated)


@contextmanager
def timed(what: str) -> Iterator[None]:
    """A log line per report step with its duration (the report's progress)."""
    started = time.monotonic()
    yield
    log.info("report: %s in %.1fs", what, time.monotonic() - started)


def measure_features(real: RealSide, synthetic: dict[str, SyntheticRows], class_names: list[str],
                     settings: ReportSettings, embed: Embed,
                     near_copy_threshold: float | None) -> FeatureMetrics:
    """Synthetic vs real holdout, and the floor (real train vs the same holdout), per feature space.

    Near copies are counted in the first feature space only: `near_copy_threshold` was set
    there (from real holdout-to-train distances)."""
    blocks: dict[str, dict[str, Any]] = {}
    first_holdout = None
    nearest: dict[str, NearestTrain] = {}
    sets = [real.train.images, real.holdout.images] + [rows.images for rows in synthetic.values()]
    bounds = np.cumsum([0] + [len(images) for images in sets])
    for kind in settings.kinds:
        # One pass over every set: the caller's workers start once per feature space.
        with timed(f"{kind} features of {bounds[-1]:,} images"):
            every = embed(np.concatenate(sets), kind)
        features = [every[a:b] for a, b in pairwise(bounds)]
        train_f, holdout_f = features[0], features[1]
        first = kind == settings.kinds[0]
        if first and len(holdout_f):
            first_holdout = holdout_f
        if first:
            nearest = nearest_train(train_f, dict(zip(synthetic, features[2:])), near_copy_threshold)
        common = {**settings.compare_kwargs(), "train": train_f,
                  "near_copy_threshold": near_copy_threshold if first else None}
        block: dict[str, Any] = {}
        if len(holdout_f):
            with timed(f"{kind} real-vs-real floor"):
                block["floor"] = _floor_counts(compare_per_class(holdout_f, real.holdout.labels, train_f,
                                                                 real.train.labels, class_names,
                                                                 **{**common, "train": None}))
            for (tag, rows), synthetic_f in zip(synthetic.items(), features[2:]):
                with timed(f"{kind} metrics of {tag}"):
                    block[tag] = compare_per_class(holdout_f, real.holdout.labels, synthetic_f, rows.labels,
                                                   class_names, **common)
        blocks[kind] = block
    return FeatureMetrics(blocks, first_holdout, nearest, near_copy_threshold)


def _floor_counts(floor: dict[str, Any]) -> dict[str, Any]:
    """The floor compares real train with the holdout: its "n_synthetic" counts real training
    images, so it is called "n_train" there."""
    def renamed(block: dict[str, Any]) -> dict[str, Any]:
        return {("n_train" if key == "n_synthetic" else key): value for key, value in block.items()}

    return {"overall": renamed(floor["overall"]),
            "per_class": {name: renamed(block) for name, block in floor["per_class"].items()}}


def _resized_once(extractors: dict[str, dict[str, Any]], size: int) -> dict[str, dict[str, Any]]:
    """Extractors whose input size is the metric size resize nothing (the report did, once):
    say so instead of naming a filter they never apply."""
    out = {}
    for kind, described in extractors.items():
        pre = described.get("preprocessing")
        if isinstance(pre, dict) and pre.get("input_size") == size:
            described = {**described, "preprocessing": {**pre, "resize_filter": "none (images arrive at this size)"}}
        out[kind] = described
    return out


def nearest_train(train_f: np.ndarray, synthetic_f: dict[str, np.ndarray],
                  near_copy_threshold: float | None) -> dict[str, NearestTrain]:
    """Each source's rows' nearest real training image (the report's pictures of near copies)."""
    if not len(train_f):
        return {}
    out = {}
    for tag, features in synthetic_f.items():
        if len(features):
            distances, indices = nearest_neighbours(features, train_f)
            out[tag] = NearestTrain(distances, indices, near_copy_threshold)
    return out


def filter_summary(filtered: list[dict[str, Any]], settings: dict[str, Any] | None,
                   class_names: list[str]) -> dict[str, Any]:
    """The report's "filter" block from the rows the quality filter removed (shard metadata)."""
    reasons = Counter(reason for row in filtered for reason in row["reasons"])
    classes = Counter(class_name(row["label"], class_names) for row in filtered)
    return {"active": settings is not None, "settings": settings, "filtered": len(filtered),
            "by_reason": dict(sorted(reasons.items())), "by_class": dict(sorted(classes.items()))}


def assemble_report(job: dict[str, str], real: RealSide, synthetic: dict[str, SyntheticRows],
                    class_names: list[str], settings: ReportSettings, measured: FeatureMetrics,
                    extractors: dict[str, dict[str, Any]], domain: DomainExtractor | None,
                    filter_block: dict[str, Any], sweep: dict[str, Any] | None = None,
                    run: Run = run_here, near_copy_quantile: float | None = None) -> dict[str, Any]:
    """report.json's content. `job`: {"name", "config_hash"}; `extractors`: each feature
    space's `describe()`; `domain`: the domain classifier (None without labels); `sweep`: the
    generator sweep's block, if one ran; `run`: how the utility models are trained (the job:
    parallel Ray tasks); `near_copy_quantile`: how the near-copy threshold was set."""
    preprocessing = metric_preprocessing(real.size, real.channels)
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "job": job,
        "classes": class_names,
        "real": {"origin": real.origin, "train": len(real.train), "holdout": len(real.holdout),
                 "class_counts": {"train": _class_counts(real.train, class_names),
                                  "holdout": _class_counts(real.holdout, class_names)}},
        "preprocessing": preprocessing,
        "sources": {tag: {"rows": rows.rows, "analysed": len(rows.images),
                          "class_counts": _class_counts(rows, class_names)}
                    for tag, rows in synthetic.items()},
        "extractors": _resized_once(extractors, real.size), "metrics": measured.blocks, "inception_score": {},
        "confidence": {}, "verdicts": {}, "filter": filter_block, "notes": [],
        "definitions": definitions(settings.kinds[0], k=settings.k, kid_subsets=settings.kid_subsets,
                                   kid_subset_size=settings.kid_subset_size, resize=preprocessing["resize"],
                                   size=real.size, near_copy_threshold=measured.near_copy_threshold,
                                   near_copy_quantile=near_copy_quantile),
    }
    if domain is None and "domain" in settings.requested:
        report["notes"].append("no class labels: the domain extractor needs them; used a fixed random CNN")
    if not len(real.holdout):
        report["notes"].append("no real holdout (split.holdout is 0): nothing to compare against")
    if sweep is not None:
        report["sweep"] = sweep

    # the domain classifier: Inception Score and label confidence
    if domain is not None:
        seed = derive_seed(settings.seed, KID_STREAM, 1)
        if len(real.holdout):
            report["inception_score"]["real_holdout"] = _inception_score(domain.probs(real.holdout.images), seed)
        for tag, rows in synthetic.items():
            probs = domain.probs(rows.images)
            report["inception_score"][tag] = _inception_score(probs, seed)
            report["confidence"][tag] = _confidence(probs, rows.labels, class_names)

    # train on real / synthetic / both, test on the real holdout
    with timed("utility (train on real / synthetic / both)"):
        report["utility"] = utility(real, synthetic, len(class_names), settings, domain, run)

    report["verdicts"] = verdicts(report, list(synthetic), class_names, settings.kinds[0])
    return report


def verdicts(report: dict[str, Any], sources: list[str], class_names: list[str],
             kind: str) -> dict[str, dict[str, Any]]:
    """One verdict per source, overall and per class, in feature space `kind` (empty without a floor)."""
    block = report["metrics"].get(kind, {})
    floor = block.get("floor")
    out: dict[str, dict[str, Any]] = {}
    for tag in sources:
        lines = {}
        if tag in block and floor is not None:
            confidence = report["confidence"].get(tag, {})
            copies = tag == "classical"  # children are transforms of training images
            lines["overall"] = judge(block[tag]["overall"], floor["overall"], fd_title(kind),
                                     confidence.get("overall"), copies)
            for name in class_names:
                lines[name] = judge(block[tag]["per_class"].get(name, {}), floor["per_class"].get(name),
                                    fd_title(kind), confidence.get("per_class", {}).get(name), copies)
        out[tag] = lines
    return out


def _inception_score(probs: np.ndarray, seed: int) -> dict[str, float]:
    """Inception Score over shuffled splits: shards hold rows grouped by class, and a split
    of one class only would score ~1 whatever the model."""
    splits = max(1, min(10, len(probs) // 50))
    probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    mean, std = inception_score(probs, splits=splits)
    return {"mean": float(mean), "std": float(std), "splits": splits}


def _confidence(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    known = labels >= 0
    if not known.any():
        return {}
    p = probs[np.flatnonzero(known), labels[known]]
    per_class = {name: float(p[labels[known] == c].mean()) for c, name in enumerate(class_names)
                 if (labels[known] == c).any()}
    return {"overall": float(p.mean()), "per_class": per_class}


def _class_counts(rows: RealImages | SyntheticRows, class_names: list[str]) -> dict[str, int]:
    """Rows per class name, in class order; rows without a label count as `UNLABELLED`, last."""
    counts = Counter(rows.labels.tolist())
    ordered = sorted(counts, key=lambda c: (c < 0, c))
    return {class_name(c, class_names): int(counts[c]) for c in ordered}


def utility(real: RealSide, synthetic: dict[str, SyntheticRows], num_classes: int, settings: ReportSettings,
            domain: DomainExtractor | None = None, run: Run = run_here) -> dict[str, Any]:
    """Classification (and segmentation with masks): real / synthetic / real + synthetic. The
    domain classifier is the real-only classifier when its training matches (same data, budget
    and seed); `run` trains the others."""
    if not settings.utility:
        return {"skipped": "report.utility.enabled is false"}
    if not len(real.holdout):
        return {"skipped": "no real holdout"}
    result: dict[str, Any] = {}
    seed = settings.utility_seed()
    rows = list(synthetic.values())
    train_ok, hold_ok = real.train.labels >= 0, real.holdout.labels >= 0
    if train_ok.any() and hold_ok.any():
        synth = None
        if rows:
            images, labels = np.concatenate([r.images for r in rows]), np.concatenate([r.labels for r in rows])
            if (labels >= 0).any():
                synth = (images[labels >= 0], labels[labels >= 0])
        result["classification"] = classification_utility(
            (real.train.images[train_ok], real.train.labels[train_ok]), synth,
            (real.holdout.images[hold_ok], real.holdout.labels[hold_ok]), num_classes, seed=seed,
            steps=settings.utility_steps, input_size=real.size, progress="report: utility classifier", run=run,
            trained=None if domain is None else (domain.model, domain.training))
    masked = [r for r in rows if r.masks is not None]
    if settings.segmentation and real.train.masks is not None and real.holdout.masks is not None:
        synth_seg = None
        if masked:
            synth_seg = (np.concatenate([r.images for r in masked]), np.concatenate([r.masks for r in masked]))
        result["segmentation"] = segmentation_utility(
            (real.train.images, real.train.masks), synth_seg, (real.holdout.images, real.holdout.masks),
            num_classes=int(max(real.train.masks.max(), real.holdout.masks.max())) + 1, seed=seed,
            steps=settings.utility_steps, progress="report: utility segmenter", run=run)
    return result
