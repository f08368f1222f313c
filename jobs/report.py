"""The report stage: features through Ray, metrics against the real holdout, report files.

Reads the published shards (never changes them), the real side from the source (or
`report.reference`), embeds every set in each configured feature space with Ray Data
actors, and writes OUT/report/report.json (stable keys) and a self-contained report.html.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from augment.images import decode_png
from augment.seeding import derive_seed
from jobs.config import JobConfig
from jobs.quality import (
    RealImages,
    RealSide,
    load_domain,
    load_extractor,
    resize_mask,
    to_metric_size,
)

log = logging.getLogger("synthaug")

REPORT_DIR = "report"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REPORT_SCHEMA = 1
_SUBSAMPLE, _KID, _UTILITY = 81, 82, 83
EMBED_CHUNK = 256


@dataclass
class SyntheticRows:
    """The synthetic rows of one source the report looks at (a seeded subsample)."""

    source: str
    rows: int  # all rows of this source in the shards
    images: np.ndarray  # at the metric size
    labels: np.ndarray  # -1: none
    masks: np.ndarray | None
    realism: np.ndarray  # stored row scores (nan where none)
    confidence: np.ndarray


def read_synthetic(shards: Path, own_tag: str | None, size: int, channels: int, limit: int,
                   seed: int) -> dict[str, SyntheticRows]:
    """Rows of every source other than `own_tag` (None: all rows), by source."""
    files = sorted(shards.glob("*.parquet"))
    if not files:
        return {}
    index = pq.read_table(files, columns=["source"]) if len(files) == 1 else \
        pq.ParquetDataset([str(f) for f in files]).read(columns=["source"])
    tags = np.array(index.column("source").to_pylist(), dtype=object)
    wanted = sorted({str(t) for t in tags if own_tag is None or t != own_tag})
    if not wanted:
        return {}
    table = pq.ParquetDataset([str(f) for f in files]).read(columns=["image", "label", "mask", "source", "scores"])
    out = {}
    for number, tag in enumerate(wanted):
        positions = np.flatnonzero(tags == tag)
        if len(positions) > limit:
            rng = np.random.default_rng(derive_seed(seed, _SUBSAMPLE, number))
            positions = np.sort(rng.choice(positions, size=limit, replace=False))
        rows = table.take(positions).to_pylist()
        images = np.stack([to_metric_size(decode_png(r["image"]["bytes"]), size, channels) for r in rows])
        masks = None
        if all(r["mask"] is not None for r in rows):
            masks = np.stack([resize_mask(_plane(decode_png(r["mask"]["bytes"])), size) for r in rows])
        scores = [r["scores"] or {} for r in rows]
        out[tag] = SyntheticRows(
            tag, int(np.sum(tags == tag)), images,
            np.array([-1 if r["label"] is None else r["label"] for r in rows], dtype=np.int64), masks,
            np.array([np.nan if s.get("realism") is None else s["realism"] for s in scores], dtype=np.float64),
            np.array([np.nan if s.get("confidence") is None else s["confidence"] for s in scores], np.float64))
    return out


def _plane(array: np.ndarray) -> np.ndarray:
    """A decoded mask as H x W (PNG decoding may keep a channel axis)."""
    return array[..., 0] if array.ndim == 3 else array


class EmbedWorker:
    """A Ray Data actor: builds the extractor once, embeds chunks of an object-store array."""

    def __init__(self, quality: dict[str, Any], kind: str, images: list[Any]) -> None:
        import ray

        self.extractor = load_extractor(quality, kind)
        self.images = ray.get(images[0])  # wrapped in a list so Ray hands over the reference

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        starts, stops = batch["start"], batch["stop"]
        index = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
        return {"i": index, "features": np.asarray(self.extractor(self.images[index]), dtype=np.float32)}


def embed(images: np.ndarray, quality: dict[str, Any], kind: str, workers: int) -> np.ndarray:
    """Features of `images` in feature space `kind`, computed in chunks on Ray actors."""
    import ray
    import ray.data

    from jobs.ray_compat import actor_pool

    if not len(images):
        return np.zeros((0, 0), np.float32)
    ref = ray.put(images)
    chunks = [{"start": a, "stop": min(a + EMBED_CHUNK, len(images))} for a in range(0, len(images), EMBED_CHUNK)]
    dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks)).map_batches(
        EmbedWorker, fn_constructor_kwargs={"quality": quality, "kind": kind, "images": [ref]},
        batch_size=1, num_cpus=1, **actor_pool(max(1, min(workers, len(chunks)))))
    parts = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    index = np.concatenate([p["i"] for p in parts])
    features = np.concatenate([p["features"] for p in parts])
    ordered = np.empty_like(features)
    ordered[index] = features
    return ordered


def dropped_summary(shards: Path, active: bool, settings: dict[str, Any] | None) -> dict[str, Any]:
    """What the quality gate removed, read back from the shards' metadata."""
    from jobs.datasink import read_dropped

    dropped = [row for path in sorted(shards.glob("*.parquet")) for row in read_dropped(path)]
    reasons = Counter(reason for row in dropped for reason in row["reasons"])
    classes = Counter(str(row["label"]) for row in dropped)
    return {"active": active, "settings": settings, "dropped": len(dropped),
            "by_reason": dict(sorted(reasons.items())), "by_class_id": dict(sorted(classes.items()))}


