"""Simulator speed and the digits sim-to-real gap.

1. street: frames/s per core at 256×256 with all layers (describe + render, one process).
2. The same frames through the service (`simulate`: render, PNG-encode every layer, write
   shards) with 2 Ray workers against 1 on `--service-frames` frames, on a 2-core machine:
   the scaling ratio T(1 worker) / T(2 workers).
3. The service's marginal rate: the 2-worker job at N = `--service-frames` − 1,000 frames
   and at N + 1,000 (the run of step 2), so start-up, planning and the last shards' tail
   cancel out: 1,000 / (T(N + 1,000) − T(N)) / cores used, where cores used is
   workers × `num_cpus_per_worker` (1), at most `num_cpus` (2).
4. digits: frames/s per core at 32×32 (describe + render).
5. digits: source-only accuracy on scikit-learn's real digits of a small CNN trained on
   plain font renders and on shape-randomised renders (benchmarks/digits_transfer.py).

Every service time T is the job's `JobResult.seconds`: from the job's start after Ray is up
(`ray.init` and its shutdown are outside it) to its end, so it includes starting the actor
pool, the progress actor, planning, writing shards, the manifest and the contact sheet.
The jobs run with `report.enabled: false`: the figures are render, encode and write, as the
aims say. `--report` keeps the report `simulate` writes by default; for a simulator job
without a reference it compares nothing, but loads its "real side" by rendering up to
`report.max_per_source` frames again in the driver, one core, so it adds about as much
time as generation on one worker and the 2-worker ratio falls towards 1.
With `--repeats` R the three jobs run R times, interleaved, and the median of each figure
is printed. The machine's 1-minute load average is printed before and after the service
runs (a shared machine skews every figure; ratios taken within one run are the ones to
compare).

On a shared machine wall-clock figures move with other people's work, so the CPU time of
every process of a job (this driver and every Ray process under it: raylet, GCS, actors,
workers, the writer; summed from /proc, read every 0.2 s) is taken too: the marginal
CPU milliseconds per frame, (CPU(N + 1,000) − CPU(N)) / 1,000, is what a frame costs the
machine whoever else runs on it; 1,000 / that is the marginal rate per core a quiet
machine could reach if the job kept every core busy.

Last line: `street_fps_per_core=… scale_2_workers=… street_service_marginal_fps_per_core=…
street_service_marginal_cpu_ms_per_frame=… digits_fps_per_core=… digits_src_acc_plain=…
digits_src_acc_shape=…`. Linux only (/proc).

    python benchmarks/bench_sim.py [--frames 300] [--service-frames 1500] [--repeats 1] [--report]
                                   [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
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


MARGINAL_FRAMES = 1000  # the extra frames whose time gives the service's marginal rate
NUM_CPUS = 2  # the embedded Ray's CPUs, as on this project's 2-core machine


class TreeCPU:
    """CPU seconds of this process and every process under it, polled from a thread (Linux
    /proc). Known processes are read every `interval`, a walk of all of /proc finds new ones
    every `discover` seconds (reading every process on a busy machine ten times a second cost
    the driver a tenth of a core); a process's last count before it exits is kept, so at most
    `interval` of its time is missed, and one that lives less than `discover` may be missed."""

    def __init__(self, interval: float = 0.2, discover: float = 1.0) -> None:
        self.interval, self.every = interval, max(1, round(discover / interval))
        self.seconds: dict[int, float] = {}  # pid -> user + system seconds, last seen
        self._family: set[int] = set()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> TreeCPU:
        self._self_start = _own_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._discover()
        self._read()
        self.own = _own_cpu() - self._self_start

    @property
    def total(self) -> float:
        return self.own + sum(self.seconds.values())

    def _poll(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval):
            if tick % self.every == 0:
                self._discover()
            self._read()
            tick += 1

    def _stat(self, pid: int | str) -> list[bytes] | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                return handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None

    def _discover(self) -> None:
        parents = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (fields := self._stat(name)) is not None:
                parents[int(name)] = int(fields[1])
        family, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - family
            family |= frontier
        self._family |= family

    def _read(self) -> None:
        for pid in self._family:
            if (fields := self._stat(pid)) is not None:
                self.seconds[pid] = (int(fields[11]) + int(fields[12])) / self._tick


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def service_seconds(frames: int, workers: int, scratch: Path, report: bool = False) -> tuple[float, float]:
    """(seconds of the job after Ray is up, CPU seconds of the whole run_job call in this
    process and every process under it); scan-free: simulator frames are trusted."""
    config = parse_config({
        "name": f"bench_street_{workers}_{frames}",
        "source": {"kind": "simulator", "family": "street", "frames": frames, "image_size": 256},
        "split": {"holdout": 0.0},
        "output": {"rows_per_shard": 25},
        "report": {"enabled": report},
        "execution": {"num_workers": workers, "num_cpus": NUM_CPUS},
    })
    out = scratch / f"street_{workers}_{frames}"
    try:
        with TreeCPU() as cpu:
            seconds = run_job(config, out).seconds
        return seconds, cpu.total
    finally:
        shutil.rmtree(out, ignore_errors=True)


def cores_used(workers: int) -> float:
    """Cores the generation actors ask for: workers × num_cpus_per_worker (1), at most NUM_CPUS."""
    return float(min(workers, NUM_CPUS))


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames timed per family in one process")
    parser.add_argument("--service-frames", type=int, default=1500,
                        help="frames of the 1- and 2-worker jobs (the marginal run takes 1,000 fewer)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the three service jobs (medians printed)")
    parser.add_argument("--report", action="store_true", help="service jobs write their report too")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    if args.service_frames <= MARGINAL_FRAMES:
        parser.error(f"--service-frames must be more than {MARGINAL_FRAMES}, got {args.service_frames}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    street_fps = frames_per_second("street", StreetControls(), 256, args.frames)
    digits_fps = frames_per_second("digits", DigitsControls(), 32, args.frames * 5)
    print(f"street 256x256 all layers: {street_fps:.1f} frames/s on one core")
    print(f"digits 32x32: {digits_fps:.1f} frames/s on one core")

    frames, base = args.service_frames, args.service_frames - MARGINAL_FRAMES
    scratch = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    scales, marginals, cpu_ms = [], [], []
    try:
        for repeat in range(args.repeats):
            before = load_average()
            one, one_cpu = service_seconds(frames, 1, scratch, args.report)
            two, two_cpu = service_seconds(frames, 2, scratch, args.report)
            two_base, two_base_cpu = service_seconds(base, 2, scratch, args.report)
            marginal = MARGINAL_FRAMES / (two - two_base) / cores_used(2)
            scales.append(one / two)
            marginals.append(marginal)
            cpu_ms.append((two_cpu - two_base_cpu) / MARGINAL_FRAMES * 1000)
            print(f"service run {repeat + 1}, load average {before} -> {load_average()}: "
                  f"{frames} street frames: 1 worker {one:.1f}s ({frames / one:.1f} fps, {one_cpu:.1f} CPU s), "
                  f"2 workers {two:.1f}s ({frames / two:.1f} fps, {two_cpu:.1f} CPU s), ratio {one / two:.2f}; "
                  f"{base} frames on 2 workers {two_base:.1f}s ({two_base_cpu:.1f} CPU s): marginal "
                  f"{MARGINAL_FRAMES} frames in {two - two_base:.1f}s = {marginal:.1f} frames/s per core, "
                  f"{cpu_ms[-1]:.1f} CPU ms per frame")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    scale, marginal, frame_cpu_ms = statistics.median(scales), statistics.median(marginals), statistics.median(cpu_ms)

    plain = shape = float("nan")
    if not args.skip_accuracy:
        plain = source_only_accuracy(DigitsControls(shape_randomisation=False))
        shape = source_only_accuracy(DigitsControls())
        print(f"source-only accuracy on real digits: plain fonts {plain:.3f}, shape-randomised {shape:.3f}")
    print(f"street_fps_per_core={street_fps:.1f} scale_2_workers={scale:.2f} "
          f"street_service_marginal_fps_per_core={marginal:.1f} "
          f"street_service_marginal_cpu_ms_per_frame={frame_cpu_ms:.1f} digits_fps_per_core={digits_fps:.1f} "
          f"digits_src_acc_plain={plain:.3f} digits_src_acc_shape={shape:.3f}")


if __name__ == "__main__":
    main()
