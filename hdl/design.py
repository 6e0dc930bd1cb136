"""``zeroskip.compile``: a graph to one Verilog top, its build directory and its co-simulation.

A :class:`Design` holds the decisions (the engine of every layer, its lanes), gives the Verilog
(:meth:`Design.verilog`, deterministic), writes a build directory (:meth:`Design.write`: the
Verilog, ``manifest.json``, ``report.txt`` and the graph, so that :meth:`Design.load` can come
back to it) and co-simulates batches under Verilator (:meth:`Design.simulate`), checking every
output against the golden model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import ir, reference
from ..errors import SimulationMismatch, ZeroskipError
from .common import batch_from_beats, batch_to_beats, decode_beats, encode_beats, hwc_permutation
from .network import NETWORK_COUNTER_NAMES, LayerSpec, NetworkEngine, counter_names

DEFAULT_CHUNK = 32

#: The files of a build directory besides the Verilog (``<top>.v``).
MANIFEST_FILE, REPORT_FILE, GRAPH_FILE = "manifest.json", "report.txt", "graph.zsg"

#: Harness capacities are rounded up to a power of two, at least this: batches of different
#: sizes then share one Verilator build.
MIN_HARNESS_CAPACITY = 512

_WEIGHT_LAYERS = (ir.Conv2d, ir.Linear)

#: ``dataflow``: an engine per layer, all layers at once (:mod:`.network`); ``sequential``: one
#: engine runs the layers one after another (:mod:`.sequential`), for the smallest FPGAs.
ARCHITECTURES = ("dataflow", "sequential")


def _default_build_root():
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "zeroskip" / "verilator"


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
        ``"network"`` (:data:`zeroskip.hdl.network.NETWORK_COUNTER_NAMES`) and, per layer node
        name, its engine's counters (:data:`zeroskip.hdl.common.COUNTER_NAMES`), at the end.
    seconds : float
        Wall time of the simulation run.
    build_seconds : float
        Wall time spent building the Verilator model (0.0 when a cached build served).
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
    waves: Path | None = None


class Design:
    """A compiled network: its engines, Verilog, build directory and co-simulation.

    Made by :func:`compile` (or :meth:`load`). ``lanes`` maps every conv / linear layer to its
    multipliers; ``estimates`` holds the folding model's per-layer cycle estimates when
    calibration inputs were given.
    """

    def __init__(self, graph, layers, lanes, zero_skip, chunk, *, multipliers=None,
                 estimates=None, layer_counters=True, architecture="dataflow"):
        self.graph, self.layers = graph, tuple(layers)
        self.architecture = architecture
        self.lanes, self.zero_skip, self.chunk = dict(lanes), zero_skip, chunk
        self.layer_counters = layer_counters
        self.multipliers, self.estimates = multipliers, estimates
        self.top = f"zeroskip_{_identifier(graph.name)}"
        self.in_shape = graph.shapes[graph.input.name]
        self.out_shape = graph.shapes[graph.output]
        self.in_act, self.out_act = graph.input.act, graph.acts[graph.output]
        self.has_class = len(self.out_shape) == 1

    # --- hardware ----------------------------------------------------------------------------

    def engine(self):
        """A fresh :class:`~zeroskip.hdl.network.NetworkEngine` or, for the sequential
        architecture, :class:`~zeroskip.hdl.sequential.SequentialEngine` (each elaboration
        needs its own)."""
        if self.architecture == "sequential":
            from .sequential import SequentialEngine

            return SequentialEngine(self.layers, input_name=self.graph.input.name,
                                    in_shape=self.in_shape, in_act=self.in_act,
                                    out_shape=self.out_shape, out_act=self.out_act,
                                    chunk=self.chunk)
        return NetworkEngine(self.layers, input_name=self.graph.input.name,
                             in_shape=self.in_shape, in_act=self.in_act,
                             output=_producer(self.graph, self.graph.output),
                             out_shape=self.out_shape, out_act=self.out_act,
                             zero_skip=self.zero_skip, chunk=self.chunk,
                             layer_counters=self.layer_counters)

    def verilog(self):
        """The Verilog text; the same graph and options give the same bytes."""
        from ..testbench.verilog import convert

        if not hasattr(self, "_verilog"):
            engine = self.engine()
            self._verilog = convert(engine, self.top)
            self._signature = engine.signature
        return self._verilog

    @property
    def multipliers_used(self):
        return 1 if self.architecture == "sequential" else sum(self.lanes.values())

    # --- build directory ---------------------------------------------------------------------

    def manifest(self):
        """What the build directory holds, as JSON-ready data."""
        layers = []
        estimates = {e.name: e for e in self.estimates or ()}
        for spec in self.layers:
            node = spec.node
            entry = {"name": node.name, "op": node.op, "counter": spec.counter_name,
                     "in_shape": list(spec.in_shapes[0]),
                     "out_shape": list(self.graph.shapes[node.name])}
            if isinstance(node, _WEIGHT_LAYERS):
                plan = self.plans[node.name]
                entry.update(lanes=spec.lanes, weights=int(node.weight.size),
                             nonzero_weights=int(np.count_nonzero(node.weight)),
                             accumulator_bits=plan.accumulator_width,
                             weight_storage_bits=plan.storage_bits)
                if node.name in estimates:
                    estimate = estimates[node.name]
                    entry.update(estimated_cycles=round(estimate.cycles, 1),
                                 ideal_cycles=round(estimate.ideal_cycles, 1),
                                 effective_macs=round(estimate.effective_macs, 1),
                                 dense_macs=round(estimate.dense_pairs),
                                 bound=estimate.bound)
            layers.append(entry)
        ports = {"i_stream": _act_json(self.in_act), "o_stream": _act_json(self.out_act)}
        if self.has_class:
            ports["o_stream_class"] = {"classes": self.out_shape[0]}
        return {
            "zeroskip_build": 1, "top": self.top, "verilog": f"{self.top}.v",
            "verilog_sha256": hashlib.sha256(self.verilog().encode()).hexdigest(),
            "graph": self.graph.name, "graph_file": GRAPH_FILE,
            "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
            "stream_order": "HWC", "ports": ports,
            "architecture": self.architecture,
            "zero_skip": self.zero_skip, "chunk": self.chunk,
            "layer_counters": self.layer_counters,
            "multipliers": self.multipliers, "multipliers_used": self.multipliers_used,
            "lanes": dict(self.lanes), "layers": layers,
            "network_counters": list(NETWORK_COUNTER_NAMES),
        }

    def report(self):
        """A readable table of the layers, their lanes, work and estimated cycles."""
        manifest = self.manifest()
        mode = "zero-skip" if self.zero_skip else "dense"
        budget = f" of {self.multipliers}" if self.multipliers else ""
        engines = f"{mode} engines, {self.multipliers_used}{budget} multipliers" \
            if self.architecture == "dataflow" else \
            "one zero-skip engine running the layers in turn, 1 multiplier"
        lines = [f"{self.top}: {self.graph.name}, {engines}, chunk {self.chunk}",
                 f"input {tuple(self.in_shape)} {_act_text(self.in_act)} -> output "
                 f"{tuple(self.out_shape)} {_act_text(self.out_act)}"
                 + (" + argmax class" if self.has_class else ""), ""]
        header = ("layer", "op", "in -> out", "lanes", "nonzero w", "est cycles", "bound")
        rows = []
        for entry in manifest["layers"]:
            shapes = f"{'x'.join(map(str, entry['in_shape']))} -> " \
                     f"{'x'.join(map(str, entry['out_shape']))}"
            weights = f"{entry['nonzero_weights']}/{entry['weights']}" if "weights" in entry \
                else ""
            rows.append((entry["name"], entry["op"], shapes, str(entry.get("lanes", "")),
                         weights, str(entry.get("estimated_cycles", "")),
                         entry.get("bound", "")))
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            lines.append("  ".join(cell.ljust(width) for cell, width in
                                   zip(row, widths)).rstrip())
        if self.estimates:
            slowest = max(self.estimates, key=lambda e: e.cycles)
            lines += ["", f"estimated initiation interval {slowest.cycles:.0f} cycles "
                          f"(layer {slowest.name!r}, {slowest.bound}-bound)"]
        return "\n".join(lines) + "\n"

    def write(self, directory):
        """Write the build directory: ``<top>.v``, ``manifest.json``, ``report.txt``, the graph.

        Everything is generated before anything is written, and each file is written aside and
        renamed into place, so a failure never leaves half a build. Returns the Verilog path.
        """
        directory = Path(directory)
        files = {f"{self.top}.v": self.verilog().encode(),
                 MANIFEST_FILE: (json.dumps(self.manifest(), indent=2, sort_keys=True)
                                 + "\n").encode(),
                 REPORT_FILE: self.report().encode()}
        with tempfile.TemporaryDirectory() as scratch:
            graph_path = Path(scratch) / GRAPH_FILE
            self.graph.save(graph_path)
            files[GRAPH_FILE] = graph_path.read_bytes()
        if directory.exists() and not directory.is_dir():
            raise ZeroskipError(f"build directory {str(directory)!r} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False,
                                             suffix=".partial") as handle:
                handle.write(content)
            os.replace(handle.name, directory / name)
        return directory / f"{self.top}.v"

    @classmethod
    def load(cls, directory):
        """The design a build directory was written from (compiled again, checked identical)."""
        directory = Path(directory)
        manifest, (lanes, zero_skip, chunk, multipliers) = read_manifest(
            directory, "lanes", "zero_skip", "chunk", "multipliers")
        graph = ir.load(directory / GRAPH_FILE)
        architecture = manifest.get("architecture", "dataflow")
        design = compile(graph, 1 if architecture == "sequential" else lanes, zero_skip,
                         chunk=chunk, layer_counters=manifest.get("layer_counters", True),
                         architecture=architecture)
        design.multipliers = multipliers
        verilog_path = directory / manifest.get("verilog", f"{design.top}.v")
        if not verilog_path.is_file() or verilog_path.read_text() != design.verilog():
            raise ZeroskipError(f"{str(verilog_path)!r} is missing or differs from what "
                                f"{GRAPH_FILE} and {MANIFEST_FILE} compile to; run `zeroskip "
                                "compile` again")
        return design

    # --- co-simulation -----------------------------------------------------------------------

    def simulate(self, x_int, *, idle_probability=0.0, backpressure_probability=0.0, seed=0,
                 waves=False, check=True, build_root=None, progress=None):
        """Stream a batch back to back through the Verilator model and check every output.

        The stimulus, the random stalls and the capture run inside the simulated design
        (:class:`zeroskip.testbench.harness.Harness`, under cocotb), so the model runs at
        Verilator's speed; one build serves every batch up to its capacity.

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
            Where Verilator models are cached (by content); ``$XDG_CACHE_HOME/zeroskip/verilator``
            by default.
        progress : callable, optional
            ``progress(done, total)`` inferences, called while the simulation runs.
        """
        from ..testbench import fast, runner
        from ..testbench.harness import Harness, VerilogInstance
        from ..testbench.verilog import convert

        x_int = reference.validate_input(self.graph, x_int)
        batch = len(x_int)
        if batch == 0:
            raise ZeroskipError("simulate needs at least one input")
        capacity = max(MIN_HARNESS_CAPACITY, 1 << math.ceil(math.log2(batch)))
        in_beats, out_beats = math.prod(self.in_shape), math.prod(self.out_shape)
        outputs = {"o_stream": out_beats}
        # A binary stream carries bits (1 = +1): unsigned on the wire, decoded after capture.
        signs = {"o_stream": self.out_act.signed and not self.out_act.binary}
        if self.has_class:
            outputs["o_stream_class"] = 1
            signs["o_stream_class"] = False
        # The harness instantiates the design's own Verilog: converted once, simulated as is.
        verilog = self.verilog()
        harness = Harness(VerilogInstance(self._signature, self.top),
                          max_inferences=capacity, input_beats_per_inference=in_beats,
                          output_beats_per_inference=outputs)
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
                build_root=build_root or _default_build_root(),
                idle_probability=idle_probability,
                backpressure_probability=backpressure_probability, seed=seed,
                timeout_cycles=self._cycle_budget(batch, idle_probability,
                                                  backpressure_probability), **options)
        except runner.SimulationError as error:
            raise ZeroskipError(f"co-simulation of {self.top!r} failed: {error}") from None
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
            build_seconds=result.build_seconds, waves=getattr(result, "waves_path", None))

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
            if isinstance(spec.node, _WEIGHT_LAYERS):
                work += math.prod(self.graph.shapes[spec.node.name]) * \
                    spec.node.weight[0].size // spec.lanes
        slowdown = 1.0 / ((1.0 - idle) * (1.0 - backpressure))
        return int(batch * work * slowdown * 2) + 100_000

    @property
    def sequential_plan(self):
        """The :class:`~zeroskip.hdl.sequential.SequentialPlan` of the sequential
        architecture (its steps and tensor slots)."""
        from .sequential import SequentialPlan

        if not hasattr(self, "_sequential_plan"):
            self._sequential_plan = SequentialPlan.of(
                self.layers, input_name=self.graph.input.name, in_shape=self.in_shape,
                in_act=self.in_act, chunk=self.chunk)
        return self._sequential_plan

    @property
    def plans(self):
        """Layer name -> the static :class:`~zeroskip.hdl.sparse_plan.SparsePlan` of each conv /
        linear engine (lanes, ROM contents)."""
        from .folding import XNOR_WIDTH
        from .sparse_plan import plan as make_plan

        def layer_plan(spec):
            # A binary-input layer's XNOR engine skips zero weights in both modes, a word of
            # XNOR_WIDTH channels at a time.
            if spec.in_acts[0].binary:
                return make_plan(spec.node, spec.in_shapes[0], spec.in_acts[0], spec.lanes,
                                 True, XNOR_WIDTH)
            return make_plan(spec.node, spec.in_shapes[0], spec.in_acts[0], spec.lanes,
                             self.zero_skip, self.chunk)

        if not hasattr(self, "_plan_cache"):
            self._plan_cache = {spec.node.name: layer_plan(spec) for spec in self.layers
                                if isinstance(spec.node, _WEIGHT_LAYERS)}
        return self._plan_cache


def read_manifest(directory, *keys):
    """A build directory's manifest and its values of ``keys``; a ZeroskipError says which
    directory or file is not what ``zeroskip compile`` writes."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ZeroskipError(f"{str(directory)!r} is not a zeroskip build directory: it has "
                            f"no {MANIFEST_FILE} (make one with `zeroskip compile`)")
    try:
        manifest = json.loads(manifest_path.read_text())
        return manifest, [manifest[key] for key in keys]
    except (ValueError, KeyError, TypeError) as error:
        raise ZeroskipError(f"{str(manifest_path)!r} is not a zeroskip manifest: "
                            f"{error}") from None


