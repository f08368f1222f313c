"""The tune stage: score a grid of settings on a validation split, make the rows with the best.

With `tune:` in the config (`jobs.config.TuneConfig`), before the job plans its rows:

1. a validation split is carved from each class's usable training records (`validation_split`,
   seeded by the job); the class-conditional steps fit on the rest;
2. each step samples one pool per combination of its tuned sampling values (Ray tasks side by
   side), as many rows per class as the largest setting asks, with the same seeds for every
   value, so settings differ in the knob and not in the draw;
3. the job's row scorer scores the pools when a gate is tuned or configured;
4. every setting takes its rows from the pools (`augment.tuning.pick_rows`), and the report's
   fixed classifier (its budget and seed) trains on the fit records + those rows and is scored
   on the validation split (Ray tasks side by side; settings with the very same rows train once);
5. the settings are ranked (validation accuracy, then log loss) and the first is chosen.

OUT/tune/tune.json keeps the table and the choice; a rerun of the same config reads it
instead of tuning again. The job then plans and makes its rows with `tuned_config`: the
chosen sampling values, gate thresholds and (with `synthetic_share`) per-class counts.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from augment.errors import ConfigError
from augment.seeding import derive_seed
from augment.sources.base import SourceRecord
from augment.tuning import Setting, grid, pick_rows, ranking, share_counts
from jobs.config import JobConfig, StepConfig, parse_config
from jobs.plan import records_digest, validation_split
from jobs.quota import plan_steps, quota_for, split_quota

log = logging.getLogger("synthaug")

TUNE_DIR = "tune"
TUNE_FILE = "tune.json"
POOL_STREAM = 94  # derive_seed(job seed, POOL_STREAM, step number, row): the pools' seeds


@dataclass
class Pool:
    """One step's rows at one combination of its sampling values, in the order they were made."""

    kind: str
    values: dict[str, Any]
    labels: np.ndarray
    images: np.ndarray  # at the metric size
    scores: Any = None  # RowScores when a gate needs them


def tuned_config(config: JobConfig, chosen: Setting, class_names: list[str], real: dict[int, int]) -> JobConfig:
    """`config` with the chosen setting applied (and no tune section): its steps' sampling
    values, its gate thresholds and, with a share, per-class quota counts for `real` rows per
    class (class id -> usable training records)."""
    raw = config.model_dump(mode="json")
    raw["tune"] = None
    for step in raw["generate"]:
        step["sample"] = {**(step.get("sample") or {}), **chosen.sample.get(step["kind"], {})}
    if chosen.gate:
        raw["filter"] = {**(raw.get("filter") or {}), **chosen.gate}
    if chosen.share is not None:
        synthetic = share_counts(real, chosen.share)
        raw["quota"] = {"per_class": {class_names[c]: n + synthetic[c] for c, n in sorted(real.items())}}
    return parse_config(raw, where="the tuned config")


def with_sample(step: StepConfig, values: dict[str, Any]) -> StepConfig:
    """`step` sampling at `values` (fields of its `sample:` section)."""
    return step.model_copy(update={"sample": step.sample.model_validate({**step.sample.model_dump(), **values})})


def sample_pool(family: str, model_dir: str, kwargs: dict[str, Any], labels: list[int], seeds: list[int],
                size: int, channels: int) -> np.ndarray:
    """A pool's images at the metric size (a Ray task): the model sampled in its own batches."""
    from augment.generators.base import SampleRequest
    from augment.metrics.preprocess import to_metric_size
    from jobs.registry import resolve

    owner = resolve(family)
    sampler = owner.from_pretrained(Path(model_dir))
    batch = max(1, owner.batch_size(kwargs))
    images = []
    for start in range(0, len(labels), batch):
        part = slice(start, start + batch)
        request = SampleRequest(labels=labels[part], seeds=seeds[part],
                                ids=[f"tune/{i}" for i in range(start, start + len(labels[part]))])
        images += [to_metric_size(s.image, size, channels) for s in sampler.sample(request, **kwargs)]
    return np.stack(images)


def gather(calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], desc: str, unit: str) -> list[Any]:
    """Run `fn(*args)` for each call as a one-CPU Ray task, side by side; a bar shows rate and ETA."""
    import ray

    from jobs.report import _logged_call

    task = ray.remote(num_cpus=1)(_logged_call)
    refs = [task.remote(fn, *args) for fn, args in calls]
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    waiting = list(refs)
    with tqdm(total=len(refs), desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
              mininterval=0.5 if sys.stderr.isatty() else 10.0) as bar:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                results[position[ref]] = ray.get(ref)
                bar.update(1)
    return results


