"""Configs and job folders from someone we do not know: bounded, unambiguous, clear errors.

Each test feeds the input that once broke the service (a YAML bomb, a 5 MB config, a
duplicated key, a quota of 10^9 per class, SIGTERM, a job whose every record is bad, an
--out that cannot be a folder) and checks the refusal or the recovery.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from augment.errors import ConfigError
from augment.sources.base import SourceRecord
from jobs.config import QuotaConfig, load_config, parse_config
from jobs.config_yaml import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_EXPANDED_NODES, parse_yaml
from jobs.lock import LOCK_NAME
from jobs.plan import make_plan
from jobs.quota import MAX_PLANNED_ROWS, MAX_SHARD_ROWS, PlanStep
from tests.conftest import cli_command, cli_env

DIGITS = {"name": "h", "source": {"kind": "digits", "image_size": 16},
          "augment": {"transforms": [{"name": "HorizontalFlip"}]}}


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


# --- the YAML itself -------------------------------------------------------------------


def _bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly_through_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(_bomb())
    assert len(config.read_bytes()) < 700  # the 575-byte bomb of the report, give or take
    started = time.monotonic()
    done = _cli("validate", str(config), cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "bomb.yaml" in done.stderr and f"more than {MAX_EXPANDED_NODES:,} values" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30  # generous: the unbounded version never finished


def test_aliases_within_bounds_still_work() -> None:
    raw = parse_yaml("base: &b [1, 2]\nagain: *b\nsmall: " + _bomb(3).replace("\n", "\n  ").replace("l0:", "\n  l0:"))
    assert raw["again"] == [1, 2]


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="recursive"):
        parse_yaml("a: &a [1, *a]\n")


def test_an_oversized_config_is_refused_before_parsing(tmp_path: Path) -> None:
    config = tmp_path / "huge.yaml"
    # 5 MB of nested lists: parsing this took minutes before the size bound.
    config.write_text("x: " + "[[1, 2], [3, [4]]], " * 260_000 + "\n")
    assert config.stat().st_size > 5_000_000
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"huge.yaml: the config is [\d,]+ bytes; at most {MAX_CONFIG_BYTES:,}"):
        load_config(config)
    assert time.monotonic() - started < 5


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels"):
        parse_yaml("x: " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(ConfigError):  # deeper than libyaml (or Python's recursion) goes
        parse_yaml("x: " + "[" * 5000 + "]" * 5000 + "\n")


def test_a_duplicate_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    config = _write(tmp_path / "dup.yaml", """
        name: dup
        seed: 0
        source: {kind: digits}
        seed: 7
    """)
    with pytest.raises(ConfigError, match=r"dup.yaml: .*line 4.*duplicate key 'seed' \(first given on line 2\)"):
        load_config(config)
    with pytest.raises(ConfigError, match="duplicate key 'kind'"):  # in a flow mapping too
        parse_yaml("source: {kind: digits, kind: folder}\n")


def test_a_merge_key_may_be_overridden() -> None:
    raw = parse_yaml("base: &b {kind: digits, image_size: 16}\nsource:\n  <<: *b\n  image_size: 24\n")
    assert raw["source"] == {"kind": "digits", "image_size": 24}


def test_a_syntax_error_says_where_and_is_not_called_a_python_tag(tmp_path: Path) -> None:
    config = _write(tmp_path / "broken.yaml", """
        name: x
        seed: [1, 2
        source: {kind: digits}
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert "broken.yaml: not valid YAML: line 3" in message and "python" not in message


def test_a_python_tag_is_named_as_a_refused_tag(tmp_path: Path) -> None:
    config = _write(tmp_path / "tag.yaml", "name: !!python/name:os.system\n")
    with pytest.raises(ConfigError, match=r"line 1, column 7: the tag .*python/name:os.system' is not allowed"):
        load_config(config)


def test_a_huge_offending_value_is_shown_cut_short() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**DIGITS, "name": "x" * 100_000})
    assert len(str(caught.value)) < 400 and "100,002 characters" in str(caught.value)


# --- quotas: refused up front, planned compactly ----------------------------------------


def _records(per_class: dict[int, int]) -> list[SourceRecord]:
    return [SourceRecord(f"{c}/{i:05d}", c, f"{c}/{i:05d}") for c, n in per_class.items() for i in range(n)]


def test_a_quota_no_job_can_hold_is_refused_with_the_limit() -> None:
    with pytest.raises(ConfigError, match=f"would write 2,000,000,000 rows; one job writes at most "
                                          f"{MAX_PLANNED_ROWS:,}"):
        make_plan(class_names=["a", "b"], train=_records({0: 5, 1: 3}), holdout=[],
                  quota=QuotaConfig(per_class={"a": 10**9, "b": 10**9}), seed=0, rows_per_shard=512,
                  include_real=True)


