"""Turn (config, source records) into a deterministic list of shards to write.

Everything here is a pure function of the config and the records, so a resumed or
retried job plans exactly the same shards, ids and seeds, and published shards can be
recognised by name. No Ray, no pixels.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, overload

import numpy as np

from augment.errors import ConfigError
from augment.seeding import derive_seed
from augment.sources.base import SourceRecord
from jobs.config import QuotaConfig

Split = Literal["train", "holdout"]


# Stream tags keep the seeds of different random decisions apart.
_SPLIT, _PARENTS, _CHILD = 1, 2, 3


# A job's plan stays small whatever the quota: children and generated samples are
# described by index ranges and expanded where a shard is made. These bound what one job
# may ask for (the message names the limit) before anything is planned or started.
MAX_PLANNED_ROWS = 10_000_000
MAX_SHARD_ROWS = 100_000
MAX_SHARDS = 100_000  # files per split folder; also the Ray Data items of the write stage


@dataclass(frozen=True)
class ChildSpec:
    id: str
    seed: int


@dataclass(frozen=True)
class ChildRange(Sequence[ChildSpec]):
    """A parent's synthetic children, described rather than listed.

    Child m has id `f"{prefix}{m}"` and the seed of plan index `first + m * stride`, so a
    plan of millions of rows costs a few numbers per parent, and each seed is computed
    where the child is made.
    """

    prefix: str
    job_seed: int
    length: int
    first: int
    stride: int

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> ChildSpec: ...

    @overload
    def __getitem__(self, index: slice) -> list[ChildSpec]: ...

    def __getitem__(self, index: int | slice) -> ChildSpec | list[ChildSpec]:
        if isinstance(index, slice):
            return [self[m] for m in range(*index.indices(self.length))]
        if not -self.length <= index < self.length:
            raise IndexError(index)
        m = index % self.length
        return ChildSpec(f"{self.prefix}{m}", derive_seed(self.job_seed, _CHILD, self.first + m * self.stride))


@dataclass(frozen=True)
class ParentSpec:
    record: SourceRecord
    children: ChildRange


@dataclass(frozen=True)
class GeneratedSpec:
    """One sample a class-conditional generator makes from nothing but (label, seed)."""

    id: str
    label: int
    seed: int


@dataclass(frozen=True)
class GeneratedRun:
    """`count` consecutive samples of one class: the j-th of the class, plan index `first + m`."""

    generator: str
    class_name: str
    label: int
    job_seed: int
    first_j: int
    first: int
    count: int

    def spec(self, m: int) -> GeneratedSpec:
        j = self.first_j + m
        return GeneratedSpec(f"{self.generator}/{self.class_name}/{j:06d}", self.label,
                             derive_seed(self.job_seed, _CHILD, self.first + m))


@dataclass(frozen=True)
class Generated(Sequence[GeneratedSpec]):
    """A shard's class-conditional samples as runs; indexing and slicing expand them."""

    runs: tuple[GeneratedRun, ...] = ()

    def __len__(self) -> int:
        return sum(run.count for run in self.runs)

    @overload
    def __getitem__(self, index: int) -> GeneratedSpec: ...

    @overload
    def __getitem__(self, index: slice) -> list[GeneratedSpec]: ...

    def __getitem__(self, index: int | slice) -> GeneratedSpec | list[GeneratedSpec]:
        if isinstance(index, slice):
            return [self[m] for m in range(*index.indices(len(self)))]
        total = len(self)
        if not -total <= index < total:
            raise IndexError(index)
        m = index % total
        for run in self.runs:
            if m < run.count:
                return run.spec(m)
            m -= run.count
        raise IndexError(index)


@dataclass(frozen=True)
class ShardSpec:
    split: Split
    file: str
    parents: tuple[ParentSpec, ...]
    include_real: bool
    generated: Generated = Generated()

    @property
    def rows(self) -> int:
        return sum(int(self.include_real) + len(p.children) for p in self.parents) + len(self.generated)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> ShardSpec:
        raw = json.loads(text)
        parents = tuple(ParentSpec(SourceRecord(**p["record"]), ChildRange(**p["children"])) for p in raw["parents"])
        generated = Generated(tuple(GeneratedRun(**run) for run in raw["generated"]["runs"]))
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


def _class_index(quota: QuotaConfig, class_names: list[str]) -> dict[str, int]:
    index = {name: i for i, name in enumerate(class_names)}
    for name in quota.per_class or {}:
        if name not in index:
            raise ConfigError(f"quota.per_class: unknown class {name!r} (classes: {', '.join(class_names)})")
    return index


