"""The fidelity/diversity trade-off of the job's generator, swept over its knob.

Diffusion: classifier-free guidance w; cGAN: truncation (0 = off). For each value the
fitted (or loaded) model samples `per_class` images per class with fixed seeds, and the
report measures them against the real holdout in its first feature space: precision
(fidelity), recall (diversity), FD and the domain classifier's confidence.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from augment.generators.base import SampleRequest
from augment.seeding import derive_seed
from jobs.config import JobConfig
from jobs.generators import load_sampler, sample_kwargs

log = logging.getLogger("synthaug")

_SWEEP = 91


def model_dir(config: JobConfig, out: Path) -> Path | None:
    """The generator the job sampled: `from_pretrained`, else its fitted model."""
    generate = config.generate
    if generate is None:
        return None
    folder = generate.from_pretrained or out / "checkpoints" / generate.kind / "model"
    return folder if Path(folder).is_dir() else None


def sweep_samples(config: JobConfig, out: Path, class_names: list[str], per_class: int,
                  values: list[float]) -> tuple[str, dict[float, tuple[list[np.ndarray], np.ndarray]]] | None:
    """{value: (images, labels)} for every swept value, or None without a generator."""
    folder = model_dir(config, out)
    if folder is None or not values:
        return None
    generate = config.generate
    sampler = load_sampler(generate.kind, folder)
    kwargs = sample_kwargs(generate, class_names)
    knob = "guidance" if generate.kind == "diffusion" else "truncation"
    labels = [c for c in range(len(class_names)) for _ in range(per_class)]
    seeds = [derive_seed(config.seed, _SWEEP, i) for i in range(len(labels))]  # the same seeds for every value
    results = {}
    for value in values:
        kwargs[knob] = (value or None) if knob == "truncation" else value
        request = SampleRequest(labels=labels, seeds=seeds, ids=[f"sweep/{i}" for i in range(len(labels))])
        samples = sampler.sample(request, **kwargs)
        results[value] = ([s.image for s in samples], np.array(labels, dtype=np.int64))
        log.info("report: sweep %s=%s: %d samples", knob, value, len(samples))
    return knob, results


def sweep_rows(knob: str, results: dict[float, tuple[np.ndarray, np.ndarray]], embed: Any, probs: Any,
               holdout_f: np.ndarray, compare: Any) -> dict[str, Any]:
    """The report's `sweep` block: one row of overall numbers per swept value."""
    rows = []
    for value, (images, labels) in results.items():
        metrics = compare(holdout_f, embed(images))
        p = probs(images) if probs is not None else None
        confidence = None if p is None else float(p[np.arange(len(labels)), labels].mean())
        rows.append({"value": value, "precision": metrics["precision"], "recall": metrics["recall"],
                     "density": metrics["density"], "coverage": metrics["coverage"],
                     "fd": next(v for k, v in metrics.items() if k == "fid" or k.startswith("fd_")),
                     "confidence": confidence})
    return {"parameter": knob, "rows": rows}
