"""CyCADA: losses against hand computations, the two phases, fit on masks and on class
labels, resume, save/load with the task models, refusals.

Tiny nets (widths 4, one residual block, 16×20 training images) and a few steps on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from augment.generators import trainer
from augment.generators.base import SampleRequest
from augment.generators.family import DataShape, TrainingData, check_family
from augment.metrics.classifier import warmup_cosine
from augment.sample import Sample
from domain_transfer.cycada import CyCADATranslator
from domain_transfer.cycada_family import CyCADAFamily, CyCADAFit
from domain_transfer.cycada_losses import semantic_loss, task_loss
from domain_transfer.cycada_train import CyCADAStep, start_target_task
from domain_transfer.cyclegan_config import CycleGANFit, linear_decay

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny nets: one thread is fastest on shared cores

TINY = CyCADAFit(steps=4, task_steps=2, batch_size=2, ngf=4, ndf=4, n_blocks=1, d_layers=2, pool_size=3,
                 task_width=4)
SHAPE = DataShape(image_size=16, channels=3, class_names=("car", "road", "void"), width=20)
SEED = 11
TRANSLATOR = ("G", "F", "D_X", "D_Y")
MODULES = (*TRANSLATOR, "f_S", "f_T", "D_feat")
PHASE_2_LOSSES = {"G", "D", "cycle", "idt", "semantic", "task_T", "feature", "D_feat"}


def family(**changes: object) -> CyCADAFamily:
    return CyCADAFamily(TINY.model_copy(update=changes), SHAPE, SEED)


def toy_data(kind: str = "masks", n: int = 6, m: int = 5) -> TrainingData:
    """X: dark frames with a bright "road" bar (mask 1), "car" elsewhere, a void corner;
    Y: bright frames with a dark bar. "masks": masks, no class labels (street frames);
    "labels": class labels alternating, one record unlabelled, no masks; "both": both
    (digits frames: a label and a digit/background mask)."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 80, (n, 16, 20, 3), dtype=np.uint8)
    source[:, 4:8] = 220
    masks = np.zeros((n, 16, 20), np.uint16)
    masks[:, 4:8] = 1
    masks[:, :2, :2] = 2  # void
    target = rng.integers(150, 255, (m, 16, 20, 3), dtype=np.uint8)
    target[:, :, 5:9] = 30
    labels = np.array([0, 1] * (n // 2), dtype=np.int64)
    labels[-1] = -1
    if kind == "masks":
        labels[:] = -1
    return TrainingData(source, labels, masks=None if kind == "labels" else masks, target=target)


def parents_request(sizes: list[tuple[int, int]]) -> SampleRequest:
    rng = np.random.default_rng(5)
    parents = [Sample(f"p{i}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), label=i % 2)
               for i, (h, w) in enumerate(sizes)]
    return SampleRequest(labels=[p.label for p in parents], seeds=list(range(len(parents))),
                         ids=[f"p{i}~cycada" for i in range(len(parents))], parent_ids=[p.id for p in parents],
                         parents=parents)


def weights(state: trainer.TrainState, name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.module(name).state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple[CyCADAFamily, TrainingData, trainer.TrainState]]:
    out = {}
    for kind in ("masks", "labels"):
        fam, data = family(), toy_data(kind)
        out[kind] = fam, data, trainer.fit(fam, data)
    return out


# -- losses against hand computations -----------------------------------------------------


def test_semantic_loss_per_image_matches_hand_values() -> None:
    translated = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    original = torch.tensor([[1.0, 3.0], [0.0, -1.0]], requires_grad=True)  # argmax: 1, 0
    # row 0: -log(e^0 / (e^2 + e^0)) = log(1 + e^2); row 1: -log(e^0 / (e^0 + e^1)) = log(1 + e)
    expected = (math.log(1 + math.e**2) + math.log(1 + math.e)) / 2
    loss = semantic_loss(translated, original)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert translated.grad is not None and original.grad is None  # f_S's own labels are targets, no gradient


def test_semantic_loss_per_pixel_matches_hand_values() -> None:
    # N=1, K=2 classes, H=1, W=2: pixel 0 logits (0, 1), pixel 1 logits (3, 0)
    translated = torch.tensor([[[[0.0, 3.0]], [[1.0, 0.0]]]])
    original = torch.tensor([[[[5.0, 0.0]], [[1.0, 2.0]]]])  # argmax per pixel: 0, 1
    expected = (math.log(1 + math.e) + math.log(1 + math.e**3)) / 2
    assert semantic_loss(translated, original).item() == pytest.approx(expected, rel=1e-6)


def test_task_loss_leaves_out_ignored_targets_and_is_never_nan() -> None:
    logits = torch.tensor([[[[0.0, 3.0]], [[1.0, 0.0]]]])
    # pixel 1 is void (id 2, ignored): only pixel 0 with target 0 counts
    assert task_loss(logits, torch.tensor([[[0, 2]]]), ignore_index=2).item() == pytest.approx(math.log(1 + math.e))
    assert task_loss(logits, torch.tensor([[[2, 2]]]), ignore_index=2).item() == 0.0


# -- hyperparameters and schedule ------------------------------------------------------------


def test_fit_extends_cyclegans_and_checks_its_phases() -> None:
    assert isinstance(CyCADAFit(), CycleGANFit)  # every default is valid (the config's default section)
    assert set(CycleGANFit.model_fields) < set(CyCADAFit.model_fields)
    assert set(CyCADAFit.model_fields) - set(CycleGANFit.model_fields) == {
        "task_steps", "task_lr", "task_width", "lambda_semantic", "lambda_feature", "lambda_task"}
    assert CyCADAFit(steps=10, task_steps=4).decay_start == 7  # half-way through the translator phase
    with pytest.raises(ValidationError, match=r"task_steps must be less than steps \(10\), got 10"):
        CyCADAFit(steps=10, task_steps=10)
    with pytest.raises(ValidationError, match=r"decay_from must be at least task_steps \(4\), got 3"):
        CyCADAFit(steps=10, task_steps=4, decay_from=3)
    with pytest.raises(ValidationError, match="task_steps"):
        CyCADAFit(task_steps=0)
    with pytest.raises(ValueError, match=r"cycada: d_layers=3 \(patches of 70 px\)"):
        family(d_layers=3)
    with pytest.raises(ValueError, match="cycada: the task models need the source's class names"):
        CyCADAFamily(TINY, DataShape(16, 3, ()), SEED)


def test_lr_scale_per_phase() -> None:
    fam = family(steps=10, task_steps=4, decay_from=6)
    assert [fam.lr_scale(k) for k in range(4)] == [warmup_cosine(4)(k) for k in range(4)]
    assert [fam.lr_scale(k) for k in range(4, 10)] == [linear_decay(k, 10, 6) for k in range(4, 10)]
    assert fam.lr_scale(5) == 1.0 and fam.lr_scale(9) == pytest.approx(1 / 5)


def test_family_is_valid_and_asks_for_parents_and_a_target() -> None:
    check_family(CyCADAFamily)
    assert (CyCADAFamily.name, CyCADAFamily.request, CyCADAFamily.needs_target) == ("cycada", "parent", True)


# -- phases, fits, resume ----------------------------------------------------------------------


def test_phases_switch_at_task_steps_and_f_s_stays_frozen() -> None:
    fam, data = family(), toy_data()
    fresh = trainer.new_state(fam)
    state = trainer.fit(fam, data, until=2)  # phase 1: f_S alone
    assert not same(weights(state, "f_S"), weights(fresh, "f_S"))
    for name in (*TRANSLATOR, "D_feat"):
        assert same(weights(state, name), weights(fresh, name)), name
    assert int(state.module("f_S").kind) == 2  # fitted per pixel (masks)
    f_s = weights(state, "f_S")
    trainer.train(fam, data, state)  # phase 2: f_S frozen, weights and statistics
    assert same(weights(state, "f_S"), f_s)
    for name in (*TRANSLATOR, "f_T", "D_feat"):
        assert not same(weights(state, name), weights(fresh, name)), name
    assert int(state.module("f_T").kind) == 2
    start_target_task(state)  # what the first translator step does: f_T takes f_S's weights
    assert same(weights(state, "f_T"), f_s)


@pytest.mark.parametrize("kind", ["masks", "labels"])
def test_tiny_fit_logs_finite_losses(kind: str) -> None:
    logs: list[trainer.Progress] = []
    trainer.fit(family(), toy_data(kind), on_log=logs.append, log_every=1)
    assert [set(p.losses) for p in logs] == [{"task_S"}] * 2 + [PHASE_2_LOSSES] * 2
    assert all(np.isfinite(list(p.losses.values())).all() for p in logs)


@pytest.mark.parametrize("kind", ["labels", "both"])
def test_class_labels_win_and_only_labelled_records_are_used(kind: str) -> None:
    """As the job's label-preservation model: digits frames' masks are digit/background, not
    class ids, and the label is what a content change breaks."""
    step = CyCADAStep(TINY, toy_data(kind), torch.device("cpu"), seed=SEED, rank=0, class_names=SHAPE.class_names)
    assert step.task == "classification" and len(step.source) == 5 and step.labels.tolist() == [0, 1, 0, 1, 0]
    masks = CyCADAStep(TINY, toy_data("masks"), torch.device("cpu"), seed=SEED, rank=0, class_names=SHAPE.class_names)
    assert masks.task == "segmentation" and len(masks.source) == 6


@pytest.mark.parametrize("until", [1, 2])
def test_resume_equals_an_uninterrupted_fit(until: int, tmp_path: Path) -> None:
    """4 steps straight == `until` steps, save, load, the rest (across the switch at 2 or from it)."""
    data, fam = toy_data(), family(crop=12, flip=True)
    straight = trainer.fit(fam, data)
    half = trainer.fit(fam, data, until=until)
    half.save(tmp_path / "state")
    resumed = trainer.train(fam, data, trainer.load_state(fam, tmp_path / "state"))
    assert resumed.step == straight.step == 4
    for name in MODULES:
        a, b = straight.module(name).state_dict(), resumed.module(name).state_dict()
        assert sorted(a) == sorted(b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=f"{name}.{key}")
    for name, optimizer in straight.optimizers.items():
        sa, sb = optimizer.state_dict()["state"], resumed.optimizers[name].state_dict()["state"]
        assert sorted(sa) == sorted(sb), name
        for i in sa:
            for k in sa[i]:
                torch.testing.assert_close(sa[i][k], sb[i][k], rtol=1e-6, atol=1e-7)


# -- save/load, the task model as a predictor ----------------------------------------------


@pytest.mark.parametrize("kind", ["masks", "labels"])
def test_save_load_round_trip_translates_and_predicts_the_same(kind: str, fitted: dict, tmp_path: Path) -> None:
    fam, data, state = fitted[kind]
    translator = fam.sampler(state)
    translator.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "generator.safetensors", "task_source.safetensors", "task_target.safetensors"]
    task = "segmentation" if kind == "masks" else "classification"
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["task"] == task
    loaded = CyCADAFamily.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, CyCADATranslator)
    assert (loaded.fit, loaded.shape, loaded.seed) == (fam.fit, SHAPE, SEED)
    req = parents_request([(16, 20), (31, 17)])
    before, after = translator.sample(req), loaded.sample(req)
    for a, b, parent in zip(before, after, req.parents, strict=True):
        assert np.array_equal(a.image, b.image) and a.image.shape == parent.image.shape
    assert after[1].source == "cycada" and after[1].parent_id == "p1"
    assert len(after[0].generator.checkpoint_sha256) == 64
    images = np.concatenate([data.images, data.target])
    for which in ("target", "source"):
        mine, theirs = translator.task_model(which), loaded.task_model(which)
        assert mine.task == theirs.task == task
        predicted = theirs.predict(images)
        assert np.array_equal(mine.predict(images), predicted)
        assert predicted.dtype == np.int64 and predicted.shape == ((11, 16, 20) if kind == "masks" else (11,))
        assert predicted.min() >= 0 and predicted.max() < 3
        one_by_one = np.concatenate([theirs.predict(images[i:i + 1]) for i in range(3)])
        assert np.array_equal(one_by_one, predicted[:3])  # eval mode: no batch dependence
    assert not torch.equal(loaded.task_target.net.head.weight, loaded.task_source.net.head.weight)


def test_pickled_incomplete_or_foreign_checkpoints_are_refused(fitted: dict, tmp_path: Path) -> None:
    fam, _, state = fitted["masks"]
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(state.module("f_T").state_dict(), folder / "task_target.pt")
    with pytest.raises(ValueError, match="pickled checkpoints are refused"):
        CyCADATranslator.from_pretrained(folder)
    fam.sampler(state).save_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "task_target.safetensors").unlink()
    with pytest.raises(ValueError, match="missing task_target.safetensors"):
        CyCADATranslator.from_pretrained(tmp_path / "ok")
    fam.sampler(state).save_pretrained(tmp_path / "cyclegan")
    foreign = {"format": "synthaug.cyclegan", "format_version": 1}
    (tmp_path / "cyclegan" / "config.json").write_text(json.dumps(foreign))
    with pytest.raises(ValueError, match="not a synthaug.cycada v1 config"):
        CyCADATranslator.from_pretrained(tmp_path / "cyclegan")


