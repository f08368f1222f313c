"""`synthaug fiftyone OUT`: the exported dataset's saved views and FiftyOne Brain runs.

The Brain works on the report's own features (the first feature space of
OUT/report/reference/, the one the rows' realism was scored in), passed as embeddings, so
nothing is downloaded: uniqueness, a similarity index, a 2-D visualisation of real and
synthetic rows, and near copies (memorisation): each synthetic row's nearest real training
row, and the rows within the report's near-copy distance of one.

Saved views: synthetic rows by class; lowest realism first; for every score, the rows a gate
(`filter.min_<score>`) would drop at the 10th and 25th percentile of the synthetic rows'
values; near copies of real training images, closest first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from augment.images import decode_png
from augment.metrics.knn import nearest_neighbours
from augment.metrics.preprocess import to_metric_size
from augment.shards import SCORE_NAMES
from jobs.quality import QUALITY_JSON, REFERENCE_DIR, load_extractor

log = logging.getLogger("synthaug")

GATE_QUANTILES = (0.10, 0.25)
TSNE_MAX_ROWS = 5000  # above this the 2-D map is PCA: t-SNE grows quadratically
SIMILARITY_KEY = "synthaug_similarity"
VISUALIZATION_KEY = "synthaug_map"
EMBED_BATCH = 512


def reference_settings(out: Path) -> dict[str, Any] | None:
    """The saved quality settings of the job's report, with paths as they are now (a moved
    job folder still works); None when the job ran without a report."""
    folder = Path(out) / REFERENCE_DIR
    path = folder / QUALITY_JSON
    if not path.is_file():
        return None
    quality = json.loads(path.read_text())
    quality["dir"] = str(folder)
    return quality


def embed(dataset: Any, quality: dict[str, Any]) -> np.ndarray:
    """Every sample's features in the report's first feature space, in dataset order."""
    extractor = load_extractor(quality, quality["kinds"][0])
    paths = dataset.values("filepath")
    parts = []
    for start in range(0, len(paths), EMBED_BATCH):
        images = np.stack([to_metric_size(decode_png(Path(p).read_bytes()), quality["size"], quality["channels"])
                           for p in paths[start:start + EMBED_BATCH]])
        parts.append(np.asarray(extractor(images), dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def near_copy_threshold(quality: dict[str, Any]) -> float | None:
    """The report's near-copy distance (None: no holdout calibrated it)."""
    from augment.metrics.scoring import RealReference

    return RealReference.load(Path(quality["dir"])).near_copy_threshold


def nearest_real(dataset: Any, features: np.ndarray) -> None:
    """`nearest_real_id` / `nearest_real_distance` on every synthetic sample: its nearest real
    training row in the report's feature space (exact 1-NN)."""
    tags, row_ids, splits = dataset.values(["tags", "row_id", "split"])
    real = np.array([("real" in t) and s == "train" for t, s in zip(tags, splits, strict=True)])
    synthetic = np.array(["synthetic" in t for t in tags])
    if not real.any() or not synthetic.any():
        return
    distances, index = nearest_neighbours(features[synthetic], features[real])
    real_ids = np.asarray(row_ids, dtype=object)[real]
    sample_ids = np.asarray(dataset.values("id"), dtype=object)[synthetic]
    dataset.set_values("nearest_real_id", dict(zip(sample_ids, real_ids[index].tolist(), strict=True)),
                       key_field="id")
    dataset.set_values("nearest_real_distance", dict(zip(sample_ids, distances.tolist(), strict=True)),
                       key_field="id")


def run_brain(dataset: Any, features: np.ndarray, seed: int) -> None:
    import fiftyone.brain as fob

    for key in (SIMILARITY_KEY, VISUALIZATION_KEY):
        if key in dataset.list_brain_runs():
            dataset.delete_brain_run(key)
    log.info("fiftyone brain: uniqueness, similarity index and 2-D map of %d rows (%d-d features)",
             len(features), features.shape[1])
    fob.compute_uniqueness(dataset, embeddings=features, progress=False)
    fob.compute_similarity(dataset, embeddings=features, brain_key=SIMILARITY_KEY, backend="sklearn",
                           progress=False)
    method = "tsne" if len(features) <= TSNE_MAX_ROWS else "pca"
    fob.compute_visualization(dataset, embeddings=features, brain_key=VISUALIZATION_KEY, method=method,
                              seed=seed, verbose=False, progress=False)


def gate_thresholds(values: list[float | None]) -> list[float]:
    """The 10th and 25th percentiles of the measured values (distinct, rounded to 3 figures)."""
    measured = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(measured):
        return []
    return sorted({float(f"{np.quantile(measured, q):.3g}") for q in GATE_QUANTILES})


def save_views(dataset: Any, threshold: float | None) -> list[str]:
    """The saved views (replaced on every export); returns their names."""
    from fiftyone import ViewField as F

    synthetic = dataset.match_tags("synthetic")
    views = {"synthetic_by_class": (synthetic.sort_by("ground_truth.label"), "synthetic rows, sorted by class")}
    if dataset.has_field("scores"):
        views["lowest_realism"] = (synthetic.exists("scores.realism").sort_by("scores.realism"),
                                   "synthetic rows, lowest realism first")
        for name in SCORE_NAMES:
            path = f"scores.{name}"
            values = synthetic.values(path) if synthetic.has_field(path) else []
            for value in gate_thresholds(values):
                slug = f"{value:g}".replace(".", "_").replace("-", "minus_")
                views[f"drop_{name}_below_{slug}"] = (
                    synthetic.match(F(path) < value).sort_by(path),
                    f"rows filter.min_{name}: {value:g} would drop")
    if threshold is not None and dataset.has_field("nearest_real_distance"):
        views["near_copies"] = (synthetic.match(F("nearest_real_distance") <= threshold)
                                .sort_by("nearest_real_distance"),
                                f"synthetic rows within the report's near-copy distance {threshold:.4g} "
                                "of a real training row (nearest_real_id), closest first")
    for name in dataset.list_saved_views():
        if name not in views:
            dataset.delete_saved_view(name)
    for name, (view, description) in views.items():
        dataset.save_view(name, view, description=description, overwrite=True)
    return list(views)
