"""The low-data benchmark: does synthetic data make a better classifier from k real images per class?

On scikit-learn's digits (16×16 grey), for k real training images per class (`--k`, default
5 10 30) and `--seeds` seeds each, every arm is a job of the service (`run_job`, embedded
Ray) with `split.seed` fixed, so all of them are tested on the same real holdout (20% of
the digits, never seen by any fit), and `split.train_per_class: k` with the job's seed
choosing the k images:

1. baseline: the report's fixed classifier trained on the k images per class (the
   utility section's real_only setting);
2. + classical augmentation (the quickstart's transforms) up to `--per-class` rows per class;
3. + class-conditional diffusion fitted on the same k images per class;
4. + the conditional GAN, likewise;
5. + tuned: class-conditional diffusion with a `tune:` section choosing the guidance, the
   synthetic share of the mix (0 = real only is on the grid) and a confidence gate by the
   accuracy of the same classifier on a validation split carved from the k images (the
   diffusion then fits on the other ~80%; the chosen rows are measured like the others).

Arms 2–5 are each job's real_plus_synthetic setting (same classifier, budget and seed as
the baseline; only the training data differ; a tuned job that chose real only scores its
real_only model). Every fit sees only its job's k images per class (tests/test_low_data.py
checks it through job.json `trained_on`). With `--scratch`, a job whose folder holds a
finished report of the same config is read, not run again (arms can be added later).

Prints a table of mean ± std accuracy and gain over the baseline per k, writes a plot
(`--plot`, default low_data.png beside the scratch folder's parent) and ends with
`k5_baseline=… k5_best=… k10_baseline=… k10_best=… k30_baseline=… k30_best=…` (best: the
highest mean among the generator arms run). At the defaults it runs 36 jobs (27 fits): about
24 min per k and seed on a 2-core machine (tuned ~12 min, diffusion ~7), ~3.5 h in all; the
README shows the k = 5 and 10 figures. `--quick` (tiny fits: checks the plumbing, the generator
arms are then far below the baseline) took 13 min for one k and one seed.

    python benchmarks/low_data.py [--k 5 10 30] [--seeds 0 1 2] [--per-class 100] [--arms ...] [--quick]
                                  [--scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.config import parse_config  # noqa: E402
from jobs.runner import run_job  # noqa: E402

HOLDOUT_SEED = 1234  # split.seed: one real holdout for every k, seed and arm
CLASSES = [str(c) for c in range(10)]
TRANSFORMS = [
    {"name": "Affine", "p": 0.9,
     "params": {"rotate": [-12, 12], "scale": [0.9, 1.1], "translate_percent": [-0.06, 0.06], "shear": [-8, 8]}},
    {"name": "ElasticTransform", "p": 0.3, "params": {"alpha": 20, "sigma": 5}},
    {"name": "RandomBrightnessContrast", "p": 0.5, "params": {"brightness_limit": 0.2, "contrast_limit": 0.2}},
]
ARMS = ("classical", "diffusion", "cgan", "tuned")


def generate_step(arm: str, quick: bool) -> dict[str, Any]:
    """The generate step of a generator arm; `quick` shrinks the fit to check the plumbing."""
    if arm == "diffusion":
        return {"kind": "diffusion",
                "fit": {"steps": 20 if quick else 1000, "batch_size": 32, "lr": 0.001,
                        "block_out_channels": [16, 32] if quick else [32, 64, 64], "p_uncond": 0.1},
                "sample": {"scheduler": "ddim", "steps": 5 if quick else 25, "guidance": 2.0, "batch_size": 128}}
    return {"kind": "cgan",
            "fit": {"steps": 20 if quick else 1500, "batch_size": 32, "g_channels": 16, "d_channels": 16,
                    "z_dim": 64, "diffaugment": ["translation", "cutout"]},
            "sample": {"truncation": None, "batch_size": 256}}


def arm_config(arm: str, k: int, seed: int, per_class: int, quick: bool) -> Any:
    raw: dict[str, Any] = {
        "name": f"low_data_k{k}_s{seed}_{arm}", "seed": seed,
        "source": {"kind": "digits", "image_size": 16, "color": "gray"},
        "split": {"holdout": 0.2, "seed": HOLDOUT_SEED, "train_per_class": k},
        "quota": {"per_class": {c: per_class for c in CLASSES}},
        "output": {"rows_per_shard": 500},
        "report": {"extractor_steps": 60 if quick else 300, "kid_subsets": 10, "features": ["domain"]},
    }
    if arm == "classical":
        raw["augment"] = {"transforms": TRANSFORMS}
    elif arm == "tuned":
        raw["generate"] = [generate_step("diffusion", quick)]
        raw["tune"] = {"validation": 0.2, "sample": {"diffusion": {"guidance": [0.5, 1.0, 2.0, 4.0]}},
                       "synthetic_share": sorted({0.0, 0.5, 0.8, round(min(0.95, 1 - k / per_class), 3)}),
                       "filter": {"min_confidence": [None, 0.5]}}
    else:
        raw["generate"] = [generate_step(arm, quick)]
    return parse_config(raw)


def measure(arm: str, k: int, seed: int, per_class: int, quick: bool, scratch: Path) -> dict[str, float]:
    """One job; its report's real_only (the baseline) and real_plus_synthetic accuracies."""
    out = scratch / f"k{k}_s{seed}_{arm}"
    started = time.monotonic()
    config = arm_config(arm, k, seed, per_class, quick)
    if not finished(out, config.content_hash()):
        run_job(config, out, overwrite=True)
    report = json.loads((out / "report" / "report.json").read_text())
    settings = report["utility"]["classification"]["settings"]
    both = settings["real_plus_synthetic"]["accuracy"]
    result = {"baseline": settings["real_only"]["accuracy"],
              arm: both if both is not None else settings["real_only"]["accuracy"],  # tuned to real only
              "n_holdout": report["utility"]["classification"]["n_holdout"]}
    chosen = (report.get("tune") or {}).get("chosen", {}).get("label")
    print(f"k={k} seed={seed} {arm}: baseline {result['baseline']:.3f}, + {arm} {result[arm]:.3f} "
          f"({time.monotonic() - started:.0f} s){f'; tuned: {chosen}' if chosen else ''}", flush=True)
    return result


