"""One face for the class-conditional families (diffusion, cgan) towards the job.

Each family's model code lives in `augment.generators`; this module maps the config onto
its hyperparameters and gives the fit stage and the sampling workers the same calls:
new/load/save a training state, train to a step, export the sampler, load a sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import ConfigError
from jobs.config import CGANGenerateConfig, DiffusionGenerateConfig, GenerateConfig

LogFn = Callable[..., None]


@dataclasses.dataclass(frozen=True)
class DataShape:
    image_size: int
    channels: int
    class_names: tuple[str, ...]


class DiffusionFamily:
    kind = "diffusion"

    def __init__(self, config: DiffusionGenerateConfig, shape: DataShape, seed: int) -> None:
        from augment.generators.diffusion import DiffusionConfig

        fit = config.fit
        self.config = config
        self.model_config = DiffusionConfig(
            image_size=shape.image_size, channels=shape.channels, num_classes=len(shape.class_names),
            block_out_channels=tuple(fit.block_out_channels), layers_per_block=fit.layers_per_block,
            attention=fit.attention, p_uncond=fit.p_uncond, ema_decay=fit.ema_decay, lr=fit.lr,
            warmup_steps=fit.warmup_steps, batch_size=fit.batch_size, train_steps=fit.steps, seed=seed,
            bf16=fit.bf16, class_names=shape.class_names,
        )

    def new_state(self, device: Any, rank: int) -> Any:
        from augment.generators.diffusion_train import DiffusionState

        return DiffusionState.new(self.model_config, device=device, rank=rank)

    def load_state(self, directory: Path, device: Any) -> Any:
        from augment.generators.diffusion_train import DiffusionState

        return DiffusionState.load_training_state(directory, device=device)

    def train(self, images: np.ndarray, labels: np.ndarray, state: Any, until: int, on_log: LogFn, rank: int,
              log_every: int = 25) -> Any:
        from augment.generators.diffusion_train import fit_diffusion

        return fit_diffusion(images, labels, self.model_config, state=state, until_step=until, on_log=on_log,
                             log_every=log_every, rank=rank)

    def sampler(self, state: Any) -> Any:
        from augment.generators.diffusion import ClassConditionalDiffusion

        return ClassConditionalDiffusion.from_config(self.model_config, state.ema,
                                                     default_guidance=self.config.sample.guidance)

    @staticmethod
    def load(directory: Path, device: str = "cpu") -> Any:
        from augment.generators.diffusion import ClassConditionalDiffusion

        return ClassConditionalDiffusion.from_pretrained(directory, device=device)

    def prepare_ddp(self, state: Any, prepare: Callable[[Any], Any]) -> None:
        state.model = prepare(state.model)  # EMA and checkpoints unwrap it

    def grid_kwargs(self) -> dict[str, Any]:
        sample = self.config.sample
        return {"guidance": sample.guidance, "steps": sample.steps, "scheduler": sample.scheduler, "batch_size": 128}


class CGANFamily:
    kind = "cgan"

    def __init__(self, config: CGANGenerateConfig, shape: DataShape, seed: int) -> None:
        from augment.generators.cgan import CGANConfig

        fit = config.fit
        self.config = config
        self.model_config = CGANConfig(
            image_size=shape.image_size, channels=shape.channels, num_classes=len(shape.class_names),
            z_dim=fit.z_dim, g_channels=fit.g_channels, d_channels=fit.d_channels, lr_g=fit.lr_g, lr_d=fit.lr_d,
            n_critic=fit.n_critic, batch_size=fit.batch_size, train_steps=fit.steps, ema_decay=fit.ema_decay,
            diffaugment=tuple(fit.diffaugment), mode_seeking=fit.mode_seeking,
            seed=seed, class_names=shape.class_names,
        )

    def new_state(self, device: Any, rank: int) -> Any:
        from augment.generators.cgan_train import CGANState

        return CGANState.create(self.model_config, device=device)

    def load_state(self, directory: Path, device: Any) -> Any:
        from augment.generators.cgan_train import CGANState

        return CGANState.load_training_state(directory, device=device)

    def train(self, images: np.ndarray, labels: np.ndarray, state: Any, until: int, on_log: LogFn, rank: int,
              log_every: int = 25) -> Any:
        from augment.generators.cgan_train import fit_cgan

        # fit_cgan trains to config.train_steps; a resumed state may differ only in that.
        chunk = dataclasses.replace(self.model_config, train_steps=until)
        return fit_cgan(images, labels, chunk, state=state, on_log=on_log, log_every=log_every, worker_index=rank)

    def sampler(self, state: Any) -> Any:
        from augment.generators.cgan import ClassConditionalGAN

        return ClassConditionalGAN(self.model_config, state.generator_ema)

    @staticmethod
    def load(directory: Path, device: str = "cpu") -> Any:
        from augment.generators.cgan import ClassConditionalGAN

        return ClassConditionalGAN.from_pretrained(directory, device=device)

    def prepare_ddp(self, state: Any, prepare: Callable[[Any], Any]) -> None:
        state.generator = prepare(state.generator)
        state.discriminator = prepare(state.discriminator)

    def grid_kwargs(self) -> dict[str, Any]:
        return sample_kwargs(self.config, [])


def sample_kwargs(config: GenerateConfig, class_names: list[str]) -> dict[str, Any]:
    """Keyword arguments of the sampler's `sample` for this config (per-class guidance by id)."""
    sample = config.sample
    if isinstance(config, CGANGenerateConfig):
        return {"truncation": sample.truncation, "batch_size": sample.batch_size}
    guidance: float | dict[int, float] = sample.guidance
    if sample.guidance_per_class:
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted(set(sample.guidance_per_class) - set(index))
        if unknown:
            raise ConfigError(f"generate.sample.guidance_per_class: unknown classes {unknown}")
        guidance = {i: sample.guidance for i in range(len(class_names))}
        guidance.update({index[name]: w for name, w in sample.guidance_per_class.items()})
    return {"guidance": guidance, "steps": sample.steps, "scheduler": sample.scheduler,
            "batch_size": sample.batch_size}


def family_for(config: GenerateConfig, shape: DataShape, seed: int) -> DiffusionFamily | CGANFamily:
    if isinstance(config, DiffusionGenerateConfig):
        return DiffusionFamily(config, shape, seed)
    return CGANFamily(config, shape, seed)


def load_sampler(kind: str, directory: Path, device: str = "cpu") -> Any:
    """A saved generator, for sampling (pickles are refused by the families' loaders)."""
    return (DiffusionFamily if kind == "diffusion" else CGANFamily).load(directory, device)
