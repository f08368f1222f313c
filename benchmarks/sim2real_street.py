"""Street sim-to-real through the service: does translating simulator frames help a real segmenter?

One fixed small segmenter (the report's `TinySegmenter`, one budget) is trained on
(a) the street simulator's 4:3 frames as rendered (source only),
(b) the same frames translated by CycleGAN,
(c) the same frames translated by CyCADA,
(d) CamVid `train/` (oracle; its masks are used here only),
and scored on CamVid `val/` (never fitted on: the translators see `train/` images only).
Masks travel with the frames unchanged (domain transfer keeps geometry). (b) and (c) come
from running the shipped config (`configs/sim2real_street.yaml`, the transfer step's kind
swapped) as a job: its fit, its gate, its shards.

    python benchmarks/sim2real_street.py [--steps 3000] [--frames 1200] [--out runs/bench_sim2real_street]

mIoU is over the 11 CamVid classes (void pixels are ignored). Prints the per-class IoU table,
then `source_only_miou=… cyclegan_miou=… cycada_miou=… oracle_miou=…` (and the gap closed,
(x − source_only) / (oracle − source_only), per family). A family whose job is already in
`--out` is reused (delete the folder to refit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transfer_common import (FAMILIES, REPO, benchmark_args, cached, camvid, configured, decode, fingerprint, fit_extras,
                             gate_of, passes, preservation, rows_of, run_family, show_progress, transfer_grid)

from augment.metrics.utility import confusion_matrix, mean_iou, predict_masks, train_segmenter
from jobs.config import ExternalSourceConfig, parse_config

CONFIG = REPO / "configs" / "sim2real_street.yaml"
SEGMENTER_STEPS = 2000  # one fixed budget for every training set
SEGMENTER_SEED = 5


def shard_pairs(out: Path, source: str, gate: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images, masks) of the training rows of one `source` whose label preservation clears `gate`."""
    rows = [r for r in rows_of(out, source, ["image", "mask", "scores"], required=source == "simulator")
            if r["mask"] is not None and passes(r, gate)]
    if not rows:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.int64)
    return (np.stack([decode(r["image"]) for r in rows]),
            np.stack([decode(r["mask"], None) for r in rows]).astype(np.int64))


def main() -> None:
    parser = benchmark_args(__doc__, "sim2real_street", task_steps=2000)
    parser.add_argument("--segmenter-steps", type=int, default=SEGMENTER_STEPS)
    args = parser.parse_args()
    show_progress()
    raw, kinds = configured(CONFIG, args)
    job = parse_config(raw, base=CONFIG.parent)
    target = job.generate[0].target
    if not isinstance(target, ExternalSourceConfig) or target.root.name != "train":
        raise SystemExit(f"{CONFIG}: expected an external CamVid train/ target, got {target}")
    class_names = list(target.class_names)
    void = class_names.index("void")
    width, height = job.source.frame_size
    # Street frames flip without changing their masks' meaning (CyCADA's default is off, for digits).
    extras = fit_extras(raw, args.task_steps, flip=True)
    seconds = {kind: run_family(CONFIG, raw, kind, args.out / kind, extras[kind]) for kind in kinds}
    val, real_train = camvid("val", target, height, width), camvid("train", target, height, width)
    transfer_grid({kind: args.out / kind for kind in kinds}, real_train[0][:8], args.grid)
    sets = {"source_only": shard_pairs(args.out / kinds[0], "simulator")}
    gate = gate_of(raw)
    for kind in FAMILIES:
        if kind in kinds:  # every translated row, then only those the shipped config's gate would publish
            print(preservation(args.out / kind, kind, gate))
            sets[kind] = shard_pairs(args.out / kind, kind)
            sets[f"{kind}_gated"] = shard_pairs(args.out / kind, kind, gate)
    sets["oracle"] = real_train

    def score(name: str, images: np.ndarray, masks: np.ndarray) -> tuple[float, list[float | None]]:
        model = train_segmenter(images, masks, len(class_names), seed=SEGMENTER_SEED, steps=args.segmenter_steps,
                                ignore_index=void, progress=f"segmenter {name}")
        confusion = confusion_matrix(val[1], predict_masks(model, val[0]), len(class_names), ignore_index=void)
        _, per_class = mean_iou(confusion)  # void truth pixels are not counted; predicting void is an error
        kept = [iou for c, iou in enumerate(per_class) if c != void and iou is not None]
        return float(np.mean(kept)) if kept else 0.0, [iou for c, iou in enumerate(per_class) if c != void]

    # The families' arms first: a run per family (side by side) then shares the cached baselines.
    results: dict[str, tuple[float, list[float | None]]] = {}
    for name in sorted(sets, key=lambda n: n in ("source_only", "oracle")):
        images, masks = sets[name]
        if not len(images):  # every row dropped by the gate
            results[name] = (float("nan"), [None] * (len(class_names) - 1))
            continue
        if name.endswith("_gated") and len(images) == len(sets[name.removesuffix("_gated")][0]):
            results[name] = results[name.removesuffix("_gated")]  # the gate kept every row: the same set
            continue
        key = {"steps": args.segmenter_steps, "seed": SEGMENTER_SEED, "rows": len(images), "val": len(val[0]),
               "data": fingerprint(images, masks)}
        value = cached(args.out, name, key, lambda: score(name, images, masks))
        results[name] = (value[0], value[1])

    results = {name: results[name] for name in sets}  # the table's order: source only first, oracle last
    shown = [n for n in class_names if n != "void"]
    print(f"\nIoU on CamVid val/ ({len(val[0])} frames at {width}x{height}); training rows: "
          + ", ".join(f"{n} {len(s[0])}" for n, s in sets.items()))
    print(f"{'class':<12}" + "".join(f"{n:>15}" for n in results))
    for c, name in enumerate(shown):
        cells = "".join(f"{'-' if r[1][c] is None else format(r[1][c], '.3f'):>15}" for r in results.values())
        print(f"{name:<12}{cells}")
    print(f"{'mIoU':<12}" + "".join(f"{r[0]:15.3f}" for r in results.values()))
    print(f"{'job s':<12}" + "".join(f"{seconds.get(n, 0.0):15.0f}" for n in results))
    base, oracle = results["source_only"][0], results["oracle"][0]
    line = " ".join(f"{name}_miou={value[0]:.3f}" for name, value in results.items())
    if oracle > base:
        line += "".join(f" gap_closed_{k}={(results[k][0] - base) / (oracle - base):.3f}" for k in results
                        if k not in ("source_only", "oracle"))
    print(line)


if __name__ == "__main__":
    main()