@contextmanager
def _timed(what: str) -> Iterator[None]:
    """A log line per report step with its duration (the report's progress)."""
    started = time.monotonic()
    yield
    log.info("report: %s in %.1fs", what, time.monotonic() - started)


def _labelled(rows: RealImages | SyntheticRows) -> np.ndarray:
    return rows.labels >= 0


def build_report(config: JobConfig, out: Path, real: RealSide, quality: dict[str, Any],
                 class_names: list[str]) -> tuple[dict[str, Any], dict[str, SyntheticRows]]:
    """Every number of the report, and the synthetic rows it looked at (for the pictures)."""
    from augment.metrics.distribution import inception_score
    from augment.metrics.scoring import RealReference
    from augment.report.compare import compare_per_class, distance_key
    from augment.report.verdict import judge

    started = time.monotonic()
    settings = config.report
    workers = config.execution.num_workers
    synthetic = read_synthetic(out / "shards", real.own_tag, real.size, real.channels, settings.max_per_source,
                               config.seed)
    log.info("report: real %d train / %d holdout; synthetic %s", len(real.train), len(real.holdout),
             {k: len(v.images) for k, v in synthetic.items()} or "none")
    domain = load_domain(quality)
    reference = RealReference.load(Path(quality["dir"]))
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "job": {"name": config.name, "config_hash": config.content_hash()},
        "classes": class_names,
        "real": {"origin": real.origin, "train": len(real.train), "holdout": len(real.holdout),
                 "class_counts": _class_counts(real, class_names)},
        "preprocessing": {"resize": "bicubic (Pillow)", "size": real.size, "channels": real.channels,
                          "channel_rule": "gray->RGB by repetition, RGB->gray by ITU-R 601 luma",
                          "masks": "nearest neighbour"},
        "sources": {tag: {"rows": rows.rows, "analysed": len(rows.images),
                          "class_counts": dict(Counter(class_names[c] if c >= 0 else "(none)"
                                                       for c in rows.labels.tolist()))}
                    for tag, rows in synthetic.items()},
        "extractors": {}, "metrics": {}, "inception_score": {}, "confidence": {}, "verdicts": {},
        "filter": dropped_summary(out / "shards", quality.get("filter") is not None, quality.get("filter")),
        "notes": [],
    }
    if not quality["domain"] and "domain" in settings.features:
        report["notes"].append("no class labels: the domain extractor needs them; used a fixed random CNN")
    if not len(real.holdout):
        report["notes"].append("no real holdout (split.holdout is 0): nothing to compare against")

    # 1. features, then metrics, per feature space
    first_holdout = None
    sets = [real.train.images, real.holdout.images] + [rows.images for rows in synthetic.values()]
    bounds = np.cumsum([0] + [len(images) for images in sets])
    for kind in quality["kinds"]:
        # One Ray pass over every set: the actors start once per feature space.
        with _timed(f"{kind} features of {bounds[-1]:,} images"):
            every = embed(np.concatenate(sets), quality, kind, workers)
        features = [every[a:b] for a, b in pairwise(bounds)]
        train_f, holdout_f = features[0], features[1]
        if kind == quality["kinds"][0] and len(holdout_f):
            first_holdout = holdout_f
        synthetic_f = dict(zip(synthetic, features[2:]))
        describe = (domain if kind == "domain" else load_extractor(quality, kind)).describe()
        report["extractors"][kind] = describe
        common = {"extractor": kind, "k": settings.k, "kid_subsets": settings.kid_subsets,
                  "kid_subset_size": settings.kid_subset_size, "seed": derive_seed(config.seed, _KID),
                  "train": train_f,
                  "near_copy_threshold": reference.near_copy_threshold if kind == quality["kinds"][0] else None}
        block: dict[str, Any] = {}
        if len(holdout_f):
            with _timed(f"{kind} real-vs-real floor"):
                block["floor"] = compare_per_class(holdout_f, real.holdout.labels, train_f, real.train.labels,
                                                   class_names, **{**common, "train": None})
            for tag, rows in synthetic.items():
                with _timed(f"{kind} metrics of {tag}"):
                    block[tag] = compare_per_class(holdout_f, real.holdout.labels, synthetic_f[tag], rows.labels,
                                                   class_names, **common)
        report["metrics"][kind] = block

    # 2. the generator's knob swept (fidelity vs diversity)
    first = quality["kinds"][0]
    if settings.sweep and config.generate is not None and first_holdout is not None:
        with _timed("sweep"):
            report["sweep"] = _sweep(config, out, real, quality, class_names, domain, first_holdout)

    # 3. the domain classifier: Inception Score and label confidence
    if domain is not None:
        if len(real.holdout):
            report["inception_score"]["real_holdout"] = _is(inception_score, domain.probs(real.holdout.images),
                                                           derive_seed(config.seed, _KID, 1))
        for tag, rows in synthetic.items():
            probs = domain.probs(rows.images)
            report["inception_score"][tag] = _is(inception_score, probs, derive_seed(config.seed, _KID, 1))
            report["confidence"][tag] = _confidence(probs, rows.labels, class_names)

    # 4. train on real / synthetic / both, test on the real holdout
    with _timed("utility (train on real / synthetic / both)"):
        report["utility"] = _utility(config, real, synthetic, len(class_names))

    # 5. verdicts, in the first feature space
    key = distance_key(first)
    block = report["metrics"].get(first, {})
    floor = block.get("floor")
    for tag in synthetic:
        lines = {}
        if tag in block and floor is not None:
            confidence = report["confidence"].get(tag, {})
            copies = tag == "classical"  # children are transforms of training images
            lines["overall"] = judge(block[tag]["overall"], floor["overall"], key, confidence.get("overall"), copies)
            for name in class_names:
                lines[name] = judge(block[tag]["per_class"].get(name, {}), floor["per_class"].get(name), key,
                                    confidence.get("per_class", {}).get(name), copies)
        report["verdicts"][tag] = lines
    report["seconds"] = round(time.monotonic() - started, 1)
    return report, synthetic