def synthetic_counts(quota: QuotaConfig, real: dict[int, int], class_names: list[str]) -> dict[int, int]:
    """Synthetic samples to make per class so that real + synthetic meets the quota."""
    present = {c: n for c, n in real.items() if n > 0}
    if quota.per_class is not None:
        index = _class_index(quota, class_names)
        counts: dict[int, int] = {}
        for name, target in quota.per_class.items():
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
) -> dict[str, ChildRange]:
    """Spread each class's synthetic count over its parents (seeded permutation, round robin).

    The class's j-th sample goes to the parent at position j mod P of the permutation, with
    plan index (samples of earlier classes) + j; so a parent's children form an arithmetic
    progression of plan indices, stored as a `ChildRange`. Ids derive from the parent.
    """
    by_label: dict[int, list[SourceRecord]] = {}
    for record in sorted(train, key=lambda r: r.id):
        if record.label is not None:
            by_label.setdefault(record.label, []).append(record)
    children: dict[str, ChildRange] = {}
    offset = 0
    for label in sorted(counts):
        parents = by_label.get(label, [])
        wanted = counts[label]
        if wanted and not parents:
            raise ConfigError(f"quota: class {label} needs {wanted} synthetic samples but has no parents")
        order = np.random.default_rng(derive_seed(seed, _PARENTS, label)).permutation(len(parents))
        for position in range(min(len(parents), wanted)):
            parent = parents[int(order[position])]
            count = -(-(wanted - position) // len(parents))  # j = position, position + P, ... < wanted
            children[parent.id] = ChildRange(f"{parent.id}~{source_name}", seed, count, offset + position,
                                             len(parents))
        offset += wanted
    return children


def pack_shards(
    split: Split,
    parents: list[SourceRecord],
    children: dict[str, ChildRange],
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
        kids = children.get(record.id) or ChildRange(f"{record.id}~", 0, 0, 0, 1)
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
    """Shards of class-conditional samples: no parents; ids and seeds from (class, index).

    Samples are numbered class by class (plan index) and cut into shards of
    `rows_per_shard`; a shard holds one run per class it touches.
    """
    shards: list[ShardSpec] = []
    runs: list[GeneratedRun] = []
    room = rows_per_shard

    def close() -> None:
        nonlocal runs, room
        if runs:
            shards.append(ShardSpec("train", f"{generator_name}-{len(shards):05d}.parquet", (), False,
                                    Generated(tuple(runs))))
        runs, room = [], rows_per_shard

    index = 0
    for label in sorted(counts):
        j = 0
        while j < counts[label]:
            take = min(room, counts[label] - j)
            runs.append(GeneratedRun(generator_name, class_names[label], label, seed, j, index, take))
            j, index, room = j + take, index + take, room - take
            if room == 0:
                close()
    close()
    return shards


def check_plan_size(counts: dict[int, int], real: dict[int, int], class_names: list[str], *, rows: int,
                    rows_per_shard: int, class_conditional: bool) -> None:
    """Refuse, before anything is planned, a quota no job should hold: more than
    `MAX_PLANNED_ROWS` rows in all (`rows` real ones plus the synthetic), more than
    `MAX_SHARDS` shards, or (classical: a parent shares its shard with its children) more
    children per image than a shard holds."""
    total = rows + sum(counts.values())
    if total > MAX_PLANNED_ROWS:
        raise ConfigError(f"quota: the job would write {total:,} rows; one job writes at most {MAX_PLANNED_ROWS:,} "
                          "(split it into several jobs with different seeds)")
    shards = -(-total // rows_per_shard)
    if shards > MAX_SHARDS:
        raise ConfigError(f"output.rows_per_shard: {rows_per_shard} rows a shard makes {shards:,} shards of "
                          f"{total:,} rows; a job writes at most {MAX_SHARDS:,} (raise rows_per_shard to at least "
                          f"{-(-total // MAX_SHARDS):,})")
    if class_conditional:
        return
    for label, wanted in sorted(counts.items()):
        parents = real.get(label, 0)
        per_parent = -(-wanted // parents) if parents else 0
        if per_parent + 1 > MAX_SHARD_ROWS:
            raise ConfigError(
                f"quota: class {class_names[label]!r} needs {wanted:,} synthetic samples from {parents:,} training "
                f"images, {per_parent:,} from each; an image and its children share a shard of at most "
                f"{MAX_SHARD_ROWS:,} rows (lower the quota or add real images)")


def precheck_quota(quota: QuotaConfig | None, class_names: list[str], train: list[SourceRecord],
                   holdout_rows: int, *, include_real: bool, rows_per_shard: int, class_conditional: bool) -> None:
    """The quota checks that need no pixels, run on the listed records before Ray starts:
    unknown class names and sizes no job may hold. Rejected records only lower the real
    counts, which can only raise the synthetic count per image, so nothing refused here
    would pass after the scan."""
    real = dict(Counter(r.label for r in train if r.label is not None))
    counts: dict[int, int] = {}  # no quota: a copy of the source
    if quota is not None and quota.per_class is not None:
        index = _class_index(quota, class_names)
        counts = {index[name]: max(target - real.get(index[name], 0), 0) for name, target in quota.per_class.items()}
    elif quota is not None:
        counts = synthetic_counts(quota, real, class_names)
    check_plan_size(counts, real, class_names, rows=len(train) * int(include_real) + holdout_rows,
                    rows_per_shard=rows_per_shard, class_conditional=class_conditional)


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
    check_plan_size(counts, dict(real), class_names, rows=len(train) * int(include_real) + len(holdout),
                    rows_per_shard=rows_per_shard, class_conditional=class_conditional)
    if class_conditional:
        children: dict[str, ChildRange] = {}
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
