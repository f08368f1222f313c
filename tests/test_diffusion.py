"""Class-conditional diffusion: guidance formula, seeding, save/load, training, resume.

Tiny models only (block_out_channels=(8, 16), 8x8 images, a few steps), CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.generators import trainer
from augment.generators.base import SampleRequest, checkpoint_sha256
from augment.generators.diffusion import (
    ClassConditionalDiffusion,
    build_train_scheduler,
    build_unet,
    gpu_preset,
    guided_noise,
    to_model_space,
)
from augment.generators.diffusion_family import DiffusionFamily, DiffusionFit
from augment.generators.diffusion_train import training_step
from augment.generators.family import DataShape, TrainingData

TINY = DiffusionFit(block_out_channels=(8, 16), norm_num_groups=8, batch_size=8, steps=2, warmup_steps=0, lr=1e-3)
SHAPE = DataShape(image_size=8, channels=1, class_names=("dark", "light"))
SEED = 3


def family(**changes: object) -> DiffusionFamily:
    return DiffusionFamily(TINY.model_copy(update=changes), SHAPE, SEED)


def two_class_data(n: int = 8) -> TrainingData:
    """Class 0: black images, class 1: white images."""
    labels = np.arange(n, dtype=np.int64) % 2
    images = np.where(labels[:, None, None, None] == 1, 255, 0).astype(np.uint8) * np.ones((1, 8, 8, 1), np.uint8)
    return TrainingData(images, labels)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads spin-wait when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe() -> ClassConditionalDiffusion:
    fam = family()
    return fam.sampler(trainer.fit(fam, two_class_data()))


def request(labels: list[int], seeds: list[int]) -> SampleRequest:
    return SampleRequest(labels=labels, seeds=seeds, ids=[f"s{s}-{c}" for c, s in zip(labels, seeds)])


class StubEps(torch.nn.Module):
    """ε(x, t, c) = (c + 1) · x for a real class, −x for ∅ (= class 2); records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, class_labels: torch.Tensor,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        self.batches.append(x.shape[0])
        scale = torch.where(class_labels == 2, -1.0, class_labels.float() + 1.0)
        return (scale[:, None, None, None] * x,)


def test_guidance_formula_against_hand_computation() -> None:
    stub = StubEps()
    x = torch.ones(2, 1, 2, 2)
    labels = torch.tensor([0, 1])
    w = torch.tensor([2.0, 0.5])
    out = guided_noise(stub, x, torch.tensor(10), labels, w, null_label=2)
    # (1 + w) · ε(x, c) − w · ε(x, ∅): class 0 → 3·1 − 2·(−1) = 5; class 1 → 1.5·2 − 0.5·(−1) = 3.5
    assert torch.equal(out[0], torch.full((1, 2, 2), 5.0))
    assert torch.equal(out[1], torch.full((1, 2, 2), 3.5))
    assert stub.batches == [4]  # one forward of size 2B


def test_zero_guidance_is_the_conditional_prediction() -> None:
    unet = build_unet(TINY, SHAPE, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        guided = guided_noise(unet, x, torch.tensor(500), labels, 0.0)
        cond = unet(x, torch.tensor(500), class_labels=labels).sample
    torch.testing.assert_close(guided, cond, rtol=0, atol=1e-6)


def test_batched_forward_equals_separate_forwards() -> None:
    unet = build_unet(TINY, SHAPE, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 2])
    t = torch.tensor([7, 7, 7, 7])
    with torch.no_grad():
        together = unet(x, t, class_labels=labels).sample
        apart = torch.cat([unet(x[:2], t[:2], class_labels=labels[:2]).sample,
                           unet(x[2:], t[2:], class_labels=labels[2:]).sample])
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "ddpm"])
def test_seeding_and_batch_independence(pipe: ClassConditionalDiffusion, scheduler: str) -> None:
    batch = pipe.sample(request([0, 1, 1, 0], [11, 12, 13, 14]), guidance=2.0, steps=4, scheduler=scheduler,
                        batch_size=4)
    alone = pipe.sample(request([1], [13]), guidance=2.0, steps=4, scheduler=scheduler, batch_size=1)
    again = pipe.sample(request([1], [13]), guidance=2.0, steps=4, scheduler=scheduler, batch_size=1)
    other = pipe.sample(request([1], [99]), guidance=2.0, steps=4, scheduler=scheduler, batch_size=1)
    assert batch[2].image.dtype == np.uint8 and batch[2].image.shape == (8, 8, 1)
    np.testing.assert_array_equal(alone[0].image, again[0].image)  # same seed → same image
    np.testing.assert_array_equal(alone[0].image, batch[2].image)  # independent of batch composition
    assert not np.array_equal(alone[0].image, other[0].image)  # different seed → different image
    s = batch[1]
    assert (s.source, s.label, s.seed, s.id, s.generator.name) == ("diffusion", 1, 12, "s12-1", "diffusion")
    assert json.loads(s.generator.params_json) == {"guidance": 2.0, "scheduler": scheduler, "steps": 4}


