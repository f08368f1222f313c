"""Tensor helpers every torch family shares: pixels in and out of [-1, 1], looking through a
module without training it, and seeded spectral-norm vectors.

Each family used to carry its own copy; one copy keeps their rounding (and so their bytes)
the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×C → float N×C×H×W in [-1, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N×C×H×W in [-1, 1] → uint8 N×H×W×C (in float32 whatever the autocast dtype,
    clipped, round half to even)."""
    scaled = torch.round((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def frozen(module: nn.Module) -> Callable[[torch.Tensor], Any]:
    """`module` with its parameters detached: gradients reach the input, not the weights, and
    no DDP hook fires (a generator's step looks through its discriminator without training it)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return lambda x: torch.func.functional_call(module, params, (x,))


@torch.no_grad()
def reset_spectral_vectors(m: nn.Module, generator: torch.Generator, iterations: int = 15) -> None:
    """New u, v for `m`'s spectral norm from `generator` (not the global RNG), then power
    iterations, as torch does at registration."""
    sn = m.parametrizations.weight[0]
    w = m.parametrizations.weight.original.flatten(1)  # dim 0 for conv, linear and embedding
    u = F.normalize(torch.randn(w.shape[0], generator=generator), dim=0, eps=sn.eps)
    v = F.normalize(torch.randn(w.shape[1], generator=generator), dim=0, eps=sn.eps)
    for _ in range(iterations):
        v = F.normalize(w.t().cpu() @ u, dim=0, eps=sn.eps)  # the generator is a CPU one
        u = F.normalize(w.cpu() @ v, dim=0, eps=sn.eps)
    sn._u.copy_(u)
    sn._v.copy_(v)


__all__ = ["frozen", "reset_spectral_vectors", "to_float", "to_uint8"]
