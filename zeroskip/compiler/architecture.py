"""The two architectures a graph compiles to, behind one interface.

:class:`Pipeline` gives every layer an engine of its own and runs them all at once
(:class:`zeroskip.hdl.network.NetworkEngine`); :class:`Sequential` runs the layers one after
another on one engine (:class:`zeroskip.hdl.sequential.SequentialEngine`), for the smallest
FPGAs. Both hold the decisions (the layers, their lanes, chunk, counters) and offer the same
members:

``plans``
    Layer name -> the static :class:`~zeroskip.hdl.sparse_plan.SparsePlan` of every conv /
    linear layer (ROM contents), made once and handed to the engines.
``engine()``
    A fresh top component (each elaboration needs its own).
``multipliers_used``, ``summary()``
    The multipliers the design instantiates; the report's one-line description.
``estimates``, ``estimate(x_int)``
    Cycle estimates: per layer on the compile's calibration batch (or None), and on any batch.
``manifest_options()``, ``options_from_manifest(manifest)``
    The decisions as they are written to and read from a build's manifest.
``in_width``, ``out_width``
    Activations per beat of the top's input and output streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import ir, parts
from ..errors import ZeroskipError
from ..hdl.add import AddEngine
from ..hdl.conv import SparseConvEngine
from ..hdl.network import NetworkEngine, Stage
from ..hdl.pool import AvgPool2dEngine, MaxPool2dEngine
from ..hdl.seq_model import inference_cycles
from ..hdl.seq_plan import SPRAM_WORDS, Program
from ..hdl.sequential import SequentialEngine
from ..hdl.sparse_plan import plan as make_plan
from ..hdl.window import TILE_SLOTS
from ..hdl.xnor import XNOR_WIDTH, XnorConvEngine
from .balance import port_estimate
from .folding import Calibration
from .latency import network_latency
from .layers import producer
from .streams import layouts

__all__ = ["Estimate", "Pipeline", "Sequential"]

#: SPRAM blocks of an iCE40UP5K.
SPRAM_BLOCKS = 4


@dataclass(frozen=True)
class Estimate:
    """Estimated cycles of a design on a batch.

    ``interval_cycles`` is the estimated steady-state cycles per inference; ``layers`` the
    folding model's :class:`~zeroskip.compiler.folding.LayerEstimate` per engine (pipeline);
    ``per_input`` the cycles of each input of the batch (sequential: its steady-state
    interval); ``latency_cycles`` the mean single-stream latency (first inference, pipeline
    empty: :mod:`zeroskip.compiler.latency`; sequential: one inference alone).
    """

    interval_cycles: float
    layers: tuple = ()
    per_input: np.ndarray | None = None
    latency_cycles: float | None = None


class _Architecture:
    """What both architectures hold: the graph, its layers and the compile's options."""

    #: The name written to the manifest and taken by ``compile(architecture=...)``.
    name = ""

    def __init__(self, graph, layers, lanes, *, zero_skip=True, chunk, multipliers=None,
                 layer_counters=True, calibration=None, argmax=False, widths=None, packs=None,
                 tile_slots=TILE_SLOTS):
        self.graph, self.layers = graph, tuple(layers)
        self.argmax = argmax
        self.lanes, self.zero_skip, self.chunk = dict(lanes), zero_skip, chunk
        self.multipliers, self.layer_counters = multipliers, layer_counters
        self.calibration = calibration
        #: What ``target=PART`` chose and why (a :class:`~.target.TargetChoice`), or None.
        self.target_choice = None
        #: ``(chunk, estimated latency)`` of the chunks ``lanes="auto"`` folded at when none
        #: was given (:data:`~zeroskip.compiler.AUTO_CHUNKS`), or None.
        self.chunk_choice = None
        self.in_shape = graph.shapes[graph.input.name]
        self.out_shape = graph.shapes[graph.output]
        self.in_act, self.out_act = graph.input.act, graph.acts[graph.output]
        # Activations per beat of every tensor's stream, and filters per combo of every conv /
        # linear layer (all 1: one activation a beat, no packs).
        self.widths = {name: 1 for name in [graph.input.name, *(s.name for s in self.layers)]}
        self.widths.update(widths or {})
        self.packs = {spec.name: 1 for spec in self.layers if spec.has_weights}
        self.packs.update(packs or {})
        self.tile_slots = tile_slots
        self.in_width = self.widths[graph.input.name]
        self.out_width = self.widths[producer(graph, graph.output)] if self.layers else 1

    #: Fmax measured by nextpnr per family, where it falls short of the part's default clock.
    MEASURED_MHZ = {}

    def expected_mhz(self, part):
        """The clock this architecture is expected to reach on ``part`` (a
        :class:`~zeroskip.parts.Part`): its measured Fmax on the family, at most the part's
        default clock."""
        return min(self.MEASURED_MHZ.get(part.family, part.default_mhz), part.default_mhz)

    def check(self):
        """Make the static plans, so that what cannot be built fails at compile time (a
        ValueError names the layer)."""
        self.plans  # noqa: B018 (made for its checks)

    def compile_options(self):
        """``compile`` keyword arguments that build this architecture again."""
        return self.options_from_manifest({**self.manifest_options(),
                                           "out_shape": list(self.out_shape)})

    def manifest_options(self):
        return {"architecture": self.name, "zero_skip": self.zero_skip, "chunk": self.chunk,
                "layer_counters": self.layer_counters, "multipliers": self.multipliers,
                "multipliers_used": self.multipliers_used, "lanes": dict(self.lanes),
                "argmax": self.argmax, "stream_widths": dict(self.widths),
                "packs": dict(self.packs), "tile_slots": self.tile_slots}


