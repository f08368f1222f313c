"""Ray Data callable classes: load what they need once, then map batches purely.

Both can be called directly on a small batch (tests do) before Ray is involved.

Faults: Ray restarts a pool actor that dies (its process killed, its node lost) and runs
the batch it held again (`jobs.ray_compat.actor_pool`). A shard's bytes are a pure function
of its plan, so the retry publishes the same file; what the lost attempt had counted on
the progress actor is replaced, not added to (every count carries its shard and attempt).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import TypeAdapter

from augment.errors import InputRejected
from augment.generators.base import SampleRequest, checkpoint_sha256
from augment.licences import UNKNOWN, licensed
from augment.sample import GeneratorInfo, Sample, Scores
from augment.seeding import derive_seed
from augment.shards import samples_to_table
from augment.sources.base import SourceRecord
from jobs.config import SourceConfig
from jobs.datasink import FILTER_COLUMN
from jobs.plan import ShardSpec
from jobs.progress import current_node_id
from jobs.sources import build_source

_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceConfig)
log = logging.getLogger("synthaug")


class ScanWorker:
    """Decodes every record once so bad ones are known (and recorded) before planning."""

    def __init__(self, source_config: dict[str, Any], job_seed: int = 0, progress: Any = None) -> None:
        self.source = build_source(_SOURCE_ADAPTER.validate_python(source_config), job_seed)
        self.progress = progress

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, reasons = [], []
        for record_id, label, ref in zip(batch["id"], batch["label"], batch["ref"]):
            record = SourceRecord(str(record_id), None if label < 0 else int(label), str(ref))
            try:
                self.source.load(record)
                paths.append(record.ref)
                reasons.append("")
            except InputRejected as rejected:
                paths.append(rejected.path)
                reasons.append(rejected.reason)
        if self.progress is not None and len(reasons):  # a batch run again replaces its count
            self.progress.add.remote("scanned", len(reasons), str(batch["id"][0]), uuid.uuid4().hex)
        return {"id": batch["id"], "path": np.array(paths, dtype=object), "reason": np.array(reasons, dtype=object)}


class ShardWorker:
    """Produces all rows of one planned shard: real records, the rows generate steps make from
    them or from (class, seed), and classical children."""

    def __init__(
        self,
        source_config: dict[str, Any],
        transforms: list[dict[str, Any]],
        class_names: list[str],
        png_compress_level: int,
        job_seed: int = 0,
        generators: dict[str, dict[str, Any]] | None = None,
        progress: Any = None,
        quality: dict[str, Any] | None = None,
        max_retries: int = 0,
    ) -> None:
        self.max_retries = max_retries
        self._attempt_rows = 0  # rows this attempt at a shard added to the bar (taken back if it fails)
        self._attempt: tuple[str | None, str | None] = (None, None)  # (shard, attempt id) the rows count for
        source = _SOURCE_ADAPTER.validate_python(source_config)
        self.source = build_source(source, job_seed)
        self.source_licence = source.licence  # the config's, over what the source knows
        self.job_seed = job_seed
        self.map_frames: dict[str, Any] = {}  # `maps: simulator` steps' frames, built when first needed
        self.augmenter = None
        if transforms:  # albumentations pulls in torch: only import it when there is work for it
            from augment.classical import ClassicalAugmenter

            self.augmenter = ClassicalAugmenter(transforms)
        # Each generate step's model, loaded by an actor when a shard first needs it, then kept:
        # once per actor (again only if Ray restarts the actor), never per batch.
        self.generators = generators or {}
        self.steps: dict[str, StepSampler] = {}
        self.class_names = class_names
        self.png_compress_level = png_compress_level
        self.progress = progress
        self.quality, self.scorer = quality, None
        if quality is not None:  # realism / confidence per synthetic row, and the quality filter
            from jobs.quality import load_scorer

            self.scorer = load_scorer(quality)

    def _step(self, kind: str, shard: ShardSpec) -> StepSampler:
        if kind not in self.generators:
            raise ValueError(f"shard {shard.file} plans {kind} rows but the job has no such generate step")
        if kind not in self.steps:
            self.steps[kind] = StepSampler(kind, self.generators[kind])
        return self.steps[kind]

    def _parents(self, shard: ShardSpec) -> tuple[Any, str | None]:
        """Where the shard's parent records load from, the job's source or a step's simulator
        frames, and the licence their config gives (None: the one the source knows)."""
        kind = shard.maps_from
        if kind is None:
            return self.source, self.source_licence
        if kind not in self.map_frames:
            from jobs.maps import MapFrames

            self.map_frames[kind] = MapFrames.from_json(kind, self.generators[kind]["maps"], self.job_seed)
        return self.map_frames[kind], self.map_frames[kind].config.licence

    def _children(self, base: Sample, children: Any, shard: ShardSpec) -> list[Sample]:
        if not len(children):
            return []
        if self.augmenter is None:
            raise ValueError(f"shard {shard.file} plans classical children but the job has no transforms")
        return [self.augmenter(base, child_id=child.id, seed=child.seed) for child in children]

    def _report(self, rows: int) -> None:
        self._attempt_rows += rows
        if self.progress is not None and rows:
            self.progress.add.remote("generated", rows, *self._attempt)

    def make_samples(self, shard: ShardSpec) -> list[Sample]:
        samples: list[Sample] = []
        source, licence = self._parents(shard)
        for parent in shard.parents:
            real = licensed(source.load(parent.record), licence)
            made: list[Sample] = [real] if shard.include_real else []
            mapped: dict[str, list[Sample]] = {}
            for rows in parent.mapped:
                mapped[rows.kind] = self._step(rows.kind, shard).from_parent(real, rows.rows)
                made += mapped[rows.kind]
            base = real if shard.children_of is None else mapped[shard.children_of][0]
            made += self._children(base, parent.children, shard)
            samples += made
            self._report(len(made))  # the bar moves per record, not per shard
        if shard.generated.runs:  # a class-conditional step's shard: all its runs are that step's
            step = self._step(shard.generated.runs[0].generator, shard)
            # One sampler batch at a time, so the bar moves while a big shard is sampled;
            # a sample's bytes depend on its own seed only, not on how requests are cut.
            for start in range(0, len(shard.generated), step.batch):
                part = shard.generated[start:start + step.batch]
                made = []
                for sample, spec in zip(step.from_classes(part), part, strict=True):
                    made += [sample, *self._children(sample, spec.children, shard)]
                samples += made
                self._report(len(made))
        return samples

    def score(self, samples: list[Sample]) -> list[str]:
        """Scores on every synthetic row; returns each row's filter verdict ("" keeps it)."""
        verdicts = [""] * len(samples)
        synthetic = [i for i, s in enumerate(samples) if s.source != "real"]
        if self.scorer is None or not synthetic:
            return verdicts
        # Imported only when there is a scorer: augment.metrics pulls in torch (seconds per actor).
        from augment.metrics.preprocess import to_metric_size
        from augment.metrics.scoring import filter_reasons

        size, channels = self.quality["size"], self.quality["channels"]
        images = np.stack([to_metric_size(samples[i].image, size, channels) for i in synthetic])
        scores = self.scorer.score(images, [samples[i].label for i in synthetic])
        # The judges' rows (parent records', label maps'), at their own size with the labels they keep.
        judged = self.scorer.judge([samples[i] for i in synthetic])
        for name, values in judged.items():
            setattr(scores, name, values)
        for j, i in enumerate(synthetic):
            confidence = None if np.isnan(scores.confidence[j]) else float(scores.confidence[j])
            samples[i].scores = Scores(realism=float(scores.realism[j]), confidence=confidence,
                                       **{name: None if np.isnan(values[j]) else float(values[j])
                                          for name, values in judged.items()})
        settings = self.quality.get("filter")
        if settings:
            for j, reasons in enumerate(filter_reasons(scores, **settings)):
                verdicts[synthetic[j]] = ",".join(reasons)
        return verdicts

    def shard_table(self, shard: ShardSpec | None) -> pa.Table:
        """One shard's rows, scored, with their filter verdicts and shard name (no shard: the
        empty table a batch whose shards all failed hands on)."""
        samples = self.make_samples(shard) if shard is not None else []
        verdicts = self.score(samples)
        table = samples_to_table(samples, self.class_names, png_compress_level=self.png_compress_level)
        # Filtered rows travel to the sink, which publishes the rest and records these.
        table = table.append_column(FILTER_COLUMN, pa.array(verdicts, pa.string()))
        names = [shard.file] * table.num_rows if shard is not None else []
        return table.append_column("_shard", pa.array(names, pa.string()))

    def attempt(self, shard: ShardSpec) -> pa.Table | None:
        """The shard's table, trying up to 1 + `max_retries` times; None once every attempt
        raised (the last cause goes to the progress actor, which the driver asks)."""
        for attempt in range(1 + self.max_retries):
            # A fresh id per attempt, also when Ray runs the batch again on a restarted actor:
            # the progress actor then counts the shard's rows of the newest attempt only.
            self._attempt_rows, self._attempt = 0, (shard.file, uuid.uuid4().hex)
            try:
                table = self.shard_table(shard)
            except Exception as error:  # noqa: BLE001 - any failure of a shard is retried, then recorded
                if self.progress is not None and self._attempt_rows:  # the bar counts what was kept
                    self.progress.add.remote("generated", -self._attempt_rows, *self._attempt)
                cause = f"{type(error).__name__}: {error}"[:2000]
                log.warning("shard %s: attempt %d of %d failed: %s", shard.file, attempt + 1, 1 + self.max_retries,
                            cause)
                continue
            if self.progress is not None:  # where it was made (and no longer failed, if a lost attempt said so)
                self.progress.ran.remote("generate", current_node_id(), shard.file)
            return table
        if self.progress is not None:
            self.progress.fail.remote(shard.file, cause, 1 + self.max_retries)
        return None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        tables = [self.attempt(ShardSpec.from_json(str(text))) for text in batch["spec"]]
        made = [t for t in tables if t is not None]  # a failed shard publishes nothing
        return pa.concat_tables(made) if made else self.shard_table(None)



