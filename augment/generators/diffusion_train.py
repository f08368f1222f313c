"""Training for the class-conditional diffusion model: DDPM objective + CFG label dropout.

`training_step` is one pure loss evaluation; `fit_diffusion` is the loop (AdamW, linear LR
warmup, gradient clipping, EMA, optional bf16 autocast on CUDA) and is resumable: a
`DiffusionState` (model, EMA, optimizer, step, RNG) saves to safetensors + JSON and loads
back to continue bit-for-bit on the same device.

Ray Train: call `fit_diffusion` from `train_loop_per_worker` with a `state` whose `model`
was wrapped by `ray.train.torch.prepare_model` (DDP) and `device` from
`ray.train.torch.get_device()`; pass each worker its data shard and `rank` so workers draw
different noise. Nothing here creates a process group.

EMA is a plain copy of the UNet updated in place (not `diffusers.training_utils.EMAModel`):
the copy is itself a `UNet2DModel`, so it samples and `save_pretrained`s directly, and its
`state_dict` is plain tensors for safetensors, where `EMAModel.state_dict` mixes tensors
with Python scalars. The decay follows the same warmup as EMAModel's default,
min(ema_decay, (1 + step) / (10 + step)), so short runs are not dominated by the random init.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from augment.generators.diffusion import (
    DiffusionConfig,
    build_train_scheduler,
    build_unet,
    to_model_space,
)
from augment.seeding import derive_seed

LogFn = Callable[[int, float, float], None]
STATE_FILE = "state.json"


def unwrap(model: torch.nn.Module) -> UNet2DModel:
    """The UNet inside a DDP/`prepare_model` wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


