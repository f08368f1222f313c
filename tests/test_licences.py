"""Licences: the values, where they come from (sources, config, checkpoints), the shard columns
`licence` / `parent_licence`, and the report's rows-per-licence block."""

from __future__ import annotations

import json
import logging
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from augment.errors import ConfigError
from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.checkpoint_licence import LICENCE_FILE, checkpoint_licence, write_checkpoint_licence
from augment.generators.family import Family, TrainingData
from augment.licences import DIGITS_LICENCE, PROJECT_LICENCE, UNKNOWN, check_licence, combine_licences
from augment.report.licences import licence_counts, licence_section, licence_summary, split_block
from augment.sample import Sample
from augment.shards import samples_to_table, table_to_samples, write_manifest, write_shard
from augment.sources.base import SourceRecord
from augment.store import Folder
from jobs.config import QuotaConfig, parse_config
from jobs.plan import make_plan
from jobs.registry import register, unregister
from jobs.workers import ShardWorker

REPO = Path(__file__).resolve().parent.parent
DIGITS = {"kind": "digits", "image_size": 8, "color": "gray"}
FLIP = [{"name": "HorizontalFlip", "p": 1.0}]
TINT_LICENCE = "CC-BY-NC-4.0"


# ---------------------------------------------------------------- values


def test_licence_values_are_checked_and_combined() -> None:
    assert check_licence("CC-BY-4.0") == "CC-BY-4.0" and check_licence("proprietary") == "proprietary"
    for bad, why in (("", "must not be empty"), ("  ", "must not be empty"), (" MIT", "leading or trailing"),
                     ("a\nb", "printable"), ("x" * 101, "1 to 100"), (3, "must be a string")):
        with pytest.raises(ValueError, match=why):
            check_licence(bad, "here")
    assert combine_licences(["MIT", "CC-BY-4.0", "MIT"]) == "CC-BY-4.0 AND MIT"
    assert combine_licences([None, "MIT"]) == "MIT AND unknown"  # an unknown part stays visible
    assert combine_licences(["MIT OR Apache-2.0", "CC0-1.0"]) == "CC0-1.0 AND (MIT OR Apache-2.0)"
    assert combine_licences([]) == UNKNOWN


def test_the_project_licence_is_pyprojects() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == PROJECT_LICENCE


def config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"source": {**DIGITS}, "quota": {"multiplier": 2.0}, "augment": {"transforms": FLIP}}
    raw.update(overrides)
    return raw


def test_a_bad_licence_in_the_config_is_refused_naming_field_and_value() -> None:
    with pytest.raises(ConfigError, match=r"source\.licence: '' — a licence must not be empty"):
        parse_config(config(source={**DIGITS, "licence": ""}))
    with pytest.raises(ConfigError, match=r"source\.licence: 4\.0 — a licence must be a string"):
        parse_config(config(source={**DIGITS, "licence": 4.0}))
    with pytest.raises(ConfigError, match=r"generate\[0\]\.licence: 'MIT\\n' — licence 'MIT\\n' must be"):
        parse_config({"source": DIGITS, "generate": [{"kind": "cyclegan", "from_pretrained": "x",
                                                        "licence": "MIT\n"}]})
    with pytest.raises(ConfigError, match=r"augment\.licence: 'MIT' — Extra inputs are not permitted"):
        parse_config(config(augment={"transforms": FLIP, "licence": "MIT"}))  # classical rows keep the parent's


def test_an_unset_licence_leaves_the_dump_and_hash_as_before() -> None:
    plain = parse_config(config())
    assert "licence" not in plain.model_dump(mode="json")["source"]
    named = parse_config(config(source={**DIGITS, "licence": "CC0-1.0"}))
    assert named.source.licence == "CC0-1.0" and named.content_hash() != plain.content_hash()
    assert parse_config(named.model_dump(mode="json")).content_hash() == named.content_hash()


# ---------------------------------------------------------------- checkpoints


def safetensors(path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.zeros(2, np.float32)}, str(path), metadata=metadata)


