"""Chaos on a real multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`).

A job runs through the CLI (`synthaug run --address`) while its generation workers, its
Ray Train workers, a whole worker node or the driver are killed; then what it published is
checked against an uninterrupted run of the same config. `tests/test_chaos.py` and
`benchmarks/chaos.py` run these scenarios.

The cluster: a head node without CPUs (the driver, its progress actor and Ray Train's
controller live there) and `WORKER_NODES` worker nodes of one CPU each, so the two shard
actors and the two Ray Train workers run on different nodes and a lost node leaves a CPU
to restart on. Only processes whose parent is one of this cluster's raylets are ever killed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from augment.shards import MANIFEST_NAME, read_manifest, verify_shards
from tests.conftest import cli_command, cli_env, shard_rows

WORKER_NODES = 3
OBJECT_STORE_BYTES = 128 * 2**20
SHARD_WORKER = "MapWorker(MapBatches(ShardWorker))"
TRAIN_WORKER = "RayTrainWorker"
KIND = "cgan"
FIRST_STATE = 20  # the config's checkpoint_every: a fit is killed once this state is saved

# One job for every scenario: a tiny cGAN fitted with DDP over two Ray Train workers (a state
# every 20 steps), then 34 shards of its samples and the real records, made by two actors.
CONFIG = f"""
name: chaos
seed: 7
source: {{kind: digits, image_size: 16, color: gray}}
split: {{holdout: 0.2}}
quota: {{per_class: {{{", ".join(f'"{c}": 300' for c in range(10))}}}}}
generate:
  - kind: {KIND}
    fit: {{steps: 120, batch_size: 16, g_channels: 8, d_channels: 8, z_dim: 8}}
    checkpoint_every: {FIRST_STATE}
    train_workers: 2
output: {{rows_per_shard: 100}}
report: {{enabled: false}}
execution: {{num_workers: 2}}
"""

_IDLE_PROBE = r"""
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
start = time.monotonic()
deadline = start + float(sys.argv[2])
while True:
    total, free = ray.cluster_resources().get("CPU", 0.0), ray.available_resources().get("CPU", 0.0)
    groups = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    if (free == total and not groups) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"cpu": total, "available": free, "placement_groups": len(groups),
                  "waited": round(time.monotonic() - start, 1)}))
