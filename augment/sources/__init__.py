"""Data sources: list records cheaply, load them into `Sample`s (see `base`)."""

from augment.sources.base import Source, SourceRecord, check_class_name
from augment.sources.coco import CocoSource
from augment.sources.digits import DigitsSource
from augment.sources.folder import ImageFolderSource
from augment.sources.parquet import ParquetSource

__all__ = [
    "CocoSource",
    "DigitsSource",
    "ImageFolderSource",
    "ParquetSource",
    "Source",
    "SourceRecord",
    "check_class_name",
]