def test_checkpoint_metadata_names_the_licence(tmp_path: Path) -> None:
    assert checkpoint_licence(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"format": "x", "license": "apache-2.0"}))
    safetensors(tmp_path / "unet" / "model.safetensors", {"modelspec.license": "apache-2.0"})
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# A model\n")
    assert checkpoint_licence(tmp_path) == "apache-2.0"  # three places that agree
    safetensors(tmp_path / "g.safetensors", {"licence": "MIT"})
    with pytest.raises(ValueError, match=r"different licences .*config.json: license = 'apache-2.0'.*"
                                         r"g.safetensors: __metadata__.licence = 'MIT'.*set the step's `licence:`"):
        checkpoint_licence(tmp_path)
    (tmp_path / "g.safetensors").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"license": ["mit"]}))
    with pytest.raises(ValueError, match=r"config.json: license: a licence must be a string"):
        checkpoint_licence(tmp_path)


def test_the_job_records_a_fitted_models_licence_once(tmp_path: Path) -> None:
    write_checkpoint_licence(tmp_path, "CC-BY-4.0 AND MIT")
    assert json.loads((tmp_path / LICENCE_FILE).read_text())["licence"] == "CC-BY-4.0 AND MIT"
    before = checkpoint_sha256(tmp_path)
    write_checkpoint_licence(tmp_path, "CC-BY-4.0 AND MIT")  # a rerun leaves the bytes (and sha256) alone
    assert checkpoint_sha256(tmp_path) == before and checkpoint_licence(tmp_path) == "CC-BY-4.0 AND MIT"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_step_records_its_own_licence_else_the_checkpoints_else_unknown(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from jobs.runner import step_licence

    raw = {"source": DIGITS, "generate": [{"kind": "cyclegan", "from_pretrained": str(tmp_path)}]}
    step = parse_config(raw).generate[0]
    with caplog.at_level(logging.WARNING, logger="synthaug"):
        assert step_licence(step, tmp_path, "generate[0] (cyclegan)") == UNKNOWN
    assert "names no licence" in caplog.text  # said, never guessed
    safetensors(tmp_path / "generator.safetensors", {"license": "CC-BY-SA-4.0"})
    assert step_licence(step, tmp_path, "here") == "CC-BY-SA-4.0"
    named = parse_config({**raw, "generate": [{**raw["generate"][0], "licence": "proprietary"}]}).generate[0]
    assert step_licence(named, tmp_path, "here") == "proprietary"
    (tmp_path / "config.json").write_text(json.dumps({"licence": "MIT"}))
    with pytest.raises(ConfigError, match=r"generate\[0\] \(cyclegan\): .*different licences"):
        step_licence(step, tmp_path, "generate[0] (cyclegan)")
    assert step_licence(named, tmp_path, "here") == "proprietary"  # the config's settles it


# ---------------------------------------------------------------- sources and shards


def test_sources_give_the_licences_they_know() -> None:
    from augment.sources.digits import DigitsSource
    from simulators.source import SimulatorSource
    from simulators.digits import DigitsControls

    assert DigitsSource(8).load(SourceRecord("digits/0000", 0, "0")).licence == DIGITS_LICENCE == "CC-BY-4.0"
    frames = SimulatorSource("digits", frames=1, seed=0, controls=DigitsControls(), size=16)
    assert frames.load(frames.records()[0]).licence == PROJECT_LICENCE


def sample(i: int, licence: str | None, parent_licence: str | None = None) -> Sample:
    return Sample(f"s{i}", np.full((4, 4, 1), i, np.uint8), label=0, licence=licence, parent_licence=parent_licence,
                  parent_id=None if parent_licence is None else "s0", source="real" if parent_licence is None
                  else "classical")


def test_shards_round_trip_the_columns_and_a_parquet_source_keeps_a_rows_licence(tmp_path: Path) -> None:
    from augment.sources.parquet import ParquetSource

    rows = [sample(0, "CC0-1.0"), sample(1, "CC0-1.0", "CC0-1.0"), sample(2, None)]
    table = samples_to_table(rows, ["a"])
    assert table.schema.names[-2:] == ["licence", "parent_licence"]
    back = table_to_samples(table)
    assert [(s.licence, s.parent_licence) for s in back] == [("CC0-1.0", None), ("CC0-1.0", "CC0-1.0"), (None, None)]
    entry = write_shard(table, tmp_path / "part-00000.parquet")
    write_manifest(tmp_path, [entry], ["a"])
    source = ParquetSource(tmp_path)
    assert [source.load(r).licence for r in source.records()] == ["CC0-1.0", "CC0-1.0", None]
    with pytest.raises(ValueError, match="licence must be a string"):
        samples_to_table([sample(3, 3)], ["a"])  # type: ignore[arg-type]


def plan_over(records: list[SourceRecord], names: list[str]) -> Any:
    return make_plan(class_names=names, train=records, holdout=[], quota=QuotaConfig(multiplier=2.0), seed=5,
                     rows_per_shard=100, include_real=True)


def worker_rows(source: dict[str, Any], records: list[SourceRecord], names: list[str]) -> list[dict[str, Any]]:
    """The rows a shard worker makes (called directly, no Ray) for real records + classical children."""
    plan = plan_over(records, names)
    table = ShardWorker(source, FLIP, names, png_compress_level=1)({"spec": np.array([plan.train[0].to_json()],
                                                                                     dtype=object)})
    return table.select(["source", "parent_id", "licence", "parent_licence"]).to_pylist()


def test_real_rows_take_the_sources_licence_and_classical_rows_their_parents() -> None:
    records = [SourceRecord(f"digits/{i:04d}", i % 10, str(i)) for i in range(10)]
    rows = worker_rows(DIGITS, records, [str(d) for d in range(10)])
    kinds = Counter((r["source"], r["licence"], r["parent_licence"]) for r in rows)
    assert kinds == {("real", "CC-BY-4.0", None): 10, ("classical", "CC-BY-4.0", "CC-BY-4.0"): 10}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lic") / "real"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_a_folder_source_names_no_licence_so_its_rows_record_unknown(image_folder: Path) -> None:
    from jobs.config import FolderSourceConfig
    from jobs.sources import build_source

    source = {"kind": "folder", "root": str(image_folder)}
    records = build_source(FolderSourceConfig(kind="folder", root=image_folder)).records()
    rows = worker_rows(source, records, ["a", "b"])
    assert {(r["source"], r["licence"], r["parent_licence"]) for r in rows} == {
        ("real", UNKNOWN, None), ("classical", UNKNOWN, UNKNOWN)}
    named = worker_rows({**source, "licence": "LicenseRef-ours"}, records, ["a", "b"])
    assert {(r["licence"], r["parent_licence"]) for r in named} == {("LicenseRef-ours", None),
                                                                     ("LicenseRef-ours", "LicenseRef-ours")}


# ---------------------------------------------------------------- a job with a pretrained generator


class TintSampler:
    """Brightens its parent by `shift`; saved as `tint.safetensors`, whose header names its licence."""

    class_names: tuple[str, ...] = ()

    def __init__(self, shift: int, checkpoint: str | None = None) -> None:
        self.shift, self.checkpoint_sha256 = shift, checkpoint

    def sample(self, request: SampleRequest, **kwargs: Any) -> list[Sample]:
        return [Sample(request.ids[i], np.clip(parent.image.astype(np.int64) + self.shift, 0, 255).astype(np.uint8),
                       request.labels[i], seed=seed)
                for i, (parent, seed) in enumerate(zip(request.parents, request.seeds, strict=True))]

    def save_pretrained(self, directory: Path, licence: str | None = None) -> None:
        metadata = None if licence is None else {"licence": licence}
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"shift": np.array([self.shift], np.int64)}, str(directory / "tint.safetensors"), metadata=metadata)

    @classmethod
    def from_pretrained(cls, directory: Path) -> TintSampler:
        refuse_pickles(directory)
        return cls(int(load_file(str(directory / "tint.safetensors"))["shift"][0]), checkpoint_sha256(directory))


