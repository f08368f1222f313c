"""Training of the `spade` family (networks in `spade_networks.py` and
`spade_discriminators.py`, losses in `spade_losses.py`): the modules, their optimizers, one
iteration, and the grid the trainer saves at checkpoints.

One iteration on a batch of (image x, label map m) pairs, flipped together (D first, as
the cGAN family; the SPADE reference steps G first, OASIS too):

1. D step, G (and E) without gradients, fakes x̂ = G(m, noise | z):
   - patchgan (SPADE): hinge loss on D([m, x]) and D([m, x̂]) over the scales;
   - oasis: (N+1)-class loss (eq. 2) on D(x), D(x̂), plus λ_LM · LabelMix (eq. 4) on
     D(M ⊙ x + (1 − M) ⊙ x̂), all three in one forward pass;
2. G step (E too with the VAE), D's weights held fixed, a new draw of noise | z:
   - patchgan: hinge G loss + λ_FM · feature matching (pix2pixHD eq. 4);
   - oasis: (N+1)-class loss with the map's classes as targets (eq. 3);
   - + λ_KLD · KL(q(z | x) ‖ N(0, I)) with the VAE, + λ_VGG · VGG loss with `vgg_weights`.

The loop around it (EMA of G, states, DDP, progress) is the shared trainer. Every random
number (batch order, flips, noise, codes, LabelMix coins) comes from a generator seeded by
derive_seed(seed, stream, rank, step): a resumed fit continues the uninterrupted one exactly
(same device) and ranks draw differently; nothing reads the global RNG.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from augment.generators.base import SampleRequest
from augment.generators.family import DataShape, Sampler, TrainingData
from augment.generators.spade_config import SPADEFit
from augment.generators.spade_discriminators import MultiscalePatchGAN, OASISDiscriminator
from augment.generators.spade_losses import (feature_matching_loss, hinge_d_loss, hinge_g_loss, kld_loss, labelmix,
                                             labelmix_loss, labelmix_mask, oasis_d_loss, oasis_g_loss)
from augment.generators.spade_networks import SPADEGenerator, StyleEncoder, conditioning, init_weights, one_hot
from augment.generators.tensors import frozen, to_float
from augment.generators.trainer import EpochBatches, TrainState, autocast, descend
from augment.generators.vgg import VGGLoss, load_vgg_features
from augment.metrics.preservation import void_class_id
from augment.seeding import derive_seed

# Independent random streams under the seed (keys for derive_seed).
_INIT_G, _INIT_D, _INIT_E, _ORDER, _FLIP, _D_DRAW, _G_DRAW, _LABELMIX = 1, 2, 3, 4, 5, 6, 7, 8
GRID_ROWS = 3  # training pairs in the checkpoint grid
GRID_MIN_CELL = 64  # small images are enlarged (nearest) to at least this many pixels


def _rng(seed: int, *key: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *key))


def build_modules(fit: SPADEFit, shape: DataShape, seed: int) -> dict[str, nn.Module]:
    """G, D (and E with the VAE), each initialised from its own stream, on the CPU. Built
    under a forked RNG: layer constructors and spectral norm draw from the global RNG, whose
    state must not change (their draws are overwritten by `init_weights`)."""
    with torch.random.fork_rng(devices=[]):
        modules: dict[str, nn.Module] = {"G": SPADEGenerator(fit, shape)}
        if fit.discriminator == "patchgan":
            modules["D"] = MultiscalePatchGAN(shape.channels, shape.num_classes, fit.ndf, fit.d_depth(shape),
                                              fit.num_d)
        else:
            modules["D"] = OASISDiscriminator(shape.channels, shape.num_classes, fit.ndf, fit.d_depth(shape))
        if fit.use_vae:
            modules["E"] = StyleEncoder(fit, shape)
    for name, stream in (("G", _INIT_G), ("D", _INIT_D), ("E", _INIT_E)):
        if name in modules:
            init_weights(modules[name], _rng(seed, stream))
    return modules


def make_optimizers(fit: SPADEFit, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Adam for G (with E, as the reference) and for D, TTUR rates (Heusel et al. 2017)."""
    g_params = list(modules["G"].parameters()) + (list(modules["E"].parameters()) if "E" in modules else [])
    return {"generator": torch.optim.Adam(g_params, lr=fit.lr_g, betas=fit.betas),
            "discriminator": torch.optim.Adam(modules["D"].parameters(), lr=fit.lr_d, betas=fit.betas)}


