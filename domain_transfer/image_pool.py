"""The image history buffer of Shrivastava et al. 2017 ("Learning from Simulated and
Unsupervised Images through Adversarial Training", §2.3), as CycleGAN uses it (Zhu et al.
2017, §4: "we update the discriminators using a history of generated images rather than
the ones produced by the latest generators ... an image buffer that stores the 50
previously created images"). Seeing older fakes keeps D from forgetting what G did a few
steps ago, which damps oscillation.

Rule (the reference's `util/image_pool.py`): while the pool holds fewer than `pool_size`
images, each new image is stored and returned as is; once full, each new image is, with
probability 1/2, swapped with a uniformly chosen stored one (the stored one is returned),
otherwise returned as is.

The pool is an `nn.Module` whose buffers (`images`, `count`) are its whole state, so the
trainer saves it in safetensors with the modules and a resumed fit continues exactly. It
draws nothing itself: `query` takes the `torch.Generator` to draw from, always the same
number of draws per call, so the caller can key it to (seed, rank, step).
"""

from __future__ import annotations

import torch
from torch import nn


class ImagePool(nn.Module):
    """A history of at most `pool_size` images of shape C×H×W (0: no history, `query` is
    the identity)."""

    images: torch.Tensor
    count: torch.Tensor

    def __init__(self, pool_size: int, channels: int, height: int, width: int) -> None:
        super().__init__()
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 0:
            raise ValueError(f"pool_size must be an integer >= 0, got {pool_size!r}")
        self.pool_size = pool_size
        self.register_buffer("images", torch.zeros(pool_size, channels, height, width))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))  # images stored so far

    @torch.no_grad()
    def query(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The batch D should see in place of `images` (N×C×H×W, detached); updates the pool.

        Draws 2N numbers from `generator` (CPU) whatever the pool's fill, so the stream
        stays aligned across calls."""
        if images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"image pool: holds {tuple(self.images.shape[1:])} images, got {tuple(images.shape[1:])}")
        n = images.shape[0]
        coins = torch.rand(n, generator=generator).tolist()
        slots = torch.randint(max(self.pool_size, 1), (n,), generator=generator).tolist()
        if self.pool_size == 0:
            return images
        images = images.detach().to(self.images.dtype)
        stored = int(self.count)  # one host sync per call; the rest stays on the device
        out = []
        for image, coin, slot in zip(images, coins, slots, strict=True):
            if stored < self.pool_size:  # 1. filling up: keep it, return it
                self.images[stored].copy_(image)
                stored += 1
                out.append(image)
            elif coin > 0.5:  # 2. full, heads: return an old one, keep the new one in its place
                out.append(self.images[slot].clone())
                self.images[slot].copy_(image)
            else:  # 3. full, tails: return the new one
                out.append(image)
        self.count.fill_(stored)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}, image={tuple(self.images.shape[1:])}"
