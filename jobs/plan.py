"""Turn (config, source records) into a deterministic list of shards to write.

Everything here is a pure function of the config and the records, so a resumed or
retried job plans exactly the same shards, ids and seeds, and published shards can be
recognised by name. No Ray, no pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, overload

import numpy as np

from augment.errors import ConfigError
from augment.seeding import derive_seed
from augment.sources.base import Source, SourceRecord
from jobs.config import QuotaConfig, SourceConfig, SplitConfig
from jobs.quota import CLASSICAL, PlanAugment, PlanStep, Quota, check_plan_size, mapped_rows, quota_for

Split = Literal["train", "holdout"]


# Stream tags keep the seeds of different random decisions apart. Class-conditional rows and
# classical children share the _CHILD stream on one index line (class steps first, then
# classical), so a job of one kind draws exactly the seeds it drew before steps existed.
_SPLIT, _PARENTS, _CHILD, _MAPPED, _SUBSET, _VALIDATION = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class ChildSpec:
    id: str
    seed: int


@dataclass(frozen=True)
class ChildRange(Sequence[ChildSpec]):
    """Rows made from one parent, described rather than listed.

    Row m has id `f"{prefix}{m}"` and the seed of index `first + m * stride` on the seed
    stream `stream`, so a plan of millions of rows costs a few numbers per parent, and
    each seed is computed where the row is made. Classical children use the _CHILD stream;
    a parent or label-map step's rows its own (_MAPPED, step number).
    """

    prefix: str
    job_seed: int
    length: int
    first: int
    stride: int
    stream: tuple[int, ...] = (_CHILD,)

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
        return ChildSpec(f"{self.prefix}{m}", derive_seed(self.job_seed, *self.stream, self.first + m * self.stride))

    @staticmethod
    def empty(prefix: str) -> ChildRange:
        return ChildRange(prefix, 0, 0, 0, 1)

    @staticmethod
    def from_dict(raw: dict) -> ChildRange:
        return ChildRange(**{**raw, "stream": tuple(raw.get("stream", (_CHILD,)))})


@dataclass(frozen=True)
class StepRows:
    """The rows one parent or label-map step makes from a record."""

    kind: str
    rows: ChildRange


@dataclass(frozen=True)
class ParentSpec:
    record: SourceRecord
    children: ChildRange
    mapped: tuple[StepRows, ...] = ()


@dataclass(frozen=True)
class GeneratedSpec:
    """One sample a class-conditional family makes from nothing but (label, seed)."""

    id: str
    label: int
    seed: int
    children: ChildRange


@dataclass(frozen=True)
class GeneratedRun:
    """`count` consecutive samples of one class: the j-th of the class, index `first + m`.

    With classical augmentation after this step, the class's `child_count` children are
    dealt round robin over its `class_rows` samples: sample j gets children j, j + G, ...
    (G = class_rows), child i at index `child_first + i`.
    """

    generator: str
    class_name: str
    label: int
    job_seed: int
    first_j: int
    first: int
    count: int
    class_rows: int = 0
    child_count: int = 0
    child_first: int = 0

    def children_of(self, j: int) -> int:
        """Classical children of the class's j-th sample."""
        return len(range(j, self.child_count, self.class_rows)) if self.child_count else 0

    def rows(self) -> int:
        """Samples plus their children."""
        return self.count + _children_before(self.first_j + self.count, self) - _children_before(self.first_j, self)

    def spec(self, m: int) -> GeneratedSpec:
        j = self.first_j + m
        sample_id = f"{self.generator}/{self.class_name}/{j:06d}"
        children = ChildRange(f"{sample_id}~classical", self.job_seed, self.children_of(j), self.child_first + j,
                              max(self.class_rows, 1))
        return GeneratedSpec(sample_id, self.label, derive_seed(self.job_seed, _CHILD, self.first + m), children)


def _children_before(j: int, run: GeneratedRun) -> int:
    """Children of the class's samples 0..j-1: with K = qG + r, samples below r get q + 1."""
    if not run.child_count:
        return 0
    q, r = divmod(run.child_count, run.class_rows)
    return j * q + min(j, r)


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

    def rows(self) -> int:
        return sum(run.rows() for run in self.runs)