class LicTint(Family):
    """A parent family with nothing to fit: only ever loaded `from_pretrained`."""

    name = "lic_tint"
    request = "parent"

    def build(self) -> dict[str, Any]:
        return {}

    def optimizers(self, modules: dict[str, Any]) -> dict[str, Any]:
        return {}

    def make_step(self, data: TrainingData, device: Any, rank: int) -> Any:
        raise AssertionError("nothing to train")

    def sampler(self, state: Any) -> TintSampler:
        return TintSampler(40)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> TintSampler:
        return TintSampler.from_pretrained(directory)


@pytest.fixture(scope="module")
def tint_job(image_folder: Path, tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """Real rows (the source's licence set in the config), rows a pretrained parent generator made
    from them (its checkpoint's licence) and classical children: one tiny job, no fit."""
    from jobs.runner import run_job

    register(LicTint)
    try:
        folder = tmp_path_factory.mktemp("tint")
        TintSampler(40).save_pretrained(folder / "ckpt", licence=TINT_LICENCE)
        out = folder / "out"
        run_job(parse_config({
            "name": "licences", "seed": 1, "source": {"kind": "folder", "root": str(image_folder),
                                                      "licence": "CC0-1.0"},
            "split": {"holdout": 0.25}, "quota": {"multiplier": 3.0},
            "generate": [{"kind": "lic_tint", "from_pretrained": str(folder / "ckpt")}],
            "augment": {"transforms": FLIP}, "report": {"enabled": False}, "execution": {"num_workers": 1},
        }), out)
    finally:
        unregister(LicTint.name)
    return out


def test_every_row_records_its_own_and_its_parents_licence(tint_job: Path) -> None:
    rows = pq.read_table(tint_job / "shards", columns=["id", "source", "parent_id", "licence",
                                                       "parent_licence"]).to_pylist()
    by_id = {r["id"]: r for r in rows}
    kinds = Counter((r["source"], r["licence"], r["parent_licence"]) for r in rows)
    real = kinds[("real", "CC0-1.0", None)]
    assert real and kinds == {("real", "CC0-1.0", None): real, ("lic_tint", TINT_LICENCE, "CC0-1.0"): real,
                              ("classical", "CC0-1.0", "CC0-1.0"): real}
    assert all(by_id[r["parent_id"]]["licence"] == r["parent_licence"] for r in rows if r["parent_id"])
    holdout = pq.read_table(tint_job / "holdout", columns=["licence", "parent_licence"]).to_pylist()
    assert holdout and all(r == {"licence": "CC0-1.0", "parent_licence": None} for r in holdout)
    job = json.loads((tint_job / "job.json").read_text())
    assert job["stages"]["fit"]["lic_tint"]["licence"] == TINT_LICENCE


def test_the_report_block_sums_the_shard_rows(tint_job: Path) -> None:
    from jobs.inspect import inspect_job

    block = licence_summary(tint_job)
    for split, sub in (("train", "shards"), ("holdout", "holdout")):
        rows = pq.read_table(tint_job / sub, columns=["licence", "parent_licence"]).to_pylist()
        assert block[split]["rows"] == len(rows) == sum(block[split]["by_licence"].values())
        assert block[split]["by_licence"] == dict(Counter(r["licence"] for r in rows))
        assert {(p["licence"], p["parent_licence"]): p["rows"] for p in block[split]["by_pair"]} == \
            dict(Counter((r["licence"], r["parent_licence"]) for r in rows))
    made = block["train"]["by_licence"][TINT_LICENCE]
    assert block["train"]["by_licence"] == {"CC0-1.0": 2 * made, TINT_LICENCE: made}  # real + classical, tinted
    page = licence_section({"licences": block})
    assert "<h2>Licences</h2>" in page and TINT_LICENCE in page and f"{3 * made} rows" in page
    text, problems = inspect_job(tint_job)
    assert problems == [] and f"{TINT_LICENCE} from CC0-1.0: {made}" in text


def test_shards_from_before_licences_count_as_unknown(tmp_path: Path) -> None:
    table = samples_to_table([sample(0, "MIT"), sample(1, "MIT", "MIT")], ["a"]).drop_columns(
        ["licence", "parent_licence"])
    entry = write_shard(table, tmp_path / "old.parquet")
    write_manifest(tmp_path, [entry], ["a"])
    counts = licence_counts(Folder(tmp_path))
    assert counts == {(UNKNOWN, None): 1, (UNKNOWN, UNKNOWN): 1}
    assert split_block(counts)["by_licence"] == {UNKNOWN: 2}
