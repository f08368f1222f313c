"""Faults on a real multi-node Ray cluster on one machine (`tests/chaos.py`): a job run through
the CLI with `--address` survives a killed shard actor, a lost generation node, a killed Ray
Train worker and a lost training node. Every time it completes, its manifests list every row
id of an uninterrupted run exactly once, every listed shard reads back with its row count and
checksum, the rows are those of the uninterrupted run byte for byte, and afterwards the
surviving cluster's CPUs are all free again with no placement group left.

One cluster and one uninterrupted run serve the whole module; a scenario that removes a node
adds a fresh one after its checks, as an autoscaler would. Two quick tests check, without
Ray, what makes a retry safe to count and cheap: the progress actor counts a shard's newest
attempt only, and a shard worker loads a generator once for all the shards it makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from augment.sample import Sample
from jobs.progress import ProgressCounter
from jobs.workers import ShardWorker
from tests import chaos


@pytest.fixture(scope="module")
def cluster() -> Iterator[chaos.ChaosCluster]:
    with chaos.ChaosCluster() as running:
        yield running


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chaos.write_config(tmp_path_factory.mktemp("chaos"))


@pytest.fixture(scope="module")
def reference(cluster: chaos.ChaosCluster, config: Path) -> chaos.Outcome:
    return chaos.uninterrupted(cluster, config, config.parent / "reference")


def survived(result: chaos.Outcome) -> None:
    """The job completed and lost, repeated and damaged nothing; the cluster went idle."""
    assert result.completed, f"{result.done}; exit {result.returncode}:\n{result.stderr_tail}"
    assert result.lost == 0 and result.duplicates == 0 and result.listed == result.planned > 0, result.row()
    assert result.bad_shards == []
    assert result.same_rows, "the rows differ from the uninterrupted run's"
    assert result.idle.get("idle"), result.idle


@pytest.mark.slow
def test_generation_and_fitting_ran_on_more_than_one_node(reference: chaos.Outcome) -> None:
    assert reference.completed, reference.stderr_tail
    assert reference.duplicates == 0 and reference.bad_shards == [] and reference.idle.get("idle"), reference.row()
    assert len(reference.nodes["generate"]) >= 2, reference.nodes
    assert len(reference.nodes["fit"]) >= 2, reference.nodes


@pytest.mark.slow
def test_a_killed_shard_actor_is_restarted_and_its_shard_made_again(cluster: chaos.ChaosCluster, config: Path,
                                                                     reference: chaos.Outcome) -> None:
    result = chaos.kill_shard_worker(cluster, config, config.parent / "kill_shard_actor", reference.out)
    assert result.done.startswith("SIGKILL shard actor"), result.done
    survived(result)


@pytest.mark.slow
def test_a_lost_generation_node_is_survived(cluster: chaos.ChaosCluster, config: Path,
                                            reference: chaos.Outcome) -> None:
    result = chaos.remove_generation_node(cluster, config, config.parent / "remove_generation_node", reference.out)
    assert result.done.startswith("removed node"), result.done
    survived(result)


@pytest.mark.slow
def test_a_killed_train_worker_resumes_the_fit_from_its_last_state(cluster: chaos.ChaosCluster, config: Path,
                                                                    reference: chaos.Outcome) -> None:
    result = chaos.kill_train_worker(cluster, config, config.parent / "kill_train_worker", reference.out)
    assert result.done.startswith("SIGKILL Ray Train worker"), result.done
    survived(result)
    assert result.resumed_from is not None and result.resumed_from >= chaos.FIRST_STATE, result.stderr_tail


@pytest.mark.slow
def test_a_lost_training_node_resumes_the_fit_from_its_last_state(cluster: chaos.ChaosCluster, config: Path,
                                                                  reference: chaos.Outcome) -> None:
    result = chaos.remove_train_node(cluster, config, config.parent / "remove_train_node", reference.out)
    assert result.done.startswith("removed node"), result.done
    survived(result)
    assert result.resumed_from is not None and result.resumed_from >= chaos.FIRST_STATE, result.stderr_tail


def test_the_progress_counter_counts_a_retried_shard_once() -> None:
    counter = ProgressCounter()
    counter.add("generated", 30, "train-00001.parquet", "first")  # then the actor died mid-shard
    counter.add("generated", 100, "train-00002.parquet", "other")
    counter.add("generated", 60, "train-00001.parquet", "again")  # Ray ran the batch again
    counter.add("generated", 40, "train-00001.parquet", "again")
    counter.add("generated", 5, "train-00001.parquet", "first")  # late news from the lost attempt
    assert counter.get("generated") == 200
    counter.fail("train-00003.parquet", "RuntimeError: x", 3)  # recorded, then the actor died before returning
    counter.ran("generate", "node-a", "train-00003.parquet")  # the batch run again made it
    counter.ran("generate", "node-b", "train-00001.parquet")
    assert counter.failures() == [] and counter.nodes("generate") == ["node-a", "node-b"]


class _CountingFamily:
    """Stands in for a generator family: counts how often its weights are loaded."""

    request = "class"
    loads: list[Path] = []

    @classmethod
    def from_pretrained(cls, directory: Path, device: str = "cpu") -> _CountingFamily:
        cls.loads.append(directory)
        return cls()

    @staticmethod
    def batch_size(kwargs: dict) -> int:
        return 8

    checkpoint_sha256 = "0" * 64

    def sample(self, request: object) -> list[Sample]:
        return [Sample(id=i, image=np.full((8, 8, 1), label, np.uint8), label=label)
                for i, label in zip(request.ids, request.labels)]


def test_a_shard_worker_loads_a_generator_once_for_all_its_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model weights go to each actor once (in `_step`, kept for the actor's life), not once per batch."""
    from augment.sources.base import SourceRecord
    from jobs.config import QuotaConfig
    from jobs.plan import make_plan
    from jobs.quota import PlanStep

    monkeypatch.setattr("jobs.registry.resolve", lambda ref: _CountingFamily)
    monkeypatch.setattr(_CountingFamily, "loads", [])
    names = [str(c) for c in range(10)]
    records = [SourceRecord(f"digits/{i:04d}", i % 10, str(i)) for i in range(10)]
    plan = make_plan(class_names=names, train=records, holdout=[], quota=QuotaConfig(per_class={n: 12 for n in names}),
                     seed=3, rows_per_shard=20, include_real=False, steps=(PlanStep("toy", "class"),), augment=None)
    shards = [s for s in plan.train if s.generated]
    generators = {"toy": {"family": "toy", "device": "cpu", "dir": "/nowhere/model", "sample": {}}}
    worker = ShardWorker({"kind": "digits", "image_size": 8, "color": "gray"}, [], names, 1, generators=generators)
    rows = sum(worker({"spec": np.array([s.to_json()], dtype=object)}).num_rows for s in shards)
    assert len(shards) > 1 and rows == sum(s.rows for s in shards)
    assert _CountingFamily.loads == [Path("/nowhere/model")]
