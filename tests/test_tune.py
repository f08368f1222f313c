"""`tune:`: the grid, the training mixes, the ranking, and the stage in a job on tiny models."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from augment.errors import ConfigError
from augment.metrics.scoring import RowScores
from augment.tuning import REAL_ONLY, Setting, grid, pick_rows, ranking, share_counts
from jobs.config import parse_config
from jobs.plan import job_split, records_digest, validation_split
from jobs.runner import report_job, run_job
from jobs.sources import build_source

CLASSES = [str(c) for c in range(10)]
TINY = {
    "name": "tiny_tune", "seed": 3,
    "source": {"kind": "digits", "image_size": 8, "color": "gray"},
    "split": {"holdout": 0.2, "seed": 5, "train_per_class": 6},
    "quota": {"per_class": {c: 20 for c in CLASSES}},
    "generate": {"kind": "cgan", "fit": {"steps": 20, "batch_size": 8, "g_channels": 8, "d_channels": 8, "z_dim": 8}},
    "output": {"rows_per_shard": 100},
    "report": {"input_size": 8, "extractor_steps": 30, "kid_subsets": 5},
}


# -- the grid and the mixes ----------------------------------------------------------------

def test_grid_is_the_product_in_written_order_and_share_zero_is_one_real_only_setting() -> None:
    settings = grid({"cgan": {"truncation": [0, 0.7]}}, [0.0, 0.5], {"min_confidence": [None, 0.5]})
    assert [s.label() for s in settings] == [
        REAL_ONLY,
        "cgan.truncation=0 share=0.5 min_confidence=off", "cgan.truncation=0 share=0.5 min_confidence=0.5",
        "cgan.truncation=0.7 share=0.5 min_confidence=off", "cgan.truncation=0.7 share=0.5 min_confidence=0.5"]
    assert grid({}, None, {}) == [Setting()]  # nothing tuned: the config as it is
    assert Setting.from_json(settings[2].to_json()) == settings[2]


def test_share_counts_make_the_asked_share_of_the_mix() -> None:
    counts = share_counts({0: 10, 1: 7, 2: 3}, 0.8)
    assert counts == {0: 40, 1: 28, 2: 12}
    for c, real in {0: 10, 1: 7, 2: 3}.items():
        assert counts[c] / (counts[c] + real) == pytest.approx(0.8)
    assert share_counts({0: 5}, 0.0) == {0: 0}
    with pytest.raises(ValueError, match="share"):
        share_counts({0: 5}, 1.0)


def test_pick_rows_takes_each_class_first_rows_then_the_gate_drops() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1, 0])
    confidence = np.array([0.9, 0.2, 0.1, 0.8, 0.7, 0.9, 0.95])
    scores = RowScores(np.ones(7), confidence, np.ones(7), np.zeros(7, bool))
    rows, dropped = pick_rows(labels, {0: 3, 1: 2}, scores, {"min_confidence": None})
    assert rows.tolist() == [0, 1, 2, 3, 4] and dropped == 0
    rows, dropped = pick_rows(labels, {0: 3, 1: 2}, scores, {"min_confidence": 0.5})
    assert rows.tolist() == [0, 3, 4] and dropped == 2  # row 6 is not a replacement: the job does not make one
    with pytest.raises(ValueError, match="row scores"):
        pick_rows(labels, {0: 1}, None, {"min_confidence": 0.5})


def test_ranking_is_accuracy_then_log_loss_then_grid_order() -> None:
    rows = [{"accuracy": 0.8, "log_loss": 0.5}, {"accuracy": 0.9, "log_loss": 0.9},
            {"accuracy": 0.9, "log_loss": 0.4}, {"accuracy": 0.8, "log_loss": 0.5}, {"accuracy": 0.9, "log_loss": None}]
    assert ranking(rows) == [2, 1, 4, 0, 3]


def test_validation_split_holds_out_part_of_each_class_and_never_a_whole_one() -> None:
    config = parse_config(TINY)
    train, _ = job_split(build_source(config.source, config.seed).records(), config.split, config.seed)
    fit, validation = validation_split(train, 0.34, config.seed)
    assert Counter(r.label for r in validation) == {c: 2 for c in range(10)}
    assert not {r.id for r in fit} & {r.id for r in validation} and len(fit) + len(validation) == len(train)
    assert [r.id for r in validation_split(train, 0.34, config.seed)[1]] == [r.id for r in validation]  # seeded
    single = [r for r in train if r.label == 0][:1]
    assert validation_split(single, 0.5, 0) == (single, [])


# -- the config ----------------------------------------------------------------------------

@pytest.mark.parametrize("tune, extra, message", [
    ({"sample": {"diffusion": {"guidance": [1]}}}, {}, r"tune\.sample\.diffusion: not a class-conditional"),
    ({"sample": {"cgan": {"guidance": [1]}}}, {}, r"tune\.sample\.cgan\.guidance: not a cgan sample field"),
    ({"sample": {"cgan": {"truncation": [-1]}}}, {}, r"tune\.sample\.cgan\.truncation: -1"),
    ({"sample": {"cgan": {"truncation": []}}}, {}, r"give at least one value"),
    ({"synthetic_share": [0.5, 1.0]}, {}, r"tune\.synthetic_share"),
    ({"synthetic_share": [0.5]}, {"output": {"include_real": False}}, r"include_real"),
    ({"synthetic_share": [0.1, 0.2, 0.3], "filter": {"min_confidence": [0.1, 0.2]}, "max_settings": 5}, {},
     r"6 settings, more than tune\.max_settings = 5"),
    ({}, {"augment": {"transforms": [{"name": "HorizontalFlip"}]}}, r"tune: scores class-conditional steps only"),
])
def test_bad_tune_sections_are_refused_naming_the_field(tune: dict, extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**TINY, **extra, "tune": tune})


def test_tune_needs_a_class_conditional_step() -> None:
    with pytest.raises(ConfigError, match="no class-conditional generate step"):
        parse_config({**{k: v for k, v in TINY.items() if k not in ("generate", "quota")}, "tune": {}})


def test_a_config_without_tune_hashes_as_before() -> None:
    assert "tune" not in parse_config(TINY).model_dump(mode="json")


# -- the stage in a job --------------------------------------------------------------------

@pytest.mark.usefixtures("ray_session")
def test_a_tuned_job_scores_the_grid_on_validation_and_makes_its_rows_with_the_first_ranked(tmp_path: Path) -> None:
    config = parse_config({**TINY, "tune": {"validation": 0.34, "sample": {"cgan": {"truncation": [0, 0.7]}},
                                           "synthetic_share": [0.0, 0.5, 0.7],
                                           "filter": {"min_confidence": [None, 0.5]}, "steps": 30}})
    out = tmp_path / "job"
    run_job(config, out)
    tuned = json.loads((out / "tune" / "tune.json").read_text())
    assert len(tuned["rows"]) == 9  # 1 real only + 2 shares x 2 truncations x 2 gates
    first = min(tuned["rows"], key=lambda row: row["rank"])
    assert tuned["chosen"] == first["setting"]
    order = sorted(tuned["rows"], key=lambda row: row["rank"])
    assert all((a["accuracy"], -a["log_loss"]) >= (b["accuracy"], -b["log_loss"]) for a, b in zip(order, order[1:]))
    gated = [row for row in tuned["rows"] if row["setting"]["filter"].get("min_confidence") == 0.5]
    assert sum(row["dropped"] for row in gated) > 0  # the gate was applied to the pools

    # Validation: held out of every fit, never the holdout.
    train, holdout = job_split(build_source(config.source, config.seed).records(), config.split, config.seed)
    fit, validation = validation_split(train, 0.34, config.seed)
    job = json.loads((out / "job.json").read_text())
    assert job["stages"]["fit"]["cgan"]["trained_on"] == records_digest(fit) == tuned["fit_records"]
    assert tuned["validation"]["ids_sha256"] == records_digest(validation)["ids_sha256"]
    assert not {r.id for r in validation} & {r.id for r in holdout}
    assert job["stages"]["tune"]["chosen"] == tuned["chosen"]

    # The shards are the chosen setting's: its share of the mix and its sampling values.
    rows = pq.read_table(out / "shards", columns=["source", "label", "generator"]).to_pylist()
    made = Counter(row["label"] for row in rows if row["source"] == "cgan")
    share = tuned["chosen"]["share"]
    expected = share_counts({c: 6 for c in range(10)}, share)
    if tuned["chosen"]["filter"].get("min_confidence") is None:
        assert made == Counter({c: n for c, n in expected.items() if n})
    else:
        assert all(made[c] <= n for c, n in expected.items())
    if made:
        used = {json.loads(row["generator"]["params_json"])["truncation"] for row in rows if row["source"] == "cgan"}
        assert used == {tuned["chosen"]["sample"]["cgan"]["truncation"] or None}  # cgan: 0 is off
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["tune"]["chosen"] == tuned["chosen"] and report["tune"]["rows"][0]["rank"] == 1
    assert "Tuning" in (out / "report" / "report.html").read_text()

    # A rerun reads the choice instead of tuning again; `synthaug report` keeps the section.
    before = (out / "tune" / "tune.json").stat().st_mtime_ns
    run_job(config, out)
    assert (out / "tune" / "tune.json").stat().st_mtime_ns == before
    report_job(out)
    assert json.loads((out / "report" / "report.json").read_text())["tune"]["chosen"] == tuned["chosen"]
