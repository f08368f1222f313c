"""Run a job: scan the source, plan, generate and publish shards on Ray, write the manifest.

Resumable by construction: the plan is deterministic, shards are published one by one
under their planned names, and a rerun only makes the shards that are not there yet.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from augment.errors import ConfigError, reason_kind
from augment.failpoints import arm_driver, failpoint
from augment.shards import (
    MANIFEST_NAME,
    ShardEntry,
    planned_name,
    published_files,
    read_manifest,
    shard_entry_in,
    write_manifest,
)
from augment.store import Folder, is_remote
from augment.sources.base import SourceRecord
from jobs.config import JobConfig
from jobs.job_file import JOB_FILE, job_relative
from jobs.lock import LOCK_NAME, JobLock
from jobs.maps import map_frames
from jobs.plan import Plan, ShardSpec, job_split, make_plan, records_digest
from jobs.provenance import earlier_runs, provenance
from jobs.quota import plan_steps, precheck_quota
from jobs.remote import RemoteJob
from jobs.sources import build_source

log = logging.getLogger("synthaug")

REJECTED_FILE = "rejected.jsonl"
CONTACT_SHEET_FILE = "contact_sheet.png"
CONTACT_SHEET_FRAMES = 16
# Entries of a job folder that --overwrite may delete; anything else makes the folder foreign.
OWNED = {JOB_FILE, REJECTED_FILE, LOCK_NAME, CONTACT_SHEET_FILE, "shards", "holdout", "report", "checkpoints", "tune",
         "error.log"}


class JobFailed(RuntimeError):
    """The job started but could not finish (exit code 1)."""


@dataclass
class JobResult:
    out: Path | str  # the job folder, or its s3:// URL
    rows: int
    shards: int
    holdout_rows: int
    rejected: list[dict[str, str]] = field(default_factory=list)
    resumed_shards: int = 0
    seconds: float = 0.0
    class_counts: dict[str, int] = field(default_factory=dict)
    staging: Path | None = None  # the local folder (the job folder itself, or a store job's working copy)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def make_out(out: Path) -> None:
    """Create the job folder, or say plainly why it cannot be (a usage error, exit 2)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot create the job folder: {error.strerror or error}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: the job folder is not writable")


def prepare_out(out: Path, config: JobConfig, overwrite: bool, store: RemoteJob | None = None) -> dict[str, Any] | None:
    """Check that `out` (or the store prefix) is empty, foreign, or this same job; returns the
    previous job.json."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    where = store.url if store is not None else out
    entries = {p.name for p in out.iterdir()} - {LOCK_NAME}
    stored = store.entries() if store is not None else set()
    foreign = (stored or entries) - OWNED
    if foreign:
        raise ConfigError(
            f"{where}: not empty and not a synthaug job folder (found {', '.join(sorted(foreign)[:5])}); "
            "choose another --out"
        )
    job_file = out / JOB_FILE
    previous = json.loads(job_file.read_text()) if job_file.exists() else None
    # A job that never published a shard (e.g. it stopped on a config error) has nothing to
    # protect: a corrected config may take its folder without --overwrite.
    nothing_published = not store.published_any() if store is not None else \
        not any(any((out / d).glob("*.parquet")) for d in ("shards", "holdout"))
    if overwrite or (previous is not None and nothing_published
                     and previous.get("config_hash") != config.content_hash()):
        for name in entries:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if store is not None:
            store.wipe(OWNED)
        return None
    if previous is not None and previous.get("config_hash") != config.content_hash():
        raise ConfigError(
            f"{where}: holds a job with a different config (hash {previous.get('config_hash', '?')[:12]}, "
            f"this config {config.content_hash()[:12]}); pass --overwrite to replace it or choose another --out"
        )
    return previous


@dataclass
class ListedSource:
    """The source's records, split; listing needs no Ray, so layout errors come first."""

    class_names: list[str]
    records: list[SourceRecord]
    train: list[SourceRecord]
    holdout: list[SourceRecord]
    trusted: bool  # the source cannot yield bad records (rendered frames): no scan needed
    source: Any = None
    maps: dict[str, Any] = field(default_factory=dict)  # `maps: simulator` steps' frames (`jobs.maps.MapFrames`)

    def map_records(self) -> dict[str, list[SourceRecord]]:
        return {kind: frames.records() for kind, frames in self.maps.items()}


