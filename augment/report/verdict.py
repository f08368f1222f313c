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
# FD above this multiple of the floor makes an otherwise good set "fair".
FD_FAIR = 2.0
LOW_CONFIDENCE = 0.5
NEAR_COPY_SHARE = 0.05


def _ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor <= 0:
        return None
    return value / floor


def judge(metrics: dict[str, Any], floor: dict[str, Any] | None, distance_key: str,
          confidence: float | None = None, copies_expected: bool = False) -> dict[str, Any]:
    """{"grade": good|fair|poor, "problems": [...], "line": "..."} for one class or overall.

    "poor" needs a named problem (precision, recall, near copies, confidence); a large FD
    alone only makes it "fair": FD moves with anything, including harmless augmentation.
    `copies_expected` (classical augmentation: children are transforms of training images)
    reports near copies as a note, not a problem."""
    if not metrics or metrics.get("n_synthetic", 0) == 0:
        return {"grade": "none", "problems": [], "line": "no synthetic samples"}
    floor = floor or {}
    problems, notes = [], []
    precision, recall = metrics.get("precision"), metrics.get("recall")
    p_ratio, r_ratio = _ratio(precision, floor.get("precision")), _ratio(recall, floor.get("recall"))
    if p_ratio is not None and p_ratio < LOW_PRECISION:
        problems.append(f"unrealistic: precision {precision:.2f} vs real {floor['precision']:.2f}")
    if r_ratio is not None and r_ratio < LOW_RECALL:
        problems.append(f"low diversity (mode collapse?): recall {recall:.2f} vs real {floor['recall']:.2f}")
    fd_ratio = _ratio(metrics.get(distance_key), floor.get(distance_key))
    near = metrics.get("near_copy_fraction")
    if near is not None and near > NEAR_COPY_SHARE:
        if copies_expected:
            notes.append(f"{near:.0%} near copies of training images, as transforms of them")
        else:
            problems.append(f"copies training images: {near:.0%} near copies")
    if confidence is not None and confidence < LOW_CONFIDENCE:
        problems.append(f"often not its class: classifier confidence {confidence:.2f}")
    if fd_ratio is not None:
        notes.insert(0, f"{distance_key.upper()} {fd_ratio:.1f}x the real-vs-real floor")
    if recall is not None and floor.get("recall") is not None and not any("recall" in p for p in problems):
        notes.append(f"recall {recall:.2f} vs real {floor['recall']:.2f}")
    grade = "poor" if problems else ("fair" if fd_ratio is not None and fd_ratio > FD_FAIR else "good")
    if problems:
        line = f"{grade}: " + "; ".join(problems) + (f" ({notes[0]})" if fd_ratio is not None else "")
    else:
        summary = {"good": "close to real and covers it",
                   "fair": "covers real, but its features are visibly off real"}[grade]
        line = f"{grade}: {summary}" + (f" ({', '.join(notes)})" if notes else "")
    return {"grade": grade, "problems": problems, "line": line}
