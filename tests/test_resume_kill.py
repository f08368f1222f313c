"""Chaos: `kill -9` the driver mid-run, run the same command again, compare with a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from augment.shards import read_manifest, verify_shards
from tests.conftest import cli_command, cli_env, shard_rows

CONFIG = """
name: killtest
seed: 3
source: {kind: digits, image_size: 32}
quota: {per_class: {"0": 900, "1": 900, "2": 900, "3": 900, "4": 900, "5": 900, "6": 900, "7": 900, "8": 900, "9": 900}}
augment:
  transforms:
    - {name: Affine, p: 0.9, params: {rotate: [-10, 10]}}
    - {name: GaussNoise, p: 0.5}
output: {rows_per_shard: 150}
report: {enabled: false}  # the rows are under test; the report's classifiers cost minutes per run
"""


def run_cli(config: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command("run", str(config), "--out", str(out)), env=cli_env(),
                          capture_output=True, text=True, timeout=600, start_new_session=True)


def published(folder: Path) -> list[Path]:
    return sorted(folder.glob("train-*.parquet")) if folder.is_dir() else []


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    config = tmp_path / "kill.yaml"
    config.write_text(CONFIG)
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    # 1. Start a run and kill -9 the driver once some (not all) shards are published.
    driver = subprocess.Popen(cli_command("run", str(config), "--out", str(killed)), env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(published(killed / "shards")) < 3 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    partial = len(published(killed / "shards"))
    # Ray helpers the driver started share its session; end them as a user's shell would.
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert 0 < partial, "the driver was killed before any shard was published"
    assert not (killed / "shards" / "_manifest.json").exists(), "the driver finished before the kill"

    # 2. The same command again finishes the job, keeping what was published.
    again = run_cli(config, killed)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "kept from an earlier run" in again.stdout

    # 3. An uninterrupted run of the same config.
    reference = run_cli(config, clean)
    assert reference.returncode == 0, reference.stderr[-2000:]

    manifest = read_manifest(killed / "shards")
    assert manifest.total_rows == 9000 and set(manifest.class_counts.values()) == {900}
    assert verify_shards(killed / "shards") == [] and verify_shards(killed / "holdout") == []
    resumed = shard_rows(killed / "shards")
    assert len({i for i, _ in resumed}) == len(resumed) == 9000
    assert resumed == shard_rows(clean / "shards")
    assert shard_rows(killed / "holdout") == shard_rows(clean / "holdout")
    assert not [p for p in killed.rglob("*") if ".tmp" in p.name]