@dataclass
class DiffusionState:
    """Everything a fit needs to continue: weights, EMA weights, optimizer, step, RNG."""

    config: DiffusionConfig
    model: torch.nn.Module
    ema: UNet2DModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0

    @property
    def device(self) -> torch.device:
        """Where the weights live (the training device)."""
        return next(unwrap(self.model).parameters()).device

    @classmethod
    def new(cls, config: DiffusionConfig, *, device: str | torch.device = "cpu", rank: int = 0) -> DiffusionState:
        """Fresh weights (initialised from `config.seed`) and a generator seeded by (seed, rank)."""
        device = torch.device(device)
        model = build_unet(config, generator=torch.Generator().manual_seed(derive_seed(config.seed, 0)))
        model.to(device)
        ema = copy.deepcopy(model).requires_grad_(False).eval()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(derive_seed(config.seed, 1, rank))
        return cls(config, model, ema, optimizer, generator, 0)

    def save_training_state(self, directory: str | Path) -> None:
        """model/ema/optimizer tensors as safetensors; step, RNG, config, optimizer scalars as JSON."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(_contiguous(unwrap(self.model).state_dict()), directory / "model.safetensors")
        save_file(_contiguous(self.ema.state_dict()), directory / "ema.safetensors")
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer)
        save_file(opt_tensors, directory / "optimizer.safetensors")
        meta = {"step": self.step, "config": self.config.to_dict(), "optimizer": opt_meta,
                "generator_state": base64.b64encode(self.generator.get_state().numpy().tobytes()).decode()}
        (directory / STATE_FILE).write_text(json.dumps(meta, indent=1) + "\n")  # written last

    @classmethod
    def load_training_state(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> DiffusionState:
        """Rebuild a state saved by `save_training_state` (no pickles are read)."""
        directory = Path(directory)
        if not (directory / STATE_FILE).is_file():
            raise ValueError(f"{directory}: no {STATE_FILE}; not a diffusion training state")
        meta = json.loads((directory / STATE_FILE).read_text())
        config = DiffusionConfig.from_dict(meta["config"])
        device = torch.device(device)
        model = build_unet(config)
        model.load_state_dict(load_file(directory / "model.safetensors"))
        model.to(device)
        ema = build_unet(config)
        ema.load_state_dict(load_file(directory / "ema.safetensors"))
        ema.to(device).requires_grad_(False).eval()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        optimizer.load_state_dict(_unflatten_optimizer(load_file(directory / "optimizer.safetensors"),
                                                       meta["optimizer"]))
        raw = np.frombuffer(base64.b64decode(meta["generator_state"]), dtype=np.uint8).copy()
        generator = torch.Generator()
        generator.set_state(torch.from_numpy(raw))
        return cls(config, model, ema, optimizer, generator, int(meta["step"]))


def training_step(model: torch.nn.Module, batch_images: torch.Tensor, batch_labels: torch.Tensor,
                  scheduler: DDPMScheduler, generator: torch.Generator, p_uncond: float, *,
                  null_label: int | None = None) -> torch.Tensor:
    """The simple DDPM loss (Ho et al. 2020, eq. 14) with CFG label dropout (Ho & Salimans 2022, Alg. 1).

    `batch_images` are x_0 in [-1, 1] (NxCxHxW) on the model's device. All randomness comes
    from `generator` (a CPU generator; draws are moved to the device).
    """
    if null_label is None:
        null_label = int(unwrap(model).config.num_class_embeds) - 1
    n, device = batch_images.shape[0], batch_images.device
    # 1. t ~ Uniform({0, ..., T-1}), ε ~ N(0, I).
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
    noise = torch.randn(batch_images.shape, generator=generator).to(device, batch_images.dtype)
    # 2. x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (eq. 4).
    x_t = scheduler.add_noise(batch_images, noise, t)
    # 3. Replace c by ∅ with probability p_uncond (joint training of ε(x, c) and ε(x, ∅)).
    drop = (torch.rand(n, generator=generator) < p_uncond).to(device)
    labels = torch.where(drop, torch.full_like(batch_labels, null_label), batch_labels)
    # 4. ‖target − ε_θ(x_t, t, c)‖² (eq. 14), target ε or v (Salimans & Ho 2022, arXiv:2202.00512).
    pred = model(x_t, t, class_labels=labels, return_dict=False)[0]
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(batch_images, noise, t)
    return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← decay · θ_ema + (1 − decay) · θ."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in unwrap(model).parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), unwrap(model).buffers(), strict=True):
        b_ema.copy_(b)


def fit_diffusion(images: np.ndarray, labels: np.ndarray, config: DiffusionConfig, *,
                  device: str | torch.device = "cpu", on_log: LogFn | None = None,
                  state: DiffusionState | None = None, until_step: int | None = None,
                  log_every: int = 50, rank: int = 0) -> DiffusionState:
    """Train (or continue training) to `until_step` (default `config.train_steps`).

    `images` uint8 NxHxWxC, `labels` int64 N in [0, num_classes). Batches are drawn with
    replacement from `state.generator`, so a resumed run sees the same batches as an
    uninterrupted one. `on_log(step, mean loss since last log, steps/s)`. `device` and
    `rank` are used only to build a new state; a given `state` keeps its own device.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _check_data(images, labels, config)
    if state is None:
        state = DiffusionState.new(config, device=device, rank=rank)
    elif state.config != config:
        raise ValueError(f"state was made with a different config: {state.config} != {config}")
    until = config.train_steps if until_step is None else until_step
    device = state.device
    scheduler = build_train_scheduler(config)
    # 1. Whole dataset on the device once, scaled to [-1, 1].
    x0_all = to_model_space(images).to(device)
    c_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    use_bf16 = config.bf16 and device.type == "cuda"
    state.model.train()
    loss_sum, window, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    while state.step < until:
        # 2. Batch, learning rate (linear warmup), loss (eq. 14), clipped AdamW step.
        idx = torch.randint(0, len(images), (config.batch_size,), generator=state.generator).to(device)
        lr = config.lr * min(1.0, (state.step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext():
            loss = training_step(state.model, x0_all[idx], c_all[idx], scheduler, state.generator,
                                 config.p_uncond, null_label=config.null_label)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        state.optimizer.step()
        # 3. EMA with warmup: decay_k = min(ema_decay, (1 + k) / (10 + k)).
        ema_update(state.ema, state.model, min(config.ema_decay, (1 + state.step) / (10 + state.step)))
        state.step += 1
        loss_sum += loss.detach()
        window += 1
        if on_log is not None and (state.step % log_every == 0 or state.step == until):
            elapsed = time.perf_counter() - t0
            on_log(state.step, float(loss_sum) / window, window / elapsed if elapsed > 0 else float("inf"))
            loss_sum, window, t0 = torch.zeros((), device=device), 0, time.perf_counter()
    state.model.eval()
    return state


def _check_data(images: np.ndarray, labels: np.ndarray, config: DiffusionConfig) -> None:
    expected = (config.image_size, config.image_size, config.channels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"images must be uint8 Nx{expected[0]}x{expected[1]}x{expected[2]}, "
                         f"got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if len(images) == 0:
        raise ValueError("no images to fit on")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"labels must be in [0, {config.num_classes}), got [{labels.min()}, {labels.max()}]")


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict → ({"<param idx>.<name>": tensor}, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


__all__ = ["DiffusionState", "ema_update", "fit_diffusion", "training_step", "unwrap"]
