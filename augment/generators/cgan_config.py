"""The hyperparameters of a cGAN fit: the job config's `fit:` section for the `cgan` family
and the constructor config of its networks, sampler and training step.

A leaf module (pydantic only): the family (`cgan_family`), the networks (`cgan`) and the
training step (`cgan_train`) all import it, and it imports none of them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from augment.generators.family import DataShape, Hyperparameters

IMAGE_SIZES = (8, 16, 32, 64)  # 8 is for tests; G starts at 4x4 and doubles per block


class CGANFit(Hyperparameters):
    """Projection discriminator + hinge loss (Miyato & Koyama 2018); small CPU defaults.

    `g_channels` / `d_channels` are the widths at full resolution; each halving of the
    resolution doubles them (BigGAN layout). `n_critic` D steps per G step; `ema_decay` is
    the EMA of G's weights used for sampling (Yazici et al. 2019; BigGAN). For small data:
    the DiffAugment policy for every image D sees, and the mode-seeking weight (MSGAN, Mao
    et al. 2019) that makes G spread different z apart within a class.
    """

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    z_dim: int = Field(64, ge=2, le=1024)
    g_channels: int = Field(16, ge=4, le=1024)
    d_channels: int = Field(16, ge=4, le=1024)
    lr_g: float = Field(2e-4, gt=0, le=1.0)
    lr_d: float = Field(2e-4, gt=0, le=1.0)
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam's (beta1, beta2), each in [0, 1)")
    n_critic: int = Field(1, ge=1, le=10)
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    diffaugment: tuple[Literal["translation", "cutout"], ...] = Field(
        (), description="DiffAugment policy for D (Zhao et al. 2020): small data collapses without")
    mode_seeking: float = Field(0.0, ge=0.0, le=100.0, description="MSGAN weight (Mao et al. 2019); 0: off")

    @model_validator(mode="after")
    def _consistent(self) -> CGANFit:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.mode_seeking > 0 and self.batch_size % 2:
            raise ValueError(f"mode_seeking={self.mode_seeking} draws G's batch as pairs and needs an even "
                             f"batch_size, got batch_size={self.batch_size}")
        return self

    def check_shape(self, shape: DataShape) -> None:
        if not shape.square:
            raise ValueError(f"cgan: needs square images, got {shape.image_width}x{shape.height} "
                             "(set the source's image_size)")
        if shape.image_size not in IMAGE_SIZES:
            raise ValueError(f"cgan: image_size must be one of {IMAGE_SIZES}, got {shape.image_size}")
        if shape.channels not in (1, 3):
            raise ValueError(f"cgan: channels must be 1 or 3, got {shape.channels}")
        if shape.num_classes < 1:
            raise ValueError(f"cgan: needs at least one class, got class_names={list(shape.class_names)}")
