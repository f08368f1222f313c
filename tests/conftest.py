"""Shared fixtures: one embedded Ray for the whole session (starting Ray costs seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from augment.fiftyone_db import PrivateMongo

REPO = Path(__file__).resolve().parent.parent

# FiftyOne tests use a MongoDB of their own (`fiftyone_db`: a private mongod on 127.0.0.1),
# never the user's. Its address is set now, before Ray starts, so Ray's workers inherit it.
_FIFTYONE_MONGO = PrivateMongo()
os.environ.update(_FIFTYONE_MONGO.environ())


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    from jobs.ray_compat import quiet_data_context, start_embedded_ray

    start_embedded_ray(2, logging_level="WARNING")  # loopback-only, like the CLI's
    quiet_data_context()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def fiftyone_db() -> Iterator[str]:
    """The session's private mongod (started on first use); yields its URI."""
    _FIFTYONE_MONGO.start()
    yield _FIFTYONE_MONGO.uri
    _FIFTYONE_MONGO.stop()


def cli_command(*args: str) -> list[str]:
    """`synthaug ...` through the current interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "jobs", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    return env


# A 2,000-row classical job (10 shards of 250 and a 359-row holdout), no report: the crash tests' job.
SMALL_JOB = """
name: {name}
seed: {seed}
source: {{kind: digits, image_size: 16}}
quota: {{per_class: {{"0": 200, "1": 200, "2": 200, "3": 200, "4": 200, "5": 200, "6": 200, "7": 200, "8": 200, "9": 200}}}}
augment:
  transforms:
    - {{name: Affine, p: 0.9, params: {{rotate: [-10, 10]}}}}
output: {{rows_per_shard: 250}}
report: {{enabled: false}}
execution: {{num_workers: 2}}
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`synthaug ARGS` in its own session (with `env` over `cli_env()`; no failpoint unless `env`
    names one); afterwards the session is killed, as a user's shell would end the embedded
    Ray's helpers that outlive a killed driver."""
    from augment.failpoints import ENV as FAILPOINT

    full = cli_env()
    full.pop(FAILPOINT, None)
    full.update(env or {})
    process = subprocess.Popen(cli_command(*args), env=full, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    stdout, stderr = process.communicate(timeout=600)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def shard_rows(folder: Path) -> list[tuple[str, bytes]]:
    """(id, image PNG bytes) of every row in a shard folder, sorted by id: a job's content."""
    import pyarrow.parquet as pq

    table = pq.read_table(folder, columns=["id", "image"])
    images = (cell["bytes"] for cell in table.column("image").to_pylist())
    return sorted(zip(table.column("id").to_pylist(), images))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Two shared cores: two OpenMP threads next to a busy neighbour spin-wait and run several
    times slower; one thread is fast and keeps determinism checks like-for-like."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
