"""A job whose `--out` is an object-store prefix (`s3://bucket/prefix`).

Shards and manifests go straight to the store: workers put each shard under a fresh
attempt name and the driver writes the manifests last, so an aborted job leaves nothing a
reader sees. Everything else a job keeps (job.json, rejected.jsonl, fitted models, the
report's reference, the report) is made in a local staging folder and copied to the same
prefix at the end of each stage, so the prefix is a whole job folder: `inspect`, `report`,
the `parquet` source and `ShardDataset` read it there, and the same command resumes it
from any machine (mid-fit states stay in the staging folder: a fit cut short elsewhere
starts again).

The folder lock is an object written with a conditional put (`If-None-Match: *`, through
boto3): a second job on the prefix is refused. A store that does not support conditional
puts gets a warning and a check-then-put, whose race is the user's to avoid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from augment.errors import ConfigError
from augment.shards import MANIFEST_NAME, published_files
from augment.store import SCHEME, Folder, s3_filesystem, s3_settings
from jobs.lock import LOCK_NAME, _alive, _process_start

log = logging.getLogger("synthaug")

STAGING_ENV = "SYNTHAUG_STAGING"
# What a job keeps beside its shards, copied to the store when a stage ends.
KEPT_FILES = ("job.json", "rejected.jsonl", "contact_sheet.png")
KEPT_FOLDERS = ("report", "tune")


def staging_folder(url: str, endpoint_url: str | None = None) -> Path:
    """The local working copy of the job at `url`: $SYNTHAUG_STAGING, else the user's cache."""
    root = Path(os.environ.get(STAGING_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "synthaug" / "staging")
    endpoint = s3_settings(endpoint_url)["endpoint_url"]
    digest = hashlib.sha256(f"{endpoint} {url}".encode()).hexdigest()[:12]
    return root / f"{url[len(SCHEME):].replace('/', '_')[:80]}-{digest}"


class RemoteJob:
    """The store side of a job folder; `staging` is its local working copy."""

    def __init__(self, url: str, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.url = url
        self.settings = s3_settings(endpoint_url, region)
        self.fs = s3_filesystem(**self.settings)
        self.root = Folder(url, self.fs)
        self.staging = staging_folder(url, endpoint_url)
        self.lock_held = False

    def shard_folder(self, split: str) -> Folder:
        return self.root / ("shards" if split == "train" else "holdout")

    def check_reachable(self) -> None:
        try:
            self.root.entries()
        except OSError as error:
            raise ConfigError(f"--out {self.url}: cannot list the prefix ({error}); check the bucket, the endpoint "
                              "(AWS_ENDPOINT_URL) and the credentials") from None

    # -- the folder lock ------------------------------------------------------------------

    def _client(self) -> Any:
        try:
            import boto3
        except ImportError:
            return None
        return boto3.client("s3", endpoint_url=self.settings["endpoint_url"], region_name=self.settings["region"])

    def _lock_key(self) -> tuple[str, str]:
        bucket, _, prefix = self.url[len(SCHEME):].partition("/")
        return bucket, f"{prefix}/{LOCK_NAME}"

    def acquire(self) -> None:
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
        for _ in range(3):
            if self._put_if_absent(me):
                self.lock_held = True
                return
            holder = self._holder()
            stale = holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)),
                                                                               holder.get("start"))
            if not stale:
                raise ConfigError(f"{self.url}: another synthaug job is running on this prefix (pid "
                                  f"{holder.get('pid')} on {holder.get('host')} since {holder.get('since')}); "
                                  f"if it is not, delete {self.root.show(LOCK_NAME)}")
            self.root.delete(LOCK_NAME)
        raise ConfigError(f"{self.root.show(LOCK_NAME)}: could not take the job lock")

    def _put_if_absent(self, body: bytes) -> bool:
        client = self._client()
        if client is not None:
            from botocore.exceptions import ClientError

            bucket, key = self._lock_key()
            try:
                client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
                return True
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                if code not in ("NotImplemented", "501"):
                    raise
        log.warning("%s: the store cannot put conditionally (or boto3 is missing); the job lock is a "
                    "check-then-put: never run two jobs on one prefix", self.url)
        if self.root.exists(LOCK_NAME):
            return False
        self.root.write_bytes(LOCK_NAME, body)
        return True

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.root.read_bytes(LOCK_NAME, limit=4096))
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.lock_held:
            self.root.delete(LOCK_NAME)
            self.lock_held = False

    def __enter__(self) -> RemoteJob:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- staging <-> store ---------------------------------------------------------------

    def entries(self) -> set[str]:
        return set(self.root.entries()) - {LOCK_NAME}

    def published_any(self) -> bool:
        return any(published_files(self.shard_folder(split)) for split in ("train", "holdout"))

    def wipe(self, owned: set[str]) -> None:
        """Delete the job's own entries from the prefix (--overwrite, or a job that published nothing)."""
        for name in self.entries() & owned:
            self.root.delete_tree(name)

    def pull(self) -> None:
        """Make the staging folder the store's job: its job.json and rejected records, its fitted
        models (a resumed job samples from the same weights), nothing of another job."""
        names = set(self.root.names())
        theirs = json.loads(self.root.read_bytes("job.json")) if "job.json" in names else {}
        mine = self.staging / "job.json"
        same_job = theirs and mine.is_file() and json.loads(mine.read_text()).get("config_hash") == \
            theirs.get("config_hash")
        if self.staging.exists() and not same_job:  # mid-fit states are kept only for the same job
            shutil.rmtree(self.staging)
        for name in ("shards", "holdout", "report"):
            shutil.rmtree(self.staging / name, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        for name in ("job.json", "rejected.jsonl"):
            if name in names:
                self.root.download(name, self.staging / name)
        if "tune" in names:  # the tuner's choice: a resume makes its rows with it, not a new tuning
            shutil.rmtree(self.staging / "tune", ignore_errors=True)
            self.root.download("tune", self.staging / "tune")
        checkpoints = self.root / "checkpoints"
        for kind in checkpoints.entries():
            if "model" in (checkpoints / kind).entries():
                (checkpoints / kind).download("model", self.staging / "checkpoints" / kind / "model")

    def push(self) -> None:
        """Copy what the job keeps (not the shards: they are on the store already) to the prefix."""
        for name in KEPT_FILES:
            if (self.staging / name).is_file():
                self.root.upload(self.staging / name, name)
        for name in KEPT_FOLDERS:
            if (self.staging / name).is_dir():
                self.root.delete_tree(name)
                self.root.upload(self.staging / name, name)
        checkpoints = self.staging / "checkpoints"
        for model in sorted(checkpoints.glob("*/model")) if checkpoints.is_dir() else []:
            kind = model.parent.name
            if "model" not in (self.root / "checkpoints" / kind).entries():
                self.root.upload(model, f"checkpoints/{kind}/model")

    def mirror_shards(self) -> None:
        """The listed shards and manifests, copied into the staging folder for the report to read."""
        for split, name in (("train", "shards"), ("holdout", "holdout")):
            folder, local = self.shard_folder(split), self.staging / name
            if local.exists():
                shutil.rmtree(local)
            local.mkdir(parents=True)
            if not folder.exists(MANIFEST_NAME):
                continue
            from augment.shards import read_manifest

            for entry in read_manifest(folder).shards:
                folder.download(entry.file, local / entry.file)
            folder.download(MANIFEST_NAME, local / MANIFEST_NAME)
