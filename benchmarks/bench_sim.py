"""Simulator speed and the digits sim-to-real gap.

1. street: frames/s per core at 256×256 with all layers (describe + render, one process).
2. The same frames through the service (`simulate`: render, PNG-encode every layer, write
   shards) with 2 Ray workers against 1, on a 2-core machine: the scaling ratio.
3. digits: frames/s per core at 32×32 (describe + render).
4. digits: source-only accuracy on scikit-learn's real digits of a small CNN trained on
   plain font renders and on shape-randomised renders (benchmarks/digits_transfer.py).

Last line: `street_fps_per_core=… scale_2_workers=… digits_fps_per_core=…
digits_src_acc_plain=… digits_src_acc_shape=…`.

    python benchmarks/bench_sim.py [--frames 300] [--service-frames 600] [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_transfer import source_only_accuracy  # noqa: E402

from jobs.config import parse_config  # noqa: E402
from jobs.runner import run_job  # noqa: E402
from simulators.digits import DigitsControls  # noqa: E402
from simulators.source import get_family  # noqa: E402
from simulators.street import StreetControls  # noqa: E402


def frames_per_second(family: str, controls, size: int, frames: int) -> float:
    """describe + render of `frames` frames in this one process (one core)."""
    simulator = get_family(family)
    simulator.render(simulator.describe(0, controls, size))  # warm caches (fonts, textures)
    start = time.perf_counter()
    for seed in range(1, frames + 1):
        simulator.render(simulator.describe(seed, controls, size))
    return frames / (time.perf_counter() - start)


def service_seconds(frames: int, workers: int, scratch: Path) -> float:
    """Seconds of the job after Ray is up (scan-free: simulator frames are trusted)."""
    config = parse_config({
        "name": f"bench_street_{workers}",
        "source": {"kind": "simulator", "family": "street", "frames": frames, "image_size": 256},
        "split": {"holdout": 0.0},
        "output": {"rows_per_shard": 25},
        "execution": {"num_workers": workers, "num_cpus": 2},
    })
    result = run_job(config, scratch / f"street_{workers}")
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames timed per family in one process")
    parser.add_argument("--service-frames", type=int, default=600)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()

    street_fps = frames_per_second("street", StreetControls(), 256, args.frames)
    digits_fps = frames_per_second("digits", DigitsControls(), 32, args.frames * 5)
    print(f"street 256x256 all layers: {street_fps:.1f} frames/s on one core")
    print(f"digits 32x32: {digits_fps:.1f} frames/s on one core")

    scratch = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        one = service_seconds(args.service_frames, 1, scratch)
        two = service_seconds(args.service_frames, 2, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"service, {args.service_frames} street frames: 1 worker {one:.1f}s "
          f"({args.service_frames / one:.1f} fps), 2 workers {two:.1f}s ({args.service_frames / two:.1f} fps)")

    plain = shape = float("nan")
    if not args.skip_accuracy:
        plain = source_only_accuracy(DigitsControls(shape_randomisation=False))
        shape = source_only_accuracy(DigitsControls())
        print(f"source-only accuracy on real digits: plain fonts {plain:.3f}, shape-randomised {shape:.3f}")
    print(f"street_fps_per_core={street_fps:.1f} scale_2_workers={one / two:.2f} "
          f"digits_fps_per_core={digits_fps:.1f} digits_src_acc_plain={plain:.3f} digits_src_acc_shape={shape:.3f}")


if __name__ == "__main__":
    main()
