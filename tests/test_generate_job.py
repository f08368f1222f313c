"""Class-conditional generation through the job: fit under Ray Train, resume, from_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from augment.errors import ConfigError
from augment.shards import read_manifest, verify_shards
from jobs.config import parse_config
from jobs.runner import run_job
from tests.conftest import shard_rows

pytestmark = pytest.mark.usefixtures("ray_session")


def cgan_config(**generate: object):
    return parse_config({
        "name": "tiny_cgan",
        "seed": 3,
        "source": {"kind": "digits", "image_size": 8, "color": "gray"},
        "split": {"holdout": 0.2},
        "quota": {"per_class": {str(c): 150 for c in range(10)}},
        "generate": {"kind": "cgan", "fit": {"steps": 6, "batch_size": 16, "g_channels": 8, "d_channels": 8,
                                             "z_dim": 8},
                     "checkpoint_every": 3, **generate},
        "output": {"rows_per_shard": 100},
        "report": {"enabled": False},
    })


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cgan") / "out"
    run_job(cgan_config(), out)
    return out


def test_fit_then_sample_meets_the_quota_with_recorded_checkpoint(fitted: Path) -> None:
    manifest = read_manifest(fitted / "shards")
    assert set(manifest.class_counts.values()) == {150} and verify_shards(fitted / "shards") == []
    assert set(manifest.source_counts) == {"real", "cgan"}
    rows = pq.read_table(fitted / "shards", columns=["source", "generator", "parent_id", "seed"]).to_pylist()
    made = [r for r in rows if r["source"] == "cgan"]
    assert made and all(r["parent_id"] is None and r["seed"] is not None for r in made)
    assert len({r["generator"]["checkpoint_sha256"] for r in made}) == 1
    folder = fitted / "checkpoints" / "cgan"
    assert (folder / "model" / "generator.safetensors").exists()
    assert sorted(p.name for p in (folder / "grids").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    job = json.loads((fitted / "job.json").read_text())
    assert job["stages"]["fit"]["cgan"]["status"] == "done"
    # The fitted model is under its training data's licence (the digits'), recorded in its folder.
    assert json.loads((folder / "model" / "licence.json").read_text())["licence"] == "CC-BY-4.0"
    licences = pq.read_table(fitted / "shards", columns=["source", "licence", "parent_licence"]).to_pylist()
    assert {(r["source"], r["licence"], r["parent_licence"]) for r in licences} == {
        ("real", "CC-BY-4.0", None), ("cgan", "CC-BY-4.0", None)}
    assert job["stages"]["fit"]["cgan"]["licence"] == "CC-BY-4.0"


def diffusion_config(**generate: object):
    return parse_config({
        "name": "tiny_diffusion",
        "source": {"kind": "digits", "image_size": 8, "color": "gray"},
        "split": {"holdout": 0.2},
        "quota": {"per_class": {str(c): 146 for c in range(10)}},
        "generate": {"kind": "diffusion",
                     "fit": {"steps": 2, "batch_size": 8, "block_out_channels": [8, 16], "warmup_steps": 1},
                     "sample": {"scheduler": "dpm++", "steps": 2, "guidance": 1.5, "guidance_per_class": {"3": 4.0}},
                     "checkpoint_every": 2, **generate},
        "report": {"enabled": False},
    })


@pytest.fixture(scope="module")
def fitted_diffusion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diffusion") / "out"
    run_job(diffusion_config(), out)
    return out


# The diffusion case takes ~90 s on 2 cores; it runs with the slow set (same resume code).
@pytest.mark.parametrize("kind", ["cgan", pytest.param("diffusion", marks=pytest.mark.slow)])
def test_an_interrupted_fit_resumes_from_its_last_state(kind: str, request: pytest.FixtureRequest,
                                                        tmp_path: Path) -> None:
    """A job whose fit stopped halfway (state saved, no model) finishes to the same bytes."""
    from augment.generators import trainer
    from augment.generators.family import DataShape
    from jobs.fit import training_data
    from jobs.runner import list_source

    config = cgan_config() if kind == "cgan" else diffusion_config()
    step = config.generate[0]
    fitted = request.getfixturevalue("fitted" if kind == "cgan" else "fitted_diffusion")
    half = step.fit.steps // 2
    copy = tmp_path / "resume"
    shutil.copytree(fitted, copy)
    folder = copy / "checkpoints" / kind
    shutil.rmtree(folder / "model")
    shutil.rmtree(folder / "states")
    for shard in (copy / "shards").glob(f"{kind}-*.parquet"):
        shard.unlink()
    # 1. Re-create what the killed run had left: the training state halfway, trained in a Ray
    #    worker with the fit's CPU share (float sums depend on torch's thread count).
    import ray

    from jobs.fit import _worker_resources

    @ray.remote(num_cpus=_worker_resources(1, 0.0)["CPU"])
    def first_half(states: str) -> None:
        listed = list_source(config)
        data = training_data(listed.source, listed.train, step.family, "test")
        family = step.family(step.fit, DataShape(8, 1, tuple(listed.class_names)), config.seed)
        trainer.save_checkpoint(trainer.fit(family, data, until=half), Path(states))

    ray.get(first_half.remote(str(folder / "states")))
    # 2. The rerun trains the second half only and samples exactly what the uninterrupted run did.
    run_job(config, copy)
    assert shard_rows(copy / "shards") == shard_rows(fitted / "shards")
    steps = step.fit.steps
    assert (folder / "states" / "LATEST").read_text().strip() == f"step-{steps:08d}"


def test_from_pretrained_samples_without_fitting(fitted: Path, tmp_path: Path) -> None:
    out = tmp_path / "pretrained"
    run_job(cgan_config(from_pretrained=str(fitted / "checkpoints" / "cgan" / "model")), out)
    assert not (out / "checkpoints").exists()
    made = [r for r in shard_rows(out / "shards") if r[0].startswith("cgan/")]
    assert made == [r for r in shard_rows(fitted / "shards") if r[0].startswith("cgan/")]


def test_from_pretrained_refuses_a_pickle(tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({"weight": torch.zeros(2)}, folder / "generator.pt")
    with pytest.raises(ConfigError, match="pickle"):
        run_job(cgan_config(from_pretrained=str(folder)), tmp_path / "out")


def test_diffusion_job_records_guidance_scheduler_and_steps_per_row(fitted_diffusion: Path) -> None:
    rows = pq.read_table(fitted_diffusion / "shards", columns=["source", "label", "generator"]).to_pylist()
    made = [r for r in rows if r["source"] == "diffusion"]
    assert made
    for row in made:
        params = json.loads(row["generator"]["params_json"])
        assert params["scheduler"] == "dpm++" and params["steps"] == 2
        assert params["guidance"] == (4.0 if row["label"] == 3 else 1.5)
    assert (fitted_diffusion / "checkpoints" / "diffusion" / "model" / "unet").is_dir()
    assert set(read_manifest(fitted_diffusion / "shards").class_counts.values()) == {146}


class _RecordingProgress:
    """Stands in for the progress actor: records what a worker reports."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, int]] = []
        self.add = self
        self.ran = SimpleNamespace(remote=lambda *_: None)  # where each shard was made: not looked at here

    def remote(self, key: str, n: int, *_: object) -> None:  # (shard, attempt) as the counter takes them
        self.reports.append((key, n))


