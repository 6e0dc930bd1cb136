"""Single-stream latency: one inference through a pipeline whose engines are all empty.

The throughput of a pipeline is its slowest engine's (:mod:`.folding`); its latency is how the
engines overlap. Every tensor is followed pixel by pixel: :func:`network_latency` knows, for
every pixel of every tensor, the cycle its last beat leaves its producer, and hands that to the
consumers as the earliest their pixels can be in:

* a conv / linear engine replays its examiner, issuers and collector pixel by pixel
  (:func:`zeroskip.compiler.folding._timeline`), each pixel starting when the input pixels under
  its window are in the line buffer;
* a pool scans one position a cycle and gives a window's result a few cycles after the last
  position of its window; an add takes a pair of beats a cycle, row by row (their pixels are
  taken to leave at one a beat up to the row's last);
* links add a register slice's cycle, a fork its register slice's and its FIFO's, a width
  converter two.

The input streams in at one beat a cycle from cycle 0; the latency is the cycle the output's
last beat leaves, plus one (both ends counted, as the network's counters count). Backpressure is
not modelled (a consumer slower than its producer holds it back only where its own pace is the
one that matters). Like the folding model, it replays each calibration image sampled and gives
the mean.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..hdl.add import AddEngine
from ..hdl.pool import AvgPool2dEngine, MaxPool2dEngine
from ..hdl.requant import Requantizer
from ..hdl.stream import StreamFIFO, StreamRegister
from ..hdl.threshold import Thresholder
from .folding import (MIN_SIMULATED_IMAGES, XNOR_ISSUE_TO_COLLECT, _issue_work,
                      _pixel_columns, _pixel_rows, _timeline, xnor_entries)
from .layers import WEIGHT_LAYERS, producer

__all__ = ["LINK_CYCLES", "network_latency"]

#: Cycles a link between engines adds: a register slice.
LINK_CYCLES = 1
#: A fork: the register slice before it, then its branch's FIFO.
FORK_CYCLES = LINK_CYCLES + StreamFIFO.latency
#: A width converter: gathering or splitting, then its register slice.
CONVERTER_CYCLES = 2
#: From a conv engine's collector giving a pixel's last sum to its last activation leaving the
#: engine: the tiles' addresses, the bias stage, the output FIFO, its register slice and the
#: requantizer (or the thresholder: :func:`collect_to_output`).
COLLECT_TO_OUTPUT = 4 + StreamRegister.latency + Requantizer.latency


def collect_to_output(node):
    """:data:`COLLECT_TO_OUTPUT` for ``node``'s output stage."""
    if node.threshold is None:
        return COLLECT_TO_OUTPUT
    return COLLECT_TO_OUTPUT - Requantizer.latency + Thresholder.latency


def _sample(calibration):
    """The calibration images every layer replays (as the folding model samples them)."""
    # Without inputs (a fold on the weights alone) one all-nonzero image stands for them.
    count = 1 if calibration.x_int is None else len(calibration.x_int)
    return np.unique(np.linspace(0, count - 1, MIN_SIMULATED_IMAGES).round().astype(int))


def _spread(rows, width, pixel_beats):
    """Per pixel from per row ``(images, rows)``: each row's pixels leaving at one beat a cycle,
    its last when the row's does."""
    return rows[:, :, None] - (width - 1 - np.arange(width)) * pixel_beats


def _conv_pixels(layer, plan, arrivals, sample):
    """Output pixels of a conv / linear engine, from its input pixels' arrivals."""
    g = plan.geometry
    if layer.in_act.binary:
        return _xnor_pixels(plan, layer.node, arrivals)
    work = _issue_work(plan, layer.pairs[sample])
    (pixels,) = _timeline(plan, work, [np.arange(len(sample))], arrivals)
    return pixels.reshape(len(sample), g.out_height, g.out_width) + collect_to_output(layer.node)


def _xnor_pixels(plan, node, arrivals):
    """Output pixels of an XNOR engine: every lane spends its ROM entries on each pixel once
    the input pixels under its window are in (the data does not change its work)."""
    g = plan.geometry
    entries = np.asarray(xnor_entries(plan, node.weight_bits), np.int64)
    needed, _ = _pixel_rows(g)
    columns = _pixel_columns(g)
    lane_free = np.zeros((len(arrivals), len(entries)), np.int64)
    collector = np.zeros(len(arrivals), np.int64)
    given = []
    for pixel in range(g.out_pixels):
        gate = arrivals[:, needed[pixel] - 1, columns[pixel] - 1] + 1 if needed[pixel] else 0
        lane_free = np.maximum(lane_free, np.asarray(gate).reshape(-1, 1)) + entries
        collector = np.maximum(collector, lane_free.max(axis=1) + XNOR_ISSUE_TO_COLLECT - 1) + \
            g.out_channels
        given.append(collector)
    pixels = np.stack(given, axis=1).reshape(len(arrivals), g.out_height, g.out_width)
    return pixels + collect_to_output(node)


