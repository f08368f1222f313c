"""Scale check of the quality metrics: k-NN metrics, FID and KID on random features, against `prdc`.

Features are float32 draws from a mixture of Gaussians (`np.random.default_rng(seed)`): a real
set, a synthetic set from the same mixture with shifted centres, one cluster dropped and 1% near
copies of real rows, and a real holdout set for the near-copy threshold. Ours, at full size:
k-NN radii of the real set, `prdc` (reusing those radii), `realism_scores`, nearest neighbours
of the synthetic and holdout sets in the real set + the near-copy rule of the row scorer
(`RealReference`: the `NEAR_COPY_QUANTILE` quantile of holdout distances), FID, KID.

Reference: `prdc.compute_prdc` builds three full N x N distance matrices, so it runs on a random
subsample of `--reference-n` rows of each set, in a subprocess (its peak memory is not ours);
our `prdc` is timed on the same subsample for a like-for-like ratio, and the values compared.

    python benchmarks/bench_metrics.py [--n 50000] [--dim 512] [--k 5] [--holdout 10000]
        [--reference-n 10000] [--chunk ROWS]

Last line: `peak_rss_gb=… seconds=… reference_seconds=… reference_n=… ours_on_reference_n_seconds=…`
(peak_rss_gb: this process, i.e. ours; seconds: our full-size stages; reference_seconds: prdc on
the subsample).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from augment.metrics.distribution import frechet_distance, gaussian_stats, kid
from augment.metrics.knn import (
    kth_neighbour_radii,
    nearest_neighbours,
    prdc,
    realism_scores,
)

CLUSTERS = 10
COPY_FRACTION = 0.01  # synthetic rows that are near copies of real rows
NEAR_COPY_QUANTILE = 0.01  # report.near_copy_quantile's default


def make_features(n: int, dim: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(real, synthetic, holdout) float32 features from a mixture of `CLUSTERS` unit Gaussians."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, dim)).astype(np.float32)

    def draw(rows: int, centre_shift: float, clusters: int) -> np.ndarray:
        labels = rng.integers(0, clusters, rows)
        x = rng.standard_normal(size=(rows, dim), dtype=np.float32)
        x += centres[labels] + centre_shift
        return x

    real = draw(n, 0.0, CLUSTERS)
    synthetic = draw(n, 0.05, CLUSTERS - 1)  # one cluster missing: recall and coverage drop
    copies = rng.choice(n, int(COPY_FRACTION * n), replace=False)
    synthetic[:len(copies)] = real[copies] + 1e-3 * rng.standard_normal(size=(len(copies), dim), dtype=np.float32)
    return real, synthetic, draw(holdout, 0.0, CLUSTERS)


def peak_rss_gb() -> float:
    """This process's peak RSS (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_peak_rss_gb() -> float:
    """Peak RSS of this process's memory since exec (VmHWM): a child's ru_maxrss starts at its parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class Stages:
    """Prints one line per stage with its seconds and the time since the start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - t0
        print(f"[{time.perf_counter() - self.start:8.1f}s] {name}: {self.seconds[name]:.1f}s", flush=True)
        return out


