"""Class accuracy of generated digits: does a sample look like the class it was asked for?

A small reference CNN is trained (seeded with a local `torch.Generator`, no global RNG) on
the REAL training rows of a digits job (rows with source == "real" in OUT/shards) and
scored on the job's real holdout (OUT/holdout) -> `real_holdout_acc`. It then classifies
the generated rows of each job: `class_acc_<kind>` is the fraction of generated rows
assigned to their conditioning label (per class too).

Sweeps, sampled here from the job's saved model with the same seeds at every setting:

- diffusion: guidance w = 0, 1, 2, 4 (DDIM, steps from OUT/job.json), N per class;
- cgan: truncation None, 2.0, 1.0, 0.5, N per class;

each with class accuracy and diversity = mean pairwise L2 distance between samples of the
same class (averaged over classes), in pixel space scaled to [0, 1] (`div_px`) and in
the classifier's penultimate-layer feature space (`div_feat`). The real holdout's own
diversity is printed as a reference. Expect accuracy up and diversity down as w grows
(and as truncation shrinks).

Job folders come from

    synthaug run configs/digits_diffusion.yaml --out runs/digits_diffusion
    synthaug run configs/digits_cgan.yaml --out runs/digits_cgan

and this script is

    python benchmarks/quality_digits.py [--diffusion runs/digits_diffusion] [--cgan runs/digits_cgan]
        [--seed 0] [--n-per-class 50] [--epochs 15]

A missing folder is reported as nan. Last line:
`class_acc_diffusion=… class_acc_cgan=… real_holdout_acc=… sweep_acc_w0=… sweep_acc_w4=…
sweep_div_w0=… sweep_div_w4=…` (sweep_div = pixel-space diversity).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from augment.generators.base import SampleRequest
from augment.seeding import derive_seed
from augment.shards import read_manifest, table_to_samples
from jobs.job_file import job_path

GUIDANCE = (0.0, 1.0, 2.0, 4.0)
TRUNCATION: tuple[float | None, ...] = (None, 2.0, 1.0, 0.5)
MAKE = {"diffusion": "synthaug run configs/digits_diffusion.yaml --out {out}",
        "cgan": "synthaug run configs/digits_cgan.yaml --out {out}"}
NAN = float("nan")


# ---------------------------------------------------------------- job folders

def read_rows(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images uint8 NxHxWxC, labels, sources, class names) of the shards a manifest lists."""
    manifest = read_manifest(folder)
    images, labels, sources = [], [], []
    for entry in manifest.shards:
        for s in table_to_samples(pq.read_table(folder / entry.file)):
            if s.label is None:
                continue
            images.append(s.image)
            labels.append(s.label)
            sources.append(s.source)
    if not images:
        return (np.zeros((0, 16, 16, 1), np.uint8), np.zeros(0, np.int64), np.zeros(0, object),
                manifest.class_names)
    return np.stack(images), np.asarray(labels, np.int64), np.asarray(sources, object), manifest.class_names


class Job:
    """What this benchmark needs of one job folder."""

    def __init__(self, kind: str, out: Path) -> None:
        self.kind, self.out = kind, out
        self.job = json.loads((out / "job.json").read_text())
        generate = self.job["config"].get("generate") or {}
        # One generate section, or a list of steps (issue 10): the step of this family.
        steps = generate if isinstance(generate, list) else [generate]
        step = next((s for s in steps if s.get("kind") == kind), None)
        if step is None:
            raise SystemExit(f"{out}: not a {kind} job (generate kinds: {[s.get('kind') for s in steps]})")
        self.generate = step
        self.images, self.labels, self.sources, self.class_names = read_rows(out / "shards")
        self.holdout_images, self.holdout_labels, _, _ = read_rows(out / "holdout")
        # job.json keeps the fit per step kind, its path relative to the job folder (older files: absolute).
        fitted = ((self.job.get("stages", {}).get("fit") or {}).get(kind) or {}).get("model")
        self.model_dir = job_path(fitted, out) if fitted else out / "checkpoints" / kind / "model"

    def real(self) -> tuple[np.ndarray, np.ndarray]:
        keep = self.sources == "real"
        return self.images[keep], self.labels[keep]

    def generated(self) -> tuple[np.ndarray, np.ndarray]:
        keep = self.sources == self.kind
        return self.images[keep], self.labels[keep]


