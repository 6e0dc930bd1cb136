"""``zeroskip.compile``: a graph to one Verilog top, its build directory and its co-simulation.

:func:`compile` lets the compiler (:func:`zeroskip.compiler.choose`) make every decision and
wraps the architecture it returns in a :class:`Design`, which gives the Verilog
(:meth:`Design.verilog`, deterministic), writes a build directory (:meth:`Design.write`: the
Verilog, ``manifest.json``, ``report.txt`` and the graph, so that :meth:`Design.load` can come
back to it) and co-simulates batches under Verilator (:meth:`Design.simulate`), checking every
output against the golden model.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from . import compiler, ir, reference
from .build import (BUILD_FORMAT, GRAPH_FILE, MANIFEST_FILE, REPORT_FILE, TESTBENCH_DIR,
                    digests, open_build, write_build)
from .errors import SimulationMismatch, ZeroskipError
from .toolchain import verilator_cache_dir
from .hdl.common import (batch_from_beats, batch_to_beats, decode_beats, encode_beats,
                         identifier)
from .hdl.counters import NETWORK_COUNTER_NAMES
from .hdl.verilog import convert

#: Bits of the co-simulation harness's rings (input beats, captured outputs, timestamps): their
#: capacity in inferences follows from the design alone (a power of two), so one Verilator
#: build serves every batch, and a longer batch runs in chunks. 16 Mbit hold 512 digits images
#: or 64 inferences of a 32 -> 64 channel 16x16 conv layer.
HARNESS_MEMORY_BITS = 1 << 24


@dataclass(frozen=True)
class SimResult:
    """A co-simulation of a batch, every output checked against the golden model.

    Attributes
    ----------
    outputs : numpy.ndarray
        int64, ``(N, *output shape)``, the layout :func:`zeroskip.reference.run` gives.
    classes : numpy.ndarray or None
        ``(N,)`` the hardware's argmax, for a flat output.
    cycles : int
        Clock cycles for the whole batch, first input beat offered to last output beat taken.
    latency_cycles : numpy.ndarray
        Per inference: cycles from its first input beat to its last output beat, inclusive.
    interval_cycles : numpy.ndarray
        ``(N - 1,)``: cycles between the last output beats of consecutive inferences, which
        follow each other as fast as the pipeline takes them: in steady state, the initiation
        interval.
    counters : dict
        ``"network"`` (:data:`zeroskip.hdl.counters.NETWORK_COUNTER_NAMES`) and, per layer node
        name, its engine's counters (:data:`zeroskip.hdl.common.COUNTER_NAMES`), at the end.
    seconds : float
        Wall time of the simulation run.
    build_seconds : float
        Wall time spent building the Verilator model (0.0 when a cached build served).
    held_cycles : int
        Cycles in which the harness held the design back while it loaded or read back a chunk
        of a long batch: 0 means the cycles above are the design's alone.
    waves : pathlib.Path or None
        The waveform file, when one was asked for.
    """

    outputs: np.ndarray
    classes: np.ndarray | None
    cycles: int
    latency_cycles: np.ndarray
    interval_cycles: np.ndarray
    counters: dict
    seconds: float
    build_seconds: float
    held_cycles: int = 0
    waves: Path | None = None


class Design:
    """A compiled network: its Verilog, build directory and co-simulation.

    Made by :func:`compile` (or :meth:`load`) around an ``architecture``
    (:class:`zeroskip.compiler.Pipeline` or :class:`~zeroskip.compiler.Sequential`), which holds
    the decisions: ``layers``, ``lanes`` (multipliers of every conv / linear layer), ``plans``,
    ``estimates`` (the folding model's per-layer cycle estimates when calibration inputs were
    given), the engine.
    """

    def __init__(self, architecture):
        self.architecture = architecture
        graph = self.graph = architecture.graph
        self.top = f"zeroskip_{identifier(graph.name, 'net_')}"
        self.in_shape, self.out_shape = architecture.in_shape, architecture.out_shape
        self.in_act, self.out_act = architecture.in_act, architecture.out_act
        self.has_class = architecture.argmax
        # Activations per beat of the top's input and output streams.
        self.in_width = getattr(architecture, "in_width", 1)
        self.out_width = getattr(architecture, "out_width", 1)

    # The compile's decisions, as the architecture made them.
    layers = property(lambda self: self.architecture.layers)
    lanes = property(lambda self: self.architecture.lanes)
    zero_skip = property(lambda self: self.architecture.zero_skip)
    chunk = property(lambda self: self.architecture.chunk)
    layer_counters = property(lambda self: self.architecture.layer_counters)
    multipliers = property(lambda self: self.architecture.multipliers)
    multipliers_used = property(lambda self: self.architecture.multipliers_used)
    plans = property(lambda self: self.architecture.plans)
    estimates = property(lambda self: self.architecture.estimates)
    widths = property(lambda self: self.architecture.widths)
    packs = property(lambda self: self.architecture.packs)

    # --- hardware ----------------------------------------------------------------------------

    def engine(self):
        """A fresh top component (each elaboration needs its own)."""
        return self.architecture.engine()

    @cached_property
    def _converted(self):
        engine = self.engine()
        return convert(engine, self.top), engine.signature

    def verilog(self):
        """The Verilog text; the same graph and options give the same bytes."""
        return self._converted[0]

    @property
    def signature(self):
        """The top's signature (its ports), as the Verilog has it."""
        return self._converted[1]

    # --- build directory ---------------------------------------------------------------------

    def _layer_entries(self):
        """The manifest's ``layers``: per layer its shapes, lanes, weights and estimates."""
        layers = []
        estimates = {e.name: e for e in self.estimates or ()}
        layouts = getattr(self.architecture, "layouts", {})
        for spec in self.layers:
            node = spec.node
            entry = {"name": node.name, "op": node.op, "counter": spec.counter_name,
                     "in_shape": list(spec.in_shapes[0]),
                     "out_shape": list(self.graph.shapes[node.name])}
            if node.name in layouts:
                pack, in_widths, out_width = layouts[node.name]
                entry.update(in_width=in_widths[0], out_width=out_width)
            if spec.has_weights:
                plan = self.plans[node.name]
                entry.update(lanes=spec.lanes, weights=int(node.weight.size),
                             nonzero_weights=int(np.count_nonzero(node.weight)),
                             accumulator_bits=plan.accumulator_width,
                             weight_storage_bits=plan.storage_bits,
                             pack=plan.geometry.pack if hasattr(plan, "geometry") else 1)
            if node.name in estimates:
                estimate = estimates[node.name]
                entry.update(estimated_cycles=round(estimate.cycles, 1), bound=estimate.bound)
                if spec.has_weights:
                    entry.update(ideal_cycles=round(estimate.ideal_cycles, 1),
                                 effective_macs=round(estimate.effective_macs, 1),
                                 dense_macs=round(estimate.dense_pairs))
            layers.append(entry)
        return layers

    @cached_property
    def _build_files(self):
        """The build directory's files but the manifest and the testbench: name -> bytes."""
        with tempfile.TemporaryDirectory() as scratch:
            graph_path = Path(scratch) / GRAPH_FILE
            self.graph.save(graph_path)
            graph = graph_path.read_bytes()
        return {f"{self.top}.v": self.verilog().encode(), REPORT_FILE: self.report().encode(),
                GRAPH_FILE: graph}

    def _files(self, testbench_inputs=None):
        """Every file of the build but the manifest, with the cocotb testbench in ``tb/``
        (:func:`zeroskip.testbench.build_tb.testbench_files`) on ``testbench_inputs``, or
        seeded random inputs."""
        tb = self._default_testbench if testbench_inputs is None else \
            self._testbench(testbench_inputs)
        return {**self._build_files, **tb}

    def _testbench(self, x_int):
        from .testbench import build_tb

        return build_tb.testbench_files(
            self.top, self.graph, x_int, has_class=self.has_class,
            out_signed=self.out_act.signed and not self.out_act.binary,
            cycles_per_inference=self._cycle_budget(1, 0.0, 0.0), directory=TESTBENCH_DIR,
            in_width=self.in_width, out_width=self.out_width)

    @cached_property
    def _default_testbench(self):
        from .testbench import build_tb

        return self._testbench(build_tb.default_inputs(self.graph))

    def manifest(self, testbench_inputs=None):
        """What the build directory holds, as JSON-ready data; ``files`` maps every other
        file of the build to its SHA-256 (see :meth:`write` for ``testbench_inputs``)."""
        ports = {"i_stream": {**_act_json(self.in_act), "width": self.in_width},
                 "o_stream": {**_act_json(self.out_act), "width": self.out_width}}
        if self.has_class:
            ports["o_stream_class"] = {"classes": self.out_shape[0]}
        return {
            "zeroskip_build": BUILD_FORMAT, "top": self.top, "verilog": f"{self.top}.v",
            "files": digests(self._files(testbench_inputs)),
            "graph": self.graph.name, "graph_file": GRAPH_FILE,
            "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
            "stream_order": "HWC", "ports": ports,
            **self.architecture.manifest_options(),
            "layers": self._layer_entries(), "network_counters": list(NETWORK_COUNTER_NAMES),
            **({"chunk_choice": [{"chunk": chunk, "estimated_latency_cycles": round(latency, 1)}
                                 for chunk, latency in self.architecture.chunk_choice]}
               if self.architecture.chunk_choice else {}),
            **({"target": self.architecture.target_choice.to_dict()}
               if self.architecture.target_choice is not None else {}),
        }

    def report(self):
        """A readable table of the layers, their lanes, work and estimated cycles."""
        lines = [f"{self.top}: {self.graph.name}, {self.architecture.summary()}, "
                 f"chunk {self.chunk}",
                 f"input {tuple(self.in_shape)} {_act_text(self.in_act)} -> output "
                 f"{tuple(self.out_shape)} {_act_text(self.out_act)}"
                 + (" + argmax class" if self.has_class else ""), ""]
        header = ("layer", "op", "in -> out", "lanes", "pack", "width", "nonzero w",
                  "est cycles", "bound")
        rows = []
        for entry in self._layer_entries():
            shapes = f"{'x'.join(map(str, entry['in_shape']))} -> " \
                     f"{'x'.join(map(str, entry['out_shape']))}"
            weights = f"{entry['nonzero_weights']}/{entry['weights']}" if "weights" in entry \
                else ""
            widths = f"{entry['in_width']} -> {entry['out_width']}" if "in_width" in entry \
                else ""
            rows.append((entry["name"], entry["op"], shapes, str(entry.get("lanes", "")),
                         str(entry.get("pack", "")), widths, weights,
                         str(entry.get("estimated_cycles", "")), entry.get("bound", "")))
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            lines.append("  ".join(cell.ljust(width) for cell, width in
                                   zip(row, widths)).rstrip())
        if self.estimates:
            slowest = max(self.estimates, key=lambda e: e.cycles)
            lines += ["", f"estimated initiation interval {slowest.cycles:.0f} cycles "
                          f"(layer {slowest.name!r}, {slowest.bound}-bound)"]
        if self.architecture.chunk_choice:
            tried = ", ".join(f"{chunk}: {latency:,.0f}"
                              for chunk, latency in self.architecture.chunk_choice)
            lines += ["", f"chunk {self.chunk} chosen by estimated latency in cycles ({tried}; "
                          f"the narrowest within {compiler.CHUNK_TOLERANCE:.0%} of the shortest: less "
                          f"logic a lane)"]
        choice = self.architecture.target_choice
        if choice is not None:
            lines += ["", *choice.lines()]
        return "\n".join(lines) + "\n"

    def write(self, directory, *, testbench_inputs=None):
        """Write the build directory: ``<top>.v``, ``manifest.json``, ``report.txt``, the graph
        and the cocotb testbench in ``tb/`` (:mod:`zeroskip.testbench.build_tb`), whose golden
        vectors are ``testbench_inputs`` (integers of the input encoding) or, by default,
        :data:`~zeroskip.testbench.build_tb.TESTBENCH_INFERENCES` seeded random inputs.

        All or nothing (:func:`zeroskip.build.write_build`): everything is generated, written
        into a temporary sibling and renamed into place. ``directory`` must be absent, empty or
        a zeroskip build (replaced whole). Returns the Verilog's path.
        """
        files = self._files(testbench_inputs)
        files[MANIFEST_FILE] = (json.dumps(self.manifest(testbench_inputs), indent=2,
                                           sort_keys=True) + "\n").encode()
        directory = write_build(directory, files)
        return directory / f"{self.top}.v"

    @classmethod
    def load(cls, directory):
        """The design a build directory was written from: its files checked
        (:func:`zeroskip.build.open_build`), compiled again and checked identical."""
        return cls.from_build(open_build(directory))

    @classmethod
    def from_build(cls, build):
        """The design of a checked :class:`zeroskip.build.Build`, compiled again from its graph
        and options; its Verilog must be the build's, byte for byte."""
        manifest = build.manifest
        where = repr(str(build.path / MANIFEST_FILE))
        name = manifest.get("architecture", compiler.Pipeline.name)
        kind = compiler.ARCHITECTURES.get(name) if isinstance(name, str) else None
        if kind is None:
            raise ZeroskipError(f"{where} names an unknown architecture {name!r}")
        try:
            options = kind.options_from_manifest(manifest)
        except (KeyError, TypeError, ValueError) as error:
            raise ZeroskipError(f"{where} is not a zeroskip manifest: "
                                f"{type(error).__name__} {error}") from None
        design = compile(ir.load(build.graph_path), **options)
        verilog = design.verilog().encode()
        if build.top != design.top or build.verilog_path.stat().st_size != len(verilog) or \
                build.verilog_path.read_bytes() != verilog:
            raise ZeroskipError(f"{str(build.verilog_path)!r} differs from what {GRAPH_FILE} "
                                f"and {MANIFEST_FILE} compile to; run `zeroskip compile` again")
        return design

    # --- co-simulation -----------------------------------------------------------------------

    def simulate(self, x_int, *, idle_probability=0.0, backpressure_probability=0.0, seed=0,
                 waves=False, check=True, build_root=None, progress=None,
                 harness_memory_bits=HARNESS_MEMORY_BITS):
        """Stream a batch back to back through the Verilator model and check every output.

        The stimulus, the random stalls and the capture run inside the simulated design
        (:class:`zeroskip.testbench.harness.Harness`, under cocotb), so the model runs at
        Verilator's speed. The harness's memories hold as many inferences as fit in
        ``harness_memory_bits``; a longer batch runs in chunks, loaded and read back while the
        model runs, never reset. One build serves every batch.

        Parameters
        ----------
        x_int : numpy.ndarray
            Integer input batch, the layout of :func:`zeroskip.reference.run`.
        idle_probability, backpressure_probability : float
            Random idle cycles on the input stream, random ``ready`` drops on the outputs.
        waves : bool
            Dump a waveform (FST, or VCD where Verilator cannot write FST) into the run
            directory (a separate, slower build).
        check : bool
            Compare every output and class with the golden model; a difference raises
            :class:`SimulationMismatch` naming the inference and the position.
        build_root : path, optional
            Where Verilator models are cached (by content);
            :func:`zeroskip.toolchain.verilator_cache_dir` by default.
        progress : callable, optional
            ``progress(done, total)`` inferences, called while the simulation runs.
        harness_memory_bits : int
            The memory budget of the harness (:data:`HARNESS_MEMORY_BITS`).
        """
        from .testbench import fast, runner
        from .testbench.harness import Harness, VerilogInstance, ring_capacity

        x_int = reference.validate_input(self.graph, x_int)
        batch = len(x_int)
        if batch == 0:
            raise ZeroskipError("simulate needs at least one input")
        in_beats = math.prod(self.in_shape) // self.in_width
        out_beats = math.prod(self.out_shape) // self.out_width
        outputs = {"o_stream": out_beats}
        # A binary stream carries bits (1 = +1): unsigned on the wire, decoded after capture.
        signs = {"o_stream": self.out_act.signed and not self.out_act.binary}
        if self.has_class:
            outputs["o_stream_class"] = 1
            signs["o_stream_class"] = False
        # The harness instantiates the design's own Verilog: converted once, simulated as is.
        verilog = self.verilog()
        instance = VerilogInstance(self.signature, self.top)
        capacity = ring_capacity(instance, input_beats_per_inference=in_beats,
                                 output_beats_per_inference=outputs,
                                 memory_bits=harness_memory_bits)
        harness = Harness(instance, max_inferences=capacity, input_beats_per_inference=in_beats,
                          output_beats_per_inference=outputs, preload=self.preload_words())
        top = f"{self.top}_harness"
        wave_format = None
        if waves:
            wave_format = "fst" if runner.fst_available() else "vcd"
        options = {"waves": wave_format} if waves else {}
        if progress is not None:
            options["progress"] = progress
        try:
            result = fast.fast_simulate(
                verilog + convert(harness, top), top,
                encode_beats(batch_to_beats(x_int), self.in_act), signs,
                (in_beats, outputs),
                build_root=build_root or verilator_cache_dir(),
                idle_probability=idle_probability,
                backpressure_probability=backpressure_probability, seed=seed,
                timeout_cycles=self._cycle_budget(batch, idle_probability,
                                                  backpressure_probability),
                elements={"i_stream": self.in_width, "o_stream": self.out_width}, **options)
        except (runner.SimulationError, runner.BuildError) as error:
            # One line: the rest (the end of a log) is in the file the first line names.
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ZeroskipError(f"co-simulation of {self.top!r} failed: {first}") from None
        y = batch_from_beats(decode_beats(result.outputs["o_stream"], self.out_act),
                             self.out_shape)
        classes = result.outputs["o_stream_class"] if self.has_class else None
        if check:
            self._check(x_int, y, classes)
        return SimResult(
            outputs=y, classes=classes, cycles=result.cycles,
            latency_cycles=result.latencies,
            # Measured where inferences leave: inputs may run ahead into the buffers (line
            # buffers, a fork's FIFOs) while the pipeline fills, outputs cannot.
            interval_cycles=np.diff(result.last_output_cycle),
            counters=self._counters(result.counters), seconds=result.seconds,
            build_seconds=result.build_seconds, held_cycles=result.held_cycles,
            waves=getattr(result, "waves_path", None))

    def preload_words(self):
        """What the design's ``w_stream`` takes before its first inference (its weights, for
        memory without initial contents), or None."""
        words = getattr(self.architecture, "preload_words", None)
        return words() if words else None

    def _check(self, x_int, y, classes):
        expected = reference.run(self.graph, x_int)
        wrong = np.argwhere(y != expected)
        if len(wrong):
            index = tuple(int(i) for i in wrong[0])
            raise SimulationMismatch(
                f"{self.top}: output of inference {index[0]} at {index[1:]} is {y[index]}, the "
                f"golden model gives {expected[index]} ({len(wrong)} differing values in "
                f"{len({i[0] for i in wrong})} inferences)")
        if classes is not None:
            wrong = np.flatnonzero(classes != expected.argmax(axis=1))
            if len(wrong):
                first = int(wrong[0])
                raise SimulationMismatch(
                    f"{self.top}: class of inference {first} is {classes[first]}, the argmax "
                    f"of its logits is {expected[first].argmax()} ({len(wrong)} inferences "
                    "differ)")

    def _counters(self, flat):
        """``{"n3__busy_cycles": v, ...}`` -> ``{"3": {"busy_cycles": v}, "network": {...}}``."""
        names = {spec.counter_name: spec.node.name for spec in self.layers}
        names["network"] = "network"
        counters = {}
        for key, value in flat.items():
            group, _, counter = key.partition("__")
            counters.setdefault(names[group], {})[counter] = int(value)
        return counters

    def _cycle_budget(self, batch, idle, backpressure):
        """Generous: every layer's dense loop nest at one pair per cycle, one after the other,
        slowed by the stalls."""
        work = math.prod(self.in_shape) + math.prod(self.out_shape)
        for spec in self.layers:
            work += math.prod(self.graph.shapes[spec.node.name]) + math.prod(spec.in_shapes[0])
            if spec.has_weights:
                work += math.prod(self.graph.shapes[spec.node.name]) * \
                    spec.node.weight[0].size // max(spec.lanes, 1)
        slowdown = 1.0 / ((1.0 - idle) * (1.0 - backpressure))
        return int(batch * work * slowdown * 2) + 100_000 + len(self.preload_words() or ())


