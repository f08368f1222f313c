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
from safetensors.torch import load_file

from augment.generators.base import SampleRequest, checkpoint_sha256
from augment.generators.checkpoint import CONFIG, WEIGHTS, OneGenerator, read_checkpoint_config
from augment.generators.tensors import to_float, to_uint8
from augment.sample import GeneratorInfo, Sample
from domain_transfer.cyclegan_config import MIN_SIZE, CycleGANFit
from domain_transfer.networks import ResnetGenerator

FORMAT, FORMAT_VERSION = "synthaug.cyclegan", 1


class CycleGANTranslator(OneGenerator):
    """Holds G (X → Y) for sampling; built from the hyperparameters, data shape and seed."""

    name = "cyclegan"
    format_name = FORMAT
    fit: CycleGANFit

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
        images = self._check(request)
        info = GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256,
                             params_json=json.dumps({"direction": "X->Y"}))
        parents = request.parent_ids or [p.id for p in request.parents or []]
        made: dict[int, np.ndarray] = {}
        for chunk in self.batches(images, batch_size):
            # one forward pass of G per batch: [-1, 1] in, [-1, 1] out, same H×W
            x = to_float(np.stack([images[i] for i in chunk])).to(self.device)
            made.update(zip(chunk, to_uint8(self.generator(x)), strict=True))
        labels = [None if int(label) < 0 else int(label) for label in request.labels]  # -1: none
        return [Sample(id=request.ids[i], image=made[i], label=labels[i], source=self.name,
                       generator=info, seed=int(request.seeds[i]), parent_id=parents[i])
                for i in range(len(images))]

    def config_extras(self) -> dict[str, Any]:
        return {"direction": "X->Y"}

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: str | torch.device = "cpu") -> CycleGANTranslator:
        """Load a folder written by `save_pretrained`; pickles are refused, safetensors only."""
        directory = Path(directory)
        fit, shape, seed = read_checkpoint_config(directory, files=(WEIGHTS, CONFIG), format_name=FORMAT,
                                                  fit_model=CycleGANFit, family="cyclegan")
        generator = ResnetGenerator(shape.channels, fit.ngf, fit.n_blocks)
        generator.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
        return cls(fit, shape, generator, seed=seed, device=device, checkpoint_sha256=checkpoint_sha256(directory))


