"""A chained job from the CLI (configs/chain_sim_digits.yaml, shrunk): simulator frames → a
fitted cGAN → classical augmentation of its samples; killed with SIGKILL mid-fit, resumed,
and compared with an uninterrupted run and a rerun, byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from augment.shards import read_manifest, verify_shards
from tests.conftest import REPO, cli_command, cli_env, shard_rows


def tiny_chain(tmp_path: Path) -> Path:
    """The shipped chain config at test size: same steps, fewer frames and fit steps."""
    config = yaml.safe_load((REPO / "configs" / "chain_sim_digits.yaml").read_text())
    config["source"]["frames"] = 300
    config["generate"][0]["fit"].update(steps=40, g_channels=8, d_channels=8, z_dim=16)
    config["generate"][0]["checkpoint_every"] = 10
    config["output"]["rows_per_shard"] = 100
    config["report"] = {"enabled": False}
    config["execution"] = {"num_workers": 2}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(config: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command("run", str(config), "--out", str(out)), env=cli_env(),
                          capture_output=True, text=True, timeout=900, start_new_session=True)


def saved_states(out: Path) -> list[Path]:
    states = out / "checkpoints" / "cgan" / "states"
    return sorted(states.glob("step-*/")) if (states / "LATEST").is_file() else []


@pytest.mark.slow
def test_a_chain_resumes_after_kill_9_and_reruns_byte_for_byte(tmp_path: Path) -> None:
    config = tiny_chain(tmp_path)
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    # 1. kill -9 the driver once the fit has saved a state (and before it finished).
    driver = subprocess.Popen(cli_command("run", str(config), "--out", str(killed)), env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not saved_states(killed) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    try:
        os.killpg(driver.pid, signal.SIGKILL)  # the Ray processes of its session, as a shell would
    except ProcessLookupError:
        pass
    assert saved_states(killed), "the fit saved no state before the deadline"
    assert not (killed / "checkpoints" / "cgan" / "model").exists(), "the fit finished before the kill"

    # 2. The same command resumes the fit from its state and finishes the chain.
    again = run_cli(config, killed)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr

    # 3. An uninterrupted run and a rerun into a fresh folder give the same bytes.
    for out in (clean, tmp_path / "rerun"):
        done = run_cli(config, out)
        assert done.returncode == 0, done.stderr[-3000:]
    assert verify_shards(killed / "shards") == []
    rows = shard_rows(killed / "shards")
    assert rows == shard_rows(clean / "shards") == shard_rows(tmp_path / "rerun" / "shards")
    for name in ("shards", "holdout"):  # every shard file byte for byte (its sha256)
        assert [(e.file, e.sha256) for e in read_manifest(killed / name).shards] == \
            [(e.file, e.sha256) for e in read_manifest(clean / name).shards]

    # 4. The chain's rows: simulator frames, cGAN samples, classical children of those samples.
    table = pq.read_table(killed / "shards", columns=["id", "source", "parent_id", "label", "generator"])
    by_id = {r["id"]: r for r in table.to_pylist()}
    sources = {r["source"] for r in by_id.values()}
    assert sources == {"simulator", "cgan", "classical"}
    children = [r for r in by_id.values() if r["source"] == "classical"]
    assert children and all(by_id[r["parent_id"]]["source"] == "cgan" for r in children)
    assert all(by_id[r["parent_id"]]["label"] == r["label"] for r in children)
    made = [r for r in by_id.values() if r["source"] == "cgan"]
    assert len({r["generator"]["checkpoint_sha256"] for r in made}) == 1
    manifest = read_manifest(killed / "shards")
    real = manifest.source_counts["simulator"]
    assert manifest.source_counts["cgan"] + manifest.source_counts["classical"] == real  # multiplier 2


def tiny_sim2real(tmp_path: Path) -> Path:
    """configs/sim2real_digits.yaml at test size: same source, target, family and gate."""
    config = yaml.safe_load((REPO / "configs" / "sim2real_digits.yaml").read_text())
    config["source"]["frames"] = 200
    config["generate"][0]["fit"].update(steps=30, ngf=4, ndf=8, n_blocks=1)
    config["generate"][0]["checkpoint_every"] = 10
    config["output"]["rows_per_shard"] = 100
    config["report"] = {"enabled": False, "extractor_steps": 40, "max_per_source": 200}
    config["execution"] = {"num_workers": 2}
    path = tmp_path / "sim2real.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_sim2real_resumes_after_kill_9_and_reruns_byte_for_byte(tmp_path: Path) -> None:
    """The shipped digits sim-to-real config (shrunk): CycleGAN fitted on simulator crops towards
    real digits, killed mid-fit, resumed; the gate's drops and the rows equal a clean run's."""
    config = tiny_sim2real(tmp_path)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    driver = subprocess.Popen(cli_command("run", str(config), "--out", str(killed)), env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    states = killed / "checkpoints" / "cyclegan" / "states"
    deadline = time.monotonic() + 600
    while not (states / "LATEST").is_file() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before it could be killed mid-fit"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert (states / "LATEST").is_file(), "the fit saved no state before the deadline"
    assert not (killed / "checkpoints" / "cyclegan" / "model").exists(), "the fit finished before the kill"
    again = run_cli(config, killed)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    done = run_cli(config, clean)
    assert done.returncode == 0, done.stderr[-3000:]
    assert verify_shards(killed / "shards") == []
    assert shard_rows(killed / "shards") == shard_rows(clean / "shards")
    assert [(e.file, e.sha256) for e in read_manifest(killed / "shards").shards] == \
        [(e.file, e.sha256) for e in read_manifest(clean / "shards").shards]
    table = pq.read_table(killed / "shards", columns=["source", "parent_id", "label", "scores"]).to_pylist()
    made = [r for r in table if r["source"] == "cyclegan"]
    assert made and all(r["scores"]["label_preservation"] >= 0.5 for r in made)  # the gate's threshold
    frames = sum(r["source"] == "simulator" for r in table)
    assert len(made) <= frames
