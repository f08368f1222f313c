"""The CycleGAN translator: G: X → Y of a fitted (or loaded) CycleGAN, applied to parent records.

A translated row is G(parent image) at the parent's H×W, so the job carries the parent's
label, mask and boxes over unchanged (the family's request is "parent"). Translation has
no randomness: a row's bytes are a function of G's weights and the parent's bytes only.
Images of one size are batched together; instance norm normalises each image alone and G
pads each batch to a multiple of 4 by reflection, so an image's output does not depend on
what else is in its batch (tested bitwise on CPU; GPU kernels may pick other algorithms
per batch size and move a rare pixel by one level).

Saved as `generator.safetensors` (G's weights) + `config.json` (format, hyperparameters,
data shape, seed); F and the discriminators stay in the training states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.family import DataShape
from augment.sample import GeneratorInfo, Sample
from domain_transfer.cyclegan_config import MIN_SIZE, CycleGANFit
from domain_transfer.networks import ResnetGenerator

FORMAT, FORMAT_VERSION = "synthaug.cyclegan", 1
WEIGHTS, CONFIG = "generator.safetensors", "config.json"


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×C -> float N×C×H×W in [-1, 1]."""
    images = torch.as_tensor(images)
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N×C×H×W in [-1, 1] -> uint8 N×H×W×C (round half to even, clipped)."""
    scaled = torch.round((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class CycleGANTranslator:
    """Holds G (X → Y) for sampling; built from the hyperparameters, data shape and seed."""

    name = "cyclegan"

    def __init__(self, fit: CycleGANFit, shape: DataShape, generator: ResnetGenerator, *, seed: int = 0,
                 device: str | torch.device | None = None, checkpoint_sha256: str | None = None) -> None:
        self.fit, self.shape, self.seed = fit, shape, seed
        # No device: stay where G is (a training state's module must not move).
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.generator = generator.to(self.device)
        self.checkpoint_sha256 = checkpoint_sha256

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.shape.class_names

    def _check(self, request: SampleRequest) -> list[np.ndarray]:
        if request.parents is None:
            raise ValueError(f"{self.name}: translates parent records; the request has no parents")
        images = []
        for parent in request.parents:
            image = parent.image
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == self.shape.channels and min(image.shape[:2]) >= MIN_SIZE):
                got = (getattr(image, "dtype", type(image).__name__), getattr(image, "shape", None))
                raise ValueError(f"{self.name}: parent {parent.id!r} must be a uint8 HxWx{self.shape.channels} image "
                                 f"of at least {MIN_SIZE}x{MIN_SIZE} (the model's channels), got {got}")
            images.append(image)
        return images

    @torch.no_grad()
    def sample(self, request: SampleRequest, *, batch_size: int = 16) -> list[Sample]:
        """G(parent image) per request entry, same H×W×C; labels are the request's (the job
        carries the parent's annotations). Seeds are recorded, not used: G is deterministic."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        images = self._check(request)
        info = GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256,
                             params_json=json.dumps({"direction": "X->Y"}))
        parents = request.parent_ids or [p.id for p in request.parents or []]
        # 1. group same-sized images (one batch must be one size), in request order
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        self.generator.eval()
        made: dict[int, np.ndarray] = {}
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                # 2. one forward pass of G per batch: [-1, 1] in, [-1, 1] out, same H×W
                chunk = indices[start:start + batch_size]
                x = to_float(np.stack([images[i] for i in chunk])).to(self.device)
                made.update(zip(chunk, to_uint8(self.generator(x)), strict=True))
        labels = [None if int(label) < 0 else int(label) for label in request.labels]  # -1: none
        return [Sample(id=request.ids[i], image=made[i], label=labels[i], source=self.name,
                       generator=info, seed=int(request.seeds[i]), parent_id=parents[i])
                for i in range(len(images))]

    def save_pretrained(self, directory: Path) -> None:
        """Write `generator.safetensors` (G) and `config.json` (hyperparameters, shape, seed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fit": self.fit.model_dump(mode="json"),
                "shape": self.shape.as_dict(), "seed": self.seed, "direction": "X->Y"}
        (directory / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.checkpoint_sha256 = checkpoint_sha256(directory)

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: str | torch.device = "cpu") -> CycleGANTranslator:
        """Load a folder written by `save_pretrained`; pickles are refused, safetensors only."""
        directory = Path(directory)
        fit, shape, seed = read_checkpoint_config(directory, files=(WEIGHTS, CONFIG), format_name=FORMAT,
                                                  fit_model=CycleGANFit, family="cyclegan")
        generator = ResnetGenerator(shape.channels, fit.ngf, fit.n_blocks)
        generator.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
        return cls(fit, shape, generator, seed=seed, device=device, checkpoint_sha256=checkpoint_sha256(directory))


def read_checkpoint_config(directory: Path, *, files: tuple[str, ...], format_name: str, fit_model: type[CycleGANFit],
                           family: str, version: int = FORMAT_VERSION) -> tuple[Any, DataShape, int]:
    """A saved translator's (fit, data shape, seed) from its `config.json`, after refusing
    pickles and folders missing one of `files`; ValueError naming the folder or file."""
    refuse_pickles(directory)
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"{directory}: a {family} checkpoint needs {', '.join(files)}; missing {', '.join(missing)}")
    config_path = directory / CONFIG
    meta: Any = json.loads(config_path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != format_name \
            or meta.get("format_version") != version:
        got = (meta.get("format"), meta.get("format_version")) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{config_path}: not a {format_name} v{version} config, got {got!r}")
    try:
        return fit_model.model_validate(meta["fit"]), DataShape.from_dict(meta["shape"]), int(meta["seed"])
    except (KeyError, TypeError, ValueError, ValidationError) as error:
        raise ValueError(f"{config_path}: unreadable {family} config: {error}") from None
