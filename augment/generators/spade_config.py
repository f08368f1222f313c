"""The hyperparameters of a SPADE fit: the job config's `fit:` section for the `spade` family
and the constructor config of its networks, painter and training step.

A leaf module (pydantic only), so that config parsing does not import torch.

Paper values next to the CPU-sized defaults. SPADE (Park et al. 2019, "Semantic Image
Synthesis with Spatially-Adaptive Normalization", §4 and appendix A): ngf = ndf = 64,
SPADE's hidden width 128, 5 doublings from an 8×16 grid to 256×512, spectral norm in G and
D, a 2-scale PatchGAN with 4 layers, hinge loss, feature matching λ_FM = 10, VGG loss
λ_VGG = 10, VAE style encoder with λ_KLD = 0.05 and a 256-d code, Adam with TTUR (lr_G 1e-4,
lr_D 4e-4, β = (0, 0.999)), horizontal flips. OASIS (Schönfeld et al. 2021, "You Only Need
Adversarial Supervision for Semantic Image Synthesis", §3): the same generator fed 64
channels of 3D noise with the label map, a U-Net segmentation discriminator (6 down and 6
up residual blocks at 256 px, widths 128…512) trained with a class-balanced (N+1)-class
cross-entropy, LabelMix λ_LM = 10, no feature matching, no VGG loss, EMA of G's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from augment.generators.family import DataShape, Hyperparameters

MIN_SIZE = 8  # the style encoder and the discriminators need a few pixels to halve
MAX_UP = 5  # SPADE's "normal" generator: 5 doublings (8×16 → 256×512)
MIN_START = 4  # a derived num_up keeps the start grid at least 4 pixels on its shorter side
OASIS_MAX_DEPTH = 6  # OASIS D: 6 down/up blocks at 256 px
PATCHGAN_LAYERS = 4  # SPADE's n_layers_D


def halvings(height: int, width: int, limit: int, min_side: int) -> int:
    """The largest n ≤ `limit` with both sides divisible by 2**n and the shorter side / 2**n
    at least `min_side` (0 when none is)."""
    n = 0
    while n < limit:
        step = 2 ** (n + 1)
        if height % step or width % step or min(height, width) // step < min_side:
            break
        n += 1
    return n


class SPADEFit(Hyperparameters):
    """SPADE generator (from the label map, with OASIS 3D noise and/or a VAE style code), a
    multi-scale PatchGAN (SPADE) or a per-pixel (N+1)-class segmentation discriminator (OASIS).

    `num_up`: doublings of G's start grid (None: derived from the image size, at most 5,
    start grid ≥ 4 px). `d_layers`: PatchGAN conv layers per scale (None: 4, the paper's), or
    OASIS down/up blocks (None: as many halvings as the image allows, at most 6).
    `norm`: G's parameter-free normalisation before each SPADE modulation; the paper uses
    (synchronised) batch norm, the default instance norm keeps every sample independent of
    its batch and needs no running statistics for the EMA weights."""

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(4, ge=1, le=4096, description="the papers use 32 over 8 GPUs")
    ngf: int = Field(16, ge=1, le=1024, description="G's width at full resolution (paper: 64)")
    ndf: int = Field(16, ge=1, le=1024, description="D's first-layer width (SPADE: 64, OASIS: 128)")
    spade_hidden: int = Field(32, ge=1, le=1024, description="width of SPADE's shared conv (paper: 128)")
    num_up: int | None = Field(None, ge=1, le=8, description="doublings of G's start grid; none: from the size")
    norm: Literal["instance", "batch"] = Field("instance", description="G's parameter-free norm (paper: batch)")
    # The default is what benchmarks/label2image.py measured better on CamVid (400 steps at 128x96):
    # PatchGAN paints maps a fixed segmenter reads at mIoU 0.127; OASIS collapsed to flat grey (0.037).
    discriminator: Literal["oasis", "patchgan"] = Field("patchgan", description="SPADE PatchGAN or OASIS "
                                                                                "(N+1)-class")
    d_layers: int | None = Field(None, ge=1, le=8, description="PatchGAN layers or OASIS blocks; none: default")
    num_d: int = Field(2, ge=1, le=4, description="PatchGAN scales (paper: 2); unused by oasis")
    lr_g: float = Field(1e-4, gt=0.0, le=1.0)
    lr_d: float = Field(4e-4, gt=0.0, le=1.0)
    betas: tuple[float, float] = Field((0.0, 0.999), description="Adam's (beta1, beta2), each in [0, 1)")
    lambda_fm: float = Field(10.0, ge=0.0, le=1000.0, description="feature matching (patchgan only)")
    lambda_labelmix: float = Field(10.0, ge=0.0, le=1000.0, description="LabelMix consistency (oasis only)")
    void_dontcare: bool = Field(True, description="oasis: pixels of a class named 'void' weigh 0 in the class "
                                                  "terms (the reference's dontcare label)")
    noise_dim: int = Field(16, ge=0, le=1024, description="OASIS 3D noise channels (paper: 64); 0: none")
    use_vae: bool = Field(False, description="start G from a style code z (SPADE's VAE) instead of the map")
    z_dim: int = Field(16, ge=1, le=1024, description="VAE style code size (paper: 256)")
    lambda_kld: float = Field(0.05, ge=0.0, le=100.0, description="KL weight of the VAE code")
    vgg_weights: Path | None = Field(None, description="local VGG19 weights (safetensors or a tensor-only "
                                                       "state dict); none: no perceptual loss")
    lambda_vgg: float = Field(10.0, ge=0.0, le=1000.0, description="VGG perceptual loss weight")
    flip: bool = Field(True, description="random horizontal flips of (image, map) pairs")
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0, description="EMA of G's weights, which paints (OASIS)")
    bf16: bool = Field(False, description="bf16 autocast on CUDA")

    @model_validator(mode="after")
    def _consistent(self) -> SPADEFit:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.vgg_weights is not None and self.vgg_weights.suffix in (".pkl", ".pickle"):
            raise ValueError(f"vgg_weights must be safetensors or a tensor-only state dict (.pth/.pt), got "
                             f"{str(self.vgg_weights)!r}: pickles are refused")
        return self

    def ups(self, shape: DataShape) -> int:
        """G's doublings: `num_up`, or derived from the image size."""
        if self.num_up is not None:
            return self.num_up
        return halvings(shape.height, shape.image_width, MAX_UP, MIN_START)

    def d_depth(self, shape: DataShape) -> int:
        """PatchGAN layers per scale, or OASIS down/up blocks: `d_layers` or the default."""
        if self.d_layers is not None:
            return self.d_layers
        if self.discriminator == "patchgan":
            return PATCHGAN_LAYERS
        return halvings(shape.height, shape.image_width, OASIS_MAX_DEPTH, 1)

    def check_shape(self, shape: DataShape) -> None:
        height, width = shape.height, shape.image_width
        size = f"{width}x{height} (WxH)"
        if shape.channels not in (1, 3):
            raise ValueError(f"spade: channels must be 1 or 3, got {shape.channels}")
        if shape.num_classes < 1:
            raise ValueError(f"spade: needs at least one class, got class_names={list(shape.class_names)}")
        if min(height, width) < MIN_SIZE:
            raise ValueError(f"spade: images must be at least {MIN_SIZE}x{MIN_SIZE}, got {size}")
        n = self.ups(shape)
        if n == 0:
            raise ValueError(f"spade: cannot derive num_up for {size} images: G doubles its start grid at least "
                             f"once, so both sides must be even and at least {2 * MIN_START}; set num_up or the "
                             "source's image size")
        if height % 2**n or width % 2**n:
            raise ValueError(f"spade: num_up={n} needs both image sides divisible by {2**n}, got {size}; "
                             "lower num_up or change the source's image size")
        if (height // 2**n) * (width // 2**n) < 2:
            raise ValueError(f"spade: num_up={n} leaves a 1x1 start grid for {size} images; G's first "
                             "normalisation needs at least 2 pixels there, lower num_up")
        depth = self.d_depth(shape)
        if self.discriminator == "oasis" and (height % 2**depth or width % 2**depth):
            raise ValueError(f"spade: the oasis discriminator halves the image d_layers={depth} times and needs "
                             f"both sides divisible by {2**depth}, got {size}; lower d_layers")
