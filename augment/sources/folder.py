"""An image folder with one sub-folder per class (the torchvision `ImageFolder` layout).

    root/cat/001.png
    root/cat/more/002.jpg     (found recursively)
    root/dog/001.png

With `layout="flat"` every image under `root` is a record without a label (a domain
transfer's target: real images whose classes are never used).

Class names are the sorted sub-folder names; entries starting with '.' are ignored
everywhere. Symlinked files are listed, but `load` refuses any that resolve outside
`root`; symlinked sub-folders inside a class folder are not followed.

Every listed file becomes a record, and `load` (through `load_image_file`) rejects what is
not a usable image: a FIFO or device named like an image, an oversized file. A file name
that is not valid UTF-8 is listed under a readable id with its bytes escaped
(``cat/g\\xff.png``) and rejected as "file name is not valid UTF-8" (see `listed_name`).
"""

from __future__ import annotations

import os
from pathlib import Path

from augment.errors import ConfigError
from augment.images import (
    DEFAULT_MAX_PIXELS,
    Color,
    check_color,
    load_image_file,
    resize_image,
)
from augment.sample import Sample
from augment.sources.base import ListedRecordsSource, SourceRecord, check_class_name, listed_name

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def walk_files(folder: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files under `folder` with one of `extensions`, sorted (recursive, hidden entries
    skipped, symlinked folders not followed)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith(".") and Path(filename).suffix.lower() in extensions:
                found.append(Path(dirpath) / filename)
    return found


class ImageFolderSource(ListedRecordsSource):
    """Images in `root/<class name>/...`; record id and ref are the POSIX path under `root`."""

    def __init__(
        self,
        root: Path,
        *,
        color: Color = "rgb",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        image_size: int | None = None,
        layout: str = "classes",
    ) -> None:
        self.root = Path(root)
        try:
            self.color = check_color(color)
        except ValueError as exc:
            raise ConfigError(f"{self.root}: {exc}") from None
        if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
            raise ConfigError(f"{self.root}: image_size must be a positive integer, got {image_size!r}")
        self.max_pixels = max_pixels
        self.image_size = image_size
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: image folder not found (or not a directory)")
        if layout not in ("classes", "flat"):
            raise ConfigError(f"{self.root}: layout must be 'classes' or 'flat', got {layout!r}")
        if layout == "flat":
            self._list_flat()
            return
        class_dirs = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
        if not class_dirs:
            raise ConfigError(f"{self.root}: no class folders (expected one sub-folder per class)")
        self._class_names = [check_class_name(p.name, str(p)) for p in class_dirs]
        records: dict[str, SourceRecord] = {}
        self._refused: dict[str, str] = {}
        for label, class_dir in enumerate(class_dirs):
            files = walk_files(class_dir)
            if not files:
                extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise ConfigError(f"{class_dir}: class folder has no image files ({extensions})")
            for file in files:
                rel, refused = listed_name(file.relative_to(self.root).as_posix())
                if rel in records:  # only an escaped name can meet a real one
                    raise ConfigError(
                        f"{self.root}: two files are listed as {rel!r} (one name is not valid UTF-8 "
                        "and reads like the other once its bytes are escaped); rename one"
                    )
                if refused is not None:
                    self._refused[rel] = refused
                records[rel] = SourceRecord(id=rel, label=label, ref=rel)
        self._records = sorted(records.values(), key=lambda r: r.id)

    def _list_flat(self) -> None:
        files = walk_files(self.root)
        if not files:
            raise ConfigError(f"{self.root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self._class_names, self._refused = [], {}
        records: dict[str, SourceRecord] = {}
        for file in files:
            rel, refused = listed_name(file.relative_to(self.root).as_posix())
            if rel in records:
                raise ConfigError(f"{self.root}: two files are listed as {rel!r} (one name is not valid UTF-8 "
                                  "and reads like the other once its bytes are escaped); rename one")
            if refused is not None:
                self._refused[rel] = refused
            records[rel] = SourceRecord(id=rel, label=None, ref=rel)
        self._records = sorted(records.values(), key=lambda r: r.id)

    def load(self, record: SourceRecord) -> Sample:
        self._check_refused(record)
        image = load_image_file(
            Path(record.ref),
            root=self.root,
            color=self.color,
            max_pixels=self.max_pixels,
            name=record.ref,
        )
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
        return Sample(id=record.id, image=image, label=record.label, source="real")
