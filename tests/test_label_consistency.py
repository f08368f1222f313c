"""Label consistency: the frozen real-pair segmenter's agreement with the maps painted rows came
from. The mIoU / pixel accuracy code against scikit-learn's, and a job with two label-map
painters (one paints each class in its real mean colour, one in another class's colour): the
second scores low, the gate drops it with its reason, the report shows the agreement beside
the segmenter's own on the real holdout, and the worst rows next to their maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, jaccard_score

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.family import Family, Hyperparameters, TrainingData
from augment.generators.trainer import TrainState
from augment.metrics.preservation import TaskModel, segmentation_agreement
from augment.sample import GeneratorInfo, Sample
from jobs.config import parse_config
from jobs.datasink import read_filtered
from jobs.registry import register, unregister
from tests.test_label_preservation import FixedLogits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_agreement_matches_scikit_learn_with_void_left_out() -> None:
    rng = np.random.default_rng(0)
    predicted = rng.integers(0, 4, (8, 10))
    logits = torch.nn.functional.one_hot(torch.from_numpy(predicted), 4).permute(2, 0, 1).float() * 10
    model = TaskModel(FixedLogits(logits), "segmentation", (8, 10), 3, 4, void_id=3)
    masks = [rng.integers(0, 4, (8, 10)).astype(np.uint16) for _ in range(3)]
    got = segmentation_agreement(model, [np.zeros((8, 10, 3), np.uint8)] * 3, masks)
    truth = np.concatenate([m.ravel() for m in masks]).astype(np.int64)
    guess = np.tile(predicted.ravel(), 3)
    keep = truth != 3
    # The segmenter may predict void (3) where the truth is not void: that pixel is wrong and counts
    # against the true class; void itself is no class of the mean.
    expected = jaccard_score(truth[keep], guess[keep], labels=[0, 1, 2], average=None, zero_division=0)
    assert got["per_class_iou"][:3] == pytest.approx(expected.tolist(), abs=1e-12)
    assert got["miou"] == pytest.approx(float(np.mean(expected)), abs=1e-12)
    assert got["pixel_accuracy"] == pytest.approx(accuracy_score(truth[keep], guess[keep]), abs=1e-12)
    assert got["pixels"] == int(keep.sum())


# -- a job with two toy label-map painters ----------------------------------------------------


class NothingToFit(Hyperparameters):
    steps: int = Field(0, ge=0, le=0)


class PaintSample(Hyperparameters):
    batch_size: int = Field(16, ge=1, le=4096)


class ColourPainter:
    """Paints every pixel in its class's colour from a saved table (plus seeded noise)."""

    def __init__(self, colours: np.ndarray, class_names: list[str], checkpoint: str | None = None) -> None:
        self.colours, self.class_names, self.checkpoint_sha256 = colours, tuple(class_names), checkpoint

    def sample(self, request: SampleRequest, *, batch_size: int = 16) -> list[Sample]:
        out = []
        for i, (label_map, seed) in enumerate(zip(request.label_maps or [], request.seeds, strict=True)):
            noise = np.random.default_rng(seed).normal(0, 3, (*label_map.shape, 3))
            image = np.clip(self.colours[label_map.astype(np.int64)] + noise, 0, 255).round().astype(np.uint8)
            out.append(Sample(request.ids[i], image, None, mask=label_map, seed=seed,
                              generator=GeneratorInfo("colours", self.checkpoint_sha256)))
        return out

    def save_pretrained(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"colours": torch.from_numpy(self.colours.astype(np.float32))}, str(directory / "c.safetensors"))
        (directory / "names.json").write_text(json.dumps(list(self.class_names)))

    @classmethod
    def from_pretrained(cls, directory: Path) -> ColourPainter:
        refuse_pickles(directory)
        return cls(load_file(str(directory / "c.safetensors"))["colours"].numpy(),
                   json.loads((directory / "names.json").read_text()), checkpoint_sha256(directory))


class _Painting(Family):
    request = "label_map"
    Fit = NothingToFit
    Sample = PaintSample

    def build(self) -> dict[str, torch.nn.Module]:
        return {}

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {}

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> Any:
        raise AssertionError("nothing to train")

    def sampler(self, state: TrainState) -> ColourPainter:
        raise AssertionError("loaded, never fitted")

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> ColourPainter:
        return ColourPainter.from_pretrained(directory)