def run_reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, Any]:
    """`prdc.compute_prdc` in a subprocess on saved arrays: its result, seconds and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        np.save(Path(tmp) / "real.npy", real)
        np.save(Path(tmp) / "fake.npy", fake)
        cmd = [sys.executable, __file__, "--reference-only", tmp, "--k", str(k)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def reference_only(folder: str, k: int) -> None:
    from prdc import compute_prdc

    real, fake = np.load(Path(folder) / "real.npy"), np.load(Path(folder) / "fake.npy")
    t0 = time.perf_counter()
    result = compute_prdc(real, fake, nearest_k=k)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_gb": child_peak_rss_gb(),
                      "result": {name: float(v) for name, v in result.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows of the real and of the synthetic set")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--holdout", type=int, default=10_000, help="rows of the real holdout set")
    parser.add_argument("--reference-n", type=int, default=10_000, help="subsample for prdc.compute_prdc; 0: skip")
    parser.add_argument("--chunk", type=int, default=None, help="query rows per distance block (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-only", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_only:
        reference_only(args.reference_only, args.k)
        return

    real, fake, holdout = make_features(args.n, args.dim, args.holdout, args.seed)
    print(f"features: real {real.shape}, synthetic {fake.shape}, holdout {holdout.shape}, float32, "
          f"{CLUSTERS} clusters, k={args.k}, chunk={args.chunk or 'auto'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    stages = Stages()
    radii = stages.run("real k-NN radii", kth_neighbour_radii, real, args.k, chunk=args.chunk)
    scores = stages.run("prdc (synthetic radii + real x synthetic)", prdc, real, fake, args.k, chunk=args.chunk,
                        real_radii=radii)
    realism = stages.run("realism scores", realism_scores, real, radii, fake, chunk=args.chunk)
    synth_nn, _ = stages.run("nearest real of synthetic", nearest_neighbours, fake, real, chunk=args.chunk)
    holdout_nn, _ = stages.run("nearest real of holdout", nearest_neighbours, holdout, real, chunk=args.chunk)
    threshold = stages.run("near-copy threshold", np.quantile, holdout_nn, NEAR_COPY_QUANTILE)
    near_copy_fraction = float(np.mean(synth_nn <= threshold))
    fid = stages.run("FID (stats + distance)", lambda: frechet_distance(gaussian_stats(real), gaussian_stats(fake)))
    kid_mean, kid_std = stages.run("KID (100 x 1000)", kid, real, fake)
    seconds = sum(stages.seconds.values())
    ours_rss = peak_rss_gb()
    print(f"ours at n={args.n}: {seconds:.1f}s, peak RSS {ours_rss:.2f} GB; load average {os.getloadavg()[0]:.1f}")
    print("  " + " ".join(f"{name}={value:.4f}" for name, value in scores.items())
          + f" realism_median={np.median(realism):.3f} near_copy_fraction={near_copy_fraction:.4f}"
          f" (expected {COPY_FRACTION} copies + ~{NEAR_COPY_QUANTILE} by chance)"
          f" fid={fid:.2f} kid={kid_mean:.4f}+-{kid_std:.4f}")

    extras = ""
    reference_seconds = float("nan")
    if args.reference_n > 0:
        m = min(args.reference_n, args.n)
        pick = np.random.default_rng(args.seed + 1)
        sub_real = real[np.sort(pick.choice(args.n, m, replace=False))]
        sub_fake = fake[np.sort(pick.choice(args.n, m, replace=False))]
        t0 = time.perf_counter()
        ours_sub = prdc(sub_real, sub_fake, args.k, chunk=args.chunk)
        ours_sub_seconds = time.perf_counter() - t0
        print(f"[{time.perf_counter() - stages.start:8.1f}s] ours prdc on the {m}-row subsample: "
              f"{ours_sub_seconds:.1f}s", flush=True)
        ref = run_reference(sub_real, sub_fake, args.k)
        reference_seconds = ref["seconds"]
        worst = max(abs(ours_sub[name] - ref["result"][name]) for name in ours_sub)
        print(f"[{time.perf_counter() - stages.start:8.1f}s] reference prdc.compute_prdc on the same {m} rows "
              f"(subprocess, full {m} x {m} matrices): {reference_seconds:.1f}s, peak RSS {ref['peak_rss_gb']:.2f} GB; "
              f"max |ours - reference| = {worst:.2e}; ratio reference / ours = "
              f"{reference_seconds / ours_sub_seconds:.2f}", flush=True)
        extras = (f" reference_n={m} ours_on_reference_n_seconds={ours_sub_seconds:.2f}"
                  f" reference_peak_rss_gb={ref['peak_rss_gb']:.2f} max_abs_diff={worst:.2e}")
    print(f"peak_rss_gb={ours_rss:.2f} seconds={seconds:.2f} reference_seconds={reference_seconds:.2f}{extras}")


if __name__ == "__main__":
    main()
