"""One plain-language line per class: is the synthetic data usable, and if not, why.

Each number is read against the real-vs-real floor (real train vs real holdout in the
same feature space), so the thresholds are relative and work in any feature space:
- fidelity: precision (share of synthetic samples inside the real manifold) and FD;
- diversity: recall / coverage (share of the real manifold the synthetic data reaches);
- memorisation: the share of near copies of training images;
- label consistency: the domain classifier's confidence in the conditioning class.
"""

from __future__ import annotations

from typing import Any

# A number is a problem when it falls below this share of the floor's value.
LOW_PRECISION, LOW_RECALL = 0.5, 0.5
# Below this share of the floor's precision/recall, or FD above FD_FAIR times the floor's: "fair".
FAIR_SHARE = 0.8
FD_FAIR = 2.0
# FD this far above the floor is "poor" on its own: harmless augmentation moves FD a few times
# the floor, a class whose features sit elsewhere moves it tens of times.
FD_POOR = 10.0
LOW_CONFIDENCE = 0.5
NEAR_COPY_SHARE = 0.05


def grade_rules() -> dict[str, str]:
    """What each grade means, with today's thresholds (report.json "grades" and the page)."""
    return {
        "poor": (f"a named problem: precision or recall below {LOW_PRECISION:.0%} of the real-vs-real floor's, "
                 f"FD above {FD_POOR:g}x the floor's, more than {NEAR_COPY_SHARE:.0%} near copies of training "
                 f"images (not counted for classical augmentation, whose rows are transforms of them), or the "
                 f"domain classifier's mean confidence in the class below {LOW_CONFIDENCE:.2f}"),
        "fair": (f"a shortfall: precision or recall below {FAIR_SHARE:.0%} of the floor's, or FD above "
                 f"{FD_FAIR:g}x the floor's"),
        "good": "none of these: close to real and covering it",
        "none": "no synthetic rows to judge",
    }


def _ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor <= 0:
        return None
    return value / floor


def _problem(metric: str, severity: str, text: str, value: float | None, floor: float | None) -> dict[str, Any]:
    return {"metric": metric, "severity": severity, "text": text, "value": value, "floor": floor}


def judge(metrics: dict[str, Any], floor: dict[str, Any] | None, fd_title: str = "FD",
          confidence: float | None = None, copies_expected: bool = False) -> dict[str, Any]:
    """{"grade": good|fair|poor|none, "problems": [...], "line": "..."} for a class or overall.

    `metrics` and `floor` are `compare_sets` results; `fd_title` names their "fd" in the line
    ("FID", "FD (domain)"). The grades are `grade_rules()`. `problems` holds every problem
    and shortfall the line names, worst first: {"metric", "severity" (poor | fair), "text",
    "value", "floor"}. `copies_expected` (classical augmentation: children are transforms of
    training images) reports near copies as a note, not a problem."""
    if not metrics or metrics.get("n_synthetic", 0) == 0:
        return {"grade": "none", "problems": [], "line": "no synthetic samples"}
    floor = floor or {}
    found: list[dict[str, Any]] = []
    notes: list[str] = []
    for name, label in (("precision", "less realistic than real"), ("recall", "less diverse than real")):
        value, ref = metrics.get(name), floor.get(name)
        ratio = _ratio(value, ref)
        if ratio is None:
            continue
        said = f"{name} {value:.2f} vs real {ref:.2f}"
        if ratio < (LOW_PRECISION if name == "precision" else LOW_RECALL):
            lead = "unrealistic: " if name == "precision" else "low diversity (mode collapse?): "
            found.append(_problem(name, "poor", lead + said, value, ref))
        elif ratio < FAIR_SHARE:
            found.append(_problem(name, "fair", f"{label}: {said}", value, ref))
        else:
            notes.append(said)
    near = metrics.get("near_copy_fraction")
    if near is not None and near > NEAR_COPY_SHARE:
        if copies_expected:
            notes.append(f"{near:.0%} near copies of training images, as transforms of them")
        else:
            found.append(_problem("near_copy_fraction", "poor", f"copies training images: {near:.0%} near copies",
                                  near, None))
    if confidence is not None and confidence < LOW_CONFIDENCE:
        found.append(_problem("confidence", "poor", f"often not its class: classifier confidence {confidence:.2f}",
                              confidence, None))
    fd_ratio = _ratio(metrics.get("fd"), floor.get("fd"))
    if fd_ratio is not None:
        fd_said = f"{fd_title} {fd_ratio:.1f}x the real-vs-real floor"
        if fd_ratio > FD_POOR:
            found.append(_problem("fd", "poor", f"features far off real: {fd_said}", metrics["fd"], floor["fd"]))
        elif fd_ratio > FD_FAIR:
            found.append(_problem("fd", "fair", f"features off real: {fd_said}", metrics["fd"], floor["fd"]))
        else:
            notes.insert(0, fd_said)
    found.sort(key=lambda problem: problem["severity"] != "poor")  # stable: poor first, then fair
    grade = "poor" if any(p["severity"] == "poor" for p in found) else "fair" if found else "good"
    said = [p["text"] for p in found] or ["close to real and covers it"]
    line = f"{grade}: " + "; ".join(said) + (f" ({', '.join(notes)})" if notes else "")
    return {"grade": grade, "problems": found, "line": line}
