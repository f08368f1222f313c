"""The tuner's grid, its training mixes and its ranking: plain functions, no Ray, no models.

A setting fixes, for one job, the class-conditional steps' sampling values, the synthetic
share of each class's training mix and the quality gate's thresholds. The job's tune stage
(`jobs.tune`) samples a pool per step and sampling value once, then every setting takes its
rows from those pools: per class the first rows in pool order (the count its share asks
for), less the ones its gate drops, as the job itself would make and filter them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from augment.metrics.scoring import RowScores, filter_reasons

REAL_ONLY = "real only"


@dataclass(frozen=True)
class Setting:
    """One point of the grid. `sample`: step kind -> {sample field: value}; `share`: the
    synthetic part of each class's mix (None: the quota's counts); `gate`: filter field ->
    threshold (None: that gate off)."""

    sample: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    share: float | None = None
    gate: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def real_only(self) -> bool:
        return self.share == 0.0

    def label(self) -> str:
        """How tables and plots name it, e.g. "diffusion.guidance=2 share=0.8 min_confidence=0.5"."""
        if self.real_only:
            return REAL_ONLY
        parts = [f"{kind}.{name}={_text(value)}" for kind, values in self.sample.items()
                 for name, value in values.items()]
        if self.share is not None:
            parts.append(f"share={self.share:g}")
        parts += [f"{name}={_text(value)}" for name, value in self.gate.items()]
        return " ".join(parts) or "as configured"

    def to_json(self) -> dict[str, Any]:
        return {"sample": {kind: dict(values) for kind, values in self.sample.items()}, "share": self.share,
                "filter": dict(self.gate), "label": self.label()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Setting:
        return cls(data.get("sample") or {}, data.get("share"), data.get("filter") or {})


def _text(value: Any) -> str:
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def grid(sample: Mapping[str, Mapping[str, Sequence[Any]]], shares: Sequence[float] | None,
         gates: Mapping[str, Sequence[float | None]]) -> list[Setting]:
    """Every combination, in the order written (the last list varies fastest). A share of 0
    makes no synthetic rows, so sampling values and gates do not matter there: it is one
    setting, "real only"."""
    sample_axes = [(kind, name, list(dict.fromkeys(values)))
                   for kind, fields in sample.items() for name, values in fields.items()]
    gate_axes = [(name, list(dict.fromkeys(values))) for name, values in gates.items()]
    settings: list[Setting] = []
    seen_real_only = False
    for share in list(dict.fromkeys(shares)) if shares else [None]:
        if share == 0.0:
            if not seen_real_only:
                settings.append(Setting(share=0.0))
                seen_real_only = True
            continue
        for picked in itertools.product(*[values for _, _, values in sample_axes]):
            chosen: dict[str, dict[str, Any]] = {}
            for (kind, name, _), value in zip(sample_axes, picked):
                chosen.setdefault(kind, {})[name] = value
            for thresholds in itertools.product(*[values for _, values in gate_axes]):
                settings.append(Setting(chosen, share, {name: t for (name, _), t in zip(gate_axes, thresholds)}))
    return settings


def share_counts(real: Mapping[int, int], share: float) -> dict[int, int]:
    """Synthetic rows per class that make `share` of a mix with `real[c]` real rows."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"a synthetic share must be in [0, 1), got {share}")
    return {c: int(math.floor(n * share / (1.0 - share) + 0.5)) for c, n in real.items()}


def pick_rows(labels: np.ndarray, counts: Mapping[int, int], scores: RowScores | None,
              gate: Mapping[str, float | None], drop_near_copies: bool = False) -> tuple[np.ndarray, int]:
    """Indices into a pool (rows in the order they would be made) of the rows a setting keeps:
    per class the first `counts[c]`, less those the gate drops; and how many it dropped.
    `scores` is needed only when a gate is set."""
    wanted = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in sorted(counts.items())] or
                            [np.zeros(0, np.int64)]).astype(np.int64)
    wanted.sort()
    active = {name: value for name, value in gate.items() if value is not None}
    if not active and not drop_near_copies:
        return wanted, 0
    if scores is None:
        raise ValueError(f"gate {sorted(active)} needs the pool's row scores")
    thresholds = {"min_realism": None, "min_confidence": None, **active}
    reasons = filter_reasons(_subset(scores, wanted), drop_near_copies=drop_near_copies, **thresholds)
    kept = np.array([i for i, why in zip(wanted, reasons) if not why], dtype=np.int64)
    return kept, len(wanted) - len(kept)


def _subset(scores: RowScores, rows: np.ndarray) -> RowScores:
    return RowScores(scores.realism[rows], scores.confidence[rows], scores.nearest_real[rows],
                     scores.near_copy[rows])


def ranking(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Row indices best first: higher validation accuracy, then lower log loss (it still moves
    when a small validation split ties the accuracies), then grid order."""
    def key(i: int) -> tuple[float, float, int]:
        row = rows[i]
        loss = row["log_loss"] if row["log_loss"] is not None and np.isfinite(row["log_loss"]) else math.inf
        return (-row["accuracy"], loss, i)

    return sorted(range(len(rows)), key=key)
