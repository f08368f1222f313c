"""A generator family: the unit of extension for every way of making synthetic rows.

A family declares, in one class (see ../shared/DESIGN.md, "Family"):

- `name`: the config's `kind`, the shards' `source` value, the report's source key and
  the folder under `OUT/checkpoints/`;
- `Fit`: its hyperparameters, both the config's `fit:` section and the model's
  constructor config; `Sample`: the `sample:` section, the keyword arguments of its
  sampler's `sample` (pydantic models, so they validate, hash and serialize like the rest
  of the config);
- `request`: what one sample request carries: class ids (`"class"`), a parent record whose
  labels the new row keeps (`"parent"`), or a label map (`"label_map"`);
- how to fit, through the one shared trainer (`augment.generators.trainer`, run by the job
  under Ray Train): the family builds its modules from its seed (`build`), their optimizers
  (`optimizers`), one training step (`make_step`) and the sampler of the trained modules
  (`sampler`); the trainer does device and DDP, the learning-rate schedule (`lr_scale`,
  by default a warm-up), EMA warm-up, resumable states, grids (`sample_grid` for class
  families, `grid` for others), progress and the data checks;
- how to load a saved model (`from_pretrained`);
- `sweep_knob`: the `sample:` field the report sweeps for its fidelity/diversity plot.

The job finds families through `jobs.registry` (the `synthaug.generators` entry-point group
plus `register`); nothing outside a family branches on its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from augment.generators.base import SampleRequest
from augment.sample import Sample

if TYPE_CHECKING:  # torch stays out of config parsing, which imports this module
    import torch

RequestKind = Literal["class", "parent", "label_map"]
REQUEST_KINDS: tuple[RequestKind, ...] = ("class", "parent", "label_map")
# One optimizer step: step_fn(state, k) trains step k (0-based) and returns its detached losses by name.
StepFn = Callable[["TrainState", int], "dict[str, torch.Tensor]"]


class Hyperparameters(BaseModel):
    """Base of a family's `Fit` and `Sample` models: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check_shape(self, shape: DataShape) -> None:
        """Raise ValueError (naming the field and value) where these hyperparameters cannot
        fit data of `shape`; the checks that need the data, next to the pydantic validators."""


class NoHyperparameters(Hyperparameters):
    """For a family with nothing to set in a section."""


@dataclass(frozen=True)
class DataShape:
    """What a fit learns from the data rather than from the config: `image_size` is the
    images' height, and their width too unless `width` is given (landscape street frames)."""

    image_size: int
    channels: int
    class_names: tuple[str, ...]
    width: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def height(self) -> int:
        return self.image_size

    @property
    def image_width(self) -> int:
        return self.image_size if self.width is None else self.width

    @property
    def square(self) -> bool:
        return self.image_width == self.image_size

    def as_dict(self) -> dict[str, Any]:
        """JSON form (saved configs, Ray Train's loop config); `width` only when not square."""
        out: dict[str, Any] = {"image_size": self.image_size, "channels": self.channels,
                               "class_names": list(self.class_names)}
        if not self.square:
            out["width"] = self.image_width
        return out

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> DataShape:
        width = raw.get("width")
        return DataShape(int(raw["image_size"]), int(raw["channels"]), tuple(str(n) for n in raw["class_names"]),
                         None if width is None else int(width))


