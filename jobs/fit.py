"""The fit stage: train a class-conditional generator under Ray Train, resumably.

`TorchTrainer` runs the same loop on one CPU worker or DDP over N GPUs. Every
`checkpoint_every` steps rank 0 saves the training state (safetensors + JSON) under
`OUT/checkpoints/<kind>/states/` and a sample grid PNG; a rerun of the job continues from
the last saved state. The finished sampler is saved with `save_pretrained` to
`OUT/checkpoints/<kind>/model/`, published by rename, which marks the stage done.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import ConfigError
from augment.generators.family import DataShape, Family, TrainingData
from augment.sources.base import SourceRecord
from jobs.config import StepConfig

log = logging.getLogger("synthaug")

LATEST = "LATEST"
GRID_PER_CLASS = 8


def training_data(source: Any, records: list[SourceRecord], family: type[Family], where: str) -> TrainingData:
    """The usable training records as arrays (one image size required). Class-conditional
    families learn from labelled records only; label-map families need every record's mask."""
    if family.request == "class":
        records = [r for r in records if r.label is not None]
    if not records:
        raise ConfigError(f"{where}: no usable training records to fit {family.name} on")
    samples = [source.load(r) for r in records]
    shapes = sorted({s.image.shape for s in samples})
    if len(shapes) != 1:
        raise ConfigError(f"{where}: training images come in {len(shapes)} sizes ({shapes[:3]}...); "
                          "set source.image_size so that they share one")
    masks = None
    if all(s.mask is not None for s in samples):
        masks = np.stack([s.mask for s in samples])
    elif family.request == "label_map":
        missing = next(s.id for s in samples if s.mask is None)
        raise ConfigError(f"{where}: {family.name} learns from label maps, but record {missing!r} has no mask")
    labels = np.array([-1 if s.label is None else s.label for s in samples], dtype=np.int64)
    return TrainingData(np.stack([s.image for s in samples]), labels, masks)


def _latest_state(states: Path) -> Path | None:
    pointer = states / LATEST
    if not pointer.is_file():
        return None
    path = states / pointer.read_text().strip()
    return path if path.is_dir() else None


