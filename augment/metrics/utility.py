"""Downstream utility: train on X, test on the real holdout.

Three settings per task, each trained with the same budget and the same seed, so the only
difference is the training data: ``real_only``, ``synthetic_only`` and
``real_plus_synthetic``. For classification the accuracy of ``synthetic_only`` is the
Classification Accuracy Score (CAS, Ravuri & Vinyals 2019); for segmentation the score
is the mean IoU. A bad generator (say, wrong labels) drives ``synthetic_only`` towards
chance and pulls ``real_plus_synthetic`` below ``real_only``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.metrics.classifier import (
    BATCH_STREAM,
    INIT_STREAM,
    SHIFT_STREAM,
    batch_indices,
    build_on_meta,
    check_budget,
    check_images,
    check_labels,
    init_parameters,
    predict_proba,
    random_shift,
    shift_by,
    to_input,
    train_classifier,
    warmup_cosine,
)
from augment.metrics.progress import StepProgress
from augment.seeding import derive_seed

Split = tuple[np.ndarray, np.ndarray]
SETTINGS = ("real_only", "synthetic_only", "real_plus_synthetic")


def _training_sets(real_train: Split, synthetic: Split | None) -> tuple[dict[str, Split], str | None]:
    """The data of each setting, or the reason the synthetic settings are skipped."""
    if synthetic is None:
        return {"real_only": real_train}, "no synthetic data"
    if len(synthetic[0]) == 0:
        return {"real_only": real_train}, "no synthetic samples (0 images)"
    both = (np.concatenate([real_train[0], synthetic[0]]), np.concatenate([real_train[1], synthetic[1]]))
    return {"real_only": real_train, "synthetic_only": synthetic, "real_plus_synthetic": both}, None


def _check_same_layout(splits: dict[str, Split | None]) -> None:
    shapes = {name: tuple(split[0].shape[1:]) for name, split in splits.items() if split is not None and len(split[0])}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"every split must have the same image size and channels (resize first), got {shapes}")


def _label(progress: str | None, setting: str) -> str | None:
    """The progress label of one trained model: "<progress> (real_only)"."""
    return None if progress is None else f"{progress} ({setting})"


def per_class_accuracy(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy over the holdout samples of each class; None where the class has none."""
    out: list[float | None] = []
    for c in range(num_classes):
        hits = predicted[truth == c] == c
        out.append(float(hits.mean()) if hits.size else None)
    return out


def classification_utility(
    real_train: Split,
    synthetic: Split | None,
    holdout: Split,
    num_classes: int,
    seed: int,
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 32,
    feature_dim: int = 128,
    input_size: int | None = None,
    augment: bool = True,
    progress: str | None = None,
) -> dict[str, Any]:
    """Train the `SmallCNN` on each setting, test on the real holdout. Returns
    ``{"task", "budget", "settings": {setting: {"accuracy", "per_class", "n_train",
    "skipped"}}, "classification_accuracy_score"}``; ``per_class[c]`` is None where the
    holdout has no sample of class c; a skipped setting has None scores and a reason.
    `progress` labels a progress display per trained model (None: silent)."""
    holdout_images = check_images(holdout[0], "holdout images")
    holdout_labels = check_labels(holdout[1], len(holdout_images), num_classes, "holdout labels")
    for what, split in (("real_train", real_train), ("synthetic", synthetic)):
        if split is not None:
            check_labels(split[1], len(check_images(split[0], f"{what} images")), num_classes, f"{what} labels")
    if len(holdout_images) == 0:
        raise ValueError("holdout has no images: utility is measured on the real holdout")
    _check_same_layout({"real_train": real_train, "synthetic": synthetic, "holdout": holdout})
    budget = {"steps": steps, "batch_size": batch_size, "lr": lr, "width": width, "feature_dim": feature_dim,
              "input_size": input_size, "augment": augment, "seed": seed}
    sets, skip_reason = _training_sets(real_train, synthetic)
    settings: dict[str, dict[str, Any]] = {}
    for name in SETTINGS:
        if name not in sets:
            settings[name] = {"accuracy": None, "per_class": None, "n_train": 0, "skipped": skip_reason}
            continue
        images, labels = sets[name]
        model = train_classifier(images, labels, num_classes, seed=seed, steps=steps, batch_size=batch_size, lr=lr,
                                 width=width, feature_dim=feature_dim, input_size=input_size, augment=augment,
                                 progress=_label(progress, name))
        predicted = predict_proba(model, holdout_images).argmax(axis=1)
        settings[name] = {"accuracy": float((predicted == holdout_labels).mean()),
                          "per_class": per_class_accuracy(holdout_labels, predicted, num_classes),
                          "n_train": len(images), "skipped": None}
    return {"task": "classification", "budget": budget, "n_holdout": len(holdout_images), "settings": settings,
            "classification_accuracy_score": settings["synthetic_only"]["accuracy"]}


