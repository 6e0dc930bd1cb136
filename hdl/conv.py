"""The sparse conv2d / linear engine: skips zero weights and zero activations at run time.

Dataflow (per lane, one multiplier each; :mod:`.sparse_plan` decides what each lane stores)::

    i_stream -> register slice -> writer -> line buffer (activations + per-chunk nonzero
                masks), a copy per lane
                                   |
    examiner: for each (filter, tap, chunk) of the output pixel, weight mask AND activation mask;
              combos with no pair are dropped (a filter's last combo always goes through); a
              combo's base in the compressed weight ROM comes with it from the combo ROM
              where that costs no block RAM (:attr:`.SparsePlan.stores_base`), else is counted
                                   |  FIFO
    issuer:   priority encoder hands out one surviving pair per cycle; a cycle later a prefix
              popcount of the weight mask addresses the compressed weight ROM
                                   |
    MAC:      acc += w * x; at a filter's last combo the sum goes to the output tile
                                   |
    collector: when every lane has finished a pixel, its sums in channel order go through
               bias + the requantizer (integer output) or the thresholder, which folds the
               bias in (binary output: the first layer of a binary network), to o_stream

Lanes run up to two output pixels apart (the output tile is double-buffered), so their work
balances over pixels rather than within each one. A linear layer is a 1x1 convolution of a 1x1
image whose channels are the features.
"""

from __future__ import annotations

from itertools import accumulate

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .. import ir
from .activity import count_activity, count_beats
from .arith import at_most, balanced_sum, group_counts, popcount, prefix_or, times
from .common import activation_shape, activation_stream, counters_signature, stream_shape
from .dsp import RegisteredProduct
from .requant import Requantizer, SideBySide, requant_slice
from .sparse_plan import plan as make_plan
from .sparse_plan import signed_width
from .stream import StreamRegister
from .threshold import Thresholder, threshold_slice
from .window import (LaneWindow, WriteProgress, earlier, elaborate_accumulator,
                     elaborate_block_accumulator, elaborate_filter_counter, elaborate_packer,
                     group_of, pixel_counter_width, replicated_memory, ring_rows,
                     row_counter_width, slot_bits)

# Entries the examiner may run ahead of the issuer: more than the cycles from a scan to the
# issuer (folding.SCAN_TO_ISSUE), or one-pair entries would starve the issuer. 16 deep costs
# no more than 8: one iCE40 block RAM, or one ECP5 LUT RAM deep, either way.
PAIR_FIFO_DEPTH = 16
OUT_FIFO_DEPTH = 8


def _one_hot_index(one_hot):
    """Index of the set bit of a one-hot value (0 when none): one OR per index bit."""
    width = len(one_hot)
    bits = [Cat(one_hot[i] for i in range(width) if i >> k & 1).any()
            for k in range(max(ceil_log2(width), 1))]
    return Cat(*bits) if width > 1 else Const(0, 1)


def _feed_output(m, out_fifo, output):
    """The output FIFO into the requantizers (or thresholders) through a register slice: they
    sit by their DSP blocks, away from the FIFO, and their ``ready`` on its way back into the
    FIFO was a large design's longest path (the DS-CNN on the ECP5-85F, 12.2 ns)."""
    m.submodules.output_slice = slice_ = StreamRegister(output.i_stream.payload.shape())
    m.d.comb += [
        slice_.i_stream.payload.eq(out_fifo.r_data),
        slice_.i_stream.valid.eq(out_fifo.r_rdy),
        out_fifo.r_en.eq(slice_.i_stream.ready),
    ]
    wiring.connect(m, slice_.o_stream, output.i_stream)


def elaborate_collector(m, engine, acc_bounds, lane_done, tile_read_ports, collector_released):
    """The collector both engines share: when every lane has finished an output pixel, its
    tile sums in channel order -> bias + requantizer, or the thresholder -> ``engine.o_stream``.

    ``engine`` gives the geometry, node, plan and output stream; ``acc_bounds`` the range of the
    lanes' sums; ``lane_done`` each lane's finished-pixel count; ``tile_read_ports`` each lane's
    tile read port and filter count. ``collector_released`` counts pixels whose tile slot is
    free again. Pixel counts wrap around (:data:`~zeroskip.hdl.window.PIXEL_COUNTER_WIDTH`).
    """
    if engine.plan.block > 1 or engine.geometry.out_beat > 1 or engine.plan.split > 1:
        _elaborate_wide_collector(m, engine, acc_bounds, lane_done, tile_read_ports,
                                  collector_released)
        return
    g = engine.geometry
    node = engine.node
    where = engine.plan.lane_of_filter()
    filters_per_lane = [count for _, count in tile_read_ports]
    lane_bits = max(ceil_log2(len(tile_read_ports)), 1)
    index_bits = max(ceil_log2(max(filters_per_lane)), 1)
    route_rom = Memory(shape=unsigned(lane_bits + index_bits), depth=g.out_channels,
                       init=[lane | (position << lane_bits) for lane, position in where])
    m.submodules.route_rom = route_rom
    route_read = route_rom.read_port()

    if node.threshold is not None:
        # The bias folds into the thresholds: the sums go out as they are.
        output = Thresholder(node.threshold, node.bias, acc_bounds, g.out_channels)
        bias = 0
    else:
        output = Requantizer(node.requant, biased_shape(acc_bounds, node.bias), g.out_channels,
                             node.act)
        bias_shape = signed(signed_width(int(node.bias.min(initial=0)),
                                         int(node.bias.max(initial=0))))
        bias_rom = Memory(shape=bias_shape, depth=g.out_channels,
                          init=[int(b) for b in node.bias])
        m.submodules.bias_rom = bias_rom
        bias_read = bias_rom.read_port()
        bias = Signal(bias_shape)
    out_layout = output.i_stream.payload.shape()
    out_fifo = SyncFIFOBuffered(width=out_layout.size, depth=OUT_FIFO_DEPTH)
    m.submodules.out_fifo = out_fifo
    m.submodules["thresholder" if node.threshold is not None else "requantizer"] = output

    slots = engine.plan.slots
    pixel = Signal(pixel_counter_width(slots))
    out_channel = Signal(range(max(g.out_channels, 2)))
    ready_lanes = Cat(earlier(pixel, done, pixel_counter_width(slots))
                      for done in lane_done).all()
    stage1 = Signal(data.StructLayout({"valid": 1, "channel": out_channel.shape(),
                                       "slot": slot_bits(slots), "release": 1}))
    stage2 = Signal(data.StructLayout({"valid": 1, "channel": out_channel.shape(),
                                       "lane": lane_bits}))
    addressed = Signal.like(stage2)   # the tiles' read addresses registered
    # The tile's sum registered before the bias is added: a block RAM's output is slow.
    sums = Array(port.data for port, _ in tile_read_ports)
    stage3 = Signal(data.StructLayout({"valid": 1, "channel": out_channel.shape(),
                                       "sum": tile_read_ports[0][0].data.shape()}))
    room = _output_room(m, out_fifo, ready_lanes)

    m.d.comb += route_read.addr.eq(out_channel)
    m.d.sync += stage1.valid.eq(0)
    with m.If(ready_lanes & room):
        m.d.sync += [stage1.valid.eq(1), stage1.channel.eq(out_channel),
                     stage1.slot.eq(pixel[0] if slots == 2 else pixel[:slot_bits(slots)]),
                     stage1.release.eq(out_channel == g.out_channels - 1)]
        with m.If(out_channel == g.out_channels - 1):
            m.d.sync += [out_channel.eq(0), pixel.eq(pixel + 1)]
        with m.Else():
            m.d.sync += out_channel.eq(out_channel + 1)

    route = route_read.data
    _address_tiles(m, tile_read_ports, stage1.slot, lambda lane: route[lane_bits:])
    m.d.sync += [addressed.valid.eq(stage1.valid), addressed.channel.eq(stage1.channel),
                 addressed.lane.eq(route[:lane_bits]),
                 stage2.eq(addressed),
                 stage3.valid.eq(stage2.valid), stage3.channel.eq(stage2.channel),
                 stage3.sum.eq(sums[stage2.lane])]
    if node.threshold is None:
        # Read with stage 1's channel, held until stage 3.
        bias_a, bias_2 = Signal.like(bias), Signal.like(bias)
        m.d.comb += bias_read.addr.eq(out_channel)
        m.d.sync += [bias_a.eq(bias_read.data), bias_2.eq(bias_a), bias.eq(bias_2)]
    with m.If(stage1.valid & stage1.release):
        m.d.sync += collector_released.eq(collector_released + 1)

    item = Signal(out_layout)
    m.d.comb += [
        item.acc.eq(stage3.sum + bias), item.channel.eq(stage3.channel),
        out_fifo.w_data.eq(item.as_value()), out_fifo.w_en.eq(stage3.valid),
    ]
    _feed_output(m, out_fifo, output)
    wiring.connect(m, output.o_stream, wiring.flipped(engine.o_stream))


