"""Domain transfer through the job: a tiny CyCADA fitted on simulator digits towards real
digits, its rows scored for label preservation, its task models scored on the target holdout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from augment.shards import read_manifest, verify_shards
from jobs.config import parse_config
from jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("ray_session")

TINY = {"steps": 12, "task_steps": 6, "batch_size": 4, "ngf": 4, "ndf": 4, "n_blocks": 1, "d_layers": 1,
        "task_width": 4}


def test_cycada_job_carries_labels_scores_rows_and_reports_its_task_models(tmp_path: Path) -> None:
    config = parse_config({
        "seed": 3, "source": {"kind": "simulator", "family": "digits", "frames": 60, "image_size": 16},
        "generate": [{"kind": "cycada", "checkpoint_every": 6, "fit": TINY,
                      "target": {"kind": "digits", "image_size": 16}}],
        "report": {"extractor_steps": 20, "utility": {"steps": 10, "segmentation": False}, "max_per_source": 200},
        "output": {"rows_per_shard": 40},
    })
    out = tmp_path / "out"
    run_job(config, out)
    assert verify_shards(out / "shards") == []
    rows = {r["id"]: r for r in pq.read_table(out / "shards").to_pylist()}
    made = [r for r in rows.values() if r["source"] == "cycada"]
    frames = [r for r in rows.values() if r["source"] == "simulator"]
    assert len(made) == len(frames) > 0
    for row in made:
        parent = rows[row["parent_id"]]
        for column in ("label", "label_name", "mask", "boxes"):
            assert row[column] == parent[column], column
        assert row["image"]["bytes"] != parent["image"]["bytes"]
        assert 0.0 <= row["scores"]["label_preservation"] <= 1.0
    assert all(r["scores"] is None or r["scores"]["label_preservation"] is None for r in frames)
    folder = out / "checkpoints" / "cycada"
    assert sorted(p.name for p in (folder / "grids").iterdir()) == ["step-00000006.png", "step-00000012.png"]
    assert {p.name for p in (folder / "model").iterdir()} >= {"task_target.safetensors", "task_source.safetensors"}
    fit = json.loads((out / "job.json").read_text())["stages"]["fit"]["cycada"]
    assert fit["status"] == "done" and fit["model"] == "checkpoints/cycada/model"  # relative: the folder may move
    report = json.loads((out / "report" / "report.json").read_text())
    adaptation = report["adaptation"]["cycada"]
    # The target (scikit-learn digits) has labels: both task models are scored on its holdout.
    assert adaptation["metric"] == "accuracy" and adaptation["task"] == "classification"
    assert adaptation["holdout"] > 300 and 0.0 <= adaptation["source"] <= 1.0 and 0.0 <= adaptation["target"] <= 1.0
    assert "Task models on the target domain" in (out / "report" / "report.html").read_text()
    preservation = report["label_preservation"]["cycada"]
    assert preservation["rows"] == len(made) and preservation["dropped"] == 0
    assert abs(preservation["mean"] - np.mean([r["scores"]["label_preservation"] for r in made])) < 1e-6
    assert read_manifest(out / "shards").source_counts["cycada"] == len(made)
    assert np.isfinite(report["seconds"])