def _sweep(config: JobConfig, out: Path, real: RealSide, quality: dict[str, Any], class_names: list[str],
           domain: Any, holdout_f: np.ndarray) -> dict[str, Any] | None:
    from augment.report.compare import compare_sets
    from jobs.quality import build_extractor
    from jobs.sweep import sweep_rows, sweep_samples

    settings = config.report
    got = sweep_samples(config, out, class_names, settings.sweep_per_class, settings.sweep)
    if got is None:
        return None
    knob, results = got
    first = quality["kinds"][0]
    extractor = build_extractor(first, quality, domain)
    resized = {value: (np.stack([to_metric_size(im, real.size, real.channels) for im in images]), labels)
               for value, (images, labels) in results.items()}

    def compare(real_f: np.ndarray, fake_f: np.ndarray) -> dict[str, Any]:
        return compare_sets(real_f, fake_f, extractor=first, k=settings.k, kid_subsets=settings.kid_subsets,
                            kid_subset_size=settings.kid_subset_size, seed=derive_seed(config.seed, _KID))

    return sweep_rows(knob, resized, extractor, domain.probs if domain is not None else None, holdout_f, compare)


def _is(fn: Any, probs: np.ndarray, seed: int) -> dict[str, float]:
    """Inception Score over shuffled splits: shards hold rows grouped by class, and a split
    of one class only would score ~1 whatever the model."""
    splits = max(1, min(10, len(probs) // 50))
    probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    mean, std = fn(probs, splits=splits)
    return {"mean": float(mean), "std": float(std), "splits": splits}


def _confidence(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    known = labels >= 0
    if not known.any():
        return {}
    p = probs[np.flatnonzero(known), labels[known]]
    per_class = {name: float(p[labels[known] == c].mean()) for c, name in enumerate(class_names)
                 if (labels[known] == c).any()}
    return {"overall": float(p.mean()), "per_class": per_class}


def _class_counts(real: RealSide, class_names: list[str]) -> dict[str, dict[str, int]]:
    def count(rows: RealImages) -> dict[str, int]:
        return {class_names[c]: int(n) for c, n in sorted(Counter(rows.labels[rows.labels >= 0].tolist()).items())}
    return {"train": count(real.train), "holdout": count(real.holdout)}


def _utility(config: JobConfig, real: RealSide, synthetic: dict[str, SyntheticRows],
             num_classes: int) -> dict[str, Any]:
    """Classification (and segmentation with masks): real / synthetic / real + synthetic."""
    from augment.metrics.utility import classification_utility, segmentation_utility

    settings = config.report.utility
    result: dict[str, Any] = {}
    if not settings.enabled:
        return {"skipped": "report.utility.enabled is false"}
    if not len(real.holdout):
        return {"skipped": "no real holdout"}
    seed = derive_seed(config.seed, _UTILITY)
    rows = list(synthetic.values())
    synth_images = np.concatenate([r.images for r in rows]) if rows else None
    synth_labels = np.concatenate([r.labels for r in rows]) if rows else None
    train_ok, hold_ok = _labelled(real.train), _labelled(real.holdout)
    if train_ok.any() and hold_ok.any():
        synth = None
        if synth_images is not None and (synth_labels >= 0).any():
            keep = synth_labels >= 0
            synth = (synth_images[keep], synth_labels[keep])
        result["classification"] = classification_utility(
            (real.train.images[train_ok], real.train.labels[train_ok]), synth,
            (real.holdout.images[hold_ok], real.holdout.labels[hold_ok]), num_classes, seed=seed,
            steps=settings.steps)
    masked = [r for r in rows if r.masks is not None]
    if settings.segmentation and real.train.masks is not None and real.holdout.masks is not None:
        synth_seg = None
        if masked:
            synth_seg = (np.concatenate([r.images for r in masked]), np.concatenate([r.masks for r in masked]))
        result["segmentation"] = segmentation_utility(
            (real.train.images, real.train.masks), synth_seg, (real.holdout.images, real.holdout.masks),
            num_classes=int(max(real.train.masks.max(), real.holdout.masks.max())) + 1, seed=seed,
            steps=settings.steps)
    return result


def write_report(report: dict[str, Any], out: Path, real: RealSide, synthetic: dict[str, SyntheticRows],
                 per_class: int = 8) -> Path:
    """report.json (sorted keys, atomic) and the self-contained report.html next to it."""
    from augment.report.html import render_html

    folder = out / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True, default=_json_default) + "\n"
    pictures = {"real": (real.train.images, real.train.labels),
                "synthetic": {tag: (rows.images, rows.labels) for tag, rows in synthetic.items()}}
    page = render_html(json.loads(text), pictures, per_class)  # both rendered before either is replaced
    _write_atomic(folder / REPORT_JSON, text)
    _write_atomic(folder / REPORT_HTML, page)
    return folder / REPORT_JSON


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