def _output_room(m, out_fifo, ready_lanes):
    """Whether the collector may take the next beat: fewer than ``OUT_FIFO_DEPTH - 1`` beats
    taken and not yet read from ``out_fifo`` (in its stages or in the FIFO). They are counted
    in a register, where the FIFO's level and each stage's valid were summed and compared, then
    fanned out to the collector's counters: the MobileNet's longest path on the ECP5-85F
    (11.8 ns)."""
    pending = Signal(range(OUT_FIFO_DEPTH + 1))
    room = pending < OUT_FIFO_DEPTH - 1
    taken = ready_lanes & room
    read = out_fifo.r_en & out_fifo.r_rdy
    m.d.sync += pending.eq(pending + taken - read)
    return room


def _address_tiles(m, tile_read_ports, slot, position):
    """Each lane's tile read address, ``slot`` times its filters plus ``position(lane)``,
    registered: the route ROM's output and the sum on their way to every lane's tile were the
    DS-CNN's longest path on the ECP5-85F (11.7 ns, 7.3 of it route)."""
    for lane, (port, count) in enumerate(tile_read_ports):
        address = Signal.like(port.addr, name=f"tile_address_{lane}")
        m.d.sync += address.eq(times(slot, count) + position(lane))
        m.d.comb += port.addr.eq(address)


def _wide_output(engine, acc_bounds, beats):
    """``(output, bias)``: the side-by-side requantizers or thresholders of a wide collector
    (a single one for one channel a beat), and the bias per beat (None for thresholders)."""
    node, width = engine.node, engine.geometry.out_beat
    if node.threshold is not None:
        units = [Thresholder(threshold_slice(node.threshold, index, width),
                             node.bias[index::width], acc_bounds, beats)
                 for index in range(width)]
        return (units[0] if width == 1 else SideBySide(units)), None
    acc_shape = biased_shape(acc_bounds, node.bias)
    units = [Requantizer(requant_slice(node.requant, index, width), acc_shape, beats, node.act)
             for index in range(width)]
    return (units[0] if width == 1 else SideBySide(units)), node.bias.reshape(beats, width)


