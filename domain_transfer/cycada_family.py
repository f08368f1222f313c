"""The `cycada` family: CyCADA (Hoffman et al. 2018), CycleGAN's unpaired translation from
the source records' look (simulator frames) to the target source's look, kept semantically
consistent by a frozen source task model f_S, plus a target task model f_T adapted at the
feature level. Geometry is kept, so each translated row keeps its parent's label, mask and
boxes (request "parent"); the saved model also carries f_T (`CyCADATranslator.task_model`).
The family is CycleGAN's with more modules: what translation and its picture need (G, F,
the `sample:` section, the grid) is inherited.

The source records need class labels or masks (f_S learns them); the task is per image
when they have class labels, else per pixel on their masks (as the job's label-preservation
model decides). `CyCADAFit` (`cycada_config`) extends
`CycleGANFit`; the loop around the step is the shared trainer, with this family's
learning-rate schedule per phase (`lr_scale`).

This module imports no torch (config parsing reads it); the methods that need it import
the model modules when called, and those never import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from augment.generators.family import Sampler, StepFn, TrainingData, TrainState
from domain_transfer.cycada_config import CyCADAFit
from domain_transfer.cyclegan_config import linear_decay
from domain_transfer.cyclegan_family import CycleGANFamily

if TYPE_CHECKING:
    import torch

__all__ = ["CyCADAFamily", "CyCADAFit"]


class CyCADAFamily(CycleGANFamily):
    name = "cycada"
    Fit = CyCADAFit
    description = ("CycleGAN translation kept semantically consistent by a frozen source task model, "
                   "plus a target task model adapted at the feature level (needs labels or masks)")
    fit: CyCADAFit

    def lr_scale(self, k: int) -> float:
        """Per phase: f_S's steps [0, task_steps) warm up and decay by a cosine (the repo's
        small-CNN schedule, `classifier.warmup_cosine`); the translator's steps are
        CycleGAN's constant, then linear to 0 from `decay_from` (§4 of CycleGAN)."""
        if k < self.fit.task_steps:
            from augment.metrics.classifier import warmup_cosine

            return warmup_cosine(self.fit.task_steps)(k)
        return linear_decay(k, self.steps, self.fit.decay_start)

    def check_data(self, data: TrainingData) -> None:
        """f_S needs class labels or masks (in the class names' range) on the source records."""
        from domain_transfer.cycada_train import task_of

        task_of(data, self.shape.class_names)

    def build(self) -> dict[str, torch.nn.Module]:
        from domain_transfer.cycada_train import build_modules

        return build_modules(self.fit, self.shape, self.seed)

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        from domain_transfer.cycada_train import make_optimizers

        return make_optimizers(self.fit, modules)

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> StepFn:
        from domain_transfer.cycada_train import CyCADAStep

        return CyCADAStep(self.fit, data, device, seed=self.seed, rank=rank, class_names=self.shape.class_names)

    def sampler(self, state: TrainState) -> Sampler:
        from domain_transfer.cycada import CyCADATranslator

        return CyCADATranslator(self.fit, self.shape, state.module("G"), state.module("f_S"),  # type: ignore[arg-type]
                                state.module("f_T"), seed=self.seed)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        from domain_transfer.cycada import CyCADATranslator

        return CyCADATranslator.from_pretrained(directory, device=device)
