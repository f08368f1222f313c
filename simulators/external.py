"""Frames exported by a real simulator or game (CARLA, GTA-style captures) as a `Source`.

    root/<frames>/town01/000001.png    RGB frame (.png .jpg .jpeg .bmp .tif .tiff .webp)
    root/<labels>/town01/000001.png    its label image: same relative stem, always PNG

The config maps the simulator's label encoding to the dataset's class names, in exactly
one of two ways:

- ``palette``: label images are colour images; keys are colours (``"#RRGGBB"``, any case,
  or ``"R,G,B"``), values class names. A palette-mode ('P') PNG is expanded through its
  palette; an RGBA PNG has its alpha dropped (never composited: label colours are codes,
  not colours to blend). Gray label images are refused (use ``ids`` for those).
- ``ids``: label images are single-channel class ids of the simulator (e.g. CARLA's
  semantic tags): 8-bit 'L', 16-bit 'I;16', bilevel '1' (0/1), or 'P' read as its raw
  palette indices. Colour label images are refused.

Several simulator colours / ids may map to the same class. Pixels whose colour / id is
not mapped make the record rejected (``unknown="reject"``) or get the class
``void_class`` (``unknown="void"``).

Records: id ``external/<stem relative to the frames folder, POSIX>``, ref the frame's
path relative to ``root``, label None (a frame has no single class). Entries starting
with '.' are skipped, symlinked sub-folders are not followed, and `load` refuses frames
and label images that resolve outside ``root``, that are not regular files (a FIFO named
``x.png``) or that are larger than a ``max_pixels`` image can need. A frame whose file
name is not valid UTF-8 is listed with its bytes escaped in its id and ref and rejected
("file name is not valid UTF-8"). Two frames with the same stem (``a.png``
and ``a.jpg``) make the layout ambiguous: `ConfigError`.

`load` returns the frame (uint8 HxWx3) and its mask (uint16 HxW class ids), resized to
``image_size`` x ``image_size`` when set: the frame with `resize_image` (bicubic), the
mask nearest-neighbour (so it only holds class ids). With ``width`` and ``height`` instead
(e.g. 128 x 96 for 4:3 dashcam frames) both are cut to the same centred window of that
aspect ratio (`centred_crop`), then resized (the frame with `crop_resize`, bicubic; the mask
nearest-neighbour, as uint16), so nothing is stretched.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image

from augment.errors import ConfigError, InputRejected
from augment.images import (
    DEFAULT_MAX_PIXELS,
    # The same safe open (empty file, unidentified bytes, bomb check before decoding,
    # truncated data) and 16-bit rule `decode_image` uses; label images need their raw
    # values, not `decode_image`'s colour conversion.
    _open_checked,
    _uint16_gray,
    crop_resize,
    crop_resize_ids,
    image_file_bound,
    load_image_file,
    read_regular_file,
    resize_ids,
    resize_image,
)
from augment.sample import Sample
from augment.sources.base import ListedRecordsSource, SourceRecord, check_class_name, listed_name
from augment.sources.folder import walk_files

FRAME_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_OTHER_LABEL_EXTENSIONS = FRAME_EXTENSIONS | {".gif"}
_HEX_COLOUR = re.compile(r"^#([0-9A-Fa-f]{6})$")
_TRIPLE_COLOUR = re.compile(r"^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$")
_MAX_ID = 65535  # masks are uint16

Unknown = Literal["reject", "void"]


def parse_colour(key: Any) -> int | None:
    """``"#RRGGBB"`` / ``"R,G,B"`` → packed 0xRRGGBB; None if `key` is not a colour."""
    if not isinstance(key, str):
        return None
    if match := _HEX_COLOUR.match(key):
        return int(match.group(1), 16)
    if match := _TRIPLE_COLOUR.match(key):
        r, g, b = (int(v) for v in match.groups())
        if max(r, g, b) <= 255:
            return (r << 16) | (g << 8) | b
    return None


def _format_colour(code: int) -> str:
    return f"#{code:06x}"


def _parse_id(key: Any) -> int | None:
    """An int (or a string of decimal digits, as JSON/YAML configs give) in 0..65535."""
    if isinstance(key, bool):
        return None
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if isinstance(key, int) and 0 <= key <= _MAX_ID:
        return key
    return None


def _check_subfolder(value: Any, field: str) -> PurePosixPath:
    """A relative folder inside the root, without '..' (config field `field`)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field}: expected a folder name relative to root, got {value!r}")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or path == PurePosixPath("."):
        raise ConfigError(f"{field}: {value!r} must be a sub-folder of root (relative, no '..')")
    return path


