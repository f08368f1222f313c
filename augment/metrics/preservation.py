"""Label preservation: does a row made from a parent record still show what its labels say?

Domain-transfer families (CycleGAN, CyCADA) repaint a parent record (a simulator frame)
and the job carries the parent's label / mask / boxes onto the new row unchanged. A
translator that changes content ("sky painted as trees") breaks that silently: the labels
no longer match the pixels. The check is the *frozen source task model*: a small
classifier (class labels, `SmallCNN`) or segmenter (masks, `TinySegmenter`) fitted once
on the job's labelled source training records, then never updated. Per row:

- masks: the pixel accuracy of the model's argmax against the carried mask. Pixels of a
  class named ``void`` (the street classes end with it) are left out: they carry no label,
  so neither agreement nor disagreement there says anything. A mask that is all void has
  no score (nan). Ids the model was never fitted on count as disagreement.
- class labels: the model's probability of the carried label (nan where there is none).

A row scores high when the model, which knows only the source, still finds the parent's
labels in the new pixels. The score is bounded by how well the model fits the source: a
parent frame itself scores near the model's training accuracy, not 1.

Images are brought to one `shape` (H x W) first: the first training image's, scaled down
so its longer side is at most `max_side` (the aspect ratio is kept, so landscape street
frames stay landscape); images bicubic (Pillow), masks nearest neighbour. The model is
saved as safetensors + JSON (never a pickle).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save
from torch import nn

from augment.generators.base import refuse_pickles
from augment.metrics.classifier import MIN_SIZE, SmallCNN, build_on_meta, to_input, train_classifier
from augment.metrics.preprocess import match_channels
from augment.metrics.utility import TinySegmenter, confusion_matrix, mean_iou, train_segmenter

Task = Literal["classification", "segmentation"]
FORMAT = "synthaug.label_preservation_model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOID_NAME = "void"
DEFAULT_MAX_SIDE = 64  # a CPU fits the small models at this size in seconds; masks keep their layout
CLASSIFIER_BATCH, SEGMENTER_BATCH = 64, 16


def void_class_id(class_names: Sequence[str]) -> int | None:
    """The id of the class named "void" (any case), whose pixels carry no label; None if none."""
    for i, name in enumerate(class_names):
        if name.strip().lower() == VOID_NAME:
            return i
    return None


def task_shape(height: int, width: int, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(H, W) the task model works at: the image's, scaled down to `max_side` on its longer
    side, aspect ratio kept; never below the small CNNs' minimum of 8 px."""
    if not (isinstance(max_side, int) and max_side >= MIN_SIZE):
        raise ValueError(f"max_side must be an int >= {MIN_SIZE}, got {max_side!r}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width} (HxW)")
    scale = min(1.0, max_side / max(height, width))
    return max(MIN_SIZE, round(height * scale)), max(MIN_SIZE, round(width * scale))


