"""The two discriminators of the `spade` family.

- `MultiscalePatchGAN` (SPADE, Park et al. 2019, appendix A; pix2pixHD, Wang et al. 2018,
  §3.2; reference NVlabs/SPADE `models/networks/discriminator.py`): `num_d` PatchGANs on the
  image concatenated with the one-hot map, the k-th on the input average-pooled k times
  (3×3, stride 2). Each is C64-C128-C256-C512 of 4×4 convs with padding 2 (stride 2 but the
  last, spectral norm and instance norm but on the first and the score layer, leaky ReLU
  0.2) and a 4×4 conv to one score per patch. Every layer's output is returned: the scores
  for the hinge loss, the rest for feature matching.
- `OASISDiscriminator` (Schönfeld et al. 2021, §3.1 and fig. 3; reference boschresearch/OASIS
  `models/discriminator.py`): a U-Net of residual blocks on the image alone, `depth` down
  blocks (average pool) and `depth` up blocks (nearest ×2) with skip connections, spectral
  norm, then a 1×1 conv to N+1 logits per pixel: channel 0 is "fake" (as the reference),
  channel c + 1 is class c.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

FAKE = 0  # the OASIS discriminator's "fake" channel; class c is channel c + 1


class PatchGAN(nn.Module):
    """SPADE's NLayerDiscriminator: `n_layers` 4×4 convs (padding 2), then the score conv."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int) -> None:
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2))]
        width = ndf
        for n in range(1, n_layers):
            out = ndf * min(2**n, 8)
            stride = 1 if n == n_layers - 1 else 2
            layers.append(nn.Sequential(spectral_norm(nn.Conv2d(width, out, 4, stride=stride, padding=2)),
                                        nn.InstanceNorm2d(out, affine=False), nn.LeakyReLU(0.2)))
            width = out
        layers.append(nn.Sequential(nn.Conv2d(width, 1, 4, stride=1, padding=2)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        return outputs


class MultiscalePatchGAN(nn.Module):
    """`num_d` PatchGANs on [image, one-hot map] at 1, 1/2, 1/4 … of the size; returns, per
    scale, the list of layer outputs (features …, scores)."""

    def __init__(self, channels: int, num_classes: int, ndf: int, n_layers: int, num_d: int) -> None:
        super().__init__()
        self.scales = nn.ModuleList(PatchGAN(channels + num_classes, ndf, n_layers) for _ in range(num_d))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for i, scale in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return outputs


class OASISBlock(nn.Module):
    """The reference's residual_block_D: `direction` −1 pools after the convs (down), +1
    upsamples before them (up); the first block has no activation before its first conv."""

    def __init__(self, fin: int, fout: int, direction: int, first: bool = False) -> None:
        super().__init__()
        self.direction, self.first = direction, first
        pre: list[nn.Module] = [] if first else [nn.LeakyReLU(0.2)]
        if direction > 0:
            pre.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.conv1 = nn.Sequential(*pre, spectral_norm(nn.Conv2d(fin, fout, 3, padding=1)))
        self.conv2 = nn.Sequential(nn.LeakyReLU(0.2), spectral_norm(nn.Conv2d(fout, fout, 3, padding=1)))
        self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1)) if fin != fout else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.direction > 0:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2) if self.direction < 0 else x

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        # The reference: a down block pools before its 1×1 conv when first, after it otherwise.
        if self.direction > 0 or (self.first and self.direction < 0):
            x = self._resample(x)
        if self.conv_s is not None:
            x = self.conv_s(x)
        if self.direction < 0 and not self.first:
            x = self._resample(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = self.conv2(self.conv1(x))
        if self.direction < 0:
            dx = self._resample(dx)
        return self._shortcut(x) + dx


def oasis_widths(ndf: int, depth: int) -> list[int]:
    """Outputs of the down blocks: ndf, ndf, 2·ndf, 2·ndf, 4·ndf, … (128, 128, 256, 256, 512,
    512 in the paper for ndf = 128, depth 6)."""
    return [ndf * 2 ** (i // 2) for i in range(depth)]


class OASISDiscriminator(nn.Module):
    """Images N×C×H×W (H, W divisible by 2**depth) → logits N×(classes + 1)×H×W."""

    def __init__(self, channels: int, num_classes: int, ndf: int, depth: int) -> None:
        super().__init__()
        widths = [channels, *oasis_widths(ndf, depth)]
        last = max(1, ndf // 2)  # the reference's 64 for ndf = 128
        self.down = nn.ModuleList(OASISBlock(widths[i], widths[i + 1], -1, first=i == 0) for i in range(depth))
        up = []
        for i in range(depth):  # up[0] on the bottleneck, then each on [skip, x]
            fin = widths[depth] if i == 0 else 2 * widths[depth - i]
            up.append(OASISBlock(fin, widths[depth - 1 - i] if i < depth - 1 else last, +1))
        self.up = nn.ModuleList(up)
        self.out = nn.Conv2d(last, num_classes + 1, 1)  # layer_up_last: no spectral norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[0](x)
        for i in range(1, len(self.up)):
            x = self.up[i](torch.cat([skips[-i - 1], x], dim=1))
        return self.out(x)


__all__ = ["FAKE", "MultiscalePatchGAN", "OASISBlock", "OASISDiscriminator", "PatchGAN", "oasis_widths"]
