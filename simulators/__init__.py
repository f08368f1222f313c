"""Procedural scene simulators that render frames with perfect labels (see issue 3)."""
