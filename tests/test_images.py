"""augment.images: every way an image file can be bad is an InputRejected; the mode rule."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.errors import InputRejected
from augment.images import (
    crop_resize_boxes,
    crop_resize_ids,
    decode_image,
    decode_png,
    encode_png,
    load_image_file,
    resize_image,
)
from augment.sample import Box


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height gray pixels but carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _reason(excinfo: pytest.ExceptionInfo[InputRejected]) -> str:
    return excinfo.value.reason


def test_valid_rgb_png_decodes_exactly() -> None:
    pixels = _noise(5, 7)
    out = decode_image(_save(Image.fromarray(pixels), "PNG"), path="a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_corrupt_bytes_are_rejected() -> None:
    with pytest.raises(InputRejected) as excinfo:
        decode_image(b"this is not an image at all", path="junk.png")
    assert excinfo.value.path == "junk.png"
    assert "not an image" in _reason(excinfo)


def test_zero_byte_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputRejected) as excinfo:
        load_image_file(tmp_path / "empty.png", root=tmp_path)
    assert excinfo.value.path == "empty.png"
    assert _reason(excinfo) == "empty file"


def test_truncated_png_is_rejected() -> None:
    data = _save(Image.fromarray(_noise(64, 64)), "PNG")
    with pytest.raises(InputRejected) as excinfo:
        decode_image(data[: len(data) // 2], path="cut.png")
    assert "truncated" in _reason(excinfo)


def test_truncated_jpeg_is_rejected() -> None:
    data = _save(Image.fromarray(_noise(64, 64)), "JPEG", quality=95)
    with pytest.raises(InputRejected) as excinfo:
        decode_image(data[: int(len(data) * 0.6)], path="cut.jpg")
    assert "truncated" in _reason(excinfo)


def test_decompression_bomb_header_is_rejected_before_decoding() -> None:
    # 2000 x 2000 claimed, no pixel data at all: the size check must fire first (a decode
    # attempt would report truncation instead).
    with pytest.raises(InputRejected) as excinfo:
        decode_image(_png_header_only(2000, 2000), path="bomb.png", max_pixels=1_000_000)
    assert "decompression bomb" in _reason(excinfo)
    assert "2000x2000" in _reason(excinfo)


def test_huge_header_beyond_pillow_limit_is_rejected() -> None:
    with pytest.raises(InputRejected) as excinfo:
        decode_image(_png_header_only(100_000, 100_000), path="bomb.png")
    assert "decompression bomb" in _reason(excinfo)


def test_real_image_over_max_pixels_is_rejected() -> None:
    data = _save(Image.fromarray(_noise(100, 100)), "PNG")
    with pytest.raises(InputRejected) as excinfo:
        decode_image(data, path="big.png", max_pixels=5_000)
    assert "exceeds max_pixels=5000" in _reason(excinfo)
    assert decode_image(data, path="big.png", max_pixels=10_000).shape == (100, 100, 3)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    out = decode_image(_save(cyan, "JPEG", quality=95), path="cmyk.jpg")
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[8, 8].astype(int), [0, 255, 255], atol=3)


def test_16bit_png_is_scaled_to_8_bits() -> None:
    values = np.array([[0, 128, 129, 257, 300, 65535]], dtype=np.uint16)
    data = encode_png(values)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    gray = decode_image(data, path="deep.png", color="gray")
    assert gray.shape == (1, 6, 1)
    np.testing.assert_array_equal(gray[0, :, 0], [0, 0, 1, 1, 1, 255])  # round(v / 257)
    rgb = decode_image(data, path="deep.png")
    np.testing.assert_array_equal(rgb, np.repeat(gray, 3, axis=2))


def test_mode_i_outside_16_bits_is_rejected() -> None:
    image = Image.fromarray(np.array([[0, 70_000]], dtype=np.int32))
    assert image.mode == "I"
    with pytest.raises(InputRejected) as excinfo:
        decode_image(_save(image, "TIFF"), path="wide.tif")
    assert "mode I" in _reason(excinfo)


def test_float_mode_is_rejected_naming_the_mode() -> None:
    image = Image.fromarray(np.array([[0.5, 1.5]], dtype=np.float32))
    with pytest.raises(InputRejected) as excinfo:
        decode_image(_save(image, "TIFF"), path="float.tif")
    assert _reason(excinfo) == "unsupported image mode F"


def test_palette_with_transparency_is_composited_onto_black() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)  # 0 red, 1 green
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    data = _save(image, "PNG", transparency=0)
    out = decode_image(data, path="p.png")
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [0, 255, 0]])


def test_rgba_is_composited_onto_black() -> None:
    pixels = np.array([[[200, 100, 50, 128], [10, 20, 30, 0], [7, 8, 9, 255]]], dtype=np.uint8)
    out = decode_image(_save(Image.fromarray(pixels), "PNG"), path="rgba.png")
    assert out.shape == (1, 3, 3)
    alpha = pixels[..., 3:4].astype(float)
    expected = np.round(pixels[..., :3] * alpha / 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0, 0], [100, 50, 25])


def test_la_gray_alpha_to_gray() -> None:
    image = Image.fromarray(np.array([[[200, 128], [90, 255]]], dtype=np.uint8))
    assert image.mode == "LA"
    out = decode_image(_save(image, "PNG"), path="la.png", color="gray")
    np.testing.assert_array_equal(out[0, :, 0], [100, 90])


def test_gray_output_has_one_channel() -> None:
    red = np.zeros((3, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    out = decode_image(_save(Image.fromarray(red), "PNG"), path="red.png", color="gray")
    assert out.shape == (3, 4, 1) and out.dtype == np.uint8
    assert np.all(out == 76)  # ITU-R 601 luma of pure red


def test_multiframe_gif_uses_the_first_frame() -> None:
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    blue = Image.new("RGB", (4, 4), (0, 0, 255))
    data = _save(red, "GIF", save_all=True, append_images=[blue])
    out = decode_image(data, path="anim.gif")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


def test_bad_color_argument_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="color"):
        data = _save(Image.new("L", (2, 2)), "PNG")
        decode_image(data, path="x.png", color="cmyk")  # type: ignore[arg-type]


def test_symlink_escaping_root_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(_save(Image.new("RGB", (2, 2)), "PNG"))
    (root / "link.png").symlink_to(outside)
    with pytest.raises(InputRejected) as excinfo:
        load_image_file(root / "link.png", root=root)
    assert excinfo.value.path == "link.png"
    assert "escapes" in _reason(excinfo)


def test_dotdot_path_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "x.png").write_bytes(_save(Image.new("RGB", (2, 2)), "PNG"))
    with pytest.raises(InputRejected, match="escapes"):
        load_image_file(Path("../x.png"), root=root)


def test_symlink_inside_root_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_save(Image.new("RGB", (3, 2), (1, 2, 3)), "PNG"))
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    out = load_image_file(tmp_path / "b.png", root=tmp_path)
    assert out.shape == (2, 3, 3) and tuple(out[0, 0]) == (1, 2, 3)


def test_missing_file_and_directory_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputRejected, match="file not found"):
        load_image_file(tmp_path / "nope.png", root=tmp_path)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputRejected, match="directory"):
        load_image_file(tmp_path / "dir.png", root=tmp_path)


def test_uint16_png_round_trip_keeps_values_above_255() -> None:
    mask = np.array([[0, 1, 255], [256, 1000, 65535]], dtype=np.uint16)
    data = encode_png(mask)
    out = decode_png(data)
    assert out.dtype == np.uint16 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, mask)


def test_uint8_png_round_trip_and_determinism() -> None:
    rgb = _noise(6, 5, seed=1)
    gray = rgb[..., :1].copy()
    assert encode_png(rgb) == encode_png(rgb.copy())
    np.testing.assert_array_equal(decode_png(encode_png(rgb)), rgb)
    np.testing.assert_array_equal(decode_png(encode_png(gray)), gray)
    np.testing.assert_array_equal(decode_png(encode_png(gray[..., 0])), gray)


def test_encode_png_refuses_other_arrays() -> None:
    with pytest.raises(ValueError, match="float32"):
        encode_png(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="uint16"):
        encode_png(np.zeros((2, 2, 3), dtype=np.uint16))


def test_decode_png_refuses_non_png() -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(_save(Image.new("RGB", (2, 2)), "BMP"))
    with pytest.raises(ValueError, match="not an image"):
        decode_png(b"garbage")


def test_resize_image_square_bicubic() -> None:
    out = resize_image(_noise(8, 6), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    gray = resize_image(np.full((8, 8, 1), 7, dtype=np.uint8), 4)
    assert gray.shape == (4, 4, 1) and np.all(gray == 7)


def test_boxes_follow_the_centred_crop_and_resize_of_their_image() -> None:
    """A 40x30 image to 16x16: the centred 30x30 window (columns 5..35), scaled by 16/30."""
    boxes = [Box(0, 0, 10, 10, 1), Box(0, 5, 4, 10, 2), Box(20, 10, 10, 20, 3), Box(34.9, 0, 5, 30, 4)]
    s = 16 / 30
    got = crop_resize_boxes(boxes, 30, 40, 16, 16)
    # the first is cut at the window's left edge; the second lies in the cropped-off margin;
    # the last keeps 0.1 px of width, under a pixel once scaled
    assert [b.label for b in got] == [1, 3]
    assert (got[0].x, got[0].y, got[0].w, got[0].h) == pytest.approx((0, 0, 5 * s, 10 * s))
    assert (got[1].x, got[1].y, got[1].w, got[1].h) == pytest.approx((15 * s, 10 * s, 10 * s, 20 * s))


def test_ids_and_boxes_of_one_object_stay_together_through_crop_resize() -> None:
    """An object's box after `crop_resize_boxes` bounds its pixels after `crop_resize_ids`
    (to within a pixel), and ids stay ids (uint16, no new values)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(20, 80, 2))
        height, width = (int(v) for v in rng.integers(8, 40, 2))
        x0, y0 = int(rng.integers(0, w - 6)), int(rng.integers(0, h - 6))
        x1, y1 = int(rng.integers(x0 + 5, w + 1)), int(rng.integers(y0 + 5, h + 1))
        ids = np.zeros((h, w), np.uint16)
        ids[y0:y1, x0:x1] = 300
        small = crop_resize_ids(ids, height, width)
        assert small.dtype == np.uint16 and small.shape == (height, width) and set(np.unique(small)) <= {0, 300}
        boxes = crop_resize_boxes([Box(x0, y0, x1 - x0, y1 - y0, 1)], h, w, height, width)
        rows, cols = np.nonzero(small == 300)
        if not len(rows):
            continue
        assert len(boxes) == 1
        box = boxes[0]
        assert box.x - 1 <= cols.min() and cols.max() + 1 <= box.x + box.w + 1
        assert box.y - 1 <= rows.min() and rows.max() + 1 <= box.y + box.h + 1
