"""report.json (sorted keys) and report.html, written next to each other, each atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from augment.report.gallery import gallery_pictures, gallery_summary
from augment.report.html import render_html
from augment.report.inputs import RealSide, SyntheticRows

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def write_report(report: dict[str, Any], folder: Path, real: RealSide, synthetic: dict[str, SyntheticRows],
                 per_class: int = 8, worst: dict[str, dict[str, list[dict[str, Any]]]] | None = None) -> Path:
    """Write both files into `folder`; returns the path of report.json. `worst`: {judge name:
    its worst rows' pictures (`preservation.worst_pictures`)}; the gallery of worst rows by
    realism, confidence and nearness to training comes from `synthetic`."""
    folder.mkdir(parents=True, exist_ok=True)
    gallery = gallery_pictures(real.train, synthetic, report["classes"])
    report = {**report, "gallery": gallery_summary(gallery)}  # the rows the page shows, for scripts
    text = json.dumps(report, indent=2, sort_keys=True, default=_json_default) + "\n"
    pictures = {"real": (real.train.images, real.train.labels, real.train.ids),
                "synthetic": {tag: (rows.images, rows.labels, rows.ids) for tag, rows in synthetic.items()},
                "worst": worst or {}, "gallery": gallery}
    page = render_html(json.loads(text), pictures, per_class)  # both rendered before either is replaced
    _write_atomic(folder / REPORT_JSON, text)
    _write_atomic(folder / REPORT_HTML, page)
    return folder / REPORT_JSON


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