def _map_codes(
    codes: np.ndarray, keys: np.ndarray, values: np.ndarray, fill: int | None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Map each code of `codes` (uint32 HxW) to its class id; vectorised.

    `keys` are the sorted mapped codes, `values` their class ids. Returns the uint16 mask and
    the unknown codes as (code, pixel count), most pixels first; unknown pixels get `fill`
    (0 when `fill` is None: the caller rejects the record then).
    """
    uniq, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    where = np.searchsorted(keys, uniq).clip(max=len(keys) - 1)
    known = keys[where] == uniq
    per_code = np.where(known, values[where], fill if fill is not None else 0).astype(np.uint16)
    unknown = [(int(c), int(n)) for c, n in zip(uniq[~known], counts[~known])]
    unknown.sort(key=lambda item: (-item[1], item[0]))
    return per_code[inverse].reshape(codes.shape), unknown


class ExternalFramesSource(ListedRecordsSource):
    """RGB frames plus label images exported by a simulator; masks in the dataset's classes."""

    def __init__(
        self,
        root: Path,
        *,
        class_names: list[str],
        frames: str = "rgb",
        labels: str = "labels",
        palette: dict[str, str] | None = None,
        ids: dict[int, str] | None = None,
        unknown: Unknown = "reject",
        void_class: str | None = None,
        image_size: int | None = None,
        width: int | None = None,
        height: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        # 1. Classes, unknown-pixel policy, sizes.
        self._class_names = self._check_class_names(class_names)
        class_ids = {name: i for i, name in enumerate(self._class_names)}
        if unknown not in ("reject", "void"):
            raise ConfigError(f"unknown: must be 'reject' or 'void', got {unknown!r}")
        self.unknown: Unknown = unknown
        self._void_id: int | None = None
        if unknown == "void":
            if void_class is None:
                raise ConfigError("void_class: required when unknown='void'")
            if void_class not in class_ids:
                raise ConfigError(f"void_class: class {void_class!r} is not in class_names")
            self._void_id = class_ids[void_class]
        elif void_class is not None:
            raise ConfigError("void_class: only used with unknown='void' (unknown is 'reject')")
        self.void_class = void_class
        sizes = (("image_size", image_size), ("width", width), ("height", height), ("max_pixels", max_pixels))
        for field, value in sizes:
            positive = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            if not positive and not (field != "max_pixels" and value is None):
                raise ConfigError(f"{field}: must be a positive integer, got {value!r}")
        if (width is None) != (height is None) or (image_size is not None and width is not None):
            raise ConfigError(f"image_size {image_size}, width {width}, height {height}: give image_size (square "
                              "frames) or width and height, or none of them")
        self.image_size = image_size
        self.frame_size = None if width is None or height is None else (width, height)
        self.max_pixels = max_pixels

        # 2. The label encoding: exactly one of palette / ids.
        if (palette is None) == (ids is None):
            which = "both" if palette is not None else "neither"
            raise ConfigError(f"palette / ids: give exactly one of them ({which} given)")
        self.encoding: Literal["palette", "ids"] = "palette" if palette is not None else "ids"
        mapping = palette if palette is not None else ids
        self._keys, self._values = self._parse_mapping(self.encoding, mapping, class_ids)

        # 3. Layout.
        self._frames = _check_subfolder(frames, "frames")
        self._labels = _check_subfolder(labels, "labels")
        f_parts, l_parts = self._frames.parts, self._labels.parts
        if f_parts[: len(l_parts)] == l_parts or l_parts[: len(f_parts)] == f_parts:
            raise ConfigError(
                f"frames / labels: {frames!r} and {labels!r} must be separate folders "
                "(neither inside the other)"
            )
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: capture root not found (or not a directory)")
        frames_dir = self.root / self._frames
        labels_dir = self.root / self._labels
        if not frames_dir.is_dir():
            raise ConfigError(f"{frames_dir}: frames folder not found (frames={frames!r})")
        if not labels_dir.is_dir():
            raise ConfigError(f"{labels_dir}: labels folder not found (labels={labels!r})")
        files = walk_files(frames_dir, FRAME_EXTENSIONS)
        if not files:
            extensions = ", ".join(sorted(FRAME_EXTENSIONS))
            raise ConfigError(f"{frames_dir}: frames folder has no image files ({extensions})")
        by_id: dict[str, SourceRecord] = {}
        self._refused: dict[str, str] = {}
        for file in files:
            stem, _ = listed_name(file.relative_to(frames_dir).with_suffix("").as_posix())
            ref, refused = listed_name(file.relative_to(self.root).as_posix())
            record = SourceRecord(id=f"external/{stem}", label=None, ref=ref)
            if refused is not None:
                self._refused[ref] = refused
            if record.id in by_id:
                raise ConfigError(
                    f"{frames_dir}: frames {by_id[record.id].ref!r} and {record.ref!r} "
                    "share a stem (one label image cannot pair with both)"
                )
            by_id[record.id] = record
        self._records = sorted(by_id.values(), key=lambda r: r.id)

    @staticmethod
    def _check_class_names(class_names: Any) -> list[str]:
        if not isinstance(class_names, (list, tuple)) or not class_names:
            raise ConfigError(f"class_names: expected a non-empty list of names, got {class_names!r}")
        if len(class_names) > _MAX_ID + 1:
            raise ConfigError(f"class_names: at most {_MAX_ID + 1} classes (masks are uint16)")
        seen: set[str] = set()
        for i, name in enumerate(class_names):
            if not isinstance(name, str):
                raise ConfigError(f"class_names[{i}]: expected a string, got {name!r}")
            check_class_name(name, f"class_names[{i}]")
            if name in seen:
                raise ConfigError(f"class_names[{i}]: duplicate class name {name!r}")
            seen.add(name)
        return list(class_names)

    @staticmethod
    def _parse_mapping(
        field: Literal["palette", "ids"], mapping: Any, class_ids: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Parse the config mapping into sorted codes (uint32) and their class ids (uint16)."""
        if not isinstance(mapping, dict) or not mapping:
            raise ConfigError(f"{field}: expected a non-empty mapping, got {mapping!r}")
        parse = parse_colour if field == "palette" else _parse_id
        what = "a colour ('#RRGGBB' or 'R,G,B')" if field == "palette" else "a label id (0..65535)"
        codes: dict[int, tuple[Any, int]] = {}
        for key, name in mapping.items():
            code = parse(key)
            if code is None:
                raise ConfigError(f"{field}[{key!r}]: not {what}")
            if not isinstance(name, str) or name not in class_ids:
                raise ConfigError(f"{field}[{key!r}]: class {name!r} is not in class_names")
            if code in codes and codes[code][1] != class_ids[name]:
                earlier = codes[code][0]
                raise ConfigError(
                    f"{field}[{key!r}]: same {'colour' if field == 'palette' else 'id'} as "
                    f"{field}[{earlier!r}] but mapped to a different class"
                )
            codes[code] = (key, class_ids[name])
        keys = np.array(sorted(codes), dtype=np.uint32)
        values = np.array([codes[int(k)][1] for k in keys], dtype=np.uint16)
        return keys, values

    def load(self, record: SourceRecord) -> Sample:
        self._check_refused(record)
        name = record.ref
        try:
            rel = PurePosixPath(name).relative_to(self._frames)
        except ValueError:
            raise InputRejected(name, f"not under the frames folder {self._frames}") from None
        label_rel = (self._labels / rel).with_suffix(".png")
        label_path = self._find_label(name, label_rel)
        image = load_image_file(
            name, root=self.root, color="rgb", max_pixels=self.max_pixels, name=name
        )
        codes = self._read_label(name, label_path, label_rel)
        if codes.shape != image.shape[:2]:
            lh, lw = codes.shape
            fh, fw = image.shape[:2]
            raise InputRejected(name, f"label {lw}x{lh} does not match frame {fw}x{fh}")
        mask, unknown = _map_codes(codes, self._keys, self._values, self._void_id)
        if unknown and self._void_id is None:
            code, pixels = unknown[0]
            if self.encoding == "palette":
                noun = "colour" if len(unknown) == 1 else "colours"
                example = _format_colour(code)
            else:
                noun = "id" if len(unknown) == 1 else "ids"
                example = str(code)
            raise InputRejected(
                name, f"{len(unknown)} unknown label {noun}, e.g. {example} ({pixels} px)"
            )
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
            mask = resize_ids(mask, self.image_size, self.image_size)
        elif self.frame_size is not None:  # the same centred window for both (uint16 ids: no uint8 round trip)
            width, height = self.frame_size
            image = crop_resize(image, height, width)
            mask = crop_resize_ids(mask, height, width)
        return Sample(id=record.id, image=image, mask=mask, label=None, source="simulator")

    def _find_label(self, name: str, label_rel: PurePosixPath) -> Path:
        """The label file of a frame: `label_rel`, with a '.png' suffix in any case."""
        exact = self.root / label_rel
        if exact.exists():  # not only regular files: `_read_label` says what else it is
            return exact
        folder = exact.parent
        stem = label_rel.stem
        candidates = (
            sorted(p for p in folder.iterdir() if p.stem == stem and p.is_file()) if folder.is_dir() else []
        )
        for path in candidates:
            if path.suffix.lower() == ".png":
                return path
        others = [p for p in candidates if p.suffix.lower() in _OTHER_LABEL_EXTENSIONS]
        if others:
            found = (label_rel.parent / others[0].name).as_posix()
            raise InputRejected(name, f"labels must be PNG (lossless), found {found}")
        raise InputRejected(name, f"no label image at {label_rel.as_posix()}")

    def _read_label(self, name: str, path: Path, label_rel: PurePosixPath) -> np.ndarray:
        """Decode the label image into codes (uint32 HxW): packed RGB or simulator ids."""
        where = (label_rel.parent / path.name).as_posix()
        real = path.resolve()
        if not real.is_relative_to(self.root.resolve()):
            raise InputRejected(
                name, f"label {where} escapes the dataset root {self.root} (resolves to {real})"
            )
        limit, bound = image_file_bound(self.max_pixels)
        try:
            data = read_regular_file(real, name=where, max_bytes=limit, bound=bound)
        except InputRejected as exc:
            raise InputRejected(name, f"label {where}: {exc.reason}") from None
        try:
            with _open_checked(data, where, self.max_pixels) as label:
                if label.format != "PNG":
                    raise InputRejected(name, f"labels must be PNG (lossless); {where} is {label.format}")
                return self._label_codes(name, label, where)
        except InputRejected as exc:
            if exc.path == name:
                raise
            raise InputRejected(name, f"label {where}: {exc.reason}") from None

    def _label_codes(self, name: str, label: Image.Image, where: str) -> np.ndarray:
        mode = label.mode
        if self.encoding == "palette":
            if mode in ("RGB", "RGBA", "P", "PA"):
                rgb = np.asarray(label.convert("RGBA" if mode in ("RGBA", "PA") else "RGB"))[..., :3]
                rgb = rgb.astype(np.uint32)
                return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            raise InputRejected(
                name, f"label {where}: palette labels must be RGB or palette PNGs, got mode {mode} "
                "(single-channel labels need 'ids')",
            )
        wide = _uint16_gray(label, where)
        if wide is not None:
            return wide.astype(np.uint32)
        if mode in ("L", "P", "1"):
            # 'P': the raw indices (np.asarray does not apply the palette).
            return np.asarray(label).astype(np.uint32)
        raise InputRejected(
            name, f"label {where}: id labels must be single-channel (L, I;16 or P), got mode {mode}"
        )