def test_more_children_per_image_than_a_shard_holds_is_refused() -> None:
    with pytest.raises(ConfigError, match=rf"class 'a' needs 599,998 synthetic samples from 2 training images, "
                                          rf"299,999 from each; .* at most {MAX_SHARD_ROWS:,} rows"):
        make_plan(class_names=["a"], train=_records({0: 2}), holdout=[], quota=QuotaConfig(per_class={"a": 600_000}),
                  seed=0, rows_per_shard=512, include_real=True)


def test_more_shards_than_a_job_may_write_is_refused_with_the_rows_per_shard_to_use() -> None:
    with pytest.raises(ConfigError, match=r"output.rows_per_shard: 1 rows a shard makes 200,000 shards .*"
                                          r"\(raise rows_per_shard to at least 2\)"):
        make_plan(class_names=["a"], train=_records({0: 10}), holdout=[], quota=QuotaConfig(per_class={"a": 200_000}),
                  seed=0, rows_per_shard=1, include_real=True, steps=(PlanStep("diffusion", "class"),), augment=None)


@pytest.mark.parametrize("class_conditional", [False, True])
def test_the_plan_stays_the_same_size_whatever_the_quota(class_conditional: bool) -> None:
    """Children and generated samples are ranges: a plan's JSON does not grow with the quota."""
    def plan_bytes(per_class: int) -> int:
        plan = make_plan(class_names=["a", "b"], train=_records({0: 40, 1: 40}), holdout=[],
                         quota=QuotaConfig(per_class={"a": per_class, "b": per_class}), seed=0,
                         rows_per_shard=10**9, include_real=True,
                         **({"steps": (PlanStep("diffusion", "class"),), "augment": None} if class_conditional else {}))
        assert sum(s.rows for s in plan.train) == (80 if not class_conditional else 80) + 2 * (per_class - 40)
        return sum(len(s.to_json()) for s in plan.train)

    small, large = plan_bytes(1_000), plan_bytes(1_000_000)
    assert large < small * 1.2


def test_unknown_quota_class_is_found_before_ray_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.ray_compat
    from jobs.runner import run_job

    def no_ray(*args: object, **kwargs: object) -> bool:
        raise AssertionError("Ray was started for a config that could be refused without it")

    monkeypatch.setattr(jobs.ray_compat, "init_ray", no_ray)
    for quota in ({"per_class": {"eleven": 10}}, {"per_class": {"0": 10**9}}):
        config = parse_config({**DIGITS, "quota": quota})
        with pytest.raises(ConfigError, match="quota"):
            run_job(config, tmp_path / "out")
        assert not (tmp_path / "out" / LOCK_NAME).exists()


# --- the job folder and the job's end ----------------------------------------------------


def test_out_that_cannot_be_a_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({**DIGITS, "report": {"enabled": False}}))
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for out, why in ((a_file, "exists and is not a folder"), (a_file / "sub", "cannot create the job folder")):
        assert main(["run", str(config), "--out", str(out)]) == 2
        stderr = capsys.readouterr().err
        assert f"--out {out}: {why}" in stderr and "Traceback" not in stderr
    assert a_file.read_text() == "not a folder"


def test_a_job_whose_every_record_is_rejected_fails_and_inspect_says_so(tmp_path: Path) -> None:
    for name in ("a/x.png", "b/y.png", "b/z.png"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(b"not a png")
    config = _write(tmp_path / "bad.yaml", """
        name: allbad
        source: {kind: folder, root: data}
        report: {enabled: false}
        execution: {num_workers: 1, num_cpus: 2}
    """)
    out = tmp_path / "out"
    done = _cli("run", str(config), "--out", str(out), cwd=tmp_path, timeout=180)
    assert done.returncode == 2, done.stderr
    assert "none of the" in done.stderr and "records is usable" in done.stderr
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "job.json").read_text())["status"] == "failed"
    assert not (out / LOCK_NAME).exists() and not list(out.glob("shards/*.parquet"))
    inspected = _cli("inspect", str(out), cwd=tmp_path)
    assert inspected.returncode == 1
    assert "status=failed" in inspected.stdout and "not complete" in inspected.stderr


# SIGINT takes the same path as SIGTERM once the handler is back; it runs with the slow set.
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_stop_signal_releases_the_lock_and_records_the_interruption(tmp_path: Path, signum: int) -> None:
    config = tmp_path / "slow.yaml"
    # Big enough to still be running a few seconds after the lock is taken.
    config.write_text(json.dumps({**DIGITS, "source": {"kind": "digits", "image_size": 64},
                                  "quota": {"multiplier": 30.0}, "report": {"enabled": False},
                                  "execution": {"num_workers": 1, "num_cpus": 2}}))
    out = tmp_path / "out"
    process = subprocess.Popen(cli_command("run", str(config), "--out", str(out)), cwd=tmp_path, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "job.json").exists():  # written once Ray is up and the run started
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        assert (out / LOCK_NAME).exists()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr
    assert "interrupted" in stderr
    assert not (out / LOCK_NAME).exists()
    assert json.loads((out / "job.json").read_text())["status"] == "interrupted"
