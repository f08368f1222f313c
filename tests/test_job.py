"""The job end to end on the built-in digits, in process (one shared Ray)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from augment.errors import ConfigError
from augment.shards import read_manifest, verify_shards
from jobs.config import parse_config
from jobs.inspect import inspect_job
from jobs.lock import LOCK_NAME
from jobs.runner import run_job
from tests.conftest import shard_rows

pytestmark = pytest.mark.usefixtures("ray_session")


def small_config(**overrides: object):
    raw = {
        "name": "tiny",
        "seed": 7,
        "source": {"kind": "digits", "image_size": 16},
        "split": {"holdout": 0.2},
        "quota": {"per_class": {str(c): 200 for c in range(10)}},
        "augment": {"transforms": [
            {"name": "Affine", "p": 0.9, "params": {"rotate": [-10, 10]}},
            {"name": "RandomBrightnessContrast", "p": 0.5},
        ]},
        "output": {"rows_per_shard": 300},
        "execution": {"num_workers": 2},
        "report": {"enabled": False},  # tests/test_report_job.py covers the report
    }
    raw.update(overrides)
    return parse_config(raw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("job") / "out"
    return out, run_job(small_config(), out)


def test_counts_meet_the_quota_and_checksums_match(finished) -> None:
    out, result = finished
    manifest = read_manifest(out / "shards")
    assert manifest.total_rows == 2000 == result.rows
    assert all(n == 200 for n in manifest.class_counts.values()) and len(manifest.class_counts) == 10
    assert verify_shards(out / "shards") == [] and verify_shards(out / "holdout") == []
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "complete" and job["config_hash"] == small_config().content_hash()
    assert not (out / LOCK_NAME).exists()
    assert not [p for p in (out / "shards").iterdir() if ".tmp" in p.name]


def test_rows_are_annotated_and_ids_unique(finished) -> None:
    out, _ = finished
    table = pq.read_table(out / "shards")
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    rows = table.select(["source", "parent_id", "seed", "label", "label_name"]).to_pylist()
    synthetic = [r for r in rows if r["source"] == "classical"]
    real_ids = {i for i, r in zip(ids, rows) if r["source"] == "real"}
    assert synthetic and all(r["parent_id"] in real_ids and r["seed"] is not None for r in synthetic)
    assert all(r["label_name"] == str(r["label"]) for r in rows)
    holdout = set(pq.read_table(out / "holdout", columns=["id"]).column("id").to_pylist())
    assert len(holdout) == 359 and not holdout & set(ids)


def test_the_generate_bar_counts_every_row_it_makes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_job(small_config(quota={"per_class": {str(c): 160 for c in range(10)}}), tmp_path / "out")
    made = result.rows + result.holdout_rows
    err = capsys.readouterr().err
    assert "generate: 100%" in err and f"{made}/{made}" in err, err[-2000:]


def test_inspect_reports_counts_and_catches_a_corrupt_shard(finished, tmp_path: Path) -> None:
    out, _ = finished
    report, problems = inspect_job(out)
    assert problems == [] and "classical" in report and "200" in report
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    victim = sorted((copy / "shards").glob("*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    _, problems = inspect_job(copy)
    assert any("sha256" in p for p in problems)


def test_resume_remakes_only_missing_shards_byte_identically(finished, tmp_path: Path) -> None:
    out, _ = finished
    copy = tmp_path / "resume"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    shards = sorted((copy / "shards").glob("*.parquet"))
    removed = shards[1]
    original = removed.read_bytes()
    removed.unlink()
    (copy / "shards" / ".train-00003.parquet.tmp-dead").write_bytes(b"half")  # a killed run's leftover
    result = run_job(small_config(), copy)
    assert result.resumed_shards == len(shards) - 1 + len(list((copy / "holdout").glob("*.parquet")))
    assert removed.read_bytes() == original
    assert shard_rows(copy / "shards") == shard_rows(out / "shards")
    assert not [p for p in (copy / "shards").iterdir() if ".tmp" in p.name]


def test_execution_settings_may_change_on_resume(finished, tmp_path: Path) -> None:
    out, _ = finished
    copy = tmp_path / "workers"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    for shard in (copy / "shards").glob("*.parquet"):
        shard.unlink()
    run_job(small_config(execution={"num_workers": 1}), copy)
    assert shard_rows(copy / "shards") == shard_rows(out / "shards")


def test_a_different_config_is_refused_unless_overwrite(finished, tmp_path: Path) -> None:
    out, _ = finished
    copy = tmp_path / "other"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    changed = small_config(seed=8, quota={"per_class": {str(c): 180 for c in range(10)}})
    with pytest.raises(ConfigError, match="different config"):
        run_job(changed, copy)
    result = run_job(changed, copy, overwrite=True)
    assert result.rows == 1800 and read_manifest(copy / "shards").total_rows == 1800


def test_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a synthaug job folder"):
        run_job(small_config(), tmp_path)


def test_a_live_lock_refuses_a_second_job_and_a_stale_one_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "locked"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        start = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "start": start}))
        with pytest.raises(ConfigError, match="another synthaug job is running"):
            run_job(small_config(), out)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The holder is gone now: its lock is stale and the job runs.
    result = run_job(small_config(quota={"per_class": {str(c): 150 for c in range(10)}}), out)
    assert result.rows == 1500
