"""The real side of the quality report, prepared before shards are made.

Trains the domain classifier on the real training split (its penultimate layer is the
default feature space; its probabilities give confidence and the Inception Score), embeds
the real train and holdout images in the first configured feature space, and saves both
under OUT/report/reference/ so that shard workers can score synthetic rows (and apply the
quality filter) before a shard is published, and the report stage can reuse them.

Every image is resized to one square `size` (bicubic) and to the job's channel count
before any extractor sees it (`augment.metrics.preprocess`): a named, recorded choice.

When a generate step keeps labels it did not draw (a parent record's, a label map's), its
judge (`augment.metrics.judges`: label preservation, label consistency), a frozen task
model (`augment.metrics.preservation`), is fitted on the job's own source training split,
never on a `report.reference`, and saved next to the domain classifier, so workers can
score the rows. It is reused while its settings match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from augment.metrics.judges import JUDGES, Judge
from augment.metrics.preprocess import resize_mask, to_metric_size
from augment.report.assemble import utility_seed
from augment.report.inputs import RealImages, RealSide
from augment.seeding import derive_seed
from augment.sources.base import SourceRecord, loaded
from jobs.config import JobConfig
from jobs.plan import job_split, open_other_source
from jobs.sources import build_source

log = logging.getLogger("synthaug")

REFERENCE_DIR = Path("report") / "reference"
DOMAIN_DIR = "domain"
QUALITY_JSON = "quality.json"
DEFAULT_MAX_SIZE = 32  # the small CNNs are 4x cheaper than at 64 px and digits-like data lose nothing
RANDOM_SEED_STREAM = 71
SUBSAMPLE_STREAM = 72
WEAK_EXTRACTOR_ACCURACY = 0.8


def load_real(source: Any, records: list[SourceRecord], size: int, channels: int,
              label_map: dict[int, int] | None = None) -> RealImages:
    """Decode `records` at the metric size; records that fail to load are left out.

    `label_map` renames a reference source's class ids to the job's (missing: unlabelled)."""
    images, labels, masks, ids = [], [], [], []
    for record, sample in loaded(source, records, "report"):
        ids.append(record.id)
        if label_map is not None and sample.label is not None:
            sample.label = label_map.get(int(sample.label))
        images.append(to_metric_size(sample.image, size, channels))
        labels.append(-1 if sample.label is None else int(sample.label))
        masks.append(None if sample.mask is None else resize_mask(sample.mask, size))
    have_masks = bool(masks) and all(m is not None for m in masks)
    return RealImages(
        np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8),
        np.array(labels, dtype=np.int64),
        np.stack(masks) if have_masks else None,
        np.array(ids, dtype=object),
    )


def subsample(records: list[SourceRecord], limit: int, seed: int, stream: int) -> list[SourceRecord]:
    """At most `limit` records, a seeded random choice kept in their original order."""
    if len(records) <= limit:
        return records
    rng = np.random.default_rng(derive_seed(seed, SUBSAMPLE_STREAM, stream))
    keep = np.sort(rng.choice(len(records), size=limit, replace=False))
    return [records[int(i)] for i in keep]


def real_side(config: JobConfig, listed: Any, rejected: dict[str, Any]) -> RealSide:
    """Real train / holdout at the metric size: the job's own split, or `report.reference`."""
    usable = [r for r in listed.train if r.id not in rejected]
    if not usable:
        raise ValueError("report: no usable training records to compare against")
    first = listed.source.load(usable[0])
    channels, size = int(first.image.shape[2]), metric_size(config, first.image)
    limit = config.report.max_per_source
    reference = config.report.reference or config.transfer_target
    if reference is None:
        holdout = [r for r in listed.holdout if r.id not in rejected]
        source, label_map, origin = listed.source, None, "source"
    else:
        source, usable, holdout = open_other_source(reference, config.split.holdout, config.seed)
        names = {name: i for i, name in enumerate(listed.class_names)}
        label_map = {i: names[n] for i, n in enumerate(source.class_names) if n in names}
        origin = (f"report.reference ({reference.kind})" if config.report.reference is not None
                  else f"the transfer target ({reference.kind})")
    train = load_real(source, subsample(usable, limit, config.seed, 1), size, channels, label_map)
    held = load_real(source, subsample(holdout, limit, config.seed, 2), size, channels, label_map)
    if len(train) <= config.report.k:
        raise ValueError(f"report: {len(train)} real training images from the {origin}; report.k="
                         f"{config.report.k} needs more")
    # Against the job's own source, its rows are the real side; against a reference, all rows are compared.
    own_tag = first.source if reference is None else None
    return RealSide(train, held, size, channels, origin, own_tag)