def _save_state(family: Any, state: Any, states: Path) -> None:
    """Write `step-N/`, then point LATEST at it (atomic), then drop older states."""
    name = f"step-{state.step:08d}"
    target = states / name
    shutil.rmtree(target, ignore_errors=True)
    state.save_training_state(target)
    tmp = states / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    tmp.replace(states / LATEST)
    for old in states.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _sample_grid(sampler: Any, class_names: list[str], sample_kwargs: dict[str, Any], path: Path) -> None:
    """GRID_PER_CLASS fixed-seed samples per class, one row per class."""
    from PIL import Image

    from augment.generators.base import SampleRequest

    labels = [c for c in range(len(class_names)) for _ in range(GRID_PER_CLASS)]
    request = SampleRequest(labels=labels, seeds=list(range(len(labels))), ids=[str(i) for i in range(len(labels))])
    samples = sampler.sample(request, **sample_kwargs)
    h, w, c = samples[0].image.shape
    grid = np.zeros((len(class_names) * (h + 2), GRID_PER_CLASS * (w + 2), 3), np.uint8)
    for i, sample in enumerate(samples):
        row, col = divmod(i, GRID_PER_CLASS)
        image = sample.image if c == 3 else np.repeat(sample.image, 3, axis=2)
        grid[row * (h + 2):row * (h + 2) + h, col * (w + 2):col * (w + 2) + w] = image
    scale = max(1, 64 // h)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST).save(path)


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; rank 0 saves states, grids and the final model."""
    import ray
    import ray.train
    import ray.train.torch

    from jobs.registry import resolve

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    shape = loop["shape"]
    family_class = resolve(loop["family"])
    family = family_class(family_class.Fit.model_validate(loop["fit"]),
                          DataShape(shape["image_size"], shape["channels"], tuple(shape["class_names"])), loop["seed"])
    device = ray.train.torch.get_device()
    data = ray.get(loop["data"])
    states, grids = Path(loop["states"]), Path(loop["grids"])
    latest = _latest_state(states)
    state = family.load_state(latest, device) if latest else family.new_state(data, device, rank)
    if world > 1:
        family.prepare_ddp(state, ray.train.torch.prepare_model)
    total, every = int(loop["steps"]), int(loop["checkpoint_every"])
    started, first_step = time.monotonic(), state.step

    def on_log(step: int, *values: float) -> None:
        if rank != 0:
            return
        *losses, rate = values
        eta = (total - step) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{v:.4f}" for v in losses)
        # Straight to stderr: Ray Train re-logs print() through the root logger, which
        # showed every line twice on the driver.
        sys.stderr.write(f"fit {family.name}: step {step}/{total} loss {shown} {rate:.1f} steps/s ETA {eta:.0f}s\n")
        sys.stderr.flush()

    while state.step < total:
        until = min(total, (state.step // every + 1) * every)
        state = family.train(data, state, until, on_log, rank, log_every=max(1, min(100, every // 4)))
        if rank == 0:
            _save_state(family, state, states)
            if family.request == "class":  # a grid of fixed-seed samples per class
                _sample_grid(family.sampler(state), list(loop["shape"]["class_names"]),
                             loop["sample_kwargs"], grids / f"step-{state.step:08d}.png")
        ray.train.report({"step": state.step, "seconds": time.monotonic() - started,
                          "steps_done_here": state.step - first_step})
    if rank == 0:
        model_dir = Path(loop["model"])
        tmp = model_dir.with_name(f".{model_dir.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        family.sampler(state).save_pretrained(tmp)
        tmp.replace(model_dir)


def _worker_resources(workers: int, num_gpus_per_worker: float) -> dict[str, float]:
    """GPU share per worker, or on CPU the cluster's CPUs split over the workers: Ray sets a
    worker's torch threads to its CPU count, so one CPU each would leave cores idle."""
    import ray

    if num_gpus_per_worker > 0:
        return {"CPU": 1, "GPU": num_gpus_per_worker}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return {"CPU": max(1, cpus // workers)}


def fit_step(step: StepConfig, *, family_ref: str, shape: DataShape, seed: int, data: TrainingData,
             sample_kwargs: dict[str, Any], folder: Path, num_gpus_per_worker: float) -> Path:
    """Fit under Ray Train unless `folder/model` exists already; returns the model folder."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.ray_compat import train_torch_config

    model_dir = folder / "model"
    if model_dir.is_dir():
        log.info("fit %s: already done (%s)", step.kind, model_dir)
        return model_dir
    states, grids = folder / "states", folder / "grids"
    states.mkdir(parents=True, exist_ok=True)
    grids.mkdir(parents=True, exist_ok=True)
    if _latest_state(states):
        log.info("fit %s: resuming from %s", step.kind, _latest_state(states))
    loop = {
        "family": family_ref,
        "fit": step.fit.model_dump(mode="json"),
        "shape": {"image_size": shape.image_size, "channels": shape.channels, "class_names": list(shape.class_names)},
        "seed": seed,
        "data": ray.put(data),
        "states": str(states),
        "grids": str(grids),
        "model": str(model_dir),
        "steps": int(getattr(step.fit, "steps", 0)),
        "checkpoint_every": step.checkpoint_every,
        "sample_kwargs": sample_kwargs,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=step.train_workers, use_gpu=num_gpus_per_worker > 0,
                                     resources_per_worker=_worker_resources(step.train_workers, num_gpus_per_worker)),
        run_config=RunConfig(storage_path=str(folder / "ray_train"), name=f"fit_{step.kind}"),
        torch_config=train_torch_config(),  # on the embedded Ray, rank 0's TCPStore on 127.0.0.1 only
    )
    trainer.fit()
    if not model_dir.is_dir():
        raise RuntimeError(f"fit {step.kind}: training finished without saving {model_dir}")
    return model_dir
