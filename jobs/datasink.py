"""A Ray Data `Datasink` that publishes each planned shard atomically.

Each incoming block holds whole shards (the shard stage emits one shard per batch), tagged
by a `_shard` column. `write()` writes a shard to a temporary name and renames it into
place. That is safe even though Ray retries tasks (at-least-once): a shard's bytes are a
pure function of the plan, so a retried write publishes the same file under the same
name, and a crash leaves at most a temporary file, which the next run removes. On an
object store each attempt puts its own object (`augment.shards.attempt_name`) and the
manifest names the one whose write returned. Publishing
per shard (instead of at the end) is what lets a killed job resume where it stopped; the
manifest, written by the driver once every shard exists, stays the only truth.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from augment.shards import ShardEntry, publish_shard, shard_schema
from augment.store import Folder

FILTER_COLUMN = "_filtered"  # per row, from the shard workers: why the quality filter removes it ("" keeps it)
FILTERED_KEY = b"synthaug_filtered"  # shard metadata: the rows the filter removed, and why


class ShardDatasink(Datasink):
    def __init__(
        self,
        out_dirs: dict[str, str],
        expected_rows: dict[str, int],
        class_names: list[str],
        progress: Any = None,
        fs: Any = None,
    ) -> None:
        self.out_dirs = out_dirs  # shard file name -> folder (path or s3:// URL) it is published in
        self.fs = fs  # a store's pyarrow filesystem (pickled to the writer), None for local folders
        self.expected_rows = expected_rows
        self.class_names = class_names
        self.progress = progress
        self.published: list[ShardEntry] = []

    def write(self, blocks: Iterable[Block], ctx: Any) -> list[ShardEntry]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables)
        schema = shard_schema(self.class_names)
        entries = []
        for name in sorted(set(table.column("_shard").to_pylist())):
            rows = table.filter(pc.equal(table.column("_shard"), name)).drop_columns(["_shard"])
            if rows.num_rows != self.expected_rows[name]:
                raise RuntimeError(
                    f"shard {name}: got {rows.num_rows} rows in one write, planned {self.expected_rows[name]}; "
                    "a block was split (lower output.rows_per_shard)"
                )
            rows, filtered = split_filtered(rows)
            rows = rows.cast(schema)
            if filtered:  # the quality filter's record travels with the shard it shaped
                metadata = {**rows.schema.metadata, FILTERED_KEY: json.dumps(filtered).encode()}
                rows = rows.replace_schema_metadata(metadata)
            entry = publish_shard(rows, Folder(self.out_dirs[name], self.fs), name)
            entries.append(entry)
            if self.progress is not None:
                self.progress.add.remote("written", entry.rows)
        return entries

    def on_write_complete(self, write_result: Any) -> None:
        returns = getattr(write_result, "write_returns", write_result)
        self.published = [entry for batch in returns for entry in batch]


def split_filtered(rows: pa.Table) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Rows the quality filter kept (without the `FILTER_COLUMN`), and the ones it removed, with why."""
    if FILTER_COLUMN not in rows.column_names:
        return rows, []
    verdicts = rows.column(FILTER_COLUMN).to_pylist()
    gone = [i for i, v in enumerate(verdicts) if v]
    filtered = []
    if gone:
        picked = rows.take(gone).select(["id", "label", "source", "scores"]).to_pylist()
        for row, i in zip(picked, gone):
            scores = row["scores"] or {}
            filtered.append({"id": row["id"], "label": row["label"], "source": row["source"],
                             "reasons": verdicts[i].split(","), "realism": scores.get("realism"),
                             "confidence": scores.get("confidence"),
                             "label_preservation": scores.get("label_preservation"),
                             "label_consistency": scores.get("label_consistency")})
    kept = rows.filter(pc.equal(rows.column(FILTER_COLUMN), "")).drop_columns([FILTER_COLUMN])
    return kept, filtered


def read_filtered(path: Path) -> list[dict[str, Any]]:
    """The rows the quality filter removed from a published shard (an empty list if none)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(FILTERED_KEY)
    return json.loads(raw) if raw else []


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed run left behind (only ever called under the job lock)."""
    removed = 0
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".") and ".tmp" in path.name:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
