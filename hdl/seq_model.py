"""The sequential engine's cycle model (placeholder until calibrated)."""

from __future__ import annotations

import numpy as np

__all__ = ["estimate_cycles"]


def estimate_cycles(program, graph, x_int):
    entries = sum(len(s.entries) * s.groups for s in program.conv_steps)
    return np.full(len(x_int), entries, dtype=np.int64)
