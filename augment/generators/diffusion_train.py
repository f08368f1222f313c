"""Training step of the class-conditional diffusion model: DDPM objective + CFG label dropout.

The loop around it (learning-rate warm-up, EMA, states, DDP, progress) is the shared
trainer (`augment.generators.trainer`); this module supplies what is particular to
diffusion: the seeded UNet, AdamW, and one step, `DiffusionStep`:

1. a batch drawn with replacement from the state's stateful stream `state.rng` (seeded by
   (seed, rank), saved with the state, so a resumed fit draws what an uninterrupted one
   would);
2. the simple DDPM loss (Ho et al. 2020, eq. 14) with classifier-free-guidance label
   dropout (Ho & Salimans 2022, Alg. 1), its t, ε and dropout drawn from the same stream;
3. a clipped AdamW step, in bf16 autocast on CUDA when `fit.bf16`.

`training_step` is the loss alone, a pure function of its arguments.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from augment.generators.diffusion import build_train_scheduler, build_unet, to_model_space
from augment.generators.diffusion_config import DiffusionFit
from augment.generators.family import DataShape, TrainingData
from augment.generators.trainer import TrainState, autocast, descend, unwrap
from augment.seeding import derive_seed

INIT_STREAM = 0  # derive_seed(seed, INIT_STREAM) initialises the UNet


def build_modules(fit: DiffusionFit, shape: DataShape, seed: int) -> dict[str, torch.nn.Module]:
    """The UNet ε_θ, initialised from the seed (on the CPU)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, INIT_STREAM))
    return {"unet": build_unet(fit, shape, generator=generator)}


def make_optimizers(fit: DiffusionFit, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
    return {"unet": torch.optim.AdamW(modules["unet"].parameters(), lr=fit.lr, weight_decay=fit.weight_decay)}


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


class DiffusionStep:
    """One optimizer step of DDPM training on `data` (kept on the device, scaled once)."""

    def __init__(self, fit: DiffusionFit, shape: DataShape, data: TrainingData, device: torch.device) -> None:
        self.fit, self.device = fit, device
        self.null_label = shape.num_classes  # ∅ is the last class embedding
        self.scheduler = build_train_scheduler(fit)
        # The whole dataset on the device once, in [-1, 1] (Ho et al. 2020, §3.3).
        self.x0 = to_model_space(data.images).to(device)
        self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64)).to(device)

    def __call__(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        unet = state.modules["unet"]
        # 1. A batch with replacement from the state's stream.
        idx = torch.randint(0, len(self.x0), (self.fit.batch_size,), generator=state.rng).to(self.device)
        # 2. Loss (eq. 14) with label dropout; t, ε and the dropout come from the same stream.
        with autocast(self.device, self.fit.bf16):
            loss = training_step(unet, self.x0[idx], self.labels[idx], self.scheduler, state.rng,
                                 self.fit.p_uncond, null_label=self.null_label)
        # 3. Clipped AdamW step.
        descend(loss, state.optimizers["unet"], clip=unet.parameters(), max_norm=self.fit.grad_clip)
        return {"loss": loss.detach()}


__all__ = ["DiffusionStep", "build_modules", "make_optimizers", "training_step"]