def _identifier(name):
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name)
    return cleaned if cleaned[:1].isalpha() else f"net_{cleaned}"


def _act_json(act):
    return {"bits": act.bits, "signed": act.signed, "scale": act.scale}


def _act_text(act):
    return f"{'int' if act.signed else 'uint'}{act.bits}"


def _producer(graph, name):
    """The node whose engine produces ``name``'s stream: flattens are looked through."""
    while isinstance(graph[name], ir.Flatten):
        name = graph[name].input
    return name


def _flatten_reorders(graph, flatten):
    """Whether a flatten's C-major order differs from the HWC stream it reads."""
    channels, height, width = graph.shapes[flatten.input]
    return channels > 1 and height * width > 1


def _network_layers(graph):
    """The engines' layers in order, looking through flattens; refuses what cannot be built."""
    needed, frontier = set(), [graph.output]
    while frontier:
        name = frontier.pop()
        if name not in needed:
            needed.add(name)
            frontier.extend(graph[name].inputs)
    layers = []
    for node in graph.nodes:
        if node.name not in needed or isinstance(node, ir.Input):
            continue
        if isinstance(node, ir.Flatten):
            readers = [c for c in graph.consumers(node.name) if c.name in needed]
            if _flatten_reorders(graph, node) and (
                    node.name == graph.output or
                    any(not isinstance(c, ir.Linear) for c in readers)):
                what = "is the graph output" if node.name == graph.output else \
                    "feeds " + ", ".join(f"{c.name!r} ({c.op})" for c in readers
                                         if not isinstance(c, ir.Linear))
                raise ZeroskipError(
                    f"node {node.name!r} (flatten) {what}: a flatten is built only before "
                    "linear layers (their columns absorb it), or where it does not reorder")
            continue
        sources = tuple(_producer(graph, source) for source in node.inputs)
        in_shapes = tuple(graph.shapes[source] for source in node.inputs)
        in_acts = tuple(graph.acts[source] for source in node.inputs)
        if isinstance(node, ir.Linear) and isinstance(graph[node.inputs[0]], ir.Flatten) \
                and _flatten_reorders(graph, graph[node.inputs[0]]):
            image_shape = graph.shapes[graph[node.inputs[0]].input]
            node = replace(node, weight=node.weight[:, hwc_permutation(image_shape)])
        layers.append((node, sources, in_shapes, in_acts))
    return layers


