"""One trainer for every generator family; Ray Train runs it on each worker.

A family supplies only what differs (`Family.build`, `optimizers`, `make_step`, `sampler`);
this module does the rest, the same way for all of them:

- device and DDP: modules are built on the CPU from the family's seed, moved to the
  training device, then wrapped by a `prepare` callable (`ray.train.torch.prepare_model`
  when Ray Train runs several workers); EMA copies, samplers and saved states always use
  the unwrapped modules (`unwrap`);
- the learning-rate schedule: base rate × `Family.lr_scale(k)`, by default a linear warm-up
  from 0 over the family's `warmup_steps` (Goyal et al. 2017, "Accurate, Large Minibatch
  SGD", §2.2);
- EMA of weights with the warm-up of diffusers' `EMAModel`, decay_k = min(decay, (1 + k) /
  (10 + k)), so that short runs are not dominated by the random initialisation;
- training states: modules, EMA copies and optimizer tensors in one safetensors file; step,
  RNG state, optimizer scalars and what the state was trained with in JSON, written last.
  A resumable fit (`run`) writes `states/step-N/`, then points `states/LATEST` at it by an
  atomic rename, so a state half written when the process died is never picked;
- a sample grid every `checkpoint_every` steps, progress with losses, rate and ETA, and one
  check of the training data (dtype, shape, label range).

Randomness: the family initialises its modules from its seed. A state carries one stateful
stream, `state.rng`, seeded from (seed, RNG_STREAM, rank) and saved with the state, for
families that draw as they go (diffusion); others derive a generator per (stream, rank,
step) from the seed (cGAN, `EpochBatches`). Nothing here reads or seeds the global RNG, so a
fit resumed from a state continues bit for bit like an uninterrupted one (same device).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from augment.generators.base import SampleRequest
from augment.generators.family import Family, Sampler, TrainingData
from augment.seeding import derive_seed

log = logging.getLogger("synthaug")

RNG_STREAM = 1  # derive_seed(seed, RNG_STREAM, rank) seeds `state.rng`
LATEST = "LATEST"
STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"
STATE_FORMAT = "synthaug.train_state/1"
GRID_PER_CLASS = 8
PrepareFn = Callable[[nn.Module], nn.Module]


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (`prepare_model`) wrapper, or the module itself."""
    return getattr(module, "module", module)


def trained_with(family: Family) -> dict[str, Any]:
    """What a state depends on: family, hyperparameters except `steps`, data shape, seed."""
    fit = family.fit.model_dump(mode="json")
    fit.pop("steps", None)  # a resumed fit may run longer
    shape = family.shape
    return {"family": family.name, "fit": fit, "seed": family.seed,
            "shape": shape.as_dict()}


def _check_trained_with(recorded: dict[str, Any], family: Family, where: str) -> None:
    expected = trained_with(family)
    if recorded == expected:
        return
    diffs = [f"fit.{k} ({recorded['fit'].get(k)!r} != {expected['fit'].get(k)!r})"
             for k in sorted(set(recorded.get("fit", {})) | set(expected["fit"]))
             if recorded.get("fit", {}).get(k) != expected["fit"].get(k)]
    diffs += [f"{k} ({recorded.get(k)!r} != {expected[k]!r})" for k in ("family", "seed", "shape")
              if recorded.get(k) != expected[k]]
    raise ValueError(f"{family.name}: {where} was trained with hyperparameters that differ from this fit's in "
                     f"{', '.join(diffs)}; only steps may change when resuming")