def list_source(config: JobConfig) -> ListedSource:
    """1. List the source (cheap: no pixels) and split it, seeded."""
    source = build_source(config.source, config.seed)
    records = source.records()
    if not records:
        raise ConfigError(f"source: the {config.source.kind} source has no records")
    train, holdout = job_split(records, config.split, config.seed)
    # Quota mistakes (unknown class, a size no job may hold) are found here, before Ray starts.
    steps, augment = plan_steps(config)
    maps = map_frames(config, source.class_names)
    precheck_quota(config.quota, source.class_names, train, len(holdout), include_real=config.output.include_real,
                   rows_per_shard=config.output.rows_per_shard, steps=steps, augment=augment,
                   maps={kind: frames.records() for kind, frames in maps.items()})
    for i, step in enumerate(config.generate):
        step_sample_kwargs(step, source.class_names, f"generate[{i}]")
    log.info("source: %d records, %d classes; split %d train / %d holdout",
             len(records), len(source.class_names), len(train), len(holdout))
    return ListedSource(source.class_names, records, train, holdout, bool(getattr(source, "trusted", False)), source,
                        maps)


@contextmanager
def _progress(counter: Any, key: str, total: int, desc: str) -> Iterator[None]:
    """A bar (rate, ETA) fed by polling the workers' progress actor from a thread."""
    import ray

    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0, disable=total == 0)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            bar.update(ray.get(counter.get.remote(key)) - bar.n)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.update(ray.get(counter.get.remote(key)) - bar.n)
        bar.close()


