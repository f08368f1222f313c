"""Pictures for the HTML report, returned as PNG bytes (matplotlib's Agg backend, no display)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from augment.report.tiles import CELL, Tile, tile_grid


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


@dataclass(frozen=True)
class Grid:
    """A sample grid's PNG and the ids it shows: per class row, per block (real, synthetic)."""

    png: bytes
    ids: list[list[list[str]]]


Shown = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # images, labels (-1: none), row ids (None: not known)


def sample_grid(real: Shown, synthetic: Shown, class_names: list[str], per_class: int, cell: int = CELL,
                row_labels: bool = True) -> Grid:
    """One row per class: `per_class` real images, a gap, `per_class` synthetic ones; each tile
    captioned with its row id."""
    if not len(real[0]) and not len(synthetic[0]):
        raise ValueError("sample_grid: no images")
    blocks = [real, synthetic] if len(synthetic[0]) else [real]
    rows, ids = [], []
    for c in range(len(class_names)):
        row, row_ids = [], []
        for images, labels, names in blocks:
            picked = np.flatnonzero(labels == c)[:per_class]
            shown = ["" if names is None else str(names[i]) for i in picked]
            row.append([Tile(images[i], (name,) if name else ()) for i, name in zip(picked, shown)])
            row_ids.append([name for name in shown if name])
        rows.append(row)
        ids.append(row_ids)
    png = tile_grid(rows, [per_class] * len(blocks), row_labels=class_names if row_labels else None, cell=cell)
    return Grid(png, ids)


def per_class_bars(class_names: list[str], series: dict[str, list[float | None]], title: str,
                   ylabel: str) -> bytes:
    """Grouped bars per class, one colour per series (missing values are left out)."""
    fig, ax = _figure(min(11.0, max(6.0, 0.3 * len(class_names) * max(1, len(series)) + 2)), 3.4)
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, class_names, rotation=45 if max(map(len, class_names), default=0) > 3 else 0)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:  # below the axes, so it never hides a bar or the title
        ax.legend(frameon=False, fontsize=9, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _png(fig)


def sweep_plot(parameter: str, rows: list[dict[str, Any]]) -> bytes:
    """Precision, recall, coverage and confidence at each swept value of a family's knob; `rows`
    come in the family's order (most diverse first), each with its `label`."""
    fig, ax = _figure(6.5, 3.6)
    x = np.arange(len(rows))
    for key, style in (("precision", "o-"), ("recall", "s-"), ("coverage", "^-"), ("confidence", "d--")):
        ax.plot(x, [np.nan if row.get(key) is None else row[key] for row in rows], style, label=key)
    ax.set_xticks(x, [row["label"] for row in rows])
    ax.set_xlabel(f"{parameter} (towards fidelity →)")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(f"Fidelity vs diversity over {parameter}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _png(fig)


def precision_recall_scatter(points: dict[str, dict[str, tuple[float, float]]], title: str) -> bytes:
    """Per-class (recall, precision) points, one marker per set; the class name labels each."""
    fig, ax = _figure(5.0, 4.4)
    markers = ["o", "s", "^", "D", "v"]
    for i, (label, by_class) in enumerate(points.items()):
        xs = [p[0] for p in by_class.values()]
        ys = [p[1] for p in by_class.values()]
        ax.scatter(xs, ys, marker=markers[i % len(markers)], label=label, alpha=0.8)
        for name, (x, y) in by_class.items():
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    # Zoom to where the points are (most sets sit near the top right), never past [0, 1].
    values = [v for by_class in points.values() for p in by_class.values() for v in p]
    low = max(0.0, min(values, default=0.0) - 0.05)
    low = 0.0 if low < 0.3 else low
    ax.set_xlim(low - 0.01, 1.02)
    ax.set_ylim(low - 0.01, 1.02)
    ax.set_xlabel("recall (diversity: real covered)")
    ax.set_ylabel("precision (fidelity: inside real)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    return _png(fig)
