"""The report's "tune" block: the tuner's sweep (`jobs.tune`) ranked, its choice, and a plot.

Read from OUT/tune/tune.json as the tune stage wrote it; the block lists the settings best
first (the order that chose), so the chosen one is the first row.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np


def tune_summary(path: Path, class_names: list[str]) -> dict[str, Any] | None:
    """The block (None: the job was not tuned)."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    rows = sorted(stored["rows"], key=lambda row: row["rank"])
    return {"chosen": stored["chosen"], "validation": stored["validation"], "fit_records": stored["fit_records"],
            "budget": stored["budget"], "axes": stored["axes"], "seconds": stored["seconds"],
            "rows": [{**row, "per_class": dict(zip(class_names, row["per_class"]))} for row in rows],
            "rule": "ranked by validation accuracy, then validation log loss (lower first), then grid order; the "
                    "first is chosen"}


def tune_plot(rows: list[dict[str, Any]]) -> bytes:
    """Validation accuracy of every setting, best at the top, the chosen one marked."""
    from augment.report.plots import _figure, _png

    shown = rows[:40]
    fig, ax = _figure(7.5, 0.9 + 0.28 * len(shown))
    y = np.arange(len(shown))[::-1]
    colours = ["#d95f02" if i == 0 else "#7570b3" for i in range(len(shown))]
    ax.barh(y, [row["accuracy"] for row in shown], color=colours)
    ax.set_yticks(y, [row["setting"]["label"] for row in shown], fontsize=8)
    low = min(row["accuracy"] for row in shown)
    ax.set_xlim(max(0.0, low - 0.1), 1.0)
    ax.set_xlabel("validation accuracy (chosen: orange)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def tune_section(report: dict[str, Any], img: Any, fmt: Any) -> str:
    """The HTML section; `img(png, alt)` and `fmt(value)` are the page's own helpers."""
    block = report.get("tune")
    if not block:
        return ""
    validation = block["validation"]
    cells = "".join(
        f"<tr><td>{row['rank']}</td><td>{html.escape(row['setting']['label'])}</td><td>{fmt(row['accuracy'])}</td>"
        f"<td>{fmt(row['log_loss'])}</td><td>{row['n_real']}</td><td>{row['n_synthetic']}</td>"
        f"<td>{row['dropped']}</td></tr>" for row in block["rows"])
    return (f"<h2>Tuning</h2><p class='caption'>Chosen: <b>{html.escape(block['chosen']['label'])}</b>. Each "
            f"setting trained the utility classifier ({block['budget']['steps']} steps) on the real records the "
            f"generators fitted on ({block['fit_records']['records']}) plus its synthetic rows, and was scored on "
            f"{validation['records']} real training images held out from every fit (never the holdout); "
            f"{html.escape(block['rule'])}. Tuning took {block['seconds']:.0f} s.</p>"
            "<table><tr><th>rank</th><th>setting</th><th>validation accuracy</th><th>log loss</th><th>real</th>"
            "<th>synthetic</th><th>dropped by the gate</th></tr>" + cells + "</table>"
            + img(tune_plot(block["rows"]), "tuning"))
