"""Classical augmentation: the full service against a bare loop on the same data.

The service is `run_job` end to end (embedded Ray start, scan, plan, Ray Data actors,
Datasink, manifest). The bare loop is what a user would write by hand: the same
albumentations pipeline, PNG encoding, and one pyarrow write, in one process.
Both make the same rows from the same config. Last line: `service_ips=… bare_ips=… ratio=…`.

    python benchmarks/bench_classical.py [--per-class 3000] [--size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from augment.classical import ClassicalAugmenter
from augment.shards import samples_to_table
from jobs.config import JobConfig, parse_config
from jobs.plan import make_plan, split_records
from jobs.runner import run_job
from jobs.sources import build_source

TRANSFORMS = [
    {"name": "Affine", "p": 0.9, "params": {"rotate": [-12, 12], "scale": [0.9, 1.1], "translate_percent": [-0.06, 0.06]}},
    {"name": "RandomBrightnessContrast", "p": 0.5, "params": {"brightness_limit": 0.2, "contrast_limit": 0.2}},
    {"name": "GaussNoise", "p": 0.3, "params": {"std_range": [0.02, 0.06]}},
]


def make_config(per_class: int, size: int, workers: int) -> JobConfig:
    return parse_config({
        "name": "bench",
        "source": {"kind": "digits", "image_size": size},
        "split": {"holdout": 0.0},
        "quota": {"per_class": {str(c): per_class for c in range(10)}},
        "augment": {"transforms": TRANSFORMS},
        "output": {"rows_per_shard": 1000},
        "execution": {"num_workers": workers, "num_cpus": workers},
    })


def bare_loop(config: JobConfig, out: Path) -> int:
    """The hand-written equivalent: plan, load, augment, encode, one Parquet write."""
    source = build_source(config.source)
    records = source.records()
    train, holdout = split_records(records, config.split.holdout, config.seed)
    plan = make_plan(class_names=source.class_names, train=train, holdout=holdout, quota=config.quota,
                     seed=config.seed, rows_per_shard=10**9, include_real=True)
    augmenter = ClassicalAugmenter([t.as_spec() for t in config.augment.transforms])
    samples = []
    for shard in plan.train:
        for parent in shard.parents:
            real = source.load(parent.record)
            samples.append(real)
            samples += [augmenter(real, child_id=c.id, seed=c.seed) for c in parent.children]
    table = samples_to_table(samples, source.class_names, png_compress_level=config.output.png_compress_level)
    pq.write_table(table, out / "bare.parquet")
    return table.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = make_config(args.per_class, args.size, args.workers)
    scratch = Path(tempfile.mkdtemp(prefix="bench_classical_"))
    try:
        start = time.perf_counter()
        bare_rows = bare_loop(config, scratch)
        bare_s = time.perf_counter() - start

        start = time.perf_counter()
        result = run_job(config, scratch / "service")
        service_s = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.rows != bare_rows:
        raise SystemExit(f"row counts differ: service {result.rows}, bare {bare_rows}")
    service_ips, bare_ips = result.rows / service_s, bare_rows / bare_s
    print(f"rows={bare_rows} size={args.size} workers={args.workers}")
    print(f"bare loop: {bare_s:.1f}s  service (incl. Ray start): {service_s:.1f}s")
    print(f"service_ips={service_ips:.1f} bare_ips={bare_ips:.1f} ratio={service_ips / bare_ips:.3f}")


if __name__ == "__main__":
    main()