class SPADEStep:
    """One iteration on the (image, map) pairs kept on the device (uint8 images, int32 maps)."""

    def __init__(self, fit: SPADEFit, shape: DataShape, data: TrainingData, device: torch.device, *, seed: int,
                 rank: int) -> None:
        if data.masks is None:
            raise ValueError("spade: learns from (image, mask) pairs; the training data have no masks")
        self.fit, self.shape, self.device, self.seed, self.rank = fit, shape, device, seed, rank
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
        self.masks = torch.from_numpy(np.ascontiguousarray(data.masks, dtype=np.int32)).to(device)
        self.order = EpochBatches(len(self.images), fit.batch_size, seed, _ORDER, rank)
        # "void" pixels: OASIS's don't-care label, no weight in the class terms (eq. 2, 3)
        self.ignore_index = void_class_id(shape.class_names) if fit.void_dontcare else None
        self.vgg: VGGLoss | None = None
        if fit.vgg_weights is not None and fit.lambda_vgg > 0:
            features = load_vgg_features(fit.vgg_weights)
            if min(shape.height, shape.image_width) < features.min_size:
                raise ValueError(f"spade: vgg_weights {fit.vgg_weights} max-pools {features.pools} times and needs "
                                 f"images of at least {features.min_size} px, got "
                                 f"{shape.image_width}x{shape.height} (WxH)")
            self.vgg = VGGLoss(features).to(device)

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `step`: images in [-1, 1] and long maps, each pair flipped by the same coin."""
        index = self.order(step).to(self.device)
        images, masks = self.images[index], self.masks[index].long()
        if self.fit.flip:
            flips = (torch.rand(len(index), generator=_rng(self.seed, _FLIP, self.rank, step)) < 0.5).to(self.device)
            images = torch.where(flips.view(-1, 1, 1, 1), images.flip(2), images)
            masks = torch.where(flips.view(-1, 1, 1), masks.flip(2), masks)
        return to_float(images), masks

    def _generate(self, state: TrainState, real: torch.Tensor, onehot: torch.Tensor,
                  rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x̂ = G(m, noise | z) with this draw's noise and, with the VAE, z = μ + ε σ from E(x)."""
        fit, b = self.fit, real.shape[0]
        noise = torch.randn(b, fit.noise_dim, generator=rng).to(self.device) if fit.noise_dim else None
        z = mu = logvar = None
        if fit.use_vae:  # reparameterisation (Kingma & Welling 2014)
            eps = torch.randn(b, fit.z_dim, generator=rng).to(self.device)
            mu, logvar = state.modules["E"](real)
            z = mu + eps * torch.exp(0.5 * logvar)
        return state.modules["G"](conditioning(onehot, noise), z), mu, logvar

    def __call__(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        fit = self.fit
        real, labels = self._batch(step)
        b = real.shape[0]
        onehot = one_hot(labels, self.shape.num_classes)
        losses: dict[str, torch.Tensor] = {}
        # 1. D step on real and (gradient-free) fake, one forward pass of D.
        with autocast(self.device, fit.bf16):
            with torch.no_grad():
                fake = self._generate(state, real, onehot, _rng(self.seed, _D_DRAW, self.rank, step))[0]
            if fit.discriminator == "patchgan":
                out = state.modules["D"](torch.cat([torch.cat([onehot, real], 1), torch.cat([onehot, fake], 1)]))
                d_loss = hinge_d_loss([scale[-1][:b] for scale in out], [scale[-1][b:] for scale in out])
            else:
                mask = labelmix_mask(labels, self.shape.num_classes, _rng(self.seed, _LABELMIX, self.rank, step))
                logits = state.modules["D"](torch.cat([real, fake, labelmix(mask, real, fake)]))
                real_logits, fake_logits, mixed_logits = logits[:b], logits[b:2 * b], logits[2 * b:]
                d_loss = oasis_d_loss(real_logits, fake_logits, labels, self.ignore_index)
                losses["labelmix"] = labelmix_loss(mask, mixed_logits, real_logits, fake_logits)
                d_loss = d_loss + fit.lambda_labelmix * losses["labelmix"]
        descend(d_loss, state.optimizers["discriminator"])
        losses["D"] = d_loss
        # 2. G step through D with its weights held fixed.
        d = frozen(state.module("D"))
        with autocast(self.device, fit.bf16):
            fake, mu, logvar = self._generate(state, real, onehot, _rng(self.seed, _G_DRAW, self.rank, step))
            if fit.discriminator == "patchgan":
                out = d(torch.cat([torch.cat([onehot, fake], 1), torch.cat([onehot, real], 1)]))
                fake_out, real_out = [[t[:b] for t in s] for s in out], [[t[b:] for t in s] for s in out]
                g_adv = hinge_g_loss([scale[-1] for scale in fake_out])
                losses["fm"] = feature_matching_loss(real_out, fake_out)
                g_loss = g_adv + fit.lambda_fm * losses["fm"]
            else:
                g_adv = oasis_g_loss(d(fake), labels, self.ignore_index)
                g_loss = g_adv
            if mu is not None and logvar is not None:
                losses["kld"] = kld_loss(mu, logvar)
                g_loss = g_loss + fit.lambda_kld * losses["kld"]
            if self.vgg is not None:
                losses["vgg"] = self.vgg(fake, real)
                g_loss = g_loss + fit.lambda_vgg * losses["vgg"]
        descend(g_loss, state.optimizers["generator"])
        losses["G"] = g_adv
        return {name: value.detach() for name, value in losses.items()}


# -- the checkpoint grid ------------------------------------------------------------------


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class id (uint8 classes×3): hues spaced by the golden ratio."""
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)]
                     for i in range(num_classes)], dtype=np.uint8)


def _pick(n: int, rows: int) -> np.ndarray:
    """`rows` indices spread evenly over n (the same ones at every checkpoint)."""
    return np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(int))


def label_grid(painter: Sampler, images: np.ndarray, masks: np.ndarray, num_classes: int,
               rows: int = GRID_ROWS) -> np.ndarray:
    """uint8 picture: rows of colourised map | painted (fixed seeds) | real image."""
    index = _pick(len(images), rows)
    request = SampleRequest(labels=[-1] * len(index), seeds=list(range(len(index))),
                            ids=[f"grid-{i}" for i in index], label_maps=[masks[i] for i in index])
    painted = painter.sample(request)
    colours = palette(num_classes)
    h, w = images.shape[1:3]
    scale = max(1, -(-GRID_MIN_CELL // min(h, w)))
    gap = 2
    grid = np.zeros((len(index) * (h * scale + gap), 3 * (w * scale + gap), 3), np.uint8)
    for r, (i, sample) in enumerate(zip(index, painted, strict=True)):
        for col, image in enumerate((colours[masks[i]], sample.image, images[i])):
            image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
            cell = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            top, left = r * (h * scale + gap), col * (w * scale + gap)
            grid[top:top + h * scale, left:left + w * scale] = cell
    return grid


__all__ = ["SPADEStep", "build_modules", "label_grid", "make_optimizers", "palette"]
