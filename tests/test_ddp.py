"""Fitting with DDP over two Ray Train CPU workers (gloo): the same code path as N GPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from augment.shards import read_manifest
from jobs.config import parse_config
from jobs.runner import run_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


@pytest.mark.parametrize("kind,fit", [
    ("cgan", {"steps": 4, "batch_size": 16, "g_channels": 8, "d_channels": 8, "z_dim": 8,
              "diffaugment": ["translation", "cutout"]}),
    ("diffusion", {"steps": 4, "batch_size": 8, "block_out_channels": [8, 16], "warmup_steps": 1}),
])
def test_two_train_workers_fit_with_ddp_and_the_job_completes(kind: str, fit: dict, tmp_path: Path) -> None:
    config = parse_config({
        "name": f"ddp_{kind}",
        "source": {"kind": "digits", "image_size": 8, "color": "gray"},
        "split": {"holdout": 0.2},
        "quota": {"per_class": {str(c): 150 for c in range(10)}},
        "generate": {"kind": kind, "fit": fit, "train_workers": 2, "checkpoint_every": 2,
                     **({"sample": {"steps": 2}} if kind == "diffusion" else {})},
        "report": {"enabled": False},
        "output": {"rows_per_shard": 200},
        "execution": {"num_cpus": 2},
    })
    out = tmp_path / "out"
    run_job(config, out)
    folder = out / "checkpoints" / kind
    assert (folder / "model").is_dir()
    assert sorted(p.name for p in (folder / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert set(read_manifest(out / "shards").class_counts.values()) == {150}


@pytest.mark.parametrize("kind,fit", [
    ("spade", {"steps": 4, "batch_size": 2, "ngf": 8, "ndf": 8, "spade_hidden": 8, "noise_dim": 4}),
])
def test_a_label_map_family_fits_with_ddp_and_paints_every_map(kind: str, fit: dict, tmp_path: Path) -> None:
    """Street frames' (image, mask) pairs over two gloo workers; every training frame's map painted."""
    import pyarrow.parquet as pq

    config = parse_config({
        "name": f"ddp_{kind}", "seed": 2,
        "source": {"kind": "simulator", "family": "street", "frames": 12, "width": 48, "height": 32},
        "split": {"holdout": 0.25},
        "generate": {"kind": kind, "fit": fit, "train_workers": 2, "checkpoint_every": 2},
        "report": {"enabled": False},
        "output": {"rows_per_shard": 64},
        "execution": {"num_cpus": 2},
    })
    out = tmp_path / "out"
    run_job(config, out)
    folder = out / "checkpoints" / kind
    assert (folder / "model").is_dir()
    assert sorted(p.name for p in (folder / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    rows = pq.read_table(out / "shards", columns=["id", "source", "parent_id", "mask"]).to_pylist()
    frames = {r["id"]: r for r in rows if r["source"] == "simulator"}
    painted = [r for r in rows if r["source"] == kind]
    assert len(painted) == len(frames) == 9
    assert all(r["mask"]["bytes"] == frames[r["parent_id"]]["mask"]["bytes"] for r in painted)


@pytest.mark.parametrize("kind,fit,sample_kwargs", [
    ("cgan", {"steps": 4, "batch_size": 8, "g_channels": 4, "d_channels": 4, "z_dim": 8}, {"batch_size": 64}),
    ("diffusion", {"steps": 4, "batch_size": 8, "block_out_channels": [8, 16], "warmup_steps": 1,
                   "attention": False}, {"guidance": 1.0, "steps": 2, "scheduler": "ddim"}),
])
def test_train_loop_runs_the_shared_trainer_under_ddp(kind: str, fit: dict, sample_kwargs: dict,
                                                      tmp_path: Path) -> None:
    """`jobs.fit.train_loop_per_worker` alone (no job around it): two gloo workers write one
    set of states and grids, publish the model, and rank 1's batches count (the weights
    differ from a one-worker fit of the same seed)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from augment.generators import trainer
    from augment.generators.family import DataShape, TrainingData
    from jobs.fit import train_loop_per_worker
    from jobs.ray_compat import train_torch_config
    from jobs.registry import family_ref, get_family

    rng = np.random.default_rng(0)
    labels = np.arange(48, dtype=np.int64) % 3
    images = (rng.integers(0, 60, (48, 8, 8, 1)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    data, shape = TrainingData(images, labels), DataShape(8, 1, ("a", "b", "c"))
    family_class = get_family(kind)
    loop = {"family": family_ref(family_class), "fit": fit, "seed": 5, "data": ray.put(data),
            "shape": {"image_size": 8, "channels": 1, "class_names": list(shape.class_names)},
            "states": str(tmp_path / "states"), "grids": str(tmp_path / "grids"), "model": str(tmp_path / "model"),
            "checkpoint_every": 2, "sample_kwargs": sample_kwargs}
    TorchTrainer(train_loop_per_worker, train_loop_config=loop,
                 scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray_train"), name=f"fit_{kind}"),
                 torch_config=train_torch_config()).fit()
    assert (tmp_path / "states" / "LATEST").read_text().strip() == "step-00000004"
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    family = family_class(family_class.Fit.model_validate(fit), shape, 5)
    alone = trainer.fit(family, data)
    ddp = trainer.load_state(family, tmp_path / "states" / "step-00000004")
    name = family.ema_modules[0]
    assert ddp.step == 4
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in
               zip(alone.ema[name].state_dict().values(), ddp.ema[name].state_dict().values(), strict=True))
    sampler = family_class.from_pretrained(tmp_path / "model")
    assert sampler.class_names == shape.class_names
