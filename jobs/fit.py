"""The fit stage: train a generate step's family under Ray Train, resumably.

`TorchTrainer` runs the same loop on one CPU worker or DDP over N GPUs: the shared trainer's
`run` (`augment.generators.trainer`). Every `checkpoint_every` steps rank 0 saves the
training state (safetensors + JSON) under `OUT/checkpoints/<kind>/states/` and a sample grid
PNG; a rerun of the job continues from the last saved state. The finished sampler is saved
with `save_pretrained` to `OUT/checkpoints/<kind>/model/`, published by rename, which marks
the stage done. `train_loop_per_worker` is only the Ray Train glue around `run`.

Faults: when a Ray Train worker dies (its process killed, its node lost) or raises, Ray
Train starts the worker group again, up to `MAX_FIT_FAILURES` times, and `run` continues
from the last saved state, not from step 0. The nodes the workers ran on are recorded in
`OUT/checkpoints/<kind>/nodes.json` (`fit_nodes`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from augment.errors import ConfigError
from augment.generators import trainer
from augment.generators.checkpoint_licence import write_checkpoint_licence
from augment.generators.family import DataShape, Family, TrainingData
from augment.licences import combine_licences, licensed
from augment.sources.base import SourceRecord
from jobs.config import StepConfig

log = logging.getLogger("synthaug")

# Restarts of a fit's worker group after a worker died or raised (Ray Train's
# `FailureConfig.max_failures`); each continues from the last saved state.
MAX_FIT_FAILURES = 3
NODES_FILE = "nodes.json"


def training_data(source: Any, records: list[SourceRecord], family: type[Family], where: str,
                  licence: str | None = None) -> TrainingData:
    """The usable training records as arrays (one image size required), with their licences
    combined (`licence`: the source config's). Class-conditional families learn from labelled
    records only; label-map families need every record's mask."""
    if family.request == "class":
        records = [r for r in records if r.label is not None]
    if not records:
        raise ConfigError(f"{where}: no usable training records to fit {family.name} on")
    samples = [licensed(source.load(r), licence) for r in records]
    shapes = sorted({s.image.shape for s in samples})
    if len(shapes) != 1:
        raise ConfigError(f"{where}: training images come in {len(shapes)} sizes ({shapes[:3]}...); "
                          "give the source one size (image_size, or width and height) so that they share one")
    masks = None
    if all(s.mask is not None for s in samples):
        masks = np.stack([s.mask for s in samples])
    elif family.request == "label_map":
        missing = next(s.id for s in samples if s.mask is None)
        raise ConfigError(f"{where}: {family.name} learns from label maps, but record {missing!r} has no mask")
    labels = np.array([-1 if s.label is None else s.label for s in samples], dtype=np.int64)
    return TrainingData(np.stack([s.image for s in samples]), labels, masks,
                        licence=combine_licences(s.licence for s in samples))


MIN_TARGET_IMAGES = 8


def target_images(step: StepConfig, job_seed: int, holdout: float, like: np.ndarray,
                  where: str) -> tuple[np.ndarray, str]:
    """The target domain's training split as uint8 M×H×W×C, like the source images `like`, and
    the licence of those images (combined).

    Conversions, documented because they change what is learnt: each image gets the source's
    channel count (grey to RGB by repetition, RGB to grey by luma) and its size (the centred crop
    of the source's aspect ratio, then bicubic). Records that fail to load are skipped with a
    warning; labels are never read. Fewer than `MIN_TARGET_IMAGES` usable images is an error."""
    from augment.images import crop_resize
    from augment.metrics.preprocess import match_channels
    from augment.sources.base import loaded
    from jobs.plan import open_other_source

    if step.target is None:
        raise ConfigError(f"{where}.target: {step.kind} needs a target domain")
    source, records, _ = open_other_source(step.target, holdout, job_seed)
    height, width, channels = like.shape[1:4]
    skipped: list[str] = []
    samples = [licensed(sample, step.target.licence) for _, sample in loaded(source, records, f"{where}.target",
                                                                             skipped)]
    images = [crop_resize(match_channels(sample.image, channels), height, width) for sample in samples]
    if skipped:
        log.warning("%s.target: skipped %d unusable images (%s%s)", where, len(skipped), skipped[0],
                    ", ..." if len(skipped) > 1 else "")
    if len(images) < MIN_TARGET_IMAGES:
        raise ConfigError(f"{where}.target: {len(images)} usable target training images "
                          f"({len(records)} in the training split, {len(skipped)} unusable); {step.kind} needs at "
                          f"least {MIN_TARGET_IMAGES}")
    return np.stack(images), combine_licences(s.licence for s in samples)


def fit_licence(step: StepConfig, data: TrainingData, where: str) -> str:
    """What a model this step fits is under: its training data's licence, and that of any
    pretrained weights its `fit:` section names by folder (a base model it builds on)."""
    from augment.generators.checkpoint_licence import checkpoint_licence
    from augment.licences import UNKNOWN

    licences = [data.licence]
    for name, value in step.fit:
        if isinstance(value, Path) and value.is_dir():
            try:
                licences.append(checkpoint_licence(value) or UNKNOWN)
            except ValueError as error:
                raise ConfigError(f"{where}.fit.{name}: {error}") from None
    return combine_licences(licences)


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the shared trainer's resumable `run`, with this worker's
    rank and device, DDP across workers, progress on rank 0 and `ray.train.report` per chunk.

    `loop` keys: family (`jobs.registry.family_ref`), fit (the `fit:` section as JSON), shape
    (image_size, channels, class_names), seed, data (an object ref of `TrainingData`),
    states, grids, model (folders), checkpoint_every, sample_kwargs (for the grids), progress
    (optional: a `jobs.progress.ProgressCounter` told each worker's node).
    """
    import ray
    import ray.train
    import ray.train.torch

    from jobs.registry import resolve

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if loop.get("progress") is not None:
        loop["progress"].ran.remote("fit", ray.get_runtime_context().get_node_id())
    shape = loop["shape"]
    family_class = resolve(loop["family"])
    family = family_class(family_class.Fit.model_validate(loop["fit"]), DataShape.from_dict(shape), loop["seed"])
    started = time.monotonic()

    def on_log(progress: trainer.Progress) -> None:
        # Straight to stderr: Ray Train re-logs print() through the root logger, which
        # showed every line twice on the driver.
        sys.stderr.write(f"{progress}\n")
        sys.stderr.flush()

    def on_checkpoint(state: trainer.TrainState) -> None:
        ray.train.report({"step": state.step, "seconds": time.monotonic() - started})

    latest = trainer.latest_state(Path(loop["states"]))
    if latest is not None and rank == 0:  # also after Ray Train restarted the workers
        step = json.loads((latest / trainer.STATE_JSON).read_text())["step"]
        sys.stderr.write(f"fit {family.name}: resuming from step {step} ({latest})\n")
        sys.stderr.flush()

    trainer.run(family, _writable(ray.get(loop["data"])), states=Path(loop["states"]), model=Path(loop["model"]),
                grids=Path(loop["grids"]), grid_kwargs=loop["sample_kwargs"],
                checkpoint_every=int(loop["checkpoint_every"]), device=ray.train.torch.get_device(), rank=rank,
                prepare=ray.train.torch.prepare_model if world > 1 else None,
                on_log=on_log if rank == 0 else None, on_checkpoint=on_checkpoint)


def _writable(data: TrainingData) -> TrainingData:
    """The arrays copied out of Ray's object store, which hands them out read-only (torch warns
    on every `from_numpy` of one; a family that wrote to one would fail)."""
    copy = {name: None if value is None else np.array(value) for name, value in
            (("images", data.images), ("labels", data.labels), ("masks", data.masks), ("target", data.target))}
    return TrainingData(**copy, licence=data.licence)


def _worker_resources(workers: int, num_gpus_per_worker: float) -> dict[str, float]:
    """GPU share per worker, or on CPU the cluster's CPUs split over the workers: Ray sets a
    worker's torch threads to its CPU count, so one CPU each would leave cores idle."""
    import ray

    if num_gpus_per_worker > 0:
        return {"CPU": 1, "GPU": num_gpus_per_worker}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return {"CPU": max(1, cpus // workers)}


def fit_nodes(folder: Path) -> list[str]:
    """The Ray node ids the fit in `folder` (`OUT/checkpoints/<kind>/`) ran on, over all runs."""
    path = Path(folder) / NODES_FILE
    return sorted(json.loads(path.read_text())) if path.is_file() else []


def _record_nodes(folder: Path, nodes: list[str]) -> None:
    path = Path(folder) / NODES_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(sorted(set(fit_nodes(folder)) | set(nodes))) + "\n")
    tmp.replace(path)


def fit_step(step: StepConfig, *, family_ref: str, shape: DataShape, seed: int, data: TrainingData,
             sample_kwargs: dict[str, Any], folder: Path, num_gpus_per_worker: float, licence: str) -> Path:
    """Fit under Ray Train unless `folder/model` exists already; returns the model folder, with
    `licence` (its training data's) recorded in it. A worker that dies or raises restarts the
    workers from the last state (`MAX_FIT_FAILURES`)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.ray_compat import quiet_train_fit, train_torch_config, without_placement_group_cleaner
    from jobs.progress import start_progress_counter

    model_dir = folder / "model"
    if model_dir.is_dir():
        log.info("fit %s: already done (%s)", step.kind, model_dir)
        write_checkpoint_licence(model_dir, licence)  # a run stopped right after the fit had not
        return model_dir
    states, grids = folder / "states", folder / "grids"
    states.mkdir(parents=True, exist_ok=True)
    grids.mkdir(parents=True, exist_ok=True)
    if trainer.latest_state(states):
        log.info("fit %s: resuming from %s", step.kind, trainer.latest_state(states))
    loop = {
        "family": family_ref,
        "fit": step.fit.model_dump(mode="json"),
        "shape": shape.as_dict(),
        "seed": seed,
        "data": ray.put(data),
        "states": str(states),
        "grids": str(grids),
        "model": str(model_dir),
        "steps": int(getattr(step.fit, "steps", 0)),
        "checkpoint_every": step.checkpoint_every,
        "sample_kwargs": sample_kwargs,
        "progress": start_progress_counter(),
    }
    ray_trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=step.train_workers, use_gpu=num_gpus_per_worker > 0,
                                     resources_per_worker=_worker_resources(step.train_workers, num_gpus_per_worker)),
        run_config=RunConfig(storage_path=str(folder / "ray_train"), name=f"fit_{step.kind}",
                             failure_config=FailureConfig(max_failures=MAX_FIT_FAILURES)),
        torch_config=train_torch_config(),  # on the embedded Ray, rank 0's TCPStore on 127.0.0.1 only
    )
    without_placement_group_cleaner(ray_trainer)
    try:
        with quiet_train_fit():
            ray_trainer.fit()
    finally:  # where the workers ran, also when the fit failed (a rerun adds its own)
        _record_nodes(folder, ray.get(loop["progress"].nodes.remote("fit")))
    if not model_dir.is_dir():
        raise RuntimeError(f"fit {step.kind}: training finished without saving {model_dir}")
    write_checkpoint_licence(model_dir, licence)
    return model_dir
