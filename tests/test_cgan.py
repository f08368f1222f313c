"""Class-conditional GAN: losses, projection D, seeding, truncation, save/load, resume.

Tiny nets (8x8 gray, widths 4-8) and a few steps on CPU; the whole file runs in seconds.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.generators import trainer
from augment.generators.base import SampleRequest
from augment.generators.cgan import ClassConditionalGAN, ProjectionDiscriminator, gpu_preset, truncated_normal
from augment.generators.cgan_family import CGANFamily, CGANFit
from augment.generators.cgan_train import hinge_d_loss, hinge_g_loss
from augment.generators.family import DataShape, TrainingData

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny nets: one thread is fastest on shared cores

TINY = CGANFit(z_dim=8, g_channels=4, d_channels=4, batch_size=8, steps=4, ema_decay=0.9)
SHAPE = DataShape(image_size=8, channels=1, class_names=("a", "b", "c"))
SEED = 7


def family(**changes: object) -> CGANFamily:
    return CGANFamily(TINY.model_copy(update=changes), SHAPE, SEED)


def toy_data(n: int = 30, size: int = 8) -> TrainingData:
    """Class k is a bright band at row block k, plus fixed noise: learnable, deterministic."""
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int64) % 3
    images = rng.integers(0, 60, size=(n, size, size, 1), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, k * 2:(k * 2) + 3] = 230
    return TrainingData(images, labels)


def request(labels: list[int], seeds: list[int]) -> SampleRequest:
    return SampleRequest(labels=labels, seeds=seeds, ids=[f"s{i}" for i in range(len(labels))],
                         parent_ids=[f"p{i}" for i in range(len(labels))])


@pytest.fixture(scope="module")
def trained() -> ClassConditionalGAN:
    """A G after a few steps, so BatchNorm running statistics are not the identity."""
    fam = family()
    return fam.sampler(trainer.fit(fam, toy_data()))


def test_hinge_losses_match_hand_values() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1, 1.5] -> 5/6
    assert hinge_d_loss(real, fake).item() == pytest.approx(5 / 6 + 5 / 6)
    assert hinge_g_loss(fake).item() == pytest.approx(0.5)


def test_projection_discriminator_matches_hand_formula() -> None:
    d = ProjectionDiscriminator(TINY, SHAPE).eval()  # eval: spectral norm uses its stored u, v
    x = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
    y = torch.tensor([2, 0])
    with torch.no_grad():
        phi = d.features(x)  # phi(x): blocks, ReLU, sum over space
        w_psi, b_psi, table = d.linear.weight, d.linear.bias, d.embed.weight  # spectrally normalised
        expected = torch.stack([torch.dot(w_psi[0], phi[i]) + b_psi[0] + torch.dot(table[y[i]], phi[i])
                                for i in range(2)])
        assert torch.allclose(d(x, y), expected, atol=1e-5)
        # the normalised table is W / sigma with sigma = u^T W v (Miyato et al. 2018, eq. 8)
        sn = d.embed.parametrizations.weight
        sigma = sn[0]._u @ sn.original @ sn[0]._v
        assert torch.allclose(table, sn.original / sigma, atol=1e-6)


def test_same_seed_same_init() -> None:
    a, b = trainer.new_state(family()), trainer.new_state(family())
    for name in ("generator", "discriminator"):
        m_a, m_b = a.module(name), b.module(name)
        for (k, v), (_, w) in zip(m_a.state_dict().items(), m_b.state_dict().items(), strict=True):
            assert torch.equal(v, w), k


def test_seeds_decide_images_and_batches_do_not(trained: ClassConditionalGAN) -> None:
    labels, seeds = [0, 1, 2, 1, 0], [11, 12, 13, 14, 15]
    batch = trained.sample(request(labels, seeds), truncation=None, batch_size=5)
    again = trained.sample(request(labels, seeds), truncation=None, batch_size=2)
    alone = trained.sample(request([labels[3]], [seeds[3]]), truncation=None, batch_size=1)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(batch, again, strict=True))
    assert np.array_equal(alone[0].image, batch[3].image)  # bitwise uint8: batch-independent
    other = trained.sample(request([labels[3]], [999]), truncation=None, batch_size=1)
    assert not np.array_equal(other[0].image, batch[3].image)
    assert batch[0].image.shape == (8, 8, 1) and batch[0].image.dtype == np.uint8


def test_sample_records(trained: ClassConditionalGAN) -> None:
    out = trained.sample(request(list(np.array([2, 0])), [5, 6]), truncation=0.5, batch_size=4)  # numpy ids too
    assert [(s.id, s.label, s.seed, s.parent_id, s.source) for s in out] == [
        ("s0", 2, 5, "p0", "cgan"), ("s1", 0, 6, "p1", "cgan")]
    assert out[0].generator.name == "cgan"
    assert json.loads(out[0].generator.params_json) == {"truncation": 0.5}
    assert json.loads(trained.sample(request([0], [1]), truncation=0, batch_size=1)[0].generator.params_json) == {
        "truncation": None}
    with pytest.raises(ValueError, match="class ids"):
        trained.sample(request([3], [1]), batch_size=1)
    with pytest.raises(ValueError, match="truncation"):
        trained.sample(request([0], [1]), truncation=-1.0, batch_size=1)


def test_truncated_normal_is_seeded_and_bounded() -> None:
    z = truncated_normal(256, 3, 0.5)
    assert torch.equal(z, truncated_normal(256, 3, 0.5))
    assert z.abs().max().item() <= 0.5
    assert torch.equal(truncated_normal(16, 3, None), truncated_normal(16, 3, 0))


def test_smaller_truncation_gives_less_diverse_samples() -> None:
    gan = ClassConditionalGAN(TINY, SHAPE, seed=SEED)  # untrained is enough: diversity follows |z|
    seeds = list(range(100, 116))

    def spread(truncation: float | None) -> float:
        images = [s.image.astype(np.float64) for s in gan.sample(request([1] * 16, seeds), truncation=truncation,
                                                                  batch_size=16)]
        return float(np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(images, 2)]))

    assert spread(0.25) < spread(1.0) < spread(None)


def test_save_load_round_trip(trained: ClassConditionalGAN, tmp_path: Path) -> None:
    trained.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "generator.safetensors"]
    loaded = ClassConditionalGAN.from_pretrained(tmp_path / "ckpt")
    assert (loaded.fit, loaded.shape, loaded.seed) == (TINY, SHAPE, SEED)  # hyperparameters round-trip
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["format_version"] == 2
    req = request([0, 1, 2], [1, 2, 3])
    before, after = trained.sample(req, batch_size=3), loaded.sample(req, batch_size=3)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(before, after, strict=True))
    assert after[0].generator.checkpoint_sha256 is not None and len(after[0].generator.checkpoint_sha256) == 64


def test_pickled_checkpoint_is_refused(trained: ClassConditionalGAN, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(trained.generator.state_dict(), folder / "generator.pt")
    with pytest.raises(ValueError, match="pickle"):
        ClassConditionalGAN.from_pretrained(folder)


def test_resume_is_bitwise_identical(tmp_path: Path) -> None:
    """4 steps straight == 2 steps, save, load, 2 more: every tensor equal (torch.equal, bitwise)."""
    data, fam = toy_data(), family(n_critic=2)
    straight = trainer.fit(fam, data)
    half = trainer.fit(fam, data, until=2)
    half.save(tmp_path / "state")
    resumed = trainer.train(fam, data, trainer.load_state(fam, tmp_path / "state"))
    assert resumed.step == straight.step == 4
    pairs = [(straight.module(n), resumed.module(n)) for n in ("generator", "discriminator")]
    for a, b in pairs + [(straight.ema["generator"], resumed.ema["generator"])]:
        sa, sb = a.state_dict(), b.state_dict()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    for name in ("generator", "discriminator"):
        sa, sb = straight.optimizers[name].state_dict()["state"], resumed.optimizers[name].state_dict()["state"]
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_resumable_run_picks_only_complete_states(tmp_path: Path) -> None:
    """`trainer.run` resumes from states/LATEST; a half-written newer state (no state.json, as
    when the process dies while saving) is ignored and replaced, and the result is the
    uninterrupted fit's."""
    data, fam = toy_data(), family()
    states, grids = tmp_path / "states", tmp_path / "grids"
    trainer.run(family(steps=2), data, states=states, model=tmp_path / "model2", grids=grids, checkpoint_every=2)
    assert (states / "LATEST").read_text().strip() == "step-00000002"
    (states / "step-00000004").mkdir()
    (states / "step-00000004" / "state.safetensors").write_bytes(b"half")
    assert trainer.latest_state(states) == states / "step-00000002"
    resumed = trainer.run(fam, data, states=states, model=tmp_path / "model", grids=grids, checkpoint_every=2)
    straight = trainer.fit(fam, data)
    for key, value in straight.ema["generator"].state_dict().items():
        assert torch.equal(value, resumed.ema["generator"].state_dict()[key]), key
    assert sorted(p.name for p in states.iterdir()) == ["LATEST", "step-00000004"]
    assert sorted(p.name for p in grids.iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "generator.safetensors"]
    (states / "LATEST").write_text("step-00000009\n")  # points at nothing: start afresh, never crash
    assert trainer.latest_state(states) is None


