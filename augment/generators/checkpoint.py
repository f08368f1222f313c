"""A sampler around one generator network G, saved as `generator.safetensors` + `config.json`
(format, hyperparameters, data shape, seed), and the reading of such a `config.json` for
every family that saves one: pickles refused, missing files and foreign formats named."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from augment.generators.base import checkpoint_sha256, refuse_pickles
from augment.generators.family import DataShape, Hyperparameters

WEIGHTS, CONFIG = "generator.safetensors", "config.json"


class OneGenerator:
    """Holds G for sampling; built from the hyperparameters, data shape and seed. Subclasses
    set `name` and `format_name`, and add `sample` and `from_pretrained`."""

    name: ClassVar[str]
    format_name: ClassVar[str]
    format_version: ClassVar[int] = 1

    def __init__(self, fit: Any, shape: DataShape, generator: torch.nn.Module, *, seed: int = 0,
                 device: str | torch.device | None = None, checkpoint_sha256: str | None = None) -> None:
        self.fit, self.shape, self.seed = fit, shape, seed
        # No device: stay where G is (a training state's module must not move).
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.generator = generator.to(self.device)
        self.checkpoint_sha256 = checkpoint_sha256

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.shape.class_names

    def config_extras(self) -> dict[str, Any]:
        """Keys `config.json` holds beside format, hyperparameters, shape and seed."""
        return {}

    def save_pretrained(self, directory: Path) -> None:
        """Write `generator.safetensors` (G), then `config.json` (last: it marks a complete save)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(state_tensors(self.generator), str(directory / WEIGHTS))
        meta = {"format": self.format_name, "format_version": self.format_version,
                "fit": self.fit.model_dump(mode="json"), "shape": self.shape.as_dict(), "seed": self.seed,
                **self.config_extras()}
        (directory / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.checkpoint_sha256 = checkpoint_sha256(directory)

    def batches(self, items: Sequence[Any], batch_size: int) -> Iterator[list[int]]:
        """Indices of `items` in batches of at most `batch_size` of one shape (one forward pass
        is one size), in request order within a shape; G set to eval mode."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(tuple(item.shape), []).append(i)
        self.generator.eval()
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                yield indices[start:start + batch_size]


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state as contiguous CPU tensors (what safetensors saves)."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def read_checkpoint_config(directory: Path, *, files: tuple[str, ...], format_name: str, fit_model: type[Hyperparameters],
                           family: str, version: int = 1) -> tuple[Any, DataShape, int]:
    """A saved model's (fit, data shape, seed) from its `config.json`, after refusing
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
