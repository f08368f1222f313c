"""The `cgan` family: class-conditional GAN (projection discriminator, hinge loss).

`CGANFit` (declared once, in `cgan_config`) is the job config's `fit:` section and the
constructor config of the networks (`cgan.CGANGenerator`, `cgan.ProjectionDiscriminator`),
of the sampler (`cgan.ClassConditionalGAN`) and of the training step (`cgan_train`); the
loop around the step is the shared trainer (`augment.generators.trainer`).

This module imports no torch (config parsing reads it); the methods that need it import
the model modules when called, and those never import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from augment.generators.cgan_config import CGANFit
from augment.generators.family import Family, Hyperparameters, Sampler, StepFn, TrainingData, TrainState

if TYPE_CHECKING:
    import torch

__all__ = ["CGANFamily", "CGANFit", "CGANSample"]


class CGANSample(Hyperparameters):
    truncation: float | None = Field(None, ge=0.0, description="resample |z| components above this; none or 0: off")
    batch_size: int = Field(256, ge=1, le=65_536)


class CGANFamily(Family):
    name = "cgan"
    request = "class"
    Fit = CGANFit
    Sample = CGANSample
    sweep_knob = "truncation"
    description = "class-conditional GAN (projection discriminator, hinge loss, EMA generator)"
    ema_modules = ("generator",)
    fit: CGANFit

    def build(self) -> dict[str, torch.nn.Module]:
        from augment.generators.cgan_train import build_modules

        return build_modules(self.fit, self.shape, self.seed)

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        from augment.generators.cgan_train import make_optimizers

        return make_optimizers(self.fit, modules)

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> StepFn:
        from augment.generators.cgan_train import CGANStep

        return CGANStep(self.fit, data, device, seed=self.seed, rank=rank)

    def sampler(self, state: TrainState) -> Sampler:
        from augment.generators.cgan import ClassConditionalGAN

        return ClassConditionalGAN(self.fit, self.shape, state.ema["generator"], seed=self.seed)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        from augment.generators.cgan import ClassConditionalGAN

        return ClassConditionalGAN.from_pretrained(directory, device=device)

    @classmethod
    def sweep_kwargs(cls, kwargs: dict[str, Any], value: float) -> dict[str, Any]:
        return {**kwargs, "truncation": value or None}  # 0 on the sweep axis means off

    @classmethod
    def sweep_axis(cls, values: list[float]) -> list[tuple[float, str]]:
        """Off (0) first, then descending: a smaller truncation keeps z nearer the mode."""
        off = [(value, "off") for value in values if not value]
        return off[:1] + [(value, f"{value:g}") for value in sorted((v for v in values if v), reverse=True)]
