"""Failpoints: kill the driver at a named commit point, for the crash tests and `benchmarks/chaos.py`.

Off unless `SYNTHAUG_FAILPOINT` is set to `POINT:HIT:COUNTER_FILE`: the HIT-th time any
process of the job (the driver or a Ray worker) reaches `failpoint(POINT)`, the driver is
killed with SIGKILL, as a power cut or the OOM killer would, and so is the process that got
there, so a worker cannot finish the step after it. Hits are counted in COUNTER_FILE (one
line per hit, under an flock) because the points are reached in several processes.

The points, in the order a job reaches them:
- `shard_written`: a shard's bytes are on disk under their temporary name, not yet renamed;
- `shards_published`: every shard is published, no manifest is written;
- `manifest_written`: after each manifest (`shards/`, then `holdout/`), before the job is complete.
"""

from __future__ import annotations

import fcntl
import os
import signal

ENV = "SYNTHAUG_FAILPOINT"
DRIVER_ENV = "SYNTHAUG_FAILPOINT_DRIVER"
POINTS = ("shard_written", "shards_published", "manifest_written")


def arm_driver() -> None:
    """Called by the driver before Ray starts, so workers (which inherit it) know whom to kill."""
    if os.environ.get(ENV):
        os.environ[DRIVER_ENV] = str(os.getpid())


def failpoint(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, hit, counter = spec.split(":", 2)
    if name not in POINTS:
        raise ValueError(f"{ENV}: unknown point {name!r}; one of {', '.join(POINTS)}")
    if name != point:
        return
    with open(counter, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        reached = len(handle.read().splitlines()) + 1
        handle.write(f"{point} {os.getpid()}\n")
        handle.flush()
    if reached != int(hit):
        return
    driver = int(os.environ.get(DRIVER_ENV, os.getpid()))
    if driver != os.getpid():
        os.kill(driver, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
