"""How many rows a job makes per class, and by whom: the quota's arithmetic.

The quota counts real + synthetic rows per class. Parent and label-map steps map every
training record (their rows count first); what is left is dealt to the class-conditional
steps and classical augmentation (`split_quota`). Also the bounds no job may exceed, checked
before anything is planned. Pure functions of the config and the records: no Ray, no pixels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from augment.errors import ConfigError
from augment.generators.family import RequestKind
from augment.sources.base import SourceRecord
from jobs.config import JobConfig, QuotaConfig

# A job's plan stays small whatever the quota: children and generated samples are
# described by index ranges and expanded where a shard is made. These bound what one job
# may ask for (the message names the limit) before anything is planned or started.
MAX_PLANNED_ROWS = 10_000_000
MAX_SHARD_ROWS = 100_000
MAX_SHARDS = 100_000  # files per split folder; also the Ray Data items of the write stage


@dataclass(frozen=True)
class PlanStep:
    """A generate step: its family's name and request, and its part of the rows."""

    kind: str
    request: RequestKind
    share: float | None = None
    per_class: dict[str, int] | None = None
    per_parent: int = 1
    maps: str = "source"  # label-map: "simulator" maps the step's own frames, not the training records

    @property
    def maps_records(self) -> bool:
        """True for a parent or label-map step that maps the job's training records."""
        return self.request != "class" and self.maps != "simulator"


@dataclass(frozen=True)
class PlanAugment:
    """Classical augmentation: its share of the quota, and whose rows it augments."""

    share: float | None = None
    after: str | None = None


CLASSICAL = PlanAugment()


def plan_steps(config: JobConfig) -> tuple[tuple[PlanStep, ...], PlanAugment | None]:
    steps = tuple(PlanStep(s.kind, s.family.request, s.share, s.per_class, s.per_parent, s.maps)
                  for s in config.generate)
    augment = None if config.augment is None else PlanAugment(config.augment.share, config.augment.after)
    return steps, augment


def _class_index(quota: QuotaConfig, class_names: list[str]) -> dict[str, int]:
    index = {name: i for i, name in enumerate(class_names)}
    for name in quota.per_class or {}:
        if name not in index:
            raise ConfigError(f"quota.per_class: unknown class {name!r} (classes: {', '.join(class_names)})")
    return index


def synthetic_counts(quota: QuotaConfig, real: dict[int, int], class_names: list[str],
                     mapped: dict[int, int] | None = None, *, strict: bool = True) -> dict[int, int]:
    """Rows the quota leaves to make per class: target − real − rows of parent/label-map steps.

    `strict=False` (before the scan, when rejected records may still lower the real counts)
    counts a target below what the class has as zero instead of refusing it."""
    mapped = mapped or {}
    present = {c: n for c, n in real.items() if n > 0}
    have = {c: n + mapped.get(c, 0) for c, n in present.items()}
    what = "real training samples" if not mapped else "real training samples and mapped rows"
    if quota.per_class is not None:
        index = _class_index(quota, class_names)
        counts: dict[int, int] = {}
        for name, target in quota.per_class.items():
            c = index[name]
            if target > 0 and present.get(c, 0) == 0:
                raise ConfigError(f"quota.per_class[{name!r}]: {target} asked, but the class has no usable training samples")
            if target < have.get(c, 0) and strict:
                raise ConfigError(
                    f"quota.per_class[{name!r}]: {target} is below the {have.get(c, 0)} {what} of the class "
                    "(the quota counts real + synthetic)"
                )
            counts[c] = max(target - have.get(c, 0), 0)
        return counts
    if quota.multiplier is not None:
        counts = {c: int(round(n * quota.multiplier)) - have[c] for c, n in present.items()}
        short = {class_names[c]: n for c, n in counts.items() if n < 0}
        counts = {c: max(n, 0) for c, n in counts.items()}
        if short and strict:
            raise ConfigError(f"quota.multiplier: {quota.multiplier} is met by the {what} already "
                              f"(classes {sorted(short)}); raise it or map fewer rows per parent")
        return counts
    if not present:
        raise ConfigError("quota.balance: the source has no labelled training samples")
    largest = max(have.values())
    return {c: largest - n for c, n in have.items()}


def split_quota(counts: dict[int, int], steps: Sequence[PlanStep], augment: PlanAugment | None,
                class_names: list[str]) -> tuple[dict[str, dict[int, int]], dict[int, int]]:
    """Each class's synthetic rows dealt to the class-conditional steps and classical augmentation.

    `per_class` steps take their own counts first; the rest is split by `share` (unset shares
    split what the set ones leave, equally), with largest-remainder rounding so the parts add
    up exactly. Returns ({step kind: {class: rows}}, {class: classical rows})."""
    participants: list[tuple[str, float | None]] = [(s.kind, s.share) for s in steps
                                                    if s.request == "class" and s.per_class is None]
    if augment is not None:
        participants.append(("", augment.share))  # "" is classical
    given = sum(share for _, share in participants if share is not None)
    unset = [name for name, share in participants if share is None]
    shares = {name: (share if share is not None else max(0.0, 1.0 - given) / len(unset))
              for name, share in participants}
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, dict[int, int]] = {s.kind: {} for s in steps if s.request == "class"}
    classical: dict[int, int] = {}
    for c in sorted(counts):
        left = counts[c]
        for step in steps:
            if step.request == "class" and step.per_class is not None:
                unknown = sorted(set(step.per_class) - set(index))
                if unknown:
                    raise ConfigError(f"generate ({step.kind}).per_class: unknown classes {unknown} "
                                      f"(classes: {', '.join(class_names)})")
                take = step.per_class.get(class_names[c], 0)
                if take > left:
                    raise ConfigError(f"generate ({step.kind}).per_class[{class_names[c]!r}]: {take} is more than "
                                      f"the {left} synthetic rows the quota leaves for the class")
                out[step.kind][c] = take
                left -= take
        if left and not participants:
            raise ConfigError(f"quota: {left} synthetic rows of class {class_names[c]!r} are left to make, but every "
                              "class-conditional step has its own per_class; give one a share instead")
        raw = [(name, left * shares[name]) for name, _ in participants]
        parts = {name: int(value) for name, value in raw}
        # Largest remainder: the rows lost to rounding go to the biggest fractions (ties: config order).
        for name, _ in sorted(raw, key=lambda item: -(item[1] - int(item[1])))[:left - sum(parts.values())]:
            parts[name] += 1
        for name, rows in parts.items():
            if name:
                out[name][c] = rows
            else:
                classical[c] = rows
    return out, classical


