"""One engine for a whole network, layer after layer: for FPGAs too small for a pipeline.

::

    i_stream -> load --> activation RAM (two regions) <--> conv / linear / pool steps
                         + its nonzero mask RAM                 |
                                                      emit -> argmax -> o_stream

The dataflow top (:mod:`.network`) gives every layer its own engine, with its own line buffer,
tiles and FIFOs, each a RAM block of its own however little it holds: the int8 digits net needs
58 of an iCE40UP5K's 30. Here one datapath runs the layers one at a time on whole tensors. A
tensor lives in one region of the activation RAM (HWC order, one byte per activation; the
layers alternate between two regions), and beside it, in the mask RAM, one word per (pixel,
channel chunk) with a bit set for every nonzero activation, written as the tensor is.

A conv or linear step skips zeros as the dataflow engine does, with the same static plan
(:func:`zeroskip.hdl.sparse_plan.plan`, one lane): for every output pixel it walks the layer's
combo list, one (filter, kernel tap, channel chunk) with its nonzero weights' mask per entry,
reads the chunk's activation mask, and multiplies only the pairs in both, one per cycle. A combo
with no pair costs its cycle; one with ``k`` pairs costs ``k`` (the walk waits while they go
out). A filter's last entry closes its sum: bias, then the layer's :class:`Requantizer`. A max
pool step reads each window an activation per cycle.

Cycles per inference: the input's activations, then per conv / linear step the sum over output
pixels of ``max(1, pairs)`` over the combos, per pool step ``kernel taps x outputs``, then the
outputs, plus a few cycles per step to fill the pipeline (:func:`estimate_cycles`, exact to a
few cycles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .. import ir
from .argmax import ArgmaxEngine
from .common import activation_shape, activation_stream
from .conv import biased_shape
from .counters import NetworkCounters, network_counters_signature
from .requant import Requantizer
from .sparse_plan import plan, signed_width
from .stream import StreamRegister

__all__ = ["SequentialEngine", "SequentialPlan", "estimate_cycles"]

#: Bits of one stored activation: every supported encoding (2..8 bits) sign- or zero-extended.
STORED_BITS = 8

#: Cycles a step spends besides its work: the setup cycle, the pipeline's fill and drain
#: (measured under Verilator, see tests/test_sequential.py); and those of an inference besides
#: its steps, its input and its output.
CONV_STEP_OVERHEAD = 25
POOL_STEP_OVERHEAD = 7
INFERENCE_OVERHEAD = 7


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lives: its region's base in the activation and mask RAMs, its shape as
    the RAMs see it (``pixels`` x ``channels``, HWC) and its mask chunk."""

    base: int
    mask_base: int
    pixels: int
    channels: int
    chunk: int
    act: ir.Activation

    @property
    def elements(self):
        return self.pixels * self.channels

    @property
    def chunks(self):
        return math.ceil(self.channels / self.chunk)

    @property
    def mask_words(self):
        return self.pixels * self.chunks


@dataclass(frozen=True)
class ConvStep:
    """A conv2d or linear layer (a linear one as a 1x1 conv on a 1x1 image), with its one-lane
    :class:`~zeroskip.hdl.sparse_plan.SparsePlan` and where its combos, weights and biases start
    in the shared ROMs."""

    node: object
    plan: object
    source: TensorSlot
    target: TensorSlot
    combo_start: int
    weight_start: int
    bias_start: int

    @property
    def geometry(self):
        return self.plan.geometry

    @property
    def lane(self):
        """The plan's only :class:`~zeroskip.hdl.sparse_plan.LanePlan`."""
        return self.plan.lanes[0]

    @property
    def accumulator_bounds(self):
        return self.plan.accumulator_bounds


@dataclass(frozen=True)
class PoolStep:
    """A max pool without padding."""

    node: object
    height: int
    width: int
    source: TensorSlot
    target: TensorSlot

    @property
    def out_height(self):
        return (self.height - self.node.kernel[0]) // self.node.stride[0] + 1

    @property
    def out_width(self):
        return (self.width - self.node.kernel[1]) // self.node.stride[1] + 1


@dataclass(frozen=True)
class SequentialPlan:
    """What the sequential engine runs: its steps in order and the tensor slots between them
    (``slots[0]`` the input, ``slots[i + 1]`` step ``i``'s output), ``chunk`` channels to an
    activation-mask word."""

    layers: tuple
    steps: tuple
    slots: tuple
    chunk: int

    @classmethod
    def of(cls, layers, *, input_name, in_shape, in_act, chunk):
        """The plan of a chain of layers (:class:`zeroskip.compiler.layers.LayerSpec`: each
        with ``node``, ``sources``, ``in_shapes``, ``in_acts``); a ValueError names the layer
        that cannot be run and why."""
        if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= 64:
            raise ValueError(f"chunk must be an integer from 1 to 64, got {chunk!r}")
        layers = tuple(layers)
        steps, slots = _steps(layers, input_name, in_shape, in_act, chunk)
        return cls(layers, tuple(steps), tuple(slots), chunk)

    @property
    def conv_steps(self):
        return [step for step in self.steps if isinstance(step, ConvStep)]


