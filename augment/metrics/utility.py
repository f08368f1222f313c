"""Downstream utility: train on X, test on the real holdout.

Three settings per task, each trained with the same budget and the same seed, so the only
difference is the training data: ``real_only``, ``synthetic_only`` and
``real_plus_synthetic``. The settings are independent: the caller's `run` trains them
(here one after another; the job runs them as parallel Ray tasks). A ``real_only``
classifier trained already with that very budget, seed and data (the report's domain
classifier is one) is reused instead of trained again: `budget_matches` checks it. For classification the accuracy of ``synthetic_only`` is the
Classification Accuracy Score (CAS, Ravuri & Vinyals 2019); for segmentation the score
is the mean IoU. A bad generator (say, wrong labels) drives ``synthetic_only`` towards
chance and pulls ``real_plus_synthetic`` below ``real_only``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
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
    data_fingerprint,
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
from augment.metrics.intervals import accuracy_interval, miou_interval, paired_gain, paired_miou_gain
from augment.metrics.progress import StepProgress
from augment.seeding import derive_seed

Split = tuple[np.ndarray, np.ndarray]
SETTINGS = ("real_only", "synthetic_only", "real_plus_synthetic")
EASY_TASK = 0.95  # real-only accuracy whose interval starts above this leaves synthetic rows nothing to show
INTERVAL_STREAM = 3  # derive_seed(seed, INTERVAL_STREAM): the bootstrap resamples (0-2: the classifier's)
# run(fn, calls) -> [fn(*call) for call in calls], in order, however it spreads the work
Run = Callable[[Callable[..., dict[str, Any]], Sequence[tuple[Any, ...]]], list[dict[str, Any]]]


def run_here(fn: Callable[..., dict[str, Any]], calls: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The default `Run`: one call after another in this process."""
    return [fn(*call) for call in calls]


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


def budget_matches(training: dict[str, Any], budget: dict[str, Any], data: Split) -> bool:
    """True when a classifier's recorded `training` (seed, data fingerprint and the
    `train_classifier` arguments it was given; the others at their defaults) is `budget`
    on `data`: then it is the very model `classification_utility` would train."""
    defaults = {name: p.default for name, p in inspect.signature(train_classifier).parameters.items()
                if p.default is not inspect.Parameter.empty}
    if training.get("data_sha256") != data_fingerprint(*data):
        return False
    return all(training.get(key, defaults.get(key)) == value for key, value in budget.items())


def classification_arm(name: str, images: np.ndarray, labels: np.ndarray, holdout: Split, num_classes: int,
                       budget: dict[str, Any], progress: str | None) -> dict[str, Any]:
    """One setting: train the `SmallCNN` on (images, labels) with `budget`, score the holdout."""
    model = train_classifier(images, labels, num_classes, progress=_label(progress, name), **budget)
    return _classification_scores(model, holdout, num_classes, len(images))


