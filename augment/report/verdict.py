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
LOW_CONFIDENCE = 0.5
NEAR_COPY_SHARE = 0.05


def _ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor <= 0:
        return None
    return value / floor


def judge(metrics: dict[str, Any], floor: dict[str, Any] | None, fd_title: str = "FD",
          confidence: float | None = None, copies_expected: bool = False) -> dict[str, Any]:
    """{"grade": good|fair|poor|none, "problems": [...], "line": "..."} for a class or overall.

    `metrics` and `floor` are `compare_sets` results; `fd_title` names their "fd" in the line
    ("FID", "FD (domain)").

    poor: a named problem (precision or recall below half the floor's, near copies, low
    confidence). fair: a weaker shortfall (precision or recall below FAIR_SHARE of the
    floor's, or FD above FD_FAIR times the floor's; FD alone never makes "poor": it moves
    with anything, harmless augmentation included). good: none of these.
    `copies_expected` (classical augmentation: children are transforms of training images)
    reports near copies as a note, not a problem."""
    if not metrics or metrics.get("n_synthetic", 0) == 0:
        return {"grade": "none", "problems": [], "line": "no synthetic samples"}
    floor = floor or {}
    problems, shortfalls, notes = [], [], []
    for name, label in (("precision", "less realistic than real"), ("recall", "less diverse than real")):
        value, ref = metrics.get(name), floor.get(name)
        ratio = _ratio(value, ref)
        if ratio is None:
            continue
        said = f"{name} {value:.2f} vs real {ref:.2f}"
        if ratio < (LOW_PRECISION if name == "precision" else LOW_RECALL):
            problems.append(("unrealistic: " if name == "precision" else "low diversity (mode collapse?): ") + said)
        elif ratio < FAIR_SHARE:
            shortfalls.append(f"{label}: {said}")
        else:
            notes.append(said)
    near = metrics.get("near_copy_fraction")
    if near is not None and near > NEAR_COPY_SHARE:
        if copies_expected:
            notes.append(f"{near:.0%} near copies of training images, as transforms of them")
        else:
            problems.append(f"copies training images: {near:.0%} near copies")
    if confidence is not None and confidence < LOW_CONFIDENCE:
        problems.append(f"often not its class: classifier confidence {confidence:.2f}")
    fd_ratio = _ratio(metrics.get("fd"), floor.get("fd"))
    if fd_ratio is not None:
        fd_said = f"{fd_title} {fd_ratio:.1f}x the real-vs-real floor"
        if fd_ratio > FD_FAIR:
            shortfalls.append(f"features off real: {fd_said}")
        else:
            notes.insert(0, fd_said)
    if problems:
        grade, said = "poor", problems + shortfalls
    elif shortfalls:
        grade, said = "fair", shortfalls
    else:
        grade, said = "good", ["close to real and covers it"]
    line = f"{grade}: " + "; ".join(said) + (f" ({', '.join(notes)})" if notes else "")
    return {"grade": grade, "problems": problems, "line": line}
