"""Digits sim-to-real: train a small CNN on simulated crops only, test on real digits.

SOURCE: `simulators.digits` crops (house-number style). REAL: scikit-learn's handwritten
digits (`load_digits`, 1,797 images, 8×8, integer intensities 0..16, ink high). The
benchmark compares plain font renders with shape-randomised ones, and gives the accuracy
of the same CNN trained on real digits for reference. Last line:
`digits_src_acc_plain=… digits_src_acc_shape=… real_acc=…`.

    python benchmarks/digits_transfer.py [--n-train 6000] [--epochs 8] [--seed 0]

Seeding: the global torch RNG is never seeded or used; weights are initialised and
batches shuffled from a local `torch.Generator(seed)`, and the CNN has no dropout. CPU
convolutions may still differ in the last bits across thread counts.
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from simulators.digits import DigitsControls, DigitsFamily

RENDER_SIZE = 32  # simulated crops are drawn at 32×32, like the real digits' source bitmaps
REAL_SIDE = 8  # the real images' side
REAL_MAX = 16.0  # the real images' top intensity


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 real digits as float32 (N, 8, 8) in 0..16, and their labels."""
    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def to_real_format(image: np.ndarray, box: tuple[float, float, float, float], ink_darker: bool) -> np.ndarray:
    """One simulated crop → the real domain's 8×8, 0..16 format.

    1. Grey: RGB → luminance (cv2's BT.601 weights); inverted when the ink is darker than
       the background (known from the description), so ink is high, as in the real data.
    2. Size-normalise like the real set: a square of side max(box h, box w) centred on the
       centre digit's box (edges replicated if it leaves the crop), resized to 32×32
       (bilinear), then to 8×8 by area averaging (the real 8×8 values are counts of ink
       pixels in 4×4 blocks of a 32×32 bitmap, i.e. area averages).
    3. Intensities: min-max to 0..16, rounded to integers (the real data's values).
    """
    grey = image[..., 0] if image.shape[-1] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = grey.astype(np.float32)
    if ink_darker:
        grey = 255.0 - grey
    x, y, w, h = box
    side = max(w, h)
    pad = math.ceil(side)
    padded = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    x0 = round(x + w / 2 - side / 2) + pad
    y0 = round(y + h / 2 - side / 2) + pad
    s = round(side)
    square = padded[y0 : y0 + s, x0 : x0 + s]
    square = cv2.resize(square, (32, 32), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(square, (REAL_SIDE, REAL_SIDE), interpolation=cv2.INTER_AREA)
    lo, hi = float(small.min()), float(small.max())
    return np.round((small - lo) / max(hi - lo, 1e-6) * REAL_MAX).astype(np.float32)


def to_model_input(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 8, 8) in 0..16 → (N, 1, size, size) in 0..1; bilinear resize when size ≠ 8.

    Real and converted simulated digits both go through this one function.
    """
    scaled = images / REAL_MAX
    if size != REAL_SIDE:
        scaled = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in scaled])
    return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))[:, None]


def _luminance(colour: list[int]) -> float:
    return float(colour[0]) if len(colour) == 1 else 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def simulated_digits(controls: DigitsControls, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render `n` crops (frame i uses seed `seed * 1_000_003 + i`) in the real format."""
    family = DigitsFamily()
    images = np.empty((n, REAL_SIDE, REAL_SIDE), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        d = family.describe(seed * 1_000_003 + i, controls, RENDER_SIZE)
        frame = family.render(d)
        b = frame.boxes[0]
        images[i] = to_real_format(frame.image, (b.x, b.y, b.w, b.h), _luminance(d["fg"]) < _luminance(d["bg"]))
        labels[i] = frame.label
    return images, labels


class SmallCNN(nn.Module):
    """Three 3×3 conv layers (16, 32, 64 channels), two 2× pools, one hidden dense layer."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _init(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default layer init, drawn from a local generator instead of the global one."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def train_and_test(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
    *, epochs: int, seed: int, batch: int = 64, lr: float = 2e-3,
) -> float:
    """Adam on cross-entropy for `epochs` passes; returns test accuracy."""
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN(x_train.shape[-1])
    _init(model, generator)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x_test[i : i + 512]).argmax(1) for i in range(0, len(x_test), 512)])
    return float((predicted == y_test).float().mean())


def source_only_accuracy(
    controls: DigitsControls, *, n_train: int = 6000, seed: int = 0, epochs: int = 8, size: int = 16
) -> float:
    """Train on `n_train` simulated crops (converted by `to_real_format`), test on all 1,797 real digits."""
    sim_x, sim_y = simulated_digits(controls, n_train, seed)
    real_x, real_y = real_digits()
    return train_and_test(
        to_model_input(sim_x, size), torch.from_numpy(sim_y),
        to_model_input(real_x, size), torch.from_numpy(real_y),
        epochs=epochs, seed=seed,
    )


def real_accuracy(*, seed: int = 0, epochs: int = 8, size: int = 16, test_fraction: float = 0.5) -> float:
    """Reference: the same CNN trained on a stratified real split, tested on the rest."""
    real_x, real_y = real_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        real_x, real_y, test_size=test_fraction, random_state=seed, stratify=real_y
    )
    # The real split is small; repeat it to give roughly as many steps as a simulated run.
    repeat = max(1, 6000 // len(x_tr))
    return train_and_test(
        to_model_input(np.concatenate([x_tr] * repeat), size), torch.from_numpy(np.concatenate([y_tr] * repeat)),
        to_model_input(x_te, size), torch.from_numpy(y_te),
        epochs=epochs, seed=seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    common = {"n_train": args.n_train, "seed": args.seed, "epochs": args.epochs, "size": args.size}
    results = {}
    for name, controls in (
        ("plain", DigitsControls(shape_randomisation=False)),
        ("shape", DigitsControls(shape_randomisation=True)),
    ):
        start = time.perf_counter()
        results[name] = source_only_accuracy(controls, **common)
        print(f"source-only ({name} renders): {results[name]:.3f} on 1797 real digits "
              f"[{time.perf_counter() - start:.0f} s]")
    start = time.perf_counter()
    real = real_accuracy(seed=args.seed, epochs=args.epochs, size=args.size)
    print(f"real-trained (50% split): {real:.3f} on the other half [{time.perf_counter() - start:.0f} s]")
    print(f"digits_src_acc_plain={results['plain']:.3f} digits_src_acc_shape={results['shape']:.3f} real_acc={real:.3f}")


if __name__ == "__main__":
    main()