def test_predictor_refuses_images_it_cannot_read(fitted: dict) -> None:
    fam, _, state = fitted["labels"]
    translator = fam.sampler(state)
    with pytest.raises(ValueError, match=r"takes uint8 NxHxWx3 images of at least 8x8"):
        translator.task_model().predict(np.zeros((2, 16, 20, 1), np.uint8))
    with pytest.raises(ValueError, match="must be 'target' or 'source', got 'other'"):
        translator.task_model("other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cycada: translates parent records"):
        translator.sample(SampleRequest(labels=[0], seeds=[0], ids=["a"]))


# -- data refusals ---------------------------------------------------------------------------


def test_data_without_labels_or_masks_is_refused() -> None:
    data = toy_data("labels")
    unlabelled = TrainingData(data.images, np.full(len(data.images), -1), target=data.target)
    missing = r"no class labels \(every label is -1\) and no masks \(TrainingData.masks is None\)"
    with pytest.raises(ValueError, match=missing):
        trainer.fit(family(), unlabelled)


def test_masks_beyond_the_class_names_and_a_changed_task_are_refused(tmp_path: Path) -> None:
    data = toy_data()
    bad = TrainingData(data.images, data.labels, masks=data.masks + 1, target=data.target)
    with pytest.raises(ValueError, match=r"mask class ids must be below the 3 class names .* got id 3"):
        trainer.fit(family(), bad)
    fam = family()
    trainer.fit(fam, toy_data("labels"), until=1).save(tmp_path / "state")
    with pytest.raises(ValueError, match="fitted for classification, but these training data have masks"):
        trainer.train(fam, data, trainer.load_state(fam, tmp_path / "state"))