def check_plan_size(counts: dict[int, int], parents: dict[int, int], class_names: list[str], *, rows: int,
                    rows_per_shard: int, classical: dict[int, int] | None = None) -> None:
    """Refuse, before anything is planned, a quota no job should hold: more than
    `MAX_PLANNED_ROWS` rows in all (`rows` real and mapped ones plus the synthetic `counts`),
    more than `MAX_SHARDS` shards, or more classical children per parent than a shard holds
    (a parent shares its shard with its children; `parents`: per class, what they are made from)."""
    total = rows + sum(counts.values())
    if total > MAX_PLANNED_ROWS:
        raise ConfigError(f"quota: the job would write {total:,} rows; one job writes at most {MAX_PLANNED_ROWS:,} "
                          "(split it into several jobs with different seeds)")
    shards = -(-total // rows_per_shard)
    if shards > MAX_SHARDS:
        raise ConfigError(f"output.rows_per_shard: {rows_per_shard} rows a shard makes {shards:,} shards of "
                          f"{total:,} rows; a job writes at most {MAX_SHARDS:,} (raise rows_per_shard to at least "
                          f"{-(-total // MAX_SHARDS):,})")
    for label, wanted in sorted((classical or {}).items()):
        have = parents.get(label, 0)
        per_parent = -(-wanted // have) if have else 0
        if per_parent + 1 > MAX_SHARD_ROWS:
            raise ConfigError(
                f"quota: class {class_names[label]!r} needs {wanted:,} synthetic samples from {have:,} training "
                f"images, {per_parent:,} from each; an image and its children share a shard of at most "
                f"{MAX_SHARD_ROWS:,} rows (lower the quota or add real images)")


def mapped_rows(steps: Sequence[PlanStep], train: list[SourceRecord],
                maps: dict[str, list[SourceRecord]] | None = None) -> int:
    """Rows of parent and label-map steps in all, labelled or not (`Quota.mapped` counts labelled ones)."""
    return sum(step.per_parent * len(train if step.maps_records else (maps or {}).get(step.kind, []))
               for step in steps if step.request != "class")


@dataclass(frozen=True)
class Quota:
    """How a job's rows come about per class: real, mapped by parent/label-map steps, made by
    each class-conditional step, and classical children (with what they are made from)."""

    real: dict[int, int]
    mapped: dict[int, int]
    synthetic: dict[int, int]
    by_step: dict[str, dict[int, int]]
    classical: dict[int, int]
    parents: dict[int, int]  # per class, the rows classical children are made from


def quota_for(quota: QuotaConfig | None, class_names: list[str], train: list[SourceRecord],
              steps: Sequence[PlanStep], augment: PlanAugment | None, *, strict: bool = True,
              maps: dict[str, list[SourceRecord]] | None = None) -> Quota:
    """`maps`: the frames of each `maps: simulator` step; their rows count like mapped rows."""
    real = dict(Counter(r.label for r in train if r.label is not None))
    maps = maps or {}
    frames = {kind: dict(Counter(r.label for r in records if r.label is not None)) for kind, records in maps.items()}
    mapped: dict[int, int] = {}
    for step in steps:
        if step.request != "class":
            for c, n in (real if step.maps_records else frames.get(step.kind, {})).items():
                mapped[c] = mapped.get(c, 0) + n * step.per_parent
    counts = {} if quota is None else synthetic_counts(quota, real, class_names, mapped, strict=strict)
    by_step, classical = split_quota(counts, steps, augment, class_names)
    after = None if augment is None else augment.after
    step_of = {s.kind: s for s in steps}
    if after is None:
        parents = real
    elif step_of[after].request == "class":
        parents = dict(by_step[after])
    else:
        made_from = real if step_of[after].maps_records else frames.get(after, {})
        parents = {c: n * step_of[after].per_parent for c, n in made_from.items()}
    return Quota(real, mapped, counts, by_step, classical, parents)


def precheck_quota(quota: QuotaConfig | None, class_names: list[str], train: list[SourceRecord],
                   holdout_rows: int, *, include_real: bool, rows_per_shard: int, steps: Sequence[PlanStep] = (),
                   augment: PlanAugment | None = CLASSICAL, maps: dict[str, list[SourceRecord]] | None = None) -> None:
    """The quota checks that need no pixels, run on the listed records before Ray starts:
    unknown class names, impossible splits and sizes no job may hold. Rejected records only
    lower the real counts, which can only raise the synthetic count per image, so nothing
    refused here would pass after the scan."""
    q = quota_for(quota, class_names, train, steps, augment, strict=False, maps=maps)
    check_plan_size(q.synthetic, q.parents, class_names,
                    rows=len(train) * int(include_real) + mapped_rows(steps, train, maps) + holdout_rows,
                    rows_per_shard=rows_per_shard, classical=q.classical)
