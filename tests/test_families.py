"""A family defined here, registered without touching the package, runs a whole job for each
request kind: class ids, a parent record, a label map.

The three toy families are also the README's example of "Writing a generator family".
`ToyColour` learns each class's mean colour by gradient descent through the shared trainer;
`ToyTint` (parent) and `ToyPaint` (label map) have nothing to train (`steps: 0`): their
"weights" are a colour table drawn from the seed, saved as safetensors like any model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pydantic import Field
from safetensors.torch import load_file, save_file

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.family import Family, Hyperparameters, TrainingData
from augment.generators.trainer import TrainState
from augment.sample import GeneratorInfo, Sample
from augment.shards import read_manifest, verify_shards
from augment.errors import ConfigError
from jobs.config import parse_config
from jobs.registry import families, register, unregister
from jobs.runner import run_job

# -- the toy families -----------------------------------------------------------------------


class ToyFit(Hyperparameters):
    """The `fit:` section, and what the toy's modules are built from."""

    steps: int = Field(30, ge=0, le=10_000)
    lr: float = Field(0.5, gt=0.0, le=10.0)
    batch_size: int = Field(16, ge=1, le=4096)
    ema_decay: float = Field(0.9, gt=0.0, lt=1.0)


class NothingToFit(Hyperparameters):
    """A family without weights to learn still says so: zero steps."""

    steps: int = Field(0, ge=0, le=0)


class ToySample(Hyperparameters):
    """The `sample:` section: keyword arguments of `ToySampler.sample`."""

    noise: float = Field(6.0, ge=0.0, le=64.0, description="grey levels of seeded noise")
    batch_size: int = Field(16, ge=1, le=4096)


class Palette(torch.nn.Module):
    """One colour per class in [0, 1]."""

    def __init__(self, classes: int, channels: int, generator: torch.Generator) -> None:
        super().__init__()
        self.colours = torch.nn.Parameter(torch.rand(classes, channels, generator=generator))


class ToySampler:
    """A colour table and how to paint with it: a class's colour, a tinted parent, a painted map."""

    def __init__(self, kind: str, table: np.ndarray, class_names: tuple[str, ...], image_size: int,
                 checkpoint: str | None = None) -> None:
        self.kind, self.table, self.class_names, self.image_size = kind, table, class_names, image_size
        self.checkpoint_sha256 = checkpoint

    def sample(self, request: SampleRequest, *, noise: float = 6.0, batch_size: int = 16) -> list[Sample]:
        out = []
        for i, seed in enumerate(request.seeds):
            rng = np.random.default_rng(seed)  # each sample from its own seed only
            if self.kind == "class":
                size, channels = self.image_size, self.table.shape[1]
                base = np.broadcast_to(self.table[request.labels[i]] * 255, (size, size, channels))
            elif self.kind == "parent":
                base = 0.5 * request.parents[i].image + 127.0 * self.table[0][: request.parents[i].image.shape[2]]
            else:
                base = self.table[np.minimum(request.label_maps[i], len(self.table) - 1)] * 255
            image = np.clip(base + rng.normal(0.0, noise, base.shape), 0, 255).round().astype(np.uint8)
            info = GeneratorInfo(self.kind, self.checkpoint_sha256, json.dumps({"noise": noise}))
            out.append(Sample(request.ids[i], image, request.labels[i], seed=seed, generator=info))
        return out

    def save_pretrained(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"table": torch.from_numpy(np.ascontiguousarray(self.table, np.float32))},
                  str(directory / "toy.safetensors"))
        meta = {"kind": self.kind, "class_names": list(self.class_names), "image_size": self.image_size}
        (directory / "toy.json").write_text(json.dumps(meta))

    @classmethod
    def from_pretrained(cls, directory: Path) -> ToySampler:
        refuse_pickles(directory)
        meta = json.loads((directory / "toy.json").read_text())
        table = load_file(str(directory / "toy.safetensors"))["table"].numpy()
        return cls(meta["kind"], table, tuple(meta["class_names"]), meta["image_size"], checkpoint_sha256(directory))


