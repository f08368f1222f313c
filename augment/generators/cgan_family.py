"""The `cgan` family: class-conditional GAN (projection discriminator, hinge loss).

Model and sampler: `augment.generators.cgan`; training: `cgan_train`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from augment.generators.family import DataShape, Family, Hyperparameters, LogFn, Sampler, TrainingData, TrainState


class CGANFit(Hyperparameters):
    """Projection discriminator + hinge loss (Miyato & Koyama 2018)."""

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    z_dim: int = Field(64, ge=2, le=1024)
    g_channels: int = Field(16, ge=4, le=1024)
    d_channels: int = Field(16, ge=4, le=1024)
    lr_g: float = Field(2e-4, gt=0, le=1.0)
    lr_d: float = Field(2e-4, gt=0, le=1.0)
    n_critic: int = Field(1, ge=1, le=10)
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    diffaugment: list[Literal["translation", "cutout"]] = Field(
        default_factory=list, description="DiffAugment policy for D (Zhao et al. 2020): small data collapses without")
    mode_seeking: float = Field(0.0, ge=0.0, le=100.0, description="MSGAN weight (Mao et al. 2019); 0: off")


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

    def __init__(self, fit: CGANFit, shape: DataShape, seed: int) -> None:
        from augment.generators.cgan import CGANConfig

        super().__init__(fit, shape, seed)
        self.model_config = CGANConfig(
            image_size=shape.image_size, channels=shape.channels, num_classes=len(shape.class_names),
            z_dim=fit.z_dim, g_channels=fit.g_channels, d_channels=fit.d_channels, lr_g=fit.lr_g, lr_d=fit.lr_d,
            n_critic=fit.n_critic, batch_size=fit.batch_size, train_steps=fit.steps, ema_decay=fit.ema_decay,
            diffaugment=tuple(fit.diffaugment), mode_seeking=fit.mode_seeking,
            seed=seed, class_names=shape.class_names,
        )

    def new_state(self, data: TrainingData, device: Any, rank: int) -> TrainState:
        from augment.generators.cgan_train import CGANState

        return CGANState.create(self.model_config, device=device)

    def load_state(self, directory: Path, device: Any) -> TrainState:
        from augment.generators.cgan_train import CGANState

        return CGANState.load_training_state(directory, device=device)

    def train(self, data: TrainingData, state: Any, until: int, on_log: LogFn, rank: int,
              log_every: int) -> TrainState:
        from augment.generators.cgan_train import fit_cgan

        # fit_cgan trains to config.train_steps; a resumed state may differ only in that.
        chunk = dataclasses.replace(self.model_config, train_steps=until)
        return fit_cgan(data.images, data.labels, chunk, state=state, on_log=on_log, log_every=log_every,
                        worker_index=rank)

    def prepare_ddp(self, state: Any, prepare: Callable[[Any], Any]) -> None:
        state.generator = prepare(state.generator)
        state.discriminator = prepare(state.discriminator)

    def sampler(self, state: Any) -> Sampler:
        from augment.generators.cgan import ClassConditionalGAN

        return ClassConditionalGAN(self.model_config, state.generator_ema)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        from augment.generators.cgan import ClassConditionalGAN

        return ClassConditionalGAN.from_pretrained(directory, device=device)

    @classmethod
    def sweep_kwargs(cls, kwargs: dict[str, Any], value: float) -> dict[str, Any]:
        return {**kwargs, "truncation": value or None}  # 0 on the sweep axis means off