def resize_to(image: np.ndarray, shape: tuple[int, int], channels: int) -> np.ndarray:
    """uint8 H x W x C to `shape` x `channels` (bicubic, Pillow; gray/RGB as the metric size does)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"images must be uint8 H x W x C with C 1 or 3, got {image.dtype} {image.shape}")
    image = match_channels(image, channels)
    if image.shape[:2] == shape:
        return image
    mode = "L" if channels == 1 else "RGB"
    resized = Image.fromarray(np.ascontiguousarray(image[..., 0] if mode == "L" else image)).resize(
        (shape[1], shape[0]), resample=Image.Resampling.BICUBIC)
    out = np.asarray(resized, dtype=np.uint8)
    return out[..., None] if mode == "L" else out


def resize_mask_to(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class ids H x W to `shape`, nearest neighbour (ids stay ids), as int64."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"masks must be integer H x W, got {mask.dtype} {mask.shape}")
    rows = (np.arange(shape[0]) * mask.shape[0] / shape[0]).astype(int)
    cols = (np.arange(shape[1]) * mask.shape[1] / shape[1]).astype(int)
    return mask[rows[:, None], cols[None, :]].astype(np.int64)


@dataclass
class TaskModel:
    """The frozen source task model and the input it expects.

    `module` maps float N x C x H x W in [-1, 1] (`classifier.to_input`) to logits:
    N x num_classes (classification) or N x num_classes x H x W (segmentation)."""

    module: nn.Module
    task: Task
    shape: tuple[int, int]  # (H, W)
    channels: int
    num_classes: int
    void_id: int | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {self.task!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.module.eval()

    def images(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Any-size uint8 images as N x H x W x C at the model's shape and channels."""
        out = [resize_to(image, self.shape, self.channels) for image in images]
        return np.stack(out) if out else np.zeros((0, *self.shape, self.channels), np.uint8)

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """Logits of images already at the model's shape (`images()`), in eval mode."""
        parts = [self.module(to_input(images[start:start + batch_size]))
                 for start in range(0, len(images), batch_size)]
        if not parts:
            return torch.zeros((0, self.num_classes) if self.task == "classification" else
                               (0, self.num_classes, *self.shape))
        return torch.cat(parts)

    def weights_sha256(self) -> str:
        return hashlib.sha256(_state_bytes(self.module)).hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the report and the shards' scores were measured with."""
        return {"task": self.task, "shape": list(self.shape), "channels": self.channels,
                "num_classes": self.num_classes, "void_id": self.void_id, "sha256": self.weights_sha256(),
                "training": dict(self.training)}

    def save(self, directory: Path) -> None:
        """Write model.safetensors and config.json (the config last: it marks a complete save)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / WEIGHTS_FILE).write_bytes(_state_bytes(self.module))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": self.task, "shape": list(self.shape),
                "channels": self.channels, "num_classes": self.num_classes, "void_id": self.void_id,
                "model": _module_config(self.module), "training": self.training}
        tmp = directory / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.replace(directory / CONFIG_FILE)

    @classmethod
    def load(cls, directory: Path) -> TaskModel:
        """Load a folder written by `save`; pickles are refused, safetensors only."""
        directory = Path(directory)
        meta = read_config(directory)
        if meta is None:
            raise ValueError(f"{directory}: a label-preservation model needs {WEIGHTS_FILE} and a "
                             f"{FORMAT} v{FORMAT_VERSION} {CONFIG_FILE}")
        refuse_pickles(directory)
        config = meta["model"]
        if meta["task"] == "classification":
            module: nn.Module = build_on_meta(lambda: SmallCNN(**config))
        else:
            module = build_on_meta(lambda: TinySegmenter(**config))
        module.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
        return cls(module, meta["task"], tuple(meta["shape"]), meta["channels"], meta["num_classes"],  # type: ignore[arg-type]
                   meta["void_id"], meta["training"])


def read_config(directory: Path) -> dict[str, Any] | None:
    """The saved config.json of a complete save, or None (missing, unreadable or another format)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file() or not (Path(directory) / WEIGHTS_FILE).is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        return None
    return meta


def _state_bytes(module: nn.Module) -> bytes:
    return save({k: v.detach().contiguous() for k, v in module.state_dict().items()})


def _module_config(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, SmallCNN):
        return module.config()
    if isinstance(module, TinySegmenter):
        return {"in_channels": module.in_channels, "num_classes": module.num_classes, "width": module.width}
    raise ValueError(f"only SmallCNN and TinySegmenter task models are saved, got {type(module).__name__}")


def fit_task_model(
    images: Sequence[np.ndarray],
    *,
    labels: Sequence[int] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    class_names: Sequence[str],
    seed: int,
    steps: int = 400,
    max_side: int = DEFAULT_MAX_SIDE,
    shape: tuple[int, int] | None = None,
    progress: str | None = None,
) -> TaskModel:
    """Fit the frozen source task model on labelled source training images (any sizes).

    Give exactly one of `labels` (a classifier) or `masks` (a segmenter; void pixels are
    ignored by the loss). `shape` defaults to `task_shape` of the first image. Deterministic
    from `seed`; `progress` labels a progress display (steps, rate, ETA; None: silent)."""
    if (labels is None) == (masks is None):
        raise ValueError("fit_task_model needs exactly one of labels (classifier) or masks (segmenter)")
    if len(images) < 2:
        raise ValueError(f"fit_task_model needs at least 2 labelled images, got {len(images)}")
    first = np.asarray(images[0])
    if first.ndim != 3:
        raise ValueError(f"images must be H x W x C, got shape {first.shape}")
    channels = int(first.shape[2])
    shape = shape or task_shape(int(first.shape[0]), int(first.shape[1]), max_side)
    x = np.stack([resize_to(image, shape, channels) for image in images])
    training = {"seed": seed, "steps": steps, "n_train": len(x), "max_side": max_side}
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)
        num_classes = max(len(class_names), int(y.max()) + 1 if len(y) else 0)
        model = train_classifier(x, y, num_classes, seed=seed, steps=steps, batch_size=CLASSIFIER_BATCH,
                                 progress=progress)
        return TaskModel(model, "classification", shape, channels, num_classes, None, training)
    if len(masks) != len(x):  # type: ignore[arg-type]
        raise ValueError(f"{len(masks)} masks for {len(x)} images")  # type: ignore[arg-type]
    m = np.stack([resize_mask_to(mask, shape) for mask in masks])  # type: ignore[union-attr]
    void = void_class_id(class_names)
    num_classes = max(len(class_names), int(m.max()) + 1)
    model = train_segmenter(x, m, num_classes, seed=seed, steps=steps, batch_size=SEGMENTER_BATCH,
                            ignore_index=void, progress=progress)
    return TaskModel(model, "segmentation", shape, channels, num_classes, void, training)


