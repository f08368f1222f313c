"""Map a validated source config onto the `augment.sources` class that reads it."""

from __future__ import annotations

from augment.sources.base import Source
from jobs.config import (
    CocoSourceConfig,
    DigitsSourceConfig,
    FolderSourceConfig,
    ParquetSourceConfig,
    SourceConfig,
)


def build_source(config: SourceConfig) -> Source:
    """Construct the source; raises `ConfigError` for a bad layout."""
    match config:
        case DigitsSourceConfig():
            from augment.sources.digits import DigitsSource

            return DigitsSource(image_size=config.image_size, color=config.color)
        case FolderSourceConfig():
            from augment.sources.folder import ImageFolderSource

            return ImageFolderSource(
                config.root, color=config.color, max_pixels=config.max_pixels, image_size=config.image_size
            )
        case CocoSourceConfig():
            from augment.sources.coco import CocoSource

            return CocoSource(
                config.annotations,
                config.images_root,
                color=config.color,
                max_pixels=config.max_pixels,
                with_masks=config.masks,
            )
        case ParquetSourceConfig():
            from augment.sources.parquet import ParquetSource

            return ParquetSource(config.path)
    raise TypeError(f"unknown source config {type(config).__name__}")
