"""Label map to image on CamVid through the service: do the painted images follow their maps?

Each arm is a shipped config run as a job, fitted on CamVid `train/` (image, label map) pairs
at 128x96: `configs/label2image_spade.yaml` with SPADE's multi-scale PatchGAN discriminator
(`spade`) and with OASIS's segmentation discriminator (`oasis`), and
`configs/label2image_controlnet.yaml` (`controlnet`; its own two fit phases, `--steps` is the
SPADE arms'). Each arm's model
(`OUT/<arm>/checkpoints/<kind>/model/`) then paints one image for every CamVid `val/` label
map (never fitted on). One fixed small segmenter (`TinySegmenter`, one budget, one seed),
trained on the real `train/` pairs, segments
(a) the real `val/` images: `real_miou` (what the segmenter can do at all);
(b) each arm's painted `val/` images, scored against the maps they were painted from
    (label consistency, the SPADE paper's protocol): `<arm>_miou`.
FD, precision and recall (k = 5) of each arm's paintings against the real `val/` images are
computed in the `random` feature space (a seeded, untrained `SmallCNN` at the native 128x96:
no download, no data; with 101 images per side FD is biased upwards, so compare arms with
each other and with the `real_train` row, real `train/` images against real `val/`).
Utility: the same segmenter trained on `train/` + images the best arm painted for street
simulator label maps (`--sim-frames` frames of `configs/sim2real_street.yaml`'s simulator,
CamVid style, 128x96), against `train/` alone (that model is (a)'s, so
`utility_train_miou` = `real_miou`), both scored on `val/`.

    python benchmarks/label2image.py [--steps 1400] [--families spade oasis controlnet] [--num-cpus 1]
        [--segmenter-steps 1000] [--sim-frames 300] [--out runs/bench_label2image]

mIoU is over the 11 CamVid classes (void pixels are ignored). Prints the per-class IoU table,
then `real_miou=… spade_miou=… oasis_miou=… controlnet_miou=… utility_train_miou=…
utility_train_plus_synthetic_miou=…` (nan for an arm not run). An arm whose job is already in
`--out` is reused (delete its folder to refit); scores are cached in `--out/scores.json`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from transfer_common import REPO, benchmark_args, cached, camvid, configured, fingerprint, run_family, save_grid, show_progress

from augment.generators.base import SampleRequest, checkpoint_sha256
from augment.generators.spade_train import palette
from augment.metrics.distribution import frechet_distance, gaussian_stats
from augment.metrics.features import RandomExtractor
from augment.metrics.knn import prdc
from augment.metrics.utility import TinySegmenter, confusion_matrix, mean_iou, predict_masks, train_segmenter
from jobs.config import ExternalSourceConfig, StreetSimulatorConfig, parse_config
from jobs.registry import families
from jobs.sources import build_source

CONFIG = REPO / "configs" / "label2image_spade.yaml"
CONTROLNET_CONFIG = REPO / "configs" / "label2image_controlnet.yaml"  # same source; its own two-phase fit
STREET = REPO / "configs" / "sim2real_street.yaml"  # its simulator block: the utility's label maps
SEGMENTER_STEPS = 1000  # one fixed budget for every training set (the street benchmark's README run)
SEGMENTER_SEED = 5
PAINT_SEED = 1000  # painting seeds: PAINT_SEED + map index (the same for every arm)
FEATURE_SEED = 0
K = 5
GRID_MAPS = 6


class Arm(NamedTuple):
    kind: str  # the registered family the job's step runs
    fit: dict[str, Any]  # fit keys set on the config's
    config: Path  # the shipped config the arm runs


ARMS = {"spade": Arm("spade", {"discriminator": "patchgan"}, CONFIG),
        "oasis": Arm("spade", {"discriminator": "oasis"}, CONFIG),
        "controlnet": Arm("controlnet", {}, CONTROLNET_CONFIG)}


class Score(NamedTuple):
    miou: float
    pixel_accuracy: float
    per_class: list[float | None]  # the 11 non-void classes


def arm_config(args: Any, arm: Arm) -> dict[str, Any]:
    """The arm's shipped config with the options applied (`--steps` sets the SPADE arms' steps;
    the ControlNet arm keeps its config's two phases) and its own report off: the benchmark
    scores the model itself."""
    raw, _ = configured(arm.config, args, [arm.kind])
    if arm.config != CONFIG and args.steps is not None:
        raw["generate"][0]["fit"] = yaml.safe_load(arm.config.read_text())["generate"][0]["fit"]
    raw["report"] = {"enabled": False}
    return raw


def fitted(out: Path, arm: Arm, args: Any) -> tuple[Path, float]:
    """Run the arm's job unless `out` holds it (reused); its model folder and the job's seconds
    (saved beside it, so a rerun still reports how long the fit took)."""
    seconds = run_family(arm.config, arm_config(args, arm), arm.kind, out, arm.fit)
    timing = out / "bench_seconds.json"
    if seconds > 0:
        timing.write_text(json.dumps({"job_seconds": seconds}) + "\n")
    elif timing.is_file():
        seconds = float(json.loads(timing.read_text())["job_seconds"])
    model = out / "checkpoints" / arm.kind / "model"
    if not model.is_dir():
        raise SystemExit(f"{out}: the job finished without a model folder {model}")
    return model, seconds


def paint(model: Path, kind: str, maps: np.ndarray) -> np.ndarray:
    """One image per label map (int N x H x W class ids) from a saved model, seeds PAINT_SEED + i."""
    sampler = families()[kind].from_pretrained(model)
    n = len(maps)
    request = SampleRequest(labels=[-1] * n, seeds=[PAINT_SEED + i for i in range(n)],
                            ids=[f"map-{i}" for i in range(n)], label_maps=[m.astype(np.uint16) for m in maps])
    return np.stack([sample.image for sample in sampler.sample(request)])


def score(model: TinySegmenter, images: np.ndarray, masks: np.ndarray, num_classes: int, void: int) -> Score:
    """mIoU and pixel accuracy over the non-void classes (void truth pixels are not counted;
    predicting void is an error) and the per-class IoU."""
    confusion = confusion_matrix(masks, predict_masks(model, images), num_classes, ignore_index=void)
    _, per_class = mean_iou(confusion)
    kept = [iou for c, iou in enumerate(per_class) if c != void]
    present = [iou for iou in kept if iou is not None]
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    return Score(float(np.mean(present)) if present else 0.0, accuracy, kept)


def realism(extractor: RandomExtractor, real: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """FD, precision and recall of `images` against `real` in the extractor's feature space."""
    real_features, features = extractor(real), extractor(images)
    found = prdc(real_features, features, k=K)
    return {"fd": frechet_distance(gaussian_stats(real_features), gaussian_stats(features)),
            "precision": found["precision"], "recall": found["recall"]}


