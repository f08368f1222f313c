"""Per-row scores of synthetic samples, computed before their shard is published.

A `RealReference` holds what scoring needs from the real training split in one feature
space: the features, their k-NN radii (Kynkäänniemi et al. 2019) and the near-copy
threshold taken from real-holdout-to-train distances. `RowScorer` turns images (+ labels)
into realism, classifier confidence, nearest-real-train distance and a near-copy flag.
With a task model (`augment.metrics.preservation`) it also scores label preservation on
the rows made from a parent record whose labels the job carried over.
`filter_reasons` applies the quality filter (the config's `filter:`) to those scores.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.metrics.knn import (
    kth_neighbour_radii,
    nearest_neighbours,
    realism_scores,
)

REFERENCE_ARRAYS = "reference.npz"
REFERENCE_JSON = "reference.json"


@dataclass
class RealReference:
    """The real training split in one feature space, ready for scoring rows against it."""

    extractor: dict[str, Any]  # the extractor's describe(): name, sha256, preprocessing
    features: np.ndarray  # N x D float32
    radii: np.ndarray  # N, distance to the k-th neighbour within the set
    k: int
    near_copy_threshold: float | None  # None: no holdout to calibrate against
    near_copy_quantile: float

    @classmethod
    def build(cls, extractor: dict[str, Any], train_features: np.ndarray, holdout_features: np.ndarray | None,
              k: int, near_copy_quantile: float) -> RealReference:
        train_features = np.ascontiguousarray(train_features, dtype=np.float32)
        if len(train_features) <= k:
            raise ValueError(f"the real training split has {len(train_features)} images; k={k} needs more than k")
        radii = kth_neighbour_radii(train_features, k)
        threshold = None
        if holdout_features is not None and len(holdout_features):
            holdout_to_train, _ = nearest_neighbours(np.asarray(holdout_features, np.float32), train_features)
            threshold = float(np.quantile(holdout_to_train, near_copy_quantile))
        return cls(extractor, train_features, radii.astype(np.float32), k, threshold, near_copy_quantile)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{REFERENCE_ARRAYS}.tmp.npz"
        np.savez(tmp, features=self.features, radii=self.radii)
        tmp.replace(folder / REFERENCE_ARRAYS)
        meta = {"extractor": self.extractor, "k": self.k, "near_copy_threshold": self.near_copy_threshold,
                "near_copy_quantile": self.near_copy_quantile}
        (folder / REFERENCE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path) -> RealReference:
        meta = json.loads((folder / REFERENCE_JSON).read_text())
        with np.load(folder / REFERENCE_ARRAYS, allow_pickle=False) as arrays:
            features, radii = arrays["features"], arrays["radii"]
        return cls(meta["extractor"], features, radii, int(meta["k"]), meta["near_copy_threshold"],
                   float(meta["near_copy_quantile"]))


@dataclass
class RowScores:
    realism: np.ndarray  # Kynkäänniemi realism; >= 1 inside some real k-NN ball
    confidence: np.ndarray  # P(label | image) under the domain classifier; nan without one or a label
    nearest_real: np.ndarray  # distance to the nearest real training image
    near_copy: np.ndarray  # bool
    # The judges' scores (`augment.metrics.judges`): nan where not measured; None: no row was.
    label_preservation: np.ndarray | None = None
    label_consistency: np.ndarray | None = None


class RowScorer:
    """Scores images in the reference's feature space; confidence from the domain classifier;
    each judge's score (`judges`: name -> (frozen task model, the sources whose rows it scores))."""

    def __init__(self, extractor: Any, reference: RealReference, classifier: Any = None,
                 judges: Mapping[str, tuple[Any, Collection[str]]] | None = None) -> None:
        self.extractor = extractor
        self.reference = reference
        self.classifier = classifier  # anything with .probs(images) -> N x C
        self.judges = {name: (model, frozenset(sources)) for name, (model, sources) in (judges or {}).items()}

    def judge(self, samples: Sequence[Any]) -> dict[str, np.ndarray]:
        """{judge name: per sample (at its own size, with its own label and mask) its task model's
        score where the row's `source` is one it judges, nan elsewhere}, for judges with such rows."""
        from augment.metrics.preservation import label_preservation

        out: dict[str, np.ndarray] = {}
        for name, (model, sources) in self.judges.items():
            rows = [i for i, s in enumerate(samples) if s.source in sources]
            if not rows:
                continue
            values = np.full(len(samples), np.nan)
            values[rows] = label_preservation(model, [samples[i].image for i in rows],
                                              labels=[samples[i].label for i in rows],
                                              masks=[samples[i].mask for i in rows])
            out[name] = values
        return out

    def score(self, images: np.ndarray, labels: list[int | None]) -> RowScores:
        features = np.asarray(self.extractor(images), dtype=np.float32)
        ref = self.reference
        realism = realism_scores(ref.features, ref.radii, features)
        nearest, _ = nearest_neighbours(features, ref.features)
        if ref.near_copy_threshold is None:
            near_copy = np.zeros(len(images), dtype=bool)
        else:
            near_copy = nearest <= ref.near_copy_threshold
        confidence = np.full(len(images), np.nan)
        known = [i for i, label in enumerate(labels) if label is not None]
        if self.classifier is not None and known:
            probs = self.classifier.probs(images[known])
            confidence[known] = probs[np.arange(len(known)), [labels[i] for i in known]]
        return RowScores(realism, confidence, nearest, near_copy)


def filter_reasons(scores: RowScores, *, min_realism: float | None, min_confidence: float | None,
                   drop_near_copies: bool, min_label_preservation: float | None = None,
                   min_label_consistency: float | None = None) -> list[list[str]]:
    """Why each row fails the quality filter (an empty list: it passes). A row without a
    confidence or a judge's score (nan: not measured) is not judged on it."""
    reasons: list[list[str]] = [[] for _ in range(len(scores.realism))]
    gates = [(name, gate, getattr(scores, name)) for name, gate in
             (("label_preservation", min_label_preservation), ("label_consistency", min_label_consistency))]
    for i in range(len(reasons)):
        if min_realism is not None and not scores.realism[i] >= min_realism:
            reasons[i].append("low_realism")
        if min_confidence is not None and not np.isnan(scores.confidence[i]) \
                and scores.confidence[i] < min_confidence:
            reasons[i].append("low_confidence")
        if drop_near_copies and scores.near_copy[i]:
            reasons[i].append("near_copy")
        for name, gate, values in gates:
            if gate is not None and values is not None and not np.isnan(values[i]) and values[i] < gate:
                reasons[i].append(f"low_{name}")
    return reasons
