"""`--out s3://bucket/prefix`, against moto's S3 server on 127.0.0.1 (started and stopped here).

A job writes its shards to the store under per-attempt names, the manifests last; the
prefix is then a whole job folder (`inspect`, `report`, `ShardDataset` read it); a job cut
short leaves nothing a reader sees and the same command resumes it, also from a machine
without the first run's staging folder; a second job on the prefix is refused."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from augment.failpoints import ENV as FAILPOINT
from augment.images import decode_png
from augment.shard_dataset import ShardDataset, ShardIterableDataset
from augment.shards import read_manifest, verify_shards
from jobs.inspect import inspect_job
from tests.conftest import SMALL_JOB, run_cli

BUCKET = "synthaug-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on a free loopback port; yields the environment that points at it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "SYNTHAUG_STAGING": str(tmp_path_factory.mktemp("staging"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # for this process's readers (inspect_job, ShardDataset)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def cli(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, env=extra)


def objects(env: dict[str, str], prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {key[len(prefix):]: client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def rows_of(url: str) -> list[tuple[str, bytes]]:
    """(id, CHW image bytes) of every row the manifest lists, read through ShardDataset."""
    return sorted((row["id"], row["image"].numpy().tobytes()) for row in ShardIterableDataset(url))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("s3_job") / "job.yaml"
    path.write_text(SMALL_JOB.format(name="s3job", seed=7))
    return path


@pytest.fixture(scope="module")
def local_reference(config: Path) -> tuple[Path, Path]:
    done = cli("run", str(config), "--out", str(config.parent / "local"))
    assert done.returncode == 0, done.stderr[-3000:]
    return config, config.parent / "local"


def local_rows(folder: Path) -> list[tuple[str, bytes]]:
    table = pq.read_table(folder, columns=["id", "image"]).to_pylist()
    return sorted((r["id"], decode_png(r["image"]["bytes"]).transpose(2, 0, 1).tobytes()) for r in table)


@pytest.mark.slow
def test_a_job_on_s3_publishes_through_its_manifest_and_reads_back(
        s3: dict[str, str], local_reference: tuple[Path, Path]) -> None:
    config, local = local_reference
    url = f"s3://{BUCKET}/jobs/one"
    done = cli("run", str(config), "--out", url, extra=s3)
    assert done.returncode == 0, done.stderr[-3000:]
    assert url in done.stdout

    stored = objects(s3, "jobs/one/")
    shards = sorted(name for name in stored if name.startswith("shards/") and name.endswith(".parquet"))
    manifest = read_manifest(f"{url}/shards")
    # One object per planned shard, each under an attempt name, exactly what the manifest lists.
    assert sorted(f"shards/{e.file}" for e in manifest.shards) == shards
    assert all(len(name.split(".")) == 3 for name in shards)  # train-00000.<attempt>.parquet
    assert manifest.total_rows == 2000
    assert json.loads(stored["job.json"])["status"] == "complete"
    assert ".synthaug.lock" not in stored
    summary, problems = inspect_job(url)
    assert problems == [] and "checksums: all ok" in summary

    # The same rows as the same config written to a local folder.
    assert rows_of(f"{url}/shards") == local_rows(local / "shards")
    assert rows_of(f"{url}/holdout") == local_rows(local / "holdout")

    # The CLI's inspect reads the prefix too; the `parquet` source takes the prefix's shards.
    assert cli("inspect", url, extra=s3).returncode == 0
    again = config.with_name("from_s3.yaml")
    again.write_text(f"name: from_s3\nsource: {{kind: parquet, path: '{url}/shards'}}\nsplit: {{holdout: 0.0}}\n"
                     "report: {enabled: false}\nexecution: {num_workers: 1}\n")
    copied = cli("run", str(again), "--out", str(config.parent / "from_s3"), extra=s3)
    assert copied.returncode == 0, copied.stderr[-3000:]
    assert local_rows(config.parent / "from_s3" / "shards") == local_rows(local / "shards")

    # A shard changed behind the manifest: inspect names it, the parquet source refuses it.
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1")
    victim = f"jobs/one/{shards[0]}"
    client.put_object(Bucket=BUCKET, Key=victim, Body=stored[shards[0]][:-100])
    broken = cli("inspect", url, extra=s3)
    assert broken.returncode == 1 and shards[0].split("/")[1] in broken.stderr
    refused = cli("run", str(again), "--out", str(config.parent / "from_s3_broken"), extra=s3)
    assert refused.returncode == 2 and "does not match" in refused.stderr and shards[0].split("/")[1] in refused.stderr


@pytest.mark.slow
def test_a_job_cut_short_on_s3_shows_nothing_and_resumes_from_another_machine(
        s3: dict[str, str], local_reference: tuple[Path, Path], tmp_path: Path) -> None:
    config, local = local_reference
    url = f"s3://{BUCKET}/jobs/two"
    killed = cli("run", str(config), "--out", url,
                 extra={**s3, FAILPOINT: f"shards_published:1:{tmp_path / 'hits'}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    stored = objects(s3, "jobs/two/")
    made = {name: data for name, data in stored.items() if name.endswith(".parquet")}
    assert made and not any(name.endswith("_manifest.json") for name in stored)
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        ShardDataset(f"{url}/shards")
    assert cli("inspect", url, extra=s3).returncode == 1

    # Another machine: no staging folder of the first run; its lock is stale (same host, pid gone).
    again = cli("run", str(config), "--out", url, extra={**s3, "SYNTHAUG_STAGING": str(tmp_path / "elsewhere")})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "kept from an earlier run" in again.stdout
    after = objects(s3, "jobs/two/")
    assert {name: after[name] for name in made} == made  # kept, not rewritten
    assert rows_of(f"{url}/shards") == local_rows(local / "shards")
    assert verify_shards(f"{url}/shards") == [] and verify_shards(f"{url}/holdout") == []


def test_a_second_job_on_a_locked_prefix_is_refused(s3: dict[str, str], config: Path) -> None:
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1")
    holder = {"pid": 1, "host": "another-host", "start": None, "since": "2026-12-03T10:00:00+0000"}
    client.put_object(Bucket=BUCKET, Key="jobs/three/.synthaug.lock", Body=json.dumps(holder).encode())
    refused = cli("run", str(config), "--out", f"s3://{BUCKET}/jobs/three", extra=s3)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "another synthaug job is running" in refused.stderr and "another-host" in refused.stderr
    assert set(objects(s3, "jobs/three/")) == {".synthaug.lock"}
