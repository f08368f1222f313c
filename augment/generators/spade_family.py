"""The `spade` family: label map → image (Park et al. 2019, SPADE), with SPADE's multi-scale
PatchGAN (the default: the better of the two in benchmarks/label2image.py) or OASIS's
segmentation discriminator and 3D noise (Schönfeld et al. 2021). Fitted on the source's
(image, mask) pairs, it paints a new image for each label map it is given (the records'
masks, augmented masks or a simulator's), and the row keeps that map as its mask.

`SPADEFit` (declared once, in `spade_config`) is the job config's `fit:` section and the
constructor config of the networks (`spade_networks`, `spade_discriminators`), of the
painter (`spade`) and of the training step (`spade_train`); the loop around the step is the
shared trainer (`augment.generators.trainer`), constant learning rates (OASIS; SPADE's
linear decay over the second half of its epochs is not applied), EMA of G for painting.

This module imports no torch (config parsing reads it); the methods that need it import
the model modules when called, and those never import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from augment.generators.family import Family, Hyperparameters, Sampler, StepFn, TrainingData, TrainState
from augment.generators.label_maps import check_training_masks
from augment.generators.spade_config import SPADEFit

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["SPADEFamily", "SPADEFit", "SPADESample"]


class SPADESample(Hyperparameters):
    """The `sample:` section: painting has no knob, only how many maps go through G at once."""

    batch_size: int = Field(16, ge=1, le=4096, description="label maps per forward pass of G")


class SPADEFamily(Family):
    name = "spade"
    request = "label_map"
    Fit = SPADEFit
    Sample = SPADESample
    description = "label map to image (SPADE generator; PatchGAN or OASIS segmentation discriminator)"
    ema_modules = ("G",)
    fit: SPADEFit

    def check_data(self, data: TrainingData) -> None:
        """Every record needs its mask, with class ids below the class names' count; a
        `vgg_weights` file must exist (checked here, before Ray Train starts)."""
        check_training_masks("spade", data, self.shape.class_names)
        if self.fit.vgg_weights is not None and not Path(self.fit.vgg_weights).is_file():
            raise ValueError(f"spade: vgg_weights {str(self.fit.vgg_weights)!r} is not a file")

    def build(self) -> dict[str, torch.nn.Module]:
        from augment.generators.spade_train import build_modules

        return build_modules(self.fit, self.shape, self.seed)

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        from augment.generators.spade_train import make_optimizers

        return make_optimizers(self.fit, modules)

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> StepFn:
        from augment.generators.spade_train import SPADEStep

        self.check_data(data)
        return SPADEStep(self.fit, self.shape, data, device, seed=self.seed, rank=rank)

    def sampler(self, state: TrainState) -> Sampler:
        from augment.generators.spade import SPADEPainter

        return SPADEPainter(self.fit, self.shape, state.ema["G"], seed=self.seed)  # type: ignore[arg-type]

    def grid(self, state: TrainState, data: TrainingData) -> np.ndarray | None:
        """Rows map (colourised) | painted | real image for a few fixed training pairs."""
        from augment.generators.spade_train import label_grid

        if data.masks is None:
            return None
        return label_grid(self.sampler(state), data.images, data.masks, self.shape.num_classes)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        from augment.generators.spade import SPADEPainter

        return SPADEPainter.from_pretrained(directory, device=device)
