"""The `cyclegan` family: unpaired image-to-image translation (Zhu et al. 2017) from the
source records' look (X, e.g. simulator frames) to the target source's look (Y, e.g. real
photographs). Geometry is kept, so each translated row keeps its parent's label, mask and
boxes (request "parent").

`CycleGANFit` (declared once, in `cyclegan_config`) is the job config's `fit:` section and
the constructor config of the networks (`networks`), of the translator (`cyclegan`) and of
the training step (`cyclegan_train`); the loop around the step is the shared trainer
(`augment.generators.trainer`), with this family's learning-rate schedule (`lr_scale`).

This module imports no torch (config parsing reads it); the methods that need it import
the model modules when called, and those never import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from augment.generators.family import Family, Hyperparameters, Sampler, StepFn, TrainingData, TrainState
from domain_transfer.cyclegan_config import CycleGANFit, linear_decay

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["CycleGANFamily", "CycleGANFit", "CycleGANSample"]


class CycleGANSample(Hyperparameters):
    """The `sample:` section: translation has no knob, only how many frames go through G at once."""

    batch_size: int = Field(16, ge=1, le=4096, description="frames per forward pass of G")


class CycleGANFamily(Family):
    name = "cyclegan"
    request = "parent"
    Fit = CycleGANFit
    Sample = CycleGANSample
    description = "unpaired translation to the target source's look (ResNet G, PatchGAN D, LSGAN + cycle loss)"
    needs_target = True
    fit: CycleGANFit

    def lr_scale(self, k: int) -> float:
        """No warm-up: constant, then linear to 0 from `decay_from` (§4 of the paper)."""
        return linear_decay(k, self.steps, self.fit.decay_start)

    def build(self) -> dict[str, torch.nn.Module]:
        from domain_transfer.cyclegan_train import build_modules

        return build_modules(self.fit, self.shape, self.seed)

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        from domain_transfer.cyclegan_train import make_optimizers

        return make_optimizers(self.fit, modules)

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> StepFn:
        from domain_transfer.cyclegan_train import CycleGANStep

        return CycleGANStep(self.fit, data, device, seed=self.seed, rank=rank)

    def sampler(self, state: TrainState) -> Sampler:
        from domain_transfer.cyclegan import CycleGANTranslator

        return CycleGANTranslator(self.fit, self.shape, state.module("G"), seed=self.seed)

    def grid(self, state: TrainState, data: TrainingData) -> np.ndarray | None:
        """Rows x → G(x) → F(G(x)) and y → F(y) → G(F(y)) for a few fixed training images."""
        from domain_transfer.cyclegan_train import translation_grid

        if data.target is None:
            return None
        return translation_grid(state.module("G"), state.module("F"), data.images, data.target)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        from domain_transfer.cyclegan import CycleGANTranslator

        return CycleGANTranslator.from_pretrained(directory, device=device)
