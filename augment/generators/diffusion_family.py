"""The `diffusion` family: class-conditional DDPM with classifier-free guidance.

`DiffusionFit` (declared once, in `diffusion_config`) is the job config's `fit:` section and
the constructor config of the model (`diffusion.build_unet`, `diffusion.build_train_scheduler`)
and of its training step (`diffusion_train`); the loop around the step is the shared trainer
(`augment.generators.trainer`).

This module imports neither torch nor diffusers (config parsing reads it); the methods
that need them import the model modules when called, and those never import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from augment.generators.diffusion_config import DiffusionFit
from augment.generators.family import Family, Hyperparameters, Sampler, StepFn, TrainingData, TrainState

if TYPE_CHECKING:
    import torch

__all__ = ["DiffusionFamily", "DiffusionFit", "DiffusionSample"]


class DiffusionSample(Hyperparameters):
    scheduler: Literal["ddim", "dpm++"] = "ddim"
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(2.0, ge=0.0, le=50.0, description="w in (1 + w)·ε(x, c) − w·ε(x)")
    guidance_per_class: dict[str, Annotated[float, Field(ge=0.0, le=50.0)]] = Field(default_factory=dict)
    batch_size: int = Field(64, ge=1, le=65_536)


class DiffusionFamily(Family):
    name = "diffusion"
    request = "class"
    Fit = DiffusionFit
    Sample = DiffusionSample
    sweep_knob = "guidance"
    description = "class-conditional diffusion (diffusers UNet2DModel, classifier-free guidance)"
    ema_modules = ("unet",)
    fit: DiffusionFit

    def build(self) -> dict[str, torch.nn.Module]:
        from augment.generators.diffusion_train import build_modules

        return build_modules(self.fit, self.shape, self.seed)

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        from augment.generators.diffusion_train import make_optimizers

        return make_optimizers(self.fit, modules)

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> StepFn:
        from augment.generators.diffusion_train import DiffusionStep

        return DiffusionStep(self.fit, self.shape, data, device)

    def sampler(self, state: TrainState) -> Sampler:
        from augment.generators.diffusion import ClassConditionalDiffusion

        return ClassConditionalDiffusion.from_fit(self.fit, self.shape, state.ema["unet"], seed=self.seed)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        from augment.generators.diffusion import ClassConditionalDiffusion

        return ClassConditionalDiffusion.from_pretrained(directory, device=device)

    @classmethod
    def sample_kwargs(cls, sample: DiffusionSample, class_names: list[str]) -> dict[str, Any]:
        """Per-class guidance by class id (JSON keys are strings; the sampler takes ints)."""
        guidance: float | dict[str, float] = sample.guidance
        if sample.guidance_per_class:
            unknown = sorted(set(sample.guidance_per_class) - set(class_names))
            if unknown:
                raise ValueError(f"guidance_per_class: unknown classes {unknown} (classes: {', '.join(class_names)})")
            guidance = {str(i): sample.guidance_per_class.get(name, sample.guidance)
                        for i, name in enumerate(class_names)}
        return {"guidance": guidance, "steps": sample.steps, "scheduler": sample.scheduler,
                "batch_size": sample.batch_size}
