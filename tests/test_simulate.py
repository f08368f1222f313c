"""Simulator frames through the job: `synthaug simulate`, and a simulator source inside `run`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from augment.images import decode_png
from augment.shards import read_manifest, table_to_samples, verify_shards
from jobs.config import parse_config
from jobs.runner import run_job
from simulators.source import SimulatorSource, render_description
from tests.conftest import REPO, cli_command, cli_env


def test_records_carry_digit_labels_and_frames_re_render_exactly() -> None:
    from simulators.digits import DigitsControls

    source = SimulatorSource("digits", frames=12, size=32, seed=4, controls=DigitsControls())
    records = source.records()
    assert [r.id for r in records] == [f"sim/digits/{i:06d}" for i in range(12)]
    sample = source.load(records[3])
    assert sample.label == records[3].label and sample.source == "simulator"
    again = render_description(sample.generator.params_json)
    assert np.array_equal(again.image, sample.image)
    other = SimulatorSource("digits", frames=12, size=32, seed=5, controls=DigitsControls()).load(records[3])
    assert not np.array_equal(other.image, sample.image)


@pytest.mark.usefixtures("ray_session")
def test_a_simulator_source_inside_run_balances_classes_with_classical_augmentation(tmp_path: Path) -> None:
    config = parse_config({
        "name": "simrun",
        "source": {"kind": "simulator", "family": "digits", "frames": 60, "image_size": 24},
        "split": {"holdout": 0.0},
        "quota": {"balance": True},
        "augment": {"transforms": [{"name": "Affine", "p": 1.0, "params": {"rotate": [-10, 10]}}]},
        "output": {"rows_per_shard": 40},
    })
    result = run_job(config, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out" / "shards")
    assert len(set(manifest.class_counts.values())) == 1 and manifest.total_rows == result.rows
    assert set(manifest.source_counts) == {"simulator", "classical"}
    assert (tmp_path / "out" / "contact_sheet.png").exists()
    assert not (tmp_path / "out" / "rejected.jsonl").read_text()


def test_simulate_cli_writes_street_shards_with_all_layers_and_a_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "street"
    done = subprocess.run(
        cli_command("simulate", str(REPO / "configs" / "street.yaml"), "--out", str(out),
                    "--frames", "12", "--size", "64", "--seed", "9"),
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "contact sheet" in done.stdout
    assert verify_shards(out / "shards") == []
    table = pq.read_table(out / "shards")
    assert table.num_rows == 12 and set(table.column("source").to_pylist()) == {"simulator"}
    samples = table_to_samples(table)
    assert all(s.image.shape == (64, 64, 3) and s.mask is not None and s.depth is not None for s in samples)
    assert any(s.boxes for s in samples)
    job = json.loads((out / "job.json").read_text())
    assert job["config"]["source"]["frames"] == 12 and job["config"]["source"]["seed"] == 9
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 256 and sheet.height > 64
    # The stored description re-renders the stored frame byte for byte.
    row = table.slice(0, 1).to_pylist()[0]
    assert np.array_equal(render_description(row["generator"]["params_json"]).image, decode_png(row["image"]["bytes"]))


def test_simulate_refuses_a_non_simulator_config(tmp_path: Path) -> None:
    done = subprocess.run(cli_command("simulate", str(REPO / "configs" / "quickstart.yaml"), "--out", str(tmp_path)),
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "simulator" in done.stderr and "Traceback" not in done.stderr


def test_controls_errors_name_the_field() -> None:
    from augment.errors import ConfigError

    with pytest.raises(ConfigError, match=r"source\.controls\.fov"):
        parse_config({"source": {"kind": "simulator", "family": "street", "controls": {"fov": 500}}})


@pytest.mark.usefixtures("ray_session")
def test_external_simulator_frames_through_run(tmp_path: Path) -> None:
    """Frames and palette label images of a 'game capture' become masked shards; a bad one is skipped."""
    root = tmp_path / "capture"
    (root / "rgb").mkdir(parents=True)
    (root / "labels").mkdir()
    road, car = (128, 64, 128), (0, 0, 142)
    for i in range(4):
        Image.new("RGB", (20, 12), (i * 40, 90, 30)).save(root / "rgb" / f"{i:03d}.png")
        label = np.zeros((12, 20, 3), np.uint8)
        label[:] = road
        label[2:6, 3 + i:9 + i] = car
        if i == 3:
            label[0, 0] = (1, 2, 3)  # a colour the mapping does not know
        Image.fromarray(label).save(root / "labels" / f"{i:03d}.png")
    config = parse_config({
        "name": "capture",
        "source": {"kind": "external", "root": str(root), "class_names": ["road", "car"],
                   "palette": {"#804080": "road", "0,0,142": "car"}},
        "split": {"holdout": 0.0},
    })
    out = tmp_path / "out"
    result = run_job(config, out)
    assert result.rows == 3
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rejected] == ["rgb/003.png"] and "#010203" in rejected[0]["reason"]
    samples = table_to_samples(pq.read_table(out / "shards"))
    first = next(s for s in samples if s.id.endswith("000"))
    assert first.mask[3, 5] == 1 and first.mask[10, 10] == 0 and first.source == "simulator"
    assert (out / "contact_sheet.png").exists()
