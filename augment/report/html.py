"""report.html: one self-contained page (images inlined as base64), built from report.json.

Top to bottom: what was compared, the verdicts, the pictures a person looks at first
(real beside synthetic per class), then the metric tables with the real-vs-real floor,
plots, downstream utility, label preservation (rows made from a parent record: the worst
beside their parents), the quality filter and notes.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

import numpy as np

from augment.report.compare import fd_title
from augment.report.inputs import UNLABELLED
from augment.report.licences import licence_section
from augment.report.plots import (
    per_class_bars,
    precision_recall_scatter,
    sample_grid,
    sweep_plot,
)
from augment.report.tiles import CELL
from augment.report.tune import tune_section
from augment.report.verdict import grade_rules

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 24px; color: #1f2328; line-height: 1.45; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #d0d7de;
     padding-bottom: 4px; } h3 { margin-top: 22px; }
.sub { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; }
th { background: #f6f8fa; } td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fbfcfd; }
.floor { color: #6e7781; font-size: 12px; }
.grade { display: inline-block; min-width: 44px; text-align: center; border-radius: 10px; padding: 1px 8px;
         font-size: 12px; font-weight: 600; color: white; }
.good { background: #1a7f37; } .fair { background: #bf8700; } .poor { background: #cf222e; }
.none { background: #8c959f; }
img { max-width: 100%; } .grid img { image-rendering: pixelated; border: 1px solid #d0d7de; }
.caption { color: #59636e; font-size: 13px; margin: 2px 0 14px; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: 6px 10px; border-radius: 6px; margin: 6px 0; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; } figure { margin: 0 0 8px; }
figcaption { font-size: 13px; color: #59636e; margin-bottom: 4px; } td.ids { font-size: 12px; }
"""

METRIC_COLUMNS = [("precision", "precision"), ("recall", "recall"), ("density", "density"),
                  ("coverage", "coverage"), ("kid_mean", "KID"), ("realism_median", "realism (median)"),
                  ("near_copy_fraction", "near copies")]


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _value(block: dict[str, Any], metric: str) -> str:
    """A metric cell; KID with its spread over subsets."""
    if metric == "kid_mean" and block.get("kid_std") is not None and block.get("kid_mean") is not None:
        return f"{_fmt(block['kid_mean'])} ± {_fmt(block['kid_std'])}"
    return _fmt(block.get(metric))


def _grade(grade: str) -> str:
    return f'<span class="grade {grade}">{html.escape(grade)}</span>'


def _header(report: dict[str, Any]) -> str:
    real, pre = report["real"], report["preprocessing"]
    sources = ", ".join(f"<b>{html.escape(t)}</b> {s['rows']:,} rows ({s['analysed']:,} analysed)"
                        for t, s in report["sources"].items()) or "none"
    parts = [f"<h1>Quality report — {html.escape(report['job']['name'])}</h1>",
             (f'<p class="sub">config {report["job"]["config_hash"][:12]} · real side: {html.escape(real["origin"])} '
              f'({real["train"]:,} train, {real["holdout"]:,} holdout) · synthetic: {sources}</p>'),
             (f'<p class="sub">every image resized to {pre["size"]}×{pre["size"]} ({html.escape(pre["resize"])}), '
              f'{pre["channels"]} channel(s), before any feature extractor.</p>')]
    rows = []
    for name, ex in report["extractors"].items():
        accuracy = ex.get("holdout_accuracy")
        weak = " <b>(weak: treat its numbers with care)</b>" if ex.get("weak") else ""
        rows.append(f'<tr><td class="l">{html.escape(name)}</td><td class="l"><code>{str(ex.get("sha256", ""))[:16]}'
                    f'</code></td><td>{ex.get("dim", "–")}</td><td>{_fmt(accuracy)}{weak}</td></tr>')
    if rows:
        parts.append('<table><tr><th class="l">feature space</th><th class="l">sha256</th><th>dim</th>'
                     "<th>classifier holdout accuracy</th></tr>" + "".join(rows) + "</table>")
    parts += [f'<div class="note">{html.escape(n)}</div>' for n in report.get("notes", [])]
    return "\n".join(parts)