"""


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, command line) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            parent = int(f.read().rpartition(b")")[2].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return parent, f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError, ValueError):
        return None


class ChaosCluster:
    """A head without CPUs plus `workers` one-CPU nodes; use as a context manager (shutdown
    in any case). Nodes removed here are killed outright, as a lost machine would be."""

    def __init__(self, workers: int = WORKER_NODES) -> None:
        from ray.cluster_utils import Cluster

        # Lost nodes are noticed within about 3 s (Ray's default is 5 x 3 s).
        system = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "object_store_memory": OBJECT_STORE_BYTES,
            "_system_config": system})
        try:
            for _ in range(workers):
                self.add_node()
            self.cluster.wait_for_nodes()
        except BaseException:
            self.cluster.shutdown()
            raise

    def __enter__(self) -> ChaosCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.shutdown()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self) -> Any:
        node = self.cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
        self.cluster.wait_for_nodes()
        return node

    def _raylets(self) -> dict[int, Any]:
        from ray._private import ray_constants

        nodes = [self.cluster.head_node, *self.cluster.worker_nodes]
        return {n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: n for n in nodes}

    def workers(self, title: str) -> list[tuple[int, Any, str]]:
        """(pid, node, command line) of this cluster's worker processes whose title starts with `title`."""
        raylets = self._raylets()
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                info = _stat(int(name))
                if info is not None and info[0] in raylets and info[1].startswith(f"ray::{title}"):
                    found.append((int(name), raylets[info[0]], info[1]))
        return found

    def remove_node(self, node: Any) -> None:
        """The node's raylet and everything it started killed at once (no drain)."""
        self.cluster.remove_node(node, allow_graceful=False)

    def idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Waits up to `timeout` s for every CPU to be free and no placement group left, from a
        driver of its own; returns what it saw last, with `idle` true if it got there."""
        probe = subprocess.run([sys.executable, "-c", _IDLE_PROBE, self.address, str(timeout)], env=cli_env(),
                               capture_output=True, text=True, timeout=timeout + 120)
        if probe.returncode != 0:
            return {"idle": False, "error": probe.stderr[-2000:]}
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        return {**seen, "idle": seen["available"] == seen["cpu"] and seen["placement_groups"] == 0}


@dataclass
class Job:
    """One CLI run against the cluster, its output in `out`, its streams in files next to it."""

    config: Path
    out: Path
    address: str
    process: subprocess.Popen | None = None
    started: float = 0.0

    def start(self) -> Job:
        self.started = time.monotonic()
        with open(f"{self.out}.stdout", "a") as stdout, open(f"{self.out}.stderr", "a") as stderr:
            self.process = subprocess.Popen(
                cli_command("run", str(self.config), "--out", str(self.out), "--address", self.address),
                env=cli_env(), stdout=stdout, stderr=stderr, start_new_session=True)
        return self

    def wait(self, timeout: float = 600) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def stderr(self) -> str:
        path = Path(f"{self.out}.stderr")
        return path.read_text(errors="replace") if path.exists() else ""

    def published(self) -> int:
        folder = self.out / "shards"
        return len(list(folder.glob("train-*.parquet"))) if folder.is_dir() else 0

    def generating(self) -> bool:
        """Some train shards published and the manifest not yet written."""
        return self.published() > 0 and not (self.out / "shards" / MANIFEST_NAME).exists()

    def fit_step(self) -> int:
        """The step of the fit's last saved state (0 before the first); -1 once its model is published."""
        folder = self.out / "checkpoints" / KIND
        if (folder / "model").is_dir():
            return -1
        latest = folder / "states" / "LATEST"
        try:
            return int(json.loads((folder / "states" / latest.read_text().strip() / "state.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            return 0


def wait_for(condition: Callable[[], bool], job: Job, timeout: float = 400, every: float = 0.05) -> bool:
    """Polls `condition` while the job runs; True once it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.running():
        if condition():
            return True
        time.sleep(every)
    return False


def listed_ids(folder: Path) -> list[str]:
    """Every row id of the shards the folder's manifest lists (a repeated id appears twice)."""
    ids: list[str] = []
    for entry in read_manifest(folder).shards:
        ids += pq.read_table(folder / entry.file, columns=["id"]).column("id").to_pylist()
    return ids


@dataclass
class Outcome:
    """What survived one scenario, against the uninterrupted reference run."""

    scenario: str
    out: Path
    done: str = ""  # what was done to the job, and when
    returncode: int | None = None
    completed: bool = False  # exit 0 and both manifests written
    planned: int = 0  # row ids the reference lists (train + holdout)
    listed: int = 0  # row ids the run's manifests list (a repeated one counted each time)
    lost: int = 0  # reference ids the run's manifests do not list (all of them if it did not complete)
    duplicates: int = 0  # ids listed more than once
    bad_shards: list[str] = field(default_factory=list)  # verify_shards: row count or checksum mismatches
    same_rows: bool | None = None  # (id, image bytes) of every row equal the reference's
    resumed_from: int | None = None  # the step a restarted fit continued from
    nodes: dict[str, list[str]] = field(default_factory=dict)  # stage -> Ray node ids (job.json)
    idle: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    stderr_tail: str = ""

    @property
    def injected(self) -> bool:
        """The fault happened while the job ran (the job did not end first)."""
        return not self.done.startswith("nothing")

    def row(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "completed": self.completed, "lost": self.lost,
                "duplicates": self.duplicates, "bad_shards": len(self.bad_shards), "same_rows": self.same_rows,
                "resumed_from": self.resumed_from, "idle": self.idle.get("idle"),
                "nodes": {k: len(v) for k, v in self.nodes.items()}, "seconds": round(self.seconds), "done": self.done}


RESUMED = re.compile(rf"fit {KIND}: resuming from step (\d+)")


def outcome(scenario: str, job: Job, returncode: int, reference: Path | None, done: str) -> Outcome:
    """Checks a finished run: manifests, shard checksums, ids against the reference's, nodes."""
    result = Outcome(scenario, job.out, done=done, returncode=returncode, seconds=time.monotonic() - job.started,
                     stderr_tail=job.stderr[-3000:])
    folders = [job.out / "shards", job.out / "holdout"]
    planned = {i for f in ("shards", "holdout") for i in listed_ids(reference / f)} if reference else set()
    result.planned = len(planned)
    result.completed = returncode == 0 and all((f / MANIFEST_NAME).is_file() for f in folders)
    resumed = [int(step) for step in RESUMED.findall(job.stderr)]
    result.resumed_from = max(resumed) if resumed else None
    job_file = job.out / "job.json"
    if job_file.is_file():
        stages = json.loads(job_file.read_text()).get("stages", {})
        result.nodes = {"generate": stages.get("generate", {}).get("nodes", []),
                        "fit": stages.get("fit", {}).get(KIND, {}).get("nodes", [])}
    if not result.completed:  # no manifest: a reader sees none of its rows
        result.lost = len(planned)
        return result
    ids = [i for f in folders for i in listed_ids(f)]
    result.listed = len(ids)
    result.duplicates = sum(n - 1 for n in Counter(ids).values() if n > 1)
    result.bad_shards = [problem for f in folders for problem in verify_shards(f)]
    if reference is None:
        result.planned = len(set(ids))
    else:
        result.lost = len(planned - set(ids))
        result.same_rows = all(shard_rows(job.out / f) == shard_rows(reference / f) for f in ("shards", "holdout"))
    return result


def write_config(folder: Path) -> Path:
    path = folder / "chaos.yaml"
    path.write_text(CONFIG)
    return path


def _pick(cluster: ChaosCluster, title: str, busy: bool) -> tuple[int, Any, str] | None:
    found = cluster.workers(title)
    if busy:  # one that is making a shard (Ray's title then names the method)
        found = [w for w in found if w[2].endswith(".submit")]
    return found[0] if found else None


def _busy_shard_actor(cluster: ChaosCluster, job: Job) -> tuple[int, Any, str] | None:
    """A shard actor in the middle of a shard (the first one seen), or None if the job ends first.
    Not "once a shard is published": shards are published by one writer behind the actors,
    which may have made every shard by the time the first one appears."""
    wait_for(lambda: _pick(cluster, SHARD_WORKER, busy=True) is not None, job, every=0.02)
    return _pick(cluster, SHARD_WORKER, busy=True)


# -- scenarios: each runs the job once and returns its Outcome ---------------------------------


def uninterrupted(cluster: ChaosCluster, config: Path, out: Path) -> Outcome:
    job = Job(config, out, cluster.address).start()
    result = outcome("uninterrupted", job, job.wait(), None, "nothing")
    result.idle = cluster.idle()
    return result


def kill_shard_worker(cluster: ChaosCluster, config: Path, out: Path, reference: Path) -> Outcome:
    """SIGKILL a shard actor's process while it makes a shard."""
    job = Job(config, out, cluster.address).start()
    victim = _busy_shard_actor(cluster, job)
    done = "nothing: the job ended first"
    if victim is not None:
        published = job.published()
        os.kill(victim[0], signal.SIGKILL)
        done = f"SIGKILL shard actor pid {victim[0]} ({victim[2]}) with {published} train shards published"
    result = outcome("kill shard actor", job, job.wait(), reference, done)
    result.idle = cluster.idle()
    return result


def remove_generation_node(cluster: ChaosCluster, config: Path, out: Path, reference: Path) -> Outcome:
    """Remove the node of a shard actor that is making a shard; a new node joins afterwards."""
    job = Job(config, out, cluster.address).start()
    victim = _busy_shard_actor(cluster, job)
    done = "nothing: the job ended first"
    if victim is not None:
        published = job.published()
        cluster.remove_node(victim[1])
        done = (f"removed node {victim[1].node_id[:8]} (shard actor pid {victim[0]} making a shard) with "
                f"{published} train shards published")
    result = outcome("remove generation node", job, job.wait(), reference, done)
    result.idle = cluster.idle()
    if victim is not None:
        cluster.add_node()  # the next scenario gets the same cluster shape
    return result


def _mid_fit(job: Job) -> bool:
    return job.fit_step() >= FIRST_STATE


def kill_train_worker(cluster: ChaosCluster, config: Path, out: Path, reference: Path) -> Outcome:
    """SIGKILL a Ray Train worker once the fit has saved a state, before it ends."""
    job = Job(config, out, cluster.address).start()
    victim = _pick(cluster, TRAIN_WORKER, busy=False) if wait_for(lambda: _mid_fit(job), job) else None
    done = "nothing: the fit ended first"
    if victim is not None and job.fit_step() > 0:
        step = job.fit_step()
        os.kill(victim[0], signal.SIGKILL)
        done = f"SIGKILL Ray Train worker pid {victim[0]} after the state of step {step}"
    result = outcome("kill train worker", job, job.wait(), reference, done)
    result.idle = cluster.idle()
    return result


def remove_train_node(cluster: ChaosCluster, config: Path, out: Path, reference: Path) -> Outcome:
    """Remove the node of a Ray Train worker once the fit has saved a state; a new node joins afterwards."""
    job = Job(config, out, cluster.address).start()
    victim = _pick(cluster, TRAIN_WORKER, busy=False) if wait_for(lambda: _mid_fit(job), job) else None
    done = "nothing: the fit ended first"
    if victim is not None and job.fit_step() > 0:
        step = job.fit_step()
        cluster.remove_node(victim[1])
        done = f"removed node {victim[1].node_id[:8]} (Ray Train worker pid {victim[0]}) after the state of step {step}"
    result = outcome("remove train node", job, job.wait(), reference, done)
    result.idle = cluster.idle()
    if victim is not None and "removed" in done:
        cluster.add_node()
    return result


def kill_driver(cluster: ChaosCluster, config: Path, out: Path, reference: Path) -> Outcome:
    """SIGKILL the driver (the CLI) while shards are made, then run the same command again."""
    job = Job(config, out, cluster.address).start()
    done = "nothing: the job ended first"
    if wait_for(job.generating, job):
        published = job.published()
        assert job.process is not None
        os.kill(job.process.pid, signal.SIGKILL)
        job.wait()
        done = f"SIGKILL driver after {published} train shards, then the same command again"
    started = job.started
    again = Job(config, out, cluster.address).start()
    again.started = started
    result = outcome("kill -9 driver + rerun", again, again.wait(), reference, done)
    result.idle = cluster.idle()
    return result
