"""Where shards live: a local folder, or a prefix of an S3-compatible object store (pyarrow.fs).

`Folder` is one shard folder, local or remote, with the few operations the format needs:
list names, read, write one file atomically (a local temporary + fsync + rename; a single
object put on a store, which readers see whole or not at all), open for Parquet reads,
delete. On a store, endpoint, region and credentials come from the usual AWS variables
(`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, else the AWS SDK's
own chain: profile, instance role), or a config's `execution.storage` for `run`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from augment.errors import ConfigError

SCHEME = "s3://"


def is_remote(location: Any) -> bool:
    return isinstance(location, str) and location.startswith(SCHEME)


def parse_location(text: str) -> str | Path:
    """A command line's --out / DIR: an `s3://bucket/prefix` URL stays text, anything else is a path."""
    if "://" in text and not text.startswith(SCHEME):
        raise ConfigError(f"{text}: only local folders and s3://bucket/prefix URLs are supported")
    if is_remote(text):
        bucket, _, prefix = text[len(SCHEME):].partition("/")
        if not bucket or not prefix.strip("/"):
            raise ConfigError(f"{text}: give a bucket and a prefix, s3://bucket/prefix (a job never owns a "
                              "whole bucket)")
        return f"{SCHEME}{bucket}/{prefix.strip('/')}"
    return Path(text)


def s3_settings(endpoint_url: str | None = None, region: str | None = None) -> dict[str, str | None]:
    """Endpoint and region: the arguments (a config), else the AWS variables."""
    return {"endpoint_url": endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            "region": region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}


def s3_filesystem(endpoint_url: str | None = None, region: str | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem. Keys found in the environment are passed explicitly so the
    pickled filesystem carries them to Ray workers on nodes that lack them."""
    settings = s3_settings(endpoint_url, region)
    kwargs: dict[str, Any] = {"region": settings["region"]}
    if settings["endpoint_url"]:
        parts = urlsplit(settings["endpoint_url"])
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"S3 endpoint {settings['endpoint_url']!r}: expected http(s)://host[:port]")
        kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                      session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


class Folder:
    """A shard folder: `location` is a local path or `s3://bucket/prefix/...`."""

    def __init__(self, location: str | Path, fs: pafs.FileSystem | None = None) -> None:
        self.remote = is_remote(location)
        if self.remote:
            self.url = str(location).rstrip("/")
            self.fs = fs or s3_filesystem()
            self.path = self.url[len(SCHEME):]
        else:
            self.url = str(Path(location))
            self.fs = fs or pafs.LocalFileSystem()
            self.path = str(Path(location).resolve())

    def __repr__(self) -> str:
        return f"Folder({self.url!r})"

    def __truediv__(self, name: str) -> Folder:
        return Folder(f"{self.url}/{name}" if self.remote else Path(self.url) / name, self.fs)

    def join(self, name: str) -> str:
        return f"{self.path}/{name}"

    def show(self, name: str) -> str:
        """How a message names one of its files."""
        return f"{self.url}/{name}"

    def names(self) -> list[str]:
        """The plain files directly in the folder, sorted ([] when it does not exist)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as error:
            raise OSError(f"{self.url}: cannot list: {error}") from None
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.File)

    def entries(self) -> list[str]:
        """Everything directly in the folder (files and sub-folders), sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(info.base_name for info in infos if info.type != pafs.FileType.NotFound)

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.join(name)).type == pafs.FileType.File

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        with self.fs.open_input_stream(self.join(name)) as stream:
            data = stream.read(limit + 1) if limit is not None else stream.read()
        if limit is not None and len(data) > limit:
            raise ValueError(f"{self.show(name)}: larger than {limit} bytes")
        return data

    def sha256(self, name: str) -> str:
        """sha256 of a file, read in 1 MiB pieces."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.join(name)) as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def open(self, name: str) -> Any:
        """For pyarrow.parquet readers: a path locally, a random-access file on a store."""
        return self.join(name) if not self.remote else self.fs.open_input_file(self.join(name))

    def write_bytes(self, name: str, data: bytes, point: str | None = None) -> None:
        """Publish `data` as `name` atomically (`point`: the failpoint before it is visible)."""
        if not self.remote:
            from augment.shards import _atomic_write

            Path(self.path).mkdir(parents=True, exist_ok=True)
            _atomic_write(Path(self.path) / name, lambda f: f.write(data), point=point)
            return
        if point:
            from augment.failpoints import failpoint

            failpoint(point)
        # One object put: a store shows an object whole once the put completes, never in part.
        with self.fs.open_output_stream(self.join(name)) as stream:
            stream.write(data)

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(self.join(name))
        except FileNotFoundError:
            pass

    def delete_tree(self, name: str) -> None:
        info = self.fs.get_file_info(self.join(name))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.join(name))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.join(name))

    def download(self, name: str, to: Path) -> None:
        """Copy a file or folder of this folder to a local path."""
        pafs.copy_files(self.join(name), str(to), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())

    def upload(self, source: Path, name: str) -> None:
        """Copy a local file or folder into this folder as `name`."""
        if source.is_dir() and not any(source.iterdir()):
            return
        pafs.copy_files(str(source), self.join(name), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)


def buffer_bytes(write: Any) -> bytes:
    """The bytes `write(sink)` writes into an in-memory pyarrow sink."""
    sink = pa.BufferOutputStream()
    write(sink)
    return sink.getvalue().to_pybytes()
