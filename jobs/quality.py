"""The real side of the quality report, prepared before shards are made.

Trains the domain classifier on the real training split (its penultimate layer is the
default feature space; its probabilities give confidence and the Inception Score), embeds
the real train and holdout images in the first configured feature space, and saves both
under OUT/report/reference/ so that shard workers can score synthetic rows (and apply the
quality filter) before a shard is published, and the report stage can reuse them.

Every image is resized to one square `size` (bicubic) and to the job's channel count
before any extractor sees it (`augment.metrics.preprocess`): a named, recorded choice.

When a generate step takes a parent record (its rows keep the parent's labels), the frozen
source task model (`augment.metrics.preservation`) is fitted on the job's own source
training split, never on a `report.reference`, and saved next to the domain classifier,
so workers can score label preservation. It is reused while its settings match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from augment.metrics.preprocess import resize_mask, to_metric_size
from augment.report.inputs import RealImages, RealSide
from augment.seeding import derive_seed
from augment.sources.base import SourceRecord, loaded
from jobs.config import JobConfig
from jobs.plan import open_other_source, split_records
from jobs.sources import build_source

log = logging.getLogger("synthaug")

REFERENCE_DIR = Path("report") / "reference"
DOMAIN_DIR = "domain"
LABEL_PRESERVATION_DIR = "label_preservation"
LABEL_PRESERVATION_STREAM = 73  # derive_seed(job seed, stream): the task model's weights, batches, subsample
SCORED_REQUESTS = ("parent",)  # the families whose rows get label_preservation: those carrying a parent's labels
QUALITY_JSON = "quality.json"
DEFAULT_MAX_SIZE = 32  # the small CNNs are 4x cheaper than at 64 px and digits-like data lose nothing
RANDOM_SEED_STREAM = 71
SUBSAMPLE_STREAM = 72
WEAK_EXTRACTOR_ACCURACY = 0.8


def load_real(source: Any, records: list[SourceRecord], size: int, channels: int,
              label_map: dict[int, int] | None = None) -> RealImages:
    """Decode `records` at the metric size; records that fail to load are left out.

    `label_map` renames a reference source's class ids to the job's (missing: unlabelled)."""
    images, labels, masks = [], [], []
    for _, sample in loaded(source, records, "report"):
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
    return {**quality, "label_preservation": prepare_label_preservation(config, folder, listed, rejected)}


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
    if saved.is_file() and json.loads(saved.read_text()) == quality:
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
            num_classes, seed=derive_seed(config.seed, RANDOM_SEED_STREAM, 1), steps=report.extractor_steps,
            input_size=size, progress="report: domain classifier")
        domain.save(folder / DOMAIN_DIR)
    extractor = build_extractor(kinds[0], quality, domain)
    holdout = extractor(real_holdout.images) if len(real_holdout) else None
    reference = RealReference.build(extractor.describe(), extractor(real_train.images), holdout,
                                    report.k, report.near_copy_quantile)
    reference.save(folder)
    saved.write_text(json.dumps(quality, indent=2, sort_keys=True) + "\n")  # last: marks it complete
    return quality


def preserved_sources(config: JobConfig) -> list[str]:
    """The generate steps whose rows carry a parent record's labels (scored for label preservation)."""
    return [step.kind for step in config.generate if step.family.request in SCORED_REQUESTS]


def _source_split(config: JobConfig, listed: Any,
                  rejected: dict[str, Any] | None) -> tuple[Any, list[SourceRecord], list[SourceRecord]]:
    """The job's own source and its training and holdout splits (the plan's), less rejected records."""
    if listed is None:
        source = build_source(config.source, config.seed)
        train, holdout = split_records(source.records(), config.split.holdout, config.seed)
    else:
        source, train, holdout = listed.source, listed.train, listed.holdout
    rejected = rejected or {}
    return source, [r for r in train if r.id not in rejected], [r for r in holdout if r.id not in rejected]


def _load_labelled(source: Any, records: list[SourceRecord], task: str) -> tuple[list[np.ndarray], list[Any]]:
    """Images and their labels (classification) or masks (segmentation); unusable records left out."""
    images: list[np.ndarray] = []
    targets: list[Any] = []
    for _, sample in loaded(source, records, "label preservation"):
        target = sample.label if task == "classification" else sample.mask
        if target is not None:
            images.append(sample.image)
            targets.append(target)
    return images, targets