def test_losses_are_finite_and_logged() -> None:
    logs: list[trainer.Progress] = []
    trainer.fit(family(), toy_data(), on_log=logs.append, log_every=2)
    assert [p.step for p in logs] == [2, 4]
    assert all(set(p.losses) == {"loss_d", "loss_g"} and np.isfinite(list(p.losses.values())).all()
               and p.steps_per_second > 0 for p in logs)


def test_bad_inputs_raise_value_errors(tmp_path: Path) -> None:
    data = toy_data()
    with pytest.raises(ValueError, match=r"image_size must be one of \(8, 16, 32, 64\), got 24"):
        CGANFamily(TINY, DataShape(24, 1, ("a",)), 0)
    with pytest.raises(ValueError, match="even batch_size, got batch_size=7"):
        CGANFit(mode_seeking=1.0, batch_size=7)
    with pytest.raises(ValueError, match="uint8"):
        trainer.fit(family(), TrainingData(data.images.astype(np.float32), data.labels))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got \[1, 3\]"):
        trainer.fit(family(), TrainingData(data.images, data.labels + 1))
    with pytest.raises(ValueError, match=r"differ from this fit's in fit.lr_g"):
        trainer.train(family(), data, trainer.new_state(family(lr_g=1e-3)))
    with pytest.raises(ValueError, match="image_size must be one of"):
        gpu_preset(24)
    preset = gpu_preset(64)
    assert (preset.g_channels, preset.betas, preset.steps) == (64, (0.0, 0.999), 100_000)
    CGANFamily(preset, DataShape(64, 3, ("a", "b")), 0)
    assert CGANFit.model_validate(json.loads(TINY.model_dump_json())) == TINY
