"""The checks every label-map family makes: its training pairs have masks of known classes,
and each label map it is asked to paint is a uint16 H×W array of known class ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from augment.generators.base import SampleRequest
from augment.generators.family import TrainingData


def check_training_masks(family: str, data: TrainingData, class_names: Sequence[str]) -> None:
    """ValueError unless every training record has a mask whose ids are below the class count."""
    names = list(class_names)
    if data.masks is None:
        raise ValueError(f"{family}: learns to paint label maps from (image, mask) pairs, but the training data "
                         "have no masks (TrainingData.masks is None); give the source records masks")
    top = int(data.masks.max()) if data.masks.size else 0
    if top >= len(names):
        raise ValueError(f"{family}: mask class ids must be below the {len(names)} class names {names}, got id {top}")


def checked_label_maps(family: str, request: SampleRequest, class_names: Sequence[str],
                       size_problem: Callable[[np.ndarray], str | None]) -> list[np.ndarray]:
    """The request's label maps, or a ValueError naming the first bad one: not a uint16 H×W
    array, a size the network cannot paint (`size_problem` says why, None: fine), or a class id
    the model does not know."""
    if request.label_maps is None:
        raise ValueError(f"{family}: paints label maps; the request has no label_maps")
    for i, label_map in enumerate(request.label_maps):
        which = f"{family}: label map {i} ({request.ids[i]!r})"
        if not (isinstance(label_map, np.ndarray) and label_map.dtype == np.uint16 and label_map.ndim == 2
                and label_map.size):
            got = (getattr(label_map, "dtype", type(label_map).__name__), getattr(label_map, "shape", None))
            raise ValueError(f"{which} must be a uint16 HxW array of class ids, got {got}")
        problem = size_problem(label_map)
        if problem is not None:
            raise ValueError(f"{which} is {label_map.shape[1]}x{label_map.shape[0]} (WxH); {problem}")
        top = int(label_map.max())
        if top >= len(class_names):
            raise ValueError(f"{which} has class id {top}; the model knows {len(class_names)} classes "
                             f"{list(class_names)}")
    return list(request.label_maps)
