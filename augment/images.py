"""Safe image decoding and PNG encoding.

Every image a source reads goes through `decode_image`, which turns any way a file can
be bad into an `InputRejected` with a reason (so one broken file is skipped, never fatal)
and turns every accepted file into one array layout: uint8 HxWx3 (`color="rgb"`) or
uint8 HxWx1 (`color="gray"`).

Files are read with `read_regular_file`: only regular files (symlinks to them are
followed; a FIFO, socket or device is refused *before* it is opened, so a FIFO named
``x.png`` cannot hang a worker), and only up to a size bound checked before reading
(`max_file_bytes`: what a `max_pixels` image can need), so a 1.5 GB sparse file is
refused without being read.

Checks, in order: an empty file; bytes Pillow cannot identify; a pixel count
(width * height from the header) above `max_pixels`, checked *before* any pixel is
decoded (a decompression bomb); pixel data that is truncated or corrupt (pixels are
fully loaded, so truncation is always seen; Pillow's global `LOAD_TRUNCATED_IMAGES` and
`MAX_IMAGE_PIXELS` are never changed, its bomb warning is caught locally).

Mode rule (how a file's pixel mode becomes the target colour):

- ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted to the target
  colour with Pillow's conversions (gray is ITU-R 601 luma).
- With alpha (``RGBA``, ``LA``, ``PA``, and ``P``/``L``/``RGB`` with a transparency key):
  composited onto black (each channel becomes round(c * a / 255)), then alpha dropped.
- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, and ``I`` with every value in
  0..65535): scaled to 8 bits with round(v / 257).
- Anything else (float ``F``, ``I`` with values outside 0..65535, ...): refused with a
  reason naming the mode.
- Multi-frame files (GIF, TIFF, APNG): the first frame only.
- EXIF orientation is not applied: pixels are used as stored, the layout annotation
  files (COCO) refer to.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from augment.errors import InputRejected
from augment.sample import Box

Color = Literal["rgb", "gray"]
COLORS: tuple[str, ...] = ("rgb", "gray")
DEFAULT_MAX_PIXELS = 40_000_000
# Bound on an image file's size, checked before reading it. The widest pixel among modes
# we decode is 8 bytes (16-bit RGBA / CMYK); stored uncompressed (TIFF, BMP, PNG with
# stored deflate blocks) a frame takes about that per pixel, and compression only makes it
# smaller. The headroom covers headers, palettes, row padding and metadata (ICC profiles,
# EXIF, XMP, PNG text chunks) and the later frames of small animations (only the first is
# used). The bound is generous on purpose: it only refuses absurd files (GB-sized, sparse)
# without reading them; `max_pixels` stays the real limit, checked on the header.
MAX_BYTES_PER_PIXEL = 8
FILE_HEADROOM_BYTES = 16 * 2**20

# Modes Pillow converts directly to RGB / L.
_PLAIN_MODES = {"1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV"}
_ALPHA_MODES = {"RGBA", "LA", "PA"}
_UINT16_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
# What Pillow raises on corrupt or truncated data (zlib/struct leak through some plugins).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)


def _open_checked(data: bytes, path: str, max_pixels: int) -> Image.Image:
    """Open `data`, check the header's pixel count, then fully load the first frame."""
    if len(data) == 0:
        raise InputRejected(path, "empty file")
    with warnings.catch_warnings():
        # Our own `max_pixels` check below is the limit; Pillow's bomb warning (its global
        # MAX_IMAGE_PIXELS) is swallowed here without touching Pillow's state.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise InputRejected(path, f"decompression bomb: {exc}") from None
        except UnidentifiedImageError:
            raise InputRejected(path, "not an image (format not recognised)") from None
        except _DECODE_ERRORS as exc:
            raise InputRejected(path, f"corrupt image header: {exc}") from None
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InputRejected(path, f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise InputRejected(
                path,
                f"decompression bomb: {width}x{height} = {width * height} pixels "
                f"exceeds max_pixels={max_pixels}",
            )
        try:
            image.seek(0)
            image.load()
        except Image.DecompressionBombError as exc:
            raise InputRejected(path, f"decompression bomb: {exc}") from None
        except _DECODE_ERRORS as exc:
            raise InputRejected(path, f"truncated or corrupt image data: {exc}") from None
    return image


def _uint16_gray(image: Image.Image, path: str) -> np.ndarray | None:
    """16-bit (or 'I' within 0..65535) gray pixels as uint16 HxW; None for other modes."""
    if image.mode in _UINT16_MODES:
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputRejected(
                path,
                f"unsupported image mode I with values {int(values.min())}..{int(values.max())} "
                "(only 0..65535 is accepted)",
            )
        return values.astype(np.uint16)
    return None


def _to_array(image: Image.Image, color: Color, path: str) -> np.ndarray:
    """Apply the module's mode rule; return uint8 HxWx3 or HxWx1."""
    target = "RGB" if color == "rgb" else "L"
    wide = _uint16_gray(image, path)
    if wide is not None:
        gray = ((wide.astype(np.uint32) + 128) // 257).astype(np.uint8)
        out = np.repeat(gray[..., None], 3, axis=2) if color == "rgb" else gray[..., None]
        return np.ascontiguousarray(out)
    has_key = "transparency" in image.info and image.mode in {"P", "L", "RGB"}
    if image.mode in _ALPHA_MODES or has_key:
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
        alpha = rgba[..., 3:4]
        rgb = ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)
        if color == "rgb":
            return np.ascontiguousarray(rgb)
        return np.asarray(Image.fromarray(rgb).convert("L"))[..., None].copy()
    if image.mode in _PLAIN_MODES:
        # Pillow has no LAB -> L conversion; go through RGB.
        source = image.convert("RGB") if image.mode == "LAB" and target == "L" else image
        out = np.asarray(source.convert(target))
        return np.array(out if out.ndim == 3 else out[..., None], dtype=np.uint8)
    raise InputRejected(path, f"unsupported image mode {image.mode}")


def check_color(color: str) -> Color:
    """Return `color` if it is 'rgb' or 'gray', else raise ValueError naming it."""
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    return color  # type: ignore[return-value]


def decode_image(
    data: bytes, *, path: str, color: Color = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode image file bytes to uint8 HxWx3 (rgb) or HxWx1 (gray).

    Raises `InputRejected(path, reason)` for anything unusable (see the module docstring).
    """
    check_color(color)
    with _open_checked(data, path, max_pixels) as image:
        return _to_array(image, color, path)


def max_file_bytes(max_pixels: int) -> int:
    """The largest image file accepted for a `max_pixels` limit (see MAX_BYTES_PER_PIXEL)."""
    return MAX_BYTES_PER_PIXEL * max_pixels + FILE_HEADROOM_BYTES


def format_bytes(size: int) -> str:
    """A byte count for messages: '1.6 GB', '336.8 MB', '512 bytes' (decimal units)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


_FILE_TYPES = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _check_regular(info: os.stat_result, name: str, max_bytes: int, bound: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((k for test, k in _FILE_TYPES if test(info.st_mode)), "unknown type")
        if kind == "directory":
            raise InputRejected(name, "is a directory, not a file")
        raise InputRejected(name, f"not a regular file ({kind})")
    if info.st_size > max_bytes:
        raise InputRejected(name, f"file too large: {format_bytes(info.st_size)}, more than {bound}")


def read_regular_file(path: Path, *, name: str, max_bytes: int, bound: str | None = None) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed), at most `max_bytes`.

    Raises `InputRejected(name, reason)` for a missing file, a directory, anything that is
    not a regular file (FIFO, socket, device), or a file larger than `max_bytes`; `bound`
    says what the limit is ("the 336.8 MB a 40,000,000-pixel image can need"). The type and
    size are checked with stat() before opening (opening a FIFO would block until a writer
    comes) and again with fstat() on the opened file (it may have been swapped in between);
    O_NONBLOCK is a last guard: a FIFO opened that way returns at once.
    """
    bound = bound or f"the {format_bytes(max_bytes)} limit"
    try:
        _check_regular(os.stat(path), name, max_bytes, bound)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputRejected(name, "file not found") from None
    except OSError as exc:
        raise InputRejected(name, f"cannot read file: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as handle:
            _check_regular(os.fstat(handle.fileno()), name, max_bytes, bound)
            data = handle.read(max_bytes + 1)  # +1: a file that grew since fstat is seen
    except OSError as exc:
        raise InputRejected(name, f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputRejected(name, f"file too large: more than {bound}")
    return data


def image_file_bound(max_pixels: int) -> tuple[int, str]:
    """(max_file_bytes, how to say it) for an image read under `max_pixels`."""
    limit = max_file_bytes(max_pixels)
    return limit, f"the {format_bytes(limit)} a {max_pixels:,}-pixel image can need"


def load_image_file(
    path: Path,
    *,
    root: Path,
    color: Color = "rgb",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Read and decode the image at `path` (absolute, or relative to `root`).

    Refuses a path that resolves (symlinks followed) outside `root`, a missing file, a
    directory, anything but a regular file (a FIFO, a device) and a file larger than
    `max_file_bytes(max_pixels)` (see `read_regular_file`). `name` is the path reported in
    `InputRejected` (default: `path` relative to `root` when it is under it, else `path`
    as given).
    """
    path = Path(path)
    root = Path(root)
    if not path.is_absolute():
        path = root / path
    if name is None:
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = str(path)
    real_root = root.resolve()
    real = path.resolve()
    if not real.is_relative_to(real_root):
        raise InputRejected(name, f"path escapes the dataset root {root} (resolves to {real})")
    limit, bound = image_file_bound(max_pixels)
    data = read_regular_file(real, name=name, max_bytes=limit, bound=bound)
    return decode_image(data, path=name, color=color, max_pixels=max_pixels)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_UP = 2  # each byte minus the byte above it (PNG 1.2, section 6.3)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """length, type, data, CRC-32 of type and data (PNG 1.2, section 3.2)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode uint8 HxW / HxWx1 / HxWx3 or uint16 HxW (16-bit gray) as PNG bytes.

    A minimal PNG: IHDR, one IDAT, IEND (8-bit gray, 8-bit RGB or 16-bit gray, no
    interlacing, no ancillary chunks). Every row uses the "Up" filter, computed for the whole
    image in one numpy subtraction, and is deflated by zlib at `compress_level` (0..9). Label
    planes (masks, instance ids, depth) are mostly runs of equal values, which Up turns into
    zeros, and an adaptive per-row filter choice (what Pillow does) costs more than the
    deflate itself at level 1 for a few percent smaller files; 16-bit planes are written
    big-endian straight into the filtered buffer, without going through a Pillow image.

    The bytes depend only on the pixels, `compress_level` and the zlib library (no
    timestamps or metadata), so the same input always gives the same bytes.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] in (1, 3):
        channels = array.shape[2]
    elif array.dtype in (np.uint8, np.uint16) and array.ndim == 2:
        channels = 1
    else:
        raise ValueError(
            "encode_png takes uint8 HxW, HxWx1 or HxWx3, or uint16 HxW; "
            f"got {array.dtype} with shape {array.shape}"
        )
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be in 0..9, got {compress_level!r}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"encode_png takes an image with pixels, got shape {array.shape}")
    # 1. Scanlines as bytes: 8-bit samples as they are, 16-bit samples big-endian (PNG's order).
    if array.dtype == np.uint16:
        raw = np.empty((height, width), ">u2")
        raw[...] = array
        rows = raw.view(np.uint8)
    else:
        rows = array.reshape(height, width * channels)
    # 2. Filter: one filter-type byte, then the row minus the row above (the first row is
    # its own difference from an all-zero row), wrapping modulo 256.
    filtered = np.empty((height, 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = _PNG_FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    # 3. Chunks (PNG 1.2, section 4.1): bit depth 8 or 16; colour type 0 (gray) or 2 (RGB).
    header = struct.pack(">IIBBBBB", width, height, 16 if array.dtype == np.uint16 else 8,
                         2 if channels == 3 else 0, 0, 0, 0)
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(filtered, compress_level)), _png_chunk(b"IEND", b"")))