def open_job(kind: str, out: Path) -> Job | None:
    status = json.loads((out / "job.json").read_text()).get("status") if (out / "job.json").is_file() else None
    if status != "complete" or not (out / "shards" / "_manifest.json").is_file():
        print(f"[{kind}] {out}: no finished job folder (status {status}); make or finish it with\n    "
              + MAKE[kind].format(out=out) + f"\n  (reporting nan for {kind})")
        return None
    return Job(kind, out)


# ---------------------------------------------------------------- reference classifier

class SmallCNN(nn.Module):
    """conv32-conv32-pool-conv64-pool-fc128-fc(classes); `features` is the fc128 output."""

    def __init__(self, size: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (size // 4) ** 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


@torch.no_grad()
def _init_(model: nn.Module, generator: torch.Generator) -> None:
    """He-uniform weights, zero biases, all drawn from `generator` (never the global RNG)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = math.sqrt(6.0 / m.weight[0].numel())
            m.weight.uniform_(-bound, bound, generator=generator)
            nn.init.zeros_(m.bias)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NxHxWxC -> float NxCxHxW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def _shift(x: torch.Tensor, generator: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Random translation by up to `pad` pixels per image (zero fill), from `generator`."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offset = torch.randint(0, (2 * pad + 1) ** 2, (n,), generator=generator)
    out = torch.empty_like(x)
    for k in range(int((2 * pad + 1) ** 2)):
        dy, dx = divmod(k, 2 * pad + 1)
        pick = offset == k
        out[pick] = padded[pick, :, dy:dy + h, dx:dx + w]
    return out


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int,
                     epochs: int, batch_size: int = 64, lr: float = 2e-3) -> SmallCNN:
    generator = torch.Generator().manual_seed(derive_seed(seed, 0xC1A55))
    model = SmallCNN(images.shape[1], images.shape[3], num_classes)
    _init_(model, generator)
    x, y = to_tensor(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(_shift(x[idx], generator)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def classify(model: SmallCNN, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, penultimate features) in batches."""
    preds, feats = [], []
    for start in range(0, len(images), 512):
        f = model.features(to_tensor(images[start:start + 512]))
        feats.append(f)
        preds.append(model.fc2(f).argmax(1))
    if not preds:
        return np.zeros(0, np.int64), np.zeros((0, 128), np.float32)
    return torch.cat(preds).numpy(), torch.cat(feats).numpy()


# ---------------------------------------------------------------- metrics

def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean()) if len(labels) else NAN


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    return [accuracy(pred[labels == c], labels[labels == c]) for c in range(num_classes)]


def diversity(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the mean pairwise L2 distance between that class's vectors."""
    per_class = []
    for c in np.unique(labels):
        v = torch.from_numpy(np.asarray(vectors[labels == c], np.float64)).flatten(1)
        if len(v) < 2:
            continue
        d = torch.cdist(v, v)
        iu = torch.triu_indices(len(v), len(v), offset=1)
        per_class.append(float(d[iu[0], iu[1]].mean()))
    return float(np.mean(per_class)) if per_class else NAN


def score(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred, feats = classify(model, images)
    return {"acc": accuracy(pred, labels),
            "div_px": diversity(images.astype(np.float64) / 255.0, labels),
            "div_feat": diversity(feats, labels)}


def fmt(value: float, digits: int = 4) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


# ---------------------------------------------------------------- sweeps

def sweep_request(num_classes: int, per_class: int, seed: int) -> SampleRequest:
    """The same labels and seeds for every setting of a sweep."""
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    seeds = [derive_seed(seed, 0x5EEE9, k) for k in range(len(labels))]
    return SampleRequest(labels=labels, seeds=seeds, ids=[f"sweep/{k:06d}" for k in range(len(labels))])


def samples_to_arrays(samples: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([s.image for s in samples]), np.asarray([s.label for s in samples], np.int64)


def diffusion_sweep(job: Job, model: SmallCNN, per_class: int, seed: int) -> dict[float, dict[str, float]]:
    import diffusers

    from augment.generators.diffusion import ClassConditionalDiffusion

    diffusers.utils.logging.set_verbosity_error()  # no "install accelerate" notice
    sample_cfg = job.generate.get("sample") or {}
    steps, batch = int(sample_cfg.get("steps", 25)), int(sample_cfg.get("batch_size", 64))
    pipe = ClassConditionalDiffusion.from_pretrained(job.model_dir)
    request = sweep_request(pipe.num_classes, per_class, seed)
    print(f"\n[diffusion] guidance sweep: {job.model_dir}, DDIM {steps} steps, {per_class} per class, "
          f"same seeds for every w (job sampled with {sample_cfg.get('scheduler', 'ddim')}, "
          f"w={sample_cfg.get('guidance')})")
    results = {}
    for w in GUIDANCE:
        t0 = time.perf_counter()
        images, labels = samples_to_arrays(pipe.sample(request, guidance=w, steps=steps, scheduler="ddim",
                                                       batch_size=batch))
        results[w] = score(model, images, labels)
        results[w]["seconds"] = time.perf_counter() - t0
    return results


def cgan_sweep(job: Job, model: SmallCNN, per_class: int, seed: int) -> dict[float | None, dict[str, float]]:
    from augment.generators.cgan import ClassConditionalGAN

    sample_cfg = job.generate.get("sample") or {}
    gan = ClassConditionalGAN.from_pretrained(job.model_dir)
    request = sweep_request(gan.shape.num_classes, per_class, seed)
    print(f"\n[cgan] truncation sweep: {job.model_dir}, {per_class} per class, same seeds for every setting "
          f"(job sampled with truncation={sample_cfg.get('truncation')})")
    results = {}
    for trunc in TRUNCATION:
        t0 = time.perf_counter()
        images, labels = samples_to_arrays(gan.sample(request, truncation=trunc,
                                                      batch_size=int(sample_cfg.get("batch_size", 256))))
        results[trunc] = score(model, images, labels)
        results[trunc]["seconds"] = time.perf_counter() - t0
    return results


def print_sweep(title: str, results: dict[Any, dict[str, float]], real: dict[str, float]) -> None:
    print(f"{title:>12} {'acc':>7} {'div_px':>8} {'div_feat':>9} {'seconds':>8}")
    for key, r in results.items():
        print(f"{key!s:>12} {fmt(r['acc'], 3):>7} {fmt(r['div_px'], 3):>8} {fmt(r['div_feat'], 2):>9} "
              f"{r['seconds']:>8.1f}")
    print(f"{'real holdout':>12} {fmt(real['acc'], 3):>7} {fmt(real['div_px'], 3):>8} "
          f"{fmt(real['div_feat'], 2):>9} {'':>8}")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusion", type=Path, default=Path("runs/digits_diffusion"), help="diffusion job folder")
    parser.add_argument("--cgan", type=Path, default=Path("runs/digits_cgan"), help="cgan job folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-per-class", type=int, default=50, help="samples per class in each sweep setting")
    parser.add_argument("--epochs", type=int, default=15, help="reference classifier epochs")
    args = parser.parse_args()
    started = time.perf_counter()

    jobs = {kind: open_job(kind, folder) for kind, folder in (("diffusion", args.diffusion), ("cgan", args.cgan))}
    present = [job for job in jobs.values() if job is not None]
    acc = {"diffusion": NAN, "cgan": NAN}
    real_acc = NAN
    sweep: dict[float, dict[str, float]] = {}
    if present:
        # 1. The reference classifier, on the real training rows of the first job.
        ref = present[0]
        real_x, real_y = ref.real()
        if len(real_x) == 0:
            raise SystemExit(f"{ref.out}: no real training rows (output.include_real: false?); "
                             "the reference classifier needs them")
        if real_x.shape[1:] != (16, 16, 1):
            print(f"note: images are {real_x.shape[1:]}, this benchmark is tuned for 16x16 gray")
        for other in present[1:]:
            same = (np.array_equal(other.real()[1], real_y) and other.class_names == ref.class_names
                    and np.array_equal(other.holdout_labels, ref.holdout_labels))
            if not same:
                print(f"warning: {other.out} has other real rows or classes than {ref.out}; "
                      f"the classifier is trained on {ref.out}'s")
        num_classes = len(ref.class_names)
        t0 = time.perf_counter()
        model = train_classifier(real_x, real_y, num_classes, seed=args.seed, epochs=args.epochs)
        train_s = time.perf_counter() - t0
        real = score(model, ref.holdout_images, ref.holdout_labels)
        real_acc = real["acc"]
        print(f"reference CNN: {len(real_x)} real training rows of {ref.out}, {args.epochs} epochs, "
              f"{train_s:.1f}s; real holdout ({len(ref.holdout_labels)} rows) accuracy {fmt(real_acc)}")

        # 2. Class accuracy of the generated rows of each job.
        per_class: dict[str, list[float]] = {}
        counts: dict[str, np.ndarray] = {}
        for kind, job in jobs.items():
            if job is None:
                continue
            gx, gy = job.generated()
            pred, _ = classify(model, gx)
            acc[kind] = accuracy(pred, gy)
            per_class[kind] = per_class_accuracy(pred, gy, num_classes)
            counts[kind] = np.bincount(gy, minlength=num_classes)
            print(f"[{kind}] {len(gy)} generated rows in {job.out / 'shards'}: class accuracy {fmt(acc[kind])}")
        holdout_pred, _ = classify(model, ref.holdout_images)
        per_class["real holdout"] = per_class_accuracy(holdout_pred, ref.holdout_labels, num_classes)
        print("\nper-class accuracy (generated rows; n = rows per class)")
        print(f"{'class':>6} " + " ".join(f"{k:>12} {'n':>5}" if k in counts else f"{k:>12}" for k in per_class))
        for c, name in enumerate(ref.class_names):
            cells = []
            for k, values in per_class.items():
                cells.append(f"{fmt(values[c], 3):>12}" + (f" {int(counts[k][c]):>5}" if k in counts else ""))
            print(f"{name:>6} " + " ".join(cells))

        # 3. Sweeps from the saved models, same seeds at every setting.
        if jobs["diffusion"] is not None:
            sweep = diffusion_sweep(jobs["diffusion"], model, args.n_per_class, args.seed)
            print_sweep("w", sweep, real)
        if jobs["cgan"] is not None:
            print_sweep("truncation", cgan_sweep(jobs["cgan"], model, args.n_per_class, args.seed), real)

    print(f"\ntotal {time.perf_counter() - started:.1f}s (excluding the jobs)")
    w0, w4 = sweep.get(0.0, {}), sweep.get(4.0, {})
    print(f"class_acc_diffusion={fmt(acc['diffusion'])} class_acc_cgan={fmt(acc['cgan'])} "
          f"real_holdout_acc={fmt(real_acc)} sweep_acc_w0={fmt(w0.get('acc', NAN))} "
          f"sweep_acc_w4={fmt(w4.get('acc', NAN))} sweep_div_w0={fmt(w0.get('div_px', NAN))} "
          f"sweep_div_w4={fmt(w4.get('div_px', NAN))}")


if __name__ == "__main__":
    main()
