"""The report stage: features through Ray, then `augment.report` for every number and file.

Reads the published shards (never changes them) and the real side from the source (or
`report.reference`), embeds every set in each configured feature space with Ray Data
actors, and writes OUT/report/report.json (stable keys) and a self-contained report.html.
The job's part is what needs the job: Ray, the config, the shards' filter records and the
generator sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from augment.metrics.judges import JUDGE_NAMES
from augment.metrics.utility import Run
from augment.report.assemble import (
    ReportSettings,
    assemble_report,
    filter_summary,
    measure_features,
    timed,
)
from augment.report.files import write_report as write_report_files
from augment.report.inputs import RealSide, SyntheticRows, read_synthetic
from augment.report.licences import licence_summary
from augment.report.preservation import mask_class_accuracy, preservation_summary, read_scored, worst_pictures
from jobs.config import JobConfig
from jobs.quality import load_domain, load_extractor, load_task_model

log = logging.getLogger("synthaug")

REPORT_DIR = "report"
UTILITY_CACHE = "utility"  # under the reference folder: one JSON per trained utility setting
EMBED_CHUNK = 256
LOCAL_EMBED_VALUES = 20_000_000  # pixel values (N*H*W*C) embedded in the driver: ~6,500 images at 32x32 RGB


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
    """Features of `images` in feature space `kind`: in this process when they are few and
    small (starting a Ray Data pipeline and its actors costs seconds, the digits' 6,000
    16-px images a fraction of one), else in chunks on Ray actors."""
    import ray
    import ray.data

    from jobs.ray_compat import actor_pool

    if not len(images):
        return np.zeros((0, 0), np.float32)
    if images.size <= LOCAL_EMBED_VALUES and kind != "inception":
        return np.asarray(load_extractor(quality, kind)(images), dtype=np.float32)
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


def train_in_parallel(fn: Callable[..., dict[str, Any]], calls: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The utility settings' `Run`: one Ray task each (one CPU, so one torch thread), side by
    side instead of in turn; small CNNs use two threads poorly, two processes well."""
    import ray

    task = ray.remote(num_cpus=1)(_logged_call)
    return ray.get([task.remote(fn, *call) for call in calls])