def decode_png(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode PNG bytes written by `encode_png` (or any gray/RGB PNG).

    Returns uint8 HxWx1 (gray), uint8 HxWx3 (RGB) or uint16 HxW (16-bit gray).
    Raises ValueError for anything else (not a PNG, corrupt, another mode).
    """
    try:
        with _open_checked(data, "<png>", max_pixels) as image:
            if image.format != "PNG":
                raise ValueError(f"not a PNG (format {image.format})")
            wide = _uint16_gray(image, "<png>")
            if wide is not None:
                return wide
            if image.mode in {"1", "L"}:
                return np.asarray(image.convert("L"))[..., None].copy()
            if image.mode == "RGB":
                return np.array(image, dtype=np.uint8)
            raise ValueError(f"unsupported PNG mode {image.mode} (expected L, RGB or I;16)")
    except InputRejected as exc:
        raise ValueError(exc.reason) from None


def resize_image(array: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 HxWxC (C is 1 or 3) to size x size with Pillow's bicubic filter."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"resize_image takes uint8 HxWx1 or HxWx3, got {array.dtype} {array.shape}")
    if array.shape[:2] == (size, size):
        return array
    mode = "L" if array.shape[2] == 1 else "RGB"
    image = Image.fromarray(np.ascontiguousarray(array[..., 0] if mode == "L" else array))
    out = np.asarray(image.resize((size, size), resample=Image.Resampling.BICUBIC))
    return np.array(out[..., None] if mode == "L" else out, dtype=np.uint8)


def centred_window(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of the largest centred window of aspect width/height in an HxW
    array: whichever side is too long is cropped."""
    if w * height > h * width:
        keep = max(1, round(h * width / height))
        return 0, (w - keep) // 2, h, keep
    if w * height < h * width:
        keep = max(1, round(w * height / width))
        return (h - keep) // 2, 0, keep, w
    return 0, 0, h, w


def centred_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred window of aspect width/height of an HxW(xC) array (a view)."""
    top, left, rows, cols = centred_window(*array.shape[:2], height, width)
    return array[top:top + rows, left:left + cols]


def resize_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an HxW array of ids (class ids, instance ids: any integer
    dtype, kept) to height x width, sampling at pixel centres."""
    h, w = ids.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return np.ascontiguousarray(ids[rows[:, None], cols[None, :]])


def crop_resize_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """`crop_resize` for an HxW id map: the same centred window, then nearest-neighbour."""
    return resize_ids(centred_crop(ids, height, width), height, width)


def crop_resize_boxes(boxes: list[Box], h: int, w: int, height: int, width: int) -> list[Box]:
    """Boxes of an HxW image after `crop_resize` to height x width: cut to the centred window,
    then scaled. A box left with less than a pixel's width or height is dropped (it lay in the
    cropped-off margin)."""
    top, left, rows, cols = centred_window(h, w, height, width)
    sx, sy = width / cols, height / rows
    out = []
    for box in boxes:
        x0, y0 = max(box.x - left, 0.0), max(box.y - top, 0.0)
        x1, y1 = min(box.x + box.w - left, float(cols)), min(box.y + box.h - top, float(rows))
        if (x1 - x0) * sx >= 1 and (y1 - y0) * sy >= 1:
            out.append(Box(x=x0 * sx, y=y0 * sy, w=(x1 - x0) * sx, h=(y1 - y0) * sy, label=box.label))
    return out


def crop_resize(array: np.ndarray, height: int, width: int, *, nearest: bool = False) -> np.ndarray:
    """uint8 HxWxC (C 1 or 3) to height x width: the centred crop of that aspect ratio, then
    Pillow's bicubic resize, so nothing is stretched (a 240x180 frame to 128x96 is a pure resize).
    `nearest`: nearest-neighbour instead, for label maps (class ids must stay class ids)."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"crop_resize takes uint8 HxWx1 or HxWx3, got {array.dtype} {array.shape}")
    if array.shape[:2] == (height, width):
        return array
    array = centred_crop(array, height, width)
    mode = "L" if array.shape[2] == 1 else "RGB"
    image = Image.fromarray(np.ascontiguousarray(array[..., 0] if mode == "L" else array))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    out = np.asarray(image.resize((width, height), resample=resample))
    return np.array(out[..., None] if mode == "L" else out, dtype=np.uint8)