def _pool_pixels(spec, arrivals, in_width, out_width):
    """Output pixels of a pool: the scan passes one position a cycle, a row no sooner than the
    input row; a window's result a few cycles after the last position of its window."""
    node = spec.node
    channels, height, width = spec.in_shapes[0]
    padding = getattr(node, "padding", (0, 0))
    out_h, out_w = spec.out_shape[1], spec.out_shape[2]
    positions = max(height, (out_h - 1) * node.stride[0] - padding[0] + node.kernel[0])
    columns = max(width, (out_w - 1) * node.stride[1] - padding[1] + node.kernel[1])
    per_row = columns * channels // in_width
    done = np.zeros(len(arrivals), np.int64)
    scanned = []
    for row in range(positions):
        done = done + per_row
        if row < height:
            done = np.maximum(done, arrivals[:, row, -1] + 1)
        scanned.append(done)
    engine = MaxPool2dEngine if isinstance(node, ir.MaxPool2d) else AvgPool2dEngine
    last = [min(o * node.stride[0] - padding[0] + node.kernel[0], positions) - 1
            for o in range(out_h)]
    # Positions of a row the scan passes after each output column's window.
    right = np.minimum(np.arange(out_w) * node.stride[1] - padding[1] + node.kernel[1], columns)
    after = (columns - right) * (channels // in_width)
    extra = CONVERTER_CYCLES if out_width != in_width else 0
    rows = np.stack([scanned[row] for row in last], axis=1)
    return rows[:, :, None] - after + engine.latency + extra


def _add_pixels(spec, arrivals_a, arrivals_b, in_width, out_width):
    """Output pixels of an add: a pair of beats a cycle, once both inputs' rows are in."""
    shape = spec.out_shape
    rows, width = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
    per_row = int(np.prod(shape)) // rows // in_width
    done = np.zeros(len(arrivals_a), np.int64)
    out = []
    for row in range(rows):
        done = np.maximum(done + per_row,
                          np.maximum(arrivals_a[:, row, -1], arrivals_b[:, row, -1]) + 1)
        out.append(done)
    extra = CONVERTER_CYCLES if out_width != in_width else 0
    return _spread(np.stack(out, axis=1) + AddEngine.latency + extra, width,
                   per_row // width)


def network_latency(architecture, calibration):
    """The estimated single-stream latency of a pipeline, in cycles, per calibration image
    sampled (:data:`~zeroskip.compiler.folding.MIN_SIMULATED_IMAGES` of them).

    ``architecture`` is a :class:`~zeroskip.compiler.architecture.Pipeline`, or anything with
    its ``graph``, ``in_shape``, ``in_width``, ``layers``, ``widths``, ``layouts`` and ``plans``.
    """
    sample = _sample(calibration)
    graph = architecture.graph
    in_shape = architecture.in_shape
    rows, width = (in_shape[1], in_shape[2]) if len(in_shape) == 3 else (1, 1)
    pixel_beats = int(np.prod(in_shape)) // rows // width // architecture.in_width
    beats = np.arange(1, rows * width + 1).reshape(1, rows, width) * pixel_beats - 1
    ready = {graph.input.name: np.repeat(beats, len(sample), axis=0)}
    readers = {}
    for spec in architecture.layers:
        for source in spec.sources:
            readers[source] = readers.get(source, 0) + 1
    widths = architecture.widths
    for spec in architecture.layers:
        _, in_widths, out_width = architecture.layouts[spec.name]
        arrivals = []
        for source, width in zip(spec.sources, in_widths):
            delay = FORK_CYCLES if readers[source] > 1 else LINK_CYCLES
            delay += CONVERTER_CYCLES if width != widths.get(source, 1) else 0
            arrivals.append(ready[source] + delay)
        if isinstance(spec.node, WEIGHT_LAYERS):
            layer = calibration.by_name[spec.name]
            if len(layer.in_shape) == 1:  # a linear layer reads all its input as one pixel
                arrivals[0] = arrivals[0][:, -1:, -1:]
            ready[spec.name] = _conv_pixels(layer, architecture.plans[spec.name], arrivals[0],
                                            sample)
        elif isinstance(spec.node, ir.Add):
            ready[spec.name] = _add_pixels(spec, *arrivals, in_widths[0], out_width)
        else:
            ready[spec.name] = _pool_pixels(spec, arrivals[0], in_widths[0], out_width)
    output = ready[producer(graph, graph.output)][:, -1, -1] + LINK_CYCLES
    return output.astype(float) + 1
