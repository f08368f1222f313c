"""Turn (config, source records) into a deterministic list of shards to write.

Everything here is a pure function of the config and the records, so a resumed or
retried job plans exactly the same shards, ids and seeds, and published shards can be
recognised by name. No Ray, no pixels.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from augment.errors import ConfigError
from augment.seeding import derive_seed
from augment.sources.base import SourceRecord
from jobs.config import QuotaConfig

Split = Literal["train", "holdout"]


# Stream tags keep the seeds of different random decisions apart.
_SPLIT, _PARENTS, _CHILD = 1, 2, 3


@dataclass(frozen=True)
class ChildSpec:
    id: str
    seed: int


@dataclass(frozen=True)
class ParentSpec:
    record: SourceRecord
    children: tuple[ChildSpec, ...]


@dataclass(frozen=True)
class GeneratedSpec:
    """One sample a class-conditional generator makes from nothing but (label, seed)."""

    id: str
    label: int
    seed: int


@dataclass(frozen=True)
class ShardSpec:
    split: Split
    file: str
    parents: tuple[ParentSpec, ...]
    include_real: bool
    generated: tuple[GeneratedSpec, ...] = ()

    @property
    def rows(self) -> int:
        return sum(int(self.include_real) + len(p.children) for p in self.parents) + len(self.generated)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> ShardSpec:
        raw = json.loads(text)
        parents = tuple(
            ParentSpec(SourceRecord(**p["record"]), tuple(ChildSpec(**c) for c in p["children"]))
            for p in raw["parents"]
        )
        generated = tuple(GeneratedSpec(**g) for g in raw.get("generated", ()))
        return ShardSpec(raw["split"], raw["file"], parents, raw["include_real"], generated)


def split_records(
    records: list[SourceRecord], holdout: float, seed: int
) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """Seeded per-class split; each class keeps at least one training record.

    The split is drawn over all records (before bad ones are rejected), so fixing one
    broken file does not reshuffle the rest.
    """
    by_label: dict[int | None, list[SourceRecord]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    holdout_ids: set[str] = set()
    for key in sorted(by_label, key=lambda k: -1 if k is None else k):
        group = sorted(by_label[key], key=lambda r: r.id)
        rng = np.random.default_rng(derive_seed(seed, _SPLIT, 0 if key is None else key + 1))
        n_holdout = min(int(round(len(group) * holdout)), len(group) - 1)
        for index in rng.permutation(len(group))[: max(n_holdout, 0)]:
            holdout_ids.add(group[int(index)].id)
    train = [r for r in records if r.id not in holdout_ids]
    held = [r for r in records if r.id in holdout_ids]
    return train, held


def synthetic_counts(quota: QuotaConfig, real: dict[int, int], class_names: list[str]) -> dict[int, int]:
    """Synthetic samples to make per class so that real + synthetic meets the quota."""
    present = {c: n for c, n in real.items() if n > 0}
    if quota.per_class is not None:
        index = {name: i for i, name in enumerate(class_names)}
        counts: dict[int, int] = {}
        for name, target in quota.per_class.items():
            if name not in index:
                raise ConfigError(f"quota.per_class: unknown class {name!r} (classes: {', '.join(class_names)})")
            have = present.get(index[name], 0)
            if target > 0 and have == 0:
                raise ConfigError(f"quota.per_class[{name!r}]: {target} asked, but the class has no usable training samples")
            if target < have:
                raise ConfigError(
                    f"quota.per_class[{name!r}]: {target} is below the {have} real training samples of the class "
                    "(the quota counts real + synthetic)"
                )
            counts[index[name]] = target - have
        return counts
    if quota.multiplier is not None:
        return {c: int(round(n * quota.multiplier)) - n for c, n in present.items()}
    if not present:
        raise ConfigError("quota.balance: the source has no labelled training samples")
    largest = max(present.values())
    return {c: largest - n for c, n in present.items()}


def assign_children(
    train: list[SourceRecord], counts: dict[int, int], seed: int, source_name: str
) -> dict[str, tuple[ChildSpec, ...]]:
    """Spread each class's synthetic count over its parents (seeded permutation, round robin).

    A child's seed derives from (job seed, its index in the plan); its id from the parent.
    """
    by_label: dict[int, list[SourceRecord]] = {}
    for record in sorted(train, key=lambda r: r.id):
        if record.label is not None:
            by_label.setdefault(record.label, []).append(record)
    children: dict[str, list[ChildSpec]] = {}
    sample_index = 0
    for label in sorted(counts):
        parents = by_label.get(label, [])
        if counts[label] and not parents:
            raise ConfigError(f"quota: class {label} needs {counts[label]} synthetic samples but has no parents")
        order = np.random.default_rng(derive_seed(seed, _PARENTS, label)).permutation(len(parents))
        for j in range(counts[label]):
            parent = parents[int(order[j % len(parents)])]
            siblings = children.setdefault(parent.id, [])
            child_id = f"{parent.id}~{source_name}{len(siblings)}"
            siblings.append(ChildSpec(child_id, derive_seed(seed, _CHILD, sample_index)))
            sample_index += 1
    return {pid: tuple(kids) for pid, kids in children.items()}


def pack_shards(
    split: Split,
    parents: list[SourceRecord],
    children: dict[str, tuple[ChildSpec, ...]],
    *,
    rows_per_shard: int,
    include_real: bool,
) -> list[ShardSpec]:
    """Group parents (in id order) with their children into shards of ~rows_per_shard rows."""
    shards: list[ShardSpec] = []
    current: list[ParentSpec] = []
    rows = 0

    def close() -> None:
        nonlocal current, rows
        if rows:
            shards.append(ShardSpec(split, f"{split}-{len(shards):05d}.parquet", tuple(current), include_real))
        current, rows = [], 0

    for record in sorted(parents, key=lambda r: r.id):
        kids = children.get(record.id, ())
        n = int(include_real) + len(kids)
        if n == 0:
            continue
        current.append(ParentSpec(record, kids))
        rows += n
        if rows >= rows_per_shard:
            close()
    close()
    return shards


def plan_generated(
    counts: dict[int, int], seed: int, generator_name: str, class_names: list[str], *, rows_per_shard: int
) -> list[ShardSpec]:
    """Shards of class-conditional samples: no parents; ids and seeds from (class, index)."""
    specs: list[GeneratedSpec] = []
    sample_index = 0
    for label in sorted(counts):
        for j in range(counts[label]):
            specs.append(GeneratedSpec(f"{generator_name}/{class_names[label]}/{j:06d}", label,
                                       derive_seed(seed, _CHILD, sample_index)))
            sample_index += 1
    return [
        ShardSpec("train", f"{generator_name}-{k:05d}.parquet", (), False,
                  tuple(specs[start:start + rows_per_shard]))
        for k, start in enumerate(range(0, len(specs), rows_per_shard))
    ]


@dataclass(frozen=True)
class Plan:
    class_names: list[str]
    train: list[ShardSpec]
    holdout: list[ShardSpec]
    real_counts: dict[int, int]
    synthetic: dict[int, int]

    def expected_counts(self) -> dict[str, int]:
        """Rows per class name of the training shards (real + synthetic)."""
        totals: Counter[str] = Counter()
        for shard in self.train:
            for parent in shard.parents:
                name = "unlabelled" if parent.record.label is None else self.class_names[parent.record.label]
                totals[name] += int(shard.include_real) + len(parent.children)
            for generated in shard.generated:
                totals[self.class_names[generated.label]] += 1
        return dict(totals)


def make_plan(
    *,
    class_names: list[str],
    train: list[SourceRecord],
    holdout: list[SourceRecord],
    quota: QuotaConfig | None,
    seed: int,
    rows_per_shard: int,
    include_real: bool,
    source_name: str = "classical",
    class_conditional: bool = False,
) -> Plan:
    """Plan the shards for usable records (already split and scanned); no quota: copy only.

    Classical samples are children of a real parent; a class-conditional generator's
    samples (`class_conditional`) have no parent and go to shards of their own.
    """
    real = Counter(r.label for r in train if r.label is not None)
    counts = {} if quota is None else synthetic_counts(quota, dict(real), class_names)
    if class_conditional:
        children: dict[str, tuple[ChildSpec, ...]] = {}
        generated = plan_generated(counts, seed, source_name, class_names, rows_per_shard=rows_per_shard)
    else:
        children = assign_children(train, counts, seed, source_name)
        generated = []
    return Plan(
        class_names=class_names,
        train=pack_shards("train", train, children, rows_per_shard=rows_per_shard, include_real=include_real)
        + generated,
        holdout=pack_shards("holdout", holdout, {}, rows_per_shard=rows_per_shard, include_real=True),
        real_counts=dict(real),
        synthetic=counts,
    )
