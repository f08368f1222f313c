"""Differentiable augmentation for GAN discriminators (DiffAugment; Zhao et al. 2020).

On small datasets D memorises the real set and G answers with one image per class. The
same random translation and cutout policy is applied to every image D sees, real and fake,
with gradients flowing through the fake ones, so D cannot tell by memorised pixels alone.
All randomness comes from an explicit `torch.Generator` (no global RNG).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("translation", "cutout")


def translate(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size in x and y, filling with zeros."""
    n, _, h, w = x.shape
    sy, sx = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = torch.randint(-sy, sy + 1, (n,), generator=rng).to(x.device)
    dx = torch.randint(-sx, sx + 1, (n,), generator=rng).to(x.device)
    padded = F.pad(x, (sx, sx, sy, sy))
    rows = (torch.arange(h, device=x.device)[None, :] - dy[:, None] + sy)  # n x h, within the padding
    cols = (torch.arange(w, device=x.device)[None, :] - dx[:, None] + sx)  # n x w
    batch = torch.arange(n, device=x.device)[:, None, None]
    # gather rows then columns per image: out[i, :, r, c] = padded[i, :, rows[i, r], cols[i, c]]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of `ratio` x the image size per image, at a random centre."""
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=rng).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=rng).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= cy[:, None] - ch // 2) & (ys < cy[:, None] - ch // 2 + ch)
    inside_x = (xs >= cx[:, None] - cw // 2) & (xs < cx[:, None] - cw // 2 + cw)
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], rng: torch.Generator) -> torch.Tensor:
    """Apply the named augmentations in order; an empty policy returns `x` unchanged."""
    for name in policy:
        if name == "translation":
            x = translate(x, rng)
        elif name == "cutout":
            x = cutout(x, rng)
        else:
            raise ValueError(f"diffaugment: unknown policy {name!r}; known: {', '.join(POLICIES)}")
    return x
