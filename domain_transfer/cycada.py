"""The CyCADA translator: G_{S→T} of a fitted (or loaded) CyCADA, applied to parent records
exactly as CycleGAN's translator applies its G (`CycleGANTranslator`, whose sampling this
reuses), plus the adapted target task model f_T (and the source one, f_S) as predictors.

f_T is CyCADA's other product (Hoffman et al. 2018, §3): a task model for the target
domain, trained on translated source images with their labels and aligned to the target
by D_feat. `task_model()` gives it as a `TaskPredictor`, so the job can score it on the
target holdout when the target has labels.

Saved as `generator.safetensors` (G), `task_target.safetensors` (f_T),
`task_source.safetensors` (f_S) and `config.json` (format, hyperparameters, data shape,
seed, task), written last; F and the discriminators stay in the training states. Loading
refuses pickles and reads safetensors only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from augment.generators.base import checkpoint_sha256
from augment.generators.checkpoint import CONFIG, WEIGHTS, read_checkpoint_config, state_tensors
from augment.generators.family import DataShape
from augment.generators.tensors import to_float
from augment.metrics.classifier import build_on_meta
from domain_transfer.cycada_config import CyCADAFit
from domain_transfer.cycada_networks import Task, TaskNet, task_logits
from domain_transfer.cyclegan import CycleGANTranslator
from domain_transfer.cyclegan_config import MIN_SIZE
from domain_transfer.networks import ResnetGenerator

FORMAT, FORMAT_VERSION = "synthaug.cycada", 1
TASK_TARGET, TASK_SOURCE = "task_target.safetensors", "task_source.safetensors"
FILES = (WEIGHTS, TASK_TARGET, TASK_SOURCE, CONFIG)


class TaskPredictor:
    """A task model (f_T or f_S) as a predictor of uint8 images: class ids or masks.

    `task` says which: "classification" (`predict` → int64 N, the argmax of the spatial mean
    of the pixel logits) or "segmentation" (int64 N×H×W, the argmax per pixel). Eval mode
    (batch norm uses its running statistics), so a prediction does not depend on its batch."""

    def __init__(self, net: TaskNet, class_names: tuple[str, ...], *, device: str | torch.device | None = None) -> None:
        task = net.task
        if task is None:
            raise ValueError("cycada: this task model was never fitted (its kind is unset): fit past the task phase")
        self.task: Task = task
        self.class_names = tuple(class_names)
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net = net.to(self.device)

    @property
    def channels(self) -> int:
        return self.net.channels

    def _check(self, images: np.ndarray) -> np.ndarray:
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[3] == self.channels and min(images.shape[1:3]) >= MIN_SIZE):
            got = (getattr(images, "dtype", type(images).__name__), getattr(images, "shape", None))
            raise ValueError(f"cycada: the task model takes uint8 NxHxWx{self.channels} images of at least "
                             f"{MIN_SIZE}x{MIN_SIZE} (the training images' channels), got {got}")
        return images

    @torch.no_grad()
    def logits(self, images: np.ndarray, *, batch_size: int = 64) -> torch.Tensor:
        """The task's logits, N×K (classification) or N×K×H×W (segmentation), on the CPU."""
        images = self._check(images)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"cycada: batch_size must be a positive integer, got {batch_size!r}")
        self.net.eval()
        parts = [task_logits(self.net(to_float(images[start:start + batch_size]).to(self.device)), self.task).cpu()
                 for start in range(0, len(images), batch_size)]
        if not parts:
            size = (0, self.net.num_classes) if self.task == "classification" else (0, self.net.num_classes,
                                                                                    *images.shape[1:3])
            return torch.zeros(size)
        return torch.cat(parts).float()

    def predict(self, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """Class ids, int64 N (classification) or N×H×W at the images' size (segmentation)."""
        return self.logits(images, batch_size=batch_size).argmax(dim=1).numpy().astype(np.int64)


class CyCADATranslator(CycleGANTranslator):
    """G_{S→T} for sampling (`CycleGANTranslator.sample`), with f_T and f_S kept alongside."""

    name = "cycada"
    format_name = FORMAT
    fit: CyCADAFit

    def __init__(self, fit: CyCADAFit, shape: DataShape, generator: ResnetGenerator, task_source: TaskNet,
                 task_target: TaskNet, *, seed: int = 0, device: str | torch.device | None = None,
                 checkpoint_sha256: str | None = None) -> None:
        super().__init__(fit, shape, generator, seed=seed, device=device, checkpoint_sha256=checkpoint_sha256)
        self.task_source, self.task_target = task_source.to(self.device), task_target.to(self.device)

    def task_model(self, which: Literal["target", "source"] = "target") -> TaskPredictor:
        """f_T (default: adapted to the target domain) or f_S (fitted on the source only)."""
        if which not in ("target", "source"):
            raise ValueError(f"cycada: task_model(which=) must be 'target' or 'source', got {which!r}")
        net = self.task_target if which == "target" else self.task_source
        return TaskPredictor(net, self.class_names, device=self.device)

    def config_extras(self) -> dict[str, Any]:
        return {**super().config_extras(), "task": self.task_target.task}

    def save_pretrained(self, directory: Path) -> None:
        """Write f_T, f_S, then G and `config.json` (last: it marks a complete save)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(state_tensors(self.task_target), str(directory / TASK_TARGET))
        save_file(state_tensors(self.task_source), str(directory / TASK_SOURCE))
        super().save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: str | torch.device = "cpu") -> CyCADATranslator:
        """Load a folder written by `save_pretrained`; pickles are refused, safetensors only."""
        directory = Path(directory)
        fit, shape, seed = read_checkpoint_config(directory, files=FILES, format_name=FORMAT, fit_model=CyCADAFit,
                                                  family="cycada", version=FORMAT_VERSION)
        generator = ResnetGenerator(shape.channels, fit.ngf, fit.n_blocks)
        nets = [build_on_meta(lambda: TaskNet(shape.channels, shape.num_classes, fit.task_width)) for _ in range(2)]
        try:
            generator.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
            for net, name in zip(nets, (TASK_SOURCE, TASK_TARGET), strict=True):
                net.load_state_dict(load_file(str(directory / name)), strict=True)
        except RuntimeError as error:  # shapes or names that do not match the config
            raise ValueError(f"{directory}: weights do not match {CONFIG}: {error}") from None
        return cls(fit, shape, generator, nets[0], nets[1], seed=seed,  # type: ignore[arg-type]
                   device=device, checkpoint_sha256=checkpoint_sha256(directory))


__all__ = ["FORMAT", "TASK_SOURCE", "TASK_TARGET", "CyCADATranslator", "TaskPredictor"]