def test_run_saves_grids_and_publishes_the_model_with_its_task_models(tmp_path: Path) -> None:
    trainer.run(family(), toy_data(), states=tmp_path / "states", model=tmp_path / "model", grids=tmp_path / "grids",
                checkpoint_every=2)
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert CyCADAFamily.from_pretrained(tmp_path / "model").task_model().task == "segmentation"


# -- DDP (gloo, two CPU processes; the path Ray Train's prepare_model takes) ------------------


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = Path(folder)
        state = trainer.run(family(), toy_data(), states=out / "states", model=out / "model", grids=out / "grids",
                            checkpoint_every=2, rank=rank,
                            prepare=lambda m: torch.nn.parallel.DistributedDataParallel(m))
        # Parameters of every module and f_S's statistics (frozen from the switch on); f_T's
        # statistics are each rank's own after its last forward, as for any batch norm under DDP.
        tensors = {f"{name}.{k}": v.detach().contiguous() for name in MODULES
                   for k, v in state.module(name).named_parameters()}
        tensors.update({f"f_S.{k}": v.contiguous() for k, v in state.module("f_S").named_buffers()})
        save_file(tensors, str(out / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_workers_share_weights_through_both_phases(tmp_path: Path) -> None:
    """Phase 1 forwards f_S alone, phase 2 leaves f_S's wrapper unused and looks through D_feat
    with detached weights: no DDP error, and every module ends equal across ranks."""
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    assert [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])] == []
    assert CyCADAFamily.from_pretrained(tmp_path / "model").task_model().task == "segmentation"


# -- CUDA (a lent GPU machine only: `python -m pytest -m gpu`) -------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fits_in_bf16_on_cuda_and_translates_and_predicts_like_on_cpu(tmp_path: Path) -> None:
    data, fam = toy_data(), family(bf16=True, crop=12)
    state = trainer.run(fam, data, states=tmp_path / "states", model=tmp_path / "model", grids=tmp_path / "grids",
                        checkpoint_every=2, device="cuda")
    assert state.step == 4 and state.module("f_T").kind.is_cuda
    req = parents_request([(16, 20), (31, 17)])
    on_gpu = CyCADAFamily.from_pretrained(tmp_path / "model", device="cuda")
    on_cpu = CyCADAFamily.from_pretrained(tmp_path / "model", device="cpu")
    for a, b in zip(on_gpu.sample(req), on_cpu.sample(req), strict=True):  # kernels differ: compare loosely
        assert a.image.shape == b.image.shape and np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 2
    gpu_masks, cpu_masks = on_gpu.task_model().predict(data.target), on_cpu.task_model().predict(data.target)
    assert gpu_masks.shape == cpu_masks.shape and (gpu_masks == cpu_masks).mean() > 0.95
