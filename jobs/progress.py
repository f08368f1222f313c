"""The job's progress counter: a tiny actor that shard, scan and fit workers bump.

Its own module, importing nothing heavy: Ray imports the module of an actor's class in the
actor's process and in every process that receives a handle to it (the Write tasks, the
scan workers), and `jobs.workers` costs seconds (Ray Data, pydantic, the shard schema).
"""
from __future__ import annotations

import time
from typing import Any


class ProgressCounter:
    """A tiny actor that workers bump, so the driver can show a bar with rate and ETA; it also
    keeps the shards every attempt of which failed, and the nodes each stage ran on, for the
    driver to record. Start it with `start_progress_counter`."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        # (key, part) -> {attempt id: count} and the newest attempt id: a part (a shard, a scan
        # batch) Ray ran again counts its newest attempt only, whatever the lost one had added.
        self.parts: dict[tuple[str, str], dict[str, int]] = {}
        self.newest: dict[tuple[str, str], str] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        self.where: dict[str, set[str]] = {}
        self.started = time.monotonic()

    def add(self, key: str, n: int, part: str | None = None, attempt: str | None = None) -> None:
        """Add `n` to `key`; with `part` and `attempt`, to that attempt at the part, and a part's
        first count from a new attempt replaces the older attempts' counts."""
        if part is None or attempt is None:
            self.counts[key] = self.counts.get(key, 0) + n
            return
        attempts = self.parts.setdefault((key, part), {})
        if attempt not in attempts:
            self.newest[(key, part)] = attempt
        attempts[attempt] = attempts.get(attempt, 0) + n

    def get(self, key: str) -> int:
        parts = sum(self.parts[(k, part)][attempt] for (k, part), attempt in self.newest.items() if k == key)
        return self.counts.get(key, 0) + parts

    def fail(self, shard: str, cause: str, attempts: int) -> None:
        """A shard every attempt of which raised."""
        self.failed[shard] = {"shard": shard, "attempts": attempts, "cause": cause}

    def failures(self) -> list[dict[str, Any]]:
        return [self.failed[shard] for shard in sorted(self.failed)]

    def ran(self, stage: str, node: str | None, shard: str | None = None) -> None:
        """Work of `stage` ran on `node`; a `shard` named here was made, so it has not failed
        (an attempt lost with its actor may have said otherwise)."""
        if node:
            self.where.setdefault(stage, set()).add(node)
        if shard is not None:
            self.failed.pop(shard, None)

    def nodes(self, stage: str) -> list[str]:
        """The Ray node ids `stage` ran on, sorted."""
        return sorted(self.where.get(stage, ()))


def start_progress_counter() -> Any:
    """A `ProgressCounter` actor on the driver's node: it ends with the driver, never with a
    worker node the cluster loses (the driver polls it until the end of the job)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(ProgressCounter).options(scheduling_strategy=here).remote()


def current_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
