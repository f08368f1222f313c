"""The `diffusion` family: class-conditional DDPM with classifier-free guidance.

Model and pipeline: `augment.generators.diffusion`; training: `diffusion_train`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from augment.generators.family import DataShape, Family, Hyperparameters, LogFn, Sampler, TrainingData, TrainState


class DiffusionFit(Hyperparameters):
    """DDPM training with label dropout for classifier-free guidance (CPU-sized defaults)."""

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=1.0)
    warmup_steps: int = Field(100, ge=0)
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=1, max_length=6)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = True
    p_uncond: float = Field(0.1, ge=0.0, lt=1.0)
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")


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

    def __init__(self, fit: DiffusionFit, shape: DataShape, seed: int) -> None:
        from augment.generators.diffusion import DiffusionConfig

        super().__init__(fit, shape, seed)
        self.model_config = DiffusionConfig(
            image_size=shape.image_size, channels=shape.channels, num_classes=len(shape.class_names),
            block_out_channels=tuple(fit.block_out_channels), layers_per_block=fit.layers_per_block,
            attention=fit.attention, p_uncond=fit.p_uncond, ema_decay=fit.ema_decay, lr=fit.lr,
            warmup_steps=fit.warmup_steps, batch_size=fit.batch_size, train_steps=fit.steps, seed=seed,
            bf16=fit.bf16, class_names=shape.class_names,
        )

    def new_state(self, data: TrainingData, device: Any, rank: int) -> TrainState:
        from augment.generators.diffusion_train import DiffusionState

        return DiffusionState.new(self.model_config, device=device, rank=rank)

    def load_state(self, directory: Path, device: Any) -> TrainState:
        from augment.generators.diffusion_train import DiffusionState

        return DiffusionState.load_training_state(directory, device=device)

    def train(self, data: TrainingData, state: Any, until: int, on_log: LogFn, rank: int,
              log_every: int) -> TrainState:
        from augment.generators.diffusion_train import fit_diffusion

        return fit_diffusion(data.images, data.labels, self.model_config, state=state, until_step=until,
                             on_log=on_log, log_every=log_every, rank=rank)

    def prepare_ddp(self, state: Any, prepare: Callable[[Any], Any]) -> None:
        state.model = prepare(state.model)  # EMA and checkpoints unwrap it

    def sampler(self, state: Any) -> Sampler:
        from augment.generators.diffusion import ClassConditionalDiffusion

        return ClassConditionalDiffusion.from_config(self.model_config, state.ema)

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

