"""FiftyOne: shards → dataset (labels, fields, tags, views, Brain on the report's features),
re-export in place, and a FiftyOne dataset as a job's source (the round trip keeps ids,
labels, masks and boxes; bad samples are recorded skips). The database is the session's
private mongod (tests/conftest.py `fiftyone_db`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from augment.errors import ConfigError
from augment.images import decode_png
from jobs.config import parse_config
from jobs.runner import run_job

fo = pytest.importorskip("fiftyone")

from augment.fiftyone_export import export, media_folder  # noqa: E402
from jobs.browse import export_job  # noqa: E402

pytestmark = pytest.mark.usefixtures("fiftyone_db", "ray_session")

SIM = {"kind": "simulator", "family": "digits", "frames": 40, "image_size": 16}


def rows(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(folder).to_pylist()}


def plane(cell: dict | None) -> np.ndarray | None:
    return None if cell is None else decode_png(cell["bytes"]).astype(np.uint16)


@pytest.fixture(scope="module")
def sim_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulator digits (labels, masks, instances, boxes) plus classical children."""
    out = tmp_path_factory.mktemp("fo") / "sim"
    run_job(parse_config({
        "name": "fo-sim", "seed": 2, "source": SIM, "split": {"holdout": 0.25}, "quota": {"multiplier": 2.0},
        "augment": {"transforms": [{"name": "Affine", "p": 1.0, "params": {"rotate": [-15, 15]}}]},
        "report": {"enabled": False}, "output": {"rows_per_shard": 20}}), out)
    return out


def test_export_carries_labels_fields_and_tags_and_reexport_changes_nothing(sim_job: Path) -> None:
    dataset, result = export(sim_job, "fo-sim-export")
    shard_rows = {**rows(sim_job / "shards"), **rows(sim_job / "holdout")}
    assert result.added == len(dataset) == len(shard_rows) and result.media_written >= len(shard_rows)
    names = dataset.default_classes
    assert dataset.mask_targets["segmentation"] == dict(enumerate(names))
    by_row = {s.row_id: s for s in dataset}
    for row_id, row in shard_rows.items():
        sample = by_row[row_id]
        assert sample.source == row["source"] and sample.seed == row["seed"] and sample.parent_id == row["parent_id"]
        assert (sample.licence, sample.parent_licence) == (row["licence"], row["parent_licence"])
        assert sample.licence == "MIT"  # the project's own simulator renders, and their classical children
        assert sample.ground_truth.label == row["label_name"]
        assert ("synthetic" in sample.tags) == (row["source"] == "classical") and row["source"] in sample.tags
        mask = np.asarray(Image.open(sample.segmentation.mask_path))
        np.testing.assert_array_equal(mask, plane(row["mask"]))
        assert Image.open(sample.filepath).size == (row["width"], row["height"])
        boxes = sorted((d.label, *d.bounding_box) for d in sample.detections.detections)
        expected = sorted((names[b["label"]], b["x"] / row["width"], b["y"] / row["height"], b["w"] / row["width"],
                           b["h"] / row["height"]) for b in row["boxes"])
        assert [b[0] for b in boxes] == [e[0] for e in expected]
        np.testing.assert_allclose([b[1:] for b in boxes], [e[1:] for e in expected], atol=1e-6)
        if row["parent_id"] is not None:
            assert sample.parent_sample_id == by_row[row["parent_id"]].id
    holdout = set(rows(sim_job / "holdout"))
    assert {s.row_id for s in dataset.match_tags("holdout")} == holdout

    ids = dict(zip(*dataset.values(["row_id", "id"]), strict=True))
    media = {p: p.stat().st_mtime_ns for p in media_folder(sim_job).rglob("*.png")}
    again, second = export(sim_job, "fo-sim-export")
    assert (second.added, second.updated, second.removed, second.media_written) == (0, 0, 0, 0)
    assert second.unchanged == len(shard_rows) == len(again)
    assert dict(zip(*again.values(["row_id", "id"]), strict=True)) == ids  # same sample ids, no duplicates
    assert {p: p.stat().st_mtime_ns for p in media_folder(sim_job).rglob("*.png")} == media

    synthetic_only, third = export(sim_job, "fo-sim-export", include_real=False)
    assert third.removed == len(shard_rows) - sum(r["source"] == "classical" for r in shard_rows.values())
    assert set(synthetic_only.distinct("source")) == {"classical"}
    assert all(ids[s.row_id] == s.id for s in synthetic_only)


def test_round_trip_through_a_fiftyone_source_keeps_ids_labels_masks_and_boxes(sim_job: Path, tmp_path: Path) -> None:
    export(sim_job, "fo-sim-round-trip")
    out = tmp_path / "again"
    run_job(parse_config({
        "name": "fo-again", "seed": 5,
        "source": {"kind": "fiftyone", "dataset": "fo-sim-round-trip", "label_field": "ground_truth",
                   "mask_field": "segmentation", "detections_field": "detections"},
        "split": {"holdout": 0.0}, "report": {"enabled": False}, "output": {"rows_per_shard": 50}}), out)
    before = {**rows(sim_job / "shards"), **rows(sim_job / "holdout")}
    after = rows(out / "shards")
    assert sorted(after) == sorted(before)
    assert json.loads((out / "shards" / "_manifest.json").read_text())["class_names"] == \
        json.loads((sim_job / "shards" / "_manifest.json").read_text())["class_names"]
    for row_id, row in after.items():
        old = before[row_id]
        assert row["label"] == old["label"] and row["label_name"] == old["label_name"]
        np.testing.assert_array_equal(plane(row["mask"]), plane(old["mask"]))
        assert row["image"]["bytes"] == old["image"]["bytes"] or np.array_equal(
            decode_png(row["image"]["bytes"]), decode_png(old["image"]["bytes"]))
        assert [b["label"] for b in row["boxes"]] == [b["label"] for b in old["boxes"]]
        np.testing.assert_allclose([[b[k] for k in "xywh"] for b in row["boxes"]],
                                   [[b[k] for k in "xywh"] for b in old["boxes"]], atol=1e-4)


