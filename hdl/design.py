"""``zeroskip.compile``: a graph to an engine design, its Verilog, and its co-simulation.

This release compiles single-layer graphs (an input and one conv2d, linear, max pool or average
pool, optionally behind a flatten); whole networks come with the network compiler.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import ir, reference
from ..errors import ZeroskipError
from .common import batch_from_beats, batch_to_beats, hwc_permutation
from .sparse_plan import plan as make_plan

DEFAULT_CHUNK = 32


def _default_build_root():
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "zeroskip" / "verilator"


@dataclass(frozen=True)
class SimResult:
    """A co-simulation of a batch.

    Attributes
    ----------
    outputs : numpy.ndarray
        int64, the same layout as :func:`zeroskip.reference.run` gives.
    cycles : int
        Clock cycles for the whole batch, first input beat offered to last output beat taken.
    counters : dict of str to int
        The engine's performance counters at the end (see :mod:`zeroskip.hdl.common`).
    seconds : float
        Wall time of the simulation run (the Verilator build not included).
    """

    outputs: np.ndarray
    cycles: int
    counters: dict
    seconds: float


class Design:
    """One compiled layer: its engine, Verilog and co-simulation. Made by :func:`compile`."""

    def __init__(self, graph, layer, in_shape, lanes, zero_skip, chunk):
        self.graph, self.layer, self.in_shape = graph, layer, tuple(in_shape)
        self.lanes, self.zero_skip, self.chunk = lanes, zero_skip, chunk
        self.top = f"zeroskip_{_identifier(graph.name)}"
        self.in_act = graph.input.act
        self.out_shape = graph.shapes[graph.output]
        # The static plan (lanes, ROM contents) is decided now, so bad parameters fail here.
        self.plan = None
        if isinstance(layer, (ir.Conv2d, ir.Linear)):
            try:
                self.plan = make_plan(layer, self.in_shape, self.in_act, lanes, zero_skip, chunk)
            except ValueError as error:
                raise ZeroskipError(f"node {layer.name!r}: {error}") from None

    def engine(self):
        """A fresh Amaranth component for this layer, to elaborate (each needs its own)."""
        from .conv import SparseConvEngine
        from .pool import AvgPool2dEngine, MaxPool2dEngine

        if isinstance(self.layer, (ir.Conv2d, ir.Linear)):
            return SparseConvEngine(self.layer, self.in_shape, self.in_act, lanes=self.lanes,
                                    zero_skip=self.zero_skip, chunk=self.chunk)
        if isinstance(self.layer, ir.MaxPool2d):
            return MaxPool2dEngine(self.layer, self.in_shape, self.in_act)
        return AvgPool2dEngine(self.layer, self.in_shape, self.in_act)

    def verilog(self):
        """The design's Verilog text; the same graph and options give the same bytes."""
        from ..testbench.verilog import convert

        if not hasattr(self, "_verilog"):
            self._verilog = convert(self.engine(), self.top)
        return self._verilog

    def manifest(self):
        entry = {"top": self.top, "graph": self.graph.name, "layer": self.layer.name,
                 "op": self.layer.op, "in_shape": list(self.in_shape),
                 "out_shape": list(self.out_shape), "stream_order": "HWC",
                 "in_activation": _act_json(self.in_act),
                 "out_activation": _act_json(self.graph.acts[self.graph.output])}
        if self.plan is not None:
            entry.update(lanes=self.lanes, zero_skip=self.zero_skip, chunk=self.chunk,
                         accumulator_bits=self.plan.accumulator_width,
                         weight_storage_bits=self.plan.storage_bits,
                         lane_filters=[list(lane.filters) for lane in self.plan.lanes])
        return entry

    def write_verilog(self, directory):
        """Write ``<top>.v`` and ``manifest.json`` into ``directory``; returns the Verilog path.

        Files appear whole or not at all (written aside, then renamed).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {f"{self.top}.v": self.verilog(),
                 "manifest.json": json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n"}
        for name, text in files.items():
            with tempfile.NamedTemporaryFile("w", dir=directory, delete=False,
                                             suffix=".partial") as handle:
                handle.write(text)
            os.replace(handle.name, directory / name)
        return directory / f"{self.top}.v"

    def simulate(self, x_int, *, idle_probability=0.0, backpressure_probability=0.0, seed=0,
                 waves=False, check=True, build_root=None):
        """Co-simulate a batch under Verilator (cocotb), checking each output against the
        golden model as it arrives.

        Parameters
        ----------
        x_int : numpy.ndarray
            Integer batch, the layout of :func:`zeroskip.reference.run`.
        idle_probability, backpressure_probability : float
            Random idle cycles on the input stream, random ``ready`` drops on the output.
        waves : bool
            Dump a waveform (FST, or VCD where Verilator cannot write FST) into the run
            directory.
        check : bool
            Compare every output beat with the golden model (an in-order scoreboard).
        build_root : path, optional
            Where Verilator models are cached (by content hash); defaults to
            ``$XDG_CACHE_HOME/zeroskip/verilator``.
        """
        from ..testbench.runner import OutputStream, StreamJob, fst_available, simulate

        x_int = reference.validate_input(self.graph, x_int)
        expected = reference.run(self.graph, x_int)
        out_act = self.graph.acts[self.graph.output]
        out_beats = batch_to_beats(expected)
        job = StreamJob(
            inputs={"i_stream": batch_to_beats(x_int)},
            outputs={"o_stream": OutputStream(count=len(out_beats), signed=out_act.signed,
                                              expected=out_beats if check else None)},
            idle_probability=idle_probability, backpressure_probability=backpressure_probability,
            # FST needs the system's lz4 library in Verilator's build; VCD always works.
            seed=seed, waves=("fst" if fst_available() else "vcd") if waves else None,
            timeout_cycles=self._cycle_budget(len(x_int), idle_probability,
                                              backpressure_probability))
        result = simulate(self.verilog(), self.top, job, build_root or _default_build_root())
        outputs = batch_from_beats(result.outputs["o_stream"], self.out_shape)
        return SimResult(outputs, result.cycles, dict(result.counters), result.seconds)

    def _cycle_budget(self, batch, idle, backpressure):
        """Generous: the dense loop nest one pair per cycle, slowed by the stalls, plus slack."""
        in_beats = int(np.prod(self.in_shape))
        out_beats = int(np.prod(self.out_shape))
        work = in_beats + out_beats
        if isinstance(self.layer, (ir.Conv2d, ir.Linear)):
            work += out_beats * self.layer.weight[0].size
        slowdown = 1.0 / ((1.0 - idle) * (1.0 - backpressure))
        return int(batch * work * slowdown * 2) + 10_000


def _identifier(name):
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name)
    return cleaned if cleaned[:1].isalpha() else f"net_{cleaned}"


def _act_json(act):
    return {"bits": act.bits, "signed": act.signed, "scale": act.scale}


def compile(graph, lanes=1, zero_skip=True, *, chunk=DEFAULT_CHUNK):  # noqa: A001 (the API name)
    """Compile a single-layer graph into a :class:`Design`.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
        An input followed by one conv2d, linear, maxpool2d or avgpool2d (a flatten may stand
        before a linear layer; it costs nothing in hardware).
    lanes : int
        Multipliers for a conv or linear layer.
    zero_skip : bool
        False compiles the dense engine of the same design, for comparison.
    chunk : int
        Input channels a conv examines at once (mask and priority-encoder width).
    """
    if not isinstance(graph, ir.Graph):
        raise ZeroskipError(f"compile takes a zeroskip.ir.Graph, got {type(graph).__name__}")
    layers = [node for node in graph.nodes if not isinstance(node, (ir.Input, ir.Flatten))]
    if len(layers) != 1 or isinstance(layers[0], ir.Add):
        names = ", ".join(f"{n.name!r} ({n.op})" for n in layers) or "none"
        raise ZeroskipError(f"graph {graph.name!r}: this release compiles graphs of one conv2d, "
                            f"linear, maxpool2d or avgpool2d layer; its layers are {names}")
    layer = layers[0]
    (source,) = layer.inputs
    in_shape = graph.shapes[source]
    if isinstance(graph[source], ir.Flatten):
        # The stream is HWC; the linear layer reads it with its columns permuted to match.
        image_shape = graph.shapes[graph[source].input]
        layer = replace(layer, weight=layer.weight[:, hwc_permutation(image_shape)])
    for name, value, high in (("lanes", lanes, None), ("chunk", chunk, 64)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or \
                high is not None and value > high:
            limit = f"from 1 to {high}" if high else "of at least 1"
            raise ZeroskipError(f"{name} must be an integer {limit}, got {value!r}")
    return Design(graph, layer, in_shape, lanes, bool(zero_skip), chunk)