class ToyColour(Family):
    """Class-conditional: learns each class's mean colour (MSE, SGD, EMA)."""

    name = "toy_colour"
    request = "class"
    Fit = ToyFit
    Sample = ToySample
    sweep_knob = "noise"
    ema_modules = ("palette",)

    def build(self) -> dict[str, torch.nn.Module]:
        generator = torch.Generator().manual_seed(self.seed)
        return {"palette": Palette(len(self.shape.class_names), self.shape.channels, generator)}

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"palette": torch.optim.SGD(modules["palette"].parameters(), lr=self.fit.lr)}

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> Any:
        means = torch.from_numpy(data.images.reshape(len(data.images), -1, data.images.shape[3]).mean(1) / 255)
        labels = torch.from_numpy(data.labels)

        def step(state: TrainState, k: int) -> dict[str, torch.Tensor]:
            # 1. a batch drawn from the state's own stream; 2. MSE to the images' mean colours
            index = torch.randint(len(labels), (self.fit.batch_size,), generator=state.rng)
            colours = state.modules["palette"].colours[labels[index].to(device)]
            loss = torch.nn.functional.mse_loss(colours, means[index].float().to(device))
            optimizer = state.optimizers["palette"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach()}

        return step

    def sampler(self, state: TrainState) -> ToySampler:
        table = state.ema["palette"].colours.detach().cpu().numpy()
        return ToySampler("class", table, self.shape.class_names, self.shape.image_size)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> ToySampler:
        return ToySampler.from_pretrained(directory)


class _Untrained(Family):
    """Nothing to fit: the table comes from the seed."""

    Fit = NothingToFit
    Sample = ToySample
    kind = ""

    def build(self) -> dict[str, torch.nn.Module]:
        return {}

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {}

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> Any:
        raise AssertionError("nothing to train")

    def sampler(self, state: TrainState) -> ToySampler:
        table = np.random.default_rng(self.seed).random((max(16, len(self.shape.class_names)), 3))
        return ToySampler(self.kind, table, self.shape.class_names, self.shape.image_size)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> ToySampler:
        return ToySampler.from_pretrained(directory)


class ToyTint(_Untrained):
    """Parent: a tinted copy of the record; its labels are carried over by the job."""

    name = "toy_tint"
    request = "parent"
    kind = "parent"


class ToyPaint(_Untrained):
    """Label map: each class id painted in its colour."""

    name = "toy_paint"
    request = "label_map"
    kind = "label_map"


class ToyShift(ToyColour):
    """Domain transfer: learns the target domain's mean colour and tints parents towards it."""

    name = "toy_shift"
    request = "parent"
    needs_target = True
    sweep_knob = None

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> Any:
        target = torch.from_numpy(data.target.reshape(-1, data.target.shape[3]).mean(0) / 255).float()

        def step(state: TrainState, k: int) -> dict[str, torch.Tensor]:
            loss = torch.nn.functional.mse_loss(state.modules["palette"].colours[0], target.to(device))
            optimizer = state.optimizers["palette"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach()}

        return step

    def sampler(self, state: TrainState) -> ToySampler:
        table = state.ema["palette"].colours.detach().cpu().numpy()
        return ToySampler("parent", table, self.shape.class_names, self.shape.image_size)


TOYS = (ToyColour, ToyTint, ToyPaint, ToyShift)


@pytest.fixture(scope="module")
def toys() -> Any:
    for family in TOYS:
        register(family)
    yield
    for family in TOYS:
        unregister(family.name)


pytestmark = pytest.mark.usefixtures("ray_session", "toys")

STREET = {"kind": "simulator", "family": "street", "frames": 10, "image_size": 32}
SMALL_REPORT = {"extractor_steps": 20, "utility": {"steps": 10, "segmentation": False}, "max_per_source": 200}


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def rows_by_id(folder: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in pq.read_table(folder).to_pylist()}


