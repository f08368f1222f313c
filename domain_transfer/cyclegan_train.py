"""Training of CycleGAN (networks in `networks.py`, losses in `losses.py`): the modules, their
optimizers, one iteration, and the grid the trainer saves at checkpoints.

One iteration is the reference's `optimize_parameters` (Zhu et al. 2017; §3-4):

1. G, F step, D_X and D_Y held fixed: L_GAN(G, D_Y) + L_GAN(F, D_X) (LSGAN, §4) + λ L_cyc
   (eq. 2) + λ λ_idt L_identity (§5.2), one Adam over G and F;
2. D step: D_Y on real y against fakes G(x) from its history pool, D_X on real x against
   F(y) from its pool (LSGAN, halved), one Adam over D_X and D_Y.

The loop around it (learning-rate schedule via `CycleGANFamily.lr_scale`, states, DDP,
progress) is the shared trainer (`augment.generators.trainer`). Every random number (batch
order, crops, flips, pool coins) comes from a generator seeded by derive_seed(seed,
stream, rank, step), and the pools are buffers of the discriminator modules, so a resumed
fit continues the uninterrupted one exactly (same device), and ranks draw differently.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from augment.generators.family import DataShape, TrainingData
from augment.generators.trainer import EpochBatches, TrainState, autocast, descend
from augment.seeding import derive_seed
from augment.generators.tensors import frozen, to_float, to_uint8
from domain_transfer.cyclegan_config import CycleGANFit
from domain_transfer.image_pool import ImagePool
from domain_transfer.losses import cycle_loss, identity_loss, lsgan_d_loss, lsgan_g_loss
from domain_transfer.networks import PatchGANDiscriminator, ResnetGenerator, init_weights

# Independent random streams under the seed (keys for derive_seed).
_INIT_G, _INIT_F, _INIT_D_X, _INIT_D_Y = 1, 2, 3, 4
_ORDER_X, _ORDER_Y, _VIEW_X, _VIEW_Y, _POOL = 5, 6, 7, 8, 9
GRID_ROWS = 3  # images per direction in the checkpoint grid
GRID_MIN_CELL = 64  # small images are enlarged (nearest) to at least this many pixels


def _rng(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *key))


class Discriminator(nn.Module):
    """D_X or D_Y (`net`, a PatchGAN) with the history of fakes it is trained on (`pool`).

    The pool lives in the discriminator's module because the trainer saves modules (so it
    resumes exactly) and DDP refuses a module without trainable parameters; its buffers are
    kept out of DDP's broadcast, so each rank keeps its own history."""

    def __init__(self, net: PatchGANDiscriminator, pool: ImagePool) -> None:
        super().__init__()
        self.net, self.pool = net, pool
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, [f"pool.{name}" for name, _ in pool.named_buffers()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_modules(fit: CycleGANFit, shape: DataShape, seed: int) -> dict[str, nn.Module]:
    """G: X → Y [G_A], F: Y → X [G_B], D_Y [D_A], D_X [D_B], each from its own stream (CPU)."""
    channels, (height, width) = shape.channels, fit.train_size(shape)
    modules: dict[str, nn.Module] = {}
    for name, stream in (("G", _INIT_G), ("F", _INIT_F)):
        modules[name] = ResnetGenerator(channels, fit.ngf, fit.n_blocks)
        init_weights(modules[name], _rng(seed, stream))
    for name, stream in (("D_X", _INIT_D_X), ("D_Y", _INIT_D_Y)):
        net = PatchGANDiscriminator(channels, fit.ndf, fit.d_layers)
        init_weights(net, _rng(seed, stream))
        modules[name] = Discriminator(net, ImagePool(fit.pool_size, channels, height, width))
    return modules


def make_optimizers(fit: CycleGANFit, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """One Adam over G and F, one over D_X and D_Y (the reference's optimizer_G, optimizer_D)."""
    generators = chain(modules["G"].parameters(), modules["F"].parameters())
    discriminators = chain(modules["D_X"].parameters(), modules["D_Y"].parameters())
    return {"generators": torch.optim.Adam(generators, lr=fit.lr, betas=fit.betas),
            "discriminators": torch.optim.Adam(discriminators, lr=fit.lr, betas=fit.betas)}


class CycleGANStep:
    """One CycleGAN iteration on uint8 source (X) and target (Y) images kept on the device."""

    def __init__(self, fit: CycleGANFit, data: TrainingData, device: torch.device, *, seed: int, rank: int) -> None:
        if data.target is None:
            raise ValueError("cyclegan: needs target-domain images (TrainingData.target), got none")
        self.fit, self.device, self.seed, self.rank = fit, device, seed, rank
        self.source = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
        self.target = torch.from_numpy(np.ascontiguousarray(data.target)).to(device)
        self.order_x = EpochBatches(len(self.source), fit.batch_size, seed, _ORDER_X, rank)
        self.order_y = EpochBatches(len(self.target), fit.batch_size, seed, _ORDER_Y, rank)

    def _views(self, order: EpochBatches, step: int, stream: int,
               *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Batch `step`: its record indices, and each of `tensors` (N×H×W…: images, and masks
        that must follow them) at those records, cropped (fit.crop) and flipped (fit.flip)
        the same way."""
        index = order(step)
        rng = _rng(self.seed, stream, self.rank, step)
        _, height, width = tensors[0].shape[:3]
        size_h, size_w = (self.fit.crop, self.fit.crop) if self.fit.crop else (height, width)
        tops = torch.randint(height - size_h + 1, (len(index),), generator=rng).tolist()
        lefts = torch.randint(width - size_w + 1, (len(index),), generator=rng).tolist()
        flips = (torch.rand(len(index), generator=rng) < 0.5).tolist()
        out = []
        for tensor in tensors:
            views = []
            for i, top, left, flip in zip(index.tolist(), tops, lefts, flips, strict=True):
                view = tensor[i, top:top + size_h, left:left + size_w]
                views.append(view.flip(1) if flip and self.fit.flip else view)
            out.append(torch.stack(views))
        return index, out

    def _batch(self, images: torch.Tensor, order: EpochBatches, step: int, stream: int) -> torch.Tensor:
        """Batch `step` of `images`, each randomly cropped (fit.crop) and flipped (fit.flip)."""
        return to_float(self._views(order, step, stream, images)[1][0])

    def __call__(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        real_x = self._batch(self.source, self.order_x, step, _VIEW_X)
        real_y = self._batch(self.target, self.order_y, step, _VIEW_Y)
        fake_y, fake_x, losses = self.generator_losses(state, real_x, real_y)
        descend(sum(losses.values()), state.optimizers["generators"])
        d_loss = self.discriminator_step(state, step, real_x, real_y, fake_y, fake_x)
        return {"G": losses["G"].detach(), "D": d_loss.detach(), "cycle": losses["cycle"].detach(),
                "idt": losses["idt"].detach()}

    def generator_losses(self, state: TrainState, real_x: torch.Tensor,
                         real_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """G(x), F(y) and G and F's loss terms by name, D_X and D_Y held fixed (CyCADA adds its
        semantic term to these before the one descent)."""
        fit, g, f = self.fit, state.modules["G"], state.modules["F"]
        # 1. G and F: adversarial (eq. 1, least squares) + cycle (eq. 2) + identity (§5.2).
        d_x, d_y = frozen(state.module("D_X")), frozen(state.module("D_Y"))
        with autocast(self.device, fit.bf16):
            fake_y, fake_x = g(real_x), f(real_y)  # G(x), F(y)
            rec_x, rec_y = f(fake_y), g(fake_x)  # F(G(x)), G(F(y))
            adversarial = lsgan_g_loss(d_y(fake_y)) + lsgan_g_loss(d_x(fake_x))
            cycle = cycle_loss(rec_x, real_x, fit.lambda_cycle) + cycle_loss(rec_y, real_y, fit.lambda_cycle)
            if fit.lambda_identity > 0:  # G(y) ≈ y, F(x) ≈ x
                idt = identity_loss(g(real_y), real_y, fit.lambda_cycle, fit.lambda_identity) \
                    + identity_loss(f(real_x), real_x, fit.lambda_cycle, fit.lambda_identity)
            else:
                idt = torch.zeros((), device=self.device)
        return fake_y, fake_x, {"G": adversarial, "cycle": cycle, "idt": idt}

    def discriminator_step(self, state: TrainState, step: int, real_x: torch.Tensor, real_y: torch.Tensor,
                           fake_y: torch.Tensor, fake_x: torch.Tensor) -> torch.Tensor:
        """D_Y and D_X's descent on this step's reals and pooled fakes; returns their loss."""
        fit = self.fit
        # 2. D_Y and D_X: real against a fake from the history pool (Shrivastava et al. 2017).
        pool_rng = _rng(self.seed, _POOL, self.rank, step)
        history_y = state.module("D_Y").pool.query(fake_y.detach().float(), pool_rng)
        history_x = state.module("D_X").pool.query(fake_x.detach().float(), pool_rng)
        b = real_x.shape[0]
        with autocast(self.device, fit.bf16):  # one forward per D: real and fake in one batch
            scores_y = state.modules["D_Y"](torch.cat([real_y, history_y]))
            scores_x = state.modules["D_X"](torch.cat([real_x, history_x]))
            d_loss = lsgan_d_loss(scores_y[:b], scores_y[b:]) + lsgan_d_loss(scores_x[:b], scores_x[b:])
        descend(d_loss, state.optimizers["discriminators"])
        return d_loss


def _pick(images: np.ndarray, rows: int) -> np.ndarray:
    """`rows` images spread evenly over the set (the same ones at every checkpoint)."""
    return images[np.unique(np.linspace(0, len(images) - 1, min(rows, len(images))).round().astype(int))]


@torch.no_grad()
def translation_grid(g: nn.Module, f: nn.Module, source: np.ndarray, target: np.ndarray,
                     rows: int = GRID_ROWS) -> np.ndarray:
    """uint8 H×W×3 picture: rows x | G(x) | F(G(x)), then y | F(y) | G(F(y)), whole frames."""
    device = next(g.parameters()).device
    lines: list[list[np.ndarray]] = []
    for images, there, back in ((source, g, f), (target, f, g)):
        x = to_float(_pick(images, rows)).to(device)
        y = there(x)
        lines += [list(triple) for triple in zip(to_uint8(x), to_uint8(y), to_uint8(back(y)), strict=True)]
    h, w, c = lines[0][0].shape
    scale = max(1, -(-GRID_MIN_CELL // min(h, w)))
    gap = 2
    grid = np.zeros((len(lines) * (h * scale + gap), 3 * (w * scale + gap), 3), np.uint8)
    for r, line in enumerate(lines):
        for col, image in enumerate(line):
            cell = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            top, left = r * (h * scale + gap), col * (w * scale + gap)
            grid[top:top + h * scale, left:left + w * scale] = cell if c == 3 else np.repeat(cell, 3, axis=2)
    return grid


__all__ = ["CycleGANStep", "Discriminator", "build_modules", "make_optimizers", "translation_grid"]
