"""Map a validated source config onto the `augment.sources` class that reads it."""

from __future__ import annotations

from augment.sources.base import Source
from jobs.config import (
    CocoSourceConfig,
    DigitsSimulatorConfig,
    DigitsSourceConfig,
    ExternalSourceConfig,
    FiftyOneSourceConfig,
    FolderSourceConfig,
    ParquetSourceConfig,
    SourceConfig,
    StreetSimulatorConfig,
)


def build_source(config: SourceConfig, job_seed: int = 0) -> Source:
    """Construct the source; raises `ConfigError` for a bad layout."""
    match config:
        case DigitsSourceConfig():
            from augment.sources.digits import DigitsSource

            return DigitsSource(image_size=config.image_size, color=config.color)
        case FolderSourceConfig():
            from augment.sources.folder import ImageFolderSource

            return ImageFolderSource(
                config.root, color=config.color, max_pixels=config.max_pixels, image_size=config.image_size,
                layout=config.layout,
            )
        case CocoSourceConfig():
            from augment.sources.coco import CocoSource

            return CocoSource(
                config.annotations,
                config.images_root,
                color=config.color,
                max_pixels=config.max_pixels,
                with_masks=config.masks,
                size=None if config.width is None or config.height is None else (config.width, config.height),
            )
        case FiftyOneSourceConfig():
            from augment.sources.fiftyone_dataset import FiftyOneSource

            return FiftyOneSource(config.dataset, label_field=config.label_field, mask_field=config.mask_field,
                                  detections_field=config.detections_field, color=config.color,
                                  max_pixels=config.max_pixels)
        case ParquetSourceConfig():
            from augment.sources.parquet import ParquetSource

            return ParquetSource(config.path)
        case StreetSimulatorConfig() | DigitsSimulatorConfig():
            from simulators.source import SimulatorSource

            seed = job_seed if config.seed is None else config.seed
            if isinstance(config, StreetSimulatorConfig) and config.image_size is None:
                width, height = config.frame_size
                return SimulatorSource(config.family, frames=config.frames, width=width, height=height, seed=seed,
                                       controls=config.controls)
            return SimulatorSource(config.family, frames=config.frames, size=config.image_size, seed=seed,
                                   controls=config.controls)
        case ExternalSourceConfig():
            from simulators.external import ExternalFramesSource

            return ExternalFramesSource(
                config.root, class_names=config.class_names, frames=config.frames, labels=config.labels,
                palette=config.palette, ids=config.ids, unknown=config.unknown, void_class=config.void_class,
                image_size=config.image_size, width=config.width, height=config.height,
                max_pixels=config.max_pixels,
            )
    raise TypeError(f"unknown source config {type(config).__name__}")
