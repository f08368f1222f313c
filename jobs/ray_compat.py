"""Every Ray spelling that changes between releases lives here.

In Ray 2.60 `map_batches(concurrency=)` is deprecated in favour of
`compute=ActorPoolStrategy(...)`; older releases only know `concurrency`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
import ray.data


def actor_pool(size: int) -> dict[str, Any]:
    """Keyword arguments for `map_batches` that run a callable class on `size` actors."""
    strategy = getattr(ray.data, "ActorPoolStrategy", None)
    if strategy is not None:
        return {"compute": strategy(size=size)}
    return {"concurrency": size}


def quiet_data_context() -> None:
    """Ray Data's own progress bars would interleave with ours; we report progress."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    if hasattr(context, "print_on_execution_start"):
        context.print_on_execution_start = False
    # Per-execution INFO lines and the "progress bars disabled" notice are noise here.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join `address` (or $RAY_ADDRESS), else start an embedded local Ray.

    The embedded Ray starts no dashboard. Its core processes (GCS, raylet) listen where
    Ray puts them (the node address; `_node_ip_address="127.0.0.1"` is rewritten to it
    by Ray itself), guarded by Ray's token authentication, on by default since 2.5x.
    Returns True when this call started Ray (so the caller shuts it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address:
        ray.init(address=address, **common)
    else:
        # address="local" always starts a fresh Ray, never a `ray start` cluster that
        # happens to run on this machine.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            **common,
        )
    return True
