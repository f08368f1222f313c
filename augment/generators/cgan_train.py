"""Training loop of the class-conditional GAN (networks in `cgan.py`).

Hinge loss (Lim & Ye 2017; Miyato et al. 2018, eq. 16-17):

    L_D = E_x[max(0, 1 - D(x, y))] + E_z[max(0, 1 + D(G(z, y~), y~))]
    L_G = -E_z[D(G(z, y~), y~)]  (+ lambda_ms / (mean|G(z1,y)-G(z2,y)| / mean|z1-z2| + eps))

With `config.diffaugment`, D sees T(x) and T(G(z)) for random differentiable T (DiffAugment);
with `config.mode_seeking` > 0, the G batch is pairs (z1, y), (z2, y) and the MSGAN term
above (Mao et al. 2019) rewards G for mapping different z to different images.

`d_step` / `g_step` are pure functions of (models, optimizer, batch): no hidden RNG, no
process-group code. `fit_cgan` draws every random number (batch order, z, fake labels)
from a `torch.Generator` seeded with `derive_seed(config.seed, stream, worker, step, ...)`,
so step t's randomness does not depend on how the run got to step t: a run resumed from
`save_training_state` reproduces the uninterrupted run bit for bit (on the same device).

Ray Train: build the state with `CGANState.create(config, device=..., prepare_model=
ray.train.torch.prepare_model)` (or load it with the same hook) inside
`train_loop_per_worker`, pass `worker_index=<world rank>` so ranks draw different batches,
and call `fit_cgan(..., state=state)`. The EMA copy and checkpoints use the unwrapped modules.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from augment.generators.cgan import (
    INIT_G_STREAM,
    CGANConfig,
    CGANGenerator,
    ProjectionDiscriminator,
    init_weights,
)
from augment.generators.diffaugment import diff_augment
from augment.seeding import derive_seed

LogFn = Callable[[int, float, float, float], None]
PrepareFn = Callable[[nn.Module], nn.Module]

# Independent random streams under config.seed (keys for derive_seed).
_INIT_D, _SHUFFLE, _D_NOISE, _G_NOISE, _D_AUGMENT, _G_AUGMENT = 2, 3, 4, 5, 6, 7  # 1 is INIT_G_STREAM
MODE_SEEKING_EPS = 1e-5
AugmentFn = Callable[[torch.Tensor], torch.Tensor]
STATE_TENSORS, STATE_JSON = "training_state.safetensors", "training_state.json"


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))  (Lim & Ye 2017, eq. 12)."""
    return torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -mean(D(G(z)))  (Miyato et al. 2018, eq. 17)."""
    return -fake_logits.mean()


def d_step(generator: nn.Module, discriminator: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
           real_labels: torch.Tensor, z: torch.Tensor, fake_labels: torch.Tensor,
           augment: AugmentFn | None = None) -> torch.Tensor:
    """One D update on a real batch and G(z, fake_labels); returns the detached loss.

    Pure in the sense that matters here: no RNG and no state besides the arguments
    (`augment`, when given, carries its own seeded generator)."""
    # 1. fakes, no gradient into G
    with torch.no_grad():
        fake = generator(z, fake_labels)
    # 2. one D pass over real and fake together (one forward per backward, DDP-friendly)
    images = torch.cat([real, fake])
    logits = discriminator(images if augment is None else augment(images), torch.cat([real_labels, fake_labels]))
    loss = hinge_d_loss(logits[: real.shape[0]], logits[real.shape[0]:])
    # 3. descend L_D
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss.detach()


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN (Mao et al. 2019, eq. 3) over pairs (first half, second half) of the batch:
    1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + eps)."""
    f1, f2 = fake.chunk(2)
    z1, z2 = z.chunk(2)
    ratio = (f1 - f2).abs().mean() / (z1 - z2).abs().mean()
    return 1.0 / (ratio + MODE_SEEKING_EPS)


