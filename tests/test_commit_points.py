"""Crash at each commit point: the driver is killed (SIGKILL) by a failpoint, the same
command is run again, and the job folder ends byte for byte as an uninterrupted run's."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from augment.failpoints import ENV
from tests.conftest import SMALL_JOB, cli_command, cli_env, run_cli

def run(config: Path, out: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    return run_cli("run", str(config), "--out", str(out), env={ENV: failpoint} if failpoint else None)


def folder_bytes(out: Path) -> dict[str, bytes]:
    """Every file of the shard folders, by path: what a reader of the job can see."""
    return {str(p.relative_to(out)): p.read_bytes()
            for split in ("shards", "holdout") for p in sorted((out / split).iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("commit_points")
    config = folder / "job.yaml"
    config.write_text(SMALL_JOB.format(name="commit_points", seed=5))
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
