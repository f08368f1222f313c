"""How far street-simulator frames are from CamVid: class frequency, layout and colour.

For N simulator frames (4:3 by default, 160×120) and the CamVid `train/` masks (never
`val/`: that split scores the project's own benchmarks), per class:

- `freq`: share of the labelled pixels (CamVid's void, id 11, is left out of both, as a
  segmentation loss with an ignore index leaves it out);
- `present`: share of frames in which the class has at least one pixel;
- `row`: mean row of its pixels, 0 = top of the frame, 1 = bottom;
- `rgb`: mean colour of its pixels.

Prints a table and ends with one line of name=value pairs:
`l1_class_freq` (L1 distance of the two frequency vectors, 0..2), `mean_abs_row_diff` (mean
over classes present in both of |row_sim - row_real|), `mean_rgb_dist` (mean over those
classes of the Euclidean RGB distance / 255), `classes_missing_in_sim` (CamVid classes with
no simulator pixel) and `classes_under_tenth` (simulator freq < 1/10 of CamVid's).

    python benchmarks/street_stats.py --frames 200 [--width 160 --height 120] [--controls '{"style": "camvid"}']
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from simulators.street import CAMVID_CLASSES, StreetControls, StreetFamily
from simulators.source import frame_seed

CAMVID = Path("/work/shared/data/camvid")
VOID = CAMVID_CLASSES.index("void")
K = len(CAMVID_CLASSES)


class Stats:
    """Running per-class sums over frames of any size."""

    def __init__(self) -> None:
        self.pixels = np.zeros(K)
        self.present = np.zeros(K)
        self.row_sum = np.zeros(K)
        self.rgb_sum = np.zeros((K, 3))
        self.frames = 0

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        h, w = mask.shape
        flat = mask.ravel().astype(np.int64)
        counts = np.bincount(flat, minlength=K)[:K]
        # Pixels weighted by 1 / frame area so that frames of different sizes count alike.
        self.pixels += counts / (h * w)
        self.present += counts > 0
        rows = np.repeat((np.arange(h) + 0.5) / h, w)
        self.row_sum += np.bincount(flat, weights=rows, minlength=K)[:K] / (h * w)
        rgb = image.reshape(-1, 3).astype(np.float64)
        for c in range(3):
            self.rgb_sum[:, c] += np.bincount(flat, weights=rgb[:, c], minlength=K)[:K] / (h * w)
        self.frames += 1

    def summary(self) -> dict[str, np.ndarray]:
        labelled = self.pixels.copy()
        labelled[VOID] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "freq": labelled / labelled.sum(),
                "void": np.array(self.pixels[VOID] / self.pixels.sum()),
                "present": self.present / max(self.frames, 1),
                "row": self.row_sum / self.pixels,
                "rgb": self.rgb_sum / self.pixels[:, None],
            }


def camvid_stats(root: Path) -> Stats:
    stats = Stats()
    for mask_path in sorted((root / "train" / "masks").glob("*.png")):
        mask = np.asarray(Image.open(mask_path))
        image = np.asarray(Image.open(root / "train" / "images" / mask_path.name).convert("RGB"))
        stats.add(image, np.minimum(mask, VOID))
    return stats


def sim_stats(frames: int, width: int, height: int, seed: int, controls: StreetControls) -> Stats:
    family, stats = StreetFamily(), Stats()
    for i in range(frames):
        frame = family.render(family.describe(frame_seed(seed, i), controls, width=width, height=height))
        stats.add(frame.image, frame.mask)
    return stats


def compare(sim: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> dict[str, object]:
    both = (sim["freq"] > 0) & (real["freq"] > 0)
    labelled = np.arange(K) != VOID
    return {
        "l1_class_freq": round(float(np.abs(sim["freq"] - real["freq"])[labelled].sum()), 4),
        "mean_abs_row_diff": round(float(np.abs(sim["row"] - real["row"])[both].mean()), 4),
        "mean_rgb_dist": round(float((np.linalg.norm(sim["rgb"] - real["rgb"], axis=1) / 255)[both].mean()), 4),
        "classes_missing_in_sim": ",".join(CAMVID_CLASSES[k] for k in range(K)
                                           if labelled[k] and real["freq"][k] > 0 and sim["freq"][k] == 0) or "none",
        "classes_under_tenth": ",".join(CAMVID_CLASSES[k] for k in range(K)
                                        if labelled[k] and sim["freq"][k] < 0.1 * real["freq"][k]) or "none",
    }


def _rgb(v: np.ndarray) -> str:
    return "-" if np.isnan(v).any() else "%3d,%3d,%3d" % tuple(np.rint(v).astype(int))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--controls", default="{}", help="StreetControls as JSON")
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    args = parser.parse_args()
    controls = StreetControls.model_validate(json.loads(args.controls))
    t0 = time.perf_counter()
    sim = sim_stats(args.frames, args.width, args.height, args.seed, controls).summary()
    t_sim = time.perf_counter() - t0
    real = camvid_stats(args.camvid).summary()
    print(f"simulator: {args.frames} frames {args.width}x{args.height} controls {args.controls} ({t_sim:.1f} s); "
          f"CamVid train/ (void {float(real['void']):.3f} of its pixels, left out)")
    print(f"{'class':<11} {'freq sim':>9} {'real':>7} {'present sim':>12} {'real':>5} {'row sim':>8} {'real':>5}"
          f"  {'rgb sim':>11}  {'rgb real':>11}")
    for k, name in enumerate(CAMVID_CLASSES):
        if k == VOID:
            continue
        print(f"{name:<11} {sim['freq'][k]:9.4f} {real['freq'][k]:7.4f} {sim['present'][k]:12.2f} "
              f"{real['present'][k]:5.2f} {sim['row'][k]:8.2f} {real['row'][k]:5.2f}  {_rgb(sim['rgb'][k]):>11}  "
              f"{_rgb(real['rgb'][k]):>11}")
    print(" ".join(f"{k}={v}" for k, v in compare(sim, real).items()))


if __name__ == "__main__":
    main()
