"""SPADE / OASIS (`spade` family): losses against hand computations, the SPADE layer, network
shapes at a non-square size, fits with both discriminators and the VAE, resume, painting
(masks kept byte for byte, seeds), save/load, the VGG loss from a local file, refusals.

Tiny nets (widths 4, 2 noise channels) on 16×24 (H×W) frames of 3 classes, a few steps on CPU.
"""

from __future__ import annotations

import json
import math
import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import save_file

from augment.generators import trainer
from augment.generators.base import SampleRequest
from augment.generators.family import DataShape, TrainingData, check_family
from augment.generators.spade import SPADEPainter
from augment.generators.spade_config import SPADEFit, halvings
from augment.generators.spade_discriminators import MultiscalePatchGAN, OASISDiscriminator
from augment.generators.spade_family import SPADEFamily
from augment.generators.spade_losses import (class_balance, feature_matching_loss, hinge_d_loss, hinge_g_loss,
                                             kld_loss, labelmix, labelmix_loss, labelmix_mask, oasis_d_loss,
                                             oasis_g_loss)
from augment.generators.spade_networks import SPADE, SPADEGenerator, generator_widths, one_hot
from augment.generators.spade_train import SPADEStep, build_modules
from augment.generators.vgg import TAP_WEIGHTS, IMAGENET_STD, VGGLoss, load_vgg_features
from augment.sample import Sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny nets: one thread is fastest on shared cores

NAMES = ("road", "car", "void")
SHAPE = DataShape(image_size=16, channels=3, class_names=NAMES, width=24)  # non-square on purpose
TINY = SPADEFit(steps=2, batch_size=2, ngf=4, ndf=4, spade_hidden=4, noise_dim=2, z_dim=4)
SEED = 5
LN2 = math.log(2.0)


def family(**changes: object) -> SPADEFamily:
    return SPADEFamily(TINY.model_copy(update=changes), SHAPE, SEED)


def toy_maps(n: int, height: int = 16, width: int = 24) -> np.ndarray:
    """Road below a horizon, a car box at a shifting place, a void strip on the left."""
    masks = np.zeros((n, height, width), np.uint16)
    for i in range(n):
        masks[i, : height // 2] = 2 if i % 2 else 0
        masks[i, height // 2:, :] = 0
        left = 2 + (3 * i) % (width - 8)
        masks[i, height // 2 - 2: height - 3, left:left + 6] = 1
        masks[i, :, :2] = 2
    return masks


def toy_data(n: int = 4) -> TrainingData:
    """Each class painted in its colour, plus fixed noise."""
    masks = toy_maps(n)
    colours = np.array([[90, 90, 90], [200, 30, 30], [20, 20, 60]])
    rng = np.random.default_rng(0)
    images = np.clip(colours[masks] + rng.normal(0, 10, masks.shape + (3,)), 0, 255).astype(np.uint8)
    return TrainingData(images, np.full(n, -1, dtype=np.int64), masks)


def maps_request(maps: list[np.ndarray], seeds: list[int]) -> SampleRequest:
    return SampleRequest(labels=[-1] * len(maps), seeds=seeds, ids=[f"m{i}~spade" for i in range(len(maps))],
                         parent_ids=[f"m{i}" for i in range(len(maps))], label_maps=maps)


@pytest.fixture(scope="module")
def fitted() -> tuple[SPADEFamily, TrainingData, trainer.TrainState]:
    fam, data = family(), toy_data()
    return fam, data, trainer.fit(fam, data)


# -- losses against hand computations -------------------------------------------------------


def test_hinge_losses_match_hand_values() -> None:
    real = [torch.tensor([[0.5, 2.0]]), torch.tensor([[-1.0]])]
    fake = [torch.tensor([[-2.0, 0.5]]), torch.tensor([[0.0]])]
    # scale 1: mean(relu(0.5), relu(-1)) + mean(relu(-1), relu(1.5)) = 0.25 + 0.75; scale 2: 2 + 1
    assert hinge_d_loss(real, fake).item() == pytest.approx((1.0 + 3.0) / 2)
    # G: −mean(D(G(m))): scale 1: 0.75, scale 2: 0
    assert hinge_g_loss(fake).item() == pytest.approx(0.375)


def test_feature_matching_sums_layers_averages_scales_and_leaves_reals_alone() -> None:
    real_a = torch.zeros(1, 1, 2, 2, requires_grad=True)
    real = [[real_a, torch.full((1, 1, 1, 1), 100.0)],  # the score layer is not matched
            [torch.zeros(1, 2), torch.zeros(1, 1), torch.zeros(1, 1)]]
    fake_a = torch.ones(1, 1, 2, 2, requires_grad=True)
    fake = [[fake_a, torch.zeros(1, 1, 1, 1)], [torch.tensor([[2.0, 2.0]]), torch.tensor([[-0.5]]), torch.ones(1, 1)]]
    loss = feature_matching_loss(real, fake)
    # scale 1: |1 − 0| = 1; scale 2: 2 + 0.5 = 2.5; mean over the scales
    assert loss.item() == pytest.approx(1.75)
    loss.backward()
    assert real_a.grad is None and fake_a.grad is not None


def test_kld_matches_the_closed_form() -> None:
    mu, logvar = torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0, LN2], [0.0, 0.0]])
    # row 1: −½[(1 + 0 − 0 − 1) + (1 + ln 2 − 1 − 2)] = 1 − ln2 / 2; row 2: 0; mean over the batch
    assert kld_loss(mu, logvar).item() == pytest.approx((1 - LN2 / 2) / 2)


