"""Ray Data callable classes: load what they need once, then map batches purely.

Both can be called directly on a small batch (tests do) before Ray is involved.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import TypeAdapter

from augment.errors import InputRejected
from augment.generators.base import SampleRequest
from augment.sample import Sample, Scores
from augment.shards import samples_to_table
from augment.sources.base import SourceRecord
from jobs.config import SourceConfig
from jobs.plan import ShardSpec
from jobs.sources import build_source

_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceConfig)


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
        if self.progress is not None:
            self.progress.add.remote("scanned", len(reasons))
        return {"id": batch["id"], "path": np.array(paths, dtype=object), "reason": np.array(reasons, dtype=object)}


class ShardWorker:
    """Produces all rows of one planned shard: real parents and their augmented children."""

    def __init__(
        self,
        source_config: dict[str, Any],
        transforms: list[dict[str, Any]],
        class_names: list[str],
        png_compress_level: int,
        job_seed: int = 0,
        generator: dict[str, Any] | None = None,
        progress: Any = None,
        quality: dict[str, Any] | None = None,
    ) -> None:
        self.source = build_source(_SOURCE_ADAPTER.validate_python(source_config), job_seed)
        self.augmenter = None
        if transforms:  # albumentations pulls in torch: only import it when there is work for it
            from augment.classical import ClassicalAugmenter

            self.augmenter = ClassicalAugmenter(transforms)
        self.sampler, self.sample_kwargs = None, {}
        if generator:  # a class-conditional model, loaded once per actor
            from jobs.generators import load_sampler

            self.sampler = load_sampler(generator["kind"], Path(generator["dir"]), generator["device"])
            self.sample_kwargs = {k: _int_keys(v) for k, v in generator["sample"].items()}
        self.class_names = class_names
        self.png_compress_level = png_compress_level
        self.progress = progress
        self.quality, self.scorer = quality, None
        if quality is not None:  # realism / confidence per synthetic row, and the quality gate
            from jobs.quality import load_scorer

            self.scorer = load_scorer(quality)

    def make_samples(self, shard: ShardSpec) -> list[Sample]:
        samples: list[Sample] = []
        for parent in shard.parents:
            real = self.source.load(parent.record)
            if shard.include_real:
                samples.append(real)
            for child in parent.children:
                if self.augmenter is None:
                    raise ValueError(f"shard {shard.file} plans children but the job has no transforms")
                samples.append(self.augmenter(real, child_id=child.id, seed=child.seed))
        if shard.generated:
            if self.sampler is None:
                raise ValueError(f"shard {shard.file} plans generated samples but the job has no generator")
            # One sampler batch at a time, so the bar moves while a big shard is sampled;
            # a sample's bytes depend on its own seed only, not on how requests are cut.
            chunk = int(self.sample_kwargs.get("batch_size", 64))
            for start in range(0, len(shard.generated), chunk):
                part = shard.generated[start:start + chunk]
                request = SampleRequest(labels=[g.label for g in part], seeds=[g.seed for g in part],
                                        ids=[g.id for g in part])
                samples += self.sampler.sample(request, **self.sample_kwargs)
                if self.progress is not None:
                    self.progress.add.remote("generated", len(part))
        return samples

    def score(self, samples: list[Sample]) -> list[str]:
        """Scores on every synthetic row; returns each row's gate verdict ("" keeps it)."""
        from augment.metrics.scoring import gate_reasons
        from jobs.quality import to_metric_size

        verdicts = [""] * len(samples)
        synthetic = [i for i, s in enumerate(samples) if s.source != "real"]
        if self.scorer is None or not synthetic:
            return verdicts
        size, channels = self.quality["size"], self.quality["channels"]
        images = np.stack([to_metric_size(samples[i].image, size, channels) for i in synthetic])
        scores = self.scorer.score(images, [samples[i].label for i in synthetic])
        for j, i in enumerate(synthetic):
            confidence = None if np.isnan(scores.confidence[j]) else float(scores.confidence[j])
            samples[i].scores = Scores(realism=float(scores.realism[j]), confidence=confidence)
        gate = self.quality.get("filter")
        if gate:
            for j, reasons in enumerate(gate_reasons(scores, **gate)):
                verdicts[synthetic[j]] = ",".join(reasons)
        return verdicts

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        tables = []
        for text in batch["spec"]:
            shard = ShardSpec.from_json(str(text))
            samples = self.make_samples(shard)
            verdicts = self.score(samples)
            table = samples_to_table(samples, self.class_names, png_compress_level=self.png_compress_level)
            # Dropped rows travel to the sink, which publishes the rest and records these.
            table = table.append_column("_drop", pa.array(verdicts, pa.string()))
            tables.append(table.append_column("_shard", pa.array([shard.file] * table.num_rows, pa.string())))
            if self.progress is not None:  # sampled rows were counted batch by batch
                self.progress.add.remote("generated", table.num_rows - len(shard.generated))
        return pa.concat_tables(tables)


def _int_keys(value: Any) -> Any:
    """Per-class dicts cross Ray as JSON-ish data; class ids come back as int keys."""
    return {int(k): v for k, v in value.items()} if isinstance(value, dict) else value


def record_columns(records: list[SourceRecord]) -> list[dict[str, Any]]:
    """Records as Ray Data rows (label -1 stands for none)."""
    return [{"id": r.id, "label": -1 if r.label is None else r.label, "ref": r.ref} for r in records]


class ProgressCounter:
    """A tiny actor that workers bump, so the driver can show a bar with rate and ETA."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.started = time.monotonic()

    def add(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def get(self, key: str) -> int:
        return self.counts.get(key, 0)
