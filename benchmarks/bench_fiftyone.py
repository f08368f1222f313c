"""FiftyOne export speed: `synthaug fiftyone`'s export against a bare `dataset.add_samples`.

A classical job on the built-in digits (2,000 rows per class: 20,000 training rows plus the
359-row holdout, report off) is made once. Then, each in its own process (so each peak RSS
is its own) and in a private MongoDB (`augment.fiftyone_db`):

- service: `augment.fiftyone_export.export` into a new dataset: reads the shards, hashes
  every row, writes the media, builds the samples, adds them in batches, links parents;
- bare: the same samples built beforehand (media already on disk, not timed), then one
  `dataset.add_samples(samples)` into a new dataset: only FiftyOne's own insert is timed.

Prints rows/s of both, their ratio (service ÷ bare; aim ≥ 0.8), each arm's peak RSS, then the
rows/s of a re-export that finds nothing changed. Last line:
`rows=… service_rows_per_s=… bare_rows_per_s=… ratio=… service_peak_rss_gb=… bare_peak_rss_gb=… reexport_rows_per_s=…`.

    python benchmarks/bench_fiftyone.py [--per-class 2000] [--out runs/bench_fiftyone]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from augment.fiftyone_db import PrivateMongo  # noqa: E402


def make_job(out: Path, per_class: int) -> None:
    from jobs.config import parse_config
    from jobs.runner import run_job

    if (out / "shards" / "_manifest.json").is_file():
        return
    run_job(parse_config({
        "name": "bench-fiftyone", "seed": 0, "source": {"kind": "digits", "image_size": 16},
        "split": {"holdout": 0.2}, "quota": {"per_class": {str(c): per_class for c in range(10)}},
        "augment": {"transforms": [{"name": "Affine", "p": 1.0, "params": {"rotate": [-15, 15]}}]},
        "report": {"enabled": False}, "output": {"rows_per_shard": 1000}}), out, overwrite=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def arm(name: str, out: Path) -> dict[str, float]:
    """One arm in this process; returns its figures."""
    import fiftyone as fo

    from augment.fiftyone_export import MediaWriter, export, iter_rows, job_class_names, media_folder, to_sample

    dataset_name = f"bench-{name}"
    if fo.dataset_exists(dataset_name):
        fo.delete_dataset(dataset_name)
    if name == "service":
        # The bare arm's media are moved aside, not deleted: on ext4, creating thousands of files
        # while as many are still being freed is up to 10x slower, and a user's first export
        # writes into a new folder. They are deleted once the timing is done.
        aside = media_folder(out).with_name(media_folder(out).name + ".bare")
        shutil.rmtree(aside, ignore_errors=True)
        if media_folder(out).exists():
            media_folder(out).rename(aside)
        start = time.perf_counter()
        _, result = export(out, dataset_name)
        seconds = time.perf_counter() - start
        shutil.rmtree(aside, ignore_errors=True)
        again = time.perf_counter()
        _, second = export(out, dataset_name)
        return {"rows": result.samples, "seconds": seconds, "peak_rss_gb": peak_rss_gb(),
                "reexport_seconds": time.perf_counter() - again, "unchanged": second.unchanged}
    # The bare loop a user would write with the media on disk already: build the samples from
    # rows in memory, then one add_samples. Samples are built twice (once untimed, to write the
    # media and to know every field), so the timed loop builds exactly what the service does.
    class_names = job_class_names(out)
    media = MediaWriter(media_folder(out))
    items = list(iter_rows(out, True))
    for item in items:
        to_sample(fo, item, class_names, media)
    media.close()
    offline = NoWrites(media.folder)
    dataset = fo.Dataset(dataset_name)
    start = time.perf_counter()
    samples = [to_sample(fo, item, class_names, offline) for item in items]
    dataset.add_samples(samples, progress=False)
    return {"rows": len(dataset), "seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb()}


class NoWrites:
    """A MediaWriter stand-in that only names the files (they exist already)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, row: dict, split: str, layer: str, data: bytes) -> str:
        from augment.fiftyone_export import media_path

        return str(media_path(self.folder, row["id"], split, layer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_fiftyone")
    parser.add_argument("--arm", choices=["service", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    job = args.out / "job"
    if args.arm:
        print(json.dumps(arm(args.arm, job)))
        return
    make_job(job, args.per_class)
    mongo = PrivateMongo().start()  # the arms' own database, never the user's
    figures = {}
    try:
        for name in ("bare", "service"):  # the service arm deletes the media first: it writes them itself
            done = subprocess.run([sys.executable, __file__, "--arm", name, "--out", str(args.out)],
                                  env={**os.environ, **mongo.environ()}, capture_output=True, text=True, check=True)
            figures[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name}: {figures[name]}", flush=True)
    finally:
        mongo.stop()
    service, bare = figures["service"], figures["bare"]
    rows = service["rows"]
    service_rate, bare_rate = rows / service["seconds"], bare["rows"] / bare["seconds"]
    print(f"{rows} rows: service {service_rate:.0f} rows/s (reads shards, hashes rows, writes media, builds "
          f"samples), bare add_samples {bare_rate:.0f} rows/s; ratio {service_rate / bare_rate:.2f}")
    print(f"rows={rows} service_rows_per_s={service_rate:.0f} bare_rows_per_s={bare_rate:.0f} "
          f"ratio={service_rate / bare_rate:.2f} service_peak_rss_gb={service['peak_rss_gb']:.2f} "
          f"bare_peak_rss_gb={bare['peak_rss_gb']:.2f} reexport_rows_per_s={rows / service['reexport_seconds']:.0f}")


if __name__ == "__main__":
    main()