def test_class_balance_weights_are_inverse_frequencies() -> None:
    labels = torch.tensor([[[0, 0], [0, 1]]])
    # 4 pixels, 2 classes present (class 2 absent): w_c = 4 / (2 · count_c)
    assert torch.allclose(class_balance(labels, 3), torch.tensor([[[2 / 3, 2 / 3], [2 / 3, 2.0]]]))
    # class 1 as don't-care: weight 0, one class present: 4 / (1 · 3)
    assert torch.allclose(class_balance(labels, 3, ignore_index=1), torch.tensor([[[4 / 3, 4 / 3], [4 / 3, 0.0]]]))


def _log_probs(per_pixel: list[list[float]]) -> torch.Tensor:
    """Logits 1×3×2×2 whose softmax at pixel k is per_pixel[k] (pixels in row-major order)."""
    return torch.log(torch.tensor(per_pixel)).T.reshape(1, 3, 2, 2)


def test_oasis_losses_match_hand_values() -> None:
    labels = torch.tensor([[[0, 0], [0, 1]]])  # 2 classes; channel 0 is "fake", class c is c + 1
    real = _log_probs([[0.25, 0.5, 0.25]] * 3 + [[0.5, 0.25, 0.25]])  # p(true class) = 1/2, 1/2, 1/2, 1/4
    fake = _log_probs([[0.5, 0.25, 0.25]] * 4)  # p(fake) = 1/2 everywhere
    # real: weights 2/3 (class 0) and 2 (class 1): (3 · 2/3 · ln 2 + 2 · ln 4) / 4 = 1.5 ln 2; fake: ln 2, unweighted
    assert oasis_d_loss(real, fake, labels).item() == pytest.approx(2.5 * LN2)
    # G: generated pixels to their map's class, class balanced; D's output `real` gives 1.5 ln 2
    assert oasis_g_loss(real, labels).item() == pytest.approx(1.5 * LN2)
    # don't-care class 1: only class 0 counts, weight 4/3: 3 · 4/3 · ln 2 / 4 = ln 2
    assert oasis_g_loss(real, labels, ignore_index=1).item() == pytest.approx(LN2)


