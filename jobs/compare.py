"""`synthaug compare OUT1 OUT2`: two jobs' reports side by side (text, optionally HTML)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from augment.errors import ConfigError
from augment.report.assemble import REPORT_SCHEMA
from augment.report.files import REPORT_JSON
from jobs.report import REPORT_DIR

HEADLINE = ["fd", "kid_mean", "precision", "recall", "density", "coverage", "near_copy_fraction"]


def load_report(out: Path) -> dict[str, Any]:
    path = out / REPORT_DIR / REPORT_JSON
    if not path.is_file():
        raise ConfigError(f"{out}: no {REPORT_DIR}/{REPORT_JSON}; run `synthaug report {out}` first")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if report.get("schema") != REPORT_SCHEMA:
        # Older reports name their keys differently (e.g. "fid" / "fd_domain" for "fd"); the shards remain.
        raise ConfigError(f"{path}: report schema {report.get('schema')!r}, this synthaug reads "
                          f"{REPORT_SCHEMA}; run `synthaug report {out}` to recompute it")
    return report


def headline_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (feature space, synthetic source): overall numbers, verdict, CAS."""
    rows = []
    cas = report.get("utility", {}).get("classification", {}).get("classification_accuracy_score")
    for kind, block in report.get("metrics", {}).items():
        for tag, result in block.items():
            if tag == "floor":
                continue
            verdict = report.get("verdicts", {}).get(tag, {}).get("overall", {})
            rows.append({"features": kind, "source": tag, **{n: result["overall"].get(n) for n in HEADLINE},
                         "cas": cas, "grade": verdict.get("grade"), "verdict": verdict.get("line")})
    return rows


def _fmt(value: Any) -> str:
    return "–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def compare(first: Path, second: Path) -> tuple[str, list[dict[str, Any]]]:
    """A text table and the rows behind it (job, features, source, headline numbers)."""
    rows = []
    for out in (first, second):
        report = load_report(out)
        for row in headline_rows(report) or [{"features": "–", "source": "(no synthetic rows)"}]:
            rows.append({"job": f"{report['job']['name']} ({out})", **row})
    columns = ["job", "features", "source", *HEADLINE, "cas", "grade"]
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    lines += [f"{r['job']} / {r['source']}: {r.get('verdict') or '–'}" for r in rows]
    return "\n".join(lines), rows


def compare_html(rows: list[dict[str, Any]]) -> str:
    columns = ["job", "features", "source", *HEADLINE, "cas", "grade", "verdict"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>synthaug compare</title><style>"
            "body{font-family:system-ui,sans-serif;margin:24px} table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body><h1>synthaug compare</h1>"
            f"<table><tr>{head}</tr>{body}</table></body></html>\n")