@dataclass
class TrainState:
    """Everything a fit needs to continue: modules (DDP-wrapped after `prepare`), their EMA
    copies, optimizers, the stateful RNG stream and the number of steps done."""

    modules: dict[str, nn.Module]
    ema: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    rng: torch.Generator
    trained_with: dict[str, Any]
    base_lrs: dict[str, list[float]]  # per optimizer and param group, before warm-up
    step: int = 0

    def module(self, name: str) -> nn.Module:
        """Module `name` without its DDP wrapper."""
        return unwrap(self.modules[name])

    @property
    def device(self) -> torch.device:
        """Where the weights live (the training device)."""
        for module in self.modules.values():
            for param in unwrap(module).parameters():
                return param.device
        return torch.device("cpu")

    def save(self, directory: Path) -> None:
        """Tensors to `state.safetensors`, the rest to `state.json` (written last: it marks
        the state complete). No pickles."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for prefix, modules in (("modules", {n: unwrap(m) for n, m in self.modules.items()}), ("ema", self.ema)):
            for name, module in modules.items():
                tensors.update({f"{prefix}.{name}.{k}": v for k, v in module.state_dict().items()})
        opt_tensors, opt_meta = flatten_optimizers(self.optimizers)
        tensors.update({f"optimizers.{k}": v for k, v in opt_tensors.items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / STATE_TENSORS))
        meta = {"format": STATE_FORMAT, "step": self.step, "trained_with": self.trained_with,
                "optimizers": opt_meta, "rng": base64.b64encode(self.rng.get_state().numpy().tobytes()).decode()}
        (directory / STATE_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def new_state(family: Family, device: str | torch.device = "cpu", rank: int = 0) -> TrainState:
    """Fresh modules from the family's seed on `device`, their EMA copies and optimizers."""
    device = torch.device(device)
    modules = family.build()
    bad = [n for n in modules if not n.isidentifier()] + [n for n in family.ema_modules if n not in modules]
    if bad:
        raise ValueError(f"{family.name}: module names must be identifiers and ema_modules must name built "
                         f"modules; got modules {sorted(modules)}, ema_modules {family.ema_modules}")
    for module in modules.values():
        module.to(device)
    ema = {name: copy.deepcopy(modules[name]).requires_grad_(False).eval() for name in family.ema_modules}
    optimizers = family.optimizers(modules)
    base_lrs = {name: [float(group["lr"]) for group in opt.param_groups] for name, opt in optimizers.items()}
    rng = torch.Generator().manual_seed(derive_seed(family.seed, RNG_STREAM, rank))
    return TrainState(modules, ema, optimizers, rng, trained_with(family), base_lrs)


