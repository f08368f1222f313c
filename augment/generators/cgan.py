"""Class-conditional GAN: a ResNet generator with class-conditional BatchNorm and a
projection discriminator with spectral norm, trained with the hinge loss.

Why projection + hinge rather than AC-GAN: the projection discriminator (Miyato & Koyama
2018, "cGANs with Projection Discriminator") scores a pair (x, y) as
``f(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` (their eq. 3), i.e. the class enters as an
inner product with the image features, which is the form implied by a log-likelihood
ratio model of p(y|x). It is the usual choice for class-conditional image quality
(SNGAN, BigGAN). AC-GAN (Odena et al. 2017) adds an auxiliary classifier loss that
rewards samples that are *easy to classify*, and is known to collapse intra-class
diversity towards the class prototypes -- bad for augmentation data, where diversity
within a class is the point. The hinge loss (Lim & Ye 2017; Miyato et al. 2018, eq. 16-17)
together with spectral norm in D (Miyato et al. 2018, "Spectral Normalization for GANs")
keeps D Lipschitz-bounded and training stable without a gradient penalty.

Sampling is one forward pass of G (the EMA copy, eval mode: BatchNorm uses its running
statistics, so every sample is a function of its own (z, y) only and does not depend on
what else is in the batch). Each sample's z comes from its own
``torch.Generator().manual_seed(seed)`` on the CPU, so the same seed gives the same z on
any device. Training lives in ``cgan_train.py`` (the step) and ``trainer.py`` (the loop);
the hyperparameters, ``CGANFit``, are declared in ``cgan_config.py``.

Paper names in code: ``CGANGenerator`` is G, ``ProjectionDiscriminator`` is D with
``features`` = phi, ``linear`` = psi, ``embed`` = V (class embedding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.cgan_config import IMAGE_SIZES, CGANFit
from augment.generators.family import DataShape
from augment.generators.tensors import reset_spectral_vectors, to_uint8
from augment.sample import GeneratorInfo, Sample
from augment.seeding import derive_seed

FORMAT, FORMAT_VERSION = "synthaug.cgan", 2  # 1: one "config" dict (before the family registry); still read
INIT_G_STREAM = 1  # derive_seed(seed, INIT_G_STREAM) initialises G (same in training)
TRUNCATION_MAX_ROUNDS = 1000  # resampling rounds before the truncation trick falls back to clamping


def gpu_preset(image_size: int, **overrides: Any) -> CGANFit:
    """BigGAN-like hyperparameters for one GPU at `image_size` (RGB): width 64 at full
    resolution (so 1024 channels at 4x4 for 64x64), TTUR rates (Heusel et al. 2017), 2 D
    steps per G step. `overrides` set any other field of `CGANFit`."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"gpu_preset: image_size must be one of {IMAGE_SIZES}, got {image_size!r}")
    values: dict[str, Any] = {
        "z_dim": 128, "g_channels": 64, "d_channels": 64, "lr_g": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.999),
        "n_critic": 2, "batch_size": 256, "steps": 100_000, "ema_decay": 0.9999,
    }
    values.update(overrides)
    return CGANFit(**values)


