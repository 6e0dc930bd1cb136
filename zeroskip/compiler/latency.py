"""Single-stream latency of a pipeline, estimated row by row.

The folding model (:mod:`.folding`) gives each conv / linear engine's cycles per inference in
steady state. A single inference through an empty pipeline overlaps the layers as far as their
line buffers let it: a layer's output row can be computed once the input rows under its window
have arrived. :func:`pipeline_latency` follows that, one output row at a time: row ``r`` of a
layer ends at ``max(its last needed input row's arrival, row r - 1's end) + cycles per row``,
with a conv's cycles per row its estimate divided by its output rows, a pool's or an add's its
input row's beats, and a linear layer needing its whole input. An approximation, for ranking
designs (``--target``), not a measurement: the benchmarks measure latency under Verilator.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ir

__all__ = ["pipeline_latency"]


def _rows(shape):
    """(rows, beats per row) of a tensor as it streams: an image row by row, a vector at once."""
    if len(shape) == 1:
        return 1, shape[0]
    channels, height, width = shape
    return height, width * channels


def _needed(node, in_shape, out_rows):
    """For every output row, how many input rows (from the top) it needs."""
    if isinstance(node, ir.Linear) or len(in_shape) == 1:
        return np.full(out_rows, _rows(in_shape)[0])
    if isinstance(node, ir.Add):
        return np.arange(1, out_rows + 1)
    kernel, stride = node.kernel, node.stride
    padding = getattr(node, "padding", (0, 0))
    top = np.arange(out_rows) * stride[0] - padding[0]
    return np.clip(top + kernel[0], 1, in_shape[1])


def pipeline_latency(layers, graph, cycles, *, input_beats_per_cycle=1):
    """Estimated cycles from an inference's first input beat to its last output beat.

    Parameters
    ----------
    layers : sequence of zeroskip.compiler.layers.LayerSpec
        The pipeline's layers in topological order.
    graph : zeroskip.ir.Graph
    cycles : dict of str to float
        Estimated cycles per inference of each conv / linear layer (the folding model's).
    input_beats_per_cycle : int
        Activations the input stream carries a cycle.
    """
    arrival = {}
    rows, beats = _rows(graph.shapes[graph.input.name])
    per_row = beats / input_beats_per_cycle
    arrival[graph.input.name] = per_row * np.arange(1, rows + 1)
    for spec in layers:
        out_shape = spec.out_shape
        out_rows, out_beats = _rows(out_shape)
        if spec.name in cycles:
            row_cycles = cycles[spec.name] / out_rows
        else:
            # Pools and adds run at their streams' rate: the input beats behind each output
            # row, at least its own beats.
            in_rows, in_beats = _rows(spec.in_shapes[0])
            row_cycles = max(in_beats * in_rows / out_rows, out_beats)
        ready = np.zeros(out_rows)
        for source, in_shape in zip(spec.sources, spec.in_shapes):
            needed = _needed(spec.node, in_shape, out_rows)
            ready = np.maximum(ready, arrival[source][needed - 1])
        ends = np.zeros(out_rows)
        previous = 0.0
        for row in range(out_rows):
            previous = max(ready[row], previous) + row_cycles
            ends[row] = previous
        arrival[spec.name] = ends
    output = graph.output
    while isinstance(graph[output], ir.Flatten):
        output = graph[output].input
    return float(arrival[output][-1]) + math.ceil(len(layers) * 2)
