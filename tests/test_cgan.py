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

from augment.generators.base import SampleRequest
from augment.generators.cgan import (
    CGANConfig,
    ClassConditionalGAN,
    ProjectionDiscriminator,
    truncated_normal,
)
from augment.generators.cgan_train import (
    CGANState,
    fit_cgan,
    hinge_d_loss,
    hinge_g_loss,
)

TINY = CGANConfig(image_size=8, channels=1, num_classes=3, z_dim=8, g_channels=4, d_channels=4, batch_size=8,
                  train_steps=4, ema_decay=0.9, seed=7, class_names=("a", "b", "c"))


def toy_data(n: int = 30, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a bright band at row block k, plus fixed noise: learnable, deterministic."""
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int64) % 3
    images = rng.integers(0, 60, size=(n, size, size, 1), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, k * 2:(k * 2) + 3] = 230
    return images, labels


def request(labels: list[int], seeds: list[int]) -> SampleRequest:
    return SampleRequest(labels=labels, seeds=seeds, ids=[f"s{i}" for i in range(len(labels))],
                         parent_ids=[f"p{i}" for i in range(len(labels))])


@pytest.fixture(scope="module")
def trained() -> ClassConditionalGAN:
    """A G after a few steps, so BatchNorm running statistics are not the identity."""
    images, labels = toy_data()
    return ClassConditionalGAN.fit(images, labels, TINY)


def test_hinge_losses_match_hand_values() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1, 1.5] -> 5/6
    assert hinge_d_loss(real, fake).item() == pytest.approx(5 / 6 + 5 / 6)
    assert hinge_g_loss(fake).item() == pytest.approx(0.5)


def test_projection_discriminator_matches_hand_formula() -> None:
    d = ProjectionDiscriminator(TINY).eval()  # eval: spectral norm uses its stored u, v
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
    a, b = CGANState.create(TINY), CGANState.create(TINY)
    for m_a, m_b in ((a.generator, b.generator), (a.discriminator, b.discriminator)):
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
    gan = ClassConditionalGAN(TINY)  # untrained is enough: diversity follows |z|
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
    assert loaded.config == TINY and loaded.config.class_names == ("a", "b", "c")
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
    images, labels = toy_data()
    config = CGANConfig(**{**TINY.to_dict(), "n_critic": 2})
    straight = fit_cgan(images, labels, config)
    half = fit_cgan(images, labels, CGANConfig(**{**config.to_dict(), "train_steps": 2}))
    half.save_training_state(tmp_path / "state")
    resumed = fit_cgan(images, labels, config, state=CGANState.load_training_state(tmp_path / "state"))
    assert resumed.step == straight.step == 4
    for name in ("generator", "discriminator", "generator_ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"
    for opt in ("opt_g", "opt_d"):
        sa, sb = getattr(straight, opt).state_dict()["state"], getattr(resumed, opt).state_dict()["state"]
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_losses_are_finite_and_logged() -> None:
    images, labels = toy_data()
    logs: list[tuple[int, float, float, float]] = []
    fit_cgan(images, labels, TINY, on_log=lambda *row: logs.append(row), log_every=2)
    assert [row[0] for row in logs] == [2, 4]
    assert all(np.isfinite(row[1:]).all() and row[3] > 0 for row in logs)


def test_bad_inputs_raise_value_errors() -> None:
    images, labels = toy_data()
    with pytest.raises(ValueError, match="image_size"):
        CGANConfig(image_size=24)
    with pytest.raises(ValueError, match="uint8"):
        fit_cgan(images.astype(np.float32), labels, TINY)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_cgan(images, labels + 1, TINY)
    with pytest.raises(ValueError, match="differs"):
        fit_cgan(images, labels, TINY, state=CGANState.create(CGANConfig(**{**TINY.to_dict(), "lr_g": 1e-3})))
    assert CGANConfig.gpu_preset(64).image_size == 64
    assert CGANConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
