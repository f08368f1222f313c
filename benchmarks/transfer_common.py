"""What the benchmarks share: running the shipped config once per family, reading its shards,
CamVid at a given size, cached scores, and the picture of frames beside their translations."""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import yaml
from PIL import Image

from augment.images import crop_resize
from jobs.config import ExternalSourceConfig, parse_config
from jobs.registry import families
from jobs.sources import build_source
from jobs.runner import run_job

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("cyclegan", "cycada")

MIN_CELL = 96  # grid cells are enlarged (nearest) to at least this many pixels high


def benchmark_args(doc: str, name: str, task_steps: int | None = None,
                   families: tuple[str, ...] = FAMILIES) -> argparse.ArgumentParser:
    """The options the benchmarks take; `name` names the default output folder and grid. The
    sim-to-real ones (`task_steps` given) also take --frames and CyCADA's --task-steps."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="generator fit steps (default: the config's)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / f"bench_{name}")
    parser.add_argument("--families", nargs="+", default=list(families))
    if task_steps is not None:
        parser.add_argument("--frames", type=int, default=None, help="simulator frames (default: the config's)")
        parser.add_argument("--task-steps", type=int, default=task_steps,
                            help="CyCADA's f_S steps, added before the translator's (both families get the same "
                                 "translator steps)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    parser.add_argument("--grid", type=Path, default=REPO / "docs" / f"{name}.png",
                        help="where to save simulator frames beside their translations")
    return parser


def configured(config: Path, args: argparse.Namespace, wanted: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The shipped config with the options applied, and the registered families asked for
    (`wanted`, default --families)."""
    raw = yaml.safe_load(config.read_text())
    if args.steps is not None:
        raw["generate"][0].setdefault("fit", {})["steps"] = args.steps
    if getattr(args, "frames", None) is not None:
        raw["source"]["frames"] = args.frames
    if args.num_cpus is not None:
        raw["execution"] = {**raw.get("execution", {}), "num_cpus": args.num_cpus, "num_workers": args.num_cpus}
    wanted = args.families if wanted is None else wanted
    kinds = [k for k in wanted if k in families()]
    if not kinds:
        raise SystemExit(f"none of {wanted} is a registered family")
    return raw, kinds


