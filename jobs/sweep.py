"""The fidelity/diversity trade-off of the job's class-conditional steps, swept over their knob.

Each family names the `sample:` field it sweeps (`sweep_knob`: diffusion's guidance w,
the cGAN's truncation with 0 = off). For each value the fitted (or loaded) model samples
`per_class` images per class with fixed seeds, and the report measures them against the
real holdout in its first feature space: precision (fidelity), recall (diversity), FD and
the domain classifier's confidence.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from augment.generators.base import SampleRequest
from augment.seeding import derive_seed
from jobs.config import JobConfig, StepConfig

log = logging.getLogger("synthaug")

_SWEEP = 91


def model_dir(step: StepConfig, out: Path) -> Path | None:
    """The model a step sampled: `from_pretrained`, else its fitted model."""
    folder = step.from_pretrained or out / "checkpoints" / step.kind / "model"
    return folder if Path(folder).is_dir() else None


def sweep_samples(config: JobConfig, out: Path, class_names: list[str], per_class: int, values: list[float]
                  ) -> dict[str, tuple[str, list[tuple[float, str]], dict[float, tuple[list[np.ndarray], np.ndarray]]]]:
    """{step kind: (knob, axis, {value: (images, labels)})} for every class-conditional step
    with a knob; `axis` is the family's order of the values (most diverse first) with labels."""
    from jobs.runner import step_sample_kwargs

    found = {}
    labels = [c for c in range(len(class_names)) for _ in range(per_class)]
    seeds = [derive_seed(config.seed, _SWEEP, i) for i in range(len(labels))]  # the same seeds for every value
    for number, step in enumerate(config.generate):
        family, folder = step.family, model_dir(step, out)
        if family.request != "class" or family.sweep_knob is None or folder is None or not values:
            continue
        sampler = family.from_pretrained(folder)
        kwargs = step_sample_kwargs(step, class_names, f"generate[{number}]")
        axis = family.sweep_axis(list(dict.fromkeys(values)))
        results = {}
        for value, _ in axis:
            request = SampleRequest(labels=labels, seeds=seeds, ids=[f"sweep/{i}" for i in range(len(labels))])
            samples = sampler.sample(request, **family.sweep_kwargs(kwargs, value))
            results[value] = ([s.image for s in samples], np.array(labels, dtype=np.int64))
            log.info("report: sweep %s %s=%s: %d samples", step.kind, family.sweep_knob, value, len(samples))
        found[step.kind] = (family.sweep_knob, axis, results)
    return found


def sweep_rows(knob: str, axis: list[tuple[float, str]], results: dict[float, tuple[np.ndarray, np.ndarray]],
               embed: Any, probs: Any, holdout_f: np.ndarray, compare: Any) -> dict[str, Any]:
    """One family's `sweep` block: a row of overall numbers per swept value, in `axis` order."""
    rows = []
    for value, label in axis:
        images, labels = results[value]
        metrics = compare(holdout_f, embed(images))
        p = probs(images) if probs is not None else None
        confidence = None if p is None else float(p[np.arange(len(labels)), labels].mean())
        rows.append({"value": value, "label": label, "precision": metrics["precision"], "recall": metrics["recall"],
                     "density": metrics["density"], "coverage": metrics["coverage"], "fd": metrics["fd"],
                     "confidence": confidence})
    return {"parameter": knob, "rows": rows}
