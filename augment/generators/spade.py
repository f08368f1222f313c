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

import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from augment.generators.base import SampleRequest, checkpoint_sha256
from augment.generators.checkpoint import CONFIG, WEIGHTS, OneGenerator, read_checkpoint_config
from augment.generators.family import DataShape
from augment.generators.label_maps import checked_label_maps
from augment.generators.spade_config import SPADEFit
from augment.generators.spade_networks import SPADEGenerator, conditioning, one_hot
from augment.generators.tensors import to_uint8
from augment.sample import GeneratorInfo, Sample

FORMAT, FORMAT_VERSION = "synthaug.spade", 1


def sample_latents(fit: SPADEFit, seed: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One sample's (style code z, noise vector) from its seed; None where the model has none."""
    rng = torch.Generator().manual_seed(int(seed))
    z = torch.randn(fit.z_dim, generator=rng) if fit.use_vae else None
    noise = torch.randn(fit.noise_dim, generator=rng) if fit.noise_dim else None
    return z, noise


class SPADEPainter(OneGenerator):
    """Holds G for painting; built from the hyperparameters, data shape and seed."""

    name = "spade"
    format_name = FORMAT
    fit: SPADEFit
    generator: SPADEGenerator

    def _maps(self, request: SampleRequest) -> list[np.ndarray]:
        multiple = self.generator.multiple  # G pads a map up to whole cells of its start grid

        def size_problem(label_map: np.ndarray) -> str | None:
            if math.ceil(label_map.shape[0] / multiple) * math.ceil(label_map.shape[1] / multiple) >= 2:
                return None
            return (f"G doubles its start grid to {multiple}x{multiple} px cells and needs at least 2 of them: give "
                    f"maps larger than {multiple}x{multiple}")

        return checked_label_maps(self.name, request, self.class_names, size_problem)

    @torch.no_grad()
    def sample(self, request: SampleRequest, *, batch_size: int = 16) -> list[Sample]:
        """One image per label map, at the map's H×W; the sample's mask is the map itself."""
        maps = self._maps(request)
        info = GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256, params_json="{}")
        parents = request.parent_ids or [None] * len(maps)
        made: dict[int, np.ndarray] = {}
        for chunk in self.batches(maps, batch_size):
            # per-sample z and noise from the sample's seed, then one forward pass of G
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
    return read_checkpoint_config(directory, files=(WEIGHTS, CONFIG), format_name=FORMAT, fit_model=SPADEFit,
                                  family="spade", version=FORMAT_VERSION)


__all__ = ["SPADEPainter", "read_config", "sample_latents"]
