"""Digits sim-to-real through the service: does translating simulator crops help a real classifier?

One fixed classifier (the report's `SmallCNN`, one budget) is trained on
(a) the simulator's labelled crops as rendered (source only),
(b) the same crops translated by CycleGAN,
(c) the same crops translated by CyCADA,
(d) the real target's training split (oracle; its labels are used here only),
and tested on the real target's holdout. (b) and (c) come from running the shipped config
(`configs/sim2real_digits.yaml`, the transfer step's kind swapped) as a job: its fit, its
gate, its shards. The translators see the real training split without labels and never the
holdout (the job's own split of the target).

    python benchmarks/sim2real_digits.py [--steps 3000] [--frames 2000] [--out runs/bench_sim2real_digits]

Gap closed = (x − source_only) / (oracle − source_only). Last line:
`source_only=… cyclegan=… cycada=… oracle=… gap_closed_cyclegan=… gap_closed_cycada=…`.
A family whose job is already in `--out` is reused (delete the folder to refit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transfer_common import (FAMILIES, REPO, benchmark_args, cached, configured, decode, fingerprint, fit_extras, gate_of, passes,
                             preservation, rows_of, run_family, show_progress, transfer_grid)

from augment.metrics.classifier import predict_proba, train_classifier
from jobs.config import parse_config
from jobs.plan import open_other_source

CONFIG = REPO / "configs" / "sim2real_digits.yaml"
CLASSIFIER_STEPS = 1500  # one fixed budget for every training set
CLASSIFIER_SEED = 5


def labelled(out: Path, source: str, gate: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training rows of one `source` whose label preservation clears `gate` (images and labels)."""
    rows = [r for r in rows_of(out, source, ["image", "label", "scores"], required=source == "simulator")
            if r["label"] is not None and passes(r, gate)]
    if not rows:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64)
    return np.stack([decode(r["image"]) for r in rows]), np.array([r["label"] for r in rows], np.int64)


def accuracy(images: np.ndarray, labels: np.ndarray, test: tuple[np.ndarray, np.ndarray]) -> float:
    model = train_classifier(images, labels, 10, seed=CLASSIFIER_SEED, steps=CLASSIFIER_STEPS,
                             progress="classifier")
    predicted = predict_proba(model, test[0]).argmax(1)
    return float((predicted == test[1]).mean())


def scored(out: Path, name: str, data: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """The classifier's accuracy on `test` after training on `data` (nan: no rows), cached per arm."""
    if not len(data[1]):
        return float("nan")
    key = {"steps": CLASSIFIER_STEPS, "seed": CLASSIFIER_SEED, "rows": len(data[1]), "test": len(test[1]),
           "data": fingerprint(*data)}
    return cached(out, name, key, lambda: accuracy(*data, test))


def main() -> None:
    args = benchmark_args(__doc__, "sim2real_digits", task_steps=6000).parse_args()
    show_progress()
    raw, kinds = configured(CONFIG, args)
    extras = fit_extras(raw, args.task_steps)
    seconds = {kind: run_family(CONFIG, raw, kind, args.out / kind, extras[kind]) for kind in kinds}
    # The real target as the job split it: the translators fitted its training part (no labels).
    job = parse_config(raw, base=CONFIG.parent)
    target = job.generate[0].target
    real, train_records, holdout_records = open_other_source(target, job.split.holdout, job.seed)

    def load(records: list) -> tuple[np.ndarray, np.ndarray]:
        samples = [real.load(r) for r in records]
        return np.stack([s.image for s in samples]), np.array([s.label for s in samples], np.int64)

    test = load(holdout_records)
    first = args.out / kinds[0]
    transfer_grid({kind: args.out / kind for kind in kinds}, test[0], args.grid)
    # The families' arms first: a run per family (side by side) then shares the cached baselines.
    results: dict[str, float] = {}
    gate, sizes = gate_of(raw), {}
    for kind in FAMILIES:
        if kind in kinds:
            print(preservation(args.out / kind, kind, gate))
            # every translated row, then only those the shipped config's gate would publish
            for name, threshold in ((kind, None), (f"{kind}_gated", gate)):
                data = labelled(args.out / kind, kind, threshold)
                sizes[name] = len(data[1])
                same = name != kind and sizes[name] == sizes[kind]  # the gate kept every row: the same set
                results[name] = results[kind] if same else scored(args.out, name, data, test)
    results = {"source_only": scored(args.out, "source_only", labelled(first, "simulator"), test), **results,
               "oracle": scored(args.out, "oracle", load(train_records), test)}

    gap = results["oracle"] - results["source_only"]
    print(f"\n{'training set':<16} {'rows':>6} {'accuracy':>9} {'gap closed':>11} {'job s':>7}   "
          f"(real holdout: {len(test[1])}; _gated: rows with label preservation >= {gate})")
    for name, value in results.items():
        closed = (value - results["source_only"]) / gap if gap > 0 else float("nan")
        print(f"{name:<16} {sizes.get(name, ''):>6} {value:9.3f} {closed:11.2f} {seconds.get(name, 0.0):7.0f}")
    line = " ".join(f"{k}={v:.3f}" for k, v in results.items())
    line += "".join(f" gap_closed_{k}={(results[k] - results['source_only']) / gap:.3f}"
                    for k in results if k not in ("source_only", "oracle") and gap > 0)
    print(line)


if __name__ == "__main__":
    main()
