"""Training step of the class-conditional GAN (networks in `cgan.py`).

Hinge loss (Lim & Ye 2017; Miyato et al. 2018, eq. 16-17):

    L_D = E_x[max(0, 1 - D(x, y))] + E_z[max(0, 1 + D(G(z, y~), y~))]
    L_G = -E_z[D(G(z, y~), y~)]  (+ lambda_ms / (mean|G(z1,y)-G(z2,y)| / mean|z1-z2| + eps))

With `fit.diffaugment`, D sees T(x) and T(G(z)) for random differentiable T (DiffAugment);
with `fit.mode_seeking` > 0, the G batch is pairs (z1, y), (z2, y) and the MSGAN term
above (Mao et al. 2019) rewards G for mapping different z to different images.

The loop around the step (EMA of G, states, DDP, progress) is the shared trainer
(`augment.generators.trainer`). `d_step` / `g_step` are pure functions of (models,
optimizer, batch): no hidden RNG, no process-group code. `CGANStep` draws every random
number (batch order, z, fake labels, augmentation) from a `torch.Generator` seeded with
`derive_seed(seed, stream, rank, step, ...)`, so step t's randomness does not depend on how
the run got to step t: a resumed fit reproduces the uninterrupted one bit for bit (same
device), and ranks draw different batches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from augment.generators.cgan import INIT_G_STREAM, CGANGenerator, ProjectionDiscriminator, init_weights
from augment.generators.cgan_config import CGANFit
from augment.generators.diffaugment import diff_augment
from augment.generators.family import DataShape, TrainingData
from augment.generators.trainer import EpochBatches, TrainState, descend
from augment.seeding import derive_seed

# Independent random streams under the seed (keys for derive_seed).
_INIT_D, _SHUFFLE, _D_NOISE, _G_NOISE, _D_AUGMENT, _G_AUGMENT = 2, 3, 4, 5, 6, 7  # 1 is INIT_G_STREAM
MODE_SEEKING_EPS = 1e-5
AugmentFn = Callable[[torch.Tensor], torch.Tensor]


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))  (Lim & Ye 2017, eq. 12)."""
    return torch.relu(1.0 - real_logits).mean() + torch.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -mean(D(G(z)))  (Miyato et al. 2018, eq. 17)."""
    return -fake_logits.mean()


def d_step(generator: nn.Module, discriminator: nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor,
           real_labels: torch.Tensor, z: torch.Tensor, fake_labels: torch.Tensor,
           augment: AugmentFn | None = None) -> torch.Tensor:
    """One D update on a real batch and G(z, fake_labels); returns the detached loss.

    Pure in the sense that matters here: no RNG and no state besides the arguments
    (`augment`, when given, carries its own seeded generator)."""
    # 1. fakes, no gradient into G
    with torch.no_grad():
        fake = generator(z, fake_labels)
    # 2. one D pass over real and fake together (one forward per backward, DDP-friendly)
    images = torch.cat([real, fake])
    logits = discriminator(images if augment is None else augment(images), torch.cat([real_labels, fake_labels]))
    loss = hinge_d_loss(logits[: real.shape[0]], logits[real.shape[0]:])
    # 3. descend L_D
    descend(loss, opt_d)
    return loss.detach()


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN (Mao et al. 2019, eq. 3) over pairs (first half, second half) of the batch:
    1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + eps)."""
    f1, f2 = fake.chunk(2)
    z1, z2 = z.chunk(2)
    ratio = (f1 - f2).abs().mean() / (z1 - z2).abs().mean()
    return 1.0 / (ratio + MODE_SEEKING_EPS)


def g_step(generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer, z: torch.Tensor,
           labels: torch.Tensor, augment: AugmentFn | None = None, mode_seeking: float = 0.0) -> torch.Tensor:
    """One G update; D's gradients are left for `d_step` to clear. Returns the detached loss
    (the hinge part; the mode-seeking term only shapes the gradient).

    With `mode_seeking` > 0 the batch must be pairs: labels[:b/2] == labels[b/2:]."""
    # 1. fakes with gradient; 2. L_G through D; 3. descend L_G
    fake = generator(z, labels)
    loss = hinge_g_loss(discriminator(fake if augment is None else augment(fake), labels))
    total = loss + mode_seeking * mode_seeking_loss(fake, z) if mode_seeking > 0 else loss
    descend(total, opt_g)
    return loss.detach()


