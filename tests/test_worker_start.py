"""A shard worker's start stays light: every actor pays it before its first row."""
from __future__ import annotations

import json
import subprocess
import sys

# scipy.stats (~2 s) came in through the report's interval helpers; sympy (~1 s) through
# `Module.to_empty`'s Python meta kernels. Neither is needed to make or score rows.
_PROBE = """
import json, sys
import jobs.workers, jobs.quality
from augment.metrics.classifier import SmallCNN, build_on_meta
model = build_on_meta(lambda: SmallCNN(3, 10, 8, 16, input_size=16))
print(json.dumps({"loaded": [name for name in ("scipy.stats", "sympy") if name in sys.modules],
                  "params": [[str(p.device), p.requires_grad, list(p.shape)] for p in model.parameters()][:2],
                  "buffers": sorted({str(b.device) for b in model.buffers()})}))
"""


def test_shard_worker_imports_and_model_build_skip_scipy_stats_and_sympy() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["loaded"] == []
    assert probe["params"] == [["cpu", True, [8, 3, 3, 3]], ["cpu", True, [8]]]
    assert probe["buffers"] == ["cpu"]
