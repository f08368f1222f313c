"""A job on an existing two-node Ray cluster (`--address`) writes the same rows as the embedded Ray."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_command, cli_env, shard_rows

CONFIG = """
name: cluster
seed: 11
source: {kind: digits, image_size: 16}
quota: {per_class: {"0": 150, "1": 150, "2": 150, "3": 150, "4": 150, "5": 150, "6": 150, "7": 150, "8": 150, "9": 150}}
augment:
  transforms:
    - {name: Affine, p: 0.9, params: {rotate: [-10, 10]}}
output: {rows_per_shard: 100}
report: {enabled: false}  # the test compares rows; the report would train classifiers on 1-CPU nodes
execution: {num_workers: 2}
"""


@pytest.mark.slow
def test_two_node_cluster_matches_the_embedded_run(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    config = tmp_path / "cluster.yaml"
    config.write_text(CONFIG)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        on_cluster = subprocess.run(
            cli_command("run", str(config), "--out", str(tmp_path / "on_cluster"), "--address", cluster.address),
            env=cli_env(), capture_output=True, text=True, timeout=600,
        )
    finally:
        cluster.shutdown()
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]
    embedded = subprocess.run(cli_command("run", str(config), "--out", str(tmp_path / "embedded")),
                              env=cli_env(), capture_output=True, text=True, timeout=600)
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    assert shard_rows(tmp_path / "on_cluster" / "shards") == shard_rows(tmp_path / "embedded" / "shards")
    assert len(shard_rows(tmp_path / "on_cluster" / "shards")) == 1500