def test_per_class_guidance_dict(pipe: ClassConditionalDiffusion) -> None:
    mixed = pipe.sample(request([0, 1], [5, 6]), guidance={0: 0.0, 1: 3.0}, steps=3, batch_size=2)
    w0 = pipe.sample(request([0], [5]), guidance=0.0, steps=3)
    w3 = pipe.sample(request([1], [6]), guidance=3.0, steps=3)
    np.testing.assert_array_equal(mixed[0].image, w0[0].image)
    np.testing.assert_array_equal(mixed[1].image, w3[0].image)
    assert [json.loads(s.generator.params_json)["guidance"] for s in mixed] == [0.0, 3.0]
    default = pipe.sample(request([1], [6]), guidance={0: 1.0}, steps=3)  # class 1 falls back
    assert json.loads(default[0].generator.params_json)["guidance"] == pipe.default_guidance
    with pytest.raises(ValueError, match="unknown classes"):
        pipe.sample(request([0], [1]), guidance={7: 1.0}, steps=2)


def test_bad_requests_raise(pipe: ClassConditionalDiffusion) -> None:
    with pytest.raises(ValueError, match="outside"):
        pipe.sample(request([2], [1]), steps=2)
    with pytest.raises(ValueError, match="unknown scheduler"):
        pipe.sample(request([0], [1]), steps=2, scheduler="euler")


def test_save_load_round_trip(pipe: ClassConditionalDiffusion, tmp_path: Path) -> None:
    before = pipe.sample(request([0, 1], [21, 22]), guidance=1.5, steps=3, scheduler="dpm++")
    pipe.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "ckpt" / "scheduler" / "scheduler_config.json").is_file()
    meta = json.loads((tmp_path / "ckpt" / "synthaug.json").read_text())
    assert meta["class_names"] == ["dark", "light"] and meta["image_size"] == 8 and meta["channels"] == 1
    loaded = ClassConditionalDiffusion.from_pretrained(tmp_path / "ckpt")
    assert loaded.fit == pipe.fit == TINY and loaded.seed == SEED  # the hyperparameters round-trip
    after = loaded.sample(request([0, 1], [21, 22]), guidance=1.5, steps=3, scheduler="dpm++")
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.image, b.image)
    assert after[0].generator.checkpoint_sha256 == checkpoint_sha256(tmp_path / "ckpt")
    assert loaded.class_names == ("dark", "light")


def test_pickled_checkpoint_is_refused(pipe: ClassConditionalDiffusion, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path)
    pipe.unet.save_pretrained(tmp_path / "unet", safe_serialization=False)
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError, match="pickle"):
        ClassConditionalDiffusion.from_pretrained(tmp_path)


def test_training_loss_is_finite_and_decreases() -> None:
    data = two_class_data()
    fam = family(steps=30, lr=3e-3)
    scheduler = build_train_scheduler(fam.fit)
    x0, c = to_model_space(data.images), torch.from_numpy(data.labels)

    def held_out_loss(model: torch.nn.Module) -> float:  # same t, ε, dropout every time
        with torch.no_grad():
            return float(training_step(model, x0, c, scheduler, torch.Generator().manual_seed(0), 0.0))

    state = trainer.new_state(fam)
    before = held_out_loss(state.module("unet"))
    logged: list[trainer.Progress] = []
    state = trainer.train(fam, data, state, on_log=logged.append, log_every=10)
    after = held_out_loss(state.module("unet"))
    assert [p.step for p in logged] == [10, 20, 30] and all(p.total == 30 for p in logged)
    assert all(np.isfinite(p.losses["loss"]) and p.steps_per_second > 0 for p in logged)
    assert logged[-1].eta_seconds == 0 and "fit diffusion: step 30/30 loss " in str(logged[-1])
    assert np.isfinite(after) and after < 0.7 * before