def _steps(layers, input_name, in_shape, in_act, chunk):
    if not layers:
        raise ValueError("the graph has no layer to run")
    if in_act.binary:
        raise ValueError(f"input {input_name!r} is binary; the sequential engine runs 2..8-bit "
                         "activations (compile binary nets as a pipeline)")
    shapes = [tuple(in_shape)]
    acts = [in_act]
    previous = input_name
    for spec in layers:
        node = spec.node
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            if node.threshold is not None or node.act.binary:
                raise ValueError(f"node {node.name!r} ({node.op}) has a binary output; the "
                                 "sequential engine runs requantized layers only")
            if isinstance(node, ir.Conv2d) and node.groups != 1:
                raise ValueError(f"node {node.name!r} (conv2d) has {node.groups} groups; the "
                                 "sequential engine runs groups=1 only")
        elif isinstance(node, ir.MaxPool2d):
            if tuple(node.padding) != (0, 0):
                raise ValueError(f"node {node.name!r} (maxpool2d) is padded {node.padding}; the "
                                 "sequential engine pools without padding")
        else:
            raise ValueError(f"node {node.name!r} ({node.op}): the sequential engine runs "
                             "conv2d, linear and maxpool2d layers")
        if spec.sources != (previous,):
            raise ValueError(f"node {node.name!r} ({node.op}) does not read the layer before it "
                             f"({previous!r}); the sequential engine runs a chain of layers")
        shape, _ = node.infer(spec.in_shapes, spec.in_acts)
        shapes.append(tuple(shape))
        acts.append(node.act if hasattr(node, "act") else spec.in_acts[0])
        previous = node.name

    def layout(shape):
        """(pixels, channels) of a tensor as the RAMs hold it."""
        return (1, shape[0]) if len(shape) == 1 else (shape[1] * shape[2], shape[0])

    # The tensors alternate between two regions, each as large as the largest tensor.
    slots = [TensorSlot(0, 0, *layout(shape), min(chunk, layout(shape)[1]), act)
             for shape, act in zip(shapes, acts)]
    region = max(slot.elements for slot in slots)
    mask_region = max(slot.mask_words for slot in slots)
    slots = [replace(slot, base=index % 2 * region, mask_base=index % 2 * mask_region)
             for index, slot in enumerate(slots)]

    steps, combos, weights, biases = [], 0, 0, 0
    for index, spec in enumerate(layers):
        node, source, target = spec.node, slots[index], slots[index + 1]
        if isinstance(node, ir.MaxPool2d):
            _, height, width = spec.in_shapes[0]
            steps.append(PoolStep(node, height, width, source, target))
            continue
        sparse = plan(node, spec.in_shapes[0], spec.in_acts[0], 1, True, chunk)
        geometry = sparse.geometry
        if isinstance(node, ir.Linear) and (geometry.chunk != source.chunk or
                                            source.channels % source.chunk and source.pixels > 1):
            raise ValueError(f"node {node.name!r} (linear) reads a tensor of {source.channels} "
                             f"channels per pixel with chunk {chunk}: its activation masks line "
                             "up with the layer's only when the chunk divides the channels "
                             f"(compile with a chunk of {source.channels} or a divisor)")
        steps.append(ConvStep(node, sparse, source, target, combos, weights, biases))
        combos += sparse.lanes[0].combos
        weights += max(len(sparse.lanes[0].weights), 1)
        biases += geometry.out_channels
    return steps, slots


def _field_bits(count):
    """Bits of an unsigned field that holds 0 .. count - 1."""
    return max(ceil_log2(max(count, 1)), 1)


def _times(m, small, value, width):
    """``small * value`` by shifted adds (``small`` a few bits: a kernel tap)."""
    result = Const(0, width)
    for bit in range(len(small)):
        result = result + Mux(small[bit], value << bit, 0)
    product = Signal(signed(width))
    m.d.comb += product.eq(result)
    return product


