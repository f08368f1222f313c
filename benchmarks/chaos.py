"""Chaos runs on a real multi-node Ray cluster on this machine: what survives.

Starts a `ray.cluster_utils.Cluster` (a head without CPUs and three one-CPU worker nodes),
runs the job of `tests/chaos.py` through the CLI (`--address`) once uninterrupted, as the
reference, then once per scenario and round:

  kill shard actor        SIGKILL a shard actor's process while it makes a shard
  remove generation node  remove (kill) the node of a busy shard actor; a new node joins after
  kill train worker       SIGKILL a Ray Train worker once the fit has saved a state
  remove train node       remove the node of a Ray Train worker once the fit has saved a state
  kill -9 driver + rerun  SIGKILL the CLI while shards are made, then the same command again

and prints a table of what survived. The last line:
`runs=N completed=N lost_rows=N duplicate_rows=N`, over the fault runs (not the reference):
lost rows are the reference's row ids a run's manifests do not list (all of them when a run
did not complete), duplicate rows the ids listed more than once.

    python benchmarks/chaos.py [--rounds 1] [--scenarios kill_shard_worker ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import chaos  # noqa: E402

SCENARIOS = {
    "kill_shard_worker": chaos.kill_shard_worker,
    "remove_generation_node": chaos.remove_generation_node,
    "kill_train_worker": chaos.kill_train_worker,
    "remove_train_node": chaos.remove_train_node,
    "kill_driver": chaos.kill_driver,
}
COLUMNS = ("scenario", "completed", "listed", "lost", "duplicates", "bad_shards", "same_rows", "resumed_from",
           "idle", "generate_nodes", "fit_nodes", "seconds")


def table_row(result: chaos.Outcome) -> list[str]:
    values = {
        "scenario": result.scenario, "completed": result.completed, "listed": result.listed,
        "lost": result.lost, "duplicates": result.duplicates, "bad_shards": len(result.bad_shards),
        "same_rows": "-" if result.same_rows is None else result.same_rows,
        "resumed_from": "-" if result.resumed_from is None else result.resumed_from,
        "idle": result.idle.get("idle"), "generate_nodes": len(result.nodes.get("generate", [])),
        "fit_nodes": len(result.nodes.get("fit", [])), "seconds": f"{result.seconds:.0f}",
    }
    return [str(values[c]) for c in COLUMNS]


def print_table(results: list[chaos.Outcome]) -> None:
    rows = [list(COLUMNS)] + [table_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    print()
    for result in results:
        print(f"{result.scenario}: {result.done}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="times each scenario runs (default 1)")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=None, help="folder for the job folders (default: a temporary one)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="synthaug_chaos_"))
    root.mkdir(parents=True, exist_ok=True)
    config = chaos.write_config(root)
    started = time.monotonic()
    results: list[chaos.Outcome] = []
    with chaos.ChaosCluster() as cluster:
        reference = chaos.uninterrupted(cluster, config, root / "reference")
        print(f"reference: completed={reference.completed} rows={reference.listed} "
              f"nodes generate={len(reference.nodes.get('generate', []))} fit={len(reference.nodes.get('fit', []))} "
              f"({reference.seconds:.0f} s)", flush=True)
        if not reference.completed:
            sys.exit(f"the uninterrupted run failed (exit {reference.returncode}):\n{reference.stderr_tail}")
        for round_ in range(args.rounds):
            for name in args.scenarios:
                result = SCENARIOS[name](cluster, config, root / f"{name}-{round_}", reference.out)
                results.append(result)
                print(f"  {result.scenario}: completed={result.completed} lost={result.lost} "
                      f"duplicates={result.duplicates} ({result.seconds:.0f} s) — {result.done}", flush=True)
    print()
    print(f"job folders under {root}; {time.monotonic() - started:.0f} s in all")
    print_table([reference, *results])
    missed = [r.scenario for r in results if not r.injected]
    if missed:
        print(f"fault not injected (the job ended first) in: {', '.join(missed)}")
    print(f"runs={len(results)} completed={sum(r.completed for r in results)} "
          f"lost_rows={sum(r.lost for r in results)} duplicate_rows={sum(r.duplicates for r in results)}")


if __name__ == "__main__":
    main()