def g_step(generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer, z: torch.Tensor,
           labels: torch.Tensor, augment: AugmentFn | None = None, mode_seeking: float = 0.0) -> torch.Tensor:
    """One G update; D's gradients are left for `d_step` to clear. Returns the detached loss
    (the hinge part; the mode-seeking term only shapes the gradient).

    With `mode_seeking` > 0 the batch must be pairs: labels[:b/2] == labels[b/2:]."""
    # 1. fakes with gradient; 2. L_G through D; 3. descend L_G
    fake = generator(z, labels)
    loss = hinge_g_loss(discriminator(fake if augment is None else augment(fake), labels))
    total = loss + mode_seeking * mode_seeking_loss(fake, z) if mode_seeking > 0 else loss
    opt_g.zero_grad(set_to_none=True)
    total.backward()
    opt_g.step()
    return loss.detach()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta; buffers (BN statistics) copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def ema_decay_at(step: int, ema_decay: float) -> float:
    """Warm-up so early EMA is not stuck near the initial weights: min(decay, (1+t)/(10+t))."""
    return min(ema_decay, (1.0 + step) / (10.0 + step))


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP / FSDP-style wrapper (`.module`), else the module itself."""
    return getattr(module, "module", module)


def _rng(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *key))


@dataclass
class CGANState:
    """Everything training needs to continue: models, EMA of G, optimizers, step count."""

    config: CGANConfig
    generator: nn.Module
    discriminator: nn.Module
    generator_ema: CGANGenerator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    step: int = 0

    @classmethod
    def create(cls, config: CGANConfig, *, device: str | torch.device = "cpu",
               prepare_model: PrepareFn | None = None) -> CGANState:
        """Fresh models initialised from config.seed; `prepare_model` wraps G and D (e.g. DDP)."""
        g, d = CGANGenerator(config), ProjectionDiscriminator(config)
        init_weights(g, _rng(config.seed, INIT_G_STREAM))
        init_weights(d, _rng(config.seed, _INIT_D))
        g, d = g.to(device), d.to(device)
        ema = copy.deepcopy(g).eval().requires_grad_(False)
        if prepare_model is not None:
            g, d = prepare_model(g), prepare_model(d)
        opt_g = torch.optim.Adam(g.parameters(), lr=config.lr_g, betas=config.betas)
        opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=config.betas)
        return cls(config, g, d, ema, opt_g, opt_d)

    def save_training_state(self, directory: Path) -> None:
        """Tensors (G, D, EMA G, flattened Adam states) to safetensors; step, config and
        optimizer hyperparameters to JSON, written last (it is what marks the state complete)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("G", self.generator), ("D", self.discriminator), ("G_ema", self.generator_ema)):
            tensors.update({f"{prefix}.{k}": v for k, v in _unwrap(module).state_dict().items()})
        groups = {}
        for prefix, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            sd = opt.state_dict()
            for index, slots in sd["state"].items():
                tensors.update({f"{prefix}.{index}.{name}": value for name, value in slots.items()})
            groups[prefix] = sd["param_groups"]
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        tmp = directory / (STATE_TENSORS + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, directory / STATE_TENSORS)
        meta = {"step": self.step, "config": self.config.to_dict(), "param_groups": groups}
        tmp = directory / (STATE_JSON + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / STATE_JSON)

    @classmethod
    def load_training_state(cls, directory: Path, *, device: str | torch.device = "cpu",
                            prepare_model: PrepareFn | None = None) -> CGANState:
        """Rebuild a state written by `save_training_state` (safetensors + JSON only)."""
        directory = Path(directory)
        if not (directory / STATE_TENSORS).is_file() or not (directory / STATE_JSON).is_file():
            raise ValueError(f"{directory}: no cgan training state ({STATE_TENSORS} + {STATE_JSON})")
        meta = json.loads((directory / STATE_JSON).read_text())
        state = cls.create(CGANConfig.from_dict(meta["config"]), device=device, prepare_model=prepare_model)
        tensors = load_file(str(directory / STATE_TENSORS))
        for prefix, module in (("G", state.generator), ("D", state.discriminator), ("G_ema", state.generator_ema)):
            sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            _unwrap(module).load_state_dict(sub, strict=True)
        for prefix, opt in (("opt_g", state.opt_g), ("opt_d", state.opt_d)):
            slots: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith(prefix + "."):
                    index, name = key[len(prefix) + 1:].split(".", 1)
                    slots.setdefault(int(index), {})[name] = value
            groups = [{**g, "betas": tuple(g["betas"])} for g in meta["param_groups"][prefix]]
            opt.load_state_dict({"state": slots, "param_groups": groups})
        state.step = int(meta["step"])
        return state


class _BatchOrder:
    """Batch b = positions [b*B, (b+1)*B) of the endless stream of per-epoch permutations;
    epoch e's permutation comes from its own seeded generator, so any batch is O(1) to find."""

    def __init__(self, n: int, batch_size: int, seed: int, worker_index: int) -> None:
        self.n, self.batch_size, self.seed, self.worker = n, batch_size, seed, worker_index
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {e: p for e, p in self._cache.items() if e >= epoch - 1}
            self._cache[epoch] = torch.randperm(self.n, generator=_rng(self.seed, _SHUFFLE, self.worker, epoch))
        return self._cache[epoch]

    def __call__(self, batch: int) -> torch.Tensor:
        start = batch * self.batch_size
        positions = torch.arange(start, start + self.batch_size)
        epochs, offsets = positions // self.n, positions % self.n
        return torch.cat([self._perm(int(e))[offsets[epochs == e]] for e in torch.unique(epochs)])


