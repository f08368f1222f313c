"""The SPADE painter: G of a fitted (or loaded) `spade` model, painting one image per label map.

A painted row is G(one-hot map, noise | z) at the map's H×W, and its mask is the map it was
painted from, byte for byte, so every image comes with its pixel labels. A sample's
randomness (OASIS's 3D noise, the VAE's style code; z first, then the noise) comes from
`torch.Generator().manual_seed(seed)` on the CPU, so the same seed gives the same bytes on
any device and a retried batch reproduces them. G runs in eval mode with instance norm (or
batch norm's running statistics), so an image does not depend on what else is in its batch
(tested bitwise on CPU; GPU kernels may pick other algorithms per batch size and move a
rare pixel by one level). Without noise and VAE (`noise_dim: 0`, plain SPADE) G is
deterministic: one image per map whatever the seed.

Saved as `generator.safetensors` (G's weights, the EMA copy when trained by the family) +
`config.json` (format, hyperparameters, data shape, seed); D and E stay in the training states.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.family import DataShape
from augment.generators.spade_config import SPADEFit
from augment.generators.spade_networks import SPADEGenerator, conditioning, one_hot
from augment.sample import GeneratorInfo, Sample

FORMAT, FORMAT_VERSION = "synthaug.spade", 1
WEIGHTS, CONFIG = "generator.safetensors", "config.json"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N×C×H×W in [-1, 1] → uint8 N×H×W×C (round half to even, clipped)."""
    scaled = torch.round((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample_latents(fit: SPADEFit, seed: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One sample's (style code z, noise vector) from its seed; None where the model has none."""
    rng = torch.Generator().manual_seed(int(seed))
    z = torch.randn(fit.z_dim, generator=rng) if fit.use_vae else None
    noise = torch.randn(fit.noise_dim, generator=rng) if fit.noise_dim else None
    return z, noise


class SPADEPainter:
    """Holds G for painting; built from the hyperparameters, data shape and seed."""

    name = "spade"

    def __init__(self, fit: SPADEFit, shape: DataShape, generator: SPADEGenerator, *, seed: int = 0,
                 device: str | torch.device | None = None, checkpoint_sha256: str | None = None) -> None:
        self.fit, self.shape, self.seed = fit, shape, seed
        # No device: stay where G is (a training state's EMA copy must not move).
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.generator = generator.to(self.device)
        self.checkpoint_sha256 = checkpoint_sha256

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.shape.class_names

    def _maps(self, request: SampleRequest) -> list[np.ndarray]:
        if request.label_maps is None:
            raise ValueError(f"{self.name}: paints label maps; the request has no label_maps")
        num_classes = self.shape.num_classes
        for i, label_map in enumerate(request.label_maps):
            if not (isinstance(label_map, np.ndarray) and label_map.dtype == np.uint16 and label_map.ndim == 2
                    and label_map.size):
                got = (getattr(label_map, "dtype", type(label_map).__name__), getattr(label_map, "shape", None))
                raise ValueError(f"{self.name}: label map {i} ({request.ids[i]!r}) must be a uint16 HxW array of "
                                 f"class ids, got {got}")
            multiple = self.generator.multiple  # G pads a map up to whole cells of its start grid
            if math.ceil(label_map.shape[0] / multiple) * math.ceil(label_map.shape[1] / multiple) < 2:
                raise ValueError(f"{self.name}: label map {i} ({request.ids[i]!r}) is {label_map.shape[1]}x"
                                 f"{label_map.shape[0]} (WxH); G doubles its start grid to {multiple}x{multiple} "
                                 f"px cells and needs at least 2 of them: give maps larger than {multiple}x{multiple}")
            top = int(label_map.max())
            if top >= num_classes:
                raise ValueError(f"{self.name}: label map {i} ({request.ids[i]!r}) has class id {top}; the model "
                                 f"knows {num_classes} classes {list(self.class_names)}")
        return list(request.label_maps)

    @torch.no_grad()
    def sample(self, request: SampleRequest, *, batch_size: int = 16) -> list[Sample]:
        """One image per label map, at the map's H×W; the sample's mask is the map itself."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        maps = self._maps(request)
        info = GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256, params_json="{}")
        parents = request.parent_ids or [None] * len(maps)
        # 1. group same-sized maps (one batch must be one size), in request order
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, label_map in enumerate(maps):
            groups.setdefault(label_map.shape, []).append(i)
        self.generator.eval()
        made: dict[int, np.ndarray] = {}
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                # 2. per-sample z and noise from the sample's seed; 3. one forward pass of G
                chunk = indices[start:start + batch_size]
                labels = torch.from_numpy(np.stack([maps[i].astype(np.int64) for i in chunk])).to(self.device)
                latents = [sample_latents(self.fit, request.seeds[i]) for i in chunk]
                z = torch.stack([lat[0] for lat in latents]).to(self.device) if self.fit.use_vae else None
                noise = torch.stack([lat[1] for lat in latents]).to(self.device) if self.fit.noise_dim else None
                cond = conditioning(one_hot(labels, self.shape.num_classes), noise)
                made.update(zip(chunk, to_uint8(self.generator(cond, z)), strict=True))
        labels_out = [None if int(label) < 0 else int(label) for label in request.labels]  # -1: none
        return [Sample(id=request.ids[i], image=made[i], label=labels_out[i], mask=maps[i], source=self.name,
                       generator=info, seed=int(request.seeds[i]), parent_id=parents[i])
                for i in range(len(maps))]

    def save_pretrained(self, directory: Path) -> None:
        """Write `generator.safetensors` (G) and `config.json` (hyperparameters, shape, seed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fit": self.fit.model_dump(mode="json"),
                "shape": self.shape.as_dict(), "seed": self.seed}
        (directory / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.checkpoint_sha256 = checkpoint_sha256(directory)

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: str | torch.device = "cpu") -> SPADEPainter:
        """Load a folder written by `save_pretrained`; pickles are refused, safetensors only."""
        directory = Path(directory)
        fit, shape, seed = read_config(directory)
        with torch.random.fork_rng(devices=[]):  # constructors draw weights that load_state_dict replaces
            generator = SPADEGenerator(fit, shape)
        generator.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
        return cls(fit, shape, generator, seed=seed, device=device, checkpoint_sha256=checkpoint_sha256(directory))


def read_config(directory: Path) -> tuple[SPADEFit, DataShape, int]:
    """A saved painter's (fit, data shape, seed), after refusing pickles and incomplete folders;
    ValueError naming the folder or file."""
    refuse_pickles(directory)
    missing = [name for name in (WEIGHTS, CONFIG) if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"{directory}: a spade checkpoint needs {WEIGHTS}, {CONFIG}; missing {', '.join(missing)}")
    config_path = directory / CONFIG
    meta: Any = json.loads(config_path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        got = (meta.get("format"), meta.get("format_version")) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{config_path}: not a {FORMAT} v{FORMAT_VERSION} config, got {got!r}")
    try:
        return SPADEFit.model_validate(meta["fit"]), DataShape.from_dict(meta["shape"]), int(meta["seed"])
    except (KeyError, TypeError, ValueError, ValidationError) as error:
        raise ValueError(f"{config_path}: unreadable spade config: {error}") from None


__all__ = ["SPADEPainter", "read_config", "sample_latents", "to_uint8"]