def metric_size(config: JobConfig, first_image: np.ndarray) -> int:
    if config.report.input_size is not None:
        return config.report.input_size
    return int(min(DEFAULT_MAX_SIZE, max(first_image.shape[:2])))


def build_extractor(kind: str, quality: dict[str, Any], domain: Any = None) -> Any:
    """The metric feature extractor named `kind` (domain needs the trained classifier)."""
    from augment.metrics.features import InceptionExtractor, RandomExtractor

    if kind == "domain":
        if domain is None:
            raise ValueError("the domain extractor needs labelled real training images")
        return domain
    if kind == "random":
        return RandomExtractor(quality["channels"], seed=quality["seed"], input_size=quality["size"])
    if kind == "inception":
        path = quality.get("inception_path")
        return InceptionExtractor(Path(path) if path else None)
    raise ValueError(f"unknown feature extractor {kind!r}")


def feature_kinds(config: JobConfig, labelled: bool) -> list[str]:
    """The configured feature spaces; without labels there is no domain classifier."""
    kinds = list(dict.fromkeys(config.report.features))
    if not labelled and "domain" in kinds:
        kinds = [k for k in kinds if k != "domain"] or ["random"]
    return kinds


def prepare_reference(config: JobConfig, out: Path, real_train: RealImages, real_holdout: RealImages,
                      num_classes: int, channels: int, size: int, *, listed: Any = None,
                      rejected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or reload) the domain classifier, embed the real split, fit (or reload) the label
    preservation task model; the workers' settings. `listed` / `rejected`: the job's listed
    source and its rejected records (None: the source is listed again here)."""
    quality = _prepare_domain_reference(config, out, real_train, real_holdout, num_classes, channels, size)
    folder = Path(quality["dir"])
    return {**quality, **prepare_judges(config, folder, listed, rejected)}


def _prepare_domain_reference(config: JobConfig, out: Path, real_train: RealImages, real_holdout: RealImages,
                              num_classes: int, channels: int, size: int) -> dict[str, Any]:
    """The domain classifier and the real reference features (quality.json marks them done)."""
    from augment.metrics.features import DomainExtractor
    from augment.metrics.scoring import RealReference

    folder = out / REFERENCE_DIR
    report = config.report
    labelled = bool((real_train.labels >= 0).any())
    kinds = feature_kinds(config, labelled)
    quality = {"dir": str(folder), "size": size, "channels": channels, "kinds": kinds,
               "seed": derive_seed(config.seed, RANDOM_SEED_STREAM),
               "inception_path": str(report.inception_path) if report.inception_path else None,
               "filter": config.filter.model_dump() if config.filter is not None and config.filter.active else None,
               "domain": labelled, "num_classes": num_classes}
    saved = folder / QUALITY_JSON
    # Compared without "dir" (a moved job folder keeps its reference: the path is today's) and
    # "filter" (the gate's thresholds use the reference, they do not shape it; a tuned job changes them).
    if saved.is_file() and {**json.loads(saved.read_text()), "dir": quality["dir"],
                            "filter": quality["filter"]} == quality:
        log.info("quality reference: reusing %s", folder)
        return quality
    folder.mkdir(parents=True, exist_ok=True)
    domain = None
    if labelled:
        keep = real_train.labels >= 0
        hold = real_holdout.labels >= 0
        log.info("quality reference: training the domain classifier on %d real images (%d steps)",
                 int(keep.sum()), report.extractor_steps)
        domain = DomainExtractor.fit(
            real_train.images[keep], real_train.labels[keep],
            real_holdout.images[hold] if hold.any() else None, real_holdout.labels[hold] if hold.any() else None,
            num_classes, seed=utility_seed(config.seed), steps=report.extractor_steps,
            input_size=size, progress="report: domain classifier")
        domain.save(folder / DOMAIN_DIR)
    extractor = build_extractor(kinds[0], quality, domain)
    holdout = extractor(real_holdout.images) if len(real_holdout) else None
    reference = RealReference.build(extractor.describe(), extractor(real_train.images), holdout,
                                    report.k, report.near_copy_quantile)
    reference.save(folder)
    saved.write_text(json.dumps(quality, indent=2, sort_keys=True) + "\n")  # last: marks it complete
    return quality


def judged_sources(config: JobConfig, judge: Judge) -> list[str]:
    """The generate steps whose rows `judge` scores (those making its kind of request)."""
    return [step.kind for step in config.generate if step.family.request == judge.request]


def _source_split(config: JobConfig, listed: Any,
                  rejected: dict[str, Any] | None) -> tuple[Any, list[SourceRecord], list[SourceRecord]]:
    """The job's own source and its training and holdout splits (the plan's), less rejected records."""
    if listed is None:
        source = build_source(config.source, config.seed)
        train, holdout = job_split(source.records(), config.split, config.seed)
    else:
        source, train, holdout = listed.source, listed.train, listed.holdout
    rejected = rejected or {}
    return source, [r for r in train if r.id not in rejected], [r for r in holdout if r.id not in rejected]


def _load_labelled(source: Any, records: list[SourceRecord], task: str,
                   stage: str) -> tuple[list[np.ndarray], list[Any]]:
    """Images and their labels (classification) or masks (segmentation); unusable records left out."""
    images: list[np.ndarray] = []
    targets: list[Any] = []
    for _, sample in loaded(source, records, stage):
        target = sample.label if task == "classification" else sample.mask
        if target is not None:
            images.append(sample.image)
            targets.append(target)
    return images, targets


def prepare_judges(config: JobConfig, folder: Path, listed: Any = None,
                   rejected: dict[str, Any] | None = None) -> dict[str, Any]:
    """{judge name: its workers' settings} for every judge some generate step needs."""
    return {judge.name: settings for judge in JUDGES
            if (settings := prepare_judge(config, folder, judge, listed, rejected)) is not None}


def prepare_judge(config: JobConfig, folder: Path, judge: Judge, listed: Any = None,
                  rejected: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Fit (or reuse) `judge`'s frozen task model when a step makes rows it scores.

    For label preservation class labels win when the training records have them (a
    classifier; digits frames have a label and a digit/background mask, and the label is
    what a content change breaks); otherwise, and always for label consistency, masks (a
    segmenter). Returns the workers' settings: the sources to score, the model's folder
    (None: nothing to fit on) and its task; None when no step makes such rows."""
    from augment.metrics.preservation import fit_task_model, read_config, task_shape

    sources = judged_sources(config, judge)
    if not sources:
        return None
    stage = judge.name.replace("_", " ")
    source, train, holdout = _source_split(config, listed, rejected)
    records = subsample(train, config.report.max_per_source, config.seed, judge.stream)
    labelled = not judge.segmentation_only and any(r.label is not None for r in records)
    task = "classification" if labelled else "segmentation"
    if task == "classification":
        records = [r for r in records if r.label is not None]
    # The first usable record (quietly: the fit's own read below names every skip).
    first = next((sample for _, sample in loaded(source, records, stage, skipped=[])), None)
    if first is None or (task == "segmentation" and first.mask is None):
        log.warning("%s: the source's training records have no %s; rows of %s are not scored", stage,
                    "masks" if judge.segmentation_only else "class labels or masks", ", ".join(sources))
        return {"sources": sources, "dir": None, "task": None}
    class_names = list(source.class_names)
    fingerprint = hashlib.sha256(json.dumps([[r.id, r.label] for r in records]).encode()).hexdigest()
    settings = {"task": task, "source": config.source.model_dump(mode="json"), "records": fingerprint,
                "n_records": len(records), "class_names": class_names,
                "steps": getattr(config.report, judge.steps_field) or config.report.extractor_steps,
                "seed": derive_seed(config.seed, judge.stream),
                "shape": list(task_shape(*first.image.shape[:2])), "channels": int(first.image.shape[2])}
    model_dir = folder / judge.name
    saved = read_config(model_dir)
    if saved is not None and saved.get("training", {}).get("settings") == settings:
        log.info("%s: reusing the task model in %s", stage, model_dir)
        return {"sources": sources, "dir": str(model_dir), "task": task}
    images, targets = _load_labelled(source, records, task, stage)
    if len(images) < 2:
        log.warning("%s: %d usable labelled training images, too few to fit a task model; rows of %s are not "
                    "scored", stage, len(images), ", ".join(sources))
        return {"sources": sources, "dir": None, "task": None}
    log.info("%s: fitting the %s task model on %d source training images (%d steps)",
             stage, task, len(images), settings["steps"])
    model = fit_task_model(images, **{"labels" if task == "classification" else "masks": targets},
                           class_names=class_names, seed=settings["seed"], steps=settings["steps"],
                           shape=tuple(settings["shape"]), progress=f"quality: {stage} model")
    model.training["settings"] = settings
    model.training["source_holdout"] = _ceiling(model, source, holdout, task, config, judge)
    model.save(model_dir)
    return {"sources": sources, "dir": str(model_dir), "task": task}


def _ceiling(model: Any, source: Any, holdout: list[SourceRecord], task: str, config: JobConfig,
             judge: Judge) -> dict[str, Any]:
    """The task model's score on untouched held-out source frames: what a translation that
    changed nothing (or a painter whose images are as good as real ones) would score, so the
    ceiling of every row's score; a segmenter's mIoU and pixel accuracy too. A judge that
    cannot read its own domain (too few fit steps, too little data) makes the score and the
    gate meaningless: say so instead of letting it drop good rows."""
    from augment.metrics.preservation import label_preservation, segmentation_agreement

    stage = judge.name.replace("_", " ")
    records = subsample(holdout, config.report.max_per_source, config.seed, judge.stream)
    images, targets = _load_labelled(source, records, task, stage)
    if not images:
        log.warning("%s: the job keeps no labelled source holdout; the task model's own score "
                    "(the ceiling of a row's score) is not measured", stage)
        return {"images": 0, "mean": None}
    scores = label_preservation(model, images, **{"labels" if task == "classification" else "masks": targets})
    mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else None
    log.info("%s: the task model scores %s on %d untouched held-out source frames (the ceiling of a row's "
             "score)", stage, "n/a" if mean is None else f"{mean:.3f}", len(images))
    gate = getattr(config.filter, judge.filter_field) if config.filter is not None else None
    if mean is not None and gate is not None and mean < gate:
        log.warning("%s: the task model scores %.3f on untouched held-out source frames, below filter.%s %.3f: "
                    "the gate would drop rows as good as real ones; raise report.%s or give the source more frames",
                    stage, mean, judge.filter_field, gate, judge.steps_field)
    ceiling: dict[str, Any] = {"images": len(images), "mean": mean}
    if task == "segmentation":
        ceiling.update(segmentation_agreement(model, images, targets))
    return ceiling


def load_task_model(quality: dict[str, Any], judge: str) -> Any:
    """The saved task model of `judge` (a name), or None when the job scores none."""
    from augment.metrics.preservation import TaskModel

    settings = quality.get(judge)
    if not settings or settings.get("dir") is None:
        return None
    return TaskModel.load(Path(settings["dir"]))


def load_domain(quality: dict[str, Any]) -> Any:
    """The saved domain classifier, or None when the real side has no labels."""
    from augment.metrics.features import DomainExtractor

    return DomainExtractor.load(Path(quality["dir"]) / DOMAIN_DIR) if quality["domain"] else None


def load_extractor(quality: dict[str, Any], kind: str) -> Any:
    """Feature space `kind` as the saved reference defines it (loads only what it needs)."""
    return build_extractor(kind, quality, load_domain(quality) if kind == "domain" else None)


def load_scorer(quality: dict[str, Any]) -> Any:
    """The row scorer a shard worker builds once from the saved reference."""
    from augment.metrics.scoring import RealReference, RowScorer

    domain = load_domain(quality)
    extractor = build_extractor(quality["kinds"][0], quality, domain)
    judges = {judge.name: (model, quality[judge.name]["sources"]) for judge in JUDGES
              if (model := load_task_model(quality, judge.name)) is not None}
    return RowScorer(extractor, RealReference.load(Path(quality["dir"])), classifier=domain, judges=judges)
