"""The hyperparameters of a diffusion fit: the job config's `fit:` section for the
`diffusion` family and the constructor config of its model and training step.

A leaf module (pydantic only): the family (`diffusion_family`), the model (`diffusion`) and
the training step (`diffusion_train`) all import it, and it imports none of them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from augment.generators.family import DataShape, Hyperparameters

Width = Annotated[int, Field(ge=1, le=4096)]


class DiffusionFit(Hyperparameters):
    """Every hyperparameter of a class-conditional diffusion fit (CPU-sized defaults).

    `block_out_channels` sets the UNet depth: the image is halved between levels, so the
    image size must be divisible by 2 ** (levels - 1); every width must be divisible by
    `norm_num_groups` (GroupNorm). `attention` puts self-attention in the lowest-resolution
    down/up blocks and the mid block. `p_uncond` is the label-drop probability of
    classifier-free guidance training (Ho & Salimans 2022, Alg. 1; 0.1-0.2 in the paper).
    `ema_decay` is the EMA of weights used for sampling (Ho et al. 2020, §4: 0.9999 there for
    long runs; 0.999 suits a few thousand steps). `warmup_steps` ramps the learning rate
    linearly from 0. `bf16` enables bf16 autocast, on CUDA only.
    """

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=1.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW's decoupled weight decay")
    grad_clip: float = Field(1.0, gt=0.0, description="max global gradient norm")
    block_out_channels: tuple[Width, ...] = Field((32, 64, 64), min_length=1, max_length=6)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = True
    norm_num_groups: int = Field(8, ge=1, le=1024)
    num_train_timesteps: int = Field(1000, ge=2, le=100_000)
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    p_uncond: float = Field(0.1, ge=0.0, lt=1.0)
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")

    @model_validator(mode="after")
    def _widths_split_into_groups(self) -> DiffusionFit:
        uneven = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if uneven:
            raise ValueError(f"block_out_channels {list(self.block_out_channels)}: {uneven} not divisible by "
                             f"norm_num_groups={self.norm_num_groups}")
        return self

    def check_shape(self, shape: DataShape) -> None:
        if not shape.square:
            raise ValueError(f"diffusion: needs square images, got {shape.image_width}x{shape.height} "
                             "(set the source's image_size)")
        levels = len(self.block_out_channels)
        if shape.channels not in (1, 3):
            raise ValueError(f"diffusion: channels must be 1 or 3, got {shape.channels}")
        if shape.num_classes < 1:
            raise ValueError(f"diffusion: needs at least one class, got class_names={list(shape.class_names)}")
        if shape.image_size < 1 or shape.image_size % (2 ** (levels - 1)):
            raise ValueError(f"diffusion: image_size {shape.image_size} is not divisible by 2**{levels - 1} "
                             f"(block_out_channels={list(self.block_out_channels)})")