# --- segmentation ---------------------------------------------------------------------


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """[C, C] pixel counts, rows = truth, columns = prediction; `ignore_index` pixels skipped."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    predicted = np.asarray(predicted).ravel().astype(np.int64)
    if truth.shape != predicted.shape:
        raise ValueError(f"truth and prediction differ in size: {truth.size} vs {predicted.size}")
    keep = truth != ignore_index if ignore_index is not None else np.ones(truth.shape, bool)
    return np.bincount(truth[keep] * num_classes + predicted[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float | None, list[float | None]]:
    """IoU_c = TP / (TP + FP + FN) from a [C, C] confusion matrix (rows truth). A class
    absent from both truth and prediction has IoU None and is left out of the mean."""
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {confusion.shape}")
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    present = [iou for iou in per_class if iou is not None]
    return (float(np.mean(present)) if present else None), per_class


class TinySegmenter(nn.Module):
    """A small encoder-decoder (U-Net-like, one skip): full-resolution conv, `levels` stride-2
    stages (width doubling up to 4x), bilinear upsampling back, concatenation with the skip,
    a 1x1 class head. One level sees ~11 pixels around each pixel; three see ~47, enough
    context to classify a whole 32-pixel crop from the mean of its pixel logits."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, levels: int = 1) -> None:
        super().__init__()
        if in_channels not in (1, 3) or num_classes < 1 or width < 1 or not 1 <= levels <= 5:
            raise ValueError(f"TinySegmenter: in_channels 1 or 3, num_classes and width >= 1, levels 1..5; "
                             f"got {in_channels}, {num_classes}, {width}, {levels}")
        self.in_channels, self.num_classes, self.width, self.levels = in_channels, num_classes, width, levels

        def block(i: int, o: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(block(in_channels, width), block(width, width))
        self.down = nn.Sequential(block(width, 2 * width, stride=2), block(2 * width, 2 * width))
        channels = [2 * width] + [min(4 * width, 2 ** (i + 2) * width) for i in range(levels - 1)]
        # levels 2+: an (empty for one level) list, so one-level weights keep their names
        self.deeper = nn.ModuleList(nn.Sequential(block(i, o, stride=2), block(o, o))
                                    for i, o in zip(channels, channels[1:]))
        self.fuse = block(width + channels[-1], width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        deep = self.down(skip)
        for stage in self.deeper:
            deep = stage(deep)
        deep = F.interpolate(deep, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.head(self.fuse(torch.cat([skip, deep], dim=1)))


def check_masks(masks: np.ndarray, images: np.ndarray, num_classes: int, ignore_index: int | None,
                what: str) -> torch.Tensor:
    """uint16 (or any int) N x H x W class ids matching `images` -> int64 tensor."""
    masks = np.asarray(masks)
    if masks.shape != images.shape[:3] or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"{what} masks must be integer N x H x W matching the images {images.shape[:3]}, "
                         f"got {masks.dtype} {masks.shape}")
    bad = (masks >= num_classes) & (masks != ignore_index) if ignore_index is not None else masks >= num_classes
    if bad.any():
        raise ValueError(f"{what} masks hold class id {int(masks[bad].max())}, outside 0..{num_classes - 1}"
                         + (f" and not ignore_index {ignore_index}" if ignore_index is not None else ""))
    return torch.from_numpy(masks.astype(np.int64))


def train_segmenter(images: np.ndarray, masks: np.ndarray, num_classes: int, *, seed: int, steps: int = 200,
                    batch_size: int = 16, lr: float = 3e-3, weight_decay: float = 1e-4, width: int = 16,
                    augment: bool = True, shift_fraction: float = 0.125,
                    ignore_index: int | None = None, progress: str | None = None) -> TinySegmenter:
    """Per-pixel cross-entropy with AdamW (warm-up + cosine); the same random translation
    moves each image and its mask. `progress` labels a progress display (None: silent).
    Deterministic from `seed`; returns eval mode."""
    images = check_images(images)
    targets = check_masks(masks, images, num_classes, ignore_index, "training")
    check_budget(steps, batch_size, lr)
    model = build_on_meta(lambda: TinySegmenter(images.shape[3], num_classes, width))
    init_parameters(model, torch.Generator().manual_seed(derive_seed(seed, INIT_STREAM)))
    order_rng = torch.Generator().manual_seed(derive_seed(seed, BATCH_STREAM))
    shift_rng = torch.Generator().manual_seed(derive_seed(seed, SHIFT_STREAM))
    max_shift = round(min(images.shape[1:3]) * shift_fraction) if augment else 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    model.train()
    with StepProgress(progress, steps) as shown:
        for index in batch_indices(len(images), batch_size, steps, order_rng):
            x, y = to_input(images[index.numpy()]), targets[index][:, None]
            if max_shift:
                x, offsets = random_shift(x, max_shift, shift_rng)  # drawn once, applied to both
                y = shift_by(y, offsets)
            loss = F.cross_entropy(model(x), y[:, 0], ignore_index=-100 if ignore_index is None else ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            shown.advance()
    return model.eval()


@torch.no_grad()
def predict_masks(model: TinySegmenter, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Argmax class per pixel, int64 N x H x W."""
    images = check_images(images)
    model.eval()
    out = np.empty(images.shape[:3], dtype=np.int64)
    for start in range(0, len(images), batch_size):
        out[start:start + batch_size] = model(to_input(images[start:start + batch_size])).argmax(dim=1).numpy()
    return out


def segmentation_utility(
    real_train: Split,
    synthetic: Split | None,
    holdout: Split,
    num_classes: int,
    seed: int,
    *,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 3e-3,
    width: int = 16,
    augment: bool = True,
    ignore_index: int | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """(image, mask) pairs: train `TinySegmenter` on each setting, test on the real holdout.
    Returns ``{"task", "budget", "settings": {setting: {"mean_iou", "per_class_iou",
    "n_train", "skipped"}}, "mean_iou_synthetic_only"}``; IoU is None for a class absent
    from both the holdout truth and the prediction (left out of the mean). `progress`
    labels a progress display per trained model (None: silent)."""
    holdout_images = check_images(holdout[0], "holdout images")
    check_masks(holdout[1], holdout_images, num_classes, ignore_index, "holdout")
    if len(holdout_images) == 0:
        raise ValueError("holdout has no images: utility is measured on the real holdout")
    for what, split in (("real_train", real_train), ("synthetic", synthetic)):
        if split is not None:
            check_masks(split[1], check_images(split[0], f"{what} images"), num_classes, ignore_index, what)
    _check_same_layout({"real_train": real_train, "synthetic": synthetic, "holdout": holdout})
    budget = {"steps": steps, "batch_size": batch_size, "lr": lr, "width": width, "augment": augment,
              "ignore_index": ignore_index, "seed": seed}
    sets, skip_reason = _training_sets(real_train, synthetic)
    settings: dict[str, dict[str, Any]] = {}
    for name in SETTINGS:
        if name not in sets:
            settings[name] = {"mean_iou": None, "per_class_iou": None, "n_train": 0, "skipped": skip_reason}
            continue
        images, masks = sets[name]
        model = train_segmenter(images, masks, num_classes, seed=seed, steps=steps, batch_size=batch_size, lr=lr,
                                width=width, augment=augment, ignore_index=ignore_index,
                                progress=_label(progress, name))
        confusion = confusion_matrix(holdout[1], predict_masks(model, holdout_images), num_classes, ignore_index)
        miou, per_class = mean_iou(confusion)
        settings[name] = {"mean_iou": miou, "per_class_iou": per_class, "n_train": len(images), "skipped": None}
    return {"task": "segmentation", "budget": budget, "n_holdout": len(holdout_images), "settings": settings,
            "mean_iou_synthetic_only": settings["synthetic_only"]["mean_iou"]}