def test_resume_equals_straight_run(tmp_path: Path) -> None:
    """Bitwise: same device, same ops in the same order, and the state (weights, EMA, AdamW
    moments and step counts, RNG) round-trips exactly through safetensors/JSON."""
    data = two_class_data()
    fam = family(steps=6, warmup_steps=4)
    straight = trainer.fit(fam, data)
    half = trainer.fit(fam, data, until=3)
    half.save(tmp_path / "state")
    resumed = trainer.load_state(fam, tmp_path / "state")
    assert resumed.step == 3 and resumed.trained_with == half.trained_with
    resumed = trainer.train(fam, data, resumed)
    assert resumed.step == straight.step == 6
    for a, b in [(straight.module("unet"), resumed.module("unet")), (straight.ema["unet"], resumed.ema["unet"])]:
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name
    opt_a, opt_b = straight.optimizers["unet"], resumed.optimizers["unet"]
    for pa, pb in zip(straight.module("unet").parameters(), resumed.module("unet").parameters(), strict=True):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert all(torch.equal(sa[k], sb[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == TINY.lr  # past the warm-up
    assert torch.equal(straight.rng.get_state(), resumed.rng.get_state())


def test_config_and_data_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        DiffusionFamily(TINY, DataShape(8, 2, ("a", "b")), 0)
    with pytest.raises(ValueError, match=r"image_size 10 is not divisible by 2\*\*2"):
        DiffusionFamily(DiffusionFit(), DataShape(10, 1, ("a", "b")), 0)  # three levels
    with pytest.raises(ValueError, match=r"\[12\] not divisible by norm_num_groups=8"):
        DiffusionFit(block_out_channels=(8, 12))
    fam = family()
    with pytest.raises(ValueError, match="images must be uint8"):
        trainer.fit(fam, TrainingData(np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2, np.int64)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), got \[0, 5\]"):
        trainer.fit(fam, TrainingData(np.zeros((2, 8, 8, 1), np.uint8), np.array([0, 5])))
    trainer.fit(fam, two_class_data(), until=1).save(tmp_path / "state")
    with pytest.raises(ValueError, match=r"differ from this fit's in fit.lr \(0.001 != 0.002\)"):
        trainer.load_state(family(lr=2e-3), tmp_path / "state")
    trainer.load_state(family(steps=50), tmp_path / "state")  # only steps may change
    preset = gpu_preset(32)
    assert preset.block_out_channels == (128, 256, 256, 256) and preset.steps == 100_000
    assert DiffusionFit.model_validate(json.loads(preset.model_dump_json())) == preset
    DiffusionFamily(preset, DataShape(32, 3, tuple(str(c) for c in range(10))), 0)  # fits 32 px RGB
    assert gpu_preset(64, batch_size=32).batch_size == 32


def test_ddim_sampling_does_not_clip_the_x0_estimate() -> None:
    """Clipping x0 under guidance destroyed class fidelity on digits (0.20 vs 0.995 at w=2)."""
    from augment.generators.diffusion import build_train_scheduler, make_sampling_scheduler

    train = build_train_scheduler(DiffusionFit())
    assert train.config.clip_sample  # the training config keeps diffusers' default...
    assert not make_sampling_scheduler(train, "ddim").config.clip_sample  # ...sampling does not clip


@pytest.mark.parametrize("name", ["ddim", "dpm++", "ddpm"])
def test_epsilon_models_never_start_sampling_at_zero_snr(name: str) -> None:
    """From t = T-1 on the cosine schedule (ᾱ ≈ 2e-9) an epsilon model's x0 estimate blows up
    and samples saturate; v-prediction models may start there."""
    from augment.generators.diffusion import build_train_scheduler, make_sampling_scheduler

    train = build_train_scheduler(DiffusionFit())
    sampler = make_sampling_scheduler(train, name)
    sampler.set_timesteps(25)
    assert float(train.alphas_cumprod[int(sampler.timesteps[0])]) > 1e-3
    v_train = build_train_scheduler(DiffusionFit(prediction_type="v_prediction"))
    v_sampler = make_sampling_scheduler(v_train, name)
    v_sampler.set_timesteps(25)
    assert int(v_sampler.timesteps[0]) == v_train.config.num_train_timesteps - 1