@dataclass(frozen=True)
class TrainingData:
    """The usable training records as arrays: images uint8 N×H×W×C, labels int64 N (-1: none),
    masks uint16 N×H×W when every record has one (label-map families need them).

    `target`: for a family that `needs_target` (domain transfer), the target domain's images
    (uint8 M×H×W×C, the size of `images`; their labels are never used).

    `licence`: the terms of all these images (`augment.licences.combine_licences`), which a
    model fitted on them is under; the job records it in the checkpoint, families ignore it."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    target: np.ndarray | None = None
    licence: str | None = None


class Sampler(Protocol):
    """A fitted (or loaded) generator: samples are a pure function of weights, request and seeds."""

    class_names: tuple[str, ...]
    checkpoint_sha256: str | None

    def sample(self, request: SampleRequest, **kwargs: Any) -> list[Sample]: ...

    def save_pretrained(self, directory: Path) -> None: ...


class TrainState(Protocol):
    """What a family's step and sampler use of the trainer's state
    (`augment.generators.trainer.TrainState` implements it)."""

    modules: dict[str, torch.nn.Module]  # DDP-wrapped when the trainer was given `prepare`
    ema: dict[str, torch.nn.Module]  # EMA copies of `Family.ema_modules`, never wrapped
    optimizers: dict[str, torch.optim.Optimizer]
    rng: torch.Generator  # the stateful stream, saved with the state, one per rank
    step: int

    def module(self, name: str) -> torch.nn.Module:
        """Module `name` without its DDP wrapper."""
        ...


class Family(ABC):
    """Subclass, set the class attributes, implement the abstract methods, register.

    An instance is one fit: hyperparameters, the data's shape and the seed. Constructing it
    checks the hyperparameters against the shape (`Fit.check_shape`).
    """

    name: ClassVar[str]
    request: ClassVar[RequestKind]
    Fit: ClassVar[type[Hyperparameters]] = NoHyperparameters
    Sample: ClassVar[type[Hyperparameters]] = NoHyperparameters
    sweep_knob: ClassVar[str | None] = None
    description: ClassVar[str] = ""
    # Modules (keys of `build`) whose exponential moving average the trainer keeps; the
    # sampler usually samples with the averaged weights.
    ema_modules: ClassVar[tuple[str, ...]] = ()
    # Domain transfer learns a mapping to a target domain: the step's `target:` source gives
    # its images as `TrainingData.target`.
    needs_target: ClassVar[bool] = False

    def __init__(self, fit: Hyperparameters, shape: DataShape, seed: int) -> None:
        if not isinstance(fit, self.Fit):
            raise ValueError(f"{self.name}: fit must be a {self.Fit.__name__}, got {type(fit).__name__}")
        fit.check_shape(shape)
        self.fit, self.shape, self.seed = fit, shape, seed

    def check_data(self, data: TrainingData) -> None:
        """Refuse training data this family cannot fit (ValueError; the job says it as a config
        error naming the step, before Ray Train starts). Default: any data."""

    # -- fitting (the shared trainer calls these on every Ray Train worker) ----------------

    @property
    def steps(self) -> int:
        """Optimizer steps of the fit (`fit.steps`)."""
        return int(getattr(self.fit, "steps", 0))

    @property
    def warmup_steps(self) -> int:
        """Steps of linear learning-rate warm-up from 0 (`fit.warmup_steps`; 0: none)."""
        return int(getattr(self.fit, "warmup_steps", 0))

    @property
    def ema_decay(self) -> float:
        """Decay of the EMA of `ema_modules` after its warm-up (`fit.ema_decay`)."""
        return float(getattr(self.fit, "ema_decay", 0.999))

    def lr_scale(self, k: int) -> float:
        """Factor on the optimizers' base learning rates at step k (0-based): the trainer sets
        lr = base · lr_scale(k) before each step. Default: linear warm-up from 0 over
        `warmup_steps` (Goyal et al. 2017, §2.2), then 1; override for another schedule."""
        warmup = self.warmup_steps
        return min(1.0, (k + 1) / warmup) if warmup else 1.0

    @abstractmethod
    def build(self) -> dict[str, torch.nn.Module]:
        """Fresh modules by name, on the CPU, initialised from `self.seed` (never the global RNG)."""

    @abstractmethod
    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name over `modules` (already on the training device), at their base
        learning rates; the trainer applies the warm-up."""

    @abstractmethod
    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> StepFn:
        """One optimizer step on `data` (checked by the trainer), as `step_fn(state, k)`.

        `state.modules` may be DDP-wrapped; draw randomness from `state.rng` (a stateful stream
        saved with the state, different per rank) or from generators derived from
        (`self.seed`, `rank`, k), never from the global RNG. Return detached 0-dim losses.
        """

    @abstractmethod
    def sampler(self, state: TrainState) -> Sampler:
        """The trained model, ready to sample and `save_pretrained`; use `state.ema[...]` or
        `state.module(...)` (unwrapped): rank 0 samples grids alone, outside DDP."""

    def grid(self, state: TrainState, data: TrainingData) -> np.ndarray | None:
        """For a family whose request is not class ids: a uint8 H×W×3 picture of the fit so
        far, which the trainer's `run` saves as PNG every `checkpoint_every` steps (rank 0,
        unwrapped modules, as `sampler`); None: no picture. Class families get
        `trainer.sample_grid` instead."""
        return None

    # -- loading and sampling --------------------------------------------------------------

    @classmethod
    @abstractmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Sampler:
        """A folder written by `save_pretrained`; must refuse pickles (`refuse_pickles`)."""

    @classmethod
    def sample_kwargs(cls, sample: Hyperparameters, class_names: list[str]) -> dict[str, Any]:
        """The sampler's keyword arguments for the `sample:` section (JSON-able: they cross Ray)."""
        return sample.model_dump(mode="json")

    @classmethod
    def sweep_kwargs(cls, kwargs: dict[str, Any], value: float) -> dict[str, Any]:
        """`kwargs` with the swept knob set to `value`."""
        return {**kwargs, str(cls.sweep_knob): value}

    @classmethod
    def sweep_axis(cls, values: list[float]) -> list[tuple[float, str]]:
        """The swept values ordered from most diverse to most faithful, each with its label
        for tables and plots (default: ascending, as written)."""
        return [(value, f"{value:g}") for value in sorted(values)]

    @classmethod
    def batch_size(cls, kwargs: dict[str, Any]) -> int:
        """Requests per sampler call, so progress moves within a shard."""
        return int(kwargs.get("batch_size", 64))


