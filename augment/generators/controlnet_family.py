"""The `controlnet` family: label map → image with a ControlNet (Zhang et al. 2023) on a
frozen base diffusion UNet. Fitted on the source's (image, mask) pairs, it paints a new
image for each label map it is given, and the row keeps that map as its mask.

The fit has two phases on the one shared trainer (as CyCADA's): `base_steps` of a small
diffusers `UNet2DConditionModel` on the images, then `steps` of a `ControlNetModel.from_unet`
copy of it with the base frozen (`controlnet_train`). With `fit.pretrained` (a local Stable
Diffusion folder, `controlnet_sd`) there is no first phase.

There is no text here, so the base's "prompt" (its encoder_hidden_states, B × C × D for C
classes) is made from the map: token c is a learned `present[c]` when class c occurs in the
map, else a learned `absent[c]`; the null prompt ∅ is C more learned tokens, swapped in with
probability `p_uncond` (base) and `p_uncond_control` (ControlNet) while training. The painter
(`controlnet`) samples with classifier-free guidance w (`guidance`, the diffusion family's
convention; diffusers' guidance_scale = 1 + w), the control given to both halves:
ε̃ = (1 + w) · ε(x_t, prompt(map), c) − w · ε(x_t, ∅, c). The conditioning image c is the
map one-hot (C channels) or in a fixed palette (3 channels: `spade_train.palette`, hues spaced
by the golden ratio, derived from the class count alone).

`ControlNetFit` (declared once, in `controlnet_config`) is the job config's `fit:` section
and the constructor config of the modules, painter and step. This module imports no torch
(config parsing reads it); the methods that need it import the model modules when called,
and those never import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from augment.generators.controlnet_config import ControlNetFit
from augment.generators.family import DataShape, Family, Hyperparameters, Sampler, StepFn, TrainingData, TrainState
from augment.generators.label_maps import check_training_masks

if TYPE_CHECKING:
    import numpy as np
    import torch

    from augment.generators.base import SampleRequest
    from augment.sample import Sample

__all__ = ["ControlNetFamily", "ControlNetFit", "ControlNetSample"]

# The checkpoint grid's painting: a short DDIM run keeps a CPU fit's checkpoints cheap.
GRID_SAMPLE: dict[str, Any] = {"steps": 10, "guidance": 2.0, "scheduler": "ddim"}


class ControlNetSample(Hyperparameters):
    """The `sample:` section: the painter's keyword arguments."""

    scheduler: Literal["ddim", "dpm++", "ddpm"] = "ddim"
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(2.0, ge=0.0, le=50.0, description="w in (1 + w)·ε(x, prompt, c) − w·ε(x, ∅, c)")
    controlnet_conditioning_scale: float = Field(1.0, ge=0.0, le=10.0, description="factor on the ControlNet's "
                                                                                   "residuals")
    batch_size: int = Field(8, ge=1, le=4096, description="label maps per reverse process")


class ControlNetFamily(Family):
    name = "controlnet"
    request = "label_map"
    Fit = ControlNetFit
    Sample = ControlNetSample
    sweep_knob = "guidance"
    description = "label map to image (diffusers ControlNetModel on a frozen base UNet2DConditionModel)"
    # The base's EMA is what it freezes as; the ControlNet's paints.
    ema_modules = ("unet", "prompt", "controlnet")
    fit: ControlNetFit

    def __init__(self, fit: Hyperparameters, shape: DataShape, seed: int) -> None:
        super().__init__(fit, shape, seed)
        if self.fit.pretrained is not None:  # the frozen pretrained base needs no (large) EMA copy
            self.ema_modules = ("controlnet",)  # type: ignore[misc]

    @property
    def steps(self) -> int:
        """Both phases: the base's steps, then the ControlNet's."""
        return self.fit.base_phase_steps + self.fit.steps

    def lr_scale(self, k: int) -> float:
        """Linear warm-up from 0 over `warmup_steps` at the start of each phase, then 1."""
        warmup = self.fit.warmup_steps
        base = self.fit.base_phase_steps
        k = k if k < base else k - base
        return min(1.0, (k + 1) / warmup) if warmup else 1.0

    def check_data(self, data: TrainingData) -> None:
        """Every record needs its mask, with class ids below the class names' count."""
        check_training_masks("controlnet", data, self.shape.class_names)

    def build(self) -> dict[str, torch.nn.Module]:
        from augment.generators.controlnet_train import build_modules

        return build_modules(self.fit, self.shape, self.seed)

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        from augment.generators.controlnet_train import make_optimizers

        return make_optimizers(self.fit, modules)

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> StepFn:
        from augment.generators.controlnet_train import ControlNetStep

        self.check_data(data)
        return ControlNetStep(self.fit, self.shape, data, device)

    def sampler(self, state: TrainState) -> Sampler:
        from augment.generators.controlnet import ControlNetPainter
        from augment.generators.controlnet_train import build_train_scheduler as step_scheduler

        def pick(name: str) -> torch.nn.Module:
            return state.ema[name] if name in state.ema else state.module(name)

        vae = state.module("vae") if "vae" in state.modules else None
        return ControlNetPainter(self.fit, self.shape, pick("unet"), pick("prompt"), pick("controlnet"),  # type: ignore[arg-type]
                                 vae=vae, train_scheduler=step_scheduler(self.fit), seed=self.seed)  # type: ignore[arg-type]

    def grid(self, state: TrainState, data: TrainingData) -> np.ndarray | None:
        """Rows map (colourised) | painted (`GRID_SAMPLE`) | real image for a few fixed training pairs."""
        from augment.generators.spade_train import label_grid

        if data.masks is None:
            return None
        painter = self.sampler(state)
        return label_grid(_Fixed(painter, GRID_SAMPLE), data.images, data.masks, self.shape.num_classes)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        from augment.generators.controlnet import ControlNetPainter

        return ControlNetPainter.from_pretrained(directory, device=device)


class _Fixed:
    """A painter whose `sample` takes fixed keyword arguments (what `label_grid` calls)."""

    def __init__(self, painter: Sampler, kwargs: dict[str, Any]) -> None:
        self.painter, self.kwargs = painter, kwargs
        self.class_names, self.checkpoint_sha256 = painter.class_names, painter.checkpoint_sha256

    def sample(self, request: SampleRequest, **kwargs: Any) -> list[Sample]:
        return self.painter.sample(request, **{**self.kwargs, **kwargs})

    def save_pretrained(self, directory: Path) -> None:
        self.painter.save_pretrained(directory)