def _elaborate_wide_collector(m, engine, acc_bounds, lane_done, tile_read_ports,
                              collector_released):
    """The collector of a wide output stream, of a tile in blocks or of split filters: when
    every lane has finished an output pixel, one beat of ``out_beat`` sums a cycle, each read
    from a lane of every group (:meth:`~zeroskip.hdl.sparse_plan.SparsePlan.collector_routes`;
    a split filter's parts added), through side-by-side requantizers or thresholders to
    ``engine.o_stream``."""
    g, plan = engine.geometry, engine.plan
    width, groups, block = g.out_beat, plan.groups, plan.block
    beats = g.out_channels // width
    lanes_of = [list(range(group, len(tile_read_ports), groups)) for group in range(groups)]
    lane_bits = max(ceil_log2(max(len(lanes) for lanes in lanes_of)), 1)
    slices = max(block // width, 1)  # beats in a tile word, when one column holds a beat
    route_layout = data.StructLayout({
        "lane": data.ArrayLayout(lane_bits, groups),
        "position": data.ArrayLayout(max(ceil_log2(max(n for _, n in tile_read_ports)), 1),
                                     groups),
        "slice": max(ceil_log2(slices), 1)})
    m.submodules.route_rom = route_rom = Memory(
        shape=route_layout, depth=beats,
        init=[{"lane": [lane for lane, _, _ in route], "slice": route[0][2] // width,
               "position": [position for _, position, _ in route]}
              for route in plan.collector_routes()])
    route_read = route_rom.read_port()
    output, bias_values = _wide_output(engine, acc_bounds, beats)
    m.submodules.side_by_side = output
    sum_shape = tile_read_ports[0][0].data.shape()
    element = sum_shape.elem_shape if block > 1 else sum_shape
    out_layout = output.i_stream.payload.shape()
    m.submodules.out_fifo = out_fifo = SyncFIFOBuffered(width=out_layout.size,
                                                        depth=OUT_FIFO_DEPTH)

    counter = pixel_counter_width(plan.slots)
    pixel = Signal(counter)
    beat = Signal(range(max(beats, 2)))
    ready_lanes = Cat(earlier(pixel, done, counter) for done in lane_done).all()
    stage1 = Signal(data.StructLayout({"valid": 1, "beat": beat.shape(),
                                       "slot": slot_bits(plan.slots), "release": 1}))
    stage2 = Signal(data.StructLayout({"valid": 1, "beat": beat.shape(),
                                       "lane": route_layout["lane"].shape,
                                       "slice": route_layout["slice"].shape}))
    stage3 = Signal(data.StructLayout({"valid": 1, "beat": beat.shape(),
                                       "sum": data.ArrayLayout(element, width)}))
    addressed = Signal.like(stage2)   # the tiles' read addresses registered
    # Split filters' parts are added a stage of their own after the words are read.
    stage2b = Signal.like(stage2)
    room = _output_room(m, out_fifo, ready_lanes)
    m.d.comb += route_read.addr.eq(beat)
    m.d.sync += stage1.valid.eq(0)
    with m.If(ready_lanes & room):
        m.d.sync += [stage1.valid.eq(1), stage1.beat.eq(beat),
                     stage1.slot.eq(pixel[:slot_bits(plan.slots)]),
                     stage1.release.eq(beat == beats - 1)]
        with m.If(beat == beats - 1):
            m.d.sync += [beat.eq(0), pixel.eq(pixel + 1)]
        with m.Else():
            m.d.sync += beat.eq(beat + 1)
    route = route_read.data
    _address_tiles(m, tile_read_ports, stage1.slot, lambda lane: route.position[lane % groups])
    m.d.sync += [addressed.valid.eq(stage1.valid), addressed.beat.eq(stage1.beat),
                 addressed.lane.eq(route.lane), addressed.slice.eq(route.slice),
                 stage2.eq(addressed)]
    # A tile word of every group, from the lane the route names.
    words = [Array(Value.cast(tile_read_ports[lane][0].data) for lane in lanes)[stage2.lane[index]]
             for index, lanes in enumerate(lanes_of)]
    if plan.split > 1:
        words = _added_parts(m, plan, words, element, stage2, stage2b)
        stage2 = stage2b
    # A beat is either a slice of one column's word or the columns' words side by side.
    if plan.columns > 1:
        beat_sums = Cat(*words)
    else:
        beat_sums = words[0] if slices == 1 else \
            words[0].word_select(stage2.slice, width * element.width)
    m.d.sync += [stage3.valid.eq(stage2.valid), stage3.beat.eq(stage2.beat),
                 stage3.sum.eq(beat_sums)]
    with m.If(stage1.valid & stage1.release):
        m.d.sync += collector_released.eq(collector_released + 1)

    item = Signal(out_layout)
    accs = [item.acc] if width == 1 else [item.acc[index] for index in range(width)]
    if bias_values is None:
        m.d.comb += [acc.eq(stage3.sum[index]) for index, acc in enumerate(accs)]
    else:
        bias_shape = signed(signed_width(int(bias_values.min(initial=0)),
                                         int(bias_values.max(initial=0))))
        m.submodules.bias_rom = bias_rom = Memory(
            shape=data.ArrayLayout(bias_shape, width), depth=beats,
            init=[[int(b) for b in row] for row in bias_values])
        bias_read = bias_rom.read_port()
        # Read with stage 1's beat, held until stage 3.
        bias_a, bias_2, bias = (Signal.like(bias_read.data) for _ in range(3))
        m.d.comb += bias_read.addr.eq(beat)
        m.d.sync += [bias_a.eq(bias_read.data), bias_2.eq(bias_a), bias.eq(bias_2)]
        if plan.split > 1:
            bias_2b = Signal.like(bias)
            m.d.sync += [bias_2b.eq(bias_2), bias.eq(bias_2b)]
        m.d.comb += [acc.eq(stage3.sum[index] + bias[index]) for index, acc in enumerate(accs)]
    m.d.comb += [
        item.channel.eq(stage3.beat),
        out_fifo.w_data.eq(item.as_value()), out_fifo.w_en.eq(stage3.valid),
    ]
    _feed_output(m, out_fifo, output)
    wiring.connect(m, output.o_stream, wiring.flipped(engine.o_stream))


def _added_parts(m, plan, words, element, stage, registered_stage):
    """The groups' tile words registered (with ``stage`` into ``registered_stage``), then
    each column's parts of split filters added element by element: one word per column."""
    width = len(words[0])
    held = Signal(len(words) * width)
    m.d.sync += [registered_stage.eq(stage), held.eq(Cat(*words))]
    words = [held.word_select(index, width) for index in range(len(words))]
    columns = []
    for column in range(plan.columns):
        parts = words[column * plan.split:(column + 1) * plan.split]
        # A filter's sum fits its accumulator, whatever its parts add up to on the way.
        columns.append(Cat(*[
            sum(part.word_select(index, element.width).as_signed() for part in parts)
            [:element.width] for index in range(width // element.width)]))
    return columns


def biased_shape(acc_bounds, bias):
    """The shape of a lane's sum plus its channel's bias."""
    low, high = acc_bounds
    return signed(signed_width(low + int(bias.min(initial=0)), high + int(bias.max(initial=0))))


class SparseConvEngine(wiring.Component):
    """Conv2d or Linear with two-sided zero skipping and ``lanes`` multipliers.

    Parameters
    ----------
    node : zeroskip.ir.Conv2d or zeroskip.ir.Linear
        With a ``requant`` (integer output) or a ``threshold`` (binary output).
    in_shape : tuple
        ``(C, H, W)`` for a conv, ``(features,)`` for a linear layer.
    in_act : zeroskip.ir.Activation
        Encoding of the input stream: integers of 2 to 8 bits (a binary input goes to
        :class:`~zeroskip.hdl.xnor.XnorConvEngine`).
    lanes : int
        Multipliers, 1 to the number of output channels; filters are spread over them by
        nonzero count.
    zero_skip : bool
        False gives the dense engine of the same design: every weight stored, every pair issued.
    chunk : int
        Input channels examined together (the width of the masks and the priority encoder).
    pack : int
        Filters per combo (:mod:`.sparse_plan`: packed scans), for a depthwise layer or one
        whose group fits a chunk; 1 examines one filter per combo.
    in_width, out_width : int
        Activations per beat of ``i_stream`` and ``o_stream``: powers of two dividing the
        channels (and, in, the chunk and the channels per group, but for a depthwise pack).
    slots : int
        Output pixels the lanes may run ahead of the collector (the tile's depth), a power of
        two from 2.
    plan : zeroskip.hdl.sparse_plan.SparsePlan, optional
        The plan of these arguments, when the compiler has made it already; made here if not.

    Members
    -------
    i_stream : In(stream.Signature(stream_shape(activation, in_width)))
        Input activations, HWC order, ``in_width`` a beat.
    o_stream : Out(stream.Signature(stream_shape(activation, out_width)))
        Output activations, HWC order, ``out_width`` a beat: integers after a requant, one bit
        each after a threshold (1 = +1, 0 = -1).
    counters : Out(counters signature)
        ``busy_cycles``, ``effective_macs``, ``skipped_pairs``, ``stall_cycles`` since reset.

    Latency: an output pixel's last beat leaves about 23 cycles after its last pair is issued
    through a requantizer, 7 fewer through a thresholder (one more for an input wider than 1). Throughput:
    one pair per lane per cycle while the pair FIFOs are fed; at most one output beat and one
    input beat per cycle.
    """

    def __init__(self, node, in_shape, in_act, *, lanes=1, zero_skip=True, chunk=16, plan=None,
                 pack=1, in_width=1, out_width=1, slots=2):
        if not isinstance(node, (ir.Conv2d, ir.Linear)):
            raise TypeError(f"SparseConvEngine takes a Conv2d or Linear node, not "
                            f"{type(node).__name__}")
        if not isinstance(in_act, ir.Activation):
            raise TypeError("in_act must be a zeroskip.ir.Activation")
        if in_act.binary:
            # A 0 bit means -1 here: the multipliers and the zero masks would read it as 0.
            raise ValueError(f"SparseConvEngine needs an integer input, got binary activations "
                             f"for {node.name!r} (XnorConvEngine takes those)")
        if not isinstance(chunk, int) or not 1 <= chunk <= 64:
            raise ValueError(f"chunk must be an integer from 1 to 64, got {chunk!r}")
        self.node, self.in_shape, self.in_act = node, tuple(in_shape), in_act
        self.plan = make_plan(node, in_shape, in_act, lanes, zero_skip, chunk, pack=pack,
                              in_width=in_width, out_width=out_width, slots=slots) \
            if plan is None else plan
        self.geometry = g = self.plan.geometry
        if plan is not None and (g.pack, g.in_beat, g.out_beat, plan.slots) != \
                (pack, in_width, out_width, slots):
            raise ValueError(f"the plan of {node.name!r} has pack {g.pack}, widths "
                             f"{g.in_beat} / {g.out_beat} and {plan.slots} tile slots, the "
                             f"engine was given {pack}, {in_width} / {out_width} and {slots}")
        self.in_width, self.out_width = g.in_beat, g.out_beat
        self.sum_shape = signed(self.plan.accumulator_width)
        super().__init__({
            "i_stream": In(activation_stream(in_act, g.in_beat)),
            "o_stream": Out(activation_stream(node.act, g.out_beat)),
            "counters": Out(counters_signature()),
        })

    # --- elaboration -------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        lanes = self.plan.lanes
        rows = ring_rows(g, g.width * g.in_channels // g.in_beat)
        ring_beats = rows * g.width * g.in_channels // g.in_beat
        ring_words = rows * g.width * g.mask_words_per_pixel
        in_shape = stream_shape(self.in_act, g.in_beat)

        row_width = row_counter_width(g, rows)
        written = WriteProgress.create(g, row_width)
        # Pixels whose tile slot is free again.
        collector_released = Signal(pixel_counter_width(self.plan.slots))

        # One line buffer, a copy per lane (window.replicated_memory), written together.
        act_write, act_mems = replicated_memory(m, "act_mem", in_shape, ring_beats, len(lanes))
        mask_write, mask_mems = replicated_memory(m, "mask_mem", unsigned(g.mask_word),
                                                  ring_words, len(lanes))

        windows = [LaneWindow(m, g, rows, row_width, written, collector_released,
                              f"lane_{index}", slots=self.plan.slots)
                   for index in range(len(lanes))]
        self._elaborate_writer(m, act_write, ring_beats, mask_write, rows, written,
                               windows)

        lane_done = []
        scanned_total, issued_total, effective_total = [], [], []
        waiting_for_rows = []
        tile_read_ports = []
        for index, lane in enumerate(lanes):
            ports = self._elaborate_lane(m, index, lane, act_mems[index], mask_mems[index],
                                         windows[index])
            lane_done.append(ports["pixels_done"])
            scanned_total.append(ports["scanned"])
            issued_total.append(ports["issued"])
            effective_total.append(ports["effective"])
            waiting_for_rows.append(ports["waiting_for_rows"])
            tile_read_ports.append(ports["tile_read"])

        elaborate_collector(m, self, self.plan.accumulator_bounds, lane_done, tile_read_ports,
                            collector_released)
        self._elaborate_counters(m, issued_total, scanned_total, effective_total,
                                 waiting_for_rows, rows)
        return m

    def _elaborate_writer(self, m, act_write, act_depth, mask_write, rows, written,
                          windows):
        """Input stream -> a register slice -> the line buffer, with one nonzero bit per
        activation. The slice is the engine's: the link before an engine is placed between it
        and its producer, and the link's ``valid`` and the ring's room (``ready``) meeting in
        one LUT there, with the writer's counters behind it, were a MobileNet's longest path
        on the ECP5-85F (13.1 ns, 11.4 of it route)."""
        m.submodules.input_slice = input_slice = StreamRegister(self.i_stream.payload.shape())
        wiring.connect(m, wiring.flipped(self.i_stream), input_slice.i_stream)
        act_addr = Signal(range(act_depth))
        beat = input_slice.o_stream.payload
        nonzero = beat != 0 if self.in_width == 1 else \
            Cat(beat[index] != 0 for index in range(self.in_width))
        taken = elaborate_packer(m, self, input_slice.o_stream, rows, written, windows, nonzero,
                                 mask_write)
        m.d.comb += [act_write.addr.eq(act_addr), act_write.data.eq(beat)]
        with m.If(taken):
            m.d.comb += act_write.en.eq(1)
            m.d.sync += act_addr.eq(Mux(act_addr == act_depth - 1, 0, act_addr + 1))

    def _elaborate_lane(self, m, index, lane, act_mem, mask_mem, window):
        g = self.geometry
        filters = len(lane.filters)
        weight_bits = self.node.weight_bits
        block = self.plan.block

        # A field of one value takes no bit (a 1x1 kernel's taps, a group of one chunk): a
        # pointwise conv's combo word of 37 bits took two 36-bit block RAMs on the ECP5.
        row_bits, column_bits = ceil_log2(g.kernel[0]), ceil_log2(g.kernel[1])
        chunk_bits = ceil_log2(g.chunks)
        combo_layout = data.StructLayout({"mask": unsigned(g.mask_bits), "tap_y": row_bits,
                                          "tap_x": column_bits, "chunk": chunk_bits, "last": 1,
                                          "base": unsigned(self.plan.base_bits)})
        assert combo_layout.size == self.plan.combo_bits
        # A combo's base (its first weight's place in the weight ROM: the weights of the combos
        # before it in the walk), where stored (a field of no bits where not).
        counts = [bin(int(mask)).count("1") for mask in lane.masks]
        bases = list(accumulate(counts[:-1], initial=0)) if counts else []
        assert sum(counts) == len(lane.weights)
        combo_words = [combo_layout.const({"mask": int(mask), "tap_y": int(ty), "tap_x": int(tx),
                                           "chunk": int(c), "last": bool(last),
                                           "base": int(base)}).as_value().value
                       for mask, (ty, tx, c), last, base in zip(lane.masks, lane.taps, lane.last,
                                                                bases)]
        combo_rom = Memory(shape=unsigned(combo_layout.size), depth=lane.combos,
                           init=combo_words)
        weight_rom = Memory(shape=signed(weight_bits), depth=max(len(lane.weights), 1),
                            init=[int(v) for v in lane.weights] or [0])
        # A tile word holds a block of the lane's filters (one filter, unless the output is
        # wide or packed): the collector reads a block at once.
        tile = Memory(shape=self.sum_shape if block == 1 else
                      data.ArrayLayout(self.sum_shape, block),
                      depth=self.plan.slots * filters // block, init=[])
        m.submodules[f"combo_rom_{index}"] = combo_rom
        m.submodules[f"weight_rom_{index}"] = weight_rom
        m.submodules[f"tile_{index}"] = tile
        combo_read = combo_rom.read_port()
        mask_read = mask_mem.read_port()
        weight_read = weight_rom.read_port()
        act_read = act_mem.read_port()
        if block == 1:
            tile_write = tile.write_port()
        else:
            tile_write = tile.write_port(granularity=1)
        tile_read = tile.read_port()

        pair_fifo, pair_fifo_layout, scanned, waiting_for_rows = self._elaborate_examiner(
            m, index, lane, combo_layout, combo_read, mask_read, act_mem, window)
        has_pair, pixels_done, effective = self._elaborate_issuer(
            m, index, lane, pair_fifo, pair_fifo_layout, weight_read, act_read, tile_write,
            window)

        return {"pixels_done": pixels_done, "issued": has_pair, "scanned": scanned,
                "effective": effective, "waiting_for_rows": waiting_for_rows,
                "tile_read": (tile_read, filters // block)}

    def _elaborate_examiner(self, m, index, lane, combo_layout, combo_read, mask_read,
                            act_mem, window):
        """The combo walk of one lane, down to its pair FIFO: returns the FIFO, its entry
        layout, the dense pairs credited as a pixel starts, and whether the lane waits for
        input rows."""
        g = self.geometry
        filters = len(lane.filters) // g.pack  # units: filters, or packs of filters
        words_per_pixel = g.mask_words_per_pixel
        chunk_bits = ceil_log2(g.chunks)
        # --- examiner: walks the combo list for one output pixel at a time ------------------
        # Rows are released by pixels the MAC has finished (the window's retired cursor), not
        # by pixels scanned: pairs of scanned pixels may still wait in the FIFO to read them.
        combo = Signal(range(max(lane.combos, 2)))
        scanning = Signal()
        can_start = window.can_start
        waiting_for_rows = Signal()
        m.d.comb += waiting_for_rows.eq(~scanning & ~window.rows_ready)

        pair_fifo_layout = data.StructLayout({
            "pairs": unsigned(g.mask_bits), "weights": unsigned(g.mask_bits),
            "base": unsigned(max(ceil_log2(max(len(lane.weights), 1) + 1), 1)),
            "act_base": unsigned(max(ceil_log2(act_mem.depth * g.in_beat), 1)),
            "pad": 1, "last": 1, "filter": unsigned(max(ceil_log2(filters), 1)),
            "slot": unsigned(slot_bits(self.plan.slots)),
        })
        pair_fifo = SyncFIFOBuffered(width=pair_fifo_layout.size, depth=PAIR_FIFO_DEPTH)
        m.submodules[f"pair_fifo_{index}"] = pair_fifo

        # Stage A: the combo ROM is addressed, with the pixel's window origin alongside.
        stage_b = Signal(data.StructLayout({"valid": 1, "first": 1, **window.origin_layout()}))
        # Stage B: the combo is known; the tap is located in the line buffer (registered in
        # stage L).
        ring_pixels = window.rows * g.width
        unit_fields, unit_values = self._unit_location(lane)
        stage_l = Signal(data.StructLayout({
            "valid": 1, "first": 1, "pad": 1, "last": 1, "mask": unsigned(g.mask_bits),
            "base": combo_layout["base"].shape, "ring_pixel": range(ring_pixels),
            **unit_fields,
            "chunk": chunk_bits, "filter": pair_fifo_layout["filter"].shape,
            "slot": slot_bits(self.plan.slots)}))
        # Stage L: the tap is located; the line buffer's mask word is addressed.
        slice_field = {"slice": unit_fields["slice"]} if "slice" in unit_fields else {}
        stage_c = Signal(data.StructLayout({
            "valid": 1, "first": 1, "pad": 1, "last": 1, "mask": unsigned(g.mask_bits),
            "base": combo_layout["base"].shape, "act_base": pair_fifo_layout["act_base"].shape,
            "filter": pair_fifo_layout["filter"].shape, "slot": slot_bits(self.plan.slots),
            **slice_field}))
        # Entries in the FIFO or on their way to it (stages B, R, L, C, M and P), counted in a
        # register of their own rather than summed from the FIFO's level each cycle: the sum and
        # its comparison were the engine's longest path. A combo examined is counted a cycle
        # late (``counted``): the decision to examine fans out over the lane, and its way back
        # into this count was a large design's longest path (the DS-CNN on the ECP5-85F). The
        # count is then at most one low, which the room check's margin of two covers.
        # Whether there is room (``ahead`` below the margin) and whether the combo is the
        # pixel's last are registers, set for the values ``ahead`` and ``combo`` take next: the
        # decision to move to the next pixel is then one LUT from flip-flops before it fans out
        # to the window's cursor (``ahead``'s comparison and the combo's, then that fan-out,
        # were the DS-CNN's and the digits-shaped net's longest paths on the ECP5-85F).
        ahead = Signal(range(PAIR_FIFO_DEPTH + 1))
        room = Signal(init=1)
        at_last = Signal(init=lane.combos == 1)
        examined = Signal()  # stage B takes a combo this cycle
        counted = Signal()  # examined, a cycle later

        m.d.comb += combo_read.addr.eq(combo)
        m.d.sync += stage_b.valid.eq(0)
        with m.If(~scanning):
            with m.If(can_start):
                m.d.sync += scanning.eq(1)
        with m.Elif(room):
            m.d.comb += examined.eq(1)
            m.d.sync += [stage_b.valid.eq(1), stage_b.first.eq(combo == 0),
                         *window.origin(stage_b)]
            with m.If(at_last):
                m.d.sync += [combo.eq(0), scanning.eq(0), at_last.eq(lane.combos == 1)]
                window.next_pixel(m)
            with m.Else():
                m.d.sync += [combo.eq(combo + 1), at_last.eq(combo + 2 == lane.combos)]

        # Stage B registers the combo as it leaves the ROM (stage R): a block RAM's output delay
        # and locating the tap did not fit one cycle at 120 MHz on the ECP5.
        stage_r = Signal.like(stage_b)
        combo_r = Signal.like(combo_read.data)
        m.d.sync += [stage_r.eq(stage_b), combo_r.eq(combo_read.data)]
        stage_b, entry_b = stage_r, combo_layout(combo_r)
        filter_index = elaborate_filter_counter(m, filters, stage_b.valid & entry_b.last)
        pad, ring_pixel = window.locate(m, stage_b, entry_b.tap_y, entry_b.tap_x)
        m.d.sync += [
            stage_l.valid.eq(stage_b.valid), stage_l.first.eq(stage_b.first),
            stage_l.pad.eq(pad), stage_l.last.eq(entry_b.last), stage_l.mask.eq(entry_b.mask),
            stage_l.base.eq(entry_b.base),
            stage_l.ring_pixel.eq(ring_pixel),
            *[stage_l[name].eq(value(filter_index)) for name, value in unit_values.items()],
            stage_l.chunk.eq(entry_b.chunk), stage_l.filter.eq(filter_index),
            stage_l.slot.eq(stage_b.slot),
        ]
        if g.pack == 1:
            m.d.comb += mask_read.addr.eq(times(stage_l.ring_pixel, words_per_pixel) +
                                          times(stage_l.group, g.chunks) + stage_l.chunk)
            act_base = times(stage_l.ring_pixel, g.in_channels) + \
                times(stage_l.group, g.group_channels) + times(stage_l.chunk, g.chunk)
        else:
            # A pack's combos all read one mask word per pixel: the chunk is always 0.
            word, channel = (stage_l.word, stage_l.channel) if g.diagonal else (0, 0)
            m.d.comb += mask_read.addr.eq(times(stage_l.ring_pixel, words_per_pixel) + word)
            act_base = times(stage_l.ring_pixel, g.in_channels) + channel
        m.d.sync += [
            stage_c.valid.eq(stage_l.valid), stage_c.first.eq(stage_l.first),
            stage_c.pad.eq(stage_l.pad), stage_c.last.eq(stage_l.last),
            stage_c.mask.eq(stage_l.mask), stage_c.base.eq(stage_l.base),
            stage_c.act_base.eq(act_base),
            stage_c.filter.eq(stage_l.filter), stage_c.slot.eq(stage_l.slot),
            *[stage_c.slice.eq(stage_l.slice) for _ in slice_field],
        ]

        # Stage C: the activation mask is here, and registered as it leaves the RAM (stage M),
        # for the same reason as stage R.
        stage_m = Signal.like(stage_c)
        m.d.sync += stage_m.eq(stage_c)
        act_mask = self._activation_mask(m, stage_c, mask_read.data)
        stage_c = stage_m
        weight_mask = stage_c.mask
        pairs = weight_mask & act_mask if self.plan.zero_skip else weight_mask
        base = stage_c.base
        if not self.plan.stores_base:
            # Counted as the walk goes: the weights of the lane's combos before this one.
            running_base = Signal(pair_fifo_layout["base"].shape)
            base = Mux(stage_c.first, 0, running_base)
            with m.If(stage_c.valid):
                m.d.sync += running_base.eq(base + popcount(weight_mask))
        stage_p_valid, kept = self._elaborate_entry(m, pair_fifo, pair_fifo_layout, stage_c,
                                                    pairs, weight_mask, base)
        # A combo dropped (no pair, not the last) and an entry the issuer takes free their
        # places a cycle later (registers): the issuer's decision, and the test for a pair over
        # the masks, into this sum in one cycle were each the digits-shaped net's longest path.
        # Seen late, they only make the count too high, so the FIFO never overflows. The three
        # terms meet in a LUT first, then one add.
        dropped, taken = Signal(), Signal()
        change = Signal(signed(3))
        m.d.comb += change.eq(counted - dropped - taken)
        m.d.sync += [dropped.eq(stage_p_valid & ~kept),
                     taken.eq(pair_fifo.r_en & pair_fifo.r_rdy), counted.eq(examined),
                     ahead.eq(ahead + change), room.eq(ahead + change < PAIR_FIFO_DEPTH - 2)]
        # The dense loop nest's pairs for this lane and pixel, credited as the pixel starts
        # (before any of its pairs issue), so that credited minus issued never goes negative.
        dense_pairs = len(lane.filters) * g.taps * g.group_channels
        scanned = Mux(~scanning & can_start, dense_pairs, 0)
        return pair_fifo, pair_fifo_layout, scanned, waiting_for_rows

    @staticmethod
    def _elaborate_entry(m, pair_fifo, pair_fifo_layout, stage, pairs, weight_mask, base):
        """Stage P: a combo's pair-FIFO entry, and whether it goes into the FIFO (a pair, or
        its filter's last combo), in registers that write the FIFO: the masks' AND, its test
        for a pair and the FIFO's write logic (its level, its RAM's write enable) in one cycle
        were the digits-shaped net's longest path on the ECP5-85F (8.4 ns). Returns
        ``(valid, kept)``, both registers of stage P."""
        entry = Signal(pair_fifo_layout)
        m.d.comb += [
            entry.pairs.eq(pairs), entry.weights.eq(weight_mask), entry.base.eq(base),
            entry.act_base.eq(stage.act_base), entry.pad.eq(stage.pad),
            entry.last.eq(stage.last), entry.filter.eq(stage.filter), entry.slot.eq(stage.slot),
        ]
        stage_p = Signal(pair_fifo_layout)
        valid, kept = Signal(), Signal()
        m.d.sync += [stage_p.eq(entry), valid.eq(stage.valid),
                     kept.eq((pairs != 0) | stage.last)]
        m.d.comb += [pair_fifo.w_data.eq(stage_p.as_value()), pair_fifo.w_en.eq(valid & kept)]
        return valid, kept

    def _unit_location(self, lane):
        """What locates a unit's mask word and channels in the line buffer, as stage fields:
        ``(layout fields, {field: value of the unit index})``. A filter's group (no pack); a
        depthwise pack's word, first channel and slice of the word; nothing for a dense pack
        (its one group has one word per pixel)."""
        g = self.geometry
        if g.pack == 1:
            return ({"group": range(max(g.groups, 2))},
                    {"group": lambda index: group_of(g, lane.filters, index)})
        if not g.diagonal:
            return {}, {}
        firsts = lane.filters[::g.pack]
        tables = {"word": [first // g.mask_word for first in firsts],
                  "channel": list(firsts)}
        fields = {"word": range(max(g.mask_words_per_pixel, 2)),
                  "channel": range(max(g.in_channels, 2))}
        if g.mask_word > g.pack:
            tables["slice"] = [first % g.mask_word // g.pack for first in firsts]
            fields["slice"] = range(g.mask_word // g.pack)

        def lookup(values, shape):
            return lambda index: Array(Const(v, shape) for v in values)[index]
        return fields, {name: lookup(values, fields[name]) for name, values in tables.items()}

    def _activation_mask(self, m, stage, word):
        """The activation mask of a combo's pairs, from the mask word as it leaves the RAM,
        registered (zero on a padded tap): the word itself (no pack), the pack's slice of it
        (depthwise: one channel per filter), or the chunk's mask repeated for every filter of
        the pack (dense)."""
        g = self.geometry
        if g.pack == 1:
            mask_m = Signal.like(word)
            m.d.sync += mask_m.eq(Mux(stage.pad, 0, word))
            return mask_m
        if g.diagonal:
            mask_m = Signal(g.pack)
            part = word if g.mask_word == g.pack else word.word_select(stage.slice, g.pack)
            m.d.sync += mask_m.eq(Mux(stage.pad, 0, part))
            return mask_m
        mask_m = Signal(g.chunk)
        m.d.sync += mask_m.eq(Mux(stage.pad, 0, word))
        spare = g.pair_channels - g.chunk
        per_filter = Cat(mask_m, Const(0, spare)) if spare else mask_m
        return Cat(*[per_filter] * g.pack)

    def _elaborate_issuer(self, m, lane_index, lane, pair_fifo, pair_fifo_layout, weight_read,
                          act_read, tile_write, window):
        """One lane's issuer (a pair per cycle from its FIFO) and multiplier-accumulator:
        returns whether a pair issues this cycle, the pixels done, and whether the product
        being registered is an effective MAC."""
        g = self.geometry
        # --- issuer: one pair per cycle ----------------------------------------------------
        current = Signal(pair_fifo_layout)
        current_valid = Signal()
        remaining = Signal(g.mask_bits)
        # At most one pair remains: kept in a register beside `remaining`, so that whether the
        # FIFO is read this cycle waits for no count. It is counted on the pairs before the
        # issued one is taken away (at most two), so it waits for no priority encoder either.
        single = Signal(init=1)
        has_pair = current_valid & (remaining != 0)
        # The priority encoder: the lowest remaining pair, one-hot, and the positions below it.
        below_lowest, lowest = Signal(g.mask_bits), Signal(g.mask_bits)
        m.d.comb += [below_lowest.eq(~prefix_or(m, remaining)),
                     lowest.eq(remaining & (below_lowest << 1 | 1))]

        remaining_after = remaining & ~lowest
        entry_ends = ~current_valid | single

        next_entry = pair_fifo_layout(pair_fifo.r_data)
        single_after, single_next = at_most(m, remaining, 2), at_most(m, next_entry.pairs, 1)
        with m.If(has_pair):
            m.d.sync += [remaining.eq(remaining_after), single.eq(single_after)]
        with m.If(entry_ends):
            m.d.comb += pair_fifo.r_en.eq(1)
            m.d.sync += current_valid.eq(pair_fifo.r_rdy)
            with m.If(pair_fifo.r_rdy):
                m.d.sync += [current.eq(pair_fifo.r_data), remaining.eq(next_entry.pairs),
                             single.eq(single_next)]

        # The issued pair: its one-hot position and the entry's weights below it are
        # registered, its index (channel) and the counts of the weights' 4-bit groups the
        # cycle after, the counts' sum (the pair's weight offset) the cycle after that, and both
        # are added to the entry's bases the next, so that the priority encoder, the index and
        # the two halves of the prefix popcount, and the RAM addresses each have a cycle. In a
        # pack the pair's index is its filter in the pack (``sub``) and its channel: the same
        # bits (depthwise), or high and low bits (dense).
        fields = {"valid": 1, "pair": 1, "pad": 1, "last": 1, "filter": current.filter.shape(),
                  "slot": current.slot.shape()}
        if g.pack > 1:
            fields["sub"] = range(g.pack)
        if g.in_beat > 1:
            fields["select"] = range(g.in_beat)
        token_layout = data.StructLayout(fields)
        issued = Signal(data.StructLayout({
            "token": token_layout, "base": current.base.shape(), "below": g.mask_bits,
            "act_base": current.act_base.shape(), "lowest": g.mask_bits}))
        m.d.sync += [
            issued.token.valid.eq(current_valid & (has_pair | current.last)),
            issued.token.pair.eq(has_pair),
            issued.token.pad.eq(current.pad),
            issued.token.last.eq(current.last & single),  # the entry's last pair, or none
            issued.token.filter.eq(current.filter),
            issued.token.slot.eq(current.slot),
            issued.base.eq(current.base), issued.below.eq(current.weights & below_lowest),
            issued.act_base.eq(current.act_base), issued.lowest.eq(lowest),
        ]
        channel = _one_hot_index(issued.lowest)
        low_bits = max(g.pair_channels.bit_length() - 1, 0)
        if g.pack > 1:
            sub, channel = (channel, channel) if g.diagonal else \
                (channel[low_bits:], channel[:low_bits])
        # The weights' count over two cycles: each 4-bit group's count registered, then their
        # sum (in one cycle, a 32-bit count and its sum were the digits-shaped net's longest
        # path on the ECP5, however Yosys arranged the groups).
        passed = {"token": token_layout, "base": current.base.shape(),
                  "act_base": current.act_base.shape(), "channel": channel.shape()}
        counts = group_counts(issued.below)
        grouped = Signal(data.StructLayout({
            **passed, **{f"count_{i}": len(count) for i, count in enumerate(counts)}}))
        m.d.sync += [grouped.token.eq(issued.token), grouped.base.eq(issued.base),
                     grouped.act_base.eq(issued.act_base), grouped.channel.eq(channel),
                     *(grouped[f"count_{i}"].eq(count) for i, count in enumerate(counts)),
                     *([grouped.token.sub.eq(sub)] if g.pack > 1 else [])]
        counted = Signal(data.StructLayout({**passed, "offset": range(g.mask_bits + 1)}))
        m.d.sync += [counted.token.eq(grouped.token), counted.base.eq(grouped.base),
                     counted.act_base.eq(grouped.act_base), counted.channel.eq(grouped.channel),
                     counted.offset.eq(balanced_sum(grouped[f"count_{i}"]
                                                    for i in range(len(counts))))]
        return has_pair, *self._elaborate_mac(m, lane_index, lane, counted, weight_read,
                                              act_read, tile_write, window)

    def _elaborate_mac(self, m, lane_index, lane, issued, weight_read, act_read, tile_write,
                       window):
        """The multiplier-accumulator behind the issuer: returns the pixels done and whether
        the product being registered is an effective MAC."""
        g = self.geometry
        filters = len(lane.filters)
        if g.in_beat == 1:
            m.d.comb += [
                weight_read.addr.eq(issued.base + issued.offset),
                act_read.addr.eq(issued.act_base + issued.channel),
            ]
        else:
            # A line-buffer word holds an input beat: the pair's activation is an element of it.
            element = issued.act_base + issued.channel
            shift = g.in_beat.bit_length() - 1
            m.d.comb += [weight_read.addr.eq(issued.base + issued.offset),
                         act_read.addr.eq(element[shift:])]
        # Token for the MAC stage, a cycle behind while the ROM and line buffer answer.
        token = Signal(issued.token.shape())
        m.d.sync += token.eq(issued.token)
        if g.in_beat > 1:
            m.d.sync += token.select.eq(element[:shift])

        # --- MAC: operands and product registered, so that a RAM read, a multiply and an add
        # each have a cycle of their own ---------------------------------------------------
        # The weight and the activation word are registered as they leave their RAMs, then the
        # pair's activation (an element of the word where a beat holds several) is picked and
        # zeroed on a padded tap: a block RAM's 5.8 ns clock-to-out left no time for a route
        # across the part and a LUT after it (the DS-CNN's longest path on the ECP5-85F, 10.4 ns,
        # from a depthwise lane's line buffer).
        weight = Signal.like(weight_read.data)
        activation = Signal(activation_shape(self.in_act))
        operands = Signal.like(token)
        word, weight_0, token_0 = (Signal.like(act_read.data), Signal.like(weight),
                                   Signal.like(token))
        picked = word if g.in_beat == 1 else word[token_0.select]
        m.d.sync += [word.eq(act_read.data), weight_0.eq(weight_read.data), token_0.eq(token),
                     weight.eq(weight_0),
                     activation.eq(Mux(token_0.pad | ~token_0.pair, 0, picked)),
                     operands.eq(token_0)]
        # The multiply between registers of its own (a DSP block's own, on the ECP5:
        # :mod:`.dsp`): DSP blocks sit in a few rows, far from most lanes, and the routes to and
        # from one with the multiply in one cycle were a large design's longest path (13.5 ns
        # on an ECP5-85F).
        at_dsp = RegisteredProduct.of(m, weight, activation, name=f"dsp_product_{lane_index}")
        product = Signal((weight * activation).shape())
        tokens = [Signal.like(token, name=f"token_{stage}") for stage in ("factors", "at_dsp")]
        multiplied = Signal.like(token)
        m.d.sync += [tokens[0].eq(operands), tokens[1].eq(tokens[0]),
                     product.eq(at_dsp), multiplied.eq(tokens[1])]
        if g.pack == 1 and self.plan.block == 1:
            pixels_done = elaborate_accumulator(
                m, window, valid=multiplied.valid, last=multiplied.last, value=product,
                filter_index=multiplied.filter, slot=multiplied.slot, filters=filters,
                sum_shape=self.sum_shape, tile_write=tile_write)
        else:
            pixels_done = elaborate_block_accumulator(
                m, window, valid=multiplied.valid, last=multiplied.last, value=product,
                unit=multiplied.filter, sub=multiplied.sub if g.pack > 1 else None,
                slot=multiplied.slot, units=filters // g.pack, pack=g.pack,
                block=self.plan.block, sum_shape=self.sum_shape, tile_write=tile_write)
        effective = Signal()
        m.d.comb += effective.eq(operands.valid & operands.pair & ~operands.pad &
                                 (weight != 0) & (activation != 0))
        return pixels_done, effective

    def _elaborate_counters(self, m, issued, scanned, effective, waiting_for_rows, rows):
        g = self.geometry
        in_beats = g.in_channels * g.height * g.width
        out_beats = g.out_channels * g.out_pixels
        taken = self.i_stream.valid & self.i_stream.ready
        given = self.o_stream.valid & self.o_stream.ready
        in_count, _ = count_beats(m, taken, in_beats)
        _, last_out = count_beats(m, given, out_beats)
        # A stall is a cycle no multiplier works because rows are missing or the output is held.
        # Every term is registered, so the activity is counted a cycle late but as it was: the
        # issuers' decisions and a counter's enable in one cycle were a longest path. The
        # lanes' counts are likewise summed a cycle after they are registered (the skipped
        # pairs two), and added to the counters the cycle after that.
        issued_r = Signal(len(issued))
        begin, finish, waiting, in_valid, out_valid, out_ready = (Signal() for _ in range(6))
        scanned_r = [Signal.like(Value.cast(value), name=f"scanned_{index}")
                     for index, value in enumerate(scanned)]
        m.d.sync += [issued_r.eq(Cat(issued)), begin.eq(taken & (in_count == 0)),
                     finish.eq(given & last_out), waiting.eq(Cat(waiting_for_rows).any()),
                     in_valid.eq(self.i_stream.valid), out_valid.eq(self.o_stream.valid),
                     out_ready.eq(self.o_stream.ready),
                     *[held.eq(value) for held, value in zip(scanned_r, scanned)]]
        idle_multipliers = ~issued_r.any()
        count_activity(
            m, self.counters, begin=begin, finish=finish,
            starved=idle_multipliers & waiting & ~in_valid,
            blocked=idle_multipliers & out_valid & ~out_ready,
            max_inflight=rows + self.plan.slots + OUT_FIFO_DEPTH + 8)
        effective_sum = sum(effective)
        # The pairs credited and the pairs issued are counted in registers of their own before
        # their difference (Yosys merges ``issued_r`` with the lanes' own registers, so the
        # count starts at the lanes, and the count, the sum and the difference after the
        # route were the digits-shaped net's longest path).
        credited = Signal(Value.cast(sum(scanned_r)).shape())
        issued_count = Signal(range(len(issued) + 1))
        m.d.sync += [credited.eq(sum(scanned_r)), issued_count.eq(popcount(issued_r))]
        skipped_sum = credited - issued_count
        effective_delta = Signal(range(len(effective) + 1))
        skipped_delta = Signal(skipped_sum.shape())
        m.d.sync += [
            effective_delta.eq(effective_sum), skipped_delta.eq(skipped_sum),
            self.counters.effective_macs.eq(self.counters.effective_macs + effective_delta),
            self.counters.skipped_pairs.eq(self.counters.skipped_pairs + skipped_delta),
        ]
