"""SPADE's generator side (Park et al. 2019, §3 and appendix A; reference code NVlabs/SPADE,
`models/networks/{normalization,architecture,generator,encoder}.py`), with OASIS's 3D noise
(Schönfeld et al. 2021, §3.3; reference code boschresearch/OASIS, `models/generator.py`).

Paper names in code:
- `SPADE` is the normalisation of eq. 1: h ↦ γ(m) ⊙ (h − μ)/σ + β(m), μ and σ per channel
  from a parameter-free norm, γ and β per pixel from a small conv net on the conditioning
  m (the one-hot label map, plus the noise channels with OASIS) resized nearest to h;
- `SPADEResBlock` is the "SPADE ResBlk" of fig. 4 (learned 1×1 shortcut when the width
  changes), spectral norm on its convolutions as in the paper's G;
- `SPADEGenerator` is G: a start grid of H/2ⁿ × W/2ⁿ (any aspect ratio: 96×128 street frames
  start at 6×8 with n = 4), from the downsampled conditioning (SPADE without VAE, OASIS) or
  from a style code z (SPADE's VAE), then a ResBlk, then n × (nearest ×2, ResBlk) halving
  the width from ngf·2ⁿ (at most 16·ngf, the paper's) to ngf, then conv, tanh;
- `StyleEncoder` is SPADE's image encoder E (appendix B): image → μ, log σ².
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from augment.generators.family import DataShape
from augment.generators.spade_config import SPADEFit
from augment.generators.tensors import reset_spectral_vectors

INIT_GAIN = 0.02  # xavier_normal gain of every conv/linear weight (both references' init)
ENCODER_DOWNS = 3  # stride-2 convs of E (the paper's 6 at 256 px); fewer on small images
MAX_WIDTH_FACTOR = 16  # G's widest layer: 16·ngf (the paper's)


class SPADE(nn.Module):
    """Eq. 1: out = (1 + γ(m)) ⊙ norm(h) + β(m); the reference writes γ as 1 + γ so that a
    fresh layer starts as the plain normalisation."""

    def __init__(self, channels: int, cond_channels: int, hidden: int, norm: str = "instance") -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False) if norm == "instance" \
            else nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())  # mlp_shared
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)  # mlp_gamma
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)  # mlp_beta

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = F.interpolate(cond, size=h.shape[-2:], mode="nearest")
        actv = self.shared(cond)
        return self.norm(h) * (1 + self.gamma(actv)) + self.beta(actv)


class SPADEResBlock(nn.Module):
    """SPADE ResBlk (fig. 4): x_s + conv(lrelu(SPADE(conv(lrelu(SPADE(x)))))), the shortcut x_s
    a SPADE + 1×1 conv when the width changes, else x."""

    def __init__(self, fin: int, fout: int, cond_channels: int, hidden: int, norm: str) -> None:
        super().__init__()
        middle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, middle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(middle, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, cond_channels, hidden, norm)
        self.norm_1 = SPADE(middle, cond_channels, hidden, norm)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, cond_channels, hidden, norm)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, cond), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, cond), 0.2))
        return x_s + dx


def generator_widths(fit: SPADEFit, shape: DataShape) -> list[int]:
    """G's widths from the start grid to full resolution: ngf·2ⁿ (capped at 16·ngf) … ngf."""
    n = fit.ups(shape)
    return [fit.ngf * min(2 ** (n - i), MAX_WIDTH_FACTOR) for i in range(n + 1)]


