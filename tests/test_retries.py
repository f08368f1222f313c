"""A shard whose work raises is retried (`execution.max_retries`), then recorded as failed in
`job.json` without losing the other shards; a rerun makes only the failed ones.

`toy_flaky` tints parents like `toy_tint` but raises for one parent record (`fail_parent`)
until it has raised `failures` times (counted in a file under `marker_dir`, so the count
survives across Ray worker processes and across runs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from augment.generators.base import SampleRequest
from augment.generators.family import Hyperparameters
from augment.sample import Sample
from augment.shards import read_manifest, verify_shards
from jobs.config import parse_config
from jobs.registry import register, unregister
from jobs.runner import JobFailed, list_source, run_job
from tests.test_families import ToySampler, ToyTint


class FlakySample(Hyperparameters):
    marker_dir: str
    fail_parent: str
    failures: int = Field(1, ge=0, le=100)
    batch_size: int = Field(16, ge=1, le=4096)


class FlakySampler(ToySampler):
    def sample(self, request: SampleRequest, *, marker_dir: str, fail_parent: str,  # type: ignore[override]
               failures: int, batch_size: int = 16) -> list[Sample]:
        if fail_parent in (request.parent_ids or []):
            marker = Path(marker_dir) / hashlib.sha256(fail_parent.encode()).hexdigest()[:16]
            raised = int(marker.read_text()) if marker.exists() else 0
            if raised < failures:
                marker.write_text(str(raised + 1))
                raise RuntimeError(f"flaky: record {fail_parent} fails ({raised + 1} of {failures})")
        return super().sample(request, batch_size=batch_size)

    @classmethod
    def from_pretrained(cls, directory: Path) -> FlakySampler:
        plain = ToySampler.from_pretrained(directory)
        return cls(plain.kind, plain.table, plain.class_names, plain.image_size, plain.checkpoint_sha256)


class ToyFlaky(ToyTint):
    name = "toy_flaky"
    Sample = FlakySample

    def sampler(self, state: Any) -> FlakySampler:
        plain = super().sampler(state)
        return FlakySampler(plain.kind, plain.table, plain.class_names, plain.image_size)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> FlakySampler:
        return FlakySampler.from_pretrained(directory)


@pytest.fixture(scope="module")
def flaky() -> Any:
    register(ToyFlaky)
    yield
    unregister(ToyFlaky.name)


pytestmark = pytest.mark.usefixtures("ray_session", "flaky")


def config(markers: Path, failures: int, max_retries: int) -> Any:
    raw = {
        "seed": 3, "source": {"kind": "simulator", "family": "digits", "frames": 60, "image_size": 16},
        "split": {"holdout": 0.1}, "report": {"enabled": False}, "output": {"rows_per_shard": 12},
        "execution": {"max_retries": max_retries},
        "generate": [{"kind": "toy_flaky", "sample": {"marker_dir": str(markers), "fail_parent": "", "failures": 0}}],
    }
    target = list_source(parse_config(raw)).train[5].id  # a training record: it has a toy_flaky row
    raw["generate"][0]["sample"].update(fail_parent=target, failures=failures)
    return parse_config(raw)


def test_a_shard_that_fails_once_is_retried_and_the_job_completes(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    result = run_job(config(markers, failures=1, max_retries=1), out)
    assert [int(m.read_text()) for m in markers.iterdir()] == [1]  # it raised once, then went through
    assert verify_shards(out / "shards") == []
    assert read_manifest(out / "shards").total_rows == result.rows > 0
    assert read_manifest(out / "shards").source_counts.get("toy_flaky", 0) > 0
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "complete" and "failed_shards" not in job


def test_a_shard_that_keeps_failing_is_recorded_the_rest_published_and_a_rerun_finishes(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    job_config = config(markers, failures=3, max_retries=1)  # 2 attempts per run: fails, then passes on rerun
    with pytest.raises(JobFailed, match=r"1 of \d+ shards failed after 2 attempts each .*flaky: record"):
        run_job(job_config, out)
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "failed" and "max_retries = 1" in job["error"]
    failed = {f["shard"] for f in job["failed_shards"]}
    published = {p.name for p in (out / "shards").glob("*.parquet")}
    assert len(failed) == 1 and published and not failed & published  # the others were written
    assert all(f["attempts"] == 2 and f["cause"].startswith("RuntimeError: flaky") for f in job["failed_shards"])
    assert not (out / "shards" / "_manifest.json").exists()  # a reader sees nothing of a failed job
    kept = {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}
    holdout = list((out / "holdout").glob("*.parquet"))

    result = run_job(job_config, out)
    assert result.resumed_shards == len(published) + len(holdout)  # only the failed shard is made again
    assert [int(m.read_text()) for m in markers.iterdir()] == [3]
    assert verify_shards(out / "shards") == [] and read_manifest(out / "shards").total_rows == result.rows
    assert all((out / "shards" / name).read_bytes() == data for name, data in kept.items())
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "complete" and "failed_shards" not in job
