"""The hyperparameters of a CyCADA fit (Hoffman et al. 2018, "CyCADA: Cycle-Consistent
Adversarial Domain Adaptation"): the job config's `fit:` section for the `cycada` family
and the constructor config of its networks, translator, task models and training step.

CyCADA is CycleGAN plus task models, so `CyCADAFit` *is* a `CycleGANFit` (every CycleGAN
field, validator and shape check, declared once in `cyclegan_config`) with the fields of
the task models added. A leaf module (pydantic only): config parsing does not import torch.

One fit runs in two phases over `steps` optimizer steps:

- steps [0, task_steps): the source task model f_S learns the labelled source (eq. 1 of
  the paper), nothing else moves;
- steps [task_steps, steps): f_S is frozen; G_{S→T}, G_{T→S}, D_T, D_S train as CycleGAN
  plus the semantic-consistency loss through f_S (eq. 4), and the target task model f_T
  (initialised from f_S) trains on translated source images with their labels and against
  the feature discriminator D_feat (eqs. 1, 5 inside eq. 6).

The paper trains these as separate stages (its released code fits f_S, then the
translator, then f_T); here they share one resumable fit, so that one `fit:` section and
one set of training states describe the whole model.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from augment.generators.family import DataShape
from domain_transfer.cyclegan_config import CycleGANFit


class CyCADAFit(CycleGANFit):
    """CycleGAN's fields (`CycleGANFit`) plus f_S / f_T / D_feat's.

    `task_steps`: f_S pre-training steps at the start of the fit (at least 1; fewer than
    `steps`). `task_lr`: Adam learning rate of f_S and f_T (f_S: warm-up + cosine over its
    phase; f_T: CycleGAN's constant-then-linear schedule). `task_width`: width of the task
    models (a small segmenter; class logits are the spatial mean of its pixel logits).
    `lambda_semantic`, `lambda_feature`, `lambda_task`: weights of eq. 4 (semantic
    consistency, in G's and F's objective), eq. 5 (D_feat's adversarial term, in f_T's) and
    eq. 1 on translated source images (f_T's task term). `decay_from` counts from step 0
    like `steps`; none: half-way through the translator phase.

    `flip` defaults to off here (on in CycleGAN): the task models learn labels from the
    training views, and a mirrored digit is not the same digit; set it for street scenes,
    whose masks flip with the image."""

    steps: int = Field(5000, ge=0, le=10_000_000, description="all steps: task_steps of f_S, then the translator")
    flip: bool = Field(False, description="random horizontal flips of training images (and masks)")
    # 300 left f_S at chance on house-number crops at batch 8; 6,000 (with crops of 28) read
    # held-out crops at 0.87: f_S must read its own domain before it can judge the translator
    task_steps: int = Field(2000, ge=1, le=10_000_000, description="f_S pre-training steps at the start of the fit")
    task_lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate of f_S and f_T")
    task_width: int = Field(16, ge=1, le=1024, description="width of the task models f_S and f_T")
    lambda_semantic: float = Field(1.0, ge=0.0, le=1000.0, description="weight of the semantic loss (eq. 4)")
    lambda_feature: float = Field(0.1, ge=0.0, le=1000.0, description="weight of f_T's feature-level GAN loss (eq. 5)")
    lambda_task: float = Field(1.0, ge=0.0, le=1000.0, description="weight of f_T's task loss on G(x) (eq. 1)")

    family_name: ClassVar[str] = "cycada"

    @model_validator(mode="after")
    def _phases(self) -> CyCADAFit:
        if self.task_steps >= self.steps:
            raise ValueError(f"task_steps must be less than steps ({self.steps}), got {self.task_steps}: steps "
                             "[0, task_steps) fit f_S alone, the rest the translator and f_T")
        if self.decay_from is not None and self.decay_from < self.task_steps:
            raise ValueError(f"decay_from must be at least task_steps ({self.task_steps}), got {self.decay_from}: "
                             "the translator's learning rate decays within its own phase")
        return self

    @property
    def decay_start(self) -> int:
        """The step from which the translator's learning rate decays (`decay_from`, or half-way
        through the translator phase, as CycleGAN's 100 + 100 epochs)."""
        if self.decay_from is not None:
            return self.decay_from
        return self.task_steps + (self.steps - self.task_steps) // 2

    def check_shape(self, shape: DataShape) -> None:
        super().check_shape(shape)
        if shape.num_classes < 1:
            raise ValueError("cycada: the task models need the source's class names (of its labels or mask ids), "
                             "got none")


__all__ = ["CyCADAFit"]