def _num_blocks(image_size: int) -> int:
    """Up/down-sampling blocks between 4x4 and `image_size`."""
    return int(math.log2(image_size // 4))


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; gain and bias come from the class (de Vries et al. 2017)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # 1. normalize; 2. y-dependent affine: gamma_y * x_hat + beta_y
        return self.gain(y)[:, :, None, None] * self.bn(x) + self.bias(y)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """Residual up-block (SNGAN/BigGAN G): CBN-ReLU-up-conv-CBN-ReLU-conv + up-conv1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_ch, num_classes)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(out_ch, num_classes)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class CGANGenerator(nn.Module):
    """G(z, y): linear to 4x4, residual up-blocks to `image_size`, BN-ReLU-conv-tanh."""

    def __init__(self, fit: CGANFit, shape: DataShape) -> None:
        super().__init__()
        fit.check_shape(shape)
        n = _num_blocks(shape.image_size)
        widths = [fit.g_channels * 2 ** (n - i) for i in range(n + 1)]  # 4x4 .. full size
        self.z_dim = fit.z_dim
        self.linear = nn.Linear(fit.z_dim, 4 * 4 * widths[0])
        self.blocks = nn.ModuleList(GeneratorBlock(widths[i], widths[i + 1], shape.num_classes) for i in range(n))
        self.bn_out = nn.BatchNorm2d(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], shape.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.conv_out(F.relu(self.bn_out(h))))


class DiscriminatorBlock(nn.Module):
    """Residual down-block (SNGAN D); the first block skips the leading ReLU (raw pixels)."""

    def __init__(self, in_ch: int, out_ch: int, *, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = spectral_norm(nn.Conv2d(in_ch, out_ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        skip = self.shortcut(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.shortcut(x), 2)
        return h + skip


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <V y, phi(x)>  (Miyato & Koyama 2018, eq. 3); SN on every layer."""

    def __init__(self, fit: CGANFit, shape: DataShape) -> None:
        super().__init__()
        fit.check_shape(shape)
        n = _num_blocks(shape.image_size)
        widths = [shape.channels] + [fit.d_channels * 2**i for i in range(n)]
        self.blocks = nn.Sequential(*(DiscriminatorBlock(widths[i], widths[i + 1], first=i == 0) for i in range(n)))
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))  # psi
        self.embed = spectral_norm(nn.Embedding(shape.num_classes, widths[-1]))  # V

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): blocks, ReLU, global sum pooling (SNGAN)."""
        return F.relu(self.blocks(x)).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)
        # Miyato & Koyama 2018, eq. 3: unconditional term psi(phi) + projection y^T V phi
        return self.linear(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every weight of `module` from `generator` (no global RNG): Xavier-uniform for
    conv/linear/projection embedding (SNGAN), identity for CBN, fresh spectral-norm vectors."""
    cbn_tables: set[int] = set()
    for m in module.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            nn.init.ones_(m.gain.weight)
            nn.init.zeros_(m.bias.weight)
            cbn_tables.update((id(m.gain), id(m.bias)))
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) and id(m) not in cbn_tables:
            normed = parametrize.is_parametrized(m, "weight")
            nn.init.xavier_uniform_(m.parametrizations.weight.original if normed else m.weight, generator=generator)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
            if normed:
                reset_spectral_vectors(m, generator)