def _verdicts(report: dict[str, Any]) -> str:
    if not report["verdicts"]:
        return "<h2>Verdict</h2><p>No synthetic rows to judge in this job.</p>"
    parts = ["<h2>Verdict</h2>", _grade_rules(report)]
    for tag, lines in report["verdicts"].items():
        if not lines:
            parts.append(f"<h3>{html.escape(tag)}</h3><p>Not judged: no real holdout to compare against.</p>")
            continue
        overall = lines.get("overall", {"grade": "none", "line": "–"})
        parts.append(f"<h3>{html.escape(tag)} {_grade(overall['grade'])}</h3><p>{html.escape(overall['line'])}</p>")
        counts = report["sources"][tag]["class_counts"]
        rows = "".join(f'<tr><td class="l">{html.escape(name)}</td><td>{counts.get(name, 0):,}</td>'
                       f'<td>{_grade(v["grade"])}</td><td class="l">{html.escape(v["line"])}</td></tr>'
                       for name, v in lines.items() if name != "overall")
        parts.append('<table><tr><th class="l">class</th><th>analysed</th><th>grade</th><th class="l">why</th></tr>'
                     + rows + "</table>")
    return "\n".join(parts)


def _grade_rules(report: dict[str, Any]) -> str:
    rules = report.get("definitions", {}).get("grades") or grade_rules()
    items = "".join(f"<li>{_grade(grade)} {html.escape(rule)}</li>" for grade, rule in rules.items()
                    if grade != "none")
    return f'<ul class="caption">{items}</ul>'


