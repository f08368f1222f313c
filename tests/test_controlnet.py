"""ControlNet (`controlnet` family): the zero-initialised control leaves the base unchanged,
the two phases through the family's step (only the ControlNet trains in the second),
painting (masks kept byte for byte, seeds), save/load, refusals, both conditioning images.

Tiny nets (widths 8/16, 8-d prompt tokens) on 16×24 (H×W) frames of 3 classes, a few steps on CPU.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from augment.generators import trainer
from augment.generators.base import SampleRequest
from augment.generators.controlnet import ControlNetPainter
from augment.generators.controlnet_config import ControlNetFit
from augment.generators.controlnet_family import ControlNetFamily, ControlNetSample
from augment.generators.controlnet_train import (ClassPrompt, build_modules, classes_present, conditioning_image,
                                                 start_control)
from augment.generators.family import DataShape, TrainingData, check_family
from augment.generators.spade_train import palette as spade_palette

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny nets: one thread is fastest on shared cores

NAMES = ("road", "car", "void")
SHAPE = DataShape(image_size=16, channels=3, class_names=NAMES, width=24)  # landscape on purpose
TINY = ControlNetFit(base_steps=3, steps=3, batch_size=2, block_out_channels=(8, 16), norm_num_groups=4,
                     attention_heads=2, cross_attention_dim=8, conditioning_embedding_out_channels=(4,),
                     warmup_steps=0, ema_decay=0.5)
SEED = 5
FAST = {"steps": 2, "guidance": 2.0}  # sampling: two DDIM steps


def family(shape: DataShape = SHAPE, **changes: object) -> ControlNetFamily:
    return ControlNetFamily(TINY.model_copy(update=changes), shape, SEED)


def toy_maps(n: int, height: int = 16, width: int = 24) -> np.ndarray:
    """Road below a horizon, a car box at a shifting place, a void strip on the left."""
    masks = np.zeros((n, height, width), np.uint16)
    for i in range(n):
        masks[i, : height // 2] = 2 if i % 2 else 0
        left = 2 + (3 * i) % (width - 8)
        masks[i, height // 2 - 2: height - 3, left:left + 6] = 1
        masks[i, :, :2] = 2
    return masks


def toy_data(n: int = 4, channels: int = 3) -> TrainingData:
    """Each class painted in its colour, plus fixed noise."""
    masks = toy_maps(n)
    colours = np.array([[90, 90, 90], [200, 30, 30], [20, 20, 60]])[:, :channels]
    rng = np.random.default_rng(0)
    images = np.clip(colours[masks] + rng.normal(0, 10, masks.shape + (channels,)), 0, 255).astype(np.uint8)
    return TrainingData(images, np.full(n, -1, dtype=np.int64), masks)


def maps_request(maps: list[np.ndarray], seeds: list[int]) -> SampleRequest:
    return SampleRequest(labels=[-1] * len(maps), seeds=seeds, ids=[f"m{i}~controlnet" for i in range(len(maps))],
                         parent_ids=[f"m{i}" for i in range(len(maps))], label_maps=maps)


@pytest.fixture(scope="module")
def fitted() -> tuple[ControlNetFamily, TrainingData, trainer.TrainState]:
    fam, data = family(), toy_data()
    return fam, data, trainer.fit(fam, data)


def test_family_is_valid_and_registered_by_entry_point() -> None:
    check_family(ControlNetFamily)
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    entry = project["project"]["entry-points"]["synthaug.generators"]["controlnet"]
    assert entry == "augment.generators.controlnet_family:ControlNetFamily"
    assert ControlNetFamily.request == "label_map" and ControlNetFamily.sweep_knob == "guidance"
    assert family().steps == TINY.base_steps + TINY.steps


def test_the_family_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, augment.generators.controlnet_family as f; "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_class_prompt_picks_present_absent_and_null_tokens() -> None:
    maps = torch.tensor(toy_maps(2).astype(np.int64))
    maps[1] = 0
    present = classes_present(maps, 3)
    assert present.tolist() == [[True, True, True], [True, False, False]]
    prompt = ClassPrompt(3, 2)
    with torch.no_grad():
        prompt.present.fill_(1.0)
        prompt.absent.fill_(-1.0)
        prompt.null.fill_(7.0)
    tokens = prompt(present, torch.tensor([False, False]))
    assert tokens[1, :, 0].tolist() == [1.0, -1.0, -1.0] and tokens.shape == (2, 3, 2)
    assert (prompt(present, torch.tensor([True, False]))[0] == 7.0).all()


def test_conditioning_images_are_onehot_planes_or_palette_colours() -> None:
    maps = torch.tensor(toy_maps(1).astype(np.int64))
    onehot = conditioning_image(maps, TINY, 3)
    assert onehot.shape == (1, 3, 16, 24) and torch.equal(onehot.argmax(1), maps)
    palette = conditioning_image(maps, TINY.model_copy(update={"conditioning": "palette"}), 3)
    assert palette.shape == (1, 3, 16, 24) and 0.0 <= palette.min() and palette.max() <= 1.0
    colours = torch.from_numpy(spade_palette(3)).float() / 255.0  # one fixed colour per class id
    assert torch.equal(palette[0].permute(1, 2, 0), colours[maps[0]])
    assert len({tuple(c) for c in colours.tolist()}) == 3
    assert torch.equal(palette, conditioning_image(maps, TINY.model_copy(update={"conditioning": "palette"}), 3))


@pytest.mark.parametrize("conditioning", ["onehot", "palette"])
def test_zero_convolutions_leave_the_base_unchanged_before_training(conditioning: str) -> None:
    """ε(base) == ε(base + ControlNet residuals) at initialisation, and again right after the
    ControlNet is re-made from the fitted base at the phase change."""
    fam = family(conditioning=conditioning)
    state = trainer.new_state(fam)
    unet, prompt, controlnet = (state.module(n) for n in ("unet", "prompt", "controlnet"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 24, generator=gen)
    maps = torch.tensor(toy_maps(2).astype(np.int64))
    t = torch.tensor([10, 500])

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            hidden = prompt(classes_present(maps, 3), torch.zeros(2, dtype=torch.bool))
            plain = unet(x, t, encoder_hidden_states=hidden).sample
            down, mid = controlnet(x, t, encoder_hidden_states=hidden,
                                   controlnet_cond=conditioning_image(maps, fam.fit, 3), return_dict=False)
            assert all(float(r.abs().max()) == 0.0 for r in (*down, mid))
            controlled = unet(x, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample
        return plain, controlled

    assert torch.allclose(*both(), atol=1e-6)
    trainer.train(fam, toy_data(), state, until=TINY.base_steps)
    start_control(fam.fit, 3, state)
    plain, controlled = both()
    assert torch.allclose(plain, controlled, atol=1e-6)
    # the copied encoder is the fitted base's
    assert torch.equal(controlnet.conv_in.weight, unet.conv_in.weight)


def test_phase_two_trains_the_controlnet_alone() -> None:
    fam, data = family(), toy_data()
    state = trainer.new_state(fam)
    snapshot = {n: {k: v.clone() for k, v in state.module(n).state_dict().items()} for n in state.modules}
    step = fam.make_step(data, torch.device("cpu"), 0)
    # phase 1: the base and its prompt move, the ControlNet does not
    for k in range(TINY.base_steps):
        assert set(step(state, k)) == {"base"}
    changed = {n for n in state.modules if any(not torch.equal(v, snapshot[n][k])
                                               for k, v in state.module(n).state_dict().items())}
    assert changed == {"unet", "prompt"}
    # phase 2: only the ControlNet moves
    step(state, TINY.base_steps)  # the phase change, then its first step
    frozen = {n: {k: v.clone() for k, v in state.module(n).state_dict().items()} for n in ("unet", "prompt")}
    before = {k: v.clone() for k, v in state.module("controlnet").state_dict().items()}
    for k in range(TINY.base_steps + 1, TINY.base_steps + TINY.steps):
        losses = step(state, k)
        assert set(losses) == {"control"} and torch.isfinite(losses["control"])
    for n in ("unet", "prompt"):
        assert all(torch.equal(v, frozen[n][k]) for k, v in state.module(n).state_dict().items()), n
        assert not any(p.requires_grad for p in state.module(n).parameters())
    moved = [k for k, v in state.module("controlnet").state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("controlnet_down_blocks.") for k in moved)  # the zero convolutions learn first


def test_fit_is_seeded_and_leaves_the_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    a = build_modules(TINY, SHAPE, SEED)
    b = build_modules(TINY, SHAPE, SEED)
    assert torch.equal(torch.random.get_rng_state(), before)
    for name in a:
        assert all(torch.equal(v, b[name].state_dict()[k]) for k, v in a[name].state_dict().items())
    other = build_modules(TINY, SHAPE, SEED + 1)
    assert not torch.equal(a["unet"].conv_in.weight, other["unet"].conv_in.weight)


def test_painting_keeps_the_map_byte_for_byte_and_follows_the_seed(fitted: tuple) -> None:
    fam, data, state = fitted
    painter = fam.sampler(state)
    maps = [data.masks[0], data.masks[1], data.masks[0]]
    rows = painter.sample(maps_request(maps, [1, 1, 2]), **FAST)
    for row, label_map in zip(rows, maps, strict=True):
        assert row.mask is not None and row.mask.dtype == np.uint16
        assert row.mask.tobytes() == label_map.tobytes()
        assert row.image.shape == (16, 24, 3) and row.image.dtype == np.uint8
        assert row.source == "controlnet" and row.label is None
    assert rows[0].parent_id == "m0" and rows[0].seed == 1
    params = json.loads(rows[0].generator.params_json)
    assert params["guidance"] == 2.0 and params["controlnet_conditioning_scale"] == 1.0
    again = painter.sample(maps_request([maps[0]], [1]), **FAST)[0]
    assert np.array_equal(again.image, rows[0].image)  # same seed, same call: same bytes
    assert not np.array_equal(rows[2].image, rows[0].image)  # same map, other seed
    unguided = painter.sample(maps_request([maps[0]], [1]), steps=2, guidance=0.0)[0]
    assert unguided.image.shape == (16, 24, 3)
    for scheduler in ("dpm++", "ddpm"):  # ddpm adds noise per step: from the samples' own generators
        first, second = (painter.sample(maps_request(maps[:2], [1, 2]), steps=2, scheduler=scheduler)
                         for _ in range(2))
        assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second, strict=True))


def test_save_load_round_trip_paints_the_same_samples(fitted: tuple, tmp_path: Path) -> None:
    fam, data, state = fitted
    painter = fam.sampler(state)
    request = maps_request([data.masks[0], data.masks[3]], [4, 9])
    made = painter.sample(request, **FAST)
    painter.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "controlnet", "prompt.safetensors",
                                                                    "unet"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["format"] == "synthaug.controlnet"
    loaded = ControlNetFamily.from_pretrained(tmp_path / "ckpt")
    assert loaded.checkpoint_sha256 == painter.checkpoint_sha256 and len(loaded.checkpoint_sha256) == 64
    assert loaded.class_names == NAMES
    for a, b in zip(made, loaded.sample(request, **FAST), strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1  # same weights; allow one level
        assert a.mask.tobytes() == b.mask.tobytes()


def test_pickled_weights_are_refused(fitted: tuple, tmp_path: Path) -> None:
    fam, _, state = fitted
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(state.ema["controlnet"].state_dict(), folder / "controlnet.pt")
    with pytest.raises(ValueError, match="pickled checkpoints are refused"):
        ControlNetPainter.from_pretrained(folder)
    fam.sampler(state).save_pretrained(tmp_path / "ckpt")
    unet = tmp_path / "ckpt" / "unet"
    torch.save(state.ema["unet"].state_dict(), unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"unet: no safetensors weights; found diffusion_pytorch_model.bin"):
        ControlNetPainter.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"format": "synthaug.spade", "format_version": 1}))
    with pytest.raises(ValueError, match="not a synthaug.controlnet v1 config"):
        ControlNetPainter.from_pretrained(tmp_path / "ckpt")


def test_bad_maps_are_refused_naming_the_map(fitted: tuple) -> None:
    fam, data, state = fitted
    painter = fam.sampler(state)
    good = data.masks[0]
    bad_id = good.copy()
    bad_id[0, 0] = 3
    cases = [(bad_id, r"label map 1 \('m1~controlnet'\) has class id 3; the model knows 3 classes"),
             (good.astype(np.int32), r"label map 1 \('m1~controlnet'\) must be a uint16 HxW array"),
             (np.zeros((16, 21), np.uint16), r"label map 1 \('m1~controlnet'\) is 21x16 \(WxH\).*divisible by 2"),
             (np.zeros((2, 16, 24), np.uint16), r"label map 1 .* must be a uint16 HxW array")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            painter.sample(maps_request([good, bad], [0, 1]), **FAST)
    with pytest.raises(ValueError, match="has no label_maps"):
        painter.sample(SampleRequest(labels=[-1], seeds=[0], ids=["x"]), **FAST)
    with pytest.raises(ValueError, match="unknown scheduler 'euler'"):
        painter.sample(maps_request([good], [0]), steps=2, scheduler="euler")


@pytest.mark.parametrize("conditioning", ["onehot", "palette"])
def test_both_conditionings_fit_and_paint_grey_and_colour(conditioning: str) -> None:
    grey = DataShape(image_size=16, channels=1, class_names=(*NAMES, "sky"), width=24)  # 4 classes
    for shape, channels in ((SHAPE, 3), (grey, 1)):
        fam = family(shape, conditioning=conditioning, base_steps=1, steps=1)
        state = trainer.fit(fam, toy_data(channels=channels))
        expected = 3 if conditioning == "palette" else shape.num_classes
        assert state.module("controlnet").config.conditioning_channels == expected
        rows = fam.sampler(state).sample(maps_request([toy_maps(1)[0]], [0]), steps=1)
        assert rows[0].image.shape == (16, 24, channels)


def test_resume_at_the_phase_change_equals_an_uninterrupted_fit(tmp_path: Path) -> None:
    fam, data = family(), toy_data()
    whole = trainer.fit(fam, data)
    half = trainer.fit(fam, data, until=TINY.base_steps)
    half.save(tmp_path / "state")
    resumed = trainer.train(fam, data, trainer.load_state(fam, tmp_path / "state"))
    for k, v in whole.ema["controlnet"].state_dict().items():
        assert torch.allclose(v, resumed.ema["controlnet"].state_dict()[k], atol=1e-6), k


def test_run_saves_label_grids_and_publishes_the_painter(tmp_path: Path) -> None:
    fam, data = family(base_steps=1, steps=1), toy_data()
    trainer.run(fam, data, states=tmp_path / "states", model=tmp_path / "model", grids=tmp_path / "grids",
                checkpoint_every=1)
    assert len(list((tmp_path / "grids").glob("*.png"))) == 2
    painter = ControlNetFamily.from_pretrained(tmp_path / "model")
    assert painter.sample(maps_request([toy_maps(1)[0]], [0]), **FAST)[0].image.shape == (16, 24, 3)


@pytest.mark.parametrize(("fields", "field"), [
    ({"block_out_channels": (8, 12), "norm_num_groups": 8}, "block_out_channels"),
    ({"conditioning": "rgb"}, "conditioning"),
    ({"conditioning_embedding_out_channels": (4, 8)}, "conditioning_embedding_out_channels"),
    ({"attention_levels": 4}, "attention_levels"),
    ({"p_uncond": 1.0}, "p_uncond"),
    ({"sterps": 3}, "sterps"),
])
def test_bad_fields_are_pydantic_errors_naming_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ControlNetFit(**fields)


def test_bad_sample_fields_and_sizes_are_refused() -> None:
    with pytest.raises(ValidationError, match="guidance"):
        ControlNetSample(guidance=-1.0)
    with pytest.raises(ValidationError, match="controlnet_conditioning_scale"):
        ControlNetSample(controlnet_conditioning_scale="high")
    with pytest.raises(ValueError, match=r"divisible by 4 .* got 24x18"):
        family(DataShape(image_size=18, channels=3, class_names=NAMES, width=24), block_out_channels=(8, 8, 16))
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 4"):
        family(DataShape(image_size=16, channels=4, class_names=NAMES, width=24))
    fam = family()
    data = toy_data()
    with pytest.raises(ValueError, match="mask class ids must be below the 3 class names"):
        fam.check_data(TrainingData(data.images, data.labels, data.masks + 1))


# -- a pretrained Stable Diffusion base (tiny components written by the test) -------------------


def tiny_stable_diffusion(folder: Path) -> Path:
    """unet/, vae/ (2x latents), text_encoder/, tokenizer/, scheduler/ in diffusers' layout, safetensors."""
    pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(letters)},
             **{c + "</w>": 28 + i for i, c in enumerate(letters)}, "st</w>": 54, "re": 55}
    (folder / "vocab.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\ns t</w>\nr e\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                                  model_max_length=8)
        encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                               bos_token_id=0, eos_token_id=1, pad_token_id=1))
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                    layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                    norm_num_groups=4, attention_head_dim=2)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                            norm_num_groups=4, sample_size=16)
    tokenizer.save_pretrained(folder / "tokenizer")
    encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False).save_pretrained(folder / "scheduler")
    return folder


