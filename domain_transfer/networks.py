"""CycleGAN's networks (Zhu et al. 2017, "Unpaired Image-to-Image Translation using
Cycle-Consistent Adversarial Networks", §4 and appendix 7.2), as in the reference code
(junyanz/pytorch-CycleGAN-and-pix2pix, `models/networks.py`).

Paper names in code (reference names in brackets): the family builds two `ResnetGenerator`s,
G: X → Y [G_A] and F: Y → X [G_B], and two `PatchGANDiscriminator`s, D_Y [D_A], which
tells real y from G(x), and D_X [D_B], which tells real x from F(y).

- Generator (Johnson et al. 2016 layout, appendix 7.2): c7s1-k, d2k, d4k, R4k × n_blocks,
  u2k, uk, c7s1-C, tanh; reflection padding around the 7×7 and 3×3 convolutions, instance
  norm (Ulyanov et al. 2016) so that each image is normalised alone. It is fully
  convolutional: it translates frames of any size; `forward` pads the input by reflection
  to a multiple of 4 (two stride-2 halvings) and crops the output back, so odd sizes
  keep their H×W.
- Discriminator: 70×70 PatchGAN (Isola et al. 2017): C64-C128-C256-C512 (4×4 convs, the
  first three stride 2, leaky ReLU 0.2, no norm on the first), then a 4×4 conv to one
  channel: one real/fake score per overlapping 70×70 patch when `n_layers` = 3.
- Weights: N(0, 0.02) for every (transposed) convolution, biases 0 (appendix 7.2, the
  reference's `init_type="normal"`), drawn from an explicit `torch.Generator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domain_transfer.cyclegan_config import patchgan_output_size, receptive_field

__all__ = ["PatchGANDiscriminator", "ResnetBlock", "ResnetGenerator", "init_weights", "patchgan_output_size",
           "receptive_field"]

DOWNSAMPLINGS = 2  # stride-2 convolutions in G; inputs are padded to a multiple of 2**DOWNSAMPLINGS
INIT_STD = 0.02


def _norm(channels: int) -> nn.Module:
    # The reference's "instance" norm: no affine parameters, no running statistics, so eval
    # and train agree and an image's output never depends on its batch.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """R-k: x + [pad-conv3-norm-ReLU-pad-conv3-norm](x), reflection padding (appendix 7.2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """G or F: images in [-1, 1], N×C×H×W of any H, W ≥ 4, to the same shape.

    `ngf` is the width at full resolution (64 in the paper), `n_blocks` the residual blocks
    at quarter resolution (6 for 128×128 training images, 9 for 256×256 in the paper)."""

    def __init__(self, channels: int, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [  # c7s1-ngf
            nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for i in range(DOWNSAMPLINGS):  # d2k, d4k (zero padding, as the reference)
            k = ngf * 2**i
            layers += [nn.Conv2d(k, 2 * k, 3, stride=2, padding=1), _norm(2 * k), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 2**DOWNSAMPLINGS) for _ in range(n_blocks)]
        for i in range(DOWNSAMPLINGS):  # u2k, uk: fractionally strided convolutions
            k = ngf * 2 ** (DOWNSAMPLINGS - i)
            layers += [nn.ConvTranspose2d(k, k // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(k // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]  # c7s1-C
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two stride-2 halvings round odd sizes up and the upsamplings double back, so only a
        # multiple of 4 comes back at its size: pad bottom/right by reflection, crop back.
        h, w = x.shape[-2:]
        multiple = 2**DOWNSAMPLINGS
        pad_h, pad_w = -h % multiple, -w % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.model(x)[..., :h, :w]


class PatchGANDiscriminator(nn.Module):
    """D_X or D_Y: N×C×H×W images to N×1×H'×W' scores, one per `receptive_field(n_layers)`
    patch (70×70 for `n_layers` = 3, the paper's). `ndf`: width of the first layer (64)."""

    def __init__(self, channels: int, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, n_layers + 1):  # stride 2, then one stride-1 layer (C512 in the paper)
            out = ndf * min(2**n, 8)
            layers += [nn.Conv2d(width, out, 4, stride=2 if n < n_layers else 1, padding=1), _norm(out),
                       nn.LeakyReLU(0.2, True)]
            width = out
        layers += [nn.Conv2d(width, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Every (transposed) conv weight ~ N(0, 0.02), bias 0, from `generator` (never the
    global RNG), in module order, so a seed gives the same network on any machine."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, INIT_STD, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
