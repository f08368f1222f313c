"""`synthaug inspect OUT`: what a job folder holds, and whether every shard is intact."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from augment.errors import ConfigError
from augment.report.inputs import UNLABELLED
from augment.report.licences import licence_counts, licence_lines
from augment.shards import read_manifest, verify_shards
from augment.store import Folder


def _cross_counts(folder: Folder, files: list[str]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    present = set(folder.names())
    for name in files:
        if name not in present:
            continue
        try:
            table = pq.read_table(folder.open(name), columns=["label_name", "source"])
        except (OSError, pa.ArrowException):
            continue  # unreadable: verify_shards names it among the problems
        for label, source in zip(table.column("label_name").to_pylist(), table.column("source").to_pylist()):
            counts[(label or UNLABELLED, source)] += 1
    return counts


def _table(title: str, counts: Counter[tuple[str, str]], class_order: list[str]) -> str:
    sources = sorted({s for _, s in counts})
    classes = [c for c in class_order if any(k[0] == c for k in counts)]
    classes += sorted({c for c, _ in counts} - set(classes))
    width = max([len("class"), *(len(c) for c in classes)]) + 2
    lines = [title, "class".ljust(width) + "".join(s.rjust(11) for s in sources) + "total".rjust(9)]
    for name in classes:
        row = [counts[(name, s)] for s in sources]
        lines.append(name.ljust(width) + "".join(str(n).rjust(11) for n in row) + str(sum(row)).rjust(9))
    totals = [sum(n for (c, s), n in counts.items() if s == src) for src in sources]
    lines.append("total".ljust(width) + "".join(str(n).rjust(11) for n in totals) + str(sum(totals)).rjust(9))
    return "\n".join(lines)


def inspect_job(out: Path | str) -> tuple[str, list[str]]:
    """A printable summary and the list of problems found (empty when all is well); `out` is a
    job folder or an s3:// prefix."""
    root = Folder(out)
    if (not root.remote and not Path(out).is_dir()) or not root.entries():
        raise ConfigError(f"{out}: no such job folder" if not root.remote else f"{out}: nothing under this prefix")
    sections, problems = [], []
    job: dict = {}
    if root.exists("job.json"):
        job = json.loads(root.read_bytes("job.json"))
        sections.append(f"job {job['config'].get('name')!r}  status={job.get('status')}  "
                        f"config_hash={job.get('config_hash', '')[:12]}")
        if job.get("status") != "complete":
            # A failed or unfinished job may hold a partial set: say so, whatever its shards look like.
            cause = f": {job['error']}" if job.get("error") else ""
            problems.append(f"the job is {job.get('status')!r}, not complete{cause}")
    found_any = False
    for split in ("shards", "holdout"):
        folder = root / split
        if split not in root.entries():
            continue
        found_any = True
        try:
            manifest = read_manifest(folder)
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"{split}: {error}")
            continue
        files = [entry.file for entry in manifest.shards]
        counts = _cross_counts(folder, files)
        sections.append(_table(f"\n{split}/ ({len(files)} shards)", counts, manifest.class_names))
        try:
            present = set(folder.names())
            sections.append(licence_lines(licence_counts(folder, [f for f in files if f in present])))
        except (OSError, ValueError, pa.ArrowException):
            pass  # unreadable shards: verify_shards names them among the problems
        problems += [f"{split}/{p}" for p in verify_shards(folder)]
    if not found_any and not job:
        raise ConfigError(f"{out}: holds no shards/ folder; is it a synthaug job folder?")
    if root.exists("rejected.jsonl"):
        n = sum(1 for line in root.read_bytes("rejected.jsonl").decode().splitlines() if line.strip())
        sections.append(f"\nrejected records: {n} (see {root.show('rejected.jsonl')})")
    sections.append("checksums: " + ("all ok" if not problems else f"{len(problems)} problems"))
    return "\n".join(sections), problems