def test_registered_families_are_listed_and_validated() -> None:
    assert {"diffusion", "cgan", "toy_colour", "toy_tint", "toy_paint"} <= set(families())
    with pytest.raises(ValueError, match="registered already"):
        register(type("Other", (ToyTint,), {"__module__": __name__}))
    with pytest.raises(ValueError, match="reserved"):
        register(type("Real", (ToyTint,), {"name": "real", "__module__": __name__}))
    with pytest.raises(ConfigError, match=r"unknown generator kind 'toy'; registered: cgan, controlnet, cycada, cyclegan, diffusion, spade, toy_colour"):
        parse_config({"source": {"kind": "digits"}, "generate": [{"kind": "toy"}]})


def assert_labels_carried(rows: dict[str, dict[str, Any]], kind: str, columns: tuple[str, ...]) -> list[dict]:
    """Rows of `kind` keep their parent record's annotations byte for byte; returns them."""
    made = [r for r in rows.values() if r["source"] == kind]
    for row in made:
        parent = rows[row["parent_id"]]
        assert row["id"].startswith(parent["id"] + f"~{kind}") and row["seed"] is not None
        assert len(row["generator"]["checkpoint_sha256"]) == 64
        assert row["image"]["bytes"] != parent["image"]["bytes"]
        for column in columns:
            assert row[column] == parent[column], column  # PNG bytes and boxes byte for byte
    return made


def test_one_job_mixes_the_three_request_kinds_and_the_report_names_each(tmp_path: Path) -> None:
    """Simulator digits (labels, masks, boxes) → a class step that is fitted, a parent step and a
    label-map step in one job; quota 4x = real + 2 mapped rows each + class-conditional rows."""
    config = parse_config({
        "seed": 4, "source": {"kind": "simulator", "family": "digits", "frames": 120, "image_size": 16},
        "split": {"holdout": 0.25}, "quota": {"multiplier": 4.0},
        "generate": [{"kind": "toy_colour", "checkpoint_every": 10, "sample": {"noise": 4.0}},
                     {"kind": "toy_tint"}, {"kind": "toy_paint"}],
        "report": {**SMALL_REPORT, "reference": {"kind": "digits", "image_size": 16}}, "output": {"rows_per_shard": 100},
    })
    run_job(config, tmp_path / "out")
    out = tmp_path / "out"
    assert verify_shards(out / "shards") == []
    manifest = read_manifest(out / "shards")
    real = manifest.source_counts["simulator"]
    assert manifest.source_counts == {"simulator": real, "toy_tint": real, "toy_paint": real, "toy_colour": real}
    rows = rows_by_id(out / "shards")
    assert_labels_carried(rows, "toy_tint", ("label", "label_name", "mask", "instances", "depth", "boxes"))
    assert_labels_carried(rows, "toy_paint", ("label", "label_name", "mask", "instances", "depth", "boxes"))
    made = [r for r in rows.values() if r["source"] == "toy_colour"]
    assert all(r["parent_id"] is None for r in made) and len({r["generator"]["checkpoint_sha256"] for r in made}) == 1
    folder = out / "checkpoints" / "toy_colour"
    assert (folder / "model" / "toy.safetensors").is_file()
    assert sorted(p.name for p in (folder / "grids").iterdir())[-1] == "step-00000030.png"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["toy_colour", "toy_paint", "toy_tint"]
    report = json.loads((out / "report" / "report.json").read_text())
    page = (out / "report" / "report.html").read_text()
    for kind in ("toy_colour", "toy_tint", "toy_paint"):
        assert kind in report["verdicts"] and kind in page
    # The fit moved the palette towards the images' mean colours: its classes differ now.
    sampler = ToySampler.from_pretrained(folder / "model")
    assert sampler.table.shape == (10, 3) and float(sampler.table.std(axis=0).max()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("step", [
    {"kind": "toy_tint", "per_parent": 2},
    {"kind": "toy_paint", "maps": "augmented", "per_parent": 2,
     "transforms": [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "p": 1.0, "params": {"rotate": [-20, 20]}}]},
], ids=["parent", "augmented-label-map"])
def test_street_frames_keep_instances_and_depth_or_their_moved_map(step: dict, tmp_path: Path) -> None:
    """Street frames carry instances and depth too; an augmented map replaces the mask."""
    config = parse_config({"seed": 9, "source": STREET, "generate": [step], "report": {"enabled": False},
                           "output": {"rows_per_shard": 8}})
    run_job(config, tmp_path / "out")
    out, kind = tmp_path / "out", step["kind"]
    assert verify_shards(out / "shards") == []
    rows = rows_by_id(out / "shards")
    parents = [r for r in rows.values() if r["source"] == "simulator"]
    if step.get("maps") != "augmented":
        made = assert_labels_carried(rows, kind, ("label", "label_name", "mask", "instances", "depth", "boxes"))
    else:  # the row's mask is the moved map it was painted from; the rest travels with it
        made = assert_labels_carried(rows, kind, ("label", "label_name"))
        assert any(r["mask"] != rows[r["parent_id"]]["mask"] for r in made), "no map was moved"
    assert len(made) == len(parents) * step["per_parent"] > 0