def truncated_normal(dim: int, seed: int, truncation: float | None) -> torch.Tensor:
    """z ~ N(0, I) from `torch.Generator().manual_seed(seed)`; truncation trick (BigGAN, Brock
    et al. 2019, sec. 3.1): every component with |z_i| > truncation is redrawn from the same
    generator until it falls inside. After `TRUNCATION_MAX_ROUNDS` rounds (only reachable for
    truncation below ~0.005) the rest are clamped. None or 0 means no truncation."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(dim, generator=rng)
    if not truncation:
        return z
    for _ in range(TRUNCATION_MAX_ROUNDS):
        outside = z.abs() > truncation
        count = int(outside.sum())
        if count == 0:
            return z
        z[outside] = torch.randn(count, generator=rng)
    return z.clamp(-truncation, truncation)


class ClassConditionalGAN:
    """The sampler of the cGAN: one forward pass of (EMA) G per sample.

    Built from the hyperparameters (`CGANFit`), the data shape and, for an untrained G, the
    seed its weights are drawn from; `save_pretrained` writes all three with the weights.
    """

    name = "cgan"

    def __init__(self, fit: CGANFit, shape: DataShape, generator: CGANGenerator | None = None, *, seed: int = 0,
                 device: str | torch.device | None = None, checkpoint_sha256: str | None = None) -> None:
        self.fit, self.shape, self.seed = fit, shape, seed
        if generator is None:
            generator = CGANGenerator(fit, shape)
            init_weights(generator, torch.Generator().manual_seed(derive_seed(seed, INIT_G_STREAM)))
        # No device: stay where G is (a training state's EMA copy must not move).
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.generator = generator.to(self.device).eval()
        self.checkpoint_sha256 = checkpoint_sha256

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.shape.class_names

    @torch.no_grad()
    def sample(self, request: SampleRequest, *, truncation: float | None = None, batch_size: int = 64) -> list[Sample]:
        """One image per request entry; z from that entry's seed, G in eval mode, so a sample's
        bytes do not depend on `batch_size` or on its neighbours (tested bitwise on CPU; GPU
        kernels may pick other algorithms per batch size, which can move a rare pixel by one
        level). The default (None, like the job config) samples the untruncated prior;
        `truncation=1.0` is already strong (about 68% of the N(0, 1) mass is kept)."""
        if truncation is not None and not (truncation >= 0 and math.isfinite(truncation)):
            raise ValueError(f"cgan: truncation must be None or a number >= 0, got {truncation!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"cgan: batch_size must be a positive integer, got {batch_size!r}")
        num_classes = self.shape.num_classes
        bad = [y for y in request.labels if isinstance(y, bool) or not isinstance(y, (int, np.integer))
               or not 0 <= y < num_classes]
        if bad:
            raise ValueError(f"cgan: labels must be class ids in 0..{num_classes - 1}, got {bad[:5]}")
        truncation = truncation or None
        info = GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256,
                             params_json=json.dumps({"truncation": truncation}))
        parents = request.parent_ids or [None] * len(request.labels)
        self.generator.eval()
        out: list[Sample] = []
        for start in range(0, len(request.labels), batch_size):
            # 1. z per sample from its own seeded generator; 2. one forward pass of G
            seeds = request.seeds[start:start + batch_size]
            z = torch.stack([truncated_normal(self.fit.z_dim, int(s), truncation) for s in seeds])
            y = torch.tensor([int(v) for v in request.labels[start:start + batch_size]], dtype=torch.int64)
            images = to_uint8(self.generator(z.to(self.device), y.to(self.device)))
            for k, image in enumerate(images):
                i = start + k
                out.append(Sample(id=request.ids[i], image=image, label=int(request.labels[i]), source="cgan",
                                  generator=info, seed=int(request.seeds[i]), parent_id=parents[i]))
        return out

    def save_pretrained(self, directory: Path) -> None:
        """Write `generator.safetensors` (G's weights and BN statistics) and `config.json`
        (hyperparameters, data shape, seed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
        save_file(tensors, str(directory / "generator.safetensors"))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fit": self.fit.model_dump(mode="json"),
                "image_size": self.shape.image_size, "channels": self.shape.channels,
                "class_names": list(self.shape.class_names), "seed": self.seed}
        (directory / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.checkpoint_sha256 = checkpoint_sha256(directory)

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: str | torch.device = "cpu") -> ClassConditionalGAN:
        """Load a folder written by `save_pretrained` (format 2, or 1 from before the family
        registry); pickles are refused, safetensors only."""
        directory = Path(directory)
        refuse_pickles(directory)
        weights, config_path = directory / "generator.safetensors", directory / "config.json"
        if not weights.is_file() or not config_path.is_file():
            raise ValueError(f"{directory}: a cgan checkpoint needs generator.safetensors and config.json")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != FORMAT or meta.get("format_version") not in (1, FORMAT_VERSION):
            raise ValueError(f"{config_path}: not a {FORMAT} v1 or v{FORMAT_VERSION} config "
                             f"(format={meta.get('format')!r}, version={meta.get('format_version')!r})")
        try:
            fit, shape, seed = _read_config(meta)
        except (KeyError, TypeError, ValidationError) as error:
            raise ValueError(f"{config_path}: unreadable cgan config: {error}") from None
        generator = CGANGenerator(fit, shape)
        generator.load_state_dict(load_file(str(weights)), strict=True)
        return cls(fit, shape, generator, seed=seed, device=device, checkpoint_sha256=checkpoint_sha256(directory))


def _read_config(meta: dict[str, Any]) -> tuple[CGANFit, DataShape, int]:
    """(hyperparameters, shape, seed) of a saved config.json, either format version."""
    if meta["format_version"] == 1:
        # v1: one dict of the old CGANConfig (shape, seed and hyperparameters; `train_steps`).
        old = dict(meta["config"])
        shape = {k: old.pop(k) for k in ("image_size", "channels", "num_classes", "class_names")}
        seed = int(old.pop("seed"))
        old["steps"] = old.pop("train_steps")
        names = tuple(shape["class_names"]) or tuple(str(i) for i in range(shape["num_classes"]))
        return CGANFit.model_validate(old), DataShape(int(shape["image_size"]), int(shape["channels"]), names), seed
    shape = DataShape(int(meta["image_size"]), int(meta["channels"]), tuple(str(n) for n in meta["class_names"]))
    return CGANFit.model_validate(meta["fit"]), shape, int(meta["seed"])
