"""The README's FiftyOne App screenshot (docs/fiftyone_app.png): real and synthetic digits side
by side in the App's grid, lowest realism first.

A small job on the built-in digits (classical and cgan children, report on, tiny settings) is
made once under --out, exported as `synthaug fiftyone` does into a private MongoDB
(`augment.fiftyone_db`), and each synthetic row's nearest real training row is found in the
report's feature space (the `nearest_real_id` field). The App then shows the six lowest-realism
rows of each synthetic source, lowest realism first, each followed by its nearest real row, with
tags and realism on the tiles; headless Chromium (/usr/bin/chromium, through Playwright) takes
a 1400×900 screenshot.

    python benchmarks/fiftyone_screenshot.py [--out runs/fiftyone_screenshot] [--png docs/fiftyone_app.png]

Last line: `rows=… synthetic=… shown=… seconds=… screenshot=…`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from augment.fiftyone_db import free_port, use_private_mongo  # noqa: E402
from tests.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

PER_SOURCE = 6  # synthetic rows shown per source, each with its nearest real row: one screen in all
TIMEOUT_MS = 120_000


def make_job(out: Path) -> None:
    from jobs.config import parse_config
    from jobs.runner import run_job

    if (out / "shards" / "_manifest.json").is_file():
        return
    run_job(parse_config({
        "name": "fo-screenshot", "seed": 0, "source": {"kind": "digits", "image_size": 32, "color": "gray"},
        "split": {"holdout": 0.2}, "quota": {"per_class": {"0": 200, "1": 200}},
        "augment": {"transforms": [{"name": "Affine", "p": 0.9, "params": {"rotate": [-10, 10]}}]},
        "generate": [{"kind": "cgan", "fit": {"steps": 60, "batch_size": 16, "g_channels": 8, "d_channels": 8,
                                              "z_dim": 16}}],
        "report": {"extractor_steps": 40, "utility": {"steps": 10, "segmentation": False}, "max_per_source": 200},
        "output": {"rows_per_shard": 500}}), out, overwrite=True)


def pairs_view(dataset, per_source: int):  # noqa: ANN001, ANN201 (FiftyOne types)
    """The `per_source` lowest-realism rows of each synthetic source, lowest realism first, each
    followed by its nearest real row."""
    from fiftyone import ViewField as F

    by_row_id = dict(zip(*dataset.values(["row_id", "id"]), strict=True))
    synthetic = dataset.match_tags("synthetic").exists("scores.realism")
    lowest = []
    for source in synthetic.distinct("source"):
        part = synthetic.match(F("source") == source).sort_by("scores.realism").limit(per_source)
        lowest += zip(*part.values(["scores.realism", "id", "nearest_real_id"]), strict=True)
    ids: list[str] = []
    for _, sample_id, nearest in sorted(lowest):
        ids += [i for i in (sample_id, by_row_id.get(nearest)) if i is not None and i not in ids]
    return dataset.select(ids, ordered=True)


def screenshot(url: str, png: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900})
        context.add_init_script("window.IS_PLAYWRIGHT = true;")  # no pop-overs, no analytics
        page = context.new_page()
        try:
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="domcontentloaded")
            page.locator('[data-cy="looker"]').first.wait_for()
            for field in ("tags", "scores.realism"):  # shown on every tile
                page.locator(f'[data-cy="checkbox-{field}"]').click()
            expect(page.locator('[data-cy="tag-tags-real"]').first).to_be_visible()
            expect(page.locator('[data-cy="tag-scores.realism"]').first).to_be_visible()
            page.wait_for_timeout(3000)  # the tiles' images decode after they arrive (the App's
            # event stream never lets the network go idle)
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=png)
        except Exception:
            page.screenshot(path=png.with_name(f"{png.stem}-failed.png"))  # what the App showed instead
            raise
        finally:
            context.close()


def shown_path(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "fiftyone_screenshot")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "fiftyone_app.png")
    args = parser.parse_args()
    start = time.perf_counter()
    mongo = use_private_mongo()  # never the user's database
    session = None
    try:
        make_job(args.out)
        import fiftyone as fo

        from jobs.browse import LOOPBACK, export_job
        from jobs.fiftyone_views import embed, nearest_real, reference_settings

        dataset, result, _ = export_job(args.out, "fo-screenshot", brain=False)
        nearest_real(dataset, embed(dataset, reference_settings(args.out)))
        view = pairs_view(dataset, PER_SOURCE)
        # The sidebar with tags, labels and scores unfolded (the App folds some groups on large
        # datasets): the realism checkbox must be on screen to be clicked.
        groups = fo.DatasetAppConfig.default_sidebar_groups(dataset)
        for group in groups:
            group.expanded = group.name in ("tags", "labels", "scores")
        dataset.app_config.sidebar_groups = groups
        dataset.save()
        port = free_port()
        session = fo.launch_app(view, port=port, address=LOOPBACK, remote=True, auto=False)
        screenshot(f"http://{LOOPBACK}:{port}/", args.png)
        figures = f"rows={result.samples} synthetic={len(dataset.match_tags('synthetic'))} shown={len(view)}"
    finally:
        if session is not None:
            session.close()
        mongo.stop()
    print(f"{figures} seconds={time.perf_counter() - start:.0f} screenshot={shown_path(args.png)}")


if __name__ == "__main__":
    main()
