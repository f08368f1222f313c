"""One small CNN, used three ways by the report: the domain feature extractor (trained on
the real split), the random baseline extractor (never trained) and the downstream-utility
classifier (trained on real, synthetic, or both; tested on the real holdout).

Everything random comes from `torch.Generator`s seeded by `derive_seed(seed, stream)`:
parameters are built on the meta device (so torch's default init never touches the global
RNG) and then drawn from the init stream; batches and shifts have streams of their own.
On the CPU the same seed gives the same weights in the same process; thread counts and
kernels can differ in the last bits between machines.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.metrics.progress import StepProgress
from augment.seeding import derive_seed

INIT_STREAM = 0  # derive_seed(seed, INIT_STREAM) draws the initial weights
BATCH_STREAM = 1  # ... the order of training examples
SHIFT_STREAM = 2  # ... the random translations
MIN_SIZE = 8  # two stride-2 stages leave at least 2x2 for the global pooling
WARMUP_FRACTION = 0.05


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv-BN-ReLU x4 (two stride-2), global average pooling, a `feature_dim` ReLU layer
    (the features) and a linear head (the logits). Input: NCHW float in [-1, 1], any size
    >= 8 px; `input_size` is the side images are resized to first (None: native size)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, feature_dim: int = 128,
                 *, input_size: int | None = None) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("width", width), ("feature_dim", feature_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"SmallCNN: {name} must be a positive int, got {value!r}")
        if in_channels not in (1, 3):
            raise ValueError(f"SmallCNN: in_channels must be 1 or 3, got {in_channels}")
        check_size(input_size)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.width, self.feature_dim, self.input_size = width, feature_dim, input_size
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
            _conv_bn_relu(4 * width, 4 * width),
        )
        self.penultimate = nn.Linear(4 * width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.body(x).mean(dim=(2, 3))
        return F.relu(self.penultimate(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-ready): `SmallCNN(**model.config())` rebuilds it."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width,
                "feature_dim": self.feature_dim, "input_size": self.input_size}


def check_size(size: int | None) -> None:
    if size is not None and not (isinstance(size, int) and size >= MIN_SIZE):
        raise ValueError(f"input_size must be None or an int >= {MIN_SIZE}, got {size!r}")


def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every parameter of `model` from `generator`: He-normal (fan-out) convs, torch's
    default Linear init (Kaiming-uniform, a=sqrt(5)), BatchNorm at identity, fresh stats."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            else:
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
    return model


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Construct on the meta device (no global RNG draws), then allocate empty CPU storage
    that the caller fills with `init_parameters` or `load_state_dict`."""
    with torch.device("meta"):
        model = factory()
    # Allocated tensor by tensor, not with `Module.to_empty`: its meta kernels run through
    # torch's Python decompositions, whose first call imports sympy (~1 s in a fresh worker).
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is not None:
                module._parameters[name] = nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype),
                                                        requires_grad=parameter.requires_grad)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)
    return model


def new_model(in_channels: int, num_classes: int, *, seed: int, width: int = 32, feature_dim: int = 128,
              input_size: int | None = None) -> SmallCNN:
    """A freshly initialised `SmallCNN`: the same seed gives the same weights."""
    model = build_on_meta(lambda: SmallCNN(in_channels, num_classes, width, feature_dim, input_size=input_size))
    init_parameters(model, torch.Generator().manual_seed(derive_seed(seed, INIT_STREAM)))
    return model  # type: ignore[return-value]


def check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Return `images` if it is uint8 N x H x W x C with C in (1, 3), else raise ValueError."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"{what} must be uint8 N x H x W x C with C 1 or 3, got {images.dtype} {images.shape}")
    if min(images.shape[1:3]) < MIN_SIZE and images.shape[0]:
        raise ValueError(f"{what} must be at least {MIN_SIZE} px on each side, got {images.shape[1:3]}")
    return images


def check_labels(labels: np.ndarray, n: int, num_classes: int, what: str = "labels") -> np.ndarray:
    """Return `labels` as int64 [n] if every id is in 0..num_classes-1, else raise ValueError."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be integer [{n}], got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} must be class ids in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def to_input(images: np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (v / 127.5 - 1); resized to size x size when `size`
    is set and differs (bilinear with antialiasing, so downscaling does not alias)."""
    images = check_images(images)
    check_size(size)
    if not images.flags.writeable:  # a Ray object-store view: torch refuses to wrap read-only memory
        images = images.copy()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if size is not None and x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0)


