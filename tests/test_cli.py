"""The `synthaug` command line through subprocesses: exit codes, messages, run → inspect.

Only two invocations start Ray (one real run, one run whose source root is missing); the
refused rerun stops before Ray, and validate / schema / inspect never start it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_command, cli_env

TIMEOUT = 180


def synthaug(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# 1,797 digits, about 180 per class: a 0.7 holdout leaves 52..55 training images per class,
# so 60 per class asks for a few synthetic ones in every class.
TINY = """
    name: tiny-cli
    seed: 1
    source: {kind: digits, image_size: 16}
    split: {holdout: 0.7}
    quota:
      per_class: {"0": 60, "1": 60, "2": 60, "3": 60, "4": 60, "5": 60, "6": 60, "7": 60, "8": 60, "9": 60}
    augment:
      transforms:
        - {name: Affine, p: 0.9, params: {rotate: [-10, 10]}}
    output: {rows_per_shard: 200}
    execution: {num_workers: 1, num_cpus: 2}
    report: {enabled: false}
"""


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    work = tmp_path_factory.mktemp("cli")
    config = _write(work / "tiny.yaml", TINY)
    out = work / "out"
    return config, out, synthaug("run", str(config), "--out", str(out), cwd=work)


# ---------------------------------------------------------------- validate and schema


def test_validate_quickstart_exits_0(tmp_path: Path) -> None:
    done = synthaug("validate", str(REPO / "configs" / "quickstart.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "quickstart.yaml: ok" in done.stdout and "'quickstart'" in done.stdout


def test_validate_refuses_a_python_tag_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    config = _write(tmp_path / "evil.yaml", f"""
        name: evil
        seed: !!python/object/apply:os.system ["touch {marker}"]
    """)
    done = synthaug("validate", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert str(config) in done.stderr and "python/object/apply:os.system' is not allowed" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_validate_names_the_field_path_of_an_invalid_value(tmp_path: Path) -> None:
    config = _write(tmp_path / "bad.yaml", """
        name: bad
        source: {kind: digits, image_size: 16}
        quota: {multiplier: 2.0}
        augment:
          transforms:
            - {name: HorizontalFlip, p: 0.5}
            - {name: Affine, p: 1.5}
    """)
    done = synthaug("validate", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert "augment.transforms[1].p: 1.5" in done.stderr and "less than or equal to 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_schema_prints_json_with_the_config_sections(tmp_path: Path) -> None:
    done = synthaug("schema", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert {"name", "seed", "source", "split", "quota", "augment", "output", "execution"} <= set(schema["properties"])
    assert set(schema["required"]) == {"source"}  # quota and augment are optional (copy-only jobs)
    assert {"FolderSourceConfig", "CocoSourceConfig", "QuotaConfig", "TransformConfig"} <= set(schema["$defs"])


# ---------------------------------------------------------------- run and inspect


def test_run_prints_the_counts_and_inspect_lists_them(digits_run, tmp_path: Path) -> None:
    _, out, done = digits_run
    assert done.returncode == 0, done.stderr[-3000:]
    per_class = ", ".join(f"{d}=60" for d in range(10))
    assert f"per class: {per_class}" in done.stdout.splitlines()
    assert "wrote 600 training rows" in done.stdout and "rejected: none" in done.stdout

    inspected = synthaug("inspect", str(out), cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    report = inspected.stdout
    assert "'tiny-cli'" in report and "status=complete" in report
    header = next(line for line in report.splitlines() if line.startswith("class"))
    assert header.split() == ["class", "classical", "real", "total"]
    rows = {line.split()[0]: line.split()[1:] for line in report.split("holdout/")[0].splitlines()
            if line.split() and line.split()[0].isdigit()}
    assert sorted(rows) == [str(d) for d in range(10)]
    assert all(int(cells[-1]) == 60 and int(cells[0]) > 0 for cells in rows.values())
    assert "holdout/" in report and "checksums: all ok" in report


def test_inspect_exits_1_on_a_flipped_byte(digits_run, tmp_path: Path) -> None:
    _, out, done = digits_run
    assert done.returncode == 0, done.stderr[-3000:]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = sorted((copy / "shards").glob("*.parquet"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    inspected = synthaug("inspect", str(copy), cwd=tmp_path)
    assert inspected.returncode == 1
    problems = [line for line in inspected.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and victim.name in problems[0] and "sha256" in problems[0]


def test_a_different_config_on_the_same_out_exits_2_and_leaves_it_alone(digits_run, tmp_path: Path) -> None:
    config, out, done = digits_run
    assert done.returncode == 0, done.stderr[-3000:]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    other = _write(config.parent / "other.yaml", TINY.replace("seed: 1", "seed: 2"))
    refused = synthaug("run", str(other), "--out", str(out), cwd=tmp_path)
    assert refused.returncode == 2
    assert "different config" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    assert synthaug("inspect", str(out), cwd=tmp_path).returncode == 0


def test_run_on_a_missing_folder_root_exits_2_with_one_line(tmp_path: Path) -> None:
    config = _write(tmp_path / "folder.yaml", """
        name: nofolder
        source: {kind: folder, root: no-such-folder}
        quota: {balance: true}
        augment:
          transforms:
            - {name: HorizontalFlip}
        execution: {num_workers: 1, num_cpus: 1}
    """)
    done = synthaug("run", str(config), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    messages = [line for line in done.stderr.splitlines() if line.startswith("synthaug:")]
    assert messages == [f"synthaug: {tmp_path / 'no-such-folder'}: image folder not found (or not a directory)"]


def test_report_and_compare_name_what_is_missing(digits_run, tmp_path: Path) -> None:
    _, out, _ = digits_run  # a finished job whose config switched the report off
    missing = synthaug("compare", str(out), str(out), cwd=tmp_path)
    assert missing.returncode == 2 and "report/report.json" in missing.stderr and "synthaug report" in missing.stderr
    not_a_job = synthaug("report", str(tmp_path), cwd=tmp_path)
    assert not_a_job.returncode == 2 and "not a synthaug job folder" in not_a_job.stderr


FIT = """
    name: tiny-fit
    seed: 1
    source: {kind: digits, image_size: 8}
    split: {holdout: 0.5}
    quota: {per_class: {"0": 120, "1": 120}}
    generate:
      - kind: cgan
        fit: {steps: 40, batch_size: 16, g_channels: 8, d_channels: 8, z_dim: 8}
    execution: {num_workers: 1, num_cpus: 2}
    report: {enabled: false}
"""


def test_a_fit_shows_its_progress_and_ray_train_stays_quiet(tmp_path: Path) -> None:
    """What a user reads while a job fits: our rate/ETA lines and a generate bar that ends at
    100%, and none of the embedded Ray's placement-group-cleaner warnings (once a second)."""
    done = synthaug("run", str(_write(tmp_path / "fit.yaml", FIT)), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fit cgan: step 40/40" in done.stderr
    assert "generate: 100%" in done.stderr, done.stderr[-3000:]
    assert "PlacementGroupCleaner" not in done.stderr, done.stderr[-3000:]