def _check_count(name, value, high=None):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or \
            high is not None and value > high:
        limit = f"from 1 to {high}" if high else "of at least 1"
        raise ZeroskipError(f"{name} must be an integer {limit}, got {value!r}")


def compile(graph, lanes=1, zero_skip=True, *, multipliers=None,  # noqa: A001 (the API name)
            calibration=None, chunk=DEFAULT_CHUNK, layer_counters=True,
            architecture="dataflow"):
    """Compile a graph into a :class:`Design`: one engine per layer, one Verilog top.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    lanes : int, "auto" or dict of str to int
        Multipliers of each conv / linear layer. An int gives every layer that many (a layer
        with fewer output channels gets one per channel); a dict names each layer's; ``"auto"``
        folds ``multipliers`` over the layers so the pipeline is balanced on the work left
        after zero skipping, measured on ``calibration`` (:func:`zeroskip.hdl.folding.fold`).
    zero_skip : bool
        False compiles the dense engines of the same design, for comparison (``"auto"`` then
        folds on dense work).
    multipliers : int, optional
        The budget for ``lanes="auto"``.
    calibration : numpy.ndarray, optional
        Integer inputs of the graph; needed by ``"auto"``; with them the design also carries
        per-layer cycle estimates.
    chunk : int
        Input channels a conv engine examines at once (mask and priority-encoder width).
    layer_counters : bool
        Give every engine's counters (busy, effective MACs, skipped pairs, stalls) a port;
        False keeps only the network's (inferences, latency, interval), which saves their
        logic on small FPGAs.
    architecture : "dataflow" or "sequential"
        ``"sequential"`` runs a chain of conv2d / linear / maxpool2d layers one after another
        on one engine with one multiplier (:mod:`zeroskip.hdl.sequential`): it needs
        ``lanes=1`` and has only the network's counters.
    """
    if not isinstance(graph, ir.Graph):
        raise ZeroskipError(f"compile takes a zeroskip.ir.Graph, got {type(graph).__name__}")
    _check_count("chunk", chunk, 64)
    if architecture not in ARCHITECTURES:
        raise ZeroskipError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got "
                            f"{architecture!r}")
    sequential = architecture == "sequential"
    if sequential and (lanes != 1 or multipliers is not None or not zero_skip):
        raise ZeroskipError("the sequential architecture is one zero-skip engine with one "
                            "multiplier: it takes neither lanes nor a multiplier budget, nor "
                            "dense mode")
    zero_skip = bool(zero_skip)
    found = _network_layers(graph)
    weight_layers = [node for node, *_ in found if isinstance(node, _WEIGHT_LAYERS)]
    if calibration is not None:
        calibration = reference.validate_input(graph, calibration)
    if isinstance(lanes, str):
        if lanes != "auto":
            raise ZeroskipError(f"lanes must be an integer, a dict or 'auto', got {lanes!r}")
        if multipliers is None or calibration is None:
            raise ZeroskipError("lanes='auto' folds a multiplier budget over the layers by the "
                                "work measured on calibration inputs: give multipliers=N and "
                                "calibration=x_int (CLI: --multipliers N --calibration X.npy)")
        _check_count("multipliers", multipliers)
        from .folding import fold

        chosen = fold(graph, calibration, multipliers, zero_skip=zero_skip, chunk=chunk)
    elif isinstance(lanes, dict):
        names = {node.name for node in weight_layers}
        unknown = sorted(set(lanes) - names)
        missing = sorted(names - set(lanes))
        if unknown or missing:
            raise ZeroskipError(f"lanes must name every conv2d / linear layer {sorted(names)}; "
                                + (f"unknown {unknown}" if unknown else f"missing {missing}"))
        chosen = dict(lanes)
    else:
        _check_count("lanes", lanes)
        chosen = {node.name: min(lanes, node.out_channels) for node in weight_layers}
    if multipliers is not None:
        _check_count("multipliers", multipliers)
    for node in weight_layers:
        value = chosen[node.name]
        if not isinstance(value, int) or isinstance(value, bool) or \
                not 1 <= value <= node.out_channels:
            raise ZeroskipError(f"node {node.name!r}: lanes must be between 1 and its "
                                f"{node.out_channels} output channels, got {value!r}")
    if multipliers is not None and sum(chosen.values()) > multipliers:
        raise ZeroskipError(f"the layers' lanes add up to {sum(chosen.values())} multipliers, "
                            f"more than the budget of {multipliers}")
    idents = counter_names([node.name for node, *_ in found])
    layers = [LayerSpec(node, sources, in_shapes, in_acts,
                        chosen.get(node.name, 0), idents[node.name])
              for node, sources, in_shapes, in_acts in found]
    estimates = None
    if calibration is not None and not sequential:
        from .folding import estimate_graph

        estimates = estimate_graph(graph, calibration, chosen, zero_skip=zero_skip, chunk=chunk)
    design = Design(graph, layers, chosen, zero_skip, chunk, multipliers=multipliers,
                    estimates=estimates, layer_counters=bool(layer_counters) and not sequential,
                    architecture=architecture)
    # The static plans (ROM contents) are made now, so that what cannot be built fails here.
    try:
        design.plans  # noqa: B018 (made for its checks)
        if sequential:
            design.sequential_plan  # noqa: B018 (made for its checks)
    except ValueError as error:
        raise ZeroskipError(f"graph {graph.name!r}: {error}") from None
    return design


__all__ = ["Design", "SimResult", "SimulationMismatch", "compile"]
