"""Load: a 100,000-row classical job streams, and the driver's memory stays bounded.

The job is the built-in `digits` source at 32×32, classical augmentation (Affine,
RandomBrightnessContrast, GaussNoise as in configs/quickstart.yaml) up to `--rows`
training rows in all (`per_class` = rows / 10 for each of the 10 classes), the default
`output.rows_per_shard`, on the embedded local Ray, run through `jobs.runner.run_job` in
this process, so this process *is* the driver (Ray's own daemons and the shard workers
are other processes and do not count). The report stage is off (`report: {enabled:
false}`): it reads the published shards back and would dominate the time and the memory
being measured; the holdout split is kept as in a normal job.

- first_shard_s: seconds from calling `run_job` (Ray start included) to the first
  `shards/train-*.parquet` appearing; a thread polls the folder every 0.1 s.
- total_s: the whole `run_job` call (Ray start and shutdown included).
- driver_peak_rss_gb: `getrusage(RUSAGE_SELF).ru_maxrss` after the job (this process's
  peak resident set, imports included); `driver_base_rss_gb` is the same before the job.
- driver_rss_first_shard_gb: this process's resident set when the first shard appeared;
  next to the peak it shows whether the driver grows while the shards stream.
- ray_peak_pss_gb: the largest sum, sampled every second, of the proportional set size
  (shared pages split between the processes that map them, so the object store counts
  once) of this process's descendants: the embedded Ray's daemons and workers. Not the
  driver's memory; it shows whether the rest of the job stays bounded too.

Last line: `rows=… first_shard_s=… total_s=… driver_peak_rss_gb=… …`. Linux only (/proc).
Timings depend on what else the machine runs; the memory figures hardly do.

    python benchmarks/bench_load.py [--rows 100000] [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from jobs.config import JobConfig, parse_config
from jobs.runner import run_job

TRANSFORMS = [
    {"name": "Affine", "p": 0.9, "params": {"rotate": [-12, 12], "scale": [0.9, 1.1], "translate_percent": [-0.06, 0.06]}},
    {"name": "RandomBrightnessContrast", "p": 0.5, "params": {"brightness_limit": 0.2, "contrast_limit": 0.2}},
    {"name": "GaussNoise", "p": 0.3, "params": {"std_range": [0.02, 0.06]}},
]
CLASSES = 10
GB = 1024**3


def make_config(rows: int, workers: int) -> JobConfig:
    return parse_config({
        "name": "bench_load",
        "source": {"kind": "digits", "image_size": 32},
        "quota": {"per_class": {str(c): rows // CLASSES for c in range(CLASSES)}},
        "augment": {"transforms": TRANSFORMS},
        "report": {"enabled": False},
        "execution": {"num_workers": workers},
    })


def peak_rss_gb() -> float:
    """This process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def rss_gb() -> float:
    """This process's resident set now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / GB


def descendants_pss_gb() -> float:
    """Summed proportional set size of this process's descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    parents[int(name)] = int(handle.read().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue
    family, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - family
        family |= frontier
    kib = 0
    for pid in family:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                kib += next((int(line.split()[1]) for line in handle if line.startswith("Pss:")), 0)
        except OSError:
            continue
    return kib * 1024 / GB


class ShardWatch:
    """Polls from a thread: when the first `train-*.parquet` appears in `folder` (and this
    process's RSS then), and, every second, the memory of the Ray processes under this one."""

    def __init__(self, folder: Path, start: float, interval: float = 0.1) -> None:
        self.folder, self.start, self.interval = folder, start, interval
        self.first_s: float | None = None
        self.rss_first_gb: float | None = None
        self.ray_peak_gb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ShardWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval):
            if self.first_s is None and self.folder.is_dir() and any(self.folder.glob("train-*.parquet")):
                self.first_s = time.perf_counter() - self.start
                self.rss_first_gb = rss_gb()
            if tick % round(1 / self.interval) == 0:
                self.ray_peak_gb = max(self.ray_peak_gb, descendants_pss_gb())
            tick += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="training rows in all (real + augmented)")
    parser.add_argument("--workers", type=int, default=2, help="execution.num_workers")
    parser.add_argument("--keep", type=Path, default=None, help="write the job here and keep it (default: a "
                                                                 "temporary folder, removed afterwards)")
    args = parser.parse_args()
    if args.rows < CLASSES:
        parser.error(f"--rows must be at least {CLASSES}")
    config = make_config(args.rows, args.workers)
    scratch = None if args.keep else Path(tempfile.mkdtemp(prefix="bench_load_"))
    out = args.keep or scratch / "job"
    base_gb = peak_rss_gb()
    try:
        start = time.perf_counter()
        with ShardWatch(out / "shards", start) as watch:
            result = run_job(config, out, overwrite=True)
        total_s = time.perf_counter() - start
        peak_gb = peak_rss_gb()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    first_s = float("nan") if watch.first_s is None else watch.first_s
    rss_first = float("nan") if watch.rss_first_gb is None else watch.rss_first_gb
    print(f"{result.rows} training rows in {result.shards} shards (+{result.holdout_rows} holdout rows), "
          f"{args.workers} workers; first shard after {first_s:.1f}s of {total_s:.1f}s "
          f"({first_s / total_s:.0%}); job after Ray start {result.seconds:.1f}s")
    print(f"rows={result.rows} shards={result.shards} first_shard_s={first_s:.1f} total_s={total_s:.1f} "
          f"rows_per_s={result.rows / total_s:.0f} driver_peak_rss_gb={peak_gb:.2f} driver_base_rss_gb={base_gb:.2f} "
          f"driver_rss_first_shard_gb={rss_first:.2f} ray_peak_pss_gb={watch.ray_peak_gb:.2f}")


if __name__ == "__main__":
    main()