def test_a_label_map_step_paints_simulator_frames_masks(tmp_path: Path) -> None:
    """`maps: simulator`: fitted on the source's (image, mask) pairs, painting the masks of other
    frames; the rows keep each frame's layers byte for byte, the frames themselves are not written."""
    from jobs.maps import map_frames
    from simulators.source import get_family

    step = {"kind": "toy_paint", "maps": "simulator", "per_parent": 2,
            "simulator": {"family": "street", "frames": 5, "image_size": 32}}
    config = parse_config({"seed": 2, "source": {**STREET, "frames": 6}, "generate": [step],
                           "report": {"enabled": False}, "output": {"rows_per_shard": 4}})
    run_job(config, tmp_path / "out")
    out = tmp_path / "out"
    assert verify_shards(out / "shards") == []
    rows = rows_by_id(out / "shards")
    painted = [r for r in rows.values() if r["source"] == "toy_paint"]
    assert len(painted) == 10 and len([r for r in rows.values() if r["source"] == "simulator"]) == 5  # 6 - holdout
    frames = map_frames(config, list(get_family("street").class_names))["toy_paint"]
    by_id = {r.id: r for r in frames.records()}
    assert {r["parent_id"] for r in painted} == set(by_id) and not set(by_id) & set(rows)
    for row in painted:
        frame = frames.load(by_id[row["parent_id"]])
        assert row["id"].startswith(row["parent_id"] + "~toy_paint")
        assert np.array_equal(png(row["mask"]["bytes"]), frame.mask)
        assert np.array_equal(png(row["instances"]["bytes"]), frame.instances)
        assert row["label"] is None and len(row["generator"]["checkpoint_sha256"]) == 64


def write_target(root: Path, sizes: list[tuple[int, int]], colour: tuple[int, int, int], grey: int = 0) -> Path:
    """A flat folder of tiny images of one colour (plus `grey` greyscale ones), in mixed sizes."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        pixels = np.clip(np.array(colour) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"real_{i:02d}.png")
    for i in range(grey):
        Image.fromarray(np.full((16, 16), 90, np.uint8), mode="L").save(root / f"grey_{i:02d}.png")
    return root


def test_a_transfer_step_fits_on_its_target_domain_and_the_report_compares_with_it(tmp_path: Path) -> None:
    """A family that `needs_target` gets the target's training split, converted to the source's
    size and channels (mixed sizes, a grey image among RGB); its rows keep their parents' labels;
    the report's real side is the target."""
    target = write_target(tmp_path / "real", [(20, 20), (24, 16), (16, 24)] * 5, (200, 40, 40), grey=1)
    config = parse_config({
        "seed": 1, "source": {"kind": "simulator", "family": "digits", "frames": 60, "image_size": 16},
        "generate": [{"kind": "toy_shift", "checkpoint_every": 30, "fit": {"steps": 60, "lr": 2.0},
                      "target": {"kind": "folder", "root": str(target), "layout": "flat"}}],
        "report": SMALL_REPORT, "output": {"rows_per_shard": 50},
    })
    run_job(config, tmp_path / "out")
    out = tmp_path / "out"
    assert verify_shards(out / "shards") == []
    rows = rows_by_id(out / "shards")
    made = assert_labels_carried(rows, "toy_shift", ("label", "label_name", "mask", "boxes"))
    assert len(made) == len([r for r in rows.values() if r["source"] == "simulator"]) > 0
    # 13 of 16 target images are fitted (holdout 0.2): their mean colour, mostly red
    table = ToySampler.from_pretrained(out / "checkpoints" / "toy_shift" / "model").table
    assert table[0][0] > 0.6 and table[0][1] < 0.35 and table[0][2] < 0.35
    report = json.loads((out / "report" / "report.json").read_text())
    assert "transfer target (folder)" in json.dumps(report)