def test_labelmix_mask_follows_the_classes_and_the_loss_matches_by_hand() -> None:
    labels = torch.tensor([[[0, 1, 2, 1]], [[2, 2, 0, 0]]])
    masks = [labelmix_mask(labels, 3, torch.Generator().manual_seed(s)) for s in range(40)]
    for mask in masks:
        assert mask.shape == (2, 1, 1, 4) and set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask[0, 0, 0, 1] == mask[0, 0, 0, 3] and mask[1, 0, 0, 0] == mask[1, 0, 0, 1]  # one coin per class
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 4  # the coins vary with the generator
    assert torch.equal(masks[7], labelmix_mask(labels, 3, torch.Generator().manual_seed(7)))
    mask = torch.tensor([[[[1.0, 0.0]]]])
    assert torch.equal(labelmix(mask, torch.full((1, 3, 1, 2), 5.0), torch.zeros(1, 3, 1, 2)),
                       torch.tensor([[[[5.0, 0.0]]] * 3]).view(1, 3, 1, 2))
    real_logits, fake_logits = torch.ones(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    mixed_logits = torch.ones(1, 2, 1, 2)
    # target per channel [1, 0]; squared differences [0, 1] per channel: mean 0.5
    assert labelmix_loss(mask, mixed_logits, real_logits, fake_logits).item() == pytest.approx(0.5)


def vgg_stand_in(path: Path) -> Path:
    """Torchvision's naming, two blocks: conv 0, conv 2 | pool 4 | conv 5, conv 7 (+ a classifier key)."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for index, (fin, fout) in {0: (3, 2), 2: (2, 2), 5: (2, 4), 7: (4, 4)}.items():
        tensors[f"features.{index}.weight"] = torch.randn(fout, fin, 3, 3, generator=g) * 0.3
        tensors[f"features.{index}.bias"] = torch.zeros(fout)
    tensors["classifier.0.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(path))
    return path


def test_vgg_loss_matches_hand_value_on_an_identity_stand_in(tmp_path: Path) -> None:
    save_file({"features.0.weight": torch.eye(3).view(3, 3, 1, 1), "features.0.bias": torch.zeros(3)},
              str(tmp_path / "identity.safetensors"))
    loss = VGGLoss(load_vgg_features(tmp_path / "identity.safetensors"))
    fake, real = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)  # 0.5 and 1.0 in [0, 1]
    # relu1_1 = relu((x − mean) / std), both positive here: |Δ| = 0.5 / std_c, weight 1/32
    expected = TAP_WEIGHTS[0] * sum(0.5 / s for s in IMAGENET_STD) / 3
    assert loss(fake, real).item() == pytest.approx(expected, rel=1e-5)
    assert loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item() == pytest.approx(expected, rel=1e-5)  # grey


def test_vgg_stand_in_builds_the_torchvision_layout(tmp_path: Path) -> None:
    features = load_vgg_features(vgg_stand_in(tmp_path / "vgg.safetensors"))
    assert len(features.slices) == 2 and features.pools == 1 and features.min_size == 2
    taps = features(torch.zeros(1, 3, 16, 24))
    assert [t.shape for t in taps] == [(1, 2, 16, 24), (1, 4, 8, 12)]  # relu1_1, relu2_1


def test_vgg_files_that_are_pickles_or_misnamed_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(vgg_stand_in(tmp_path / "vgg.safetensors")))
    torch.save(state, tmp_path / "vgg.pth")  # a tensor-only state dict: read with weights_only=True
    assert len(load_vgg_features(tmp_path / "vgg.pth").slices) == 2
    (tmp_path / "object.pth").write_bytes(pickle.dumps(Sample("x", np.zeros((1, 1, 3), np.uint8)), protocol=2))
    with pytest.raises(ValueError, match="pickled objects are refused"):
        load_vgg_features(tmp_path / "object.pth")
    torch.save(torch.nn.Conv2d(3, 2, 3), tmp_path / "module.pt")
    with pytest.raises(ValueError, match="pickled objects are refused"):
        load_vgg_features(tmp_path / "module.pt")
    (tmp_path / "vgg.pkl").write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match="pickles are refused"):
        load_vgg_features(tmp_path / "vgg.pkl")
    with pytest.raises(ValidationError, match="pickles are refused"):
        SPADEFit(vgg_weights=tmp_path / "vgg.pkl")
    save_file({"conv1.weight": torch.zeros(2, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="unexpected key 'conv1.weight'"):
        load_vgg_features(tmp_path / "other.safetensors")


# -- networks ---------------------------------------------------------------------------------


def test_spade_layer_is_eq1_with_the_map_resized_nearest() -> None:
    """Shared conv = identity on the one-hot map, γ and β read one value per class: out =
    norm(h) · (1 + γ_class) + β_class at each pixel, the 4×4 map sampled at the 2×2 grid."""
    layer = SPADE(1, 2, hidden=2)
    with torch.no_grad():
        for conv in (layer.shared[0], layer.gamma, layer.beta):
            conv.weight.zero_()
            conv.bias.zero_()
        layer.shared[0].weight[0, 0, 1, 1] = layer.shared[0].weight[1, 1, 1, 1] = 1.0
        layer.gamma.weight[0, :, 1, 1] = torch.tensor([1.0, -0.5])  # γ: class 0 → 1, class 1 → −0.5
        layer.beta.weight[0, :, 1, 1] = torch.tensor([0.25, 2.0])  # β: class 0 → 0.25, class 1 → 2
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]])
    h = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    out = layer(h, one_hot(labels, 2))
    normed = (h - 4.0) / math.sqrt(5.0 + 1e-5)  # instance norm: mean 4, (biased) variance 5
    gamma, beta = torch.tensor([[1.0, -0.5], [-0.5, 1.0]]), torch.tensor([[0.25, 2.0], [2.0, 0.25]])
    torch.testing.assert_close(out, normed * (1 + gamma) + beta)


def test_generator_keeps_any_size_and_starts_from_a_grid_of_the_aspect_ratio() -> None:
    assert halvings(16, 24, 5, 4) == 2 and halvings(96, 128, 5, 4) == 4 and halvings(17, 24, 5, 4) == 0
    assert generator_widths(TINY, SHAPE) == [16, 8, 4]
    street = DataShape(96, 3, NAMES, 128)
    assert SPADEFit().ups(street) == 4 and SPADEFit(discriminator="oasis").d_depth(street) == 5
    assert SPADEFit().discriminator == "patchgan" and SPADEFit().d_depth(street) == 4  # the paper's 4 layers
    with torch.random.fork_rng(devices=[]):
        assert (SPADEGenerator(SPADEFit(ngf=1), street).h0, SPADEGenerator(SPADEFit(ngf=1), street).w0) == (6, 8)
    for fit in (TINY, TINY.model_copy(update={"use_vae": True})):
        g = build_modules(fit, SHAPE, SEED)["G"].eval()
        z = torch.zeros(2, fit.z_dim) if fit.use_vae else None
        with torch.no_grad():
            for size in ((16, 24), (13, 21), (32, 40)):  # training size, odd (padded, cropped), larger
                cond = one_hot(torch.from_numpy(toy_maps(2, *size).astype(np.int64)), 3)
                cond = torch.cat([cond, torch.zeros(2, 2, *size)], 1)  # the noise channels
                y = g(cond, z)
                assert y.shape == (2, 3, *size) and y.abs().max() <= 1.0


def test_discriminators_give_patch_features_or_per_pixel_class_logits() -> None:
    x = torch.zeros(2, 3 + 3, 16, 24)
    out = MultiscalePatchGAN(3, 3, ndf=4, n_layers=4, num_d=2)(x)
    assert len(out) == 2 and [len(scale) for scale in out] == [5, 5]
    assert out[0][-1].shape[:2] == (2, 1) and out[1][0].shape[-2:] == (5, 7)  # 8×12 at scale 2, padding 2
    assert OASISDiscriminator(3, 3, ndf=4, depth=3)(torch.zeros(2, 3, 16, 24)).shape == (2, 4, 16, 24)
    assert OASISDiscriminator(1, 3, ndf=4, depth=1)(torch.zeros(1, 1, 8, 10)).shape == (1, 4, 8, 10)


# -- the family: fit, resume, paint, save/load ------------------------------------------------


def test_family_is_valid_and_registered_by_entry_point() -> None:
    check_family(SPADEFamily)
    assert (SPADEFamily.name, SPADEFamily.request, SPADEFamily.ema_modules) == ("spade", "label_map", ("G",))
    from jobs.registry import resolve

    points = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    ref = points["project"]["entry-points"]["synthaug.generators"]["spade"]
    assert resolve(ref) is SPADEFamily


@pytest.mark.parametrize("changes,extra", [
    ({"discriminator": "oasis"}, {"labelmix"}),
    ({"discriminator": "patchgan"}, {"fm"}),
    ({"discriminator": "patchgan", "use_vae": True, "noise_dim": 0}, {"fm", "kld"}),
    ({"discriminator": "oasis", "use_vae": True, "norm": "batch"}, {"labelmix", "kld"}),
], ids=["oasis", "patchgan", "patchgan-vae", "oasis-vae-batchnorm"])
def test_tiny_fits_log_finite_losses_without_touching_the_global_rng(changes: dict, extra: set[str]) -> None:
    logs: list[trainer.Progress] = []
    fam = family(steps=3, **changes)
    before = torch.get_rng_state()
    state = trainer.fit(fam, toy_data(), on_log=logs.append, log_every=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert [p.step for p in logs] == [1, 2, 3]
    assert all(set(p.losses) == {"D", "G"} | extra and np.isfinite(list(p.losses.values())).all() for p in logs)
    assert set(state.modules) == ({"G", "D", "E"} if fam.fit.use_vae else {"G", "D"})


def test_void_pixels_are_dont_care_for_oasis_unless_asked_otherwise() -> None:
    def step(fit: SPADEFit) -> SPADEStep:
        return SPADEStep(fit, SHAPE, toy_data(), torch.device("cpu"), seed=0, rank=0)

    assert step(TINY).ignore_index == NAMES.index("void")
    assert step(TINY.model_copy(update={"void_dontcare": False})).ignore_index is None


def test_resume_equals_an_uninterrupted_fit(tmp_path: Path) -> None:
    """2 steps straight == 1 step, save, load, 1 more (OASIS + VAE: every random stream)."""
    data, fam = toy_data(), family(use_vae=True)
    straight = trainer.fit(fam, data)
    half = trainer.fit(fam, data, until=1)
    half.save(tmp_path / "state")
    resumed = trainer.train(fam, data, trainer.load_state(fam, tmp_path / "state"))
    for name in ("G", "D", "E"):
        a, b = straight.module(name).state_dict(), resumed.module(name).state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=f"{name}.{key}")


def test_painting_keeps_the_map_byte_for_byte_and_follows_the_seed(fitted: tuple) -> None:
    fam, data, state = fitted
    painter = fam.sampler(state)
    maps = [data.masks[0], data.masks[1], data.masks[0], toy_maps(1, 13, 21)[0], toy_maps(1, 32, 48)[0]]
    made = painter.sample(maps_request(maps, [7, 8, 9, 7, 7]), batch_size=2)
    for sample, label_map in zip(made, maps, strict=True):
        assert sample.mask is label_map and sample.mask.tobytes() == label_map.tobytes()
        assert sample.image.shape == (*label_map.shape, 3) and sample.image.dtype == np.uint8
    assert (made[1].source, made[1].generator.name, made[1].seed, made[1].parent_id, made[1].label) == \
        ("spade", "spade", 8, "m1", None)
    again = painter.sample(maps_request([data.masks[0], data.masks[0]], [7, 9]), batch_size=8)
    assert np.array_equal(again[0].image, made[0].image) and np.array_equal(again[1].image, made[2].image)
    assert not np.array_equal(made[0].image, made[2].image)  # same map, other seed: other OASIS noise
    one_by_one = painter.sample(maps_request(maps, [7, 8, 9, 7, 7]), batch_size=1)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(made, one_by_one, strict=True))


def test_plain_spade_without_noise_paints_one_image_per_map() -> None:
    fit = TINY.model_copy(update={"noise_dim": 0, "discriminator": "patchgan"})
    painter = SPADEPainter(fit, SHAPE, build_modules(fit, SHAPE, SEED)["G"])
    a, b = painter.sample(maps_request([toy_maps(1)[0]] * 2, [1, 2]))
    assert np.array_equal(a.image, b.image)


def test_save_load_round_trip_paints_the_same_bytes(fitted: tuple, tmp_path: Path) -> None:
    fam, data, state = fitted
    painter = fam.sampler(state)
    painter.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["format"] == "synthaug.spade" and meta["shape"] == {**SHAPE.as_dict(), "width": 24}
    loaded = SPADEFamily.from_pretrained(tmp_path / "ckpt")
    assert (loaded.fit, loaded.shape, loaded.seed) == (fam.fit, SHAPE, SEED)
    request = maps_request([data.masks[2], toy_maps(1, 13, 21)[0]], [3, 4])
    for a, b in zip(painter.sample(request), loaded.sample(request), strict=True):
        assert np.array_equal(a.image, b.image)
    assert len(loaded.sample(request)[0].generator.checkpoint_sha256) == 64
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(state.ema["G"].state_dict(), folder / "generator.pt")
    with pytest.raises(ValueError, match="pickled checkpoints are refused"):
        SPADEPainter.from_pretrained(folder)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"format": "synthaug.cgan", "format_version": 2}))
    with pytest.raises(ValueError, match="not a synthaug.spade v1 config"):
        SPADEPainter.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(ValueError, match="missing config.json"):
        SPADEPainter.from_pretrained(tmp_path / "ckpt")


def test_run_saves_label_grids_and_publishes_the_painter(tmp_path: Path) -> None:
    fam, data = family(discriminator="patchgan"), toy_data()
    trainer.run(fam, data, states=tmp_path / "states", model=tmp_path / "model", grids=tmp_path / "grids",
                checkpoint_every=1)
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["step-00000001.png", "step-00000002.png"]
    picture = np.asarray(Image.open(tmp_path / "grids" / "step-00000002.png"))
    assert picture.shape == (3 * (64 + 2), 3 * (96 + 2), 3)  # 3 pairs: map | painted | real, 16×24 enlarged 4×
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "generator.safetensors"]
    assert SPADEFamily.from_pretrained(tmp_path / "model").fit.discriminator == "patchgan"


def test_the_vgg_loss_is_used_when_weights_are_given(tmp_path: Path) -> None:
    path = vgg_stand_in(tmp_path / "vgg.safetensors")
    logs: list[trainer.Progress] = []
    trainer.fit(family(vgg_weights=path), toy_data(), on_log=logs.append, log_every=1)
    assert all(p.losses["vgg"] > 0 for p in logs)
    big = {f"features.{i}.weight": torch.zeros(1, 1 if i else 3, 3, 3) for i in (0, 3, 6, 9, 12)}  # a pool between each
    save_file({**big, **{k.replace("weight", "bias"): torch.zeros(1) for k in big}}, str(tmp_path / "deep.safetensors"))
    small = DataShape(8, 3, NAMES, 8)
    with pytest.raises(ValueError, match=r"max-pools 4 times and needs images of at least 16 px, got 8x8"):
        SPADEStep(TINY.model_copy(update={"vgg_weights": tmp_path / "deep.safetensors"}), small,
                  TrainingData(np.zeros((1, 8, 8, 3), np.uint8), np.full(1, -1), np.zeros((1, 8, 8), np.uint16)),
                  torch.device("cpu"), seed=0, rank=0)


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,shape,message", [
    ({"num_up": 4}, SHAPE, r"num_up=4 needs both image sides divisible by 16, got 24x16 \(WxH\)"),
    ({}, DataShape(17, 3, NAMES, 24), r"cannot derive num_up for 24x17 \(WxH\) images"),
    ({"d_layers": 4, "discriminator": "oasis"}, SHAPE, r"oasis discriminator halves the image d_layers=4 times and needs both sides "
                             r"divisible by 16, got 24x16"),
    ({}, DataShape(16, 4, NAMES, 24), "channels must be 1 or 3, got 4"),
    ({}, DataShape(6, 3, NAMES, 40), r"at least 8x8, got 40x6 \(WxH\)"),
    ({"num_up": 3}, DataShape(8, 3, NAMES, 8), r"num_up=3 leaves a 1x1 start grid for 8x8 \(WxH\) images"),
])
def test_sizes_the_networks_cannot_make_are_refused(changes: dict, shape: DataShape, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SPADEFamily(TINY.model_copy(update=changes), shape, SEED)


def test_patchgan_takes_deeper_layers_than_oasis_on_the_same_frames() -> None:
    SPADEFamily(TINY.model_copy(update={"discriminator": "patchgan", "d_layers": 4}), SHAPE, SEED)


@pytest.mark.parametrize("fields,message", [
    ({"betas": (0.0, 1.0)}, r"betas must be two numbers in \[0, 1\), got \[0.0, 1.0\]"),
    ({"discriminator": "stylegan"}, "discriminator"),
    ({"lambdas": 1}, "lambdas"),
    ({"noise_dim": -1}, "noise_dim"),
])
def test_bad_fit_fields_are_validation_errors(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SPADEFit(**fields)


def test_data_without_masks_or_with_unknown_ids_is_refused(tmp_path: Path) -> None:
    fam, data = family(), toy_data()
    fam.check_data(data)
    with pytest.raises(ValueError, match=r"spade: learns to paint label maps .* have no masks"):
        fam.check_data(TrainingData(data.images, data.labels))
    with pytest.raises(ValueError, match="needs every training record's mask"):
        trainer.fit(fam, TrainingData(data.images, data.labels))
    bad = data.masks.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"mask class ids must be below the 3 class names .* got id 3"):
        fam.check_data(TrainingData(data.images, data.labels, bad))
    with pytest.raises(ValueError, match="vgg_weights .*missing.safetensors' is not a file"):
        family(vgg_weights=tmp_path / "missing.safetensors").check_data(data)


def test_painter_refuses_requests_it_cannot_paint(fitted: tuple) -> None:
    fam, data, state = fitted
    painter = fam.sampler(state)
    with pytest.raises(ValueError, match="the request has no label_maps"):
        painter.sample(SampleRequest(labels=[-1], seeds=[0], ids=["a"]))
    with pytest.raises(ValueError, match=r"label map 0 \('m0~spade'\) must be a uint16 HxW array"):
        painter.sample(maps_request([data.masks[0].astype(np.int64)], [0]))
    too_high = data.masks[0].copy()
    too_high[3, 3] = 3
    with pytest.raises(ValueError, match=r"has class id 3; the model knows 3 classes"):
        painter.sample(maps_request([too_high], [0]))
    with pytest.raises(ValueError, match=r"label map 0 \('m0~spade'\) is 3x4 \(WxH\); .* larger than 4x4"):
        painter.sample(maps_request([np.zeros((4, 3), np.uint16)], [0]))
    assert painter.sample(maps_request([np.zeros((4, 5), np.uint16)], [0]))[0].image.shape == (4, 5, 3)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        painter.sample(maps_request([data.masks[0]], [0]), batch_size=0)
