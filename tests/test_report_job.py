"""The report stage end to end: files, scores in the rows, the quality gate, recompute, compare,
and a deliberately bad generator caught by the numbers and the verdict."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from augment.shards import read_manifest, verify_shards
from jobs.compare import compare
from jobs.config import parse_config
from jobs.datasink import read_filtered
from jobs.runner import report_job, run_job

pytestmark = pytest.mark.usefixtures("ray_session")

FAST_REPORT = {"extractor_steps": 150, "utility": {"steps": 80}, "kid_subsets": 10}


def classical_config(**overrides: Any):
    raw = {
        "name": "report_tiny",
        "seed": 5,
        "source": {"kind": "digits", "image_size": 16, "color": "gray"},
        "split": {"holdout": 0.2},
        "quota": {"per_class": {str(c): 190 for c in range(10)}},
        "augment": {"transforms": [{"name": "Affine", "p": 1.0, "params": {"rotate": [-20, 20]}}]},
        "report": FAST_REPORT,
        "filter": {"min_confidence": 0.6},
        "output": {"rows_per_shard": 400},
    }
    raw.update(overrides)
    return parse_config(raw)


@pytest.fixture(scope="module")
def classical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    run_job(classical_config(), out)
    return out


def load(out: Path) -> dict[str, Any]:
    return json.loads((out / "report" / "report.json").read_text())


def test_report_json_has_the_floor_the_metrics_and_utility(classical: Path) -> None:
    report = load(classical)
    assert report["schema"] == 2 and report["classes"] == [str(c) for c in range(10)]
    assert report["real"]["train"] > 0 and report["real"]["holdout"] > 0
    domain = report["extractors"]["domain"]
    assert len(domain["sha256"]) == 64 and domain["holdout_accuracy"] > 0.8 and not domain["weak"]
    block = report["metrics"]["domain"]
    assert set(block) == {"floor", "classical"}
    for part in (block["floor"], block["classical"]):
        assert set(part["per_class"]) == set(report["classes"])
        overall = part["overall"]
        assert {"fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"} <= set(overall)
        assert overall["k"] == 5 and overall["k_effective"] == 5
        assert all(c["k_effective"] == min(5, c["n_real"] - 1, c["n_compared"] - 1) for c in part["per_class"].values())
    # Rotated real digits stay recognisable: near the floor on fidelity, useful downstream.
    assert block["classical"]["overall"]["precision"] > 0.5 * block["floor"]["overall"]["precision"]
    settings = report["utility"]["classification"]["settings"]
    assert set(settings) == {"real_only", "synthetic_only", "real_plus_synthetic"}
    assert settings["synthetic_only"]["accuracy"] > 0.5
    assert report["verdicts"]["classical"]["overall"]["grade"] in ("good", "fair")
    html = (classical / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "http" not in html.replace("http-equiv", "")
    # the pictures name their rows: ids under the sample grid and in the gallery of worst rows
    shown = pq.read_table(classical / "shards", columns=["id"], filters=[("source", "=", "classical")])
    ids = set(shown.column("id").to_pylist())
    assert "Rows to look at first" in html and "Nearest to a training image" in html
    assert len({i for i in ids if f"<code>{i}</code>" in html}) >= 80  # 8 per class in the sample grid alone
    assert re.search(r"\(<code>digits/\d{4}</code>\)", html)  # a row's nearest training image, by its id


def test_rows_carry_scores_and_the_filter_removes_before_publishing(classical: Path) -> None:
    rows = pq.read_table(classical / "shards", columns=["id", "source", "scores"]).to_pylist()
    synthetic = [r for r in rows if r["source"] == "classical"]
    assert synthetic and all(r["scores"]["realism"] is not None for r in synthetic)
    assert min(r["scores"]["confidence"] for r in synthetic) >= 0.6  # the filter held
    assert all(r["scores"] is None for r in rows if r["source"] == "real")
    filtered = [d for path in sorted((classical / "shards").glob("*.parquet")) for d in read_filtered(path)]
    assert filtered, "a 0.6 confidence filter on 20-degree rotations should remove some rows"
    assert all(d["reasons"] == ["low_confidence"] and d["confidence"] < 0.6 for d in filtered)
    assert not {d["id"] for d in filtered} & {r["id"] for r in rows}
    manifest = read_manifest(classical / "shards")
    assert manifest.total_rows == len(rows) and verify_shards(classical / "shards") == []
    report = load(classical)
    assert report["filter"]["filtered"] == len(filtered) and report["filter"]["by_reason"] == {
        "low_confidence": len(filtered)}
    assert sum(report["filter"]["by_class"].values()) == len(filtered)
    assert set(report["filter"]["by_class"]) <= set(report["classes"])


def test_report_command_recomputes_the_same_numbers(classical: Path) -> None:
    before = load(classical)
    shards_before = {p.name: p.read_bytes() for p in (classical / "shards").glob("*.parquet")}
    report_job(classical)
    after = load(classical)
    for report in (before, after):
        report.pop("seconds")
    assert after == before
    assert {p.name: p.read_bytes() for p in (classical / "shards").glob("*.parquet")} == shards_before


class _TinyInception(torch.nn.Module):
    """Stands in for the FID Inception TorchScript: N x 3 x 299 x 299 -> N x 16 (pooled)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x[:, :1], 4).flatten(1)


