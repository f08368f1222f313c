"""Verdict lines read each number against the real-vs-real floor."""

from __future__ import annotations

from augment.report.verdict import judge

FLOOR = {"n_synthetic": 300, "fd": 10.0, "precision": 0.8, "recall": 0.8, "near_copy_fraction": None}


def metrics(**overrides: float) -> dict:
    return {**FLOOR, **overrides}


def test_close_to_the_floor_is_good() -> None:
    verdict = judge(metrics(fd=12.0, precision=0.78, recall=0.75), FLOOR, "FD (domain)", confidence=0.97)
    assert verdict["grade"] == "good" and not verdict["problems"]
    assert "1.2x" in verdict["line"]


def test_collapse_noise_copies_and_wrong_class_are_named() -> None:
    collapsed = judge(metrics(recall=0.05, fd=30.0), FLOOR, "FD (domain)")
    assert collapsed["grade"] == "poor" and "diversity" in collapsed["line"]
    noise = judge(metrics(precision=0.0, recall=0.0, fd=500.0), FLOOR, "FD (domain)")
    assert noise["grade"] == "poor" and "unrealistic" in noise["line"] and "50.0x" in noise["line"]
    copies = judge(metrics(near_copy_fraction=0.4), FLOOR, "FD (domain)")
    assert copies["grade"] == "poor" and "copies training images" in copies["line"]
    # Classical children are transforms of training images: near copies are expected there.
    expected = judge(metrics(near_copy_fraction=0.4), FLOOR, "FD (domain)", copies_expected=True)
    assert expected["grade"] == "good" and "40% near copies" in expected["line"]
    wrong = judge(metrics(), FLOOR, "FD (domain)", confidence=0.1)
    assert wrong["grade"] == "poor" and "not its class" in wrong["line"]


def test_fair_between_the_thresholds_and_none_without_samples() -> None:
    off = judge(metrics(fd=30.0), FLOOR, "FD (domain)")
    assert off["grade"] == "fair" and "features off real: FD (domain) 3.0x" in off["line"]
    narrow = judge(metrics(recall=0.5), FLOOR, "FD (domain)")
    assert narrow["grade"] == "fair" and "less diverse than real: recall 0.50 vs real 0.80" in narrow["line"]
    assert judge({}, FLOOR, "FD (domain)")["grade"] == "none"
    assert judge(metrics(n_synthetic=0), FLOOR, "FD (domain)")["line"] == "no synthetic samples"


def test_far_off_features_are_poor_and_problems_list_what_the_line_names() -> None:
    """The quickstart-like case: a class at FD 31.7x the floor with precision 0.57 (floor
    0.96) is poor; one at 3.5x is fair; `problems` holds each thing the line names."""
    floor = {**FLOOR, "precision": 0.96, "fd": 2.0}
    far = judge(metrics(fd=63.4, precision=0.57), floor, "FD (domain)")
    assert far["grade"] == "poor" and "31.7x" in far["line"]
    assert [(p["metric"], p["severity"]) for p in far["problems"]] == [("fd", "poor"), ("precision", "fair")]
    near = judge(metrics(fd=7.0, precision=0.9), floor, "FD (domain)")
    assert near["grade"] == "fair" and [p["metric"] for p in near["problems"]] == ["fd"]
    for verdict in (far, near):
        assert all(p["text"] in verdict["line"] for p in verdict["problems"])
    fd = far["problems"][0]
    assert fd["value"] == 63.4 and fd["floor"] == 2.0


def test_grade_rules_name_the_thresholds() -> None:
    from augment.report.verdict import FD_POOR, grade_rules

    rules = grade_rules()
    assert set(rules) == {"good", "fair", "poor", "none"} and f"{FD_POOR:g}x" in rules["poor"]