def prepare_label_preservation(config: JobConfig, folder: Path, listed: Any = None,
                               rejected: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Fit (or reuse) the frozen source task model when a step takes parent records.

    Class labels win when the training records have them (a classifier; digits frames have
    a label and a digit/background mask, and the label is what a content change breaks);
    otherwise masks (a segmenter; street frames). Returns the workers' settings: the
    sources to score, the model's folder (None: nothing to fit on) and its task; None when
    no step takes a parent record."""
    from augment.metrics.preservation import fit_task_model, read_config, task_shape

    sources = preserved_sources(config)
    if not sources:
        return None
    source, train, holdout = _source_split(config, listed, rejected)
    records = subsample(train, config.report.max_per_source, config.seed, LABEL_PRESERVATION_STREAM)
    task = "classification" if any(r.label is not None for r in records) else "segmentation"
    if task == "classification":
        records = [r for r in records if r.label is not None]
    # The first usable record (quietly: the fit's own read below names every skip).
    first = next((sample for _, sample in loaded(source, records, "label preservation", skipped=[])), None)
    if first is None or (task == "segmentation" and first.mask is None):
        log.warning("label preservation: the source's training records have no class labels or masks; "
                    "rows of %s are not scored", ", ".join(sources))
        return {"sources": sources, "dir": None, "task": None}
    class_names = list(source.class_names)
    fingerprint = hashlib.sha256(json.dumps([[r.id, r.label] for r in records]).encode()).hexdigest()
    settings = {"task": task, "source": config.source.model_dump(mode="json"), "records": fingerprint,
                "n_records": len(records), "class_names": class_names,
                "steps": config.report.label_preservation_steps or config.report.extractor_steps,
                "seed": derive_seed(config.seed, LABEL_PRESERVATION_STREAM),
                "shape": list(task_shape(*first.image.shape[:2])), "channels": int(first.image.shape[2])}
    model_dir = folder / LABEL_PRESERVATION_DIR
    saved = read_config(model_dir)
    if saved is not None and saved.get("training", {}).get("settings") == settings:
        log.info("label preservation: reusing the task model in %s", model_dir)
        return {"sources": sources, "dir": str(model_dir), "task": task}
    images, targets = _load_labelled(source, records, task)
    if len(images) < 2:
        log.warning("label preservation: %d usable labelled training images, too few to fit a task model; "
                    "rows of %s are not scored", len(images), ", ".join(sources))
        return {"sources": sources, "dir": None, "task": None}
    log.info("label preservation: fitting the %s task model on %d source training images (%d steps)",
             task, len(images), settings["steps"])
    model = fit_task_model(images, **{"labels" if task == "classification" else "masks": targets},
                           class_names=class_names, seed=settings["seed"], steps=settings["steps"],
                           shape=tuple(settings["shape"]), progress="quality: label-preservation model")
    model.training["settings"] = settings
    model.training["source_holdout"] = _ceiling(model, source, holdout, task, config)
    model.save(model_dir)
    return {"sources": sources, "dir": str(model_dir), "task": task}


def _ceiling(model: Any, source: Any, holdout: list[SourceRecord], task: str, config: JobConfig) -> dict[str, Any]:
    """The task model's score on untouched held-out source frames: what a translation that
    changed nothing would score, so the ceiling of every row's label preservation. A judge
    that cannot read its own domain (too few fit steps, too little data) makes the score
    and the gate meaningless: say so instead of letting it drop good rows."""
    from augment.metrics.preservation import label_preservation

    records = subsample(holdout, config.report.max_per_source, config.seed, LABEL_PRESERVATION_STREAM)
    images, targets = _load_labelled(source, records, task)
    if not images:
        log.warning("label preservation: the job keeps no labelled source holdout; the task model's own score "
                    "(the ceiling of label preservation) is not measured")
        return {"images": 0, "mean": None}
    scores = label_preservation(model, images, **{"labels" if task == "classification" else "masks": targets})
    mean = float(np.nanmean(scores)) if np.isfinite(scores).any() else None
    log.info("label preservation: the task model scores %s on %d untouched held-out source frames "
             "(the ceiling of a row's score)", "n/a" if mean is None else f"{mean:.3f}", len(images))
    gate = config.filter.min_label_preservation if config.filter is not None else None
    if mean is not None and gate is not None and mean < gate:
        log.warning("label preservation: the task model scores %.3f on untouched held-out source frames, below "
                    "filter.min_label_preservation %.3f: the gate would drop rows that changed nothing; raise "
                    "report.label_preservation_steps or give the source more frames", mean, gate)
    return {"images": len(images), "mean": mean}


def load_task_model(quality: dict[str, Any]) -> Any:
    """The saved label-preservation task model, or None when the job scores none."""
    from augment.metrics.preservation import TaskModel

    settings = quality.get("label_preservation")
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
    preservation = quality.get("label_preservation") or {}
    return RowScorer(extractor, RealReference.load(Path(quality["dir"])), classifier=domain,
                     task_model=load_task_model(quality), preserved_sources=preservation.get("sources", ()))