def _rng(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *key))


def build_modules(fit: CGANFit, shape: DataShape, seed: int) -> dict[str, nn.Module]:
    """G and D, each initialised from its own stream under the seed (on the CPU)."""
    generator, discriminator = CGANGenerator(fit, shape), ProjectionDiscriminator(fit, shape)
    init_weights(generator, _rng(seed, INIT_G_STREAM))
    init_weights(discriminator, _rng(seed, _INIT_D))
    return {"generator": generator, "discriminator": discriminator}


def make_optimizers(fit: CGANFit, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Adam for G and D (TTUR when lr_g != lr_d, Heusel et al. 2017)."""
    return {"generator": torch.optim.Adam(modules["generator"].parameters(), lr=fit.lr_g, betas=fit.betas),
            "discriminator": torch.optim.Adam(modules["discriminator"].parameters(), lr=fit.lr_d, betas=fit.betas)}


class CGANStep:
    """One training step: `n_critic` D steps, then one G step (Miyato et al. 2018, Alg. 1).

    Real images stay on the device as uint8 and are scaled per batch; batches follow
    per-epoch permutations (`EpochBatches`), z and fake labels (the empirical class prior)
    come from generators keyed by (rank, step, D step)."""

    def __init__(self, fit: CGANFit, data: TrainingData, device: torch.device, *, seed: int, rank: int) -> None:
        self.fit, self.device, self.seed, self.rank = fit, device, seed, rank
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
        self.labels_cpu = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        self.labels = self.labels_cpu.to(device)
        self.order = EpochBatches(len(self.images), fit.batch_size, seed, _SHUFFLE, rank)

    def _noise(self, rng: torch.Generator, pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """z ~ N(0, I) and fake labels from the class prior; `pairs`: two z per label (MSGAN)."""
        b = self.fit.batch_size
        z = torch.randn(b, self.fit.z_dim, generator=rng)
        y = self.labels_cpu[torch.randint(len(self.labels_cpu), (b // 2 if pairs else b,), generator=rng)]
        return z.to(self.device), (torch.cat([y, y]) if pairs else y).to(self.device)

    def _augmenter(self, *key: int) -> AugmentFn | None:
        if not self.fit.diffaugment:
            return None
        rng, policy = _rng(self.seed, *key), self.fit.diffaugment
        return lambda x: diff_augment(x, policy, rng)

    def __call__(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        g, d = state.modules["generator"], state.modules["discriminator"]
        fit, rank = self.fit, self.rank
        # 1. n_critic D steps (L_D), each on the next real batch of the shuffled stream.
        for k in range(fit.n_critic):
            index = self.order(step * fit.n_critic + k).to(self.device)
            real = self.images[index].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            z, y_fake = self._noise(_rng(self.seed, _D_NOISE, rank, step, k))
            d_loss = d_step(g, d, state.optimizers["discriminator"], real, self.labels[index], z, y_fake,
                            self._augmenter(_D_AUGMENT, rank, step, k))
        # 2. One G step (L_G, plus the mode-seeking term); the trainer then updates G's EMA.
        z, y_fake = self._noise(_rng(self.seed, _G_NOISE, rank, step), pairs=fit.mode_seeking > 0)
        g_loss = g_step(g, d, state.optimizers["generator"], z, y_fake, self._augmenter(_G_AUGMENT, rank, step),
                        fit.mode_seeking)
        return {"loss_d": d_loss, "loss_g": g_loss}


__all__ = ["CGANStep", "build_modules", "d_step", "g_step", "hinge_d_loss", "hinge_g_loss", "make_optimizers",
           "mode_seeking_loss"]