class SequentialEngine(wiring.Component):
    """A chain of conv2d, linear and maxpool2d layers run one at a time by one datapath.

    Parameters
    ----------
    plan : SequentialPlan
        The steps (:meth:`SequentialPlan.of`: a chain of layers, each reading the one before,
        the first the input; a linear layer after a flatten has its columns in HWC order).
    in_shape, in_act, out_shape, out_act :
        The network's input and output shapes and encodings (2..8-bit activations).
    argmax : bool, optional
        Give ``o_stream_class``; needs a flat output; by default, for every flat output.

    Members
    -------
    i_stream : In(stream.Signature(input activation))
        Input pixels, HWC; an inference's input is taken only once the previous one has left.
    o_stream : Out(stream.Signature(output activation))
        The output tensor, HWC or feature order.
    o_stream_class : Out(stream.Signature(range(features)))
        Only with ``argmax``: the output's argmax, one beat per inference after its last logit.
    counters : Out(Signature)
        ``network`` (:data:`zeroskip.hdl.network.NETWORK_COUNTER_NAMES`).

    Latency and interval are the same (one inference at a time): :func:`estimate_cycles`.
    """

    def __init__(self, plan, *, in_shape, in_act, out_shape, out_act, argmax=None):
        if not isinstance(plan, SequentialPlan):
            raise TypeError(f"SequentialEngine takes a SequentialPlan, not {type(plan).__name__}")
        self.plan = plan
        self.layers, self.steps, self.slots = plan.layers, plan.steps, plan.slots
        self.in_shape, self.in_act = tuple(in_shape), in_act
        self.out_shape, self.out_act = tuple(out_shape), out_act
        if self.slots[-1].elements != math.prod(self.out_shape):
            raise ValueError(f"the last layer gives {self.slots[-1].elements} activations, the "
                             f"output {self.out_shape} needs {math.prod(self.out_shape)}")
        self.has_class = len(self.out_shape) == 1 if argmax is None else bool(argmax)
        if self.has_class and len(self.out_shape) != 1:
            raise ValueError(f"argmax needs a flat output, got shape {self.out_shape}")
        members = {"i_stream": In(activation_stream(in_act)),
                   "o_stream": Out(activation_stream(out_act)),
                   "counters": Out(wiring.Signature(
                       {"network": Out(network_counters_signature())}))}
        if self.has_class:
            members["o_stream_class"] = Out(stream.Signature(range(max(self.out_shape[0], 2))))
        super().__init__(members)

    @property
    def conv_steps(self):
        return self.plan.conv_steps

    # --- static contents ---------------------------------------------------------------------

    def _combo_layout(self):
        convs = self.conv_steps
        return data.StructLayout({
            "mask": unsigned(max((s.geometry.chunk for s in convs), default=1)),
            "tap_y": unsigned(max((_field_bits(s.geometry.kernel[0]) for s in convs),
                                  default=1)),
            "tap_x": unsigned(max((_field_bits(s.geometry.kernel[1]) for s in convs),
                                  default=1)),
            "chunk": unsigned(max((_field_bits(s.geometry.chunks) for s in convs), default=1)),
            "last": 1,
        })

    def _roms(self):
        layout = self._combo_layout()
        combos, weights, biases = [], [], []
        for step in self.conv_steps:
            lane = step.lane
            for mask, (tap_y, tap_x, chunk_index), last in zip(lane.masks, lane.taps, lane.last):
                combos.append(layout.const({"mask": int(mask), "tap_y": int(tap_y),
                                            "tap_x": int(tap_x), "chunk": int(chunk_index),
                                            "last": bool(last)}).as_value().value)
            weights.extend(int(w) for w in lane.weights)
            if not len(lane.weights):
                weights.append(0)
            biases.extend(int(b) for b in step.node.bias)
        return layout, combos, weights, biases

    @staticmethod
    def step_accumulator_shape(step):
        """Signed shape holding a conv step's sums with its bias."""
        return biased_shape(step.accumulator_bounds, step.node.bias)

    def accumulator_shape(self):
        """Signed shape holding every step's sums with its bias."""
        return signed(max((self.step_accumulator_shape(s).width for s in self.conv_steps),
                          default=1))

    # --- hardware ----------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        steps, slots = self.steps, self.slots
        region, mask_region = slots[1].base, slots[1].mask_base   # region 1 starts after 0
        combo_layout, combo_words, weight_values, bias_values = self._roms()
        acc_shape = self.accumulator_shape()

        m.submodules.acts = acts = Memory(shape=unsigned(STORED_BITS), depth=2 * region, init=[])
        m.submodules.masks = masks = Memory(
            shape=unsigned(max(slot.chunk for slot in slots)), depth=2 * mask_region, init=[])
        act_write, act_read = acts.write_port(), acts.read_port()
        mask_write, mask_read = masks.write_port(), masks.read_port()

        addr_width = ceil_log2(2 * region) + 2        # signed: a padded window starts below 0
        mask_addr_width = ceil_log2(2 * mask_region) + 2
        largest = max(max(s.height, s.width) if isinstance(s, PoolStep) else
                      max(s.geometry.height, s.geometry.width) for s in steps)
        coord_width = ceil_log2(largest + 1) + 3

        # --- step sequencing: load, the steps, emit -------------------------------------------
        step = Signal(range(len(steps) + 1))
        setup = Signal(init=1)        # one cycle to load the next phase's settings
        loading = Signal(init=1)      # the phase after setup is the input's load
        phase_load, phase_conv, phase_pool, phase_emit = (Signal(name=f"phase_{name}") for name
                                                          in ("load", "conv", "pool", "emit"))
        phase_done = Signal()

        # --- the writer: fills a tensor slot, activations and nonzero masks -----------------
        writer_layout = data.StructLayout({
            "base": unsigned(addr_width), "mask_base": unsigned(mask_addr_width),
            "channels": unsigned(_field_bits(max(s.channels for s in slots) + 1)),
            "chunk": unsigned(_field_bits(max(s.chunk for s in slots) + 1)),
            # For the end-of-word and end-of-pixel flags, one activation ahead.
            "bit_before_end": unsigned(_field_bits(max(s.chunk for s in slots) + 1)),
            "channel_before_end": unsigned(_field_bits(max(s.channels for s in slots) + 1)),
        })
        target = Signal(writer_layout)
        # An activation is taken (from the input, a requantizer or the pool), registered with
        # whether it is zero, then written: its source's logic stays out of the writer's.
        take, taken = Signal(), Signal(STORED_BITS)
        w_valid, w_value, w_nonzero = Signal(), Signal(STORED_BITS), Signal()
        m.d.sync += [w_valid.eq(take), w_value.eq(taken), w_nonzero.eq(taken != 0)]
        w_count = Signal(range(max(s.elements for s in slots) + 1))
        w_channel = Signal.like(target.channels)
        w_bit = Signal.like(target.chunk)
        w_word = Signal(mask_addr_width)
        w_mask = Signal(mask_write.data.shape())
        word = Signal.like(w_mask)
        # Where the word and the pixel end, the tensor's last activation and the phase's end,
        # all known from registers set an activation ahead: counts compared with the tensor's
        # sizes each cycle were the engine's longest paths.
        bit_end, channel_end = Signal(), Signal()
        word_full = bit_end | channel_end
        w_left = Signal.like(w_count)
        w_last = Signal()
        w_done = Signal()             # the tensor's last activation is taken
        # ... and written, two cycles later (the write ports are registered too).
        w_done_1, w_written = Signal(), Signal()
        m.d.sync += [w_done_1.eq(w_done), w_written.eq(w_done_1)]
        m.d.comb += word.eq(w_mask | (w_nonzero.as_unsigned() << w_bit))
        # Writes go out a cycle late, from registers: nothing reads a tensor while it is written.
        m.d.sync += [
            act_write.addr.eq(target.base + w_count), act_write.data.eq(w_value),
            act_write.en.eq(w_valid),
            mask_write.addr.eq(target.mask_base + w_word), mask_write.data.eq(word),
            mask_write.en.eq(w_valid & word_full),
        ]
        with m.If(take):
            m.d.sync += [w_left.eq(w_left - 1), w_last.eq(w_left == 1), w_done.eq(w_last)]
        with m.If(w_valid):
            m.d.sync += w_count.eq(w_count + 1)
            with m.If(word_full):
                m.d.sync += [w_mask.eq(0), w_bit.eq(0), w_word.eq(w_word + 1),
                             bit_end.eq(target.chunk == 1)]
            with m.Else():
                m.d.sync += [w_mask.eq(word), w_bit.eq(w_bit + 1),
                             bit_end.eq(w_bit == target.bit_before_end)]
            with m.If(channel_end):
                m.d.sync += [w_channel.eq(0), channel_end.eq(target.channels == 1)]
            with m.Else():
                m.d.sync += [w_channel.eq(w_channel + 1),
                             channel_end.eq(w_channel == target.channel_before_end)]

        def writer_settings(slot):
            return writer_layout.const({"base": slot.base, "mask_base": slot.mask_base,
                                        "channels": slot.channels, "chunk": slot.chunk,
                                        "bit_before_end": max(slot.chunk - 2, 0),
                                        "channel_before_end": max(slot.channels - 2, 0)})

        # --- load -------------------------------------------------------------------------------
        m.d.comb += self.i_stream.ready.eq(phase_load & ~w_done)
        # --- conv / linear: examiner, issuer, multiplier, accumulator -------------------------
        conv_layout = data.StructLayout({
            "combo_start": unsigned(_field_bits(len(combo_words))),
            "combo_before_last": unsigned(_field_bits(len(combo_words))), "one_combo": 1,
            "column_before_last": unsigned(coord_width), "one_column": 1,
            "row_before_last": unsigned(coord_width),
            "weight_start": unsigned(_field_bits(len(weight_values))),
            "bias_start": unsigned(_field_bits(len(bias_values))),
            "last_filter": unsigned(_field_bits(len(bias_values) + 1)),
            "height": signed(coord_width), "width": signed(coord_width),
            "channels": unsigned(addr_width), "row": unsigned(addr_width),
            "chunks": unsigned(mask_addr_width), "mask_row": unsigned(mask_addr_width),
            "pad_y": signed(coord_width), "pad_x": signed(coord_width),
            "stride_y": unsigned(coord_width), "stride_x": unsigned(coord_width),
            "out_height": unsigned(coord_width), "out_width": unsigned(coord_width),
            "start": signed(addr_width), "mask_start": signed(mask_addr_width),
            "row_step": unsigned(addr_width), "column_step": unsigned(addr_width),
            "mask_row_step": unsigned(mask_addr_width),
            "mask_column_step": unsigned(mask_addr_width),
            "signed_input": 1,
        })
        conv = Signal(conv_layout)

        def conv_settings(s):
            g = s.geometry
            row, mask_row = g.width * g.in_channels, g.width * g.chunks
            return conv_layout.const({
                "combo_start": s.combo_start,
                "combo_before_last": max(s.combo_start + s.lane.combos - 2, 0),
                "one_combo": s.lane.combos == 1,
                "column_before_last": max(g.out_width - 2, 0), "one_column": g.out_width == 1,
                "row_before_last": max(g.out_height - 2, 0),
                "weight_start": s.weight_start, "bias_start": s.bias_start,
                "last_filter": g.out_channels - 1, "height": g.height, "width": g.width,
                "channels": g.in_channels, "row": row, "chunks": g.chunks, "mask_row": mask_row,
                "pad_y": g.padding[0], "pad_x": g.padding[1],
                "stride_y": g.stride[0], "stride_x": g.stride[1],
                "out_height": g.out_height, "out_width": g.out_width,
                "start": s.source.base - g.padding[0] * row - g.padding[1] * g.in_channels,
                "mask_start": s.source.mask_base - g.padding[0] * mask_row -
                g.padding[1] * g.chunks,
                "row_step": g.stride[0] * row, "column_step": g.stride[1] * g.in_channels,
                "mask_row_step": g.stride[0] * mask_row,
                "mask_column_step": g.stride[1] * g.chunks,
                "signed_input": s.source.act.signed,
            })

        m.submodules.combo_rom = combo_rom = Memory(shape=unsigned(combo_layout.size),
                                                    depth=len(combo_words) or 1,
                                                    init=combo_words or [0])
        m.submodules.weight_rom = weight_rom = Memory(shape=signed(8), depth=len(weight_values)
                                                      or 1, init=weight_values or [0])
        m.submodules.bias_rom = bias_rom = Memory(
            shape=signed(max([signed_width(b, b) for b in bias_values] or [1])),
            depth=len(bias_values) or 1, init=bias_values or [0])
        combo_read, weight_read, bias_read = (combo_rom.read_port(), weight_rom.read_port(),
                                              bias_rom.read_port())

        # The examiner's walk: combo after combo, output pixel after output pixel.
        scanning = Signal()
        # Where the walk is, as flags set a step ahead (see the writer's).
        at_combo_last, at_row_end, at_last_row = Signal(), Signal(), Signal()
        combo = Signal.like(conv.combo_start)
        out_y, out_x = Signal.like(conv.out_height), Signal.like(conv.out_width)
        origin_y, origin_x = Signal(signed(coord_width)), Signal(signed(coord_width))
        pixel_base, row_base = Signal(signed(addr_width)), Signal(signed(addr_width))
        pixel_mask, row_mask = Signal(signed(mask_addr_width)), Signal(signed(mask_addr_width))
        context = {"valid": 1, "origin_y": signed(coord_width), "origin_x": signed(coord_width),
                   "base": signed(addr_width), "mask_base": signed(mask_addr_width),
                   "pixel_end": 1}
        stage_1 = Signal(data.StructLayout(context))                    # combo ROM addressed
        stage_2 = Signal(data.StructLayout({**context, "combo": combo_layout}))  # its word
        chunk_width = combo_layout["mask"].shape.width
        # ranks[i]: the weights below channel i, the weight's offset when channel i is issued.
        ranks_layout = data.ArrayLayout(range(chunk_width + 1), chunk_width)
        examined = {"valid": 1, "weights": combo_layout["mask"].shape, "inside": 1,
                    "ranks": ranks_layout, "pixel_end": 1,
                    "act_base": signed(addr_width), "weight_base": weight_read.addr.shape(),
                    "last": 1}
        # Addresses registered (3), the mask RAM read (4), its word registered (5): a RAM's
        # address and its output stay away from logic. The weights' ranks are counted in 3
        # -> 4, the entry's first weight in 4 -> 5: one adder tree per cycle.
        stage_3 = Signal(data.StructLayout({**examined,
                                            "mask_address": mask_read.addr.shape()}))
        stage_4 = Signal(data.StructLayout(examined))
        stage_5 = Signal(data.StructLayout({**examined, "acts": mask_read.data.shape()}))
        held = Signal(data.StructLayout({                                # issuing its pairs
            "valid": 1, "pending": combo_layout["mask"].shape,
            "ranks": ranks_layout, "act_base": signed(addr_width),
            "weight_base": weight_read.addr.shape(), "last": 1}))
        weight_pointer = Signal.like(held.weight_base)

        pending = held.pending
        # More than one pair left in the held entry, and so the walk held: registers (the stall
        # enables the whole walk, so it must not be computed from the pairs in the same cycle).
        several, stall = Signal(), Signal()
        advance = ~stall
        m.d.comb += [combo_read.addr.eq(combo), combo_read.en.eq(advance),
                     mask_read.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [stage_1.valid.eq(scanning), stage_1.origin_y.eq(origin_y),
                         stage_1.origin_x.eq(origin_x), stage_1.base.eq(pixel_base),
                         stage_1.mask_base.eq(pixel_mask),
                         stage_1.pixel_end.eq(at_combo_last)]
            with m.If(scanning):
                with m.If(at_combo_last):
                    m.d.sync += [combo.eq(conv.combo_start), at_combo_last.eq(conv.one_combo)]
                    with m.If(at_row_end):
                        m.d.sync += [out_x.eq(0), at_row_end.eq(conv.one_column),
                                     origin_x.eq(-conv.pad_x),
                                     origin_y.eq(origin_y + conv.stride_y),
                                     row_base.eq(row_base + conv.row_step),
                                     pixel_base.eq(row_base + conv.row_step),
                                     row_mask.eq(row_mask + conv.mask_row_step),
                                     pixel_mask.eq(row_mask + conv.mask_row_step)]
                        with m.If(at_last_row):
                            m.d.sync += scanning.eq(0)
                        with m.Else():
                            m.d.sync += [out_y.eq(out_y + 1),
                                         at_last_row.eq(out_y == conv.row_before_last)]
                    with m.Else():
                        m.d.sync += [out_x.eq(out_x + 1),
                                     at_row_end.eq(out_x == conv.column_before_last),
                                     origin_x.eq(origin_x + conv.stride_x),
                                     pixel_base.eq(pixel_base + conv.column_step),
                                     pixel_mask.eq(pixel_mask + conv.mask_column_step)]
                with m.Else():
                    m.d.sync += [combo.eq(combo + 1),
                                 at_combo_last.eq(combo == conv.combo_before_last)]
            # The combo ROM's word registered before any logic: a block RAM's output is slow.
            m.d.sync += [stage_2.eq(stage_1), stage_2.combo.eq(combo_read.data)]

        entry = stage_2.combo
        tap_y, tap_x = Signal(signed(coord_width)), Signal(signed(coord_width))
        m.d.comb += [tap_y.eq(stage_2.origin_y + entry.tap_y),
                     tap_x.eq(stage_2.origin_x + entry.tap_x)]
        inside = (tap_y >= 0) & (tap_y < conv.height) & (tap_x >= 0) & (tap_x < conv.width)
        mask_address = (stage_2.mask_base + _times(m, entry.tap_y, conv.mask_row, mask_addr_width)
                        + _times(m, entry.tap_x, conv.chunks, mask_addr_width) + entry.chunk)
        act_base = (stage_2.base + _times(m, entry.tap_y, conv.row, addr_width)
                    + _times(m, entry.tap_x, conv.channels, addr_width)
                    + entry.chunk * self.plan.chunk)
        m.d.comb += mask_read.addr.eq(stage_3.mask_address)
        with m.If(advance):
            m.d.sync += [stage_3.valid.eq(stage_2.valid), stage_3.weights.eq(entry.mask),
                         stage_3.inside.eq(inside), stage_3.act_base.eq(act_base),
                         stage_3.pixel_end.eq(stage_2.pixel_end), stage_3.last.eq(entry.last),
                         stage_3.mask_address.eq(mask_address),
                         stage_4.eq(stage_3),
                         *(stage_4.ranks[i].eq(sum(stage_3.weights[j] for j in range(i)))
                           for i in range(chunk_width)),
                         stage_5.eq(stage_4), stage_5.weight_base.eq(weight_pointer),
                         stage_5.acts.eq(mask_read.data)]
            with m.If(stage_4.valid):
                # Each walk of the list (one output pixel) starts over at the layer's weights.
                last_rank = stage_4.ranks[chunk_width - 1] + stage_4.weights[chunk_width - 1]
                m.d.sync += weight_pointer.eq(Mux(stage_4.pixel_end, conv.weight_start,
                                                  weight_pointer + last_rank))

        # The issuer: the held entry's pairs, lowest channel first, one per cycle.
        past_lowest = Signal.like(pending)   # channels above the lowest pending one
        for bit in range(1, len(pending)):
            m.d.comb += past_lowest[bit].eq(past_lowest[bit - 1] | pending[bit - 1])
        lowest = pending & ~past_lowest
        # A pair is issued as its channel and the weights below it (registered), then as the
        # two RAM addresses (registered): the logic and the adds in separate cycles.
        issued = Signal(data.StructLayout({
            "valid": 1, "pair": 1, "end": 1, "channel": range(len(pending)),
            "rank": range(len(pending) + 1), "act_base": signed(addr_width),
            "weight_base": weight_read.addr.shape()}))
        token = Signal(data.StructLayout({"valid": 1, "pair": 1, "end": 1,
                                          "act": signed(addr_width),
                                          "weight": weight_read.addr.shape()}))
        channel_index = Signal(range(len(pending)))
        for bit in range(len(pending)):
            with m.If(lowest[bit]):
                m.d.comb += channel_index.eq(bit)
        rank = Signal.like(issued.rank)
        for bit in range(len(pending)):
            with m.If(lowest[bit]):
                m.d.comb += rank.eq(held.ranks[bit])
        m.d.sync += [issued.valid.eq(held.valid & ((pending != 0) | held.last)),
                     issued.pair.eq(pending != 0), issued.end.eq(held.last & ~several),
                     issued.channel.eq(channel_index), issued.rank.eq(rank),
                     issued.act_base.eq(held.act_base), issued.weight_base.eq(held.weight_base),
                     token.valid.eq(issued.valid), token.pair.eq(issued.pair),
                     token.end.eq(issued.end), token.act.eq(issued.act_base + issued.channel),
                     token.weight.eq(issued.weight_base + issued.rank)]

        def more_than_one(bits):
            return (bits & (bits - 1)) != 0

        with m.If(advance):
            pairs = stage_5.weights & stage_5.acts & stage_5.inside.replicate(len(pending))
            m.d.sync += [several.eq(more_than_one(pairs)),
                         stall.eq(stage_5.valid & more_than_one(pairs)),
                         held.valid.eq(stage_5.valid), held.pending.eq(pairs),
                         held.ranks.eq(stage_5.ranks),
                         held.act_base.eq(stage_5.act_base),
                         held.weight_base.eq(stage_5.weight_base), held.last.eq(stage_5.last)]
        with m.Else():
            rest = pending & ~lowest
            m.d.sync += [held.pending.eq(rest), several.eq(more_than_one(rest)),
                         stall.eq(more_than_one(rest))]

        # Multiply and accumulate: operands read (fetched), registered, multiplied, summed.
        m.d.comb += weight_read.addr.eq(token.weight)
        flags = data.StructLayout({"valid": 1, "pair": 1, "end": 1})
        fetched, operands, product_stage = Signal(flags), Signal(flags), Signal(flags)
        activation = Signal(signed(STORED_BITS + 1))
        weight = Signal(signed(8))
        product = Signal(signed(STORED_BITS + 9))
        raw = act_read.data
        m.d.sync += [fetched.valid.eq(token.valid), fetched.pair.eq(token.pair),
                     fetched.end.eq(token.end), operands.eq(fetched),
                     activation.eq(Mux(conv.signed_input, raw.as_signed(), raw)),
                     weight.eq(weight_read.data),
                     product_stage.eq(operands),
                     product.eq(Mux(operands.pair, activation * weight, 0))]
        accumulator = Signal(acc_shape)
        filter_index = Signal(range(max(len(bias_values), 2)))
        bias_pointer = Signal.like(bias_read.addr)
        closing = product_stage.valid & product_stage.end
        # A filter's sum, then its bias: read from the ROM by the closed sum's own registered
        # address, so no filter count feeds the ROM's address combinationally.
        sum_layout = data.StructLayout({"valid": 1, "acc": acc_shape,
                                        "channel": filter_index.shape(),
                                        "bias": bias_read.addr.shape()})
        total, biasing = Signal(sum_layout), Signal(sum_layout)
        biased = Signal(data.StructLayout({"valid": 1, "acc": acc_shape,
                                           "channel": filter_index.shape()}))
        m.d.comb += bias_read.addr.eq(total.bias)
        m.d.sync += [total.valid.eq(closing), total.acc.eq(accumulator + product),
                     total.channel.eq(filter_index), total.bias.eq(bias_pointer),
                     biasing.eq(total),
                     biased.valid.eq(biasing.valid), biased.channel.eq(biasing.channel),
                     biased.acc.eq(biasing.acc + bias_read.data)]
        with m.If(closing):
            with m.If(filter_index == conv.last_filter):
                m.d.sync += [filter_index.eq(0), bias_pointer.eq(conv.bias_start)]
            with m.Else():
                m.d.sync += [filter_index.eq(filter_index + 1), bias_pointer.eq(bias_pointer + 1)]
        with m.If(product_stage.valid):
            m.d.sync += accumulator.eq(Mux(product_stage.end, 0, accumulator + product))

        requantized_valid = Signal()
        requantized = Signal(STORED_BITS)
        conv_index = 0
        for index, s in enumerate(steps):
            if not isinstance(s, ConvStep):
                continue
            # Each as narrow as its own layer's sums: they are exact in it.
            requantizer = Requantizer(s.node.requant, self.step_accumulator_shape(s),
                                      s.geometry.out_channels, s.node.act)
            m.submodules[f"requantizer_{conv_index}"] = requantizer
            conv_index += 1
            m.d.comb += [requantizer.i_stream.valid.eq(biased.valid & (step == index)),
                         requantizer.i_stream.payload.acc.eq(biased.acc),
                         requantizer.i_stream.payload.channel.eq(biased.channel),
                         requantizer.o_stream.ready.eq(1)]
            with m.If(requantizer.o_stream.valid):
                m.d.comb += [requantized_valid.eq(1),
                             requantized.eq(requantizer.o_stream.payload)]

        # --- max pool: a window's activations one per cycle, the largest written ------------
        pool_layout = data.StructLayout({
            "channels": unsigned(addr_width), "row": unsigned(addr_width),
            "row_step": unsigned(addr_width), "column_step": unsigned(addr_width),
            # Last indices, not counts: the loops compare with them without a subtraction.
            "last_channel": unsigned(addr_width),
            "last_y": unsigned(coord_width), "last_x": unsigned(coord_width),
            "last_out_y": unsigned(coord_width), "last_out_x": unsigned(coord_width),
            "signed_input": 1,
        })
        pool = Signal(pool_layout)

        def pool_settings(s):
            channels = s.source.channels
            return pool_layout.const({
                "channels": channels, "row": s.width * channels,
                "row_step": s.node.stride[0] * s.width * channels,
                "column_step": s.node.stride[1] * channels,
                "last_channel": channels - 1,
                "last_y": s.node.kernel[0] - 1, "last_x": s.node.kernel[1] - 1,
                "last_out_y": s.out_height - 1, "last_out_x": s.out_width - 1,
                "signed_input": s.source.act.signed,
            })

        pooling = Signal()
        pool_y, pool_x = Signal.like(pool.last_out_y), Signal.like(pool.last_out_x)
        pool_channel = Signal.like(pool.channels)
        window_y, window_x = Signal.like(pool.last_y), Signal.like(pool.last_x)
        window, window_row = Signal(addr_width), Signal(addr_width)
        tap, tap_row = Signal(addr_width), Signal(addr_width)
        read = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1,
                                         "address": unsigned(addr_width)}))
        got = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1}))
        best = Signal(signed(STORED_BITS + 1))
        pooled = Signal(data.StructLayout({"valid": 1, "value": signed(STORED_BITS + 1)}))
        first_tap = (window_y == 0) & (window_x == 0)
        last_tap = (window_y == pool.last_y) & (window_x == pool.last_x)
        m.d.sync += [read.valid.eq(pooling), read.first.eq(first_tap), read.last.eq(last_tap),
                     read.address.eq(window + tap + pool_channel), got.eq(read)]
        with m.If(pooling):
            with m.If(window_x == pool.last_x):
                m.d.sync += [window_x.eq(0), tap.eq(tap_row + pool.row),
                             tap_row.eq(tap_row + pool.row)]
                with m.If(window_y == pool.last_y):
                    m.d.sync += [window_y.eq(0), tap.eq(0), tap_row.eq(0)]
                    with m.If(pool_channel == pool.last_channel):
                        m.d.sync += pool_channel.eq(0)
                        with m.If(pool_x == pool.last_out_x):
                            m.d.sync += [pool_x.eq(0), window.eq(window_row + pool.row_step),
                                         window_row.eq(window_row + pool.row_step)]
                            with m.If(pool_y == pool.last_out_y):
                                m.d.sync += pooling.eq(0)
                            with m.Else():
                                m.d.sync += pool_y.eq(pool_y + 1)
                        with m.Else():
                            m.d.sync += [pool_x.eq(pool_x + 1),
                                         window.eq(window + pool.column_step)]
                    with m.Else():
                        m.d.sync += pool_channel.eq(pool_channel + 1)
                with m.Else():
                    m.d.sync += window_y.eq(window_y + 1)
            with m.Else():
                m.d.sync += [window_x.eq(window_x + 1), tap.eq(tap + pool.channels)]
        value = Mux(pool.signed_input, raw.as_signed(), raw)
        larger = Mux(got.first | (value > best), value, best)
        m.d.sync += [pooled.valid.eq(got.valid & got.last), pooled.value.eq(larger)]
        with m.If(got.valid):
            m.d.sync += best.eq(larger)

        # --- emit: the last tensor, out through a register slice ----------------------------
        out_slot = slots[-1]
        emitting = Signal()
        emit_count = Signal(range(out_slot.elements + 1))
        emit_valid = Signal()
        m.submodules.emit_register = emit_register = StreamRegister(
            activation_shape(self.out_act))
        emit_advance = ~emit_valid | emit_register.i_stream.ready
        m.d.comb += [emit_register.i_stream.valid.eq(emit_valid),
                     emit_register.i_stream.payload.eq(raw[:self.out_act.bits])]
        with m.If(emit_advance):
            m.d.sync += emit_valid.eq(emitting)
            with m.If(emitting):
                m.d.sync += emit_count.eq(emit_count + 1)
                with m.If(emit_count == out_slot.elements - 1):
                    m.d.sync += emitting.eq(0)

        # --- shared ports and phases --------------------------------------------------------
        m.d.comb += [
            act_read.addr.eq(Mux(phase_pool, read.address, Mux(
                phase_emit, out_slot.base + emit_count, token.act))),
            act_read.en.eq(~phase_emit | emit_advance),
        ]
        with m.If(phase_load):
            m.d.comb += [take.eq(self.i_stream.valid & ~w_done), taken.eq(self.i_stream.payload)]
        with m.Elif(phase_conv):
            m.d.comb += [take.eq(requantized_valid), taken.eq(requantized)]
        with m.Elif(phase_pool):
            m.d.comb += [take.eq(pooled.valid), taken.eq(pooled.value)]
        m.d.comb += phase_done.eq(Mux(phase_emit, ~emitting & ~emit_valid, w_written))

        with m.If(setup):
            m.d.sync += [setup.eq(0), w_count.eq(0), w_channel.eq(0), w_bit.eq(0),
                         w_word.eq(0), w_mask.eq(0), w_done.eq(0), w_done_1.eq(0),
                         w_written.eq(0)]

            def fill(slot):
                return [target.eq(writer_settings(slot)), w_left.eq(slot.elements - 1),
                        w_last.eq(slot.elements == 1), bit_end.eq(slot.chunk == 1),
                        channel_end.eq(slot.channels == 1)]

            with m.If(loading):
                m.d.sync += [phase_load.eq(1), *fill(slots[0])]
            with m.Else():
                for index, s in enumerate(steps):
                    with m.If(step == index):
                        m.d.sync += fill(s.target)
                        if isinstance(s, PoolStep):
                            settings = pool_settings(s)
                            m.d.sync += [phase_pool.eq(1), pool.eq(settings), pooling.eq(1),
                                         window.eq(s.source.base), window_row.eq(s.source.base),
                                         tap.eq(0), tap_row.eq(0), window_y.eq(0),
                                         window_x.eq(0), pool_channel.eq(0), pool_y.eq(0),
                                         pool_x.eq(0)]
                        else:
                            settings, g = conv_settings(s), s.geometry
                            m.d.sync += [phase_conv.eq(1), conv.eq(settings), scanning.eq(1),
                                         combo.eq(s.combo_start), out_y.eq(0), out_x.eq(0),
                                         at_combo_last.eq(s.lane.combos == 1),
                                         at_row_end.eq(g.out_width == 1),
                                         at_last_row.eq(g.out_height == 1),
                                         origin_y.eq(-s.geometry.padding[0]),
                                         origin_x.eq(-s.geometry.padding[1]),
                                         pixel_base.eq(settings.start),
                                         row_base.eq(settings.start),
                                         pixel_mask.eq(settings.mask_start),
                                         row_mask.eq(settings.mask_start),
                                         weight_pointer.eq(s.weight_start), filter_index.eq(0),
                                         bias_pointer.eq(s.bias_start),
                                         accumulator.eq(0)]
                with m.If(step == len(steps)):
                    m.d.sync += [phase_emit.eq(1), emitting.eq(1), emit_count.eq(0)]
        with m.Elif(phase_done):
            m.d.sync += [setup.eq(1), phase_load.eq(0), phase_conv.eq(0), phase_pool.eq(0),
                         phase_emit.eq(0)]
            with m.If(phase_load):
                m.d.sync += [loading.eq(0), step.eq(0)]
            with m.Elif(phase_emit):
                m.d.sync += loading.eq(1)
            with m.Else():
                m.d.sync += step.eq(step + 1)

        # --- outputs and counters -----------------------------------------------------------
        if self.has_class:
            m.submodules.argmax = argmax = ArgmaxEngine(self.out_shape[0], self.out_act)
            wiring.connect(m, emit_register.o_stream, argmax.i_stream)
            wiring.connect(m, argmax.o_stream, wiring.flipped(self.o_stream))
            wiring.connect(m, argmax.o_stream_class, wiring.flipped(self.o_stream_class))
        else:
            wiring.connect(m, emit_register.o_stream, wiring.flipped(self.o_stream))
        m.submodules.network_counters = watch = NetworkCounters(
            math.prod(self.in_shape), math.prod(self.out_shape), inflight=2)
        # The handshakes reach the counters a cycle late, both: the differences are the same,
        # and the output handshake does not drive the counters' enables combinationally.
        m.d.sync += [watch.input_taken.eq(self.i_stream.valid & self.i_stream.ready),
                     watch.output_taken.eq(self.o_stream.valid & self.o_stream.ready)]
        wiring.connect(m, wiring.flipped(self.counters.network), watch.counters)
        return m