def check_family(family: type[Family]) -> None:
    """Raise ValueError naming what a family class lacks."""
    where = f"{family.__module__}.{family.__qualname__}"
    if not (isinstance(family, type) and issubclass(family, Family)):
        raise ValueError(f"{where}: not a subclass of augment.generators.family.Family")
    name = getattr(family, "name", None)
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name[:1].isalpha() \
            or name != name.lower() or len(name) > 32:
        raise ValueError(f"{where}: name must be a lower-case identifier of at most 32 characters, got {name!r}")
    if name in ("real", "classical", "simulator"):
        raise ValueError(f"{where}: name {name!r} is reserved for rows that are not generated")
    if getattr(family, "request", None) not in REQUEST_KINDS:
        raise ValueError(f"{where}: request must be one of {REQUEST_KINDS}, got {getattr(family, 'request', None)!r}")
    for section in ("Fit", "Sample"):
        model = getattr(family, section)
        if not (isinstance(model, type) and issubclass(model, Hyperparameters)):
            raise ValueError(f"{where}: {section} must subclass augment.generators.family.Hyperparameters")
    ema = getattr(family, "ema_modules", None)
    if not (isinstance(ema, tuple) and all(isinstance(m, str) and m.isidentifier() for m in ema)):
        raise ValueError(f"{where}: ema_modules must be a tuple of module names, got {ema!r}")
    if family.sweep_knob is not None and family.sweep_knob not in family.Sample.model_fields:
        raise ValueError(f"{where}: sweep_knob {family.sweep_knob!r} is not a field of {family.Sample.__name__}")
    if getattr(family, "__abstractmethods__", None):
        raise ValueError(f"{where}: does not implement {sorted(family.__abstractmethods__)}")