class SPADEGenerator(nn.Module):
    """G: conditioning N×(classes + noise_dim)×H×W (one-hot map, then the noise broadcast over
    the pixels) and, with `use_vae`, a code z (N×z_dim) → images N×C×H×W in [-1, 1].

    Any H×W: the conditioning is padded (replicate) to a multiple of 2ⁿ and the image cropped
    back, so maps of another size than the training frames paint at their own size; a VAE
    start grid (fixed by the training size) is resized bilinearly to such a map's grid."""

    def __init__(self, fit: SPADEFit, shape: DataShape) -> None:
        super().__init__()
        self.num_classes, self.noise_dim = shape.num_classes, fit.noise_dim
        self.use_vae, self.z_dim = fit.use_vae, fit.z_dim
        self.multiple = 2 ** fit.ups(shape)
        self.h0, self.w0 = shape.height // self.multiple, shape.image_width // self.multiple
        widths = generator_widths(fit, shape)
        self.start_width = widths[0]
        cond = shape.num_classes + fit.noise_dim
        if fit.use_vae:  # SPADE: fc(z) reshaped to the start grid
            self.fc = nn.Linear(fit.z_dim, widths[0] * self.h0 * self.w0)
        else:  # SPADE without VAE / OASIS: conv on the conditioning downsampled to the start grid
            self.fc = nn.Conv2d(cond, widths[0], 3, padding=1)
        self.head = SPADEResBlock(widths[0], widths[0], cond, fit.spade_hidden, fit.norm)  # head_0
        self.up_blocks = nn.ModuleList(SPADEResBlock(widths[i], widths[i + 1], cond, fit.spade_hidden, fit.norm)
                                       for i in range(len(widths) - 1))
        self.conv_img = nn.Conv2d(widths[-1], shape.channels, 3, padding=1)

    def forward(self, cond: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        height, width = cond.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            cond = F.pad(cond, (0, pad_w, 0, pad_h), mode="replicate")
        grid = (cond.shape[-2] // self.multiple, cond.shape[-1] // self.multiple)
        if self.use_vae:
            if z is None:
                raise ValueError("spade: a VAE generator needs a style code z")
            x = self.fc(z).view(z.shape[0], self.start_width, self.h0, self.w0)
            if grid != (self.h0, self.w0):
                x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        else:
            x = self.fc(F.interpolate(cond, size=grid, mode="nearest"))
        x = self.head(x, cond)
        for block in self.up_blocks:
            x = block(F.interpolate(x, scale_factor=2, mode="nearest"), cond)
        x = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
        return x[..., :height, :width]


class StyleEncoder(nn.Module):
    """E (SPADE's ConvEncoder): stride-2 3×3 convs (spectral norm, instance norm, leaky ReLU),
    then average pooling (instead of the reference's resize to 256 px and flatten, so any
    aspect ratio works) and two linear heads: μ and log σ² of the style code."""

    def __init__(self, fit: SPADEFit, shape: DataShape) -> None:
        super().__init__()
        downs = max(1, min(ENCODER_DOWNS, (min(shape.height, shape.image_width) // 2).bit_length() - 1))
        layers: list[nn.Module] = []
        width, channels = fit.ndf, shape.channels
        for i in range(downs):
            width = fit.ndf * 2**i
            layers += [spectral_norm(nn.Conv2d(channels, width, 3, stride=2, padding=1)),
                       nn.InstanceNorm2d(width, affine=False), nn.LeakyReLU(0.2)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(width, fit.z_dim)
        self.fc_var = nn.Linear(width, fit.z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).mean(dim=(2, 3))
        return self.fc_mu(features), self.fc_var(features)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class ids N×H×W → float N×classes×H×W."""
    return F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()


def conditioning(onehot: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """G's input m: the one-hot map, then OASIS's 3D noise (N×noise_dim, one vector per image
    replicated over its pixels, as the reference samples it) when there is any."""
    if noise is None:
        return onehot
    n, _, height, width = onehot.shape
    return torch.cat([onehot, noise.view(n, -1, 1, 1).expand(-1, -1, height, width)], dim=1)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Every conv/linear weight ~ xavier_normal(gain 0.02), bias 0 (both references' init),
    and fresh spectral-norm vectors, all from `generator` in module order (no global RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            normed = parametrize.is_parametrized(m, "weight")
            weight = m.parametrizations.weight.original if normed else m.weight
            nn.init.xavier_normal_(weight, gain=INIT_GAIN, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if normed:
                reset_spectral_vectors(m, generator)


__all__ = ["SPADE", "SPADEGenerator", "SPADEResBlock", "StyleEncoder", "conditioning", "generator_widths",
           "init_weights", "one_hot"]