def estimate_cycles(sequential_plan, graph, x_int):
    """Cycles per inference of the engine of ``sequential_plan`` (made from ``graph``) on each
    input of the batch ``x_int``: what the datapath does, walked in numpy. An int64 array, one
    entry per input."""
    from .. import reference

    values = reference.run_layers(graph, x_int)
    tensors = [values[graph.input.name]] + [values[spec.node.name] for spec in sequential_plan.layers]
    cycles = np.full(len(x_int), INFERENCE_OVERHEAD + sequential_plan.slots[0].elements +
                     sequential_plan.slots[-1].elements, dtype=np.int64)
    for index, step in enumerate(sequential_plan.steps):
        if isinstance(step, PoolStep):
            taps = step.node.kernel[0] * step.node.kernel[1]
            cycles += step.target.elements * taps + POOL_STEP_OVERHEAD
            continue
        g = step.geometry
        # (N, C, H, W) of what the step reads; a linear layer's input in HWC feature order.
        x = tensors[index]
        if x.ndim == 4 and isinstance(step.node, ir.Linear):
            x = x.transpose(0, 2, 3, 1).reshape(len(x), -1)
        nonzero = (np.asarray(x) != 0).reshape(len(x), g.in_channels, g.height, g.width)
        padded = np.pad(nonzero, ((0, 0), (0, 0), (g.padding[0],) * 2, (g.padding[1],) * 2))
        rows = slice(None, g.stride[0] * (g.out_height - 1) + 1, g.stride[0])
        columns = slice(None, g.stride[1] * (g.out_width - 1) + 1, g.stride[1])
        lane = step.lane
        for mask, (tap_y, tap_x, chunk_index) in zip(lane.masks, lane.taps):
            channels = [chunk_index * g.chunk + bit for bit in range(g.chunk) if mask >> bit & 1]
            window = padded[:, channels, tap_y:, tap_x:][:, :, rows, columns]
            pairs = window.sum(axis=1)
            cycles += np.maximum(pairs, 1).reshape(len(x), -1).sum(axis=1)
        cycles += CONV_STEP_OVERHEAD
    return cycles