class ToyTrue(_Painting):
    name = "toy_true"


class ToyWrong(_Painting):
    name = "toy_wrong"


THRESHOLD = 0.5
SOURCE = {"kind": "simulator", "family": "street", "frames": 20, "image_size": 32}


def class_colours(seed: int) -> tuple[np.ndarray, list[str]]:
    """Each street class's mean colour over simulator frames (grey for a class never seen)."""
    from jobs.config import StreetSimulatorConfig
    from jobs.sources import build_source

    source = build_source(StreetSimulatorConfig(**SOURCE), seed)
    sums, counts = np.zeros((12, 3)), np.zeros(12)
    for record in source.records():
        sample = source.load(record)
        mask = sample.mask.astype(np.int64).ravel()
        np.add.at(sums, mask, sample.image.reshape(-1, 3).astype(np.float64))
        counts += np.bincount(mask, minlength=12)
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 128.0), list(source.class_names)


@pytest.fixture(scope="module")
def painted_job(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Any:
    from jobs.runner import run_job

    for family in (ToyTrue, ToyWrong):
        register(family)
    folder = tmp_path_factory.mktemp("consistency")
    colours, names = class_colours(3)
    # The wrong painter paints each class in the colour of the class three places on (road as sky...).
    for family, table in ((ToyTrue, colours), (ToyWrong, np.roll(colours, 3, axis=0))):
        ColourPainter(table, names).save_pretrained(folder / family.name)
    config = parse_config({
        "seed": 3, "source": SOURCE, "split": {"holdout": 0.2},
        "generate": [{"kind": f.name, "from_pretrained": str(folder / f.name)} for f in (ToyTrue, ToyWrong)],
        "filter": {"min_label_consistency": THRESHOLD},
        "report": {"extractor_steps": 60, "label_consistency_steps": 150, "features": ["random"],
                   "utility": {"enabled": False}, "kid_subsets": 2, "kid_subset_size": 4, "max_per_source": 50},
        "output": {"rows_per_shard": 16},
    })
    out = folder / "out"
    run_job(config, out)
    yield out, config
    for family in (ToyTrue, ToyWrong):
        unregister(family.name)


def test_the_wrongly_painted_rows_score_low_and_the_gate_drops_them(painted_job: tuple[Path, Any]) -> None:
    out, _ = painted_job
    rows = pq.read_table(out / "shards", columns=["id", "source", "scores"]).to_pylist()
    filtered = [r for path in sorted((out / "shards").glob("*.parquet")) for r in read_filtered(path)]
    frames = [r for r in rows if r["source"] == "simulator"]
    true = [r["scores"]["label_consistency"] for r in rows if r["source"] == "toy_true"]
    wrong = [r for r in rows if r["source"] == "toy_wrong"]
    dropped = [r for r in filtered if r["source"] == "toy_wrong"]
    assert all(r["scores"]["label_consistency"] is None for r in frames)  # real rows are not painted
    assert all(r["scores"]["label_preservation"] is None for r in rows if r["scores"])  # no parent step
    assert len(true) == len(frames) > 0 and len(wrong) + len(dropped) == len(frames)
    assert min(true) >= THRESHOLD and np.mean(true) > 0.7, true
    assert len(dropped) >= 0.75 * len(frames), (len(dropped), len(frames))
    assert all(r["reasons"] == ["low_label_consistency"] and r["label_consistency"] < THRESHOLD for r in dropped)
    folder = out / "report" / "reference" / "label_consistency"
    saved = json.loads((folder / "config.json").read_text())
    assert saved["task"] == "segmentation" and saved["training"]["settings"]["steps"] == 150
    assert not (out / "report" / "reference" / "label_preservation").exists()


def test_the_report_sets_the_agreement_beside_the_real_holdouts(painted_job: tuple[Path, Any]) -> None:
    out, _ = painted_job
    report = json.loads((out / "report" / "report.json").read_text())
    block = report["label_consistency"]
    assert report["label_preservation"] is None and set(block) == {"toy_true", "toy_wrong"}
    ceiling = report["label_consistency_model"]["training"]["source_holdout"]
    assert ceiling["images"] == 4 and 0 < ceiling["miou"] <= 1 and ceiling["pixel_accuracy"] > 0.7
    true = block["toy_true"]["agreement"]  # over the published rows
    assert true["rows"] == block["toy_true"]["rows"] and true["pixel_accuracy"] > 0.7 and true["miou"] > 0.3
    # The mean is over every row made, dropped ones too: the gate does not flatter the painter.
    assert block["toy_wrong"]["mean"] < THRESHOLD < block["toy_true"]["mean"]
    assert block["toy_wrong"]["dropped"] + block["toy_wrong"]["rows"] == block["toy_true"]["rows"]
    assert block["toy_true"]["per_mask_class"]["sky"]["iou"] > 0.5 and "void" not in block["toy_true"]["per_mask_class"]
    page = (out / "report" / "report.html").read_text()
    assert "Label consistency" in page and "filter.min_label_consistency" in page
    worst = block["toy_true"]["worst"]
    assert worst and page.count(f'alt="{worst[0]["id"]}"') == 1


def test_the_consistency_gate_needs_a_label_map_step() -> None:
    with pytest.raises(ValueError, match="filter.min_label_consistency: no generate step makes rows painted"):
        parse_config({"source": SOURCE, "augment": {"transforms": [{"name": "HorizontalFlip"}]},
                      "filter": {"min_label_consistency": 0.5}})


def test_bad_label_maps_are_recorded_skips_and_the_rest_is_painted(tmp_path: Path, ray_session: None) -> None:
    """A folder of image / colour-label pairs: a map with a colour the palette does not know and a
    map of the wrong size are skipped with their reasons in rejected.jsonl; every other map is
    painted and kept byte for byte as its row's mask."""
    from PIL import Image

    from augment.images import decode_png
    from jobs.runner import run_job

    register(ToyTrue)
    try:
        palette = {"#000000": "ground", "#ff0000": "thing"}
        for i in range(8):
            for folder in ("images", "masks"):
                (tmp_path / "capture" / folder).mkdir(parents=True, exist_ok=True)
            label = np.zeros((24, 32, 3), np.uint8)
            label[4 + i:12 + i, 6:20] = (255, 0, 0)
            if i == 3:
                label[0, 0] = (0, 255, 0)  # not in the palette
            if i == 5:
                label = label[:20]  # 32x20 beside a 32x24 frame
            Image.fromarray(label).save(tmp_path / "capture" / "masks" / f"f{i}.png")
            Image.fromarray(np.full((24, 32, 3), 60 + 10 * i, np.uint8)).save(tmp_path / "capture" / "images" / f"f{i}.png")
        ColourPainter(np.array([[40.0, 40, 40], [220, 30, 30]]), ["ground", "thing"]).save_pretrained(tmp_path / "p")
        config = parse_config({
            "seed": 1, "source": {"kind": "external", "root": str(tmp_path / "capture"), "frames": "images",
                                  "labels": "masks", "class_names": ["ground", "thing"], "palette": palette},
            "generate": [{"kind": "toy_true", "from_pretrained": str(tmp_path / "p")}],
            "report": {"enabled": False}, "output": {"rows_per_shard": 4},
        })
        run_job(config, tmp_path / "out")
    finally:
        unregister(ToyTrue.name)
    rejected = {row["id"]: row for row in map(json.loads, (tmp_path / "out" / "rejected.jsonl").read_text().splitlines())}
    assert set(rejected) == {"external/f3", "external/f5"}
    assert "#00FF00" in json.dumps(rejected["external/f3"]).upper()
    assert "does not match" in json.dumps(rejected["external/f5"])
    rows = pq.read_table(tmp_path / "out" / "shards", columns=["id", "source", "parent_id", "mask"]).to_pylist()
    painted = [r for r in rows if r["source"] == "toy_true"]
    real = {r["id"]: r for r in rows if r["source"] != "toy_true"}  # the training records that loaded
    assert len(painted) == len(real) >= 4 and not set(real) & set(rejected)
    for row in painted:  # the map each row was painted from, byte for byte (maps: source)
        assert row["mask"]["bytes"] == real[row["parent_id"]]["mask"]["bytes"]
        assert decode_png(row["mask"]["bytes"]).max() == 1