class JobRunner:
    def __init__(self, config: JobConfig, out: Path, store: RemoteJob | None = None,
                 command: list[str] | None = None) -> None:
        self.config = config
        self.out = out  # on a store: the local staging folder
        self.store = store
        self.command = command  # the CLI's command line; None for a library call
        self.job: dict[str, Any] = {}
        self._real: Any = None  # the report's real side, loaded once
        self.fit_records: list[SourceRecord] | None = None  # set by the tune stage: train less validation

    # -- bookkeeping ---------------------------------------------------------------------

    def _save_job(self, **updates: Any) -> None:
        self.job.update(updates)
        self.job["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_json_atomic(self.out / JOB_FILE, self.job)

    def _stage(self, name: str, **status: Any) -> None:
        self.job.setdefault("stages", {})[name] = status
        self._save_job()

    def shard_folders(self) -> dict[str, Folder]:
        """Where the shards are published: the job folder's, or the store prefix's."""
        if self.store is not None:
            return {split: self.store.shard_folder(split) for split in ("train", "holdout")}
        return {"train": Folder(self.out / "shards"), "holdout": Folder(self.out / "holdout")}

    # -- stages --------------------------------------------------------------------------

    def scan(self, records: list[SourceRecord], counter: Any) -> dict[str, dict[str, str]]:
        """Decode every record once on Ray; returns {record id: {path, reason}} of the bad ones."""
        import ray.data

        from jobs.ray_compat import actor_pool
        from jobs.workers import ScanWorker, record_columns

        execution = self.config.execution
        dataset = ray.data.from_items(record_columns(records)).map_batches(
            ScanWorker,
            fn_constructor_kwargs={"source_config": self.config.source.model_dump(mode="json"),
                                   "job_seed": self.config.seed, "progress": counter},
            batch_size=64,
            num_cpus=execution.num_cpus_per_worker,
            **actor_pool(max(1, min(execution.num_workers, len(records) // 64))),
        )
        with _progress(counter, "scanned", len(records), "scan"):
            rows = dataset.take_all()
        return {str(row["id"]): {"path": str(row["path"]), "reason": str(row["reason"])}
                for row in rows if row["reason"]}

    def fit(self, number: int, listed: ListedSource, rejected: dict[str, Any], class_names: list[str]
            ) -> dict[str, Any]:
        """Fit generate step `number` (or take its `from_pretrained`) on the usable training
        records (less the tuner's validation split); the workers' settings for it."""
        from augment.generators.family import DataShape
        from augment.licences import combine_licences
        from jobs.fit import fit_licence, fit_nodes, fit_step, target_images, training_data
        from jobs.registry import family_ref

        step = self.config.generate[number]
        family, where = step.family, f"generate[{number}] ({step.kind})"
        usable = self.fit_records if self.fit_records is not None else \
            [r for r in listed.train if r.id not in rejected]
        stages = self.job.setdefault("stages", {}).setdefault("fit", {})
        if step.from_pretrained is not None:
            model_dir = step.from_pretrained
            try:
                sampler = family.from_pretrained(model_dir)
            except (ValueError, OSError) as error:
                raise ConfigError(f"{where}.from_pretrained: {error}") from None
            if family.request != "parent" and list(sampler.class_names) != class_names:
                raise ConfigError(f"{where}.from_pretrained: {model_dir} was trained on the classes "
                                  f"{list(sampler.class_names)}, not the source's {class_names}")
            stages[step.kind] = {"status": "pretrained", "model": job_relative(model_dir, self.out)}
            self._save_job()
        else:
            data = training_data(listed.source, usable, family, where, self.config.source.licence)
            if family.needs_target:
                target, licence = target_images(step, self.config.seed, self.config.split.holdout, data.images,
                                                where)
                data = replace(data, target=target, licence=combine_licences([data.licence, licence]))
            height, width = data.images.shape[1:3]
            shape = DataShape(height, data.images.shape[3], tuple(class_names), None if width == height else width)
            try:  # hyperparameters that do not suit the data are the config's fault, said before Ray Train
                fitted = family(step.fit, shape, self.config.seed)
            except ValueError as error:
                raise ConfigError(f"{where}.fit: {error}") from None
            try:  # so is a source the family cannot learn from (CyCADA without labels or masks)
                fitted.check_data(data)
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
            folder = self.out / "checkpoints" / step.kind
            trained_on = records_digest(usable)  # which records the fit saw (a low-data run checks it)
            stages[step.kind] = {"status": "running", "folder": job_relative(folder, self.out),
                                 "trained_on": trained_on}
            self._save_job()
            model_dir = fit_step(step, family_ref=family_ref(family), shape=shape, seed=self.config.seed, data=data,
                                 sample_kwargs=step_sample_kwargs(step, class_names, where), folder=folder,
                                 num_gpus_per_worker=self.config.execution.num_gpus_per_worker,
                                 licence=fit_licence(step, data, where))
            stages[step.kind] = {"status": "done", "model": job_relative(model_dir, self.out),
                                 "nodes": fit_nodes(folder), "trained_on": trained_on}
            self._save_job()
            if self.store is not None:  # a resume on another machine samples from these weights
                self.store.push()
        spec: dict[str, Any] = {
            "family": family_ref(family), "dir": str(model_dir), "licence": step_licence(step, model_dir, where),
            "sample": step_sample_kwargs(step, class_names, where),
            "device": "cuda" if self.config.execution.num_gpus_per_worker > 0 else "cpu",
        }
        stages[step.kind]["licence"] = spec["licence"]  # what its rows record, for a person reading job.json
        self._save_job()
        if step.transforms:
            spec["map_transforms"] = [t.as_spec() for t in step.transforms]
        if step.simulator is not None:  # maps: simulator
            spec["maps"] = step.simulator.model_dump(mode="json")
        return spec

    def tuned(self, listed: ListedSource, rejected: dict[str, Any]) -> JobConfig:
        """The tune stage (`jobs.tune`): fit on the training records less a validation split,
        score the grid, and return the config with the chosen setting (a rerun reads tune.json)."""
        from jobs.tune import Tuner

        usable = [r for r in listed.train if r.id not in rejected]
        tuner = Tuner(self.config, self.out, listed.class_names, usable, listed.source)
        self.fit_records = tuner.fit_records
        result = tuner.saved()
        if result is None:
            self._stage("tune", status="running", validation=len(tuner.validation), settings=len(tuner.settings))
            models = {step.kind: Path(self.fit(i, listed, rejected, listed.class_names)["dir"])
                      for i, step in enumerate(self.config.generate)}
            result = tuner.run(models, self.prepare_quality(listed, rejected, listed.class_names))
            if self.store is not None:
                self.store.push()
        else:
            log.info("tune: reusing %s (chose %s)", tuner.path, result["chosen"]["label"])
        self._stage("tune", status="done", path=job_relative(tuner.path, self.out), chosen=result["chosen"],
                    settings=len(result["rows"]), validation=result["validation"], seconds=result["seconds"])
        return tuner.chosen_config(result)

    def real_side(self, listed: ListedSource, rejected: dict[str, Any]) -> Any:
        """The real train / holdout images the report compares against, at the metric size."""
        from jobs.quality import real_side

        if self._real is None:
            self._real = real_side(self.config, listed, rejected)
        return self._real

    def report(self, listed: ListedSource, rejected: dict[str, Any], class_names: list[str]) -> Path | None:
        """Metrics of the published shards against the real side; report.json + report.html."""
        from augment.report.tune import tune_summary
        from jobs.adaptation import adaptation_report
        from jobs.quality import prepare_reference
        from jobs.report import build_report, write_report
        from jobs.sweep import model_dir
        from jobs.tune import TUNE_DIR, TUNE_FILE

        self._stage("report", status="running")
        try:
            real = self.real_side(listed, rejected)
        except ValueError as error:
            log.warning("report skipped: %s", error)
            self._stage("report", status="skipped", reason=str(error))
            return None
        # Reuses the saved reference when it was made with these settings, else remakes it.
        quality = prepare_reference(self.config, self.out, real.train, real.holdout, len(class_names),
                                    real.channels, real.size, listed=listed, rejected=rejected)
        report, synthetic = build_report(self.config, self.out, real, quality, class_names)
        # From the config and the folder, not job.json: a rerun that fits nothing still finds them.
        models = {step.kind: folder for step in self.config.generate
                  if (folder := model_dir(step, self.out)) is not None}
        report["adaptation"] = adaptation_report(self.config, models, class_names)
        report["tune"] = tune_summary(self.out / TUNE_DIR / TUNE_FILE, class_names)
        path = write_report(report, self.out, real, synthetic, quality, self.config.report.grid_per_class)
        self._stage("report", status="done", path=job_relative(path, self.out), seconds=report["seconds"])
        log.info("report: %s", path.with_name("report.html"))
        for tag, lines in report["verdicts"].items():
            if "overall" in lines:
                log.info("report: %s — %s", tag, lines["overall"]["line"])
        return path

    def prepare_quality(self, listed: ListedSource, rejected: dict[str, Any], class_names: list[str]
                        ) -> dict[str, Any]:
        """Domain classifier + real reference features, so workers can score rows."""
        from jobs.quality import prepare_reference

        self._stage("quality", status="running")
        real = self.real_side(listed, rejected)
        quality = prepare_reference(self.config, self.out, real.train, real.holdout, len(class_names),
                                    real.channels, real.size, listed=listed, rejected=rejected)
        self._stage("quality", status="done", folder=job_relative(quality["dir"], self.out),
                    features=quality["kinds"])
        return quality

    def generate(self, pending: list[ShardSpec], plan: Plan, counter: Any,
                 generators: dict[str, dict[str, Any]] | None = None,
                 quality: dict[str, Any] | None = None) -> list[ShardEntry]:
        import ray.data

        from jobs.datasink import ShardDatasink
        from jobs.ray_compat import actor_pool
        from jobs.workers import ShardWorker

        execution = self.config.execution
        folders = self.shard_folders()
        sink = ShardDatasink(
            out_dirs={s.file: folders[s.split].url for s in pending},
            expected_rows={s.file: s.rows for s in pending},
            class_names=plan.class_names,
            progress=counter,
            fs=self.store.fs if self.store is not None else None,
        )
        # Biggest shards first keeps the actors busy to the end.
        specs = [{"spec": s.to_json()} for s in sorted(pending, key=lambda s: -s.rows)]
        dataset = ray.data.from_items(specs, override_num_blocks=len(specs)).map_batches(
            ShardWorker,
            fn_constructor_kwargs={
                "source_config": self.config.source.model_dump(mode="json"),
                "transforms": [t.as_spec() for t in self.config.augment.transforms] if self.config.augment else [],
                "class_names": plan.class_names,
                "png_compress_level": self.config.output.png_compress_level,
                "job_seed": self.config.seed,
                "generators": generators,
                "quality": quality,
                "progress": counter,  # the workers bump it per record, so the bar moves
                "max_retries": execution.max_retries,
            },
            batch_size=1,
            num_cpus=execution.num_cpus_per_worker,
            num_gpus=execution.num_gpus_per_worker or None,
            **actor_pool(min(execution.num_workers, len(specs))),
        )
        total = sum(s.rows for s in pending)
        with _progress(counter, "generated", total, "generate"):
            # Writing is light next to augmentation: one writer on a fraction of a CPU keeps
            # it off the actors' cores without starting a worker process per task.
            dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=1)
        self._stage("generate", nodes=ray.get(counter.nodes.remote("generate")))  # Ray node ids it ran on
        return sink.published

    def _contact_sheet(self, shard: Path, class_names: list[str]) -> None:
        """Frames with their masks and boxes, next to the shards, for a person to look at."""
        import pyarrow.parquet as pq

        from augment.shards import table_to_samples
        from simulators.contact_sheet import write_contact_sheet

        samples = table_to_samples(pq.read_table(shard).slice(0, CONTACT_SHEET_FRAMES))
        path = write_contact_sheet(samples, class_names, self.out / CONTACT_SHEET_FILE)
        log.info("contact sheet: %s", path)

    # -- the whole job -------------------------------------------------------------------

    def run(self, previous: dict[str, Any] | None, listed: ListedSource) -> JobResult:
        import ray

        from jobs.progress import start_progress_counter

        started = time.monotonic()
        config = self.config
        self.job = {
            "config": config.model_dump(mode="json"),
            "config_hash": config.content_hash(),
            **provenance(self.command),
            "earlier_runs": earlier_runs(previous),
            "status": "running",
            "created": (previous or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "runs": int((previous or {}).get("runs", 0)) + 1,
        }
        self._save_job()
        records, train, holdout = listed.records, listed.train, listed.holdout

        counter = start_progress_counter()  # on the driver's node: outlives any worker node

        # 2. Decode everything once; bad records are skipped and recorded.
        rejected = {} if listed.trusted else self.scan(records, counter)
        rejected_rows = [{"id": rid, **why} for rid, why in sorted(rejected.items())]
        with open(self.out / REJECTED_FILE, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rejected_rows)
        self._stage("scan", records=len(records), rejected=len(rejected))
        if not any(r.id not in rejected for r in train):
            raise ConfigError(
                f"source: none of the {len(train)} training records is usable, nothing to write; "
                f"{summarize_rejections(rejected_rows)}")
        if config.tune is not None:  # the rows are planned and made with the chosen setting
            config = self.config = self.tuned(listed, rejected)

        # 3. Plan shards over the usable records.
        steps, augment = plan_steps(config)
        plan = make_plan(
            class_names=listed.class_names,
            train=[r for r in train if r.id not in rejected],
            holdout=[r for r in holdout if r.id not in rejected],
            quota=config.quota,
            seed=config.seed,
            rows_per_shard=config.output.rows_per_shard,
            include_real=config.output.include_real,
            steps=steps,
            augment=augment,
            maps=listed.map_records(),
        )

        # 4. Keep published shards, make the rest.
        folders = self.shard_folders()
        from jobs.datasink import remove_stale_temporaries

        for folder in folders.values():
            if not folder.remote:
                Path(folder.path).mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(Path(folder.path))
            folder.delete(MANIFEST_NAME)  # from here until the job completes, readers see nothing
        every = plan.train + plan.holdout
        published = {split: published_files(folder) for split, folder in folders.items()}
        done = [s for s in every if s.file in published[s.split]]
        pending = [s for s in every if s.file not in published[s.split]]
        if done:
            log.info("resuming: %d of %d shards already published", len(done), len(every))
        self._stage("shards", planned=len(every), published=len(done))
        # Fit (or load) the steps whose rows are still to make, in config order.
        needed = {run.generator for s in pending for run in s.generated.runs} | \
                 {m.kind for s in pending for p in s.parents for m in p.mapped if len(m.rows)}
        generators = {step.kind: self.fit(i, listed, rejected, plan.class_names)
                      for i, step in enumerate(config.generate) if step.kind in needed}
        # Synthetic rows are scored (and filtered) before their shard is published.
        makes_synthetic = any(s.generated or any(p.children or p.mapped for p in s.parents) for s in pending)
        gate = config.filter is not None and config.filter.active
        quality = None
        if makes_synthetic and (config.report.enabled or gate):
            quality = self.prepare_quality(listed, rejected, plan.class_names)
        made = self.generate(pending, plan, counter, generators, quality) if pending else []
        failed = ray.get(counter.failures.remote())
        if failed:
            self._save_job(failed_shards=failed)
            causes = "; ".join(f"{f['shard']}: {f['cause']}" for f in failed[:3])
            raise JobFailed(f"{len(failed)} of {len(every)} shards failed after {failed[0]['attempts']} attempts each "
                            f"(execution.max_retries = {config.execution.max_retries}); the others are published "
                            f"and a rerun of the same command makes only these. {causes}")
        published = {split: published_files(folder) for split, folder in folders.items()}
        missing = [s.file for s in every if s.file not in published[s.split]]
        if missing:
            raise JobFailed(f"{len(missing)} shards were not published: {', '.join(missing[:5])}")
        failpoint("shards_published")

        # 5. The manifest comes last: it is the only truth of what exists. A shard made in this
        # run is listed as its writer reported it (on a store: the attempt that returned).
        reported = {planned_name(entry.file): entry for entry in made}
        for split, folder in folders.items():
            entries = [reported.get(s.file) or shard_entry_in(folder, published[split][s.file])
                       for s in every if s.split == split]
            write_manifest(folder, entries, plan.class_names,
                           extra={"job": config.name, "config_hash": self.job["config_hash"], "split": split})
            failpoint("manifest_written")
            if folder.remote:  # attempts no manifest lists: retried or cut-short writers' objects
                listed = {entry.file for entry in entries}
                for name in folder.names():
                    if name.endswith(".parquet") and name not in listed:
                        folder.delete(name)
        self._stage("shards", planned=len(every), published=len(every))
        if self.store is not None:  # the report and the contact sheet read a local copy
            self.store.mirror_shards()
        if config.source.kind in ("simulator", "external") and every:
            local = self.out / ("shards" if every[0].split == "train" else "holdout")
            self._contact_sheet(local / read_manifest(local).shards[0].file, plan.class_names)
        # 6. The report reads what was published; it never changes a shard.
        if config.report.enabled:
            self.report(listed, rejected, plan.class_names)
        train_rows = sum(s.rows for s in plan.train)
        holdout_rows = sum(s.rows for s in plan.holdout)
        self._save_job(status="complete")
        if self.store is not None:
            self.store.push()
        return JobResult(
            out=self.store.url if self.store is not None else self.out,
            staging=self.out,
            rows=train_rows,
            shards=len(plan.train),
            holdout_rows=holdout_rows,
            rejected=rejected_rows,
            resumed_shards=len(done),
            seconds=time.monotonic() - started,
            class_counts=plan.expected_counts(),
        )


def _init_ray_keeping_sigterm(address: str | None, num_cpus: int | None) -> bool:
    """`init_ray`, then give SIGTERM back to Python: Ray's core worker installs a C++
    handler in the driver that aborts the process, which would leave the job lock and a
    "running" job.json behind instead of unwinding like Ctrl-C."""
    from jobs.ray_compat import init_ray

    handler = signal.getsignal(signal.SIGTERM)
    started = init_ray(address, num_cpus)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    return started


def run_job(config: JobConfig, out: Path | str, *, address: str | None = None,
            overwrite: bool = False, command: list[str] | None = None) -> JobResult:
    """Run `config` into `out`, a folder or an `s3://bucket/prefix` (resuming if it holds the same job);
    `command`: the command line that asked for it, recorded in job.json (None: a library call)."""
    from jobs.ray_compat import quiet_data_context

    store = None
    if is_remote(out):
        storage = config.execution.storage
        store = RemoteJob(str(out), storage.endpoint_url, storage.region)
        store.check_reachable()
        out = store.staging
    out = Path(out).resolve()
    make_out(out)
    with JobLock(out), store or nullcontext():
        if store is not None:
            store.pull()
        previous = prepare_out(out, config, overwrite, store)
        listed = list_source(config)
        runner = JobRunner(config, out, store, command)
        arm_driver()
        started_ray = _init_ray_keeping_sigterm(address, config.execution.num_cpus)
        quiet_data_context()
        try:
            return runner.run(previous, listed)
        except BaseException as error:
            if runner.job:
                status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                runner._save_job(status=status, error=f"{type(error).__name__}: {error}"[:2000])
                if store is not None:
                    store.push()
            raise
        finally:
            if started_ray:
                import ray

                ray.shutdown()


def step_sample_kwargs(step: Any, class_names: list[str], where: str) -> dict[str, Any]:
    """The step's sampler keyword arguments, or a ConfigError naming the step."""
    try:
        return step.family.sample_kwargs(step.sample, class_names)
    except ValueError as error:
        raise ConfigError(f"{where}.sample: {error}") from None


def step_licence(step: Any, model_dir: Path, where: str) -> str:
    """The licence of a step's rows: its `licence:`, else the one its checkpoint names (a fitted
    model's: its training data's), else `unknown`, said in a warning (never guessed)."""
    from augment.generators.checkpoint_licence import checkpoint_licence
    from augment.licences import UNKNOWN

    if step.licence is not None:
        return step.licence
    try:
        found = checkpoint_licence(model_dir)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    if found is None:
        log.warning("%s: %s names no licence; its rows record %r (set `licence:` on the step to name it)",
                    where, model_dir, UNKNOWN)
    return found or UNKNOWN


def summarize_rejections(rejected: list[dict[str, str]]) -> str:
    """One line: how many records were rejected, grouped by the kind of reason."""
    if not rejected:
        return "rejected: none"
    # Grouped by kind, not by raw text: "annotation 1: ..." and "annotation 2: ..." are one kind.
    reasons = Counter(reason_kind(row["reason"]) for row in rejected)
    parts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common(4))
    return f"rejected {len(rejected)} records ({parts}); see {REJECTED_FILE}"


def report_job(out: Path | str, *, address: str | None = None) -> Path | None:
    """Recompute OUT/report/ for the shards a finished job published (they stay untouched);
    `out` is a job folder or an s3:// prefix (whose report/ is replaced)."""
    from jobs.config import parse_config
    from jobs.ray_compat import quiet_data_context
    from jobs.tune import load_tuned

    store = RemoteJob(str(out)) if is_remote(out) else None
    if store is not None:
        store.check_reachable()
        if not store.root.exists(JOB_FILE):
            raise ConfigError(f"{out}: no {JOB_FILE}; not a synthaug job prefix")
        out = store.staging
    out = Path(out).resolve()
    job_file = out / JOB_FILE
    if store is None and not job_file.is_file():
        raise ConfigError(f"{out}: no {JOB_FILE}; not a synthaug job folder")
    with JobLock(out) if store is None else store:
        if store is not None:
            store.pull()
            store.mirror_shards()
        previous = json.loads(job_file.read_text())
        if previous.get("status") != "complete":
            raise ConfigError(f"{store.url if store else out}: the job is {previous.get('status', 'unknown')!r}, "
                              "not complete; run it to the end first")
        config = parse_config(previous["config"], where=str(job_file))
        listed = list_source(config)
        rejected = {}
        if (out / REJECTED_FILE).is_file():
            rows = [json.loads(line) for line in (out / REJECTED_FILE).read_text().splitlines() if line.strip()]
            rejected = {row["id"]: row for row in rows}
        # The report describes the rows as they were made: with the tuner's chosen setting.
        config = load_tuned(config, out, listed.class_names, [r for r in listed.train if r.id not in rejected],
                            listed.source)
        runner = JobRunner(config, out, store)
        runner.job = previous
        started_ray = _init_ray_keeping_sigterm(address, config.execution.num_cpus)
        quiet_data_context()
        try:
            path = runner.report(listed, rejected, listed.class_names)
            if store is not None:
                store.push()
            return path
        finally:
            if started_ray:
                import ray

                ray.shutdown()