def _check_data(images: np.ndarray, labels: np.ndarray, config: CGANConfig) -> None:
    size, ch = config.image_size, config.channels
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != (size, size, ch) or images.shape[0] == 0:
        got = (getattr(images, "dtype", type(images).__name__), getattr(images, "shape", None))
        raise ValueError(f"cgan: images must be uint8 Nx{size}x{size}x{ch} with N > 0, got {got}")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"cgan: labels must be {images.shape[0]} integers, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"cgan: labels must lie in 0..{config.num_classes - 1}, got {labels.min()}..{labels.max()}")


def fit_cgan(images: np.ndarray, labels: np.ndarray, config: CGANConfig, *, device: str | torch.device = "cpu",
             on_log: LogFn | None = None, state: CGANState | None = None, log_every: int = 50,
             worker_index: int = 0) -> CGANState:
    """Train until `config.train_steps` total steps (one step = `n_critic` D steps + one G step).

    `state` continues a run (fresh or loaded, possibly with prepared/wrapped models); its
    config must equal `config` except for `train_steps`. `on_log(step, d_loss, g_loss,
    steps_per_s)` is called every `log_every` steps and at the end; a non-finite loss there
    raises FloatingPointError. Data stay on `device` as uint8 and are scaled per batch.
    """
    _check_data(images, labels, config)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"cgan: log_every must be a positive integer, got {log_every!r}")
    if state is None:
        state = CGANState.create(config, device=device)
    elif dataclasses.replace(state.config, train_steps=0) != dataclasses.replace(config, train_steps=0):
        raise ValueError(f"cgan: resumed state was trained with {state.config}, which differs from {config} "
                         "in more than train_steps")
    state.config = config
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    ys_cpu = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    ys = ys_cpu.to(device)
    order = _BatchOrder(len(data), config.batch_size, config.seed, worker_index)
    g, d = state.generator.train(), state.discriminator.train()
    b = config.batch_size

    def batch_noise(rng: torch.Generator, pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(b, config.z_dim, generator=rng)
        y = ys_cpu[torch.randint(len(ys_cpu), (b // 2 if pairs else b,), generator=rng)]  # the class prior
        return z.to(device), (torch.cat([y, y]) if pairs else y).to(device)

    def augmenter(*key: int) -> AugmentFn | None:
        if not config.diffaugment:
            return None
        rng = _rng(config.seed, *key)
        return lambda x: diff_augment(x, config.diffaugment, rng)

    tick, tick_step = time.perf_counter(), state.step
    while state.step < config.train_steps:
        t = state.step
        # 1. n_critic D steps, each on the next real batch of the shuffled stream
        for k in range(config.n_critic):
            index = order(t * config.n_critic + k).to(device)
            real = data[index].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            z, y_fake = batch_noise(_rng(config.seed, _D_NOISE, worker_index, t, k))
            d_loss = d_step(g, d, state.opt_d, real, ys[index], z, y_fake,
                            augmenter(_D_AUGMENT, worker_index, t, k))
        # 2. one G step; 3. EMA of G's weights (Yazici et al. 2019)
        z, y_fake = batch_noise(_rng(config.seed, _G_NOISE, worker_index, t), pairs=config.mode_seeking > 0)
        g_loss = g_step(g, d, state.opt_g, z, y_fake, augmenter(_G_AUGMENT, worker_index, t), config.mode_seeking)
        update_ema(state.generator_ema, _unwrap(g), ema_decay_at(t, config.ema_decay))
        state.step += 1
        # 4. log (the only host syncs of the loop)
        if state.step % log_every == 0 or state.step == config.train_steps:
            losses = (float(d_loss), float(g_loss))
            if not all(math.isfinite(v) for v in losses):
                raise FloatingPointError(f"cgan: non-finite loss at step {state.step}: d={losses[0]}, g={losses[1]}")
            now = time.perf_counter()
            rate = (state.step - tick_step) / max(now - tick, 1e-9)
            tick, tick_step = now, state.step
            if on_log is not None:
                on_log(state.step, losses[0], losses[1], rate)
    return state
