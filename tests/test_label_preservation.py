"""Label preservation: the frozen source task model's score against closed-form cases, a fitted
model telling kept labels from swapped ones, a job whose parent step destroys content (the
gate drops its rows and records why) beside one that keeps it, and shards written before
the score existed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.family import Family, Hyperparameters, TrainingData
from augment.generators.trainer import TrainState
from augment.metrics.preservation import TaskModel, fit_task_model, label_preservation, task_shape
from augment.metrics.scoring import RowScores, filter_reasons
from augment.report.preservation import read_scored
from augment.sample import GeneratorInfo, Sample, Scores
from augment.shard_dataset import ShardDataset
from augment.shards import samples_to_table, table_to_samples, write_manifest, write_shard
from augment.sources.parquet import ParquetSource
from jobs.config import parse_config
from jobs.datasink import read_filtered
from jobs.registry import register, unregister

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two shared cores: one thread is the fast choice

# -- the closed-form cases: a stub whose prediction is fixed ---------------------------------


class FixedLogits(torch.nn.Module):
    """Returns the same logits for every image in the batch, whatever the pixels."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("fixed", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fixed.expand(len(x), *self.fixed.shape)


def test_pixel_accuracy_of_a_fixed_prediction_is_exact() -> None:
    """8x12 (landscape) prediction: class 0 in columns 0-3, 1 in 4-7, 2 in 8-11. Mask: 0 in rows
    0-3, 1 in rows 4-7, and column 11 void (class 2). Right: 4x4 + 4x4 = 32 of the 88 non-void
    pixels = 4/11; counting void pixels (no void class), 40 of 96 = 5/12."""
    predicted = np.repeat(np.arange(3), 4)[None, :].repeat(8, axis=0)  # H x W class ids
    logits = torch.nn.functional.one_hot(torch.from_numpy(predicted), 3).permute(2, 0, 1).float() * 10
    mask = np.zeros((8, 12), np.uint16)
    mask[4:] = 1
    mask[:, 11] = 2
    images = [np.zeros((8, 12, 3), np.uint8), np.zeros((16, 24, 3), np.uint8), np.zeros((8, 12, 3), np.uint8),
              np.zeros((8, 12, 3), np.uint8)]
    masks = [mask, np.kron(mask, np.ones((2, 2), np.uint16)), np.full((8, 12), 2, np.uint16), None]
    with_void = TaskModel(FixedLogits(logits), "segmentation", (8, 12), 3, 3, void_id=2)
    got = label_preservation(with_void, images, masks=masks)
    assert got[:2].tolist() == [pytest.approx(4 / 11, abs=1e-12)] * 2  # a 2x larger row is resized to 8x12
    assert np.isnan(got[2]) and np.isnan(got[3])  # all void; no mask
    without_void = TaskModel(FixedLogits(logits), "segmentation", (8, 12), 3, 3, void_id=None)
    assert label_preservation(without_void, images[:1], masks=masks[:1])[0] == pytest.approx(5 / 12, abs=1e-12)
    with pytest.raises(ValueError, match="scores masks"):
        label_preservation(with_void, images, labels=[0, 1, 2, 0])


def test_class_probability_of_a_fixed_prediction_is_exact() -> None:
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    model = TaskModel(FixedLogits(logits), "classification", (8, 8), 1, 3)
    images = [np.zeros((8, 8, 3), np.uint8)] * 4  # RGB rows for a gray model: converted by luma
    got = label_preservation(model, images, labels=[2, 0, None, 1])
    np.testing.assert_allclose(got[[0, 1, 3]], [0.5, 0.2, 0.3], rtol=1e-6)
    assert np.isnan(got[2])


def test_the_gate_drops_rows_below_the_threshold_only_where_measured() -> None:
    scores = RowScores(realism=np.ones(4), confidence=np.full(4, np.nan), nearest_real=np.ones(4),
                       near_copy=np.zeros(4, bool), label_preservation=np.array([0.2, 0.8, np.nan, 0.5]))
    reasons = filter_reasons(scores, min_realism=None, min_confidence=None, drop_near_copies=False,
                             min_label_preservation=0.5)
    assert reasons == [["low_label_preservation"], [], [], []]


def test_task_shape_keeps_the_aspect_ratio() -> None:
    assert task_shape(96, 128) == (48, 64) and task_shape(32, 32) == (32, 32) and task_shape(4, 400) == (8, 64)


