"""How well a transfer step's task models do on the target domain (CyCADA's f_S and f_T).

A family whose saved sampler offers `task_model(which)` ("source": fitted on the labelled
source only; "target": adapted to the target domain) is scored on the target's holdout
split, the images its fit never saw, when that holdout has labels (accuracy) or masks
(mIoU over the classes present, void pixels left out). The two figures side by side say
what the adaptation bought. Families without task models are skipped; nothing here
branches on a family's name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from augment.images import crop_resize
from augment.metrics.preprocess import match_channels
from augment.metrics.utility import confusion_matrix, mean_iou
from augment.sources.base import loaded
from jobs.config import JobConfig, StepConfig
from jobs.plan import open_other_source

log = logging.getLogger("synthaug")

MAX_HOLDOUT = 2000  # target holdout images scored per step: enough for a mean, bounded in time


def _holdout(step: StepConfig, config: JobConfig, class_names: list[str], height: int, width: int,
             channels: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The target's holdout as the source's size and channels, with its labels (in the job's
    class ids, by name) or masks (when its classes are the job's) where every image has them."""
    if step.target is None:
        raise ValueError(f"{step.kind}: not a transfer step (no target)")
    source, _, records = open_other_source(step.target, config.split.holdout, config.seed)
    rename = {i: class_names.index(n) for i, n in enumerate(source.class_names) if n in class_names}
    images, labels, masks = [], [], []
    for _, sample in loaded(source, records[:MAX_HOLDOUT], "adaptation"):
        images.append(crop_resize(match_channels(sample.image, channels), height, width))
        labels.append(None if sample.label is None else rename.get(int(sample.label)))
        if sample.mask is None:
            masks.append(None)
        elif source.class_names == class_names and sample.mask.max(initial=0) < 256:  # the image's crop; nearest neighbour keeps class ids
            masks.append(crop_resize(sample.mask.astype(np.uint8)[..., None], height, width, nearest=True)[..., 0])
        else:
            masks.append(None)
    if not images:
        return np.zeros((0, height, width, channels), np.uint8), None, None
    label_array = np.array(labels, np.int64) if all(v is not None for v in labels) else None
    mask_array = np.stack(masks).astype(np.int64) if all(m is not None for m in masks) else None
    return np.stack(images), label_array, mask_array


def adaptation_report(config: JobConfig, models: dict[str, Path], class_names: list[str]) -> dict[str, Any]:
    """{step kind: {"task", "holdout", "source": figure, "target": figure}} for each transfer step
    whose model has task models and whose target holdout has the matching annotation."""
    report: dict[str, Any] = {}
    for step in config.generate:
        if step.target is None or step.kind not in models:
            continue
        sampler = step.family.from_pretrained(models[step.kind])
        if not callable(getattr(sampler, "task_model", None)):
            continue
        shape = sampler.shape
        images, labels, masks = _holdout(step, config, class_names, shape.height, shape.image_width,
                                         shape.channels)
        figures: dict[str, Any] = {}
        for which in ("source", "target"):
            model = sampler.task_model(which)
            if model.task == "classification" and labels is not None and len(labels):
                figures["metric"] = "accuracy"
                figures[which] = float((model.predict(images) == labels).mean())
            elif model.task == "segmentation" and masks is not None and len(masks):
                void = next((i for i, n in enumerate(class_names) if n.lower() == "void"), None)
                confusion = confusion_matrix(masks, model.predict(images), len(class_names), ignore_index=void)
                miou, per_class = mean_iou(confusion)
                figures["metric"] = "miou"
                figures[which] = miou
                figures[f"{which}_per_class"] = dict(zip(class_names, per_class, strict=True))
        if figures:
            report[step.kind] = {"task": sampler.task_model().task, "holdout": int(len(images)), **figures}
            log.info("adaptation %s: %s on %d target holdout images: source-only task model %.3f, adapted %.3f",
                     step.kind, figures["metric"], len(images), figures.get("source") or 0.0,
                     figures.get("target") or 0.0)
    return report