def _act_json(act):
    return {"bits": act.bits, "signed": act.signed, "scale": act.scale}


def _act_text(act):
    return f"{'int' if act.signed else 'uint'}{act.bits}"


def compile(graph, lanes=1, zero_skip=True, *, multipliers=None,  # noqa: A001 (the API name)
            calibration=None, chunk=None, layer_counters=True, architecture="dataflow",
            argmax=None, target=None, stream_width=None, pack=None, tile_slots=None,
            memory=None, depth=None):
    """Compile a graph into a :class:`Design`: one engine per layer, one Verilog top.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    lanes : int, "auto" or dict of str to int
        Multipliers of each conv / linear layer. An int gives every layer that many (a layer
        with fewer output channels gets one per channel); a dict names each layer's; ``"auto"``
        folds ``multipliers`` over the layers so the pipeline is balanced on the work left
        after zero skipping, measured on ``calibration`` (:func:`zeroskip.compiler.folding.fold`).
    zero_skip : bool
        False compiles the dense engines of the same design, for comparison (``"auto"`` then
        folds on dense work).
    multipliers : int, optional
        The budget for ``lanes="auto"``.
    calibration : numpy.ndarray, optional
        Integer inputs of the graph; needed by ``"auto"``; with them the design also carries
        per-layer cycle estimates.
    chunk : int, optional
        Input channels a conv engine examines at once (mask and priority-encoder width);
        32 by default; ``lanes="auto"`` chooses it (the narrowest of 32, 16 and 8 within 2 %
        of the shortest estimated latency: :func:`zeroskip.compiler.choose`), and so does
        ``target``, unless given.
    layer_counters : bool
        Give every engine's counters (busy, effective MACs, skipped pairs, stalls) a port;
        False keeps only the network's (inferences, latency, interval), which saves their
        logic on small FPGAs.
    architecture : "dataflow" or "sequential"
        ``"sequential"`` runs the layers one after another on one engine
        (:mod:`zeroskip.hdl.sequential`): ``lanes`` is then its SIMD lanes (1, 2, 4, 8 or
        ``"auto"``: chosen for ``target``), and it has only the network's counters.
    argmax : bool, optional
        Give the class (the argmax of a flat output, the first of equal values) on
        ``o_stream_class``. By default a flat output gets it unless it has as many values as
        the input (an autoencoder's reconstruction is not class scores).
    target : str, optional
        An FPGA part (:data:`zeroskip.parts.PARTS`). With the default architecture, the
        architecture, the chunk, the lanes and the streams are chosen so that the design fits
        the part by the resource model (:mod:`zeroskip.compiler.resources`) with the shortest
        estimated single-stream latency (:mod:`zeroskip.compiler.target`); ``multipliers``
        caps it; not with ``lanes``. With ``architecture="sequential"``: the part whose
        resources the sequential engine's settings are chosen for
        (:meth:`zeroskip.compiler.Sequential.choose_settings`; without one the iCE40UP5K).
    stream_width : int, "auto" or dict of str to int
        Activations per beat of the streams between the engines (and of the top's ports):
        an int caps every tensor's width (each streams at the widest power of two up to it
        that divides its channels); a dict names tensors' widths (the others 1); ``"auto"``
        lets the folding model widen a stream wherever a port binds an engine
        (:func:`zeroskip.compiler.balance.balance`; needs ``calibration``). The default is
        ``"auto"`` with ``lanes="auto"``, else 1.
    pack : bool or dict of str to int
        Packed scans: filters per combo of depthwise layers and of layers of one group
        narrower than the chunk (:mod:`zeroskip.hdl.sparse_plan`). True gives each the largest
        pack that fits its lanes; a dict names layers' packs. The default is True with
        ``lanes="auto"``, else False.
    tile_slots : int, optional
        Output pixels a conv engine's lanes may run ahead of its collector (a power of two
        from 2): 4 by default, 2 with one activation a beat and no packs (the engines' depth
        before wide streams).
    memory, depth :
        Sequential only: "spram" or "bram" (default: as ``target`` has it); the line
        buffer's entries per bank (default: the least every layer fits).
    """
    return Design(compiler.choose(graph, lanes, zero_skip, multipliers=multipliers,
                                  calibration=calibration, chunk=chunk,
                                  layer_counters=layer_counters, architecture=architecture,
                                  argmax=argmax, target=target, stream_width=stream_width,
                                  pack=pack, tile_slots=tile_slots, memory=memory, depth=depth))


__all__ = ["Design", "SimResult", "SimulationMismatch", "compile"]