# -- a fitted model: its own labels score high, swapped ones low ------------------------------


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """16x24 gray images: a bright square in the left, middle or right third (class 0, 1, 2),
    noise around it; masks: the square's class + 1 on background 0, the bottom row void (4)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, 16, 24, 1)).astype(np.uint8)
    masks = np.zeros((n, 16, 24), np.uint16)
    for i, c in enumerate(labels):
        top, left = rng.integers(2, 7), 8 * c + rng.integers(0, 2)
        images[i, top:top + 6, left:left + 6] = 230
        masks[i, top:top + 6, left:left + 6] = c + 1
    masks[:, -1] = 4
    return images, labels, masks


CLASSES = ["left", "middle", "right"]


def test_a_fitted_classifier_finds_its_labels_and_not_swapped_ones(tmp_path: Path) -> None:
    images, labels, _ = squares(30, 0)
    model = fit_task_model(list(images), labels=labels.tolist(), class_names=CLASSES, seed=3, steps=50)
    assert model.task == "classification" and model.shape == (16, 24)
    kept = label_preservation(model, images, labels=labels.tolist())
    swapped = label_preservation(model, images, labels=((labels + 1) % 3).tolist())
    assert kept.mean() > 0.8 and swapped.mean() < 0.15, (kept.mean(), swapped.mean())
    model.save(tmp_path / "task")
    refuse_pickles(tmp_path / "task")  # safetensors + JSON only
    again = TaskModel.load(tmp_path / "task")
    np.testing.assert_array_equal(label_preservation(again, images, labels=labels.tolist()), kept)
    assert again.describe() == model.describe()


def test_a_fitted_segmenter_finds_its_masks_and_not_moved_ones(tmp_path: Path) -> None:
    images, _, masks = squares(32, 1)
    model = fit_task_model(list(images), masks=list(masks), class_names=["background", *CLASSES, "Void"], seed=4,
                           steps=80)
    assert model.task == "segmentation" and model.void_id == 4
    kept = label_preservation(model, images, masks=list(masks))
    # content moved: the square painted one third further (its labels stay where they were)
    moved = np.roll(images, 8, axis=2)
    drifted = label_preservation(model, moved, masks=list(masks))
    assert kept.mean() > 0.95 and drifted.mean() < kept.mean() - 0.1, (kept.mean(), drifted.mean())
    model.save(tmp_path / "seg")
    np.testing.assert_array_equal(label_preservation(TaskModel.load(tmp_path / "seg"), images, masks=list(masks)),
                                  kept)


# -- shards written before the score existed -------------------------------------------------

OLD_SCORES = pa.struct([("realism", pa.float32()), ("confidence", pa.float32())])


def test_shards_with_the_old_scores_struct_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [Sample(f"r{i}", rng.integers(0, 255, (8, 8, 3)).astype(np.uint8), label=i % 2, source="cyclegan",
                      mask=np.zeros((8, 8), np.uint16), parent_id="p", seed=i,
                      scores=Scores(realism=1.5, confidence=0.5)) for i in range(3)]
    table = samples_to_table(samples, ["a", "b"])
    old_schema = pa.schema([f.with_type(OLD_SCORES) if f.name == "scores" else f for f in table.schema],
                           metadata=table.schema.metadata)
    rows = table.to_pylist()
    for row in rows:
        del row["scores"]["label_preservation"]
    folder = tmp_path / "shards"
    folder.mkdir()
    old = pa.Table.from_pylist(rows, schema=old_schema)
    entries = [write_shard(old, folder / "part-00000.parquet")]
    new = samples_to_table([Sample("n0", samples[0].image, label=0, source="cyclegan", parent_id="p", seed=9,
                                   scores=Scores(1.0, 0.5, 0.25))], ["a", "b"])
    entries.append(write_shard(new, folder / "part-00001.parquet"))
    write_manifest(folder, entries, ["a", "b"])
    assert pq.read_schema(folder / "part-00000.parquet").field("scores").type == OLD_SCORES
    assert [s.scores for s in table_to_samples(pq.read_table(folder / "part-00000.parquet"))] == \
        [Scores(1.5, 0.5, None)] * 3
    items = [ShardDataset(folder)[i] for i in range(4)]
    assert [np.isnan(it["label_preservation"]) for it in items] == [True, True, True, False]
    assert items[3]["label_preservation"] == 0.25
    source = ParquetSource(folder)
    assert sorted(r.id for r in source.records()) == ["n0", "r0", "r1", "r2"]
    assert source.load(source.records()[1]).label == 0
    assert [(r["id"], r["label_preservation"]) for r in read_scored(folder)] == [("n0", 0.25)]


# -- a job: a parent family that keeps content beside one that turns it upside down ----------


class NothingToFit(Hyperparameters):
    steps: int = Field(0, ge=0, le=0)


class PaintSample(Hyperparameters):
    batch_size: int = Field(16, ge=1, le=4096)


class Painter:
    """`keep`: the parent with a little seeded noise; `flip`: the parent upside down (sky where
    the road was), whose carried mask no longer matches."""

    class_names: tuple[str, ...] = ()

    def __init__(self, mode: str, checkpoint: str | None = None) -> None:
        self.mode, self.checkpoint_sha256 = mode, checkpoint

    def sample(self, request: SampleRequest, *, batch_size: int = 16) -> list[Sample]:
        out = []
        for i, (parent, seed) in enumerate(zip(request.parents, request.seeds, strict=True)):
            image = parent.image[::-1] if self.mode == "flip" else parent.image
            noise = np.random.default_rng(seed).normal(0, 3, image.shape)
            image = np.clip(image + noise, 0, 255).round().astype(np.uint8)
            out.append(Sample(request.ids[i], image, request.labels[i], seed=seed,
                              generator=GeneratorInfo(self.mode, self.checkpoint_sha256)))
        return out

    def save_pretrained(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"flip": torch.tensor([self.mode == "flip"], dtype=torch.float32)}, str(directory / "p.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: Path) -> Painter:
        refuse_pickles(directory)
        flip = bool(load_file(str(directory / "p.safetensors"))["flip"][0])
        return cls("flip" if flip else "keep", checkpoint_sha256(directory))


class _Painting(Family):
    request = "parent"
    Fit = NothingToFit
    Sample = PaintSample
    mode = ""

    def build(self) -> dict[str, torch.nn.Module]:
        return {}

    def optimizers(self, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {}

    def make_step(self, data: TrainingData, device: torch.device, rank: int) -> Any:
        raise AssertionError("nothing to train")

    def sampler(self, state: TrainState) -> Painter:
        return Painter(self.mode)

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> Painter:
        return Painter.from_pretrained(directory)


class ToyKeep(_Painting):
    name = "toy_keep"
    mode = "keep"


class ToyFlip(_Painting):
    name = "toy_flip"
    mode = "flip"


@pytest.fixture(scope="module")
def painters() -> Any:
    for family in (ToyKeep, ToyFlip):
        register(family)
    yield
    for family in (ToyKeep, ToyFlip):
        unregister(family.name)


THRESHOLD = 0.6


@pytest.fixture(scope="module")
def street_job(tmp_path_factory: pytest.TempPathFactory, ray_session: None, painters: None) -> tuple[Path, Any]:
    from jobs.runner import run_job

    folder = tmp_path_factory.mktemp("preservation")
    steps = []
    for family in (ToyKeep, ToyFlip):  # saved painters: no fit through Ray Train, the job only samples
        Painter(family.mode).save_pretrained(folder / family.name)
        steps.append({"kind": family.name, "from_pretrained": str(folder / family.name)})
    config = parse_config({
        "seed": 3, "source": {"kind": "simulator", "family": "street", "frames": 20, "image_size": 32},
        "split": {"holdout": 0.2}, "generate": steps,
        "filter": {"min_label_preservation": THRESHOLD},
        "report": {"extractor_steps": 80, "features": ["random"], "utility": {"enabled": False},
                   "kid_subsets": 2, "kid_subset_size": 4, "max_per_source": 50},
        "output": {"rows_per_shard": 16},
    })
    out = folder / "out"
    run_job(config, out)
    return out, config


def test_a_content_destroying_family_scores_low_and_the_gate_drops_its_rows(street_job: tuple[Path, Any]) -> None:
    out, _ = street_job
    rows = pq.read_table(out / "shards", columns=["id", "source", "parent_id", "scores"]).to_pylist()
    filtered = [r for path in sorted((out / "shards").glob("*.parquet")) for r in read_filtered(path)]
    frames = [r for r in rows if r["source"] == "simulator"]
    kept = [r for r in rows if r["source"] == "toy_keep"]
    flipped = [r for r in rows if r["source"] == "toy_flip"]
    dropped = [r for r in filtered if r["source"] == "toy_flip"]
    assert all(r["scores"]["label_preservation"] is None for r in frames)  # frames are no parent-step rows
    assert len(kept) == len(frames) and len(flipped) + len(dropped) == len(frames) > 0
    keep_scores = [r["scores"]["label_preservation"] for r in kept]
    assert min(keep_scores) >= THRESHOLD and np.mean(keep_scores) > 0.8, keep_scores
    assert len(dropped) >= 0.75 * len(frames), (len(dropped), len(frames))
    assert all(r["reasons"] == ["low_label_preservation"] and r["label_preservation"] < THRESHOLD for r in dropped)
    assert all(r["scores"]["label_preservation"] >= THRESHOLD for r in flipped)
    manifest = json.loads((out / "shards" / "_manifest.json").read_text())
    assert manifest["source_counts"].get("toy_flip", 0) == len(flipped)
    # the task model: fitted on the source's training frames, saved as safetensors + JSON
    folder = out / "report" / "reference" / "label_preservation"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["task"] == "segmentation" and saved["void_id"] == 11 and saved["training"]["n_train"] == 16


def test_the_report_has_means_drops_and_the_worst_rows_beside_their_parents(street_job: tuple[Path, Any]) -> None:
    out, _ = street_job
    report = json.loads((out / "report" / "report.json").read_text())
    block = report["label_preservation"]
    dropped = sum(1 for path in (out / "shards").glob("*.parquet") for r in read_filtered(path))
    assert set(block) == {"toy_keep", "toy_flip"}
    assert block["toy_flip"]["dropped"] == dropped and block["toy_keep"]["dropped"] == 0
    assert block["toy_flip"]["mean"] < 0.5 < 0.8 < block["toy_keep"]["mean"]
    assert block["toy_keep"]["per_class"]["unlabelled"]["rows"] == block["toy_keep"]["rows"]
    per_mask = block["toy_keep"]["per_mask_class"]  # street rows have no class label: per mask class instead
    assert "void" not in per_mask and per_mask["sky"]["pixel_accuracy"] > 0.8 and per_mask["road"]["pixels"] > 0
    worst = block["toy_keep"]["worst"]
    assert worst and [w["label_preservation"] for w in worst] == sorted(w["label_preservation"] for w in worst)
    assert report["filter"]["by_reason"] == {"low_label_preservation": dropped}
    assert report["label_preservation_model"]["task"] == "segmentation"
    page = (out / "report" / "report.html").read_text()
    assert "Label preservation" in page and "parent not in the shards" not in page
    assert "Ceiling: on 4 untouched held-out real frames" in page
    assert page.count(f'alt="{worst[0]["id"]}"') == 1


def test_the_ceiling_is_the_task_models_own_score_on_the_source_holdout(street_job: tuple[Path, Any]) -> None:
    from augment.metrics.preservation import TaskModel
    from jobs.runner import list_source

    out, config = street_job
    model = TaskModel.load(out / "report" / "reference" / "label_preservation")
    listed = list_source(config)
    assert len(listed.holdout) == 4 and not {r.id for r in listed.holdout} & {r.id for r in listed.train}
    # recomputed by hand from the held-out frames: mean pixel accuracy, void pixels left out
    accuracies = []
    for record in listed.holdout:
        sample = listed.source.load(record)
        predicted = model.logits(model.images([sample.image])).argmax(dim=1).numpy()[0]
        truth = sample.mask
        assert predicted.shape == truth.shape  # 32 x 32 frames: the task model's own size
        keep = truth != 11
        accuracies.append((predicted[keep] == truth[keep]).mean())
    ceiling = json.loads((out / "report" / "report.json").read_text())["label_preservation_model"]["training"]
    assert ceiling["source_holdout"]["images"] == 4
    assert ceiling["source_holdout"]["mean"] == pytest.approx(np.mean(accuracies), abs=1e-9)


def test_the_task_model_is_reused_when_its_settings_match(street_job: tuple[Path, Any]) -> None:
    from augment.metrics.judges import judge_named
    from jobs.quality import prepare_judge

    out, config = street_job
    folder = out / "report" / "reference"
    weights = folder / "label_preservation" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    settings = prepare_judge(config, folder, judge_named("label_preservation"))
    assert settings == {"sources": ["toy_keep", "toy_flip"], "dir": str(weights.parent), "task": "segmentation"}
    assert weights.stat().st_mtime_ns == before