def street_maps(frames: int, class_names: list[str]) -> np.ndarray:
    """The masks of `frames` street-simulator frames as the sim-to-real config renders them
    (CamVid style, its size), int64 N x H x W; their class ids must mean CamVid's."""
    block = yaml.safe_load(STREET.read_text())["source"]
    config = parse_config({"source": {**block, "frames": frames}}).source
    if not isinstance(config, StreetSimulatorConfig):
        raise SystemExit(f"{STREET}: expected a street simulator source, got {config}")
    source = build_source(config)
    if list(source.class_names) != class_names:
        raise SystemExit(f"street simulator classes {source.class_names} are not CamVid's {class_names}")
    return np.stack([source.load(record).mask for record in source.records()]).astype(np.int64)


def label_grid(maps: np.ndarray, painted: dict[str, np.ndarray], real: np.ndarray, num_classes: int,
               path: Path) -> None:
    """Rows: colourised label map, each arm's painting, the real image; GRID_MAPS val maps."""
    index = np.unique(np.linspace(0, len(maps) - 1, GRID_MAPS).round().astype(int))
    colours = palette(num_classes)
    rows = [[colours[maps[i]] for i in index], *([images[i] for i in index] for images in painted.values()),
            [real[i] for i in index]]
    save_grid(rows, path)
    print(f"grid: {path} (rows: label map, {', '.join(painted)}, real; {len(index)} val/ maps)")


