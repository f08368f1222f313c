"""Crash at each commit point: the driver is killed (SIGKILL) by a failpoint, the same
command is run again, and the job folder ends byte for byte as an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from augment.failpoints import ENV
from tests.conftest import cli_command, cli_env

CONFIG = """
name: commit_points
seed: 5
source: {kind: digits, image_size: 16}
quota: {per_class: {"0": 200, "1": 200, "2": 200, "3": 200, "4": 200, "5": 200, "6": 200, "7": 200, "8": 200, "9": 200}}
augment:
  transforms:
    - {name: Affine, p: 0.9, params: {rotate: [-10, 10]}}
output: {rows_per_shard: 250}
report: {enabled: false}
execution: {num_workers: 2}
"""


def run(config: Path, out: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = cli_env()
    env.pop(ENV, None)
    if failpoint:
        env[ENV] = failpoint
    process = subprocess.Popen(cli_command("run", str(config), "--out", str(out)), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    stdout, stderr = process.communicate(timeout=600)
    try:  # the embedded Ray's helpers outlive a killed driver; end them as a user's shell would
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def folder_bytes(out: Path) -> dict[str, bytes]:
    """Every file of the shard folders, by path: what a reader of the job can see."""
    return {str(p.relative_to(out)): p.read_bytes()
            for split in ("shards", "holdout") for p in sorted((out / split).iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("commit_points")
    config = folder / "job.yaml"
    config.write_text(CONFIG)
    clean = run(config, folder / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    return config, folder_bytes(folder / "clean")


@pytest.mark.slow
@pytest.mark.parametrize("point, hit, manifests", [
    ("shard_written", 3, 0),      # a shard on disk under its temporary name, two published
    ("shards_published", 1, 0),   # every shard published, no manifest
    ("manifest_written", 1, 1),   # shards/ listed, holdout/ not
    ("manifest_written", 2, 2),   # both listed, job.json not yet complete
])
def test_a_driver_killed_at_a_commit_point_resumes_to_the_same_bytes(
        tmp_path: Path, reference: tuple[Path, dict[str, bytes]], point: str, hit: int, manifests: int) -> None:
    config, expected = reference
    out = tmp_path / "killed"
    killed = run(config, out, f"{point}:{hit}:{tmp_path / 'hits'}")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    assert json.loads((out / "job.json").read_text())["status"] == "running"
    listed = [split for split in ("shards", "holdout") if (out / split / "_manifest.json").exists()]
    assert len(listed) == manifests
    files = [p for split in ("shards", "holdout") for p in (out / split).iterdir()]
    temporaries = [p.name for p in files if ".tmp" in p.name]
    assert len(temporaries) == (point == "shard_written")
    if point == "shard_written":  # one writer: the third shard's bytes, after two published
        assert len([p for p in files if p.suffix == ".parquet"]) == 2

    again = run(config, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "job.json").read_text())["status"] == "complete"
    assert folder_bytes(out) == expected
    assert not (out / ".synthaug.lock").exists()
    inspected = subprocess.run(cli_command("inspect", str(out)), env=cli_env(), capture_output=True, text=True,
                               timeout=120)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