def finished(out: Path, config_hash: str) -> bool:
    """The job folder holds a complete job of this config with its report."""
    job = out / "job.json"
    if not job.is_file() or not (out / "report" / "report.json").is_file():
        return False
    state = json.loads(job.read_text())
    return state.get("status") == "complete" and state.get("config_hash") == config_hash


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot(table: dict[int, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    ks = sorted(table)
    figure, axis = plt.subplots(figsize=(6, 4))
    for arm in ("baseline", *[a for a in ARMS if table[ks[0]][a]]):
        stats = [mean_std(table[k][arm]) for k in ks]
        axis.errorbar(ks, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=arm)
    axis.set_xscale("log")
    axis.set_xticks(ks, [str(k) for k in ks])
    axis.xaxis.set_minor_formatter(NullFormatter())  # only the measured k are labelled
    axis.set_xlabel("real training images per class (k)")
    axis.set_ylabel("accuracy on the real holdout")
    axis.set_title("Digits: real only vs real + synthetic (mean ± std over seeds)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 30])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=100, help="rows per class after augmentation (real + synthetic)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--quick", action="store_true", help="tiny fits: checks the plumbing, not the figures")
    parser.add_argument("--plot", type=Path, default=Path("low_data.png"))
    parser.add_argument("--scratch", type=Path, default=None, help="job folders (default: a temporary folder)")
    args = parser.parse_args()
    if min(args.k) < 1 or args.per_class <= max(args.k):
        parser.error("--k must be >= 1 and --per-class above every k (the synthetic rows fill the difference)")

    started = time.monotonic()
    table: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="low_data_") as temporary:
        scratch = args.scratch or Path(temporary)
        for k in args.k:
            table[k] = {"baseline": [], **{arm: [] for arm in ARMS}}
            for seed in args.seeds:
                for number, arm in enumerate(args.arms):
                    result = measure(arm, k, seed, args.per_class, args.quick, scratch)
                    table[k][arm].append(result[arm])
                    if number == 0:  # the same real-only model in every arm of this seed
                        table[k]["baseline"].append(result["baseline"])

    print(f"\nDigits 16×16, {args.per_class} rows per class, seeds {args.seeds}, one real holdout "
          f"(split.seed {HOLDOUT_SEED}); accuracy mean ± std, gain over the baseline in points:")
    arms = [arm for arm in ARMS if arm in args.arms]
    print(f"{'k':>4} | {'baseline':>13} | " + " | ".join(f"{'+ ' + arm:>22}" for arm in arms))
    figures: list[str] = []
    for k in args.k:
        base, base_std = mean_std(table[k]["baseline"])
        cells = []
        for arm in arms:
            mean, std = mean_std(table[k][arm])
            cells.append(f"{mean:.3f} ± {std:.3f} ({100 * (mean - base):+.1f})")
        best = max(mean_std(table[k][arm])[0] for arm in arms if arm != "baseline")
        print(f"{k:>4} | {base:.3f} ± {base_std:.3f} | " + " | ".join(f"{c:>22}" for c in cells))
        figures.append(f"k{k}_baseline={base:.3f} k{k}_best={best:.3f}")
    plot(table, args.plot)
    print(f"plot: {args.plot}; {time.monotonic() - started:.0f} s")
    print(" ".join(figures))


if __name__ == "__main__":
    main()