def main() -> None:
    parser = benchmark_args(__doc__, "label2image", families=tuple(ARMS))
    parser.add_argument("--segmenter-steps", type=int, default=SEGMENTER_STEPS)
    parser.add_argument("--sim-frames", type=int, default=300, help="street simulator maps painted for the utility")
    args = parser.parse_args()
    unknown = [a for a in args.families if a not in ARMS]
    if unknown:
        raise SystemExit(f"--families: unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    show_progress()
    registered = families()
    for arm in args.families:
        if ARMS[arm].kind not in registered:
            print(f"{arm}: skipped, the {ARMS[arm].kind!r} family is not registered here "
                  f"(registered: {', '.join(sorted(registered))})")
    arms = [a for a in args.families if ARMS[a].kind in registered]
    raw, _ = configured(CONFIG, args, sorted({ARMS[a].kind for a in arms}))
    job = parse_config(raw, base=CONFIG.parent)
    source = job.source
    if (not isinstance(source, ExternalSourceConfig) or source.root.name != "train" or source.width is None
            or source.height is None):
        raise SystemExit(f"{CONFIG}: expected an external CamVid train/ source with width and height, got {source}")
    class_names = list(source.class_names)
    void, num_classes = class_names.index("void"), len(class_names)
    width, height = source.width, source.height

    # 1. The fits, one arm after the other (each is a job: its fit, its shards).
    models = {arm: fitted(args.out / arm, ARMS[arm], args) for arm in arms}
    train, val = camvid("train", source, height, width), camvid("val", source, height, width)

    # 2. Every arm paints every val/ map (the same seeds); the fixed segmenter reads them.
    painted = {arm: paint(model, ARMS[arm].kind, val[1]) for arm, (model, _) in models.items()}
    label_grid(val[1], painted, val[0], num_classes, args.grid)

    @functools.cache
    def segmenter(name: str) -> TinySegmenter:
        images, masks = sets[name]
        return train_segmenter(images, masks, num_classes, seed=SEGMENTER_SEED, steps=args.segmenter_steps,
                               ignore_index=void, progress=f"segmenter {name}")

    sets: dict[str, tuple[np.ndarray, np.ndarray]] = {"train": train}
    base_key = {"steps": args.segmenter_steps, "seed": SEGMENTER_SEED, "train": fingerprint(*train),
                "val": fingerprint(*val)}

    def cached_score(name: str, trained_on: str, images: np.ndarray, extra: dict[str, Any]) -> Score:
        key = {**base_key, **extra, "trained_on": fingerprint(*sets[trained_on]), "images": fingerprint(images)}
        value = cached(args.out, name, key, lambda: list(score(segmenter(trained_on), images, val[1], num_classes,
                                                               void)))
        return Score(*value)

    scores = {"real": cached_score("real", "train", val[0], {})}
    for arm in arms:
        scores[arm] = cached_score(arm, "train", painted[arm], {"model": checkpoint_sha256(models[arm][0])})

    # 3. Realism of the paintings against the real val/ images (and real train/ as the floor).
    extractor = RandomExtractor(3, FEATURE_SEED)
    realism_of = {name: cached(args.out, f"realism_{name}", {"extractor": extractor.sha256, "real": fingerprint(val[0]),
                                                             "images": fingerprint(images)},
                               lambda images=images: realism(extractor, val[0], images))
                  for name, images in {"real_train": train[0], **painted}.items()}

    # 4. Utility: train/ + the best arm's paintings of street simulator maps, against train/ alone.
    plus = float("nan")
    if arms:
        best = max(arms, key=lambda a: scores[a].miou)
        sim_maps = street_maps(args.sim_frames, class_names)
        sim_images = paint(models[best][0], ARMS[best].kind, sim_maps)
        sets["train_plus_synthetic"] = (np.concatenate([train[0], sim_images]), np.concatenate([train[1], sim_maps]))
        scores["train_plus_synthetic"] = cached_score("train_plus_synthetic", "train_plus_synthetic", val[0],
                                                      {"painter": best})
        plus = scores["train_plus_synthetic"].miou
        print(f"utility: {len(train[0])} train/ pairs + {len(sim_images)} street maps painted by {best}")

    # 5. The tables and the line.
    shown = [n for n in class_names if n != "void"]
    columns = {"real": "real val", **{arm: arm for arm in arms}}
    if "train_plus_synthetic" in scores:
        columns["train_plus_synthetic"] = "real +synth"
    print(f"\nIoU on CamVid val/ ({len(val[0])} maps at {width}x{height}); segmenter trained on CamVid train/ "
          f"({len(train[0])} pairs, {args.segmenter_steps} steps); 'real val' = segmenting the real images, an arm = "
          "segmenting its paintings of the same maps, 'real +synth' = trained on train/ + painted street maps")
    print(f"{'class':<12}" + "".join(f"{c:>13}" for c in columns.values()))
    for c, name in enumerate(shown):
        cells = "".join(f"{'-' if scores[k].per_class[c] is None else format(scores[k].per_class[c], '.3f'):>13}"
                        for k in columns)
        print(f"{name:<12}{cells}")
    print(f"{'mIoU':<12}" + "".join(f"{scores[k].miou:13.3f}" for k in columns))
    print(f"{'pixel acc':<12}" + "".join(f"{scores[k].pixel_accuracy:13.3f}" for k in columns))
    print(f"\nagainst real val/ images, random SmallCNN features (seed {FEATURE_SEED}, {extractor.dim}-d, native "
          f"{width}x{height}), k={K}; job s: the arm's job (fit + painting its rows), steps {job.generate[0].fit.steps}")
    print(f"{'images':<12}{'FD':>10}{'precision':>11}{'recall':>9}{'job s':>9}")
    for name, found in realism_of.items():
        seconds = f"{models[name][1]:9.0f}" if name in models else f"{'-':>9}"
        print(f"{name:<12}{found['fd']:10.4g}{found['precision']:11.3f}{found['recall']:9.3f}{seconds}")
    miou = {arm: scores[arm].miou if arm in scores else float("nan") for arm in ARMS}
    print(f"real_miou={scores['real'].miou:.3f} " + " ".join(f"{arm}_miou={value:.3f}" for arm, value in miou.items())
          + f" utility_train_miou={scores['real'].miou:.3f} utility_train_plus_synthetic_miou={plus:.3f}")


if __name__ == "__main__":
    main()
