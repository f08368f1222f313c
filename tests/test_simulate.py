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


# --- landscape street frames: source.width / source.height --------------------------------


def _street(**source) -> dict:
    return {"source": {"kind": "simulator", "family": "street", **source}}


def test_street_width_and_height_make_landscape_frames_that_re_render_exactly() -> None:
    from jobs.sources import build_source

    config = parse_config(_street(frames=3, width=80, height=60, seed=2))
    assert config.source.frame_size == (80, 60)
    source = build_source(config.source)
    sample = source.load(source.records()[1])
    assert sample.image.shape == (60, 80, 3)
    assert sample.mask.shape == sample.instances.shape == sample.depth.shape == (60, 80)
    assert all(0 <= b.x and b.x + b.w <= 80 and 0 <= b.y and b.y + b.h <= 60 for b in sample.boxes)
    again = render_description(sample.generator.params_json)
    assert again.image.tobytes() == sample.image.tobytes() and again.mask.tobytes() == sample.mask.tobytes()


def test_a_square_street_config_dumps_and_hashes_as_before_width_and_height() -> None:
    square = parse_config(_street(image_size=64))
    assert "width" not in square.source.model_dump() and "height" not in square.source.model_dump()
    # sha256 of this config's content before the street source took width and height.
    assert square.content_hash() == "2e9763d76739bd4982936b4b84bad497beea48cdc78c483a3f72369a8003c8ae"
    assert parse_config(_street()).source.image_size == 256
    wide = parse_config(_street(width=96, height=72)).source.model_dump(mode="json")
    assert (wide["width"], wide["height"]) == (96, 72) and "image_size" not in wide


def test_width_height_equal_is_the_same_frames_as_image_size() -> None:
    from jobs.sources import build_source

    a = build_source(parse_config(_street(frames=2, image_size=48, seed=1)).source)
    b = build_source(parse_config(_street(frames=2, width=48, height=48, seed=1)).source)
    sa, sb = a.load(a.records()[0]), b.load(b.records()[0])
    assert sa.image.tobytes() == sb.image.tobytes() and sa.generator.params_json == sb.generator.params_json


@pytest.mark.parametrize(("source", "message"), [
    ({"width": 10, "height": 60}, r"source\.width: 10 — "),
    ({"width": 80, "height": 4000}, r"source\.height: 4000 — "),
    ({"width": 80}, r"source: width 80 needs height"),
    ({"height": 60}, r"source: height 60 needs width"),
    ({"image_size": 64, "width": 80, "height": 60}, r"image_size 64 and width 80, height 60"),
    ({"width": 40, "height": 90}, r"height 90 is more than twice width 40"),
])
def test_bad_street_frame_shapes_name_the_field_and_value(source: dict, message: str) -> None:
    from augment.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config(_street(**source))


def test_square_only_families_refuse_width_and_height() -> None:
    from augment.errors import ConfigError
    from simulators.digits import DigitsControls

    with pytest.raises(ConfigError, match="square frames only; got width 40, height 30"):
        SimulatorSource("digits", frames=2, width=40, height=30, seed=0, controls=DigitsControls())
    square = SimulatorSource("digits", frames=2, width=32, height=32, seed=0, controls=DigitsControls())
    assert square.load(square.records()[0]).image.shape[:2] == (32, 32)


@pytest.mark.usefixtures("ray_session")
def test_landscape_street_frames_through_run(tmp_path: Path) -> None:
    config = parse_config({"name": "wide", **_street(frames=4, width=64, height=48), "split": {"holdout": 0.0}})
    run_job(config, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "shards")
    assert table.num_rows == 4
    assert set(table.column("height").to_pylist()) == {48} and set(table.column("width").to_pylist()) == {64}
    assert all(s.image.shape == (48, 64, 3) and s.mask.shape == (48, 64) for s in table_to_samples(table))


def test_a_street_style_is_a_control_that_names_its_field_when_wrong() -> None:
    from augment.errors import ConfigError

    config = parse_config(_street(width=96, height=72, controls={"style": "camvid", "trees": [1, 2]}))
    controls = config.source.controls
    assert controls.style == "camvid" and controls.trees == (1, 2) and controls.parked_cars == (2, 8)
    assert config.source.model_dump(mode="json")["controls"]["style"] == "camvid"
    with pytest.raises(ConfigError, match=r"source\.controls\.style: 'gta'"):
        parse_config(_street(controls={"style": "gta"}))


def test_simulate_size_flag_makes_a_landscape_config_square(tmp_path: Path) -> None:
    """`--size N` overrides image_size, and replaces a config's width and height."""
    import argparse

    from jobs.cli import _simulate_config

    path = tmp_path / "street.yaml"
    path.write_text("source: {kind: simulator, family: street, frames: 4, width: 64, height: 48}\n")
    args = argparse.Namespace(config=path, frames=None, size=None, seed=None)
    assert _simulate_config(args).source.frame_size == (64, 48)
    args.size, args.frames = 40, 2
    config = _simulate_config(args)
    assert config.source.frame_size == (40, 40) and config.source.frames == 2