def load_state(family: Family, directory: Path, device: str | torch.device = "cpu", rank: int = 0) -> TrainState:
    """A state written by `TrainState.save`, for the same family and hyperparameters (but
    `steps`). Rank 0 continues the saved RNG stream; other ranks (never saved) continue
    with streams derived from (seed, rank, step)."""
    directory = Path(directory)
    if not (directory / STATE_JSON).is_file() or not (directory / STATE_TENSORS).is_file():
        raise ValueError(f"{directory}: no training state ({STATE_TENSORS} + {STATE_JSON})")
    meta = json.loads((directory / STATE_JSON).read_text())
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{directory}: training state format {meta.get('format')!r}, expected {STATE_FORMAT!r} "
                         "(a state from an older synthaug cannot be resumed; remove the states folder)")
    _check_trained_with(meta["trained_with"], family, str(directory))
    state = new_state(family, device, rank)
    tensors = load_file(str(directory / STATE_TENSORS))
    for name, module in state.modules.items():
        unwrap(module).load_state_dict(_part(tensors, f"modules.{name}."))
    for name, module in state.ema.items():
        module.load_state_dict(_part(tensors, f"ema.{name}."))
    load_optimizers(state.optimizers, _part(tensors, "optimizers."), meta["optimizers"])
    state.step = int(meta["step"])
    if rank == 0:
        raw = np.frombuffer(base64.b64decode(meta["rng"]), dtype=np.uint8).copy()
        state.rng.set_state(torch.from_numpy(raw))
    else:
        state.rng.manual_seed(derive_seed(family.seed, RNG_STREAM, rank, state.step))
    return state


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def flatten_optimizers(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dicts → tensors named "<optimizer>.<param index>.<slot>" and the
    JSON-able rest (param groups, non-tensor slots), for safetensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, slots in sd["state"].items():
            for slot, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"{name}.{index}.{slot}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[slot] = value
        meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizers(optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    """Inverse of `flatten_optimizers`, loaded into `optimizers` (built as when saved)."""
    if sorted(meta) != sorted(optimizers):
        raise ValueError(f"saved optimizers {sorted(meta)} do not match the family's {sorted(optimizers)}")
    for name, optimizer in optimizers.items():
        state: dict[int, dict[str, Any]] = {}
        for key, value in _part(tensors, f"{name}.").items():
            index, slot = key.split(".", 1)
            state.setdefault(int(index), {})[slot] = value
        for index, slots in meta[name]["scalars"].items():
            state.setdefault(int(index), {}).update(slots)
        # JSON turned tuples (Adam's betas) into lists; `params` stays a list.
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
                  for group in meta[name]["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})


# -- pieces a family's step uses -------------------------------------------------------------


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when asked; nothing elsewhere (CPU bf16 is slow and changes results)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else nullcontext()


def descend(loss: torch.Tensor, optimizer: torch.optim.Optimizer, *, clip: Iterable[torch.Tensor] | None = None,
            max_norm: float | None = None) -> None:
    """One gradient step: clear the gradients, backpropagate, clip the global norm of `clip`'s
    gradients to `max_norm` (when given), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None and max_norm is not None:
        torch.nn.utils.clip_grad_norm_(clip, max_norm)
    optimizer.step()


class EpochBatches:
    """Batch b = positions [b·B, (b+1)·B) of an endless stream of per-epoch permutations of
    range(n); epoch e's permutation comes from derive_seed(seed, *key, e), so any batch is
    found in O(1) and a resumed fit draws the batches an uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, seed: int, *key: int) -> None:
        self.n, self.batch_size, self.seed, self.key = n, batch_size, seed, key
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {e: p for e, p in self._cache.items() if e >= epoch - 1}
            rng = torch.Generator().manual_seed(derive_seed(self.seed, *self.key, epoch))
            self._cache[epoch] = torch.randperm(self.n, generator=rng)
        return self._cache[epoch]

    def __call__(self, batch: int) -> torch.Tensor:
        start = batch * self.batch_size
        positions = torch.arange(start, start + self.batch_size)
        epochs, offsets = positions // self.n, positions % self.n
        return torch.cat([self._perm(int(e))[offsets[epochs == e]] for e in torch.unique(epochs)])


def ema_decay_at(step: int, decay: float) -> float:
    """EMA warm-up (as diffusers' EMAModel): min(decay, (1 + k) / (10 + k)) at step k."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay · θ_ema + (1 − decay) · θ; buffers (BatchNorm statistics) copied."""
    ema_params, params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"EMA copy has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


# -- the loop ---------------------------------------------------------------------------------


def check_data(data: TrainingData, family: Family) -> None:
    """ValueError unless `data` fits the family's data shape and request kind."""
    name, shape = family.name, family.shape
    images, labels = data.images, np.asarray(data.labels)
    size, width, channels = shape.height, shape.image_width, shape.channels
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != (size, width, channels) or len(images) == 0:
        got = (getattr(images, "dtype", type(images).__name__), getattr(images, "shape", None))
        raise ValueError(f"{name}: images must be uint8 Nx{size}x{width}x{channels} with N > 0, got {got}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    low = 0 if family.request == "class" else -1  # -1: no label, fine unless the class is the condition
    if labels.min() < low or labels.max() >= shape.num_classes:
        raise ValueError(f"{name}: labels must be in [{low}, {shape.num_classes}), "
                         f"got [{labels.min()}, {labels.max()}]")
    if data.masks is not None:
        masks = data.masks
        if masks.dtype != np.uint16 or masks.shape != images.shape[:3]:
            raise ValueError(f"{name}: masks must be uint16 Nx{size}x{width} like the images, "
                             f"got {masks.dtype} {masks.shape}")
    elif family.request == "label_map":
        raise ValueError(f"{name}: a label-map family needs every training record's mask, got none")
    if family.needs_target:
        target = data.target
        if not isinstance(target, np.ndarray) or target.dtype != np.uint8 or target.ndim != 4 \
                or target.shape[1:] != images.shape[1:] or len(target) == 0:
            got = (getattr(target, "dtype", type(target).__name__), getattr(target, "shape", None))
            raise ValueError(f"{name}: target images must be uint8 Mx{size}x{width}x{channels} like the source "
                             f"images, with M > 0, got {got}")


@dataclass(frozen=True)
class Progress:
    """One progress report: mean losses since the previous report, speed, time left."""

    family: str
    step: int
    total: int
    losses: dict[str, float]
    steps_per_second: float

    @property
    def eta_seconds(self) -> float:
        return (self.total - self.step) / self.steps_per_second if self.steps_per_second > 0 else math.inf

    def __str__(self) -> str:
        losses = " ".join(f"{name} {value:.4f}" for name, value in self.losses.items())
        return (f"fit {self.family}: step {self.step}/{self.total} {losses} "
                f"{self.steps_per_second:.1f} steps/s ETA {self.eta_seconds:.0f}s")


LogFn = Callable[[Progress], None]


def train(family: Family, data: TrainingData, state: TrainState, until: int | None = None, *, rank: int = 0,
          on_log: LogFn | None = None, log_every: int = 50) -> TrainState:
    """Continue `state` to step `until` (default: the fit's `steps`) on its device.

    `rank` picks this worker's random streams. Every `log_every` steps and at `until`,
    `on_log` gets a `Progress`; a non-finite loss there raises FloatingPointError.
    """
    check_data(data, family)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"{family.name}: log_every must be a positive integer, got {log_every!r}")
    _check_trained_with(state.trained_with, family, "the state")
    total = family.steps
    until = total if until is None else until
    step_fn = family.make_step(data, state.device, rank)
    for module in state.modules.values():
        module.train()
    sums: dict[str, torch.Tensor] = {}
    window, tick = 0, time.perf_counter()
    while state.step < until:
        k = state.step
        # 1. Learning rate: the family's schedule (default: linear warm-up from 0).
        scale = family.lr_scale(k)
        for name, optimizer in state.optimizers.items():
            for group, base in zip(optimizer.param_groups, state.base_lrs[name], strict=True):
                group["lr"] = base * scale
        # 2. The family's optimizer step(s) on its batch (its losses cite their papers).
        losses = step_fn(state, k)
        # 3. EMA of the weights with warm-up: decay_k = min(decay, (1 + k) / (10 + k)).
        decay = ema_decay_at(k, family.ema_decay)
        for name, ema in state.ema.items():
            ema_update(ema, state.module(name), decay)
        state.step += 1
        # 4. Progress every `log_every` steps and at `until` (the loop's only host syncs).
        for name, value in losses.items():
            sums[name] = sums[name] + value.detach() if name in sums else value.detach()
        window += 1
        if state.step % log_every == 0 or state.step == until:
            means = {name: float(value) / window for name, value in sums.items()}
            bad = {name: value for name, value in means.items() if not math.isfinite(value)}
            if bad:
                raise FloatingPointError(f"{family.name}: non-finite loss at step {state.step}: {bad}")
            now = time.perf_counter()
            if on_log is not None:
                on_log(Progress(family.name, state.step, total, means, window / max(now - tick, 1e-9)))
            sums, window, tick = {}, 0, now
    for module in state.modules.values():
        module.eval()
    return state


def fit(family: Family, data: TrainingData, *, device: str | torch.device = "cpu", until: int | None = None,
        on_log: LogFn | None = None, log_every: int = 50) -> TrainState:
    """A fresh fit in this process (tests, notebooks, benchmarks): `new_state`, then `train`."""
    return train(family, data, new_state(family, device), until, on_log=on_log, log_every=log_every)


# -- resumable fits: states, grids, the published model ---------------------------------------


def latest_state(states: Path) -> Path | None:
    """The state `states/LATEST` points at, if complete."""
    pointer = Path(states) / LATEST
    if not pointer.is_file():
        return None
    path = Path(states) / pointer.read_text().strip()
    return path if (path / STATE_JSON).is_file() else None


def save_checkpoint(state: TrainState, states: Path) -> Path:
    """Write `step-N/`, then point LATEST at it (atomic rename), then drop older states."""
    states = Path(states)
    states.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:08d}"
    target = states / name
    shutil.rmtree(target, ignore_errors=True)  # a half-written one from a killed run
    state.save(target)
    tmp = states / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    tmp.replace(states / LATEST)
    for old in states.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def sample_grid(sampler: Sampler, class_names: Iterable[str], sample_kwargs: dict[str, Any], path: Path) -> None:
    """GRID_PER_CLASS fixed-seed samples per class, one row per class, as a PNG."""
    from PIL import Image

    names = list(class_names)
    labels = [c for c in range(len(names)) for _ in range(GRID_PER_CLASS)]
    request = SampleRequest(labels=labels, seeds=list(range(len(labels))), ids=[str(i) for i in range(len(labels))])
    samples = sampler.sample(request, **sample_kwargs)
    h, w, c = samples[0].image.shape
    grid = np.zeros((len(names) * (h + 2), GRID_PER_CLASS * (w + 2), 3), np.uint8)
    for i, sample in enumerate(samples):
        row, col = divmod(i, GRID_PER_CLASS)
        image = sample.image if c == 3 else np.repeat(sample.image, 3, axis=2)
        grid[row * (h + 2):row * (h + 2) + h, col * (w + 2):col * (w + 2) + w] = image
    scale = max(1, 64 // h)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST).save(path)


def save_grid(picture: np.ndarray, path: Path, name: str = "grid") -> None:
    """A family's `grid` picture (uint8 H×W×3) as a PNG; ValueError naming what else it got."""
    from PIL import Image

    if not isinstance(picture, np.ndarray) or picture.dtype != np.uint8 or picture.ndim != 3 \
            or picture.shape[2] != 3 or picture.size == 0:
        got = (getattr(picture, "dtype", type(picture).__name__), getattr(picture, "shape", None))
        raise ValueError(f"{name}: grid must return a uint8 HxWx3 image or None, got {got}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)


def publish(sampler: Sampler, directory: Path) -> None:
    """`save_pretrained` to a temporary sibling, then rename: the folder appears complete or not at all."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sampler.save_pretrained(tmp)
    tmp.replace(directory)


def run(family: Family, data: TrainingData, *, states: Path, model: Path, checkpoint_every: int,
        grids: Path | None = None, grid_kwargs: dict[str, Any] | None = None, device: str | torch.device = "cpu",
        rank: int = 0, prepare: PrepareFn | None = None, on_log: LogFn | None = None,
        on_checkpoint: Callable[[TrainState], None] | None = None) -> TrainState:
    """Fit resumably: continue from `states/LATEST` if there is one, save a state (and a grid
    under `grids`: `sample_grid` for a class-conditional family, `Family.grid` for others)
    every `checkpoint_every` steps, publish the sampler to `model` at the end. Every worker
    runs it; rank 0 alone writes files.

    `prepare` wraps each trained module (DDP); `on_checkpoint(state)` runs on every rank
    after each chunk (Ray Train's `report`, which all workers must call).
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"{family.name}: checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    latest = latest_state(states)
    if latest is not None and rank == 0:
        log.info("fit %s: resuming from %s", family.name, latest)
    state = load_state(family, latest, device, rank) if latest else new_state(family, device, rank)
    if prepare is not None:
        state.modules = {name: prepare(module) for name, module in state.modules.items()}
    total, log_every = family.steps, max(1, min(100, checkpoint_every // 4))
    while state.step < total:
        until = min(total, (state.step // checkpoint_every + 1) * checkpoint_every)
        train(family, data, state, until, rank=rank, on_log=on_log, log_every=log_every)
        if rank == 0:
            save_checkpoint(state, states)
            if grids is not None:
                path = Path(grids) / f"step-{state.step:08d}.png"
                if family.request == "class":
                    sample_grid(family.sampler(state), family.shape.class_names, grid_kwargs or {}, path)
                else:
                    picture = family.grid(state, data)
                    if picture is not None:
                        save_grid(picture, path, family.name)
        if on_checkpoint is not None:
            on_checkpoint(state)
    if rank == 0:
        publish(family.sampler(state), model)
    return state
