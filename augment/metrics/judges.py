"""The frozen task models that judge a synthetic row's labels, one per kind of request.

A family whose rows keep labels it did not draw (a parent record's, a label map's) can
still paint pixels that no longer show them. A *judge* is a small task model fitted once
on the job's real training records and then frozen (`augment.metrics.preservation`); it
scores the rows of every family making its kind of request:

- `label_preservation`: rows made from a parent record (domain transfer). A classifier
  when the records have class labels (its probability of the carried label), else a
  segmenter (pixel accuracy against the carried mask).
- `label_consistency`: rows painted from a label map (SPADE, ControlNet; the SPADE
  paper's protocol). Always a segmenter: the map is the annotation.

One name per judge across the shards' `scores` struct, the config (`filter.min_<name>`,
`report.<name>_steps`), the quality filter's reason (`low_<name>`) and the report's key.
This module imports neither torch nor the config (both import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Judge:
    name: str  # the score's name everywhere
    request: Literal["parent", "label_map"]  # the family request whose rows it scores
    segmentation_only: bool  # True: masks even when the records have class labels
    stream: int  # derive_seed(job seed, stream): the model's weights, batches and record subsample
    what: str  # the rows it scores, for messages

    @property
    def reason(self) -> str:
        """The quality filter's reason for a row below `filter.min_<name>`."""
        return f"low_{self.name}"

    @property
    def filter_field(self) -> str:
        return f"min_{self.name}"

    @property
    def steps_field(self) -> str:
        return f"{self.name}_steps"


JUDGES = (
    Judge("label_preservation", "parent", False, 73, "rows made from a parent record (domain transfer: cyclegan, cycada)"),
    Judge("label_consistency", "label_map", True, 74, "rows painted from a label map (spade, controlnet)"),
)
JUDGE_NAMES = tuple(judge.name for judge in JUDGES)


def judge_named(name: str) -> Judge:
    for judge in JUDGES:
        if judge.name == name:
            return judge
    raise ValueError(f"unknown judge {name!r}; known: {', '.join(JUDGE_NAMES)}")