class Pipeline(_Architecture):
    """An engine per layer, all layers at once, joined by streams; ``lanes`` multipliers per
    conv / linear layer. ``calibration`` (a :class:`~zeroskip.compiler.folding.Calibration`)
    gives :attr:`estimates`."""

    name = "dataflow"
    #: Every engine can give its counters a port.
    LAYER_COUNTERS = True
    #: ResNet-8 as ``--target ecp5-85k`` builds it, placed and routed by nextpnr
    #: (``benchmarks/results/mlperf_sim.json``): the clock ``target=PART`` counts a pipeline's
    #: latency at on the ECP5, rather than the part's 120 MHz, which ResNet-8 does not reach
    #: (the other MLPerf nets' pipelines are not yet placed).
    MEASURED_MHZ = {"ecp5": 89.29}

    @staticmethod
    def check_options(*, lanes, multipliers, zero_skip, stream_width=None, pack=None,
                      tile_slots=None):
        """Any lanes, budget, mode, widths, packs and tiles go."""

    @staticmethod
    def options_from_manifest(manifest):
        """``compile`` keyword arguments that rebuild the design a manifest describes."""
        return {"architecture": Pipeline.name, "lanes": manifest["lanes"],
                "zero_skip": manifest["zero_skip"], "chunk": manifest["chunk"],
                "multipliers": manifest["multipliers"],
                "layer_counters": manifest.get("layer_counters", True),
                "argmax": _manifest_argmax(manifest),
                "stream_width": manifest.get("stream_widths", 1),
                "pack": manifest.get("packs", False),
                "tile_slots": manifest.get("tile_slots", TILE_SLOTS)}

    @cached_property
    def layouts(self):
        """Layer name -> ``(pack, input widths in port order, output width)``."""
        return layouts(self.layers, self.widths, self.packs, chunk=self.chunk)

    def plan(self, spec):
        """The static plan of one conv / linear layer at ``spec.lanes`` (made anew)."""
        if spec.in_acts[0].binary:
            # A binary-input layer's XNOR engine skips zero weights in both modes, a word of
            # XNOR_WIDTH channels at a time, one activation a beat.
            return make_plan(spec.node, spec.in_shapes[0], spec.in_acts[0], spec.lanes, True,
                             XNOR_WIDTH)
        pack, in_widths, out_width = self.layouts[spec.name]
        return make_plan(spec.node, spec.in_shapes[0], spec.in_acts[0], spec.lanes,
                         self.zero_skip, self.chunk, pack=pack, in_width=in_widths[0],
                         out_width=out_width, slots=self.tile_slots)

    @cached_property
    def plans(self):
        return {spec.name: self.plan(spec) for spec in self.layers if spec.has_weights}

    @property
    def multipliers_used(self):
        return sum(self.lanes.values())

    def summary(self):
        mode = "zero-skip" if self.zero_skip else "dense"
        budget = f" of {self.multipliers}" if self.multipliers else ""
        return f"{mode} engines, {self.multipliers_used}{budget} multipliers"

    def _estimates(self, calibration):
        """The folding model's estimate of every conv / linear layer on ``calibration``, and
        the cycles the ports of every other engine take (:func:`~.balance.port_estimate`), in
        layer order."""
        weights = iter(calibration.estimates(
            self.lanes, zero_skip=self.zero_skip, slots=self.tile_slots,
            layouts={name: (pack, in_widths[0], out_width)
                     for name, (pack, in_widths, out_width) in self.layouts.items()}))
        by_name = {e.name: e for e in weights}
        return tuple(by_name[spec.name] if spec.has_weights else
                     port_estimate(spec, self.layouts[spec.name][1][0],
                                   self.layouts[spec.name][2]) for spec in self.layers)

    @cached_property
    def estimates(self):
        """The folding model's estimate of every engine on the calibration batch (see
        :meth:`_estimates`), or None without one."""
        if self.calibration is None:
            return None
        return self._estimates(self.calibration)

    def estimate(self, x_int):
        calibration = Calibration(self.graph, x_int, self.chunk)
        layers = self._estimates(calibration)
        return Estimate(max((e.cycles for e in layers), default=0.0), layers,
                        latency_cycles=float(network_latency(self, calibration).mean()))

    @cached_property
    def latency(self):
        """The mean single-stream latency on the calibration batch, or None without one."""
        if self.calibration is None:
            return None
        return float(network_latency(self, self.calibration).mean())

    def layer_engine(self, spec):
        """A fresh engine of one layer; a spec with other lanes than the design's gets a plan
        of its own (the resource model counts engines at several lanes)."""
        node, in_shape, in_act = spec.node, spec.in_shapes[0], spec.in_acts[0]
        pack, in_widths, out_width = self.layouts[spec.name]
        widths = {"in_width": in_widths[0], "out_width": out_width}
        plan = None
        if spec.has_weights:
            plan = self.plans.get(spec.name)
            if plan is None or len(plan.lanes) != spec.lanes:
                plan = self.plan(spec)
        if spec.has_weights and in_act.binary:
            return XnorConvEngine(node, in_shape, in_act, lanes=spec.lanes, plan=plan)
        if spec.has_weights:
            return SparseConvEngine(node, in_shape, in_act, lanes=spec.lanes,
                                    zero_skip=self.zero_skip, chunk=self.chunk, plan=plan,
                                    pack=pack, slots=self.tile_slots, **widths)
        if isinstance(node, ir.MaxPool2d):
            return MaxPool2dEngine(node, in_shape, in_act, **widths)
        if isinstance(node, ir.AvgPool2d):
            return AvgPool2dEngine(node, in_shape, in_act, **widths)
        return AddEngine(node, in_shape, *spec.in_acts, **widths)

    def engine(self):
        """A fresh :class:`~zeroskip.hdl.network.NetworkEngine`."""
        stages = [Stage(spec.name, spec.counter_name, spec.sources, spec.ports,
                        self.layer_engine(spec), spec.out_shape, spec.out_act,
                        self.layouts[spec.name][1], self.layouts[spec.name][2])
                  for spec in self.layers]
        return NetworkEngine(stages, input_name=self.graph.input.name,
                             in_shape=self.in_shape, in_act=self.in_act,
                             output=producer(self.graph, self.graph.output),
                             out_shape=self.out_shape, out_act=self.out_act,
                             layer_counters=self.layer_counters, argmax=self.argmax,
                             in_width=self.in_width, out_width=self.out_width)