def test_a_pretrained_stable_diffusion_base_trains_the_controlnet_alone_and_paints(tmp_path: Path) -> None:
    folder = tiny_stable_diffusion(tmp_path / "sd")
    fit = ControlNetFit(pretrained=folder, prompt="a street", steps=2, batch_size=2, warmup_steps=0,
                        conditioning_embedding_out_channels=(4, 8), ema_decay=0.5)
    fam = ControlNetFamily(fit, SHAPE, SEED)
    assert fam.steps == 2 and fam.ema_modules == ("controlnet",)
    state = trainer.new_state(fam)
    assert set(state.modules) == {"unet", "vae", "prompt", "controlnet"}
    prompt = state.module("prompt")
    assert prompt.cond.shape == (1, 8, 16) and not torch.equal(prompt.cond, prompt.uncond)
    before = {n: {k: v.clone() for k, v in state.module(n).state_dict().items()} for n in state.modules}
    trainer.train(fam, toy_data(), state)
    for name in ("unet", "vae", "prompt"):
        assert all(torch.equal(v, before[name][k]) for k, v in state.module(name).state_dict().items()), name
    assert any(not torch.equal(v, before["controlnet"][k])
               for k, v in state.module("controlnet").state_dict().items())
    painter = fam.sampler(state)
    request = maps_request([toy_maps(1)[0], toy_maps(2)[1]], [3, 4])
    rows = painter.sample(request, **FAST)
    assert rows[0].image.shape == (16, 24, 3) and rows[0].mask.tobytes() == toy_maps(1)[0].tobytes()
    assert np.array_equal(painter.sample(maps_request([toy_maps(1)[0]], [3]), **FAST)[0].image, rows[0].image)
    painter.save_pretrained(tmp_path / "ckpt")
    assert {"unet", "vae", "controlnet", "scheduler", "prompt.safetensors", "config.json"} == \
        {p.name for p in (tmp_path / "ckpt").iterdir()}
    loaded = ControlNetFamily.from_pretrained(tmp_path / "ckpt")
    for a, b in zip(rows, loaded.sample(request, **FAST), strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    with pytest.raises(ValueError, match=r"divisible by 4"):
        painter.sample(maps_request([np.zeros((16, 22), np.uint16)], [0]), **FAST)


def test_a_pretrained_base_is_refused_when_pickled_incomplete_or_mis_sized(tmp_path: Path) -> None:
    folder = tiny_stable_diffusion(tmp_path / "sd")
    fit = ControlNetFit(pretrained=folder, steps=1, conditioning_embedding_out_channels=(4, 8))
    with pytest.raises(ValueError, match=r"conditioning_embedding_out_channels \[16, 32, 96, 256\] halves the image "
                                         r"3 times, but the VAE's latents are 2x smaller: give 2 widths"):
        ControlNetFamily(fit.model_copy(update={"conditioning_embedding_out_channels": None}), SHAPE, SEED).build()
    with pytest.raises(ValueError, match="divisible by 4"):
        ControlNetFamily(fit, DataShape(18, 3, NAMES, width=24), SEED).build()
    with pytest.raises(ValueError, match="paints RGB images"):
        ControlNetFamily(fit, DataShape(16, 1, NAMES, width=24), SEED)
    with pytest.raises(ValidationError, match="pickled checkpoints are refused"):
        ControlNetFit(pretrained=folder / "model.ckpt")
    unet = folder / "unet"
    torch.save({"w": torch.zeros(1)}, unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="unet: no safetensors weights; found diffusion_pytorch_model.bin"):
        ControlNetFamily(fit, SHAPE, SEED).build()
    for path in unet.iterdir():
        path.unlink()
    unet.rmdir()
    with pytest.raises(ValueError, match=r"lacks unet/"):
        ControlNetFamily(fit, SHAPE, SEED).build()