@pytest.mark.slow  # ~90 s on 2 cores: three extractors over a whole job
def test_three_feature_spaces_and_compare_side_by_side(classical: Path, tmp_path: Path) -> None:
    inception = tmp_path / "inception.pt"
    torch.jit.script(_TinyInception()).save(str(inception))
    other = tmp_path / "other"
    run_job(classical_config(name="report_other", filter=None,
                             report={**FAST_REPORT, "features": ["domain", "random", "inception"],
                                     "inception_path": str(inception)},
                             augment={"transforms": [{"name": "GaussNoise", "p": 1.0,
                                                      "params": {"std_range": [0.3, 0.5]}}]}), other)
    report = load(other)
    assert set(report["metrics"]) == {"domain", "random", "inception"}
    assert all("fd" in block["classical"]["overall"] for block in report["metrics"].values())
    html = (other / "report" / "report.html").read_text()
    assert "<th>FID</th>" in html and "<th>FD (random)</th>" in html  # only Inception's is called FID
    assert report["extractors"]["inception"]["sha256"] == hashlib.sha256(inception.read_bytes()).hexdigest()
    text, rows = compare(classical, other)
    assert "report_tiny" in text and "report_other" in text
    by_job = {(r["job"].split(" ")[0], r["features"]): r for r in rows}
    # Heavy noise is further from real digits than rotation, in the same feature space.
    assert by_job["report_other", "domain"]["fd"] > by_job["report_tiny", "domain"]["fd"]


def test_a_noise_generator_is_caught(tmp_path: Path) -> None:
    """An untrained cGAN draws noise: precision collapses, CAS falls to chance, verdict poor."""
    from augment.generators.cgan import ClassConditionalGAN
    from augment.generators.cgan_config import CGANFit
    from augment.generators.family import DataShape

    model = tmp_path / "untrained"
    ClassConditionalGAN(CGANFit(g_channels=8, d_channels=8, z_dim=8),
                        DataShape(16, 1, tuple(str(c) for c in range(10)))).save_pretrained(model)
    config = parse_config({
        "name": "noise", "seed": 2, "source": {"kind": "digits", "image_size": 16, "color": "gray"},
        "split": {"holdout": 0.2}, "quota": {"per_class": {str(c): 190 for c in range(10)}},
        "generate": {"kind": "cgan", "from_pretrained": str(model)},
        "report": {**FAST_REPORT, "sweep": [0, 0.5], "sweep_per_class": 10}, "output": {"rows_per_shard": 400},
    })
    out = tmp_path / "out"
    run_job(config, out)
    report = load(out)
    sweep = report["sweep"]["cgan"]  # the family orders its knob: truncation off first, then descending
    assert sweep["parameter"] == "truncation" and [(r["value"], r["label"]) for r in sweep["rows"]] == \
        [(0, "off"), (0.5, "0.5")]
    assert all(0 <= r["precision"] <= 1 and r["confidence"] is not None for r in sweep["rows"])
    assert "Sweep of cgan over truncation" in (out / "report" / "report.html").read_text()
    mine, floor = report["metrics"]["domain"]["cgan"]["overall"], report["metrics"]["domain"]["floor"]["overall"]
    assert mine["precision"] < 0.5 * floor["precision"]
    assert mine["fd"] > 5 * floor["fd"]
    assert report["utility"]["classification"]["classification_accuracy_score"] < 0.35
    verdict = report["verdicts"]["cgan"]["overall"]
    assert verdict["grade"] == "poor" and "unrealistic" in verdict["line"]