def _logged_call(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`fn(*args)` in a Ray worker, its progress lines on stderr (Ray forwards them to the driver)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    return fn(*args)


def remembered(run: Run, folder: Path) -> Run:
    """`run`, remembering each call's result in `folder` under the sha256 of the function and
    its arguments (arrays by their bytes): `synthaug report` on a finished job, or a rerun,
    retrains only settings whose data or budget changed."""
    def cached_run(fn: Callable[..., dict[str, Any]], calls: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        paths = [folder / f"{_call_key(fn, call)}.json" for call in calls]
        missing = [i for i, path in enumerate(paths) if not path.is_file()]
        if len(missing) < len(calls):
            log.info("report: reusing %d trained setting(s) from %s", len(calls) - len(missing), folder)
        fresh = run(fn, [calls[i] for i in missing]) if missing else []
        folder.mkdir(parents=True, exist_ok=True)
        for i, result in zip(missing, fresh):
            partial = paths[i].with_suffix(".partial")
            partial.write_text(json.dumps(result))
            partial.replace(paths[i])  # whole or absent
        return [json.loads(path.read_text()) for path in paths]

    return cached_run


def _call_key(fn: Callable[..., Any], call: tuple[Any, ...]) -> str:
    digest = hashlib.sha256(f"{fn.__module__}.{fn.__qualname__}".encode())

    def feed(value: Any) -> None:
        if isinstance(value, np.ndarray):
            digest.update(repr((value.shape, str(value.dtype))).encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, (tuple, list)):
            digest.update(b"(")
            for item in value:
                feed(item)
            digest.update(b")")
        elif isinstance(value, dict):
            feed(sorted(value.items()))
        else:
            digest.update(repr(value).encode())

    feed(call)
    return digest.hexdigest()


def report_settings(config: JobConfig, quality: dict[str, Any]) -> ReportSettings:
    """The job's `report:` section as the plain values `augment.report` takes."""
    report = config.report
    return ReportSettings(kinds=tuple(quality["kinds"]), requested=tuple(report.features), k=report.k,
                          kid_subsets=report.kid_subsets, kid_subset_size=report.kid_subset_size,
                          seed=config.seed, utility=report.utility.enabled,
                          utility_steps=report.utility.steps or report.extractor_steps,
                          segmentation=report.utility.segmentation)


def build_report(config: JobConfig, out: Path, real: RealSide, quality: dict[str, Any],
                 class_names: list[str]) -> tuple[dict[str, Any], dict[str, SyntheticRows]]:
    """Every number of the report, and the synthetic rows it looked at (for the pictures)."""
    from augment.metrics.scoring import RealReference
    from jobs.datasink import read_filtered

    started = time.monotonic()
    settings = report_settings(config, quality)
    shards = out / "shards"
    synthetic = read_synthetic(shards, real.own_tag, real.size, real.channels, config.report.max_per_source,
                               config.seed)
    log.info("report: real %d train / %d holdout; synthetic %s", len(real.train), len(real.holdout),
             {k: len(v.images) for k, v in synthetic.items()} or "none")
    domain = load_domain(quality)
    reference = RealReference.load(Path(quality["dir"]))
    workers = config.execution.num_workers
    measured = measure_features(real, synthetic, class_names, settings,
                                lambda images, kind: embed(images, quality, kind, workers),
                                reference.near_copy_threshold)
    # The pictures of near copies pair each row with its nearest training image.
    synthetic = {tag: replace(rows, nearest=measured.nearest.get(tag)) for tag, rows in synthetic.items()}
    sweep = None
    if config.report.sweep and config.class_steps and measured.first_holdout is not None:
        with timed("sweep"):
            sweep = _sweep(config, out, real, quality, class_names, domain, measured.first_holdout)
    extractors = {kind: (domain if kind == "domain" else load_extractor(quality, kind)).describe()
                  for kind in settings.kinds}
    filtered = [row for path in sorted(shards.glob("*.parquet")) for row in read_filtered(path)]
    report = assemble_report({"name": config.name, "config_hash": config.content_hash()}, real, synthetic,
                             class_names, settings, measured, extractors, domain,
                             filter_summary(filtered, quality.get("filter"), class_names), sweep,
                             run=remembered(train_in_parallel, Path(quality["dir"]) / UTILITY_CACHE),
                             near_copy_quantile=reference.near_copy_quantile)
    for judge in JUDGE_NAMES:
        report[judge] = preservation_summary(read_scored(shards, judge), filtered, class_names, score=judge)
        task_model = load_task_model(quality, judge)
        with timed(f"{judge} per mask class"):
            mask_class_accuracy(task_model, shards, report[judge], class_names, config.report.max_per_source,
                                config.seed)
        report[f"{judge}_model"] = None if task_model is None else task_model.describe()
    report["licences"] = licence_summary(out)  # rows per licence, from every published shard
    report["seconds"] = round(time.monotonic() - started, 1)
    return report, synthetic


def _sweep(config: JobConfig, out: Path, real: RealSide, quality: dict[str, Any], class_names: list[str],
           domain: Any, holdout_f: np.ndarray) -> dict[str, Any] | None:
    """{step kind: its sweep block} for the class-conditional steps with a knob."""
    from augment.metrics.preprocess import to_metric_size
    from augment.report.compare import compare_sets
    from jobs.quality import build_extractor
    from jobs.sweep import sweep_rows, sweep_samples

    settings = config.report
    found = sweep_samples(config, out, class_names, settings.sweep_per_class, settings.sweep)
    if not found:
        return None
    extractor = build_extractor(quality["kinds"][0], quality, domain)
    compare_kwargs = report_settings(config, quality).compare_kwargs()

    def compare(real_f: np.ndarray, fake_f: np.ndarray) -> dict[str, Any]:
        return compare_sets(real_f, fake_f, **compare_kwargs)

    blocks = {}
    for kind, (knob, axis, results) in found.items():
        resized = {value: (np.stack([to_metric_size(im, real.size, real.channels) for im in images]), labels)
                   for value, (images, labels) in results.items()}
        blocks[kind] = sweep_rows(knob, axis, resized, extractor, domain.probs if domain is not None else None,
                                  holdout_f, compare)
    return blocks


def write_report(report: dict[str, Any], out: Path, real: RealSide, synthetic: dict[str, SyntheticRows],
                 quality: dict[str, Any], per_class: int = 8) -> Path:
    """OUT/report/report.json and report.html; returns the path of report.json."""
    worst = {judge: worst_pictures(out / "shards", report.get(judge), report["classes"],
                                   load_task_model(quality, judge)) for judge in JUDGE_NAMES}
    return write_report_files(report, out / REPORT_DIR, real, synthetic, per_class, worst)
