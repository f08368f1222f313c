"""The hyperparameters of a CycleGAN fit: the job config's `fit:` section for the `cyclegan`
family and the constructor config of its networks, translator and training step.

A leaf module (pydantic only), so that config parsing does not import torch.

Paper values (Zhu et al. 2017, §4 and appendix 7.2) next to the CPU-sized defaults: ngf =
ndf = 64, 9 residual blocks at 256×256 (6 at 128×128), batch size 1, Adam lr 2e-4 with
betas (0.5, 0.999), constant for 100 epochs then linearly to 0 over 100 more (here: over
steps, from `decay_from`), λ = 10, identity weight 0.5 λ, a pool of 50 fakes, random
crops (of 256 from frames resized to 286) and horizontal flips.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from augment.generators.family import DataShape, Hyperparameters

MIN_SIZE = 8  # G halves twice and reflects by 1 at quarter size: it needs 2 pixels there


def receptive_field(n_layers: int) -> int:
    """Input pixels seen by one PatchGAN score along each axis: the two stride-1 4×4 convs
    see 7, each of the `n_layers` stride-2 4×4 convs maps r to 2r + 2 (3 layers: 70)."""
    field = 7
    for _ in range(n_layers):
        field = 2 * field + 2
    return field


def patchgan_output_size(size: int, n_layers: int) -> int:
    """PatchGAN scores along an axis of `size` input pixels (4×4 convs, padding 1); < 1: too small."""
    for _ in range(n_layers):
        size = (size - 2) // 2 + 1
    return size - 2  # the two stride-1 4×4 convs with padding 1 remove one each


def linear_decay(k: int, steps: int, decay_from: int) -> float:
    """Learning-rate factor at step k (0-based): 1 before `decay_from`, then falling linearly
    so that it would reach 0 at step `steps` (the reference's `lambda_rule`, epochs read as
    steps): step `decay_from` runs at 1 − 1/(D + 1) and the last one, steps − 1, at 1/(D + 1),
    with D = steps − decay_from. Never negative."""
    return max(0.0, 1.0 - max(0, k + 1 - decay_from) / float(max(steps - decay_from, 0) + 1))


class CycleGANFit(Hyperparameters):
    """ResNet generators G: X → Y and F: Y → X, PatchGAN discriminators D_Y and D_X, LSGAN +
    cycle-consistency + identity losses, a history pool of fakes for D.

    `crop`: train on random `crop`×`crop` windows (0: whole frames); the generators are fully
    convolutional, so the trained model still translates whole frames of any size.
    `decay_from`: the step from which the learning rate falls linearly to 0 at `steps`
    (None: half of `steps`, as the paper's 100 + 100 epochs). `d_layers`: PatchGAN depth; 3
    gives the paper's 70×70 patches, 2 (34×34) suits images under about 32 pixels."""

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(4, ge=1, le=4096, description="the paper uses 1")
    ngf: int = Field(16, ge=1, le=1024, description="G's width at full resolution (paper: 64)")
    ndf: int = Field(16, ge=1, le=1024, description="D's first-layer width (paper: 64)")
    n_blocks: int = Field(3, ge=0, le=64, description="residual blocks in G (paper: 9 at 256 px, 6 at 128 px)")
    d_layers: int = Field(3, ge=1, le=8, description="PatchGAN stride-2 layers; 3: 70x70 patches")
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam's (beta1, beta2), each in [0, 1)")
    decay_from: int | None = Field(None, ge=0, description="step where the linear decay to 0 starts; none: steps/2")
    lambda_cycle: float = Field(10.0, ge=0.0, le=1000.0, description="λ of the cycle-consistency loss (eq. 3)")
    lambda_identity: float = Field(0.5, ge=0.0, le=100.0, description="identity loss weight, times lambda_cycle")
    pool_size: int = Field(50, ge=0, le=1000, description="history of fakes shown to D; 0: latest only")
    crop: int = Field(0, ge=0, le=8192, description="random square crops of this size; 0: whole frames")
    flip: bool = Field(True, description="random horizontal flips of training images")
    bf16: bool = Field(False, description="bf16 autocast on CUDA")

    family_name: ClassVar[str] = "cyclegan"  # prefix of check_shape's errors (CyCADAFit reuses them)

    @model_validator(mode="after")
    def _consistent(self) -> CycleGANFit:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.decay_from is not None and self.decay_from > self.steps:
            raise ValueError(f"decay_from must be at most steps ({self.steps}), got {self.decay_from}")
        if 0 < self.crop < MIN_SIZE:
            raise ValueError(f"crop must be 0 (whole frames) or at least {MIN_SIZE}, got {self.crop}")
        return self

    @property
    def decay_start(self) -> int:
        """The step from which the learning rate decays (`decay_from`, or half of `steps`)."""
        return self.steps // 2 if self.decay_from is None else self.decay_from

    def train_size(self, shape: DataShape) -> tuple[int, int]:
        """Height and width of the training windows: `crop`×`crop`, or whole frames."""
        return (self.crop, self.crop) if self.crop else (shape.height, shape.image_width)

    def check_shape(self, shape: DataShape) -> None:
        if shape.channels not in (1, 3):
            raise ValueError(f"{self.family_name}: channels must be 1 or 3, got {shape.channels}")
        name, (height, width) = self.family_name, (shape.height, shape.image_width)
        if min(height, width) < MIN_SIZE:
            raise ValueError(f"{name}: images must be at least {MIN_SIZE}x{MIN_SIZE}, got {width}x{height}")
        if self.crop > min(height, width):
            raise ValueError(f"{name}: crop must be at most the images' smaller side ({min(height, width)}), "
                             f"got crop={self.crop} for {width}x{height} images")
        side = min(self.train_size(shape))
        if patchgan_output_size(side, self.d_layers) < 1:
            where = f"crop={self.crop}" if self.crop else f"{width}x{height} images"
            raise ValueError(f"{name}: d_layers={self.d_layers} (patches of {receptive_field(self.d_layers)} px) "
                             f"leaves no patch score on {where}; lower d_layers or train on larger windows")