def camvid(split: str, like: ExternalSourceConfig, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """CamVid `split` (a folder beside `like`'s root, read with its class ids) at height x width:
    the centred crop of that aspect, resized (4:3 to 4:3 is a pure resize; masks nearest)."""
    source = build_source(like.model_copy(update={"root": like.root.parent / split, "image_size": None,
                                                  "width": None, "height": None}))
    images, masks = [], []
    for record in source.records():
        sample = source.load(record)
        images.append(crop_resize(sample.image, height, width))
        masks.append(crop_resize(sample.mask.astype(np.uint8)[..., None], height, width, nearest=True)[..., 0])
    return np.stack(images), np.stack(masks).astype(np.int64)


def fit_extras(raw: dict[str, Any], task_steps: int, **shared: Any) -> dict[str, dict[str, Any]]:
    """Per family, the `fit` keys added to the config's: CyCADA's f_S phase comes before the
    translator's, so both families get the config's translator steps."""
    steps = raw["generate"][0]["fit"]["steps"]
    return {"cyclegan": dict(shared), "cycada": {**shared, "task_steps": task_steps, "steps": steps + task_steps}}


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' bytes: an arm's cached score is reused only for the same rows."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cached(out: Path, name: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """`compute()` once per arm: a benchmark run per family (on two cores, the fits run side
    by side) reuses the arms another run already scored, when their inputs (`key`: steps,
    rows, seed) are the same."""
    path = out / "scores.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    entry = saved.get(name)
    if entry is not None and entry["key"] == key:
        print(f"{name}: reusing its score from {path}")
        return entry["value"]
    value = compute()
    saved = json.loads(path.read_text()) if path.is_file() else {}  # another run may have written meanwhile
    saved[name] = {"key": key, "value": value}
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return value


def show_progress() -> None:
    """The job's log lines (stages, progress with rate and ETA) on stderr, as the CLI shows them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_family(config: Path, raw: dict[str, Any], kind: str, out: Path, fit: dict[str, Any] | None = None) -> float:
    """Run the config with its transfer step's kind set to `kind` (and `fit` keys added); the
    seconds it took, 0 when `out` already holds a finished job (it is reused)."""
    if (out / "shards" / "_manifest.json").is_file():
        print(f"{kind}: reusing {out}")
        return 0.0
    raw = copy.deepcopy(raw)
    raw["generate"][0]["kind"] = kind
    raw["generate"][0].setdefault("fit", {}).update(fit or {})
    raw["name"] = f"{raw.get('name', 'job')}_{kind}"
    # Every translated row is published with its score: the benchmark applies the config's
    # gate itself (`gated`), so one fit gives the figures with and without it.
    raw.setdefault("filter", {})["min_label_preservation"] = None
    started = time.perf_counter()
    run_job(parse_config(raw, where=f"{config} ({kind})", base=config.parent), out)
    return time.perf_counter() - started


def gate_of(raw: dict[str, Any]) -> float | None:
    """The shipped config's `filter.min_label_preservation` (the benchmark's jobs publish every row)."""
    return (raw.get("filter") or {}).get("min_label_preservation")


def passes(row: dict[str, Any], gate: float | None) -> bool:
    """Whether a row's stored label preservation clears `gate` (None: no gate)."""
    score = (row.get("scores") or {}).get("label_preservation")
    return gate is None or (score is not None and score >= gate)


def preservation(out: Path, kind: str, gate: float | None) -> str:
    """One line from the job's report: the rows' mean label preservation, the task model's
    ceiling on untouched held-out source frames, and the share that clears the gate."""
    report = json.loads((out / "report" / "report.json").read_text())
    block = (report.get("label_preservation") or {}).get(kind) or {}
    ceiling = ((report.get("label_preservation_model") or {}).get("training") or {}).get("source_holdout") or {}
    rows = rows_of(out, kind, ["scores"], required=False)
    cleared = sum(passes(r, gate) for r in rows)
    mean, top = block.get("mean"), ceiling.get("mean")
    return (f"{kind}: label preservation mean {'n/a' if mean is None else f'{mean:.3f}'} (ceiling on untouched "
            f"held-out source frames {'n/a' if top is None else f'{top:.3f}'}); {cleared} of {len(rows)} rows "
            f"clear the config's gate {gate}")


def decode(cell: dict[str, Any], mode: str | None = "RGB") -> np.ndarray:
    image = Image.open(io.BytesIO(cell["bytes"]))
    return np.asarray(image.convert(mode) if mode else image)


def rows_of(out: Path, source: str, columns: list[str], *, required: bool = True) -> list[dict[str, Any]]:
    """The published training rows of one `source`, sorted by id (none: exit, unless not `required`:
    the quality gate may have dropped every row of a family)."""
    table = pq.read_table(out / "shards", columns=["id", "source", *columns])
    rows = sorted((r for r in table.to_pylist() if r["source"] == source), key=lambda r: r["id"])
    if not rows and required:
        raise SystemExit(f"{out}: no {source} rows in the shards")
    if not rows:
        print(f"{out}: no published {source} rows (the gate dropped them all: see its report's label preservation)")
    return rows


def transfer_grid(outs: dict[str, Path], real: np.ndarray, path: Path, n: int = 6) -> Path:
    """A PNG: n simulator frames (first column) beside their translation by each family, then a
    row of real target images. Frames are those every family kept (the gate may drop some)."""
    first = next(iter(outs.values()))
    frames = {r["id"]: r for r in rows_of(first, "simulator", ["image"])}
    made = {kind: {r["parent_id"]: r for r in rows_of(out, kind, ["image", "parent_id"], required=False)}
            for kind, out in outs.items()}
    outs = {kind: out for kind, out in outs.items() if made[kind]}
    made = {kind: rows for kind, rows in made.items() if rows}
    shared = [pid for pid in sorted(frames) if all(pid in m for m in made.values())][:n]
    rows = [[decode(frames[pid]["image"]), *(decode(made[kind][pid]["image"]) for kind in outs)] for pid in shared]
    height, width = rows[0][0].shape[:2] if rows else real.shape[1:3]
    columns = 1 + len(outs)
    reals = [np.asarray(Image.fromarray(r).convert("RGB").resize((width, height))) for r in real[:columns]]
    rows.append(reals + [np.zeros((height, width, 3), np.uint8)] * (columns - len(reals)))
    save_grid(rows, path)
    print(f"grid: {path} (columns: simulator, {', '.join(outs)}; last row: real target images)")
    return path


def save_grid(rows: list[list[np.ndarray]], path: Path) -> Path:
    """A PNG of uint8 HxWx3 cells of one size, row by row, each enlarged (nearest) to at least
    `MIN_CELL` pixels high, on white with 2-pixel gaps."""
    height, width = rows[0][0].shape[:2]
    scale = max(1, -(-MIN_CELL // height))
    columns = max(len(row) for row in rows)
    pad = 2
    canvas = np.full((len(rows) * (height * scale + pad), columns * (width * scale + pad), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            big = np.asarray(Image.fromarray(cell).resize((width * scale, height * scale), Image.Resampling.NEAREST))
            y, x = i * (height * scale + pad), j * (width * scale + pad)
            canvas[y:y + height * scale, x:x + width * scale] = big
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
