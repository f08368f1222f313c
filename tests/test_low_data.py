"""A low-data run (`split.train_per_class`): nothing in the job sees more than its k images."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from augment.sources.base import SourceRecord
from jobs.config import parse_config
from jobs.plan import job_split, records_digest
from jobs.runner import run_job
from jobs.sources import build_source

pytestmark = pytest.mark.usefixtures("ray_session")

LOW_DATA = {"source": {"kind": "digits", "image_size": 8, "color": "gray"},
            "split": {"holdout": 0.2, "seed": 5, "train_per_class": 3},
            "quota": {"per_class": {str(c): 12 for c in range(10)}}, "output": {"rows_per_shard": 50},
            "report": {"enabled": False}}


def kept(config) -> tuple[list[SourceRecord], list[SourceRecord]]:
    return job_split(build_source(config.source, config.seed).records(), config.split, config.seed)


def test_generators_and_augmentation_see_only_the_k_images_of_their_seed(tmp_path: Path) -> None:
    fit = parse_config({**LOW_DATA, "name": "k3_cgan", "seed": 1,
                        "generate": {"kind": "cgan", "fit": {"steps": 2, "batch_size": 8, "g_channels": 8,
                                                             "d_channels": 8, "z_dim": 8}}})
    run_job(fit, tmp_path / "cgan")
    train, holdout = kept(fit)
    assert len(train) == 30
    job = json.loads((tmp_path / "cgan" / "job.json").read_text())
    assert job["stages"]["fit"]["cgan"]["trained_on"] == records_digest(train)  # the fit's input: the 30, no other
    real = pq.read_table(tmp_path / "cgan" / "shards", columns=["source", "id"]).to_pylist()
    assert {r["id"] for r in real if r["source"] == "real"} == {r.id for r in train}

    augmented = parse_config({**LOW_DATA, "name": "k3_classical", "seed": 2,
                              "augment": {"transforms": [{"name": "Affine", "p": 1.0, "params": {"rotate": [-9, 9]}}]}})
    run_job(augmented, tmp_path / "classical")
    other_train, other_holdout = kept(augmented)
    assert [r.id for r in other_holdout] == [r.id for r in holdout]  # split.seed: one holdout for every seed
    assert {r.id for r in other_train} != {r.id for r in train}
    rows = pq.read_table(tmp_path / "classical" / "shards", columns=["source", "parent_id"]).to_pylist()
    parents = {r["parent_id"] for r in rows if r["source"] == "classical"}
    assert parents and parents <= {r.id for r in other_train}
