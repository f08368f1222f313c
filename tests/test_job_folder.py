"""A finished job folder as others read it: job.json's provenance (command, code, library
versions), paths that survive moving the folder, and the holdout as a `datasets` test split.

One tiny job (36 images of 8×8 in three class folders, half held out) runs through the
CLI's `main` on the session's Ray, then `report_job` makes its report (few steps); the last
test moves the folder and reads it back.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from augment.shards import read_manifest
from jobs.config import load_config
from jobs.job_file import job_path, job_relative
from jobs.provenance import LIBRARIES, code_state, earlier_runs
from tests.conftest import REPO

CLASSES = ["cat", "dog", "owl"]
PER_CLASS = 12
# Six training images per class, so 10 per class adds four augmented ones. The job makes no
# report (a rerun would remake it); `synthaug report` makes one on few steps (its numbers
# are not under test).
TINY = """
name: tiny-folder
seed: 3
source: {kind: folder, root: data}
split: {holdout: 0.5}
quota: {per_class: {cat: 10, dog: 10, owl: 10}}
augment:
  transforms:
    - {name: HorizontalFlip, p: 1.0}
output: {rows_per_shard: 10}
report: {enabled: false, extractor_steps: 5, k: 2, kid_subsets: 2, kid_subset_size: 4, grid_per_class: 1, utility: {enabled: false}}
execution: {num_workers: 1}
"""


def write_images(root: Path) -> None:
    """PER_CLASS noisy 8×8 images per class, each class around its own colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for number, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            base = np.zeros((8, 8, 3), np.int16)
            base[..., number] = 160
            pixels = np.clip(base + rng.integers(0, 90, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, ray_session: None,
             one_torch_thread: None) -> tuple[Path, Path, list[str]]:
    """(config file, job folder, the arguments given to `synthaug`) of the finished tiny job."""
    from jobs.cli import main
    from jobs.runner import report_job

    work = tmp_path_factory.mktemp("folder")
    config = work / "tiny.yaml"
    config.write_text(TINY)
    write_images(work / "data")
    out = work / "out"
    args = ["run", str(config), "--out", str(out)]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert main(args) == 0
    finally:  # main() makes SIGTERM raise KeyboardInterrupt; pytest's own handling comes back
        signal.signal(signal.SIGTERM, handler)
    assert report_job(out) == out / "report" / "report.json"
    return config, out, args


def test_job_json_records_the_command_line_code_and_library_versions(finished) -> None:
    _, out, args = finished
    job = json.loads((out / "job.json").read_text())
    assert job["command"] == ["synthaug", *args]
    assert job["synthaug"]["version"] == metadata.version("synthaug")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the tests run from a checkout
        assert job["synthaug"]["commit"] == head.stdout.strip() and isinstance(job["synthaug"]["dirty"], bool)
    assert set(job["versions"]) == {"python", *LIBRARIES}
    assert job["versions"]["torch"] == metadata.version("torch") and job["versions"]["opencv"]
    assert job["earlier_runs"] == [] and job["runs"] == 1


def test_paths_inside_the_folder_are_stored_relative_to_it(finished, tmp_path: Path) -> None:
    _, out, _ = finished
    stages = json.loads((out / "job.json").read_text())["stages"]
    assert stages["report"]["path"] == "report/report.json" and (out / stages["report"]["path"]).is_file()
    assert job_relative(out / "checkpoints" / "cgan" / "model", out) == "checkpoints/cgan/model"
    assert job_relative(tmp_path / "model", out) == str(tmp_path / "model")  # outside: absolute
    assert job_path("checkpoints/cgan/model", out) == out / "checkpoints" / "cgan" / "model"
    assert job_path("/old/out/checkpoints/cgan/model", out) == Path("/old/out/checkpoints/cgan/model")  # older files


def test_code_state_is_null_without_a_checkout_of_its_own_or_without_git(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert code_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "venv" / "site-packages").mkdir(parents=True)
    # An installed copy inside someone else's repository is not that repository's commit.
    assert code_state(repo / "venv" / "site-packages") == {"commit": None, "dirty": None}
    assert code_state(repo) == {"commit": None, "dirty": False}  # a repository without commits
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no git at all
    assert code_state(REPO) == {"commit": None, "dirty": None}


def test_the_holdout_loads_as_the_datasets_test_split(finished, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    _, out, _ = finished
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for noisy in ("datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    splits = datasets.load_dataset(
        "parquet", data_files={"train": str(out / "shards" / "*.parquet"), "test": str(out / "holdout" / "*.parquet")},
        cache_dir=str(tmp_path / "cache"))
    assert len(splits["train"]) == read_manifest(out / "shards").total_rows == 30
    assert len(splits["test"]) == read_manifest(out / "holdout").total_rows == 18
    assert splits["test"].features == splits["train"].features
    assert splits["test"].features["label"].names == CLASSES
    row = splits["test"][0]
    assert row["image"].size == (8, 8) and row["image"].mode == "RGB" and np.asarray(row["image"]).any()
    assert row["source"] == "real" and splits["test"].features["label"].int2str(row["label"]) == row["label_name"]


def test_a_moved_job_folder_reads_back_and_resumes(finished, caplog: pytest.LogCaptureFixture) -> None:
    """Runs last: it moves the module's job folder."""
    from jobs.browse import job_name
    from jobs.compare import compare
    from jobs.inspect import inspect_job
    from jobs.runner import prepare_out, report_job, run_job

    config, out, args = finished
    moved = out.with_name("moved")
    out.rename(moved)
    summary, problems = inspect_job(moved)
    assert problems == [] and "tiny-folder" in summary
    with caplog.at_level(logging.INFO, logger="synthaug"):
        assert report_job(moved) == moved / "report" / "report.json"
    assert "quality reference: reusing" in caplog.text  # the domain classifier is not refitted
    assert json.loads((moved / "job.json").read_text())["stages"]["report"]["path"] == "report/report.json"
    assert compare(moved, moved)[1] and job_name(moved) == ("tiny-folder", 3)

    result = run_job(load_config(config), moved)  # a library call: no command line
    published = len(read_manifest(moved / "shards").shards) + len(read_manifest(moved / "holdout").shards)
    assert result.resumed_shards == published and Path(result.out) == moved.resolve()  # every shard kept
    job = json.loads((moved / "job.json").read_text())
    assert job["status"] == "complete" and job["runs"] == 2 and job["command"] is None
    assert [(run["run"], run["command"]) for run in job["earlier_runs"]] == [(1, ["synthaug", *args])]

    # An older job.json: absolute paths (to where the folder was), no provenance keys; what a
    # rerun reads of it (prepare_out) is the same job, and its run becomes an earlier one.
    old = {key: value for key, value in job.items() if key not in ("command", "synthaug", "earlier_runs")}
    old["stages"]["report"] = {"status": "done", "path": str(out / "report" / "report.json")}
    old["versions"] = {"python": "3.11.7", "synthaug": "0.1.0", "torch": "2.13.0+cpu"}
    (moved / "job.json").write_text(json.dumps(old))
    assert inspect_job(moved)[1] == [] and job_name(moved) == ("tiny-folder", 3)
    previous = prepare_out(moved, load_config(config), overwrite=False)
    assert previous == old and (moved / "shards" / "_manifest.json").is_file()
    assert earlier_runs(previous) == [{"run": 2, "status": "complete", "updated": old["updated"], "command": None,
                                       "synthaug": None, "versions": old["versions"]}]
    shutil.rmtree(moved)
