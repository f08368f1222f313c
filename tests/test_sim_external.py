"""ExternalFramesSource: simulator captures (frames + label images) mapped to class ids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.errors import ConfigError, InputRejected
from augment.images import crop_resize
from jobs.config import parse_config
from jobs.sources import build_source
from simulators.external import ExternalFramesSource, parse_colour

H, W = 24, 32
CLASSES = ["road", "car", "sky", "void"]
ROAD, CAR, SKY = (128, 64, 128), (0, 0, 142), (70, 130, 180)
PALETTE = {"#804080": "road", "0,0,142": "car", "#4682B4": "sky"}


def _paint(seed: int) -> np.ndarray:
    """A label layout as indices 0..2: sky band on top, road bottom, a car box (varies by seed)."""
    layout = np.zeros((H, W), dtype=np.uint8)
    layout[: 8 + seed] = 2
    layout[14:20, 4 + 3 * seed : 12 + 3 * seed] = 1
    return layout


def _save(array: np.ndarray, path: Path, fmt: str = "PNG", mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode=mode)
    image.save(path, format=fmt)


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """3 frames (one nested) with RGB label PNGs painted in road/car/sky colours."""
    colours = np.array([ROAD, CAR, SKY], dtype=np.uint8)
    for seed, stem in enumerate(["town01/000", "town01/001", "town02/000"]):
        _save(_frame(seed), tmp_path / "rgb" / f"{stem}.png")
        _save(colours[_paint(seed)], tmp_path / "labels" / f"{stem}.png")
    return tmp_path


def _expected(seed: int) -> np.ndarray:
    # layout index -> class id: 0 road -> 0, 1 car -> 1, 2 sky -> 2
    return _paint(seed).astype(np.uint16)


def _by_id(source: ExternalFramesSource) -> dict[str, object]:
    return {r.id: r for r in source.records()}


def test_palette_masks_match_pixel_for_pixel(capture: Path) -> None:
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    records = source.records()
    assert [r.id for r in records] == ["external/town01/000", "external/town01/001", "external/town02/000"]
    assert [r.ref for r in records] == ["rgb/town01/000.png", "rgb/town01/001.png", "rgb/town02/000.png"]
    assert all(r.label is None for r in records)
    assert source.class_names == CLASSES
    for seed, record in enumerate(records):
        sample = source.load(record)
        assert sample.id == record.id and sample.source == "simulator" and sample.label is None
        np.testing.assert_array_equal(sample.image, _frame(seed))
        assert sample.mask.dtype == np.uint16 and sample.mask.shape == (H, W)
        np.testing.assert_array_equal(sample.mask, _expected(seed))


def test_relative_root(capture: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(capture.parent)
    source = ExternalFramesSource(Path(capture.name), class_names=CLASSES, palette=PALETTE)
    np.testing.assert_array_equal(source.load(source.records()[0]).mask, _expected(0))


def test_two_colours_map_to_one_class(capture: Path) -> None:
    layout = _paint(0)
    label = np.array([ROAD, CAR, SKY], dtype=np.uint8)[layout]
    label[:2, :5] = (0, 0, 70)  # a truck, also "car"
    _save(label, capture / "labels" / "town01" / "000.png")
    palette = {**PALETTE, "#000046": "car"}
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=palette)
    mask = source.load(source.records()[0]).mask
    expected = _expected(0)
    expected[:2, :5] = 1
    np.testing.assert_array_equal(mask, expected)


def test_palette_mode_png_goes_through_its_palette(capture: Path) -> None:
    image = Image.fromarray(_paint(1), mode="L").convert("P")
    # Palette index order deliberately differs from class order.
    image.putpalette([*SKY, *ROAD, *CAR] + [0] * (253 * 3))
    image.putdata([[1, 2, 0][v] for v in _paint(1).ravel()])
    image.save(capture / "labels" / "town01" / "001.png")
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    np.testing.assert_array_equal(source.load(source.records()[1]).mask, _expected(1))


def _ids_capture(tmp_path: Path, labels: np.ndarray) -> Path:
    _save(_frame(0), tmp_path / "rgb" / "0.jpg", fmt="JPEG")
    _save(labels, tmp_path / "semseg" / "0.png")
    return tmp_path


def test_ids_mode_16_bit_labels(tmp_path: Path) -> None:
    tags = np.array([1000, 7, 300], dtype=np.uint16)[_paint(0)]
    root = _ids_capture(tmp_path, tags)
    assert Image.open(root / "semseg" / "0.png").mode.startswith("I")
    source = ExternalFramesSource(
        root, class_names=CLASSES, labels="semseg", ids={1000: "road", 7: "car", 300: "sky"}
    )
    sample = source.load(source.records()[0])
    assert sample.image.shape == (H, W, 3)
    np.testing.assert_array_equal(sample.mask, _expected(0))


def test_ids_mode_8_bit_labels_several_ids_one_class(tmp_path: Path) -> None:
    tags = np.array([7, 10, 23], dtype=np.uint8)[_paint(2)]
    tags[0, 0] = 14  # another vehicle tag
    root = _ids_capture(tmp_path, tags)
    assert Image.open(root / "semseg" / "0.png").mode == "L"
    # String keys, as a JSON/YAML config gives them.
    source = ExternalFramesSource(
        root, class_names=CLASSES, labels="semseg", ids={"7": "road", 10: "car", 14: "car", 23: "sky"}
    )
    expected = _expected(2)
    expected[0, 0] = 1
    np.testing.assert_array_equal(source.load(source.records()[0]).mask, expected)


def test_unknown_colour_rejected_with_colour_and_count(capture: Path) -> None:
    label = np.array([ROAD, CAR, SKY], dtype=np.uint8)[_paint(0)]
    label[:3, :4] = (10, 11, 12)  # 12 px
    label[5, 5] = (1, 2, 3)  # 1 px
    _save(label, capture / "labels" / "town01" / "000.png")
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    with pytest.raises(InputRejected) as info:
        source.load(source.records()[0])
    assert info.value.path == "rgb/town01/000.png"
    assert info.value.reason == "2 unknown label colours, e.g. #0a0b0c (12 px)"
    # Other records still load.
    source.load(source.records()[1])


def test_unknown_id_rejected(tmp_path: Path) -> None:
    root = _ids_capture(tmp_path, np.array([7, 10, 23], dtype=np.uint8)[_paint(0)])
    source = ExternalFramesSource(root, class_names=CLASSES, labels="semseg", ids={7: "road", 10: "car"})
    with pytest.raises(InputRejected, match=r"1 unknown label id, e\.g\. 23 \(\d+ px\)"):
        source.load(source.records()[0])


def test_unknown_void_maps_to_void_class(capture: Path) -> None:
    label = np.array([ROAD, CAR, SKY], dtype=np.uint8)[_paint(0)]
    label[:3, :4] = (10, 11, 12)
    _save(label, capture / "labels" / "town01" / "000.png")
    source = ExternalFramesSource(
        capture, class_names=CLASSES, palette=PALETTE, unknown="void", void_class="void"
    )
    expected = _expected(0)
    expected[:3, :4] = 3
    np.testing.assert_array_equal(source.load(source.records()[0]).mask, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unknown": "void"}, "void_class: required"),
        ({"unknown": "void", "void_class": "nothing"}, "void_class: class 'nothing' is not in class_names"),
        ({"unknown": "ignore"}, "unknown: must be"),
    ],
)
def test_void_config_errors(capture: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE, **kwargs)


def _reject(source: ExternalFramesSource, index: int = 0) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        source.load(source.records()[index])
    return info.value


def test_size_mismatch_rejected(capture: Path) -> None:
    _save(np.zeros((50, 100, 3), dtype=np.uint8), capture / "labels" / "town01" / "000.png")
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    error = _reject(source)
    assert error.path == "rgb/town01/000.png"
    assert error.reason == "label 100x50 does not match frame 32x24"


def test_missing_label_rejected(capture: Path) -> None:
    (capture / "labels" / "town02" / "000.png").unlink()
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    error = _reject(source, 2)
    assert error.path == "rgb/town02/000.png"
    assert error.reason == "no label image at labels/town02/000.png"


def test_jpeg_label_rejected(capture: Path) -> None:
    label = np.array([ROAD, CAR, SKY], dtype=np.uint8)[_paint(0)]
    (capture / "labels" / "town01" / "000.png").unlink()
    _save(label, capture / "labels" / "town01" / "000.jpg", fmt="JPEG")
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    assert "labels must be PNG (lossless)" in _reject(source).reason
    # A JPEG stream behind a .png name is refused too.
    _save(label, capture / "labels" / "town01" / "001.png", fmt="JPEG")
    assert "labels must be PNG (lossless)" in _reject(source, 1).reason


def test_rgb_label_in_ids_mode_rejected(capture: Path) -> None:
    source = ExternalFramesSource(capture, class_names=CLASSES, ids={0: "road"})
    reason = _reject(source).reason
    assert "single-channel" in reason and "RGB" in reason


def test_gray_label_in_palette_mode_rejected(tmp_path: Path) -> None:
    root = _ids_capture(tmp_path, np.zeros((H, W), dtype=np.uint8))
    source = ExternalFramesSource(root, class_names=CLASSES, labels="semseg", palette=PALETTE)
    assert "mode L" in _reject(source).reason


def test_corrupt_label_and_frame_rejected(capture: Path) -> None:
    data = (capture / "labels" / "town01" / "000.png").read_bytes()
    (capture / "labels" / "town01" / "000.png").write_bytes(data[: len(data) // 2])
    (capture / "rgb" / "town01" / "001.png").write_bytes(b"not an image")
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    error = _reject(source, 0)
    assert error.path == "rgb/town01/000.png" and "label labels/town01/000.png" in error.reason
    assert _reject(source, 1).path == "rgb/town01/001.png"


def test_label_bomb_rejected_before_decoding(capture: Path) -> None:
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE, max_pixels=H * W)
    source.load(source.records()[0])
    buffer = io.BytesIO()
    Image.new("RGB", (W * 4, H * 4)).save(buffer, format="PNG")
    (capture / "labels" / "town01" / "000.png").write_bytes(buffer.getvalue())
    assert "decompression bomb" in _reject(source).reason


def test_label_symlink_escaping_root_rejected(
    capture: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    (capture / "labels" / "town01" / "000.png").rename(outside)
    (capture / "labels" / "town01" / "000.png").symlink_to(outside)
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE)
    assert "escapes the dataset root" in _reject(source).reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"palette": {"#12345": "car"}}, r"palette\['#12345'\]: not a colour"),
        ({"palette": {"256,0,0": "car"}}, r"palette\['256,0,0'\]: not a colour"),
        ({"palette": {"#00008e": "vehicle"}}, r"palette\['#00008e'\]: class 'vehicle' is not in class_names"),
        ({"palette": {"#00008E": "car", "0,0,142": "road"}}, r"palette\['0,0,142'\]: same colour as"),
        ({"ids": {7: "vehicle"}}, r"ids\[7\]: class 'vehicle' is not in class_names"),
        ({"ids": {70000: "car"}}, r"ids\[70000\]: not a label id"),
        ({"ids": {-1: "car"}}, r"ids\[-1\]: not a label id"),
        ({"palette": PALETTE, "ids": {7: "car"}}, "exactly one"),
        ({}, "exactly one"),
        ({"palette": {}}, "palette: expected a non-empty mapping"),
    ],
)
def test_mapping_config_errors(capture: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExternalFramesSource(capture, class_names=CLASSES, **kwargs)


@pytest.mark.parametrize(
    ("class_names", "message"),
    [
        (["road", "road"], r"class_names\[1\]: duplicate"),
        (["road", "../car"], r"class_names\[1\]: class name"),
        ([], "class_names: expected a non-empty list"),
    ],
)
def test_class_names_config_errors(capture: Path, class_names: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExternalFramesSource(capture, class_names=class_names, palette={"#000000": "road"})


def test_layout_config_errors(capture: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    def make(root: Path, **kwargs: str) -> None:
        ExternalFramesSource(root, class_names=CLASSES, palette=PALETTE, **kwargs)

    with pytest.raises(ConfigError, match="capture root not found"):
        make(capture / "nope")
    with pytest.raises(ConfigError, match="frames folder not found"):
        make(capture, frames="images")
    with pytest.raises(ConfigError, match="labels folder not found"):
        make(capture, labels="semantic")
    with pytest.raises(ConfigError, match="sub-folder of root"):
        make(capture, labels="../labels")
    with pytest.raises(ConfigError, match="separate folders"):
        make(capture, frames="rgb", labels="rgb")
    empty = tmp_path_factory.mktemp("empty")
    (empty / "rgb").mkdir()
    (empty / "labels").mkdir()
    (empty / "rgb" / "notes.txt").write_text("no frames here")
    with pytest.raises(ConfigError, match="frames folder has no image files"):
        make(empty)
    _save(_frame(0), capture / "rgb" / "town01" / "000.jpg", fmt="JPEG")
    with pytest.raises(ConfigError, match="share a stem"):
        make(capture)


def test_image_size_resizes_mask_nearest(capture: Path) -> None:
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE, image_size=16)
    sample = source.load(source.records()[0])
    assert sample.image.shape == (16, 16, 3) and sample.image.dtype == np.uint8
    assert sample.mask.shape == (16, 16) and sample.mask.dtype == np.uint16
    assert set(np.unique(sample.mask).tolist()) == {0, 1, 2}
    # Nearest-neighbour: each output pixel is the source pixel under its centre.
    rows = ((np.arange(16) + 0.5) * H / 16).astype(int)
    cols = ((np.arange(16) + 0.5) * W / 16).astype(int)
    np.testing.assert_array_equal(sample.mask, _expected(0)[np.ix_(rows, cols)])


def test_width_height_crop_then_resize_image_and_mask_alike(capture: Path) -> None:
    # 32x24 frames to 12x12: the centred 24x24 window (4 columns cut each side), then halved.
    source = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE, width=12, height=12)
    sample = source.load(source.records()[0])
    assert sample.image.shape == (12, 12, 3) and sample.mask.shape == (12, 12)
    assert sample.mask.dtype == np.uint16
    np.testing.assert_array_equal(sample.mask, _expected(0)[:, 4:28][1::2, 1::2])
    np.testing.assert_array_equal(sample.image, crop_resize(_frame(0), 12, 12))
    # The stored aspect (4:3, as CamVid's 240x180 to 128x96) is a pure resize: nothing cut.
    same = ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE, width=16, height=12).load(
        source.records()[0])
    np.testing.assert_array_equal(same.mask, _expected(0)[1::2, 1::2])


@pytest.mark.parametrize("kwargs", [{"width": 16}, {"height": 16}, {"image_size": 16, "width": 16, "height": 12},
                                    {"width": 0, "height": 12}])
def test_width_height_config_errors(capture: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="width|height"):
        ExternalFramesSource(capture, class_names=CLASSES, palette=PALETTE, **kwargs)


def test_width_height_in_the_job_config(capture: Path) -> None:
    raw = {"kind": "external", "root": str(capture), "class_names": CLASSES, "palette": PALETTE}
    config = parse_config({"source": {**raw, "width": 16, "height": 12}})
    sample = build_source(config.source).load(build_source(config.source).records()[0])
    assert sample.image.shape == (12, 16, 3)
    assert "width" not in parse_config({"source": raw}).model_dump()["source"]  # old configs hash as before
    with pytest.raises(ConfigError, match="width 16 needs height"):
        parse_config({"source": {**raw, "width": 16}})


def test_parse_colour() -> None:
    assert parse_colour("#0A0b0C") == 0x0A0B0C
    assert parse_colour(" 10, 11 ,12 ") == 0x0A0B0C
    assert parse_colour("#0a0b0") is None and parse_colour("1,2") is None and parse_colour(7) is None