class Sequential(_Architecture):
    """One engine runs the layers one after another (:class:`~zeroskip.hdl.sequential.
    SequentialEngine`): ``lanes`` SIMD lanes (1, 2, 4 or 8) on consecutive output pixels,
    tensors and weights in ``memory`` ("spram": an iCE40UP5K's SPRAMs, weights loaded at run
    time; "bram": block RAM, weights a ROM), a line buffer of ``depth`` entries per bank, the
    lanes in ``lut_lanes`` built from logic. Only the network's counters. ``chunk`` has no
    meaning here."""

    name = "sequential"
    #: The layers share one engine: only the network's counters.
    LAYER_COUNTERS = False
    #: The deepest line buffer tried (entries per bank) before a layer is refused.
    MAX_DEPTH = 4096

    def __init__(self, graph, layers, lanes, *, memory="bram", depth=None, lut_lanes=(),
                 part=None, **options):
        super().__init__(graph, layers, {}, **options)
        #: The part the settings were chosen for (None: the iCE40UP5K's).
        self.part = part
        self.simd_lanes, self.memory = lanes, memory
        self.lut_lanes = tuple(sorted(lut_lanes))
        self.requested_depth = depth

    @staticmethod
    def check_options(*, lanes, multipliers, zero_skip, stream_width=None, pack=None,
                      tile_slots=None):
        if stream_width not in (None, 1) or pack not in (None, False) or \
                tile_slots not in (None, TILE_SLOTS):
            raise ZeroskipError("the sequential architecture streams one activation a beat "
                                "and packs no combos: it takes neither stream widths nor packs")
        if not zero_skip:
            raise ZeroskipError("the sequential architecture is a zero-skip engine: it has no "
                                "dense mode")
        if multipliers is not None:
            raise ZeroskipError("the sequential architecture takes lanes (1, 2, 4 or 8), not a "
                                "multiplier budget")
        if lanes not in (1, 2, 4, 8, "auto") or isinstance(lanes, bool):
            raise ZeroskipError(f"the sequential architecture takes 1, 2, 4 or 8 lanes (or "
                                f"'auto'), got {lanes!r}")

    @staticmethod
    def choose_settings(graph, part=None):
        """Lanes and memory for ``part`` (a :mod:`zeroskip.boards.synth` target
        name; None: the iCE40UP5K, the part this engine exists for). On the UP5K: 4 lanes, the
        tensors in SPRAM and the weights in a ROM ("spram-rom": the bitstream holds them; the
        compiler moves the weights into SPRAM too, "spram", loaded over the host link, when the
        ROM does not fit the block RAM). Not 8: its 8 DSP blocks are 7 lanes and the
        requantizer, so lane 7 would be logic, and with it the smallest net measured (the
        digits-shaped one) needed 5,302 of the 5,280 logic cells
        (``benchmarks/results/sequential.json``); ``lanes=8`` builds it. Elsewhere 8 lanes on
        DSPs and block RAM. The lanes past the DSPs are :meth:`logic_lanes`."""
        up5k = part in (None, "ice40-up5k")
        lanes = 4 if up5k else 2 if part.startswith("ice40") else 8
        return {"lanes": lanes, "memory": "spram-rom" if up5k else "bram"}

    @staticmethod
    def _dsp_blocks(part):
        """The DSP blocks of ``part`` (None: the UP5K) by :data:`zeroskip.parts.PARTS`; a part
        it does not list: none on iCE40, as many as any lanes need elsewhere."""
        part = part or "ice40-up5k"
        if part in parts.PARTS:
            return parts.PARTS[part].capacity["dsps"]
        return 0 if part.startswith("ice40") else 1 << 10

    @staticmethod
    def logic_lanes(part, lanes):
        """The lanes past the part's DSP blocks, one of which the requantizer takes."""
        dsps = Sequential._dsp_blocks(part)
        return tuple(range(max(dsps - 1, 0), lanes)) if lanes > dsps - 1 else ()

    @staticmethod
    def requant_dsps(part, lanes):
        """The requantizer's DSP blocks: a second where the part has one beyond the lanes' and
        the requantizer's first (on the UP5K at up to 6 lanes), for the bits of the sum below a
        DSP operand, which otherwise multiply in logic."""
        return 2 if lanes + 2 <= Sequential._dsp_blocks(part) else 1

    #: Fmax of the engine measured by nextpnr per family (the digits-shaped net at the lanes
    #: the part takes: 4 on the UP5K, 8 on the ECP5-85F; ``benchmarks/results/sequential.json``),
    #: the clock ``target=PART`` counts its latency at.
    MEASURED_MHZ = {"ice40": 40.6, "ecp5": 84.72}

    @staticmethod
    def options_from_manifest(manifest):
        return {"architecture": Sequential.name, "lanes": manifest["lanes"],
                "memory": manifest["memory"], "depth": manifest["line_buffer_depth"],
                "target": manifest.get("part"), "chunk": manifest["chunk"],
                "argmax": _manifest_argmax(manifest)}

    def manifest_options(self):
        return {**super().manifest_options(), "lanes": self.simd_lanes, "memory": self.memory,
                "line_buffer_depth": self.plan.depth, "lut_lanes": list(self.lut_lanes),
                "part": self.part}

    def _program(self, depth):
        spram = self.memory == "spram"
        tensors_in_spram = self.memory.startswith("spram")
        return Program.of(self.layers, input_name=self.graph.input.name,
                          in_shape=self.in_shape, in_act=self.in_act, depth=depth,
                          lanes=self.simd_lanes,
                          act_blocks=SPRAM_BLOCKS - 1 if tensors_in_spram else 3,
                          block_words=SPRAM_WORDS if tensors_in_spram else None,
                          weight_block_words=SPRAM_WORDS if spram else None)

    @cached_property
    def plan(self):
        """The :class:`~zeroskip.hdl.seq_plan.Program`; without a given depth, the shallowest
        line buffer from 512 entries per bank up that every layer fits."""
        if self.requested_depth is not None:
            program = self._program(self.requested_depth)
        else:
            depth = 512
            while True:
                try:
                    program = self._program(depth)
                    break
                except ValueError as error:
                    if "line buffer" not in str(error) or depth >= self.MAX_DEPTH:
                        raise
                    depth *= 2
        if self.memory == "spram":
            used = sum(1 for size in program.act_blocks if size) + \
                math.ceil(program.weight_words / SPRAM_WORDS)
            if used > SPRAM_BLOCKS:
                raise ValueError(f"the tensors and weights need {used} SPRAM blocks of "
                                 f"{SPRAM_WORDS} words, the iCE40UP5K has {SPRAM_BLOCKS}")
        return program

    @cached_property
    def plans(self):
        return {step.node.name: step for step in self.plan.conv_steps
                if step.kind in ("conv", "linear")}

    @property
    def multipliers_used(self):
        return self.simd_lanes

    def summary(self):
        return (f"one zero-skip engine running the layers in turn, {self.simd_lanes} lanes, "
                f"{self.memory}")

    #: The compile's calibration does not fold anything here: no per-layer estimates.
    estimates = None

    def estimate(self, x_int):
        """Steady-state cycles per inference (the next input loading while one runs), and the
        latency of one inference alone (:mod:`zeroskip.hdl.seq_model`)."""
        interval, latency = inference_cycles(self.plan, self.graph, x_int)
        return Estimate(float(interval.mean()), per_input=interval[:len(x_int)],
                        latency_cycles=float(latency.mean()))

    def preload_words(self):
        """The words ``w_stream`` takes before the first inference (SPRAM: the weight memory),
        or None."""
        if self.memory != "spram":
            return None
        return [int(word) for word in self.plan.weights]

    def engine(self):
        """A fresh :class:`~zeroskip.hdl.sequential.SequentialEngine`."""
        return SequentialEngine(self.plan, in_shape=self.in_shape, in_act=self.in_act,
                                out_shape=self.out_shape, out_act=self.out_act,
                                memory=self.memory, lut_lanes=self.lut_lanes,
                                requant_dsps=Sequential.requant_dsps(self.part,
                                                                     self.simd_lanes),
                                argmax=self.argmax)


def _manifest_argmax(manifest):
    """The manifest's ``argmax``; builds that predate the option gave a flat output one."""
    return manifest.get("argmax", len(manifest["out_shape"]) == 1)


def check_count(name, value, high=None):
    """A ZeroskipError unless ``value`` is an int from 1 (to ``high``)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or \
            high is not None and value > high:
        limit = f"from 1 to {high}" if high else "of at least 1"
        raise ZeroskipError(f"{name} must be an integer {limit}, got {value!r}")
