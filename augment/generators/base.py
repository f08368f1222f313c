"""What every generator family shares: the sample request and checkpoint hygiene.

Sampling is a pure function of (weights, request): every output sample has its own seed,
so a retried batch reproduces the same bytes. Weights are saved as safetensors plus a JSON
config, never as a pickle. The family contract itself is in `family.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augment.sample import Sample

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}


@dataclass(frozen=True)
class SampleRequest:
    """What to make: one entry per output sample. Class id (-1: none), seed and id always; a
    parent record (image with its mask, instances, boxes and depth) for a parent family; a
    label map (uint16 H×W class ids) for a label-map family."""

    labels: list[int]
    seeds: list[int]
    ids: list[str]
    parent_ids: list[str | None] | None = None
    parents: list[Sample] | None = None
    label_maps: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.seeds) != n or len(self.ids) != n:
            raise ValueError(f"request: {n} labels, {len(self.seeds)} seeds and {len(self.ids)} ids must match")
        for name in ("parent_ids", "parents", "label_maps"):
            given = getattr(self, name)
            if given is not None and len(given) != n:
                raise ValueError(f"request: {len(given)} {name} for {n} samples")


def checkpoint_sha256(directory: Path) -> str:
    """sha256 over every file of a saved generator (relative path + bytes), recorded per row."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def refuse_pickles(directory: Path) -> None:
    """Raise unless `directory` holds safetensors weights: pickled checkpoints are never loaded."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such checkpoint folder")
    if not any(directory.rglob("*.safetensors")):
        pickled = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                         if p.suffix in PICKLE_SUFFIXES)
        found = f"; found {', '.join(pickled[:3])}, and pickled checkpoints are refused" if pickled else ""
        raise ValueError(f"{directory}: no safetensors weights{found}")
