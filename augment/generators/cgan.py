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
any device. Training lives in ``cgan_train.py``.

Paper names in code: ``CGANGenerator`` is G, ``ProjectionDiscriminator`` is D with
``features`` = phi, ``linear`` = psi, ``embed`` = V (class embedding).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.diffaugment import POLICIES as DIFFAUGMENT_POLICIES
from augment.sample import GeneratorInfo, Sample
from augment.seeding import derive_seed

IMAGE_SIZES = (8, 16, 32, 64)  # 8 is for tests; G starts at 4x4 and doubles per block
FORMAT_VERSION = 1
INIT_G_STREAM = 1  # derive_seed(config.seed, INIT_G_STREAM) initialises G (same in training)
TRUNCATION_MAX_ROUNDS = 1000  # resampling rounds before the truncation trick falls back to clamping


@dataclass(frozen=True)
class CGANConfig:
    """Every hyperparameter of the class-conditional GAN; small CPU defaults.

    `g_channels` / `d_channels` are the widths at full resolution; each halving of the
    resolution doubles them (BigGAN layout). `n_critic` D steps per G step; `ema_decay`
    is the EMA of G's weights used for sampling (Yazici et al. 2019; BigGAN).
    """

    image_size: int = 16
    channels: int = 1
    num_classes: int = 10
    z_dim: int = 64
    g_channels: int = 16
    d_channels: int = 16
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    n_critic: int = 1
    batch_size: int = 64
    train_steps: int = 2000
    ema_decay: float = 0.999
    seed: int = 0
    class_names: tuple[str, ...] = ()
    # Small data: DiffAugment policy for every image D sees, and the mode-seeking weight
    # (MSGAN, Mao et al. 2019) that makes G spread different z apart within a class.
    diffaugment: tuple[str, ...] = ()
    mode_seeking: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"CGANConfig.image_size must be one of {IMAGE_SIZES}, got {self.image_size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"CGANConfig.channels must be 1 or 3, got {self.channels!r}")
        for name in ("num_classes", "z_dim", "g_channels", "d_channels", "n_critic", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CGANConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.train_steps, bool) or not isinstance(self.train_steps, int) or self.train_steps < 0:
            raise ValueError(f"CGANConfig.train_steps must be a non-negative integer, got {self.train_steps!r}")
        for name in ("lr_g", "lr_d"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"CGANConfig.{name} must be a positive number, got {getattr(self, name)!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"CGANConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"CGANConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"CGANConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        unknown = [p for p in self.diffaugment if p not in DIFFAUGMENT_POLICIES]
        if unknown:
            raise ValueError(f"CGANConfig.diffaugment: unknown {unknown}; known: {list(DIFFAUGMENT_POLICIES)}")
        if not (self.mode_seeking >= 0 and math.isfinite(self.mode_seeking)):
            raise ValueError(f"CGANConfig.mode_seeking must be a number >= 0, got {self.mode_seeking!r}")
        if self.mode_seeking > 0 and self.batch_size % 2:
            raise ValueError(f"CGANConfig.mode_seeking needs an even batch_size (pairs), got {self.batch_size}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"CGANConfig.class_names has {len(self.class_names)} names for {self.num_classes} classes")
        # JSON gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "diffaugment", tuple(str(p) for p in self.diffaugment))

    @classmethod
    def gpu_preset(cls, image_size: int, **overrides: Any) -> CGANConfig:
        """BigGAN-like settings for one GPU at `image_size`: width 64 at full resolution
        (so 1024 channels at 4x4 for 64x64), TTUR rates (Heusel et al. 2017), 2 D steps."""
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"gpu_preset: image_size must be one of {IMAGE_SIZES}, got {image_size!r}")
        values: dict[str, Any] = {
            "image_size": image_size, "channels": 3, "z_dim": 128, "g_channels": 64, "d_channels": 64,
            "lr_g": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.999), "n_critic": 2, "batch_size": 256,
            "train_steps": 100_000, "ema_decay": 0.9999,
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        data["class_names"] = list(self.class_names)
        data["diffaugment"] = list(self.diffaugment)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CGANConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CGANConfig: unknown fields {unknown}")
        return cls(**data)


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

    def __init__(self, config: CGANConfig) -> None:
        super().__init__()
        n = _num_blocks(config.image_size)
        widths = [config.g_channels * 2 ** (n - i) for i in range(n + 1)]  # 4x4 .. full size
        self.z_dim = config.z_dim
        self.linear = nn.Linear(config.z_dim, 4 * 4 * widths[0])
        self.blocks = nn.ModuleList(GeneratorBlock(widths[i], widths[i + 1], config.num_classes) for i in range(n))
        self.bn_out = nn.BatchNorm2d(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], config.channels, 3, padding=1)

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

    def __init__(self, config: CGANConfig) -> None:
        super().__init__()
        n = _num_blocks(config.image_size)
        widths = [config.channels] + [config.d_channels * 2**i for i in range(n)]
        self.blocks = nn.Sequential(*(DiscriminatorBlock(widths[i], widths[i + 1], first=i == 0) for i in range(n)))
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))  # psi
        self.embed = spectral_norm(nn.Embedding(config.num_classes, widths[-1]))  # V

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
                _reset_spectral_vectors(m, generator)