def label_preservation(model: TaskModel, images: Sequence[np.ndarray] | np.ndarray,
                       labels: Sequence[int | None] | None = None,
                       masks: Sequence[np.ndarray | None] | None = None, *, batch_size: int = 64) -> np.ndarray:
    """Per row, float64 [N]: how well the carried labels still match the pixels.

    A segmenter scores `masks` (pixel accuracy, void pixels left out); a classifier scores
    `labels` (its probability of the label). nan where a row has no annotation to check
    (label None or < 0, mask None, a mask that is all void)."""
    n = len(images)
    out = np.full(n, np.nan)
    if model.task == "segmentation":
        if masks is None or len(masks) != n:
            raise ValueError(f"a segmentation task model scores masks: give one per image ({n}), "
                             f"got {None if masks is None else len(masks)}")
        rows = [i for i, mask in enumerate(masks) if mask is not None]
        if not rows:
            return out
        predicted = model.logits(model.images([images[i] for i in rows]), batch_size).argmax(dim=1).numpy()
        for j, i in enumerate(rows):
            truth = resize_mask_to(masks[i], model.shape)  # type: ignore[arg-type]
            keep = truth != model.void_id if model.void_id is not None else np.ones(truth.shape, bool)
            if keep.any():
                out[i] = float((predicted[j][keep] == truth[keep]).mean())
        return out
    if labels is None or len(labels) != n:
        raise ValueError(f"a classification task model scores labels: give one per image ({n}), "
                         f"got {None if labels is None else len(labels)}")
    rows = [i for i, label in enumerate(labels) if label is not None and label >= 0]
    if not rows:
        return out
    probs = F.softmax(model.logits(model.images([images[i] for i in rows]), batch_size).double(), dim=1).numpy()
    for j, i in enumerate(rows):
        label = int(labels[i])  # type: ignore[arg-type]
        out[i] = float(probs[j, label]) if label < probs.shape[1] else 0.0
    return out


def segmentation_confusion(model: TaskModel, images: Sequence[np.ndarray] | np.ndarray,
                           masks: Sequence[np.ndarray], *, batch_size: int = 64) -> np.ndarray:
    """[num_classes, num_classes] pixel counts summed over rows (rows: the mask's class,
    columns: the segmenter's), at the model's shape; void pixels and ids the model does not
    know are left out."""
    if model.task != "segmentation":
        raise ValueError(f"a segmentation task model is needed, got {model.task!r}")
    if len(masks) != len(images):
        raise ValueError(f"{len(masks)} masks for {len(images)} images")
    classes = model.num_classes
    confusion = np.zeros((classes, classes), np.int64)
    for start in range(0, len(images), batch_size):
        part = model.images(images[start:start + batch_size])
        predicted = model.logits(part, batch_size).argmax(dim=1).numpy()
        for j, mask in enumerate(masks[start:start + batch_size]):
            truth = resize_mask_to(mask, model.shape).astype(np.int64)
            keep = truth < classes
            if model.void_id is not None:
                keep &= truth != model.void_id
            confusion += confusion_matrix(truth[keep], predicted[j][keep], classes)
    return confusion


def agreement(confusion: np.ndarray, void_id: int | None = None) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of a `segmentation_confusion` (None where no pixel).
    Void is no class of the mean (its IoU is None): predicting it where the mask has a class is
    an error of that class, counted in the class's row."""
    total = int(confusion.sum())
    _, per_class = mean_iou(confusion)
    if void_id is not None and void_id < len(per_class):
        per_class[void_id] = None
    present = [iou for iou in per_class if iou is not None]
    return {"miou": float(np.mean(present)) if present else None, "per_class_iou": per_class,
            "pixel_accuracy": float(np.trace(confusion) / total) if total else None, "pixels": total}


def segmentation_agreement(model: TaskModel, images: Sequence[np.ndarray] | np.ndarray,
                           masks: Sequence[np.ndarray]) -> dict[str, Any]:
    """How well the segmenter's reading of `images` matches `masks`, over all their pixels."""
    return agreement(segmentation_confusion(model, images, masks), model.void_id)


def class_pixel_accuracy(model: TaskModel, images: Sequence[np.ndarray] | np.ndarray,
                         masks: Sequence[np.ndarray], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per mask class c, summed over rows: (pixels of c the segmenter labels c, pixels of c),
    int64 [num_classes] each, void pixels left out. Says *which* content a translator changed
    (sky painted as trees: the sky's accuracy falls), where the row score only says how much."""
    confusion = segmentation_confusion(model, images, masks, batch_size=batch_size)
    return np.diag(confusion).copy(), confusion.sum(axis=1)