class StepSampler:
    """One generate step inside a shard worker: its family's saved model and sampling settings.

    Rows a family makes from a record keep the record's labels (label, mask, instances,
    boxes, depth) as they are: the family paints pixels, the job carries annotations, so a
    family cannot get them wrong. Ids, seeds and `source` come from the plan.
    """

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        from jobs.registry import resolve

        self.kind = kind
        self.licence = spec.get("licence") or UNKNOWN  # of every row this step makes (`jobs.runner.step_licence`)
        self.family = resolve(spec["family"])
        self.sampler = self.family.from_pretrained(Path(spec["dir"]), spec["device"])
        # Every row records the weights it came from, whether or not the family's sampler says.
        self.checkpoint = getattr(self.sampler, "checkpoint_sha256", None) or checkpoint_sha256(Path(spec["dir"]))
        self.kwargs = dict(spec["sample"])
        self.batch = max(1, self.family.batch_size(self.kwargs))
        self.map_augmenter = None
        if spec.get("map_transforms"):  # label-map step, maps: augmented
            from augment.classical import ClassicalAugmenter

            self.map_augmenter = ClassicalAugmenter(spec["map_transforms"])

    def _sample(self, request: SampleRequest) -> list[Sample]:
        made = self.sampler.sample(request, **self.kwargs)
        if len(made) != len(request.ids):
            raise ValueError(f"{self.kind}: asked for {len(request.ids)} samples, got {len(made)}")
        return made

    def _stamped(self, sample: Sample, row_id: str, seed: int) -> Sample:
        generator = sample.generator or GeneratorInfo(self.kind, None, json.dumps(self.kwargs, sort_keys=True))
        if generator.checkpoint_sha256 is None:
            generator = replace(generator, checkpoint_sha256=self.checkpoint)
        return replace(sample, id=row_id, seed=int(seed), source=self.kind, generator=generator,
                       licence=self.licence, parent_licence=None)

    def from_classes(self, specs: list[Any]) -> list[Sample]:
        request = SampleRequest(labels=[s.label for s in specs], seeds=[s.seed for s in specs],
                                ids=[s.id for s in specs])
        made = self._sample(request)
        return [self._stamped(sample, s.id, s.seed) for sample, s in zip(made, specs, strict=True)]

    def from_parent(self, record: Sample, rows: Any) -> list[Sample]:
        """The step's rows of one record (a parent request or a label map)."""
        specs = list(rows)
        parents = [record] * len(specs)
        if self.family.request == "label_map":
            if record.mask is None:
                raise ValueError(f"{self.kind}: record {record.id!r} has no mask to paint from")
            if self.map_augmenter is not None:  # each row its own geometric draw of the map
                parents = [self.map_augmenter(record, child_id=s.id, seed=derive_seed(s.seed, 1)) for s in specs]
        request = SampleRequest(
            labels=[-1 if record.label is None else record.label] * len(specs), seeds=[s.seed for s in specs],
            ids=[s.id for s in specs], parent_ids=[record.id] * len(specs),
            parents=parents if self.family.request == "parent" else None,
            label_maps=[p.mask for p in parents] if self.family.request == "label_map" else None)
        made = self._sample(request)
        out = []
        for sample, spec, parent in zip(made, specs, parents, strict=True):
            if sample.image.shape[:2] != parent.image.shape[:2]:
                raise ValueError(f"{self.kind}: made a {sample.image.shape[1]}x{sample.image.shape[0]} image from "
                                 f"the {parent.width}x{parent.height} record {record.id!r}; a family that keeps "
                                 "labels must keep the geometry")
            out.append(replace(self._stamped(sample, spec.id, spec.seed), label=record.label, mask=parent.mask,
                               instances=parent.instances, depth=parent.depth, boxes=list(parent.boxes),
                               parent_id=record.id, parent_licence=record.licence))
        return out


def record_columns(records: list[SourceRecord]) -> list[dict[str, Any]]:
    """Records as Ray Data rows (label -1 stands for none)."""
    return [{"id": r.id, "label": -1 if r.label is None else r.label, "ref": r.ref} for r in records]
