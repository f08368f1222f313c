"""CycleGAN: losses, PatchGAN receptive field, odd frame sizes, image pool, learning-rate
schedule, fit, resume, grids, save/load, refusals.

Tiny nets (widths 4, one residual block, 16-pixel training images) and a few steps on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from augment.generators import trainer
from augment.generators.base import SampleRequest
from augment.generators.cgan_family import CGANFamily, CGANFit
from augment.generators.diffusion_family import DiffusionFamily, DiffusionFit
from augment.generators.family import DataShape, TrainingData, check_family
from augment.sample import Sample
from domain_transfer.cyclegan import CycleGANTranslator
from domain_transfer.cyclegan_family import CycleGANFamily, CycleGANFit
from domain_transfer.image_pool import ImagePool
from domain_transfer.losses import cycle_loss, identity_loss, lsgan_d_loss, lsgan_g_loss
from domain_transfer.networks import PatchGANDiscriminator, ResnetGenerator, init_weights, receptive_field

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny nets: one thread is fastest on shared cores

TINY = CycleGANFit(steps=4, batch_size=2, ngf=4, ndf=4, n_blocks=1, d_layers=2, pool_size=3)
SHAPE = DataShape(image_size=16, channels=3, class_names=("car", "road"), width=20)
SEED = 11
MODULES = ("G", "F", "D_X", "D_Y")


def family(**changes: object) -> CycleGANFamily:
    return CycleGANFamily(TINY.model_copy(update=changes), SHAPE, SEED)


def toy_data(n: int = 6, m: int = 5, height: int = 16, width: int = 20) -> TrainingData:
    """X: dark frames with a bright bar; Y: bright frames with a dark bar (fixed noise)."""
    rng = np.random.default_rng(0)
    source = rng.integers(0, 80, (n, height, width, 3), dtype=np.uint8)
    source[:, 4:8] = 220
    target = rng.integers(150, 255, (m, height, width, 3), dtype=np.uint8)
    target[:, :, 5:9] = 30
    return TrainingData(source, np.array([0, 1] * (n // 2) + [0] * (n % 2), dtype=np.int64), target=target)


def parents_request(sizes: list[tuple[int, int]], channels: int = 3) -> SampleRequest:
    rng = np.random.default_rng(5)
    parents = [Sample(f"p{i}", rng.integers(0, 256, (h, w, channels), dtype=np.uint8), label=i % 2)
               for i, (h, w) in enumerate(sizes)]
    return SampleRequest(labels=[p.label for p in parents], seeds=list(range(len(parents))),
                         ids=[f"p{i}~cyclegan" for i in range(len(parents))], parent_ids=[p.id for p in parents],
                         parents=parents)


@pytest.fixture(scope="module")
def fitted() -> tuple[CycleGANFamily, TrainingData, trainer.TrainState]:
    fam, data = family(), toy_data()
    return fam, data, trainer.fit(fam, data)


# -- losses against hand computations -----------------------------------------------------


def test_lsgan_losses_match_hand_values() -> None:
    real, fake = torch.tensor([[0.5, 1.5]]), torch.tensor([[0.0, 2.0]])
    # D: 0.5 * (mean((0.5-1)², (1.5-1)²) + mean(0², 2²)) = 0.5 * (0.25 + 2) = 1.125
    assert lsgan_d_loss(real, fake).item() == pytest.approx(1.125)
    # G: mean((0-1)², (2-1)²) = 1
    assert lsgan_g_loss(fake).item() == pytest.approx(1.0)
    assert lsgan_g_loss(torch.ones(2, 1, 3, 3)).item() == 0.0


def test_cycle_and_identity_losses_match_hand_values() -> None:
    rec, orig = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, 1.0])
    # mean |rec - orig| = (0 + 1 + 2) / 3 = 1
    assert cycle_loss(rec, orig, 10.0).item() == pytest.approx(10.0)
    assert identity_loss(rec, orig, 10.0, 0.5).item() == pytest.approx(5.0)
    assert identity_loss(rec, orig, 10.0, 0.0).item() == 0.0


# -- networks -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_patchgan_receptive_field_is_measured_70_px_for_three_layers(n_layers: int) -> None:
    """Gradient of one score w.r.t. the input: its support is the receptive field (instance
    norm, which couples every pixel through the mean, is taken out; weights made positive so
    that nothing cancels)."""
    d = PatchGANDiscriminator(1, ndf=2, n_layers=n_layers)
    init_weights(d, torch.Generator().manual_seed(0))
    for i, layer in enumerate(d.model):
        if isinstance(layer, torch.nn.InstanceNorm2d):
            d.model[i] = torch.nn.Identity()
    with torch.no_grad():
        for p in d.parameters():
            p.abs_()
    x = torch.zeros(1, 1, 160, 160, requires_grad=True)
    scores = d(x)
    scores[0, 0, scores.shape[2] // 2, scores.shape[3] // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    measured = (int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    assert measured == (receptive_field(n_layers),) * 2
    if n_layers == 3:
        assert measured == (70, 70)


@pytest.mark.parametrize("size", [(30, 26), (180, 240), (9, 13), (8, 8), (16, 20)])
def test_generator_keeps_odd_and_non_square_sizes(size: tuple[int, int]) -> None:
    g = ResnetGenerator(3, ngf=4, n_blocks=1)
    init_weights(g, torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = g(torch.rand(2, 3, *size) * 2 - 1)
    assert y.shape == (2, 3, *size)
    assert y.abs().max() <= 1.0  # tanh


def test_same_seed_same_modules_and_different_streams() -> None:
    a, b = family().build(), family().build()
    for name in MODULES:
        for key, value in a[name].state_dict().items():
            assert torch.equal(value, b[name].state_dict()[key]), (name, key)
    assert not torch.equal(a["G"].model[1].weight, a["F"].model[1].weight)  # G and F drawn apart
    assert a["D_Y"].pool.images.shape == (3, 3, 16, 20)  # whole frames: crop 0
    assert family(crop=12).build()["D_X"].pool.images.shape == (3, 3, 12, 12)


# -- the image pool -----------------------------------------------------------------------


def constant(value: float) -> torch.Tensor:
    return torch.full((1, 1, 2, 2), value)


def test_pool_fills_first_then_returns_history_half_the_time() -> None:
    pool, rng = ImagePool(50, 1, 2, 2), torch.Generator().manual_seed(0)
    for i in range(50):  # filling: every image comes back as is and is kept
        assert torch.equal(pool.query(constant(i), rng), constant(i))
    assert int(pool.count) == 50 and torch.equal(pool.images[:, 0, 0, 0], torch.arange(50.0))
    old = 0
    for i in range(50, 450):
        before = pool.images.clone()
        out = pool.query(constant(i), rng)
        if torch.equal(out, constant(i)):  # tails: the pool is untouched
            assert torch.equal(pool.images, before)
        else:  # heads: an old one comes back and the new one takes its place
            old += 1
            slot = int(torch.nonzero(pool.images[:, 0, 0, 0] == i))
            assert torch.equal(out[0], before[slot])
    assert 0.4 < old / 400 < 0.6
    assert int(pool.count) == 50


def test_pool_is_seeded_and_its_state_round_trips(tmp_path: Path) -> None:
    def feed(pool: ImagePool, rng: torch.Generator, start: int, stop: int) -> list[torch.Tensor]:
        return [pool.query(torch.cat([constant(i), constant(-i)]), rng) for i in range(start, stop)]

    straight, rng = ImagePool(5, 1, 2, 2), torch.Generator().manual_seed(3)
    uninterrupted = feed(straight, rng, 0, 20)
    first, rng = ImagePool(5, 1, 2, 2), torch.Generator().manual_seed(3)
    head = feed(first, rng, 0, 8)
    save_file(dict(first.state_dict()), str(tmp_path / "pool.safetensors"))
    second = ImagePool(5, 1, 2, 2)
    second.load_state_dict(load_file(str(tmp_path / "pool.safetensors")))
    tail = feed(second, rng, 8, 20)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, head + tail, strict=True))
    other = feed(ImagePool(5, 1, 2, 2), torch.Generator().manual_seed(4), 0, 20)
    assert not all(torch.equal(a, b) for a, b in zip(uninterrupted, other, strict=True))


def test_empty_pool_is_the_identity_and_shapes_are_checked() -> None:
    pool, rng = ImagePool(0, 1, 2, 2), torch.Generator().manual_seed(0)
    assert torch.equal(pool.query(constant(7.0), rng), constant(7.0))
    with pytest.raises(ValueError, match=r"holds \(1, 2, 2\) images, got \(1, 3, 3\)"):
        pool.query(torch.zeros(1, 1, 3, 3), rng)
    with pytest.raises(ValueError, match="pool_size must be an integer >= 0, got -1"):
        ImagePool(-1, 1, 2, 2)


# -- learning-rate schedule ---------------------------------------------------------------


def test_lr_scale_is_constant_then_linear_to_zero() -> None:
    fam = family(steps=10, decay_from=4)
    scales = [fam.lr_scale(k) for k in range(10)]
    assert scales[:4] == [1.0] * 4
    assert scales[4:] == pytest.approx([1 - j / 7 for j in range(1, 7)])  # reaches 0 at step 10
    assert scales[-1] == pytest.approx(1 / 7) and fam.lr_scale(10) == pytest.approx(0.0)
    assert fam.lr_scale(50) == 0.0  # a resumed fit past `steps` never goes negative
    assert [family(steps=10).lr_scale(k) for k in (4, 5)] == [1.0, pytest.approx(5 / 6)]  # default: half
    assert family(steps=10, decay_from=10).lr_scale(9) == 1.0


def test_default_lr_scale_is_the_warm_up_as_before() -> None:
    diffusion = DiffusionFamily(DiffusionFit(warmup_steps=4), DataShape(8, 1, ("a",)), 0)
    assert [diffusion.lr_scale(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cgan = CGANFamily(CGANFit(), DataShape(8, 1, ("a",)), 0)
    assert cgan.lr_scale(0) == cgan.lr_scale(1000) == 1.0


# -- fit, resume, grids, save/load --------------------------------------------------------


def test_family_is_valid_and_asks_for_parents_and_a_target() -> None:
    check_family(CycleGANFamily)
    assert (CycleGANFamily.name, CycleGANFamily.request, CycleGANFamily.needs_target) == ("cyclegan", "parent", True)


def test_tiny_fit_logs_finite_losses_and_decays_the_lr() -> None:
    logs: list[trainer.Progress] = []
    fam = family(crop=12, steps=4, decay_from=2)
    state = trainer.fit(fam, toy_data(), on_log=logs.append, log_every=2)
    assert [p.step for p in logs] == [2, 4]
    assert all(set(p.losses) == {"G", "D", "cycle", "idt"} and np.isfinite(list(p.losses.values())).all()
               for p in logs)
    for optimizer in state.optimizers.values():  # the last step (k = 3) ran at 2e-4 · 1/3
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 / 3)
    assert int(state.module("D_Y").pool.count) == 3  # 4 steps × 2 fakes, pool of 3


def test_resume_equals_an_uninterrupted_fit(tmp_path: Path) -> None:
    """4 steps straight == 2 steps, save, load, 2 more: weights, pools and Adam moments."""
    data, fam = toy_data(), family(crop=12)
    straight = trainer.fit(fam, data)
    half = trainer.fit(fam, data, until=2)
    half.save(tmp_path / "state")
    resumed = trainer.train(fam, data, trainer.load_state(fam, tmp_path / "state"))
    assert resumed.step == straight.step == 4
    for name in MODULES:
        a, b = straight.module(name).state_dict(), resumed.module(name).state_dict()
        assert sorted(a) == sorted(b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=f"{name}.{key}")
    for name in ("generators", "discriminators"):
        sa, sb = straight.optimizers[name].state_dict()["state"], resumed.optimizers[name].state_dict()["state"]
        for i in sa:
            for k in sa[i]:
                torch.testing.assert_close(sa[i][k], sb[i][k], rtol=1e-6, atol=1e-7)


def test_run_saves_translation_grids_and_publishes_the_model(tmp_path: Path) -> None:
    data, fam = toy_data(), family()
    grids = tmp_path / "grids"
    state = trainer.run(fam, data, states=tmp_path / "states", model=tmp_path / "model", grids=grids,
                        checkpoint_every=2)
    assert sorted(p.name for p in grids.iterdir()) == ["step-00000002.png", "step-00000004.png"]
    picture = np.asarray(Image.open(grids / "step-00000004.png"))
    assert picture.dtype == np.uint8 and picture.shape == fam.grid(state, data).shape
    # 3 source rows + 3 target rows, 3 columns; 16×20 frames enlarged 4× to 64×80, 2 px apart
    assert picture.shape == (6 * (64 + 2), 3 * (80 + 2), 3)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "generator.safetensors"]


def test_save_load_round_trip_translates_the_same_bytes(fitted: tuple, tmp_path: Path) -> None:
    fam, _, state = fitted
    translator = fam.sampler(state)
    translator.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["shape"] == {"image_size": 16, "channels": 3, "class_names": ["car", "road"], "width": 20}
    loaded = CycleGANFamily.from_pretrained(tmp_path / "ckpt")
    assert (loaded.fit, loaded.shape, loaded.seed) == (fam.fit, SHAPE, SEED)
    req = parents_request([(16, 20), (30, 26), (180, 240)])
    before, after = translator.sample(req), loaded.sample(req)
    for a, b, parent in zip(before, after, req.parents, strict=True):
        assert np.array_equal(a.image, b.image)
        assert a.image.shape == parent.image.shape and a.image.dtype == np.uint8
        assert not np.array_equal(a.image, parent.image)
    assert after[1].parent_id == "p1" and after[1].label == 1 and after[1].source == "cyclegan"
    assert len(after[0].generator.checkpoint_sha256) == 64


def test_translation_does_not_depend_on_the_batch(fitted: tuple) -> None:
    fam, _, state = fitted
    translator = fam.sampler(state)
    req = parents_request([(16, 20), (31, 17), (16, 20), (31, 17), (16, 20)])
    one = translator.sample(req, batch_size=1)
    many = translator.sample(req, batch_size=8)
    assert [s.id for s in one] == req.ids
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, many, strict=True))


def test_gray_frames_and_checkpoint_grids() -> None:
    gray = DataShape(16, 1, ("a",))
    fam = CycleGANFamily(TINY.model_copy(update={"steps": 1}), gray, SEED)
    data = TrainingData(np.zeros((2, 16, 16, 1), np.uint8), np.full(2, -1),
                        target=np.full((3, 16, 16, 1), 200, np.uint8))
    state = trainer.fit(fam, data)
    assert fam.grid(state, data).shape == (5 * (64 + 2), 3 * (64 + 2), 3)  # 2 source rows, 3 target rows
    made = fam.sampler(state).sample(parents_request([(9, 12)], channels=1))
    assert made[0].image.shape == (9, 12, 1)


# -- refusals -------------------------------------------------------------------------------


def test_pickled_or_incomplete_checkpoints_are_refused(fitted: tuple, tmp_path: Path) -> None:
    fam, _, state = fitted
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(state.module("G").state_dict(), folder / "generator.pt")
    with pytest.raises(ValueError, match="pickled checkpoints are refused"):
        CycleGANTranslator.from_pretrained(folder)
    fam.sampler(state).save_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").write_text(json.dumps({"format": "synthaug.cgan", "format_version": 2}))
    with pytest.raises(ValueError, match="not a synthaug.cyclegan v1 config"):
        CycleGANTranslator.from_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "config.json").unlink()
    with pytest.raises(ValueError, match="needs generator.safetensors, config.json; missing config.json"):
        CycleGANTranslator.from_pretrained(tmp_path / "ok")


def test_check_data_refuses_a_missing_or_mis_sized_target() -> None:
    fam, data = family(), toy_data()
    trainer.check_data(data, fam)
    bad = {
        "none": None,
        "smaller": np.zeros((3, 12, 20, 3), np.uint8),
        "gray": np.zeros((3, 16, 20, 1), np.uint8),
        "float": np.zeros((3, 16, 20, 3), np.float32),
        "empty": np.zeros((0, 16, 20, 3), np.uint8),
    }
    for name, target in bad.items():
        with pytest.raises(ValueError, match="cyclegan: target images must be uint8 Mx16x20x3"):
            trainer.check_data(TrainingData(data.images, data.labels, target=target), fam)
        with pytest.raises(ValueError, match="target"):
            trainer.fit(fam, TrainingData(data.images, data.labels, target=target))


@pytest.mark.parametrize("changes,shape,message", [
    ({"crop": 24}, SHAPE, r"crop must be at most the images' smaller side \(16\), got crop=24"),
    ({"d_layers": 3}, SHAPE, r"d_layers=3 \(patches of 70 px\) leaves no patch score on 20x16 images"),
    ({"d_layers": 2, "crop": 8}, SHAPE, r"d_layers=2 \(patches of 34 px\) leaves no patch score on crop=8"),
    ({}, DataShape(16, 4, ("a",)), "channels must be 1 or 3, got 4"),
    ({}, DataShape(6, 3, ("a",), 40), "at least 8x8, got 40x6"),
])
def test_hyperparameters_that_cannot_fit_the_frames_are_refused(changes: dict, shape: DataShape,
                                                                message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CycleGANFamily(TINY.model_copy(update=changes), shape, SEED)


@pytest.mark.parametrize("fields,message", [
    ({"crop": 5}, "crop must be 0 .whole frames. or at least 8, got 5"),
    ({"steps": 10, "decay_from": 11}, r"decay_from must be at most steps \(10\), got 11"),
    ({"betas": (0.5, 1.0)}, r"betas must be two numbers in \[0, 1\), got \[0.5, 1.0\]"),
    ({"pool_size": -1}, "pool_size"),
    ({"lambdas": 1}, "lambdas"),
])
def test_bad_fit_fields_are_validation_errors(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CycleGANFit(**fields)


def test_translator_refuses_requests_it_cannot_translate(fitted: tuple) -> None:
    fam, _, state = fitted
    translator = fam.sampler(state)
    with pytest.raises(ValueError, match="the request has no parents"):
        translator.sample(SampleRequest(labels=[0], seeds=[0], ids=["a"]))
    with pytest.raises(ValueError, match=r"parent 'p0' must be a uint8 HxWx3 image of at least 8x8"):
        translator.sample(parents_request([(16, 20)], channels=1))
    with pytest.raises(ValueError, match=r"parent 'p0' must be a uint8 HxWx3"):
        translator.sample(parents_request([(6, 20)]))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        translator.sample(parents_request([(16, 20)]), batch_size=0)


# -- DDP (gloo, two CPU processes; the path Ray Train's prepare_model takes) ------------------


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = Path(folder)
        state = trainer.run(family(), toy_data(), states=out / "states", model=out / "model", grids=out / "grids",
                            checkpoint_every=2, rank=rank,
                            prepare=lambda m: torch.nn.parallel.DistributedDataParallel(m))
        g, pool = state.module("G").model[1].weight.detach(), state.module("D_Y").pool.images
        save_file({"g": g.contiguous(), "pool": pool.contiguous()}, str(out / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_workers_share_weights_and_keep_their_own_pools(tmp_path: Path) -> None:
    """G is called three times before one backward, G's step looks through D with detached
    weights, and the pools are left out of DDP's buffer broadcast: weights agree across
    ranks, each rank's history of fakes is its own, rank 0 alone writes grids and the model."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert torch.equal(ranks[0]["g"], ranks[1]["g"])
    assert not torch.equal(ranks[0]["pool"], ranks[1]["pool"])
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "generator.safetensors"]


# -- CUDA (a lent GPU machine only: `python -m pytest -m gpu`) -------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fits_in_bf16_on_cuda_and_translates_like_on_cpu(tmp_path: Path) -> None:
    data, fam = toy_data(), family(bf16=True, crop=12)
    state = trainer.run(fam, data, states=tmp_path / "states", model=tmp_path / "model", grids=tmp_path / "grids",
                        checkpoint_every=2, device="cuda")
    assert state.step == 4 and state.module("D_Y").pool.images.is_cuda
    assert len(list((tmp_path / "grids").iterdir())) == 2
    req = parents_request([(16, 20), (31, 17)])
    on_gpu = CycleGANFamily.from_pretrained(tmp_path / "model", device="cuda").sample(req)
    on_cpu = CycleGANFamily.from_pretrained(tmp_path / "model", device="cpu").sample(req)
    for a, b in zip(on_gpu, on_cpu, strict=True):  # kernels differ: compare loosely
        assert a.image.shape == b.image.shape and np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 2