def _classification_scores(model: nn.Module, holdout: Split, num_classes: int, n_train: int) -> dict[str, Any]:
    probs = predict_proba(model, holdout[0])
    predicted = probs.argmax(axis=1)
    # Mean negative log-likelihood of the true class: it still moves when accuracies tie.
    truth = np.clip(probs[np.arange(len(predicted)), holdout[1]].astype(np.float64), 1e-12, 1.0)
    return {"accuracy": float((predicted == holdout[1]).mean()), "log_loss": float(-np.log(truth).mean()),
            "per_class": per_class_accuracy(holdout[1], predicted, num_classes),
            "n_train": n_train, "skipped": None, "correct": (predicted == holdout[1]).tolist()}


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
    run: Run = run_here,
    trained: tuple[nn.Module, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train the `SmallCNN` on each setting, test on the real holdout. Returns
    ``{"task", "budget", "settings": {setting: {"accuracy", "interval", "per_class",
    "per_class_interval", "gain_over_real_only", "n_train", "skipped", "reused"}},
    "classification_accuracy_score"}``: intervals are 95% bootstrap intervals over the
    holdout images, the gain a paired one (`augment.metrics.intervals`); ``per_class[c]``
    is None where the holdout has no sample of class c; a skipped setting has None scores
    and a reason. `progress` labels a progress display per trained model (None: silent); `run`
    trains the settings (`run_here`: in turn); `trained`: a (model, its training record)
    used as ``real_only`` when `budget_matches` says it is that model."""
    holdout_images = check_images(holdout[0], "holdout images")
    holdout_labels = check_labels(holdout[1], len(holdout_images), num_classes, "holdout labels")
    for what, split in (("real_train", real_train), ("synthetic", synthetic)):
        if split is not None:
            check_labels(split[1], len(check_images(split[0], f"{what} images")), num_classes, f"{what} labels")
    if len(holdout_images) == 0:
        raise ValueError("holdout has no images: utility is measured on the real holdout")
    _check_same_layout({"real_train": real_train, "synthetic": synthetic, "holdout": holdout})
    check_budget(steps, batch_size, lr)
    budget = {"steps": steps, "batch_size": batch_size, "lr": lr, "width": width, "feature_dim": feature_dim,
              "input_size": input_size, "augment": augment, "seed": seed}
    sets, skip_reason = _training_sets(real_train, synthetic)
    held = (holdout_images, holdout_labels)
    settings: dict[str, dict[str, Any]] = {
        name: {"accuracy": None, "log_loss": None, "per_class": None, "n_train": 0, "skipped": skip_reason,
               "correct": None, "reused": None}
        for name in SETTINGS if name not in sets}
    if trained is not None and budget_matches(trained[1], budget, real_train):
        settings["real_only"] = {**_classification_scores(trained[0], held, num_classes, len(real_train[0])),
                                 "reused": "the domain classifier (same data, budget and seed)"}
    todo = [name for name in SETTINGS if name not in settings]
    results = run(classification_arm, [(name, *sets[name], held, num_classes, budget, progress) for name in todo])
    settings.update({name: {**result, "reused": None} for name, result in zip(todo, results)})
    settings = {name: settings[name] for name in SETTINGS}
    settings = _with_intervals(settings, holdout_labels, num_classes, seed)
    return {"task": "classification", "budget": budget, "n_holdout": len(holdout_images), "settings": settings,
            "classification_accuracy_score": settings["synthetic_only"]["accuracy"],
            "separation": separation(settings)}


def classification_budget(seed: int, **given: Any) -> dict[str, Any]:
    """The budget `classification_utility` trains each setting with: its defaults, `given`
    over them (steps, input_size, ...), and `seed`; for a caller that trains the same model."""
    parameters = inspect.signature(classification_utility).parameters
    budget = {name: parameters[name].default
              for name in ("steps", "batch_size", "lr", "width", "feature_dim", "input_size", "augment")}
    unknown = sorted(set(given) - set(budget))
    if unknown:
        raise ValueError(f"not budget fields: {unknown}")
    return {**budget, **given, "seed": seed}


def separation(settings: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Whether the holdout tells the settings apart, in a sentence: {"separable", "note"}
    (None when there is nothing to compare)."""
    gains = {name: scores["gain_over_real_only"] for name, scores in settings.items()
             if scores.get("gain_over_real_only") and scores["gain_over_real_only"]["interval"] is not None}
    if not gains:
        return None
    told = [name for name, gain in gains.items() if gain["separable"]]
    if told:
        said = ", ".join(f"{name.replace('_', ' ')} {gains[name]['gain']:+.3f}" for name in told)
        return {"separable": True, "note": f"The holdout separates {said} from real only (95% paired interval "
                                           "excluding 0)."}
    note = "The holdout cannot separate the settings: every gain's 95% paired interval includes 0."
    interval = settings["real_only"].get("interval")
    if interval is not None and interval[0] >= EASY_TASK:
        note += (f" Real data alone scores {settings['real_only']['accuracy']:.3f} (interval from {interval[0]:.3f}):"
                 " the task is too easy at this data size to show what synthetic rows add; fewer real images per "
                 "class (benchmarks/low_data.py) or a harder holdout would.")
    return {"separable": False, "note": note}


def _with_intervals(settings: dict[str, dict[str, Any]], truth: np.ndarray, num_classes: int,
                    seed: int) -> dict[str, dict[str, Any]]:
    """Accuracy intervals, overall and per class (`_with_uncertainty` over the per-image hits)."""
    def per_class(hits: np.ndarray | None, rng_seed: int) -> dict[str, Any]:
        return {"per_class_interval": None if hits is None else [
            accuracy_interval(hits[truth == c], derive_seed(rng_seed, c)) if (truth == c).any() else None
            for c in range(num_classes)]}

    return _with_uncertainty(settings, "correct", lambda hits, s: accuracy_interval(hits.astype(bool), s),
                             paired_gain, seed, per_class)


def _with_uncertainty(settings: dict[str, dict[str, Any]], record: str, interval: Callable[[np.ndarray, int], Any],
                      gain: Callable[[np.ndarray, np.ndarray, int], Any], seed: int,
                      more: Callable[[np.ndarray | None, int], dict[str, Any]] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Each setting's 95% bootstrap interval (`interval` of its per-holdout-image `record`), the
    figures `more` adds, and each synthetic setting's paired `gain` over real_only; the
    per-image records are dropped (the report keeps figures)."""
    rng_seed = derive_seed(seed, INTERVAL_STREAM)
    baseline = settings["real_only"].get(record)
    out = {}
    for name, scores in settings.items():
        scores = dict(scores)
        kept = scores.pop(record, None)
        values = None if kept is None else np.asarray(kept)
        scores.update(interval=None, gain_over_real_only=None, **(more(None, rng_seed) if more else {}))
        if values is not None:
            scores["interval"] = interval(values, rng_seed)
            scores.update(more(values, rng_seed) if more else {})
            if name != "real_only" and baseline is not None:
                scores["gain_over_real_only"] = gain(np.asarray(baseline), values, rng_seed)
        out[name] = scores
    return out


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


def segmentation_arm(name: str, images: np.ndarray, masks: np.ndarray, holdout: Split, num_classes: int,
                     budget: dict[str, Any], progress: str | None) -> dict[str, Any]:
    """One setting: train `TinySegmenter` on (images, masks) with `budget`, score the holdout."""
    model = train_segmenter(images, masks, num_classes, progress=_label(progress, name), **budget)
    predicted = predict_masks(model, holdout[0])
    # One confusion matrix per holdout image: the bootstrap resamples images, pooling their pixels.
    confusions = np.stack([confusion_matrix(truth, guess, num_classes, budget["ignore_index"])
                           for truth, guess in zip(holdout[1], predicted)])
    miou, per_class = mean_iou(confusions.sum(axis=0))
    return {"mean_iou": miou, "per_class_iou": per_class, "n_train": len(images), "skipped": None,
            "confusions": confusions.tolist()}


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
    run: Run = run_here,
) -> dict[str, Any]:
    """(image, mask) pairs: train `TinySegmenter` on each setting, test on the real holdout.
    Returns ``{"task", "budget", "settings": {setting: {"mean_iou", "per_class_iou",
    "n_train", "skipped"}}, "mean_iou_synthetic_only"}``; IoU is None for a class absent
    from both the holdout truth and the prediction (left out of the mean). `progress`
    labels a progress display per trained model (None: silent); `run` trains the settings."""
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
    settings: dict[str, dict[str, Any]] = {
        name: {"mean_iou": None, "per_class_iou": None, "n_train": 0, "skipped": skip_reason}
        for name in SETTINGS if name not in sets}
    todo = [name for name in SETTINGS if name in sets]
    results = run(segmentation_arm, [(name, *sets[name], (holdout_images, holdout[1]), num_classes, budget,
                                      progress) for name in todo])
    settings.update(zip(todo, results))
    settings = _with_miou_intervals({name: settings[name] for name in SETTINGS}, seed)
    return {"task": "segmentation", "budget": budget, "n_holdout": len(holdout_images), "settings": settings,
            "mean_iou_synthetic_only": settings["synthetic_only"]["mean_iou"]}


def _with_miou_intervals(settings: dict[str, dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """mIoU intervals (`_with_uncertainty` over the per-image confusion matrices)."""
    return _with_uncertainty(settings, "confusions", miou_interval, paired_miou_gain, seed)
