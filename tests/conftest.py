"""Shared fixtures: one embedded Ray for the whole session (starting Ray costs seconds)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# FiftyOne tests use a database of their own (a private mongod under a temporary folder, bound
# to 127.0.0.1), never the user's: set before Ray starts, so its workers inherit it too.
_FIFTYONE_DIR = tempfile.mkdtemp(prefix="synthaug-fiftyone-db-")
os.environ["FIFTYONE_DATABASE_DIR"] = _FIFTYONE_DIR
os.environ.pop("FIFTYONE_DATABASE_URI", None)
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    from jobs.ray_compat import quiet_data_context, start_embedded_ray

    start_embedded_ray(2, logging_level="WARNING")  # loopback-only, like the CLI's
    quiet_data_context()
    yield
    ray.shutdown()


def cli_command(*args: str) -> list[str]:
    """`synthaug ...` through the current interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "jobs", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    return env


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