@dataclass(frozen=True)
class ShardSpec:
    """One shard's rows. `children_of` names the step whose rows the classical children are
    made from (None: the source record itself); `maps_from` the `maps: simulator` step whose
    frames the parents are (None: the job's source)."""

    split: Split
    file: str
    parents: tuple[ParentSpec, ...]
    include_real: bool
    generated: Generated = Generated()
    children_of: str | None = None
    maps_from: str | None = None

    @property
    def rows(self) -> int:
        per_parent = sum(int(self.include_real) + len(p.children) + sum(len(m.rows) for m in p.mapped)
                         for p in self.parents)
        return per_parent + self.generated.rows()

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> ShardSpec:
        raw = json.loads(text)
        parents = tuple(ParentSpec(SourceRecord(**p["record"]), ChildRange.from_dict(p["children"]),
                                   tuple(StepRows(m["kind"], ChildRange.from_dict(m["rows"]))
                                         for m in p.get("mapped", ())))
                        for p in raw["parents"])
        generated = Generated(tuple(GeneratedRun(**run) for run in raw["generated"]["runs"]))
        return ShardSpec(raw["split"], raw["file"], parents, raw["include_real"], generated, raw.get("children_of"),
                         raw.get("maps_from"))


def draw_per_class(records: list[SourceRecord], seed: int, stream: int, count: Callable[[int], int]) -> set[str]:
    """The ids of a seeded draw of `count(n)` records from each label's n (records without a
    label count as one class); each class its own stream, so one class's records do not move
    another's draw."""
    by_label: dict[int | None, list[SourceRecord]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    drawn: set[str] = set()
    for key, group in by_label.items():
        group = sorted(group, key=lambda r: r.id)
        rng = np.random.default_rng(derive_seed(seed, stream, 0 if key is None else key + 1))
        drawn.update(group[int(i)].id for i in rng.permutation(len(group))[:max(count(len(group)), 0)])
    return drawn


def split_records(
    records: list[SourceRecord], holdout: float, seed: int
) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """Seeded per-class split; each class keeps at least one training record.

    The split is drawn over all records (before bad ones are rejected), so fixing one
    broken file does not reshuffle the rest.
    """
    holdout_ids = draw_per_class(records, seed, _SPLIT, lambda n: min(int(round(n * holdout)), n - 1))
    train = [r for r in records if r.id not in holdout_ids]
    held = [r for r in records if r.id in holdout_ids]
    return train, held


def job_split(records: list[SourceRecord], split: SplitConfig, seed: int) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """The job's split (`split:` of the config): the holdout drawn with `split.seed` (default
    the job's), then at most `split.train_per_class` training records per class drawn with
    the job's seed. The holdout does not depend on the job's seed when `split.seed` is set, so
    low-data runs with other seeds (other training images, other generator weights) are
    measured on the same real images."""
    train, holdout = split_records(records, split.holdout, seed if split.seed is None else split.seed)
    if split.train_per_class is not None:
        train = subset_per_class(train, split.train_per_class, seed)
    return train, holdout


def subset_per_class(records: list[SourceRecord], limit: int, seed: int) -> list[SourceRecord]:
    """At most `limit` records of each label (records without one count as one class), a
    seeded choice per class kept in the records' order."""
    keep = draw_per_class(records, seed, _SUBSET, lambda n: limit)
    return [r for r in records if r.id in keep]


def validation_split(records: list[SourceRecord], fraction: float, seed: int
                     ) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """The tuner's split of the training records: (what the generators fit on, validation).
    Each labelled class of n >= 2 records gives round(n * fraction) of them to validation, at
    least one and never all; a seeded draw per class, in the records' order."""
    labelled = [r for r in records if r.label is not None]
    held = draw_per_class(labelled, seed, _VALIDATION,
                          lambda n: 0 if n < 2 else min(n - 1, max(1, int(round(n * fraction)))))
    return [r for r in records if r.id not in held], [r for r in records if r.id in held]


def records_digest(records: list[SourceRecord]) -> dict[str, Any]:
    """{"records", "ids_sha256"}: which records a fit was given, checkable against a split."""
    ids = "\n".join(sorted(r.id for r in records))
    return {"records": len(records), "ids_sha256": hashlib.sha256(ids.encode()).hexdigest()}


OTHER_SOURCE_HOLDOUT = 0.2  # a second source's own holdout when the job keeps none


def other_source_split(records: list[SourceRecord], holdout: float, seed: int
                       ) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """The split of a source other than the job's (`report.reference`, a step's `target`): the
    job's holdout fraction and seed, so a transfer step fits the very images the report does not
    compare against."""
    return split_records(records, holdout or OTHER_SOURCE_HOLDOUT, seed)


def open_other_source(config: SourceConfig, holdout: float, seed: int
                      ) -> tuple[Source, list[SourceRecord], list[SourceRecord]]:
    """A source other than the job's (a step's `target`, `report.reference`) built and split as
    `other_source_split` does: (source, training records, holdout records)."""
    from jobs.sources import build_source

    source = build_source(config, seed)
    train, held = other_source_split(source.records(), holdout, seed)
    return source, train, held


def assign_children(train: list[SourceRecord], counts: dict[int, int], seed: int, offset: int = 0
                    ) -> dict[str, ChildRange]:
    """Spread each class's classical count over its parents (seeded permutation, round robin).

    The class's j-th child goes to the parent at position j mod P of the permutation, with
    index (children of earlier classes) + j after `offset`; so a parent's children form an
    arithmetic progression of indices, stored as a `ChildRange`. Ids derive from the parent.
    """
    by_label: dict[int, list[SourceRecord]] = {}
    for record in sorted(train, key=lambda r: r.id):
        if record.label is not None:
            by_label.setdefault(record.label, []).append(record)
    children: dict[str, ChildRange] = {}
    for label in sorted(counts):
        parents = by_label.get(label, [])
        wanted = counts[label]
        if wanted and not parents:
            raise ConfigError(f"quota: class {label} needs {wanted} synthetic samples but has no parents")
        order = np.random.default_rng(derive_seed(seed, _PARENTS, label)).permutation(len(parents))
        for position in range(min(len(parents), wanted)):
            parent = parents[int(order[position])]
            count = -(-(wanted - position) // len(parents))  # j = position, position + P, ... < wanted
            children[parent.id] = ChildRange(f"{parent.id}~classical", seed, count, offset + position, len(parents))
        offset += wanted
    return children


def map_rows(train: list[SourceRecord], steps: Sequence[PlanStep], seed: int, *, only: str | None = None
             ) -> dict[str, tuple[StepRows, ...]]:
    """Every training record's rows from the parent and label-map steps that map them
    (`per_parent` each); with `only`, the rows of that step alone (its simulator's frames)."""
    mapped: dict[str, tuple[StepRows, ...]] = {}
    numbered = [(number, step) for number, step in enumerate(steps)
                if (step.kind == only if only is not None else step.maps_records)]
    if not numbered:
        return mapped
    for position, record in enumerate(sorted(train, key=lambda r: r.id)):
        mapped[record.id] = tuple(
            StepRows(step.kind, ChildRange(f"{record.id}~{step.kind}", seed, step.per_parent,
                                           position * step.per_parent, 1, (_MAPPED, number)))
            for number, step in numbered)
    return mapped


def pack_shards(
    split: Split,
    parents: list[SourceRecord],
    children: dict[str, ChildRange],
    *,
    rows_per_shard: int,
    include_real: bool,
    mapped: dict[str, tuple[StepRows, ...]] | None = None,
    children_of: str | None = None,
    maps_from: str | None = None,
) -> list[ShardSpec]:
    """Group parents (in id order) with their rows into shards of ~rows_per_shard rows; files
    are named after the split, or after the `maps_from` step."""
    shards: list[ShardSpec] = []
    current: list[ParentSpec] = []
    rows = 0
    mapped = mapped or {}

    def close() -> None:
        nonlocal current, rows
        if rows:
            shards.append(ShardSpec(split, f"{maps_from or split}-{len(shards):05d}.parquet", tuple(current),
                                    include_real, children_of=children_of, maps_from=maps_from))
        current, rows = [], 0

    for record in sorted(parents, key=lambda r: r.id):
        kids = children.get(record.id) or ChildRange.empty(f"{record.id}~")
        made = mapped.get(record.id, ())
        n = int(include_real) + len(kids) + sum(len(m.rows) for m in made)
        if n == 0:
            continue
        current.append(ParentSpec(record, kids, made))
        rows += n
        if rows >= rows_per_shard:
            close()
    close()
    return shards


def plan_generated(counts: dict[int, int], seed: int, generator_name: str, class_names: list[str], *,
                   rows_per_shard: int, first: int = 0, children: dict[int, int] | None = None,
                   child_first: int = 0) -> list[ShardSpec]:
    """Shards of one class-conditional step's samples: no parents; ids and seeds from (class, index).

    Samples are numbered class by class from index `first` and cut into shards of about
    `rows_per_shard` rows (a sample and its classical `children` share a shard); a shard
    holds one run per class it touches.
    """
    children = children or {}
    shards: list[ShardSpec] = []
    runs: list[GeneratedRun] = []
    room = rows_per_shard

    def close() -> None:
        nonlocal runs, room
        if runs:
            shards.append(ShardSpec("train", f"{generator_name}-{len(shards):05d}.parquet", (), False,
                                    Generated(tuple(runs))))
        runs, room = [], rows_per_shard

    index, child_index = first, child_first
    for label in sorted(counts):
        total, kids = counts[label], children.get(label, 0)
        if kids and not total:
            raise ConfigError(f"augment.after: {generator_name} makes no samples of class {class_names[label]!r} "
                              f"to augment ({kids} classical rows asked)")
        j = 0
        while j < total:
            # Samples below r = kids mod total carry one child more: cut at that boundary too.
            per_row = 1 + (kids // total if total else 0)
            edge = kids % total if total else 0
            size, stop = (per_row + 1, edge) if j < edge else (per_row, total)
            take = max(1, min(stop - j, room // size)) if room >= size or not runs else 0
            if take == 0:
                close()
                continue
            runs.append(GeneratedRun(generator_name, class_names[label], label, seed, j, index, take,
                                     total if kids else 0, kids, child_index if kids else 0))
            j, index, room = j + take, index + take, room - take * size
            if room <= 0:
                close()
        child_index += kids
    close()
    return shards


@dataclass(frozen=True)
class Plan:
    class_names: list[str]
    train: list[ShardSpec]
    holdout: list[ShardSpec]
    quota: Quota

    def expected_counts(self) -> dict[str, int]:
        """Rows per class name of the training shards (real, mapped and synthetic)."""
        totals: Counter[str] = Counter()
        for shard in self.train:
            for parent in shard.parents:
                name = "unlabelled" if parent.record.label is None else self.class_names[parent.record.label]
                totals[name] += int(shard.include_real) + len(parent.children) + sum(len(m.rows) for m in parent.mapped)
            for run in shard.generated.runs:
                totals[self.class_names[run.label]] += run.rows()
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
    steps: Sequence[PlanStep] = (),
    augment: PlanAugment | None = CLASSICAL,
    maps: dict[str, list[SourceRecord]] | None = None,
) -> Plan:
    """Plan the shards for usable records (already split and scanned); no quota: copy (and map) only.

    Source records carry their own rows: the real one, the rows of parent/label-map steps,
    and classical children (of the record, or of its first mapped row with `augment.after`).
    Each class-conditional step's samples go to shards of their own, with their classical
    children when `augment.after` names the step; so do the rows of a `maps: simulator` step,
    whose parents are its simulator's frames (`maps`: {step kind: frame records}).
    """
    maps = maps or {}
    q = quota_for(quota, class_names, train, steps, augment, maps=maps)
    check_plan_size(q.synthetic, q.parents, class_names,
                    rows=len(train) * int(include_real) + mapped_rows(steps, train, maps) + len(holdout),
                    rows_per_shard=rows_per_shard, classical=q.classical)
    after = None if augment is None else augment.after
    after_step = next((s for s in steps if s.kind == after), None)
    class_rows = sum(sum(q.by_step[s.kind].values()) for s in steps if s.request == "class")
    generated: list[ShardSpec] = []
    first = 0
    for step in steps:
        if step.request != "class":
            continue
        kids = q.classical if step.kind == after else None
        generated += plan_generated(q.by_step[step.kind], seed, step.kind, class_names, rows_per_shard=rows_per_shard,
                                    first=first, children=kids, child_first=class_rows)
        first += sum(q.by_step[step.kind].values())
    on_records = after_step is None or after_step.maps_records
    children = assign_children(train, q.classical, seed, offset=class_rows) if on_records else {}
    for step in steps:
        if step.request == "class" or step.maps_records:
            continue
        frames = maps.get(step.kind, [])
        kids = assign_children(frames, q.classical, seed, offset=class_rows) if step.kind == after else {}
        generated += pack_shards("train", frames, kids, rows_per_shard=rows_per_shard, include_real=False,
                                 mapped=map_rows(frames, steps, seed, only=step.kind),
                                 children_of=after if step.kind == after else None, maps_from=step.kind)
    return Plan(
        class_names=class_names,
        train=pack_shards("train", train, children, rows_per_shard=rows_per_shard, include_real=include_real,
                          mapped=map_rows(train, steps, seed), children_of=after if on_records else None)
        + generated,
        holdout=pack_shards("holdout", holdout, {}, rows_per_shard=rows_per_shard, include_real=True),
        quota=q,
    )
