"""The report's "licences" block: published rows per licence and per (licence, parent_licence).

Counted from the `licence` and `parent_licence` columns (see `augment.licences`) of every
shard the manifests list, per split, so the sums are the shard rows'. A shard written before
rows recorded licences counts its rows as `unknown` (and their parents too, where they have
one). Also the block's HTML section and the lines `synthaug inspect` prints.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from augment.licences import UNKNOWN
from augment.shards import LICENCE_COLUMNS, MANIFEST_NAME, read_manifest
from augment.store import Folder

SPLITS = {"shards": "train", "holdout": "holdout"}  # job sub-folder -> the split's name in the block
Pair = tuple[str, str | None]  # (licence, parent_licence); None: a row without a parent


def licence_counts(folder: Folder, files: list[str] | None = None) -> Counter[Pair]:
    """Rows per (licence, parent_licence) in the shard `files` of `folder` (default: every file
    its manifest lists)."""
    if files is None:
        files = [entry.file for entry in read_manifest(folder).shards]
    counts: Counter[Pair] = Counter()
    for name in files:
        names = pq.read_schema(folder.open(name)).names
        if all(column in names for column in LICENCE_COLUMNS):
            table = pq.read_table(folder.open(name), columns=list(LICENCE_COLUMNS))
            licences, parents = (table.column(c).to_pylist() for c in LICENCE_COLUMNS)
            counts.update(zip((value or UNKNOWN for value in licences), parents))
        else:  # an older shard: nothing recorded, so nothing known
            parent_ids = pq.read_table(folder.open(name), columns=["parent_id"]).column("parent_id").to_pylist()
            counts.update((UNKNOWN, None if parent is None else UNKNOWN) for parent in parent_ids)
    return counts


def split_block(counts: Counter[Pair]) -> dict[str, Any]:
    """{"rows", "by_licence": {licence: rows}, "by_pair": [{"licence", "parent_licence", "rows"}]},
    most rows first (ties by name)."""
    by_licence: Counter[str] = Counter()
    for (licence, _), rows in counts.items():
        by_licence[licence] += rows
    pairs = sorted(counts.items(), key=lambda item: (-item[1], item[0][0], item[0][1] or ""))
    return {"rows": sum(counts.values()),
            "by_licence": dict(sorted(by_licence.items(), key=lambda item: (-item[1], item[0]))),
            "by_pair": [{"licence": licence, "parent_licence": parent, "rows": rows}
                        for (licence, parent), rows in pairs]}


def licence_summary(job_folder: Path | str) -> dict[str, Any]:
    """The report's block: {split: `split_block`} for each split with a shard manifest."""
    root = Folder(job_folder)
    block = {}
    for sub, split in SPLITS.items():
        folder = root / sub
        if folder.exists(MANIFEST_NAME):
            block[split] = split_block(licence_counts(folder))
    return block


def licence_section(report: dict[str, Any]) -> str:
    """report.html's small table: rows per licence and parent licence, per split."""
    block = report.get("licences") or {}
    if not block:
        return ""
    parts = ["<h2>Licences</h2><p class='caption'>Published rows by the licence each records: a real row its "
             "source's, a generated row its generator's (its checkpoint's, or its training data's), a classical "
             "row its parent's; <i>parent licence</i> is that of the sample a row was made from (– none). "
             "<code>unknown</code>: nothing named the terms; set <code>licence:</code> in the config.</p>"]
    for split, counts in block.items():
        rows = "".join(f"<tr><td class='l'>{html.escape(p['licence'])}</td><td class='l'>"
                       f"{html.escape(p['parent_licence'] or '–')}</td><td>{p['rows']:,}</td></tr>"
                       for p in counts["by_pair"])
        totals = "".join(f"<tr><td class='l'><b>{html.escape(name)}</b></td><td class='l'>all</td>"
                         f"<td><b>{rows:,}</b></td></tr>" for name, rows in counts["by_licence"].items())
        parts.append(f"<h3>{html.escape(split)} ({counts['rows']:,} rows)</h3><table><tr><th class='l'>licence"
                     "</th><th class='l'>parent licence</th><th>rows</th></tr>" + rows + totals + "</table>")
    return "\n".join(parts)


def licence_lines(counts: Counter[Pair]) -> str:
    """`synthaug inspect`'s lines: rows per licence, then per (licence, parent licence)."""
    block = split_block(counts)
    width = max([len("licence"), *(len(name) for name in block["by_licence"])]) + 2
    lines = ["licence".ljust(width) + "rows".rjust(9)]
    lines += [name.ljust(width) + f"{rows:>9}" for name, rows in block["by_licence"].items()]
    made = [p for p in block["by_pair"] if p["parent_licence"] is not None]
    lines += [f"  {p['licence']} from {p['parent_licence']}: {p['rows']}" for p in made]
    return "\n".join(lines)