class Tuner:
    """One job's tune stage (`JobRunner.tune` drives it)."""

    def __init__(self, config: JobConfig, out: Path, class_names: list[str], usable: list[SourceRecord],
                 source: Any) -> None:
        if config.tune is None:
            raise ValueError("the config has no tune section")
        self.config, self.tune, self.out, self.class_names = config, config.tune, out, class_names
        self.usable, self.source = usable, source
        self.fit_records, self.validation = validation_split(usable, self.tune.validation, config.seed)
        if not self.validation:
            raise ConfigError(f"tune.validation: no class has two usable training records, so none can be held "
                              f"out to score the settings ({len(usable)} records)")
        self.settings = grid(self.tune.sample, self.tune.synthetic_share, self.tune.filter.axes())
        self.real = dict(Counter(int(r.label) for r in usable if r.label is not None))

    @property
    def path(self) -> Path:
        return self.out / TUNE_DIR / TUNE_FILE

    def saved(self) -> dict[str, Any] | None:
        """tune.json of this very config, if a run before this one wrote it."""
        if not self.path.is_file():
            return None
        stored = json.loads(self.path.read_text())
        return stored if stored.get("config_hash") == self.config.content_hash() else None

    def chosen_config(self, result: dict[str, Any]) -> JobConfig:
        return tuned_config(self.config, Setting.from_json(result["chosen"]), self.class_names, self.real)

    # -- what each setting needs -----------------------------------------------------------

    def step_counts(self, setting: Setting) -> dict[str, dict[int, int]]:
        """{step kind: {class: rows}} a setting's training mix takes from each step."""
        steps, _ = plan_steps(self.config)
        if setting.share is None:  # the quota's counts, as the job would make them
            return quota_for(self.config.quota, self.class_names, self.usable, steps, None).by_step
        fit_real = dict(Counter(int(r.label) for r in self.fit_records if r.label is not None))
        by_step, _ = split_quota(share_counts(fit_real, setting.share), steps, None, self.class_names)
        return by_step

    def gate(self, setting: Setting) -> tuple[dict[str, float | None], bool]:
        """The gate a setting applies: the config's filter, its tuned thresholds over it."""
        base = self.config.filter
        gate = {"min_realism": base.min_realism, "min_confidence": base.min_confidence} if base else {}
        return {**gate, **setting.gate}, bool(base and base.drop_near_copies)

    def needs_scores(self) -> bool:
        return any(value is not None for s in self.settings for value in self.gate(s)[0].values()) or \
            any(self.gate(s)[1] for s in self.settings)

    # -- the stage -------------------------------------------------------------------------

    def run(self, models: dict[str, Path], quality: dict[str, Any] | None) -> dict[str, Any]:
        """Score every setting; returns tune.json's content (also written)."""
        from augment.metrics.utility import classification_arm, classification_budget
        from augment.report.assemble import utility_seed
        from jobs.quality import load_real, load_scorer, subsample

        started = time.monotonic()
        if quality is None:
            raise ValueError("the tune stage needs the quality reference (its size and scorer)")
        size, channels = int(quality["size"]), int(quality["channels"])
        counts = [self.step_counts(s) for s in self.settings]
        pools = self.sample_pools(models, counts, size, channels)
        if self.needs_scores():
            scorer = load_scorer(quality)
            for pool in pools.values():
                pool.scores = scorer.score(pool.images, [int(c) for c in pool.labels])
        limit = self.config.report.max_per_source
        source = self.source
        real = load_real(source, subsample(self.fit_records, limit, self.config.seed, 3), size, channels)
        held = load_real(source, self.validation, size, channels)
        keep, hold = real.labels >= 0, held.labels >= 0
        real_images, real_labels = real.images[keep], real.labels[keep]
        validation = (held.images[hold], held.labels[hold])
        steps = self.tune.steps or self.config.report.utility.steps or self.config.report.extractor_steps
        budget = classification_budget(utility_seed(self.config.seed), steps=steps, input_size=size)

        mixes, calls, first_of = [], [], {}
        for number, (setting, by_step) in enumerate(zip(self.settings, counts)):
            chosen, dropped, parts = [], 0, []
            gate, near_copies = self.gate(setting)
            for kind, per_class in by_step.items():
                if not sum(per_class.values()):
                    continue
                pool = pools[(kind, self._values_key(kind, setting))]
                rows, lost = pick_rows(pool.labels, per_class, pool.scores, gate, near_copies)
                chosen.append((kind, pool.values, rows))
                dropped += lost
                parts.append((pool.images[rows], pool.labels[rows]))
            synthetic = Counter(int(c) for _, labels in parts for c in labels)
            key = tuple((kind, json.dumps(values, sort_keys=True), tuple(rows.tolist())) for kind, values, rows in chosen)
            if key not in first_of:  # the very same rows train once
                first_of[key] = len(calls)
                images = np.concatenate([real_images] + [p[0] for p in parts])
                labels = np.concatenate([real_labels] + [p[1] for p in parts])
                calls.append((classification_arm, (f"tune {number + 1}", images, labels, validation,
                                                   len(self.class_names), budget, None)))
            mixes.append({"setting": setting, "call": first_of[key], "dropped": dropped,
                          "synthetic": {self.class_names[c]: n for c, n in sorted(synthetic.items())},
                          "n_real": int(len(real_labels))})
        log.info("tune: %d settings (%d distinct training sets), validation %d images, %d steps each",
                 len(self.settings), len(calls), len(validation[1]), steps)
        scores = gather(calls, "tune: settings", "model")
        rows = []
        for number, mix in enumerate(mixes):
            score = scores[mix["call"]]
            same = next(i for i, m in enumerate(mixes) if m["call"] == mix["call"])
            rows.append({"setting": mix["setting"].to_json(), "accuracy": score["accuracy"],
                         "log_loss": score["log_loss"], "per_class": score["per_class"], "n_real": mix["n_real"],
                         "synthetic": mix["synthetic"], "n_synthetic": sum(mix["synthetic"].values()),
                         "dropped": mix["dropped"], "same_rows_as": same if same != number else None})
        order = ranking(rows)
        for rank, i in enumerate(order, start=1):
            rows[i]["rank"] = rank
        result = {
            "config_hash": self.config.content_hash(),
            "validation": {**records_digest(self.validation), "fraction": self.tune.validation,
                           "per_class": self._per_class(self.validation)},
            "fit_records": records_digest(self.fit_records),
            "budget": budget, "axes": self._axes(), "rows": rows, "chosen": rows[order[0]]["setting"],
            "chosen_index": order[0], "seconds": round(time.monotonic() - started, 1),
        }
        self._write(result)
        best = rows[order[0]]
        log.info("tune: chose %s (validation accuracy %.3f, log loss %.3f) of %d settings in %.0f s",
                 best["setting"]["label"], best["accuracy"], best["log_loss"], len(rows), result["seconds"])
        return result

    def sample_pools(self, models: dict[str, Path], counts: list[dict[str, dict[int, int]]], size: int,
                     channels: int) -> dict[tuple[str, str], Pool]:
        """{(step kind, its values as JSON): pool} for every combination a setting uses."""
        from jobs.registry import family_ref
        from jobs.runner import step_sample_kwargs

        wanted: dict[str, dict[int, int]] = {}
        for by_step in counts:
            for kind, per_class in by_step.items():
                for c, n in per_class.items():
                    wanted.setdefault(kind, {})[c] = max(wanted.get(kind, {}).get(c, 0), n)
        pools, calls = [], []
        for number, step in enumerate(self.config.generate):
            per_class = wanted.get(step.kind, {})
            if not sum(per_class.values()):
                continue
            if step.kind not in models:
                raise ValueError(f"tune: no model for generate[{number}] ({step.kind})")
            labels = [c for c in sorted(per_class) for _ in range(per_class[c])]
            seeds = [derive_seed(self.config.seed, POOL_STREAM, number, i) for i in range(len(labels))]
            fields = self.tune.sample.get(step.kind, {})
            for picked in itertools.product(*[list(dict.fromkeys(v)) for v in fields.values()]):
                values = dict(zip(fields, picked))
                kwargs = step_sample_kwargs(with_sample(step, values), self.class_names, f"generate[{number}]")
                pools.append(Pool(step.kind, values, np.array(labels, np.int64), np.zeros(0)))
                calls.append((sample_pool, (family_ref(step.family), str(models[step.kind]), kwargs, labels, seeds,
                                            size, channels)))
        for pool, images in zip(pools, gather(calls, "tune: pools", "pool")):
            pool.images = images
        return {(pool.kind, json.dumps(pool.values, sort_keys=True)): pool for pool in pools}

    # -- small helpers ---------------------------------------------------------------------

    def _values_key(self, kind: str, setting: Setting) -> str:
        return json.dumps(dict(setting.sample.get(kind, {})), sort_keys=True)

    def _per_class(self, records: list[SourceRecord]) -> dict[str, int]:
        found = Counter(int(r.label) for r in records if r.label is not None)
        return {self.class_names[c]: n for c, n in sorted(found.items())}

    def _axes(self) -> dict[str, list[Any]]:
        axes: dict[str, list[Any]] = {f"{kind}.{name}": list(values) for kind, fields in self.tune.sample.items()
                                      for name, values in fields.items()}
        if self.tune.synthetic_share is not None:
            axes["share"] = list(self.tune.synthetic_share)
        axes.update(self.tune.filter.axes())
        return axes

    def _write(self, result: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        partial.replace(self.path)  # whole or absent


def load_tuned(config: JobConfig, out: Path, class_names: list[str], usable: list[SourceRecord],
               source: Any) -> JobConfig:
    """The config a finished job made its rows with: `config` tuned by its tune.json (as is
    without a tune section)."""
    if config.tune is None:
        return config
    tuner = Tuner(config, out, class_names, usable, source)
    stored = tuner.saved()
    if stored is None:
        raise ConfigError(f"{tuner.path}: missing or made by another config; rerun the job to tune it")
    return tuner.chosen_config(stored)