@torch.no_grad()
def _reset_spectral_vectors(m: nn.Module, generator: torch.Generator, iterations: int = 15) -> None:
    """New u, v for spectral norm, then power iterations (as torch does at registration)."""
    sn = m.parametrizations.weight[0]
    w = m.parametrizations.weight.original.flatten(1)  # dim 0 for conv, linear and embedding
    u = F.normalize(torch.randn(w.shape[0], generator=generator), dim=0, eps=sn.eps)
    v = F.normalize(torch.randn(w.shape[1], generator=generator), dim=0, eps=sn.eps)
    for _ in range(iterations):
        v = F.normalize(w.t().cpu() @ u, dim=0, eps=sn.eps)
        u = F.normalize(w.cpu() @ v, dim=0, eps=sn.eps)
    sn._u.copy_(u)
    sn._v.copy_(v)


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


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> uint8 NHWC (round half to even, clipped)."""
    scaled = torch.round((images.clamp(-1.0, 1.0) + 1.0) * 127.5)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class ClassConditionalGAN:
    """The `Generator` protocol for the cGAN: one forward pass of (EMA) G per sample."""

    name = "cgan"

    def __init__(self, config: CGANConfig, generator: CGANGenerator | None = None, *,
                 device: str | torch.device = "cpu", checkpoint_sha256: str | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        if generator is None:
            generator = CGANGenerator(config)
            init_weights(generator, torch.Generator().manual_seed(derive_seed(config.seed, INIT_G_STREAM)))
        self.generator = generator.to(self.device).eval()
        self.checkpoint_sha256 = checkpoint_sha256

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names or tuple(str(i) for i in range(self.config.num_classes))

    @classmethod
    def fit(cls, images: np.ndarray, labels: np.ndarray, config: CGANConfig, **kwargs: Any) -> ClassConditionalGAN:
        """Train with `cgan_train.fit_cgan` and wrap the EMA generator for sampling."""
        # Imported here: the trainer imports this module.
        from augment.generators.cgan_train import fit_cgan

        state = fit_cgan(images, labels, config, **kwargs)
        return cls(config, state.generator_ema, device=kwargs.get("device", "cpu"))

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
        bad = [y for y in request.labels if isinstance(y, bool) or not isinstance(y, (int, np.integer))
               or not 0 <= y < self.config.num_classes]
        if bad:
            raise ValueError(f"cgan: labels must be class ids in 0..{self.config.num_classes - 1}, got {bad[:5]}")
        truncation = truncation or None
        info = GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256,
                             params_json=json.dumps({"truncation": truncation}))
        parents = request.parent_ids or [None] * len(request.labels)
        self.generator.eval()
        out: list[Sample] = []
        for start in range(0, len(request.labels), batch_size):
            # 1. z per sample from its own seeded generator; 2. one forward pass of G
            seeds = request.seeds[start:start + batch_size]
            z = torch.stack([truncated_normal(self.config.z_dim, int(s), truncation) for s in seeds])
            y = torch.tensor([int(v) for v in request.labels[start:start + batch_size]], dtype=torch.int64)
            images = to_uint8(self.generator(z.to(self.device), y.to(self.device)))
            for k, image in enumerate(images):
                i = start + k
                out.append(Sample(id=request.ids[i], image=image, label=int(request.labels[i]), source="cgan",
                                  generator=info, seed=int(request.seeds[i]), parent_id=parents[i]))
        return out

    def save_pretrained(self, directory: Path) -> None:
        """Write `generator.safetensors` (G's weights and BN statistics) and `config.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
        save_file(tensors, str(directory / "generator.safetensors"))
        meta = {"format": "synthaug.cgan", "format_version": FORMAT_VERSION, "config": self.config.to_dict(),
                "class_names": list(self.config.class_names)}
        (directory / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: str | torch.device = "cpu") -> ClassConditionalGAN:
        """Load a folder written by `save_pretrained`; pickles are refused, safetensors only."""
        directory = Path(directory)
        refuse_pickles(directory)
        weights, config_path = directory / "generator.safetensors", directory / "config.json"
        if not weights.is_file() or not config_path.is_file():
            raise ValueError(f"{directory}: a cgan checkpoint needs generator.safetensors and config.json")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != "synthaug.cgan" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: not a synthaug.cgan v{FORMAT_VERSION} config "
                             f"(format={meta.get('format')!r}, version={meta.get('format_version')!r})")
        config = CGANConfig.from_dict(meta["config"])
        generator = CGANGenerator(config)
        generator.load_state_dict(load_file(str(weights)), strict=True)
        return cls(config, generator, device=device, checkpoint_sha256=checkpoint_sha256(directory))