def test_shard_worker_reports_progress_per_sampler_batch_and_cutting_keeps_bytes(fitted: Path) -> None:
    import numpy as np

    from augment.sources.base import SourceRecord
    from jobs.config import QuotaConfig
    from jobs.plan import make_plan
    from jobs.quota import PlanStep
    from jobs.workers import ShardWorker

    names = [str(c) for c in range(10)]
    records = [SourceRecord(f"digits/{i:04d}", i % 10, str(i)) for i in range(10)]
    plan = make_plan(class_names=names, train=records, holdout=[], quota=QuotaConfig(per_class={n: 4 for n in names}),
                     seed=3, rows_per_shard=100, include_real=True, steps=(PlanStep("cgan", "class"),), augment=None)
    spec = next(s for s in plan.train if s.generated)
    source = {"kind": "digits", "image_size": 8, "color": "gray"}

    def run(batch_size: int) -> tuple[object, list[tuple[str, int]]]:
        progress = _RecordingProgress()
        generators = {"cgan": {"family": "augment.generators.cgan_family:CGANFamily", "device": "cpu",
                               "dir": str(fitted / "checkpoints" / "cgan" / "model"),
                               "sample": {"batch_size": batch_size}}}
        worker = ShardWorker(source, [], names, 1, job_seed=3, generators=generators, progress=progress)
        return worker({"spec": np.array([spec.to_json()], dtype=object)}), progress.reports

    table_small, reports_small = run(batch_size=7)
    table_big, reports_big = run(batch_size=256)
    assert table_small.equals(table_big)
    generated = len(spec.generated)
    assert sum(n for _, n in reports_small) == table_small.num_rows == sum(n for _, n in reports_big)
    assert [n for _, n in reports_small] == [min(7, generated - i) for i in range(0, generated, 7)]
    assert len(reports_big) == 1  # one sampler batch


def test_hyperparameters_that_do_not_suit_the_images_are_a_config_error(tmp_path: Path) -> None:
    """Three UNet levels halve 10 px twice: refused before Ray Train starts, naming the step."""
    config = parse_config({
        "source": {"kind": "digits", "image_size": 10, "color": "gray"},
        "quota": {"multiplier": 2}, "report": {"enabled": False},
        "generate": [{"kind": "diffusion", "fit": {"steps": 1, "block_out_channels": [8, 8, 8]}}],
    })
    with pytest.raises(ConfigError, match=r"generate\[0\] \(diffusion\)\.fit: diffusion: image_size 10 is not "
                                          r"divisible by 2\*\*2"):
        run_job(config, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints" / "diffusion" / "states").exists()