def _image(path: Path, size: tuple[int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(path)
    return str(path)


def test_bad_fiftyone_samples_are_recorded_skips_and_bad_fields_are_config_errors(tmp_path: Path) -> None:
    dataset = fo.Dataset("fo-bad", overwrite=True)
    dataset.default_classes = ["background", "car"]
    good_mask = np.zeros((12, 16), np.uint8)
    good_mask[2:6, 3:9] = 1

    def sample(name: str, *, mask: np.ndarray = good_mask, box=(0.1, 0.1, 0.3, 0.3), label: str = "car",
               exists: bool = True) -> fo.Sample:
        path = tmp_path / "media" / f"{name}.png"
        if exists:
            _image(path, (16, 12))
        return fo.Sample(filepath=str(path), name=name, ground_truth=fo.Classification(label=label),
                         segmentation=fo.Segmentation(mask=mask),
                         detections=fo.Detections(detections=[fo.Detection(label="car", bounding_box=list(box))]))

    dataset.add_samples([
        sample("good1"), sample("good2"),
        sample("missing", exists=False),
        sample("small_mask", mask=np.zeros((6, 8), np.uint8)),
        sample("far_box", box=(0.8, 0.2, 0.5, 0.2)),
        sample("unknown_id", mask=np.full((12, 16), 7, np.uint8)),
        sample("unknown_label", label="truck"),
    ])
    by_name = dict(zip(dataset.values("name"), dataset.values("id"), strict=True))
    config = {"name": "fo-bad", "seed": 1,
              "source": {"kind": "fiftyone", "dataset": "fo-bad", "label_field": "ground_truth",
                         "mask_field": "segmentation", "detections_field": "detections"},
              "split": {"holdout": 0.0}, "report": {"enabled": False}}
    run_job(parse_config(config), tmp_path / "out")
    written = rows(tmp_path / "out" / "shards")
    assert sorted(written) == sorted(f"fiftyone/{by_name[n]}" for n in ("good1", "good2"))
    rejected = {json.loads(line)["id"]: json.loads(line)["reason"]
                for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()}
    expected = {"missing": "not found", "small_mask": "mask is 8x6 but its image is 16x12",
                "far_box": "more than 1 px outside the 16x12 image", "unknown_id": "mask holds id 7",
                "unknown_label": "label 'truck' is not one of the class names"}
    for name, reason in expected.items():
        assert reason in rejected[f"fiftyone/{by_name[name]}"], (name, rejected)

    for changes, message in [({"dataset": "no-such-dataset"}, "no FiftyOne dataset named 'no-such-dataset'"),
                             ({"mask_field": "ground_truth"}, "holds Classification, not Segmentation"),
                             ({"label_field": "nothing"}, "has no field 'nothing'")]:
        bad = {**config, "source": {**config["source"], **changes}}
        with pytest.raises(ConfigError, match=message):
            run_job(parse_config(bad), tmp_path / f"out-{len(message)}")


def test_views_and_brain_use_the_report_features(tmp_path: Path) -> None:
    out = tmp_path / "job"
    run_job(parse_config({
        "name": "fo-report", "seed": 3, "source": {"kind": "digits", "image_size": 16},
        "split": {"holdout": 0.3}, "quota": {"multiplier": 1.5},
        "augment": {"transforms": [{"name": "Affine", "p": 1.0, "params": {"rotate": [-20, 20]}}]},
        "report": {"extractor_steps": 20, "utility": {"steps": 10, "segmentation": False}, "max_per_source": 200},
        "output": {"rows_per_shard": 400}}), out)
    dataset, result, views = export_job(out, "fo-report")
    assert {"synthetic_by_class", "lowest_realism", "near_copies"} <= set(views)
    assert any(v.startswith("drop_realism_below_") for v in views)
    assert set(dataset.list_saved_views()) == set(views)
    realism = dataset.load_saved_view("lowest_realism").values("scores.realism")
    assert realism == sorted(realism) and len(realism) == len(dataset.match_tags("synthetic"))
    shards = rows(out / "shards")
    stored = {r["id"]: r["scores"]["realism"] for r in shards.values() if r["scores"]}
    for row_id, value in zip(*dataset.match_tags("synthetic").values(["row_id", "scores.realism"]), strict=True):
        assert value == pytest.approx(stored[row_id], rel=1e-6)
    name = next(v for v in views if v.startswith("drop_realism_below_"))
    threshold = float(name.removeprefix("drop_realism_below_").replace("_", "."))
    dropped = dataset.load_saved_view(name)
    assert 0 < len(dropped) < len(realism) and max(dropped.values("scores.realism")) < threshold
    # Brain runs on the report's features, nothing downloaded.
    assert {"synthaug_similarity", "synthaug_map"} <= set(dataset.list_brain_runs())
    uniqueness = dataset.values("uniqueness")
    assert len(uniqueness) == len(dataset) and 0 <= min(uniqueness) <= max(uniqueness) <= 1
    # Near copies: each synthetic row's nearest real training row, within the report's distance.
    near = dataset.load_saved_view("near_copies")
    reference = json.loads((out / "report" / "reference" / "reference.json").read_text())
    real_train = set(dataset.match_tags("real").match({"split": "train"}).values("row_id"))
    assert set(near.values("nearest_real_id")) <= real_train
    assert all(d <= reference["near_copy_threshold"] for d in near.values("nearest_real_distance"))
    assert len(near) > 0  # classical children of rotated training images lie close to them