@pytest.mark.parametrize("target, message", [
    (None, r"generate\[0\]: target: toy_shift learns a mapping to a target domain"),
    ({"kind": "folder", "root": "empty", "layout": "flat"}, r"empty: no image files"),
    ({"kind": "folder", "root": "few", "layout": "flat"}, r"generate\[0\] \(toy_shift\)\.target: 2 usable target "
                                                         r"training images \(2 in the training split, 0 unusable\); "
                                                         r"toy_shift needs at least 8"),
    ({"kind": "folder", "root": "few", "layout": "sideways"}, r"generate\[0\]\.target\.layout: 'sideways'"),
])
def test_bad_targets_are_refused_before_fitting(target: dict | None, message: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_target(tmp_path / "few", [(16, 16)] * 3, (0, 0, 200))
    step: dict[str, Any] = {"kind": "toy_shift", "fit": {"steps": 2}}
    if target is not None:
        step["target"] = {**target, "root": str(tmp_path / target["root"])}
    with pytest.raises(ConfigError, match=message):
        config = parse_config({"source": {"kind": "simulator", "family": "digits", "frames": 20, "image_size": 16},
                               "split": {"holdout": 0.0}, "generate": [step], "report": {"enabled": False}})
        run_job(config, tmp_path / "out")



class ToyPicky(ToyShift):
    """Learns only from sources without class labels (as CyCADA needs labels or masks)."""

    name = "toy_picky"

    def check_data(self, data: TrainingData) -> None:
        if (data.labels >= 0).any():
            raise ValueError("toy_picky: needs unlabelled images, the training data have class labels")


def test_a_family_refuses_data_it_cannot_learn_from_before_fitting(tmp_path: Path) -> None:
    """`Family.check_data` runs in the driver: its refusal is a config error naming the step,
    raised before Ray Train (no checkpoint folder appears). CyCADA's refusal of data without
    labels or masks is the same hook."""
    from augment.generators.family import DataShape
    from domain_transfer.cycada_family import CyCADAFamily, CyCADAFit

    target = write_target(tmp_path / "real", [(16, 16)] * 12, (200, 0, 0))
    register(ToyPicky)
    try:
        config = parse_config({
            "source": {"kind": "simulator", "family": "digits", "frames": 12, "image_size": 16},
            "generate": [{"kind": "toy_picky", "fit": {"steps": 2},
                          "target": {"kind": "folder", "root": str(target), "layout": "flat"}}],
            "report": {"enabled": False}})
        with pytest.raises(ConfigError, match=r"generate\[0\] \(toy_picky\): toy_picky: needs unlabelled"):
            run_job(config, tmp_path / "out")
    finally:
        unregister(ToyPicky.name)
    assert not (tmp_path / "out" / "checkpoints").exists()
    cycada = CyCADAFamily(CyCADAFit(steps=4, task_steps=2, d_layers=2), DataShape(16, 3, ("a", "b")), 0)
    unlabelled = TrainingData(np.zeros((4, 16, 16, 3), np.uint8), np.full(4, -1, np.int64))
    with pytest.raises(ValueError, match="no class labels .* and no masks"):
        cycada.check_data(unlabelled)
    cycada.check_data(TrainingData(unlabelled.images, np.array([0, 1, 1, 0])))  # labels: accepted
