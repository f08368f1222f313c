"""Fitting with DDP over two Ray Train CPU workers (gloo): the same code path as N GPUs."""

from __future__ import annotations

from pathlib import Path

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
