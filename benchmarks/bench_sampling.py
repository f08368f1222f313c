"""Diffusion sampling: the service (`run_job` from a saved model) against a bare diffusers loop.

Both sample the same saved model with the same batch size, scheduler (DDIM or DPM-Solver++,
timesteps spaced as `augment.generators.diffusion.timestep_spacing` says, on the model's training noise schedule), steps and guidance w, and
do the same work per image: one forward of batch 2B (conditional + null class) per step,
the classifier-free guidance combination, `scheduler.step`, uint8 conversion and PNG
encoding (`augment.images.encode_png`).

- Service: `jobs.runner.run_job` on a digits config with `generate.from_pretrained` = the
  model, a quota that makes ~n generated images, `output.include_real: false` and
  `split.holdout: 0`. It runs `--workers` Ray actors (one CPU each; Ray gives each actor
  one intra-op thread) on this machine's cores, and also lists the source, plans, loads
  the model once per actor, writes Parquet shards and the manifest. Its time is reported
  with the embedded Ray start (the wall time of `run_job`, used for `service_ips`) and
  without it (`JobResult.seconds`).
- Bare loop: ONE process, torch's default intra-op threads, the model loaded with
  diffusers' `from_pretrained` (safetensors), a plain loop over batches and timesteps.

So the ratio compares whole-machine throughput of each way of sampling, not per-core
efficiency. Without `--model` (or when it is missing) a tiny model is fitted in-process for
a few steps and saved to a temporary folder (numbers then measure that tiny model).

    python benchmarks/bench_sampling.py [--model runs/digits_diffusion/checkpoints/diffusion/model]
        [--n 2000] [--batch 128] [--steps 25] [--scheduler ddim] [--guidance 2.0] [--workers 2]

Last line: `service_ips=… bare_ips=… ratio=…` (ratio = service / bare).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from augment.images import encode_png
from augment.shards import read_manifest
from jobs.config import JobConfig, parse_config
from jobs.plan import split_records
from jobs.runner import run_job
from jobs.sources import build_source

DEFAULT_MODEL = Path("runs/digits_diffusion/checkpoints/diffusion/model")


def fit_tiny_model(folder: Path, image_size: int = 16, steps: int = 30) -> Path:
    """A tiny class-conditional UNet fitted on the digits for a few steps, saved to `folder`."""
    from augment.generators import trainer
    from augment.generators.diffusion_family import DiffusionFamily, DiffusionFit
    from augment.generators.family import DataShape
    from jobs.fit import training_data

    config = parse_config({"source": {"kind": "digits", "image_size": image_size, "color": "gray"}})
    source = build_source(config.source)
    data = training_data(source, source.records(), DiffusionFamily, "bench_sampling")
    family = DiffusionFamily(DiffusionFit(block_out_channels=(8, 16), steps=steps, warmup_steps=5, batch_size=32),
                             DataShape(image_size, 1, tuple(source.class_names)), seed=0)
    family.sampler(trainer.fit(family, data)).save_pretrained(folder)
    return folder


def model_meta(model: Path) -> dict:
    return json.loads((model / "synthaug.json").read_text())


def service_config(model: Path, n: int, batch: int, steps: int, scheduler: str, guidance: float,
                   workers: int, rows_per_shard: int | None) -> tuple[JobConfig, int]:
    """A digits job that samples ~n images from `model`; returns it and the planned count."""
    meta = model_meta(model)
    source = {"kind": "digits", "image_size": int(meta["image_size"]),
              "color": "gray" if int(meta["channels"]) == 1 else "rgb"}
    probe = parse_config({"source": source, "split": {"holdout": 0.0}})
    built = build_source(probe.source)
    if list(meta["class_names"]) != list(built.class_names):
        raise SystemExit(f"{model}: classes {meta['class_names']} are not the digits' {built.class_names}")
    train, _ = split_records(built.records(), 0.0, probe.seed)
    real = Counter(built.class_names[r.label] for r in train if r.label is not None)
    per_class = math.ceil(n / len(built.class_names))
    planned = per_class * len(built.class_names)
    # Shards are the actors' unit of work: by default two per worker.
    rows = rows_per_shard or max(1, math.ceil(planned / (2 * workers)))
    config = parse_config({
        "name": "bench_sampling",
        "source": source,
        "split": {"holdout": 0.0},
        "quota": {"per_class": {name: real[name] + per_class for name in built.class_names}},
        "generate": {"kind": "diffusion", "from_pretrained": str(model.resolve()),
                     "sample": {"scheduler": scheduler, "steps": steps, "guidance": guidance, "batch_size": batch}},
        "output": {"include_real": False, "rows_per_shard": rows},
        # Sampling throughput only: no domain CNN, row scores or report (they cost ~1 min here).
        "report": {"enabled": False},
        "execution": {"num_workers": workers, "num_cpus": workers},
    })
    return config, planned


def make_scheduler(folder: Path, name: str) -> Any:
    """The sampling scheduler on the saved training noise schedule, as the service builds it."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from diffusers import DDPMScheduler

    from augment.generators.diffusion import timestep_spacing

    spacing = timestep_spacing(DDPMScheduler.from_pretrained(folder))
    if name == "ddim":
        return DDIMScheduler.from_pretrained(folder, timestep_spacing=spacing, clip_sample=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_pretrained(folder, algorithm_type="dpmsolver++", solver_order=2,
                                                           timestep_spacing=spacing)
    raise SystemExit(f"--scheduler: {name!r} is not ddim or dpm++")


@torch.no_grad()
def bare_loop(model: Path, n: int, batch: int, steps: int, scheduler_name: str, guidance: float,
              seed: int) -> tuple[int, float]:
    """Sample n images in one process; returns (images, seconds incl. the model load)."""
    from diffusers import UNet2DModel

    start = time.perf_counter()
    unet = UNet2DModel.from_pretrained(model / "unet", use_safetensors=True).eval()
    scheduler = make_scheduler(model / "scheduler", scheduler_name)
    num_classes = int(unet.config.num_class_embeds) - 1  # the last class embedding is the null class
    size, channels = unet.config.sample_size, unet.config.in_channels
    generator = torch.Generator().manual_seed(seed)
    made = 0
    for first in range(0, n, batch):
        b = min(batch, n - first)
        labels = torch.arange(first, first + b) % num_classes
        labels2 = torch.cat([labels, torch.full_like(labels, num_classes)])
        scheduler.set_timesteps(steps)  # also resets a multistep scheduler's history
        x = torch.randn((b, channels, size, size), generator=generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            eps_cond, eps_uncond = unet(x_in, t, class_labels=labels2).sample.chunk(2)
            eps = (1 + guidance) * eps_cond - guidance * eps_uncond
            x = scheduler.step(eps, t, x).prev_sample
        images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for image in images:
            encode_png(image, 1)
        made += b
    return made, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a saved diffusion model folder")
    parser.add_argument("--n", type=int, default=2000, help="images to sample (rounded up to whole classes)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--scheduler", choices=("ddim", "dpm++"), default="ddim")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors of the service")
    parser.add_argument("--rows-per-shard", type=int, default=None, help="default: two shards per worker")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # no "install accelerate" notice, here or in actors

    scratch = Path(tempfile.mkdtemp(prefix="bench_sampling_"))
    try:
        model = args.model
        if not (model / "synthaug.json").is_file():
            print(f"{model}: no saved diffusion model; fitting a TINY one in-process (30 steps, "
                  f"block_out_channels (8, 16)) into {scratch / 'model'}; numbers measure that tiny model")
            model = fit_tiny_model(scratch / "model")
        config, planned = service_config(model, args.n, args.batch, args.steps, args.scheduler, args.guidance,
                                         args.workers, args.rows_per_shard)

        bare_n, bare_s = bare_loop(model, planned, args.batch, args.steps, args.scheduler, args.guidance,
                                   args.seed)

        start = time.perf_counter()
        result = run_job(config, scratch / "service")
        service_s = time.perf_counter() - start
        manifest = read_manifest(scratch / "service" / "shards")
        service_n = int(manifest.source_counts.get("diffusion", 0))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if service_n != planned or bare_n != planned:
        raise SystemExit(f"image counts differ: planned {planned}, service {service_n}, bare {bare_n}")
    service_ips, service_ips_no_ray, bare_ips = service_n / service_s, service_n / result.seconds, bare_n / bare_s
    print(f"model={model} images={planned} batch={args.batch} steps={args.steps} scheduler={args.scheduler} "
          f"guidance={args.guidance} workers={args.workers} torch_threads={torch.get_num_threads()}")
    print(f"bare loop (1 process): {bare_s:.1f}s = {bare_ips:.1f} img/s")
    print(f"service ({args.workers} Ray actors): {service_s:.1f}s incl. Ray start = {service_ips:.1f} img/s; "
          f"{result.seconds:.1f}s without = {service_ips_no_ray:.1f} img/s")
    print(f"ratio service/bare: {service_ips / bare_ips:.3f} (without Ray start {service_ips_no_ray / bare_ips:.3f})")
    print(f"service_ips={service_ips:.1f} bare_ips={bare_ips:.1f} ratio={service_ips / bare_ips:.3f}")


if __name__ == "__main__":
    main()