def preprocessing(in_channels: int, size: int | None) -> dict[str, Any]:
    """What `to_input` does, named for the report (preprocessing changes the scores)."""
    return {"input_size": size if size is not None else "native",
            "resize_filter": "bilinear, antialias (torch)" if size is not None else "none",
            "value_range": [-1.0, 1.0], "scaling": "v / 127.5 - 1",
            "channels": "gray (1)" if in_channels == 1 else "rgb (3)"}


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate each image of NCHW `x` by its own integer (dy, dx) in [-max_shift, max_shift],
    repeating the edge pixels. Returns the shifted batch and the offsets [N, 2], so a mask
    can follow with `shift_by` (no flips: digits and street scenes are not mirror-symmetric)."""
    offsets = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2), generator=generator)
    return shift_by(x, offsets), offsets


def shift_by(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply per-sample (dy, dx) translations to N x C x H x W `x` of any dtype (edge repeat)."""
    n, _, h, w = x.shape
    rows = (torch.arange(h)[None, :] - offsets[:, :1]).clamp(0, h - 1)  # [N, H]
    cols = (torch.arange(w)[None, :] - offsets[:, 1:]).clamp(0, w - 1)  # [N, W]
    batch = torch.arange(n)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # N x H x W x C
    return out.permute(0, 3, 1, 2).contiguous()


def warmup_cosine(steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over 5% of the steps, then cosine decay to 0."""
    warmup = max(1, int(steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` index batches: a fresh permutation each epoch, so every example is seen
    equally often; a batch never mixes two epochs."""
    size = min(batch_size, n)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            if done == steps:
                return
            yield order[start:start + size]
            done += 1


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a training set (shape, pixels, labels): two models trained with the same
    budget on sets of equal fingerprint are the same model."""
    digest = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def check_budget(steps: int, batch_size: int, lr: float) -> None:
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not (isinstance(batch_size, int) and batch_size >= 2):
        raise ValueError(f"batch_size must be an int >= 2 (BatchNorm needs two), got {batch_size!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    seed: int,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    feature_dim: int = 128,
    input_size: int | None = None,
    augment: bool = True,
    shift_fraction: float = 0.125,
    on_log: Callable[[int, float], None] | None = None,
    log_every: int = 50,
    progress: str | None = None,
) -> SmallCNN:
    """Train a `SmallCNN` with AdamW (warm-up + cosine) on uint8 NHWC `images` and int
    `labels`. `augment` translates each image by up to `shift_fraction` of its side (never
    flips). `on_log(step, loss)` is called every `log_every` steps and after the last;
    `progress` labels a progress display (steps, rate, ETA; None: silent).
    Deterministic from `seed`; returns the model in eval mode."""
    images = check_images(images)
    labels = check_labels(labels, len(images), num_classes)
    check_budget(steps, batch_size, lr)
    if len(images) < 2:
        raise ValueError(f"train_classifier needs at least 2 images, got {len(images)}")
    if not 0 <= shift_fraction < 0.5:
        raise ValueError(f"shift_fraction must be in [0, 0.5), got {shift_fraction}")
    model = new_model(images.shape[3], num_classes, seed=seed, width=width, feature_dim=feature_dim,
                      input_size=input_size)
    side = input_size if input_size is not None else min(images.shape[1:3])
    max_shift = round(side * shift_fraction) if augment else 0
    order_rng = torch.Generator().manual_seed(derive_seed(seed, BATCH_STREAM))
    shift_rng = torch.Generator().manual_seed(derive_seed(seed, SHIFT_STREAM))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    targets = torch.from_numpy(labels)
    model.train()
    with StepProgress(progress, steps) as shown:
        for step, index in enumerate(batch_indices(len(images), batch_size, steps, order_rng), start=1):
            x = to_input(images[index.numpy()], input_size)  # per batch: large images never all in memory
            if max_shift:
                x, _ = random_shift(x, max_shift, shift_rng)
            loss = F.cross_entropy(model(x), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            shown.advance()
            if on_log is not None and (step % log_every == 0 or step == steps):
                on_log(step, float(loss))
    return model.eval()


@torch.no_grad()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], model: SmallCNN, images: np.ndarray,
             batch_size: int, width: int) -> np.ndarray:
    images = check_images(images)
    if images.shape[3] != model.in_channels:
        raise ValueError(f"model takes {model.in_channels}-channel images, got {images.shape[3]} channels")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model.eval()
    out = np.empty((len(images), width), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], model.input_size)
        out[start:start + len(x)] = fn(x).numpy()
    return out


def predict_proba(model: SmallCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (softmax of the logits), float32 [N, num_classes], eval mode."""
    return _batched(lambda x: F.softmax(model(x), dim=1), model, images, batch_size, model.num_classes)


def embed(model: SmallCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate features, float32 [N, feature_dim], eval mode."""
    return _batched(model.features, model, images, batch_size, model.feature_dim)
