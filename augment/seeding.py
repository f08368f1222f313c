"""Seeds derived from (job seed, integers): independent streams, no global RNG state."""

from __future__ import annotations

import numpy as np


def derive_seed(job_seed: int, *key: int) -> int:
    """A 63-bit seed for the stream named by `key` under `job_seed` (SeedSequence hashing)."""
    state = np.random.SeedSequence([job_seed, *key]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)