def _grids(report: dict[str, Any], pictures: dict[str, Any], per_class: int) -> str:
    names = report["classes"]
    real = pictures["real"]
    if not pictures["synthetic"]:
        if not len(real[0]):
            return ""
        caption, cell, labelled = "One row per class: training images.", CELL, True
        if not (real[1] >= 0).any():  # unlabelled frames: a few rows of them, larger
            per_row = 4
            count = min(per_row * 3, len(real[0]))
            real = (real[0][:count], np.arange(count) // per_row, None if real[2] is None else real[2][:count])
            names, labelled = [""] * -(-count // per_row), False
            per_class, caption, cell = per_row, "Frames of this job (no class labels), at the metric size.", 96
        grid = sample_grid(real, (real[0][:0], real[1][:0], None), names, per_class, cell=cell, row_labels=labelled)
        return (f'<h2>Samples</h2><div class="grid">{_img(grid.png, "samples")}</div><p class="caption">{caption} '
                f"Under each image its row id.</p>" + _shown_ids(grid.ids, names, ["training"]))
    parts = ["<h2>Samples: real (left) beside synthetic (right)</h2>"]
    for tag, synthetic in pictures["synthetic"].items():
        shown_real, shown_names = real, names
        if not (synthetic[1] >= 0).any():  # unlabelled rows: one row of each
            count = min(per_class * 4, len(synthetic[0]))
            synthetic = (synthetic[0][:count], np.zeros(count, np.int64),
                         None if synthetic[2] is None else synthetic[2][:count])
            kept = min(count, len(real[0]))
            shown_real = (real[0][:kept], np.zeros(kept, np.int64), None if real[2] is None else real[2][:kept])
            shown_names = [UNLABELLED]
        grid = sample_grid(shown_real, synthetic, shown_names, per_class)
        parts.append(f"<h3>{html.escape(tag)}</h3><div class='grid'>{_img(grid.png, tag + ' samples')}</div>"
                     f'<p class="caption">One row per class. Left block real training images, right block '
                     f"{html.escape(tag)} rows; under each image its row id.</p>"
                     + _shown_ids(grid.ids, shown_names, ["real", html.escape(tag)]))
    return "\n".join(parts)


LOOKUP = "pandas.read_parquet('OUT/shards', filters=[('id', '==', ID)])"  # a shown row's full record


def _shown_ids(ids: list[list[list[str]]], names: list[str], blocks: list[str]) -> str:
    """The ids under a grid's pictures as text to copy: per row (class), per block, left to right."""
    if not any(any(block) for row in ids for block in row):
        return ""
    head = "".join(f'<th class="l">{b}</th>' for b in blocks[: len(ids[0]) if ids else 0])
    rows = "".join(f'<tr><td class="l">{html.escape(name)}</td>'
                   + "".join(f'<td class="l ids">{" ".join(f"<code>{html.escape(i)}</code>" for i in block)}</td>'
                             for block in row) + "</tr>" for name, row in zip(names, ids))
    return (f"<details><summary>Row ids shown, left to right (look one up: <code>{html.escape(LOOKUP)}</code>)"
            f'</summary><table><tr><th class="l">class</th>{head}</tr>{rows}</table></details>')


# The gallery's criteria (`augment.report.gallery`): each picture's heading.
_GALLERY_TITLES = {
    "realism": "Lowest realism: least like any real image",
    "confidence": "Lowest classifier confidence in their own class",
    "nearest": "Nearest to a training image: each row, then that training image",
}


def _gallery(pictures: dict[str, Any]) -> str:
    gallery = pictures.get("gallery") or {}
    if not gallery:
        return ""
    parts = ["<h2>Rows to look at first</h2>",
             "<p class='caption'>Per class, among the rows the report analysed: the least realistic (stored realism; "
             "below 1 lies outside every real k-NN ball), the ones the domain classifier least believes show their "
             "class (stored confidence), and the nearest to a real training image in the first feature space "
             "(<i>copy</i>: within the near-copy threshold). Under each image its row id and score; look a row up "
             f"with <code>{html.escape(LOOKUP)}</code>.</p>"]
    for tag, block in gallery.items():
        parts.append(f"<h3>{html.escape(tag)}</h3>")
        if len(block["classes"]) < block["class_count"]:
            parts.append(f'<p class="note">Showing {len(block["classes"])} of {block["class_count"]} classes: those '
                         "with the lowest median realism.</p>")
        missing = [c for c in _GALLERY_TITLES if c not in block["criteria"]]
        if missing:
            parts.append(f"<p class='caption'>Not shown, no row has the score: {html.escape(', '.join(missing))}.</p>")
        figures = "".join(f"<figure><figcaption>{_GALLERY_TITLES[c]}</figcaption><div class='grid'>"
                          f"{_img(shown['png'], f'{tag}: {c}')}</div></figure>"
                          for c, shown in block["criteria"].items())
        parts.append(f"<div class='gallery'>{figures}</div>")
        rows = "".join(
            f'<tr><td class="l">{html.escape(c)}</td><td class="l">{html.escape(name)}</td><td class="l ids">'
            + " ".join(f"<code>{html.escape(r['id'])}</code> {_fmt(r['score'], 2)}"
                       + (f" (<code>{html.escape(r['train_id'])}</code>)" if r["train_id"] else "") for r in picked)
            + "</td></tr>"
            for c, shown in block["criteria"].items() for name, picked in zip(block["classes"], shown["rows"]) if picked)
        parts.append("<details><summary>Their row ids and scores</summary><table><tr><th class='l'>criterion</th>"
                     f"<th class='l'>class</th><th class='l'>rows, worst first</th></tr>{rows}</table></details>")
    return "\n".join(parts)


def _metric_tables(report: dict[str, Any]) -> str:
    defined = report.get("definitions", {})
    said = [f"<b>{label}</b>: {html.escape(text)}." for label, text in (
        ("Precision, recall, density, coverage", defined.get("precision_recall")), ("FD", defined.get("fd")),
        ("KID", defined.get("kid")), ("Near copies", defined.get("near_copy", {}).get("rule")),
        ("Resizing", defined.get("resize"))) if text]
    parts = ["<h2>Metrics against the real holdout</h2>",
             ('<p class="caption">Each cell: synthetic value, and below it <span class="floor">the real-vs-real '
              "floor</span> (real train against the same holdout, same feature space). Precision = fidelity, "
              "recall/coverage = diversity.</p>"),
             "".join(f'<p class="caption">{line}</p>' for line in said)]
    if not any(block for block in report["metrics"].values()):
        return parts[0] + "<p>Nothing to compare: " + html.escape(
            "; ".join(report.get("notes", [])) or "no real holdout or no synthetic rows") + ".</p>"
    for kind, block in report["metrics"].items():
        floor = block.get("floor")
        key, title = "fd", fd_title(kind)
        for tag, result in block.items():
            if tag == "floor":
                continue
            head = "".join(f"<th>{label}</th>" for _, label in [(key, title)] + METRIC_COLUMNS)
            rows = []
            for name in ["overall"] + list(result["per_class"]):
                mine = result["overall"] if name == "overall" else result["per_class"][name]
                ref = (floor or {}).get("overall") if name == "overall" else (floor or {}).get("per_class", {}).get(name)
                cells = []
                for metric, _ in [(key, title)] + METRIC_COLUMNS:
                    low = "" if not ref or metric == "near_copy_fraction" else \
                        f'<br><span class="floor">{_value(ref, metric)}</span>'
                    cells.append(f"<td>{_value(mine, metric)}{low}</td>")
                rows.append(f'<tr><td class="l">{html.escape(name)}</td><td>{mine["n_synthetic"]:,}</td>'
                            + "".join(cells) + "</tr>")
            parts.append(f"<h3>{html.escape(tag)} in the <code>{html.escape(kind)}</code> feature space</h3>"
                         f'<table><tr><th class="l">class</th><th>n</th>{head}</tr>' + "".join(rows) + "</table>")
            parts.append(_plots(report, kind, tag, result, floor, key, title))
    return "\n".join(parts)


def _plots(report: dict[str, Any], kind: str, tag: str, result: dict[str, Any], floor: dict[str, Any] | None,
           key: str, title: str) -> str:
    names = [n for n in report["classes"] if n in result["per_class"]]
    if not names:
        return ""
    floor_pc = (floor or {}).get("per_class", {})
    mine = result["per_class"]
    images = [per_class_bars(names, {f"{tag} precision": [mine[n].get("precision") for n in names],
                                     "real precision": [floor_pc.get(n, {}).get("precision") for n in names],
                                     f"{tag} recall": [mine[n].get("recall") for n in names],
                                     "real recall": [floor_pc.get(n, {}).get("recall") for n in names]},
                             f"Fidelity and diversity per class ({kind} features)", "share"),
              per_class_bars(names, {tag: [mine[n].get(key) for n in names],
                                     "real vs real": [floor_pc.get(n, {}).get(key) for n in names]},
                             f"{title} per class (lower is closer to real)", title)]
    points = {tag: {n: (mine[n]["recall"], mine[n]["precision"]) for n in names
                    if mine[n].get("recall") is not None and mine[n].get("precision") is not None}}
    if floor_pc:
        points["real vs real"] = {n: (floor_pc[n]["recall"], floor_pc[n]["precision"]) for n in names
                                  if n in floor_pc and floor_pc[n].get("recall") is not None}
    images.append(precision_recall_scatter(points, f"Precision vs recall per class ({kind})"))
    return "<div>" + " ".join(_img(png, "plot") for png in images) + "</div>"


def _classifier(report: dict[str, Any]) -> str:
    parts = []
    scores = report.get("inception_score", {})
    if scores:
        rows = "".join(f'<tr><td class="l">{html.escape(t)}</td><td>{_fmt(v["mean"], 2)} ± {_fmt(v["std"], 2)}</td>'
                       f"</tr>" for t, v in scores.items())
        parts.append("<h2>Domain classifier</h2><p class='caption'>Inception Score computed with the job's domain "
                     "classifier (higher: confident and varied labels); confidence: its probability of the "
                     "conditioning class.</p><table><tr><th class='l'>set</th><th>IS</th></tr>" + rows + "</table>")
    for tag, conf in report.get("confidence", {}).items():
        if conf:
            names = list(conf["per_class"])
            parts.append(f"<p>{html.escape(tag)}: mean confidence {_fmt(conf['overall'])}</p>")
            parts.append(_img(per_class_bars(names, {tag: [conf["per_class"][n] for n in names]},
                                             f"Classifier confidence in the conditioning class ({tag})",
                                             "probability"), "confidence"))
    return "\n".join(parts)


def _utility(report: dict[str, Any]) -> str:
    utility = report.get("utility", {})
    if not utility:
        return ""
    parts = ["<h2>Downstream utility (train on X, test on the real holdout)</h2>"]
    if "skipped" in utility:
        return parts[0] + f"<p>Skipped: {html.escape(utility['skipped'])}.</p>"
    names = report["classes"]
    for task, metric, per_class_key in (("classification", "accuracy", "per_class"),
                                        ("segmentation", "mean_iou", "per_class_iou")):
        block = utility.get(task)
        if not block:
            continue
        rows, series = [], {}
        for setting, result in block["settings"].items():
            label = setting.replace("_", " ")
            if result.get("skipped"):
                rows.append(f'<tr><td class="l">{html.escape(label)}</td><td colspan="2" class="l">skipped: '
                            f'{html.escape(str(result["skipped"]))}</td></tr>')
                continue
            rows.append(f'<tr><td class="l">{html.escape(label)}</td><td>{result.get("n_train", 0):,}</td>'
                        f"<td>{_fmt(result.get(metric))}{_interval(result.get('interval'))}</td>"
                        f"<td>{_gain(result.get('gain_over_real_only'))}</td></tr>")
            values = result.get(per_class_key) or []
            series[label] = values
        name = "accuracy" if metric == "accuracy" else "mIoU"
        caption = ("Classification Accuracy Score (CAS) = accuracy of the model trained on synthetic only; the same "
                   "small CNN, budget and seed in every setting." if task == "classification" else
                   "Label consistency: a small segmenter trained on the images with their masks; mIoU on the "
                   "real holdout.")
        parts.append(f"<h3>{task}</h3><p class='caption'>{caption}</p><table><tr><th class='l'>trained on</th>"
                     f"<th>n train</th><th>{name} [95% interval]</th><th>gain over real only</th></tr>"
                     + "".join(rows) + "</table>")
        if block.get("separation"):
            parts.append(f'<div class="note">{html.escape(block["separation"]["note"])}</div>')
        if series:
            width = max(len(v) for v in series.values())
            labels = names[:width] if task == "classification" and len(names) >= width else \
                [str(i) for i in range(width)]
            parts.append(_img(per_class_bars(labels, {k: list(v) + [None] * (width - len(v))
                                                      for k, v in series.items()},
                                             f"{task}: {name} per class on the real holdout", name), "utility"))
    return "\n".join(parts)


def _interval(interval: list[float] | None) -> str:
    return "" if not interval else f' <span class="floor">[{_fmt(interval[0])}, {_fmt(interval[1])}]</span>'


def _gain(gain: dict[str, Any] | None) -> str:
    if not gain or gain.get("gain") is None:
        return "–"
    told = "" if gain.get("separable") else " (not separable)"
    return f"{gain['gain']:+.3f}{_interval(gain.get('interval'))}{told}"


def _sweep(report: dict[str, Any]) -> str:
    parts = []
    for kind, sweep in (report.get("sweep") or {}).items():
        knob, rows = sweep["parameter"], sweep["rows"]
        cells = "".join(f"<tr><td>{html.escape(r['label'])}</td><td>{_fmt(r['precision'])}</td>"
                        f"<td>{_fmt(r['recall'])}</td><td>{_fmt(r['coverage'])}</td><td>{_fmt(r['fd'])}</td>"
                        f"<td>{_fmt(r['confidence'])}</td></tr>" for r in rows)
        parts.append(f"<h2>Sweep of {html.escape(kind)} over {html.escape(knob)}</h2><p class='caption'>The same "
                     "seeds sampled at each value and measured against the real holdout (first feature space): "
                     "fidelity (precision, confidence) against diversity (recall, coverage).</p><table><tr><th>"
                     + html.escape(knob) + "</th><th>precision</th><th>recall</th><th>coverage</th><th>FD</th>"
                     "<th>confidence</th></tr>" + cells + "</table>" + _img(sweep_plot(f"{kind}: {knob}", rows), "sweep"))
    return "".join(parts)


def _adaptation(report: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(kind)}</td><td>{html.escape(a['metric'])}</td><td>{a['holdout']}</td>"
                   f"<td>{_fmt(a.get('source'))}</td><td>{_fmt(a.get('target'))}</td></tr>"
                   for kind, a in (report.get("adaptation") or {}).items())
    if not rows:
        return ""
    return ("<h2>Task models on the target domain</h2><p class='caption'>A transfer family's own task models "
            "scored on the target's holdout: fitted on the labelled source only (f_S), and adapted to the target "
            "(f_T).</p><table><tr><th>source</th><th>metric</th><th>holdout images</th><th>source-only f_S</th>"
            "<th>adapted f_T</th></tr>" + rows + "</table>")


# Per judge (`augment.metrics.judges`): its heading, what a row's score is, and the strip's parts.
_JUDGE_TEXT = {
    "label_preservation": (
        "Label preservation",
        "Rows made from a parent record keep its labels; their score is {what}, a task model fitted on the job's "
        "source training split only. Low: the new pixels no longer show what the labels say.",
        "parent frame | {tag} row | carried mask | the segmenter's reading"),
    "label_consistency": (
        "Label consistency",
        "Rows painted from a label map keep that map as their mask; their score is {what}, a segmenter fitted on "
        "the job's real (image, mask) training pairs only (the SPADE paper's protocol). Low: the painted image does "
        "not show the classes where its map puts them.",
        "real frame of the map (when there is one) | {tag} row | its label map | the segmenter's reading"),
}


def _judge(report: dict[str, Any], pictures: dict[str, Any], judge: str) -> str:
    summary = report.get(judge)
    if not summary:
        return ""
    heading, caption, strip = _JUDGE_TEXT[judge]
    model = report.get(f"{judge}_model") or {}
    what = ("the pixel accuracy of that frozen segmenter against the row's mask (void pixels left out)"
            if model.get("task") == "segmentation" else "the frozen classifier's probability of the carried label")
    parts = [f"<h2>{heading}</h2>",
             "<p class='caption'>" + caption.format(what=what) + " Mean over every scored row made (dropped ones "
             f"too); dropped: removed by <code>filter.min_{judge}</code>.</p>"]
    ceiling = (model.get("training") or {}).get("source_holdout") or {}
    if ceiling.get("mean") is not None:
        extra = (f", mIoU <b>{_fmt(ceiling['miou'])}</b>, pixel accuracy {_fmt(ceiling['pixel_accuracy'])}"
                 if ceiling.get("miou") is not None else "")
        parts.append(f"<p class='caption'>Ceiling: on {ceiling['images']:,} untouched held-out real frames the "
                     f"task model scores <b>{_fmt(ceiling['mean'])}</b> per row{extra}: what rows as good as real "
                     "ones would score. Read the rows' scores against it: a low ceiling means the task model cannot "
                     "judge, not that the rows are wrong.</p>")
    for tag, block in summary.items():
        rows = "".join(f'<tr><td class="l">{html.escape(name)}</td><td>{c["rows"]:,}</td><td>{_fmt(c["mean"])}</td>'
                       f'<td>{c["dropped"]:,}</td></tr>' for name, c in block["per_class"].items())
        parts.append(f"<h3>{html.escape(tag)}</h3><table><tr><th class='l'>class</th><th>published</th>"
                     f"<th>mean</th><th>dropped</th></tr><tr><td class='l'><b>overall</b></td>"
                     f"<td>{block['rows']:,}</td><td>{_fmt(block['mean'])}</td><td>{block['dropped']:,}</td></tr>"
                     + rows + "</table>")
        measured = block.get("agreement")
        if measured:
            real = (f"; the same segmenter on real held-out frames: mIoU {_fmt(ceiling.get('miou'))}, pixel accuracy "
                    f"{_fmt(ceiling.get('pixel_accuracy'))}" if ceiling.get("miou") is not None else "")
            parts.append(f"<p class='caption'>Over {measured['rows']:,} published rows: mIoU "
                         f"<b>{_fmt(measured['miou'])}</b>, pixel accuracy {_fmt(measured['pixel_accuracy'])}{real}."
                         "</p>")
        per_mask = block.get("per_mask_class")
        if per_mask:
            cells = "".join(f'<tr><td class="l">{html.escape(name)}</td><td>{c["pixels"]:,}</td>'
                            f'<td>{_fmt(c["pixel_accuracy"])}</td><td>{_fmt(c.get("iou"))}</td></tr>'
                            for name, c in per_mask.items())
            parts.append("<p class='caption'>Per mask class, over the published rows: the share of its pixels the "
                         "segmenter labels as that class, and its IoU (low: that content is missing or changed)."
                         "</p><table><tr><th class='l'>mask class</th><th>pixels</th><th>pixel accuracy</th>"
                         "<th>IoU</th></tr>" + cells + "</table>")
        shown = (pictures.get("worst", {}).get(judge) or {}).get(tag) or []
        if shown:
            cells = "".join(
                f"<tr><td class='l grid'>{_img(w['png'], w['id'])}</td><td class='l'>{_fmt(w[judge])}"
                f"<br>{html.escape(w['class'])}<br><code>{html.escape(w['id'])}</code>"
                + ("" if w["parent_found"] else "<br>parent not in the shards") + "</td></tr>" for w in shown)
            parts.append("<p class='caption'>Lowest-scoring published rows: "
                         + html.escape(strip.format(tag=tag)) + " (the parts a row has).</p><table>" + cells
                         + "</table>")
    return "\n".join(parts)


def _filter(report: dict[str, Any]) -> str:
    block = report.get("filter", {})
    if not block.get("active"):
        return ("<h2>Quality filter</h2><p>Off (no <code>filter:</code> in the config): every synthetic row was "
                "kept.</p>")
    reasons = ", ".join(f"{html.escape(k)}: {v:,}" for k, v in block["by_reason"].items()) or "none"
    settings = ", ".join(f"{k}={v}" for k, v in (block.get("settings") or {}).items() if v not in (None, False))
    classes = ", ".join(f"{html.escape(k)}: {v:,}" for k, v in block.get("by_class", {}).items())
    return (f"<h2>Quality filter</h2><p>Settings: <code>{html.escape(settings)}</code>. Removed "
            f"<b>{block['filtered']:,}</b> synthetic rows before publishing ({reasons})"
            + (f"; by class: {classes}" if classes else "") + ".</p>")


def render_html(report: dict[str, Any], pictures: dict[str, Any], per_class: int = 8) -> str:
    body = [_header(report), _verdicts(report), _grids(report, pictures, per_class), _gallery(pictures),
            _metric_tables(report),
            _sweep(report), tune_section(report, _img, _fmt), _classifier(report), _utility(report),
            _judge(report, pictures, "label_preservation"),
            _judge(report, pictures, "label_consistency"),
            _adaptation(report), _filter(report)]
    body.append(licence_section(report))  # rows per licence (augment.report.licences)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>synthaug report — "
            f"{html.escape(report['job']['name'])}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
