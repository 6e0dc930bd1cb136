"""The XNOR-popcount engine: conv2d / linear layers whose input is binary, ``width`` bits a cycle.

A binary activation travels as one bit (1 means +1, 0 means -1, :mod:`.common`). For ternary or
binary weights (``weight_bits == 2``: -1, 0, +1) and a word of up to ``width`` input channels
under one kernel tap, with ``m`` the filter's nonzero-weight mask, ``s`` its sign bits (1 means
+1) and ``x`` the activation bits, the sum of products is::

    matches - mismatches = 2 * popcount(m & ~(s ^ x)) - popcount(m)

Wider weights go sign-magnitude, one magnitude bit-plane ``b`` at a time: ``m`` is then the mask
of the weights whose magnitude has bit ``b`` set, and the word's sum is shifted left by ``b``.
Every plane with a set bit costs one cycle, so ternary layers need one pass and int8 weights up
to seven.

Dataflow (per lane, one popcount unit each)::

    i_stream -> writer -> line buffer: per pixel, the bits packed into width-bit words
                                   |
    scanner:  walks the lane's entry ROM for one output pixel at a time: one entry per
              (filter, tap, word, plane) holding a nonzero weight, so ternary zeros cost nothing
                                   |  (the entry addresses the line buffer word under its tap)
    popcount: (2 * popcount(m & ~(s ^ x)) - popcount(m)) << plane; a padded tap gives 0
                                   |
    accumulator: at a filter's last entry the sum goes to the double-buffered output tile
                                   |
    collector: when every lane has finished a pixel, its sums in channel order go through a
               threshold compare (binary output) or bias + requantizer (integer output)

A linear layer is a 1x1 convolution of a 1x1 image whose channels are the features.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import ir
from .activity import count_activity, count_beats
from .common import activation_stream, counters_signature
from .arith import balanced_sum, popcount, times
from .conv import OUT_FIFO_DEPTH, elaborate_collector
from .sparse_plan import plan as make_plan
from .sparse_plan import signed_width
from .window import (PIXEL_COUNTER_WIDTH, TILE_SLOTS, LaneWindow, WriteProgress,
                     elaborate_accumulator, elaborate_filter_counter, elaborate_packer, group_of,
                     replicated_memory, ring_rows, row_counter_width)

__all__ = ["XNOR_WIDTH", "XnorConvEngine"]

#: Input bits a lane reads per cycle (its line-buffer word and popcount width), by default.
XNOR_WIDTH = 32


class XnorConvEngine(wiring.Component):
    """Conv2d or Linear on a binary input: ``width`` products per cycle per lane, zero weights
    skipped a word at a time.

    Parameters
    ----------
    node : zeroskip.ir.Conv2d or zeroskip.ir.Linear
        With a ``threshold`` (binary output) or a ``requant`` (integer output). Ternary or
        binary weights (``weight_bits == 2``) take one pass; wider ones a pass per magnitude
        bit-plane holding a nonzero bit.
    in_shape : tuple
        ``(C, H, W)`` for a conv, ``(features,)`` for a linear layer.
    in_act : zeroskip.ir.Activation
        Encoding of the input stream; must be binary (``bits == 1``).
    width : int
        Bits per line-buffer word and per popcount, 1 to 64: the products a lane does per cycle
        (capped at the channels of a group, the most one word of a tap can hold).
    lanes : int
        Popcount units, 1 to the number of output channels; filters are spread over them by
        nonzero count.
    plan : zeroskip.hdl.sparse_plan.SparsePlan, optional
        The plan of these arguments (``zero_skip`` and a chunk of ``width``), when the compiler
        has made it already; made here if not.

    Members
    -------
    i_stream : In(stream.Signature(unsigned(1)))
        Input activations, HWC order, one bit per beat (1 = +1, 0 = -1).
    o_stream : Out(stream.Signature(activation))
        Output activations, HWC order: bits after a threshold, integers after a requant.
    counters : Out(counters signature)
        ``busy_cycles``, ``effective_macs`` (products with a nonzero weight at an unpadded tap),
        ``skipped_pairs`` (dense products minus effective ones), ``stall_cycles`` since reset.

    Latency and throughput
    ----------------------
    A lane spends one cycle per entry of its ROM (:attr:`cycles_per_pixel`: the busiest lane's)
    per output pixel: the sum over its filters of the (tap, word, plane) triples holding a
    nonzero weight bit, ``taps * ceil(C / groups / width)`` per filter for dense binary
    weights. A new pixel starts the cycle after the last entry of the previous one when its
    input rows are in. An output pixel's first value leaves about a dozen cycles after its last
    entry (6 in the lane, 3 in the collector, 1 in the output FIFO, 2 in a thresholder or 5 in a
    requantizer); then one output per cycle.
    """

    def __init__(self, node, in_shape, in_act, *, width=XNOR_WIDTH, lanes=1, plan=None):
        if not isinstance(node, (ir.Conv2d, ir.Linear)):
            raise TypeError(f"XnorConvEngine takes a Conv2d or Linear node, not "
                            f"{type(node).__name__}")
        if not isinstance(in_act, ir.Activation):
            raise TypeError("in_act must be a zeroskip.ir.Activation")
        if in_act.bits != 1:
            raise ValueError(f"XnorConvEngine needs a binary input, got {in_act.bits}-bit "
                             f"activations for {node.name!r}")
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 64:
            raise ValueError(f"width must be an integer from 1 to 64, got {width!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool):
            raise ValueError(f"lanes must be an integer, got {lanes!r}")
        if not 1 <= lanes <= node.weight.shape[0]:
            # One filter or more a lane: the popcount units do not cut filters.
            raise ValueError(f"lanes must be between 1 and the {node.weight.shape[0]} output "
                             f"channels of {node.name!r}, got {lanes}")
        self.node, self.in_shape, self.in_act = node, tuple(in_shape), in_act
        self.plan = make_plan(node, in_shape, in_act, lanes, True, width) if plan is None \
            else plan
        self.geometry = g = self.plan.geometry
        self.planes = node.weight_bits - 1
        self.entries = [self._entries(lane) for lane in self.plan.lanes]
        # x is +-1, so a filter's sum lies within +-(the sum of its weights' magnitudes).
        magnitude = int(np.abs(g.as_weight4d(node.weight).astype(np.int64)).sum(axis=(1, 2, 3))
                        .max())
        self.acc_bounds = (-magnitude, magnitude)
        self.sum_shape = signed(signed_width(*self.acc_bounds))
        super().__init__({
            "i_stream": In(activation_stream(in_act)),
            "o_stream": Out(activation_stream(node.act)),
            "counters": Out(counters_signature()),
        })

    @property
    def cycles_per_pixel(self):
        """Cycles the busiest lane spends on one output pixel (its ROM entries)."""
        return max(len(entries) for entries in self.entries)

    def _entry_layout(self):
        g = self.geometry
        fields = {
            "mask": unsigned(g.chunk), "sign": unsigned(g.chunk), "count": range(g.chunk + 1),
            "tap_y": range(max(g.kernel[0], 2)), "tap_x": range(max(g.kernel[1], 2)),
            "word": range(max(g.chunks, 2)), "last": 1}
        if self.planes > 1:
            # The plane's shift, and the word's nonzero weights (counted once, on its first
            # plane); with one plane the credit is the count.
            fields.update(shift=range(self.planes), credit=range(g.chunk + 1))
        return data.StructLayout(fields)

    def _entries(self, lane):
        """The lane's ROM contents: the plan's combos split into bit-planes, with the sign bits
        of their weights."""
        values = iter(lane.weights)
        entries = []
        for mask, (tap_y, tap_x, word), last in zip(lane.masks, lane.taps, lane.last):
            bits = [i for i in range(self.geometry.chunk) if int(mask) >> i & 1]
            weights = dict(zip(bits, (int(next(values)) for _ in bits)))
            common = {"sign": sum(1 << i for i, w in weights.items() if w > 0),
                      "tap_y": int(tap_y), "tap_x": int(tap_x), "word": int(word),
                      "last": False}
            planes = [{**common, "mask": plane_mask, "count": bin(plane_mask).count("1"),
                       "shift": plane, "credit": 0}
                      for plane in range(self.planes)
                      for plane_mask in [sum(1 << i for i, w in weights.items()
                                             if abs(w) >> plane & 1)] if plane_mask]
            # An all-zero filter keeps the plan's empty entry, so that it still outputs.
            planes = planes or [{**common, "mask": 0, "count": 0, "shift": 0, "credit": 0}]
            planes[0]["credit"] = len(bits)
            planes[-1]["last"] = bool(last)
            if self.planes == 1:
                for entry in planes:
                    del entry["shift"], entry["credit"]
            entries.extend(planes)
        return entries

    # --- elaboration -------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        rows = ring_rows(g, g.width * g.groups * g.chunks)
        row_width = row_counter_width(g, rows)
        written = WriteProgress.create(g, row_width)
        collector_released = Signal(PIXEL_COUNTER_WIDTH)

        words = rows * g.width * g.groups * g.chunks
        # A copy per lane (window.replicated_memory), written together.
        line_write, line_buffers = replicated_memory(m, "line_buffer", unsigned(g.chunk), words,
                                                     len(self.plan.lanes))
        windows = [LaneWindow(m, g, rows, row_width, written, collector_released,
                              f"lane_{index}") for index in range(len(self.plan.lanes))]
        # Input bits -> the line buffer, packed into words as they arrive.
        elaborate_packer(m, self, self.i_stream, rows, written, windows, self.i_stream.payload[0],
                         line_write)

        lanes = [self._elaborate_lane(m, index, lane, line_buffers[index], windows[index])
                 for index, lane in enumerate(self.plan.lanes)]
        elaborate_collector(m, self, self.acc_bounds, [lane["pixels_done"] for lane in lanes],
                            [(lane["tile_read"], lane["filters"]) for lane in lanes],
                            collector_released)
        self._elaborate_counters(m, lanes, rows)
        return m

    def _elaborate_lane(self, m, index, lane, line_buffer, window):
        """Scanner, popcount and accumulator of one lane; returns what the others need."""
        g = self.geometry
        filters = len(lane.filters)
        words_per_pixel = g.groups * g.chunks
        layout = self._entry_layout()
        entries = self.entries[index]
        rom = Memory(shape=layout, depth=len(entries), init=entries)
        tile = Memory(shape=self.sum_shape, depth=TILE_SLOTS * filters, init=[])
        m.submodules[f"entry_rom_{index}"] = rom
        m.submodules[f"tile_{index}"] = tile
        rom_read = rom.read_port()
        word_read = line_buffer.read_port()
        tile_write = tile.write_port()
        tile_read = tile.read_port()
        # --- scanner: one ROM entry per cycle, a new pixel once its rows are in -------------
        # Rows are released by pixels whose words have all been read (the window's retired
        # cursor), not by pixels scanned.
        entry = Signal(range(max(len(entries), 2)))
        midway = Signal()  # entry != 0, in a register: it decides every cycle's issue
        starting = ~midway & window.can_start
        issue = Signal()
        m.d.comb += [issue.eq(midway | window.can_start), rom_read.addr.eq(entry)]
        waiting_for_rows = ~midway & ~window.rows_ready

        stage_b = Signal(data.StructLayout({"valid": 1, **window.origin_layout()}))
        m.d.sync += stage_b.valid.eq(issue)
        with m.If(issue):
            m.d.sync += window.origin(stage_b)
            with m.If(entry == len(entries) - 1):
                m.d.sync += [entry.eq(0), midway.eq(0)]
                window.next_pixel(m)
            with m.Else():
                m.d.sync += [entry.eq(entry + 1), midway.eq(1)]

        # --- stage B: the entry is known; its line-buffer word is addressed ------------------
        entry_b = rom_read.data
        filter_index = elaborate_filter_counter(m, filters, stage_b.valid & entry_b.last)
        pad, ring_pixel = window.locate(m, stage_b, entry_b.tap_y, entry_b.tap_x)
        m.d.comb += word_read.addr.eq(times(ring_pixel, words_per_pixel) +
                                      times(group_of(g, lane.filters, filter_index), g.chunks) +
                                      entry_b.word)
        stage_c_fields = {
            "valid": 1, "pad": 1, "last": 1, "mask": unsigned(g.chunk),
            "sign": unsigned(g.chunk), "count": range(g.chunk + 1),
            "filter": range(max(filters, 2)), "slot": 1}
        if self.planes > 1:
            stage_c_fields["shift"] = range(self.planes)
        stage_c = Signal(data.StructLayout(stage_c_fields))
        credit = Signal(range(g.chunk + 1))
        if self.planes > 1:
            m.d.sync += [stage_c.shift.eq(entry_b.shift), credit.eq(entry_b.credit)]
        else:
            m.d.comb += credit.eq(stage_c.count)
        m.d.sync += [stage_c.valid.eq(stage_b.valid), stage_c.pad.eq(pad),
                     stage_c.last.eq(entry_b.last), stage_c.mask.eq(entry_b.mask),
                     stage_c.sign.eq(entry_b.sign), stage_c.count.eq(entry_b.count),
                     stage_c.filter.eq(filter_index), stage_c.slot.eq(stage_b.slot)]

        # --- stage C: the activation word is here; the bits that agree are registered (the
        # RAM's output and the popcount in one cycle were the engine's longest path) ----------
        carried = {name: shape for name, shape in stage_c_fields.items()
                   if name not in ("mask", "sign")}
        carried["credit"] = range(g.chunk + 1)
        stage_c1 = Signal(data.StructLayout({**carried, "agree": unsigned(g.chunk)}))
        m.d.sync += [stage_c1[name].eq(stage_c[name]) for name in carried if name != "credit"]
        m.d.sync += [stage_c1.credit.eq(credit),
                     stage_c1.agree.eq(stage_c.mask & ~(stage_c.sign ^ word_read.data))]

        # --- stage C1: the agreeing bits are counted a byte at a time and registered, so that
        # the popcount is split over two cycles ----------------------------------------------
        stage_c2 = Signal(data.StructLayout(carried))
        byte_counts = [Signal(range(9), name=f"agree_{index}_{low}")
                       for low in range(0, g.chunk, 8)]
        m.d.sync += [stage_c2[name].eq(stage_c1[name]) for name in carried]
        m.d.sync += [count.eq(popcount(stage_c1.agree[low:low + 8]))
                     for count, low in zip(byte_counts, range(0, g.chunk, 8))]
        stage_c = stage_c2

        # --- stage C2: matches minus mismatches -----------------------------------------------
        value = (balanced_sum(byte_counts) << 1) - stage_c.count
        if self.planes > 1:
            value = value << stage_c.shift
        stage_d = Signal(data.StructLayout({
            "valid": 1, "last": 1,
            "value": signed(signed_width(-g.chunk << (self.planes - 1),
                                         g.chunk << (self.planes - 1))),
            "effective": range(g.chunk + 1), "filter": range(max(filters, 2)), "slot": 1}))
        m.d.sync += [
            stage_d.valid.eq(stage_c.valid), stage_d.last.eq(stage_c.last),
            # A padded tap contributes 0 and no product.
            stage_d.value.eq(Mux(stage_c.pad, 0, value)),
            stage_d.effective.eq(Mux(stage_c.valid & ~stage_c.pad, stage_c.credit, 0)),
            stage_d.filter.eq(stage_c.filter), stage_d.slot.eq(stage_c.slot),
        ]

        # --- stage D: accumulate; a filter's last entry writes its sum to the tile -----------
        pixels_done = elaborate_accumulator(
            m, window, valid=stage_d.valid, last=stage_d.last, value=stage_d.value,
            filter_index=stage_d.filter, slot=stage_d.slot, filters=filters,
            sum_shape=self.sum_shape, tile_write=tile_write)

        dense_pairs = filters * g.taps * g.group_channels
        return {"pixels_done": pixels_done, "issue": issue,
                "scanned": Mux(starting, dense_pairs, 0), "effective": stage_d.effective,
                "waiting_for_rows": waiting_for_rows, "tile_read": tile_read, "filters": filters}

    def _elaborate_counters(self, m, lanes, rows):
        g = self.geometry
        taken = self.i_stream.valid & self.i_stream.ready
        given = self.o_stream.valid & self.o_stream.ready
        in_count, _ = count_beats(m, taken, g.in_channels * g.height * g.width)
        _, last_out = count_beats(m, given, g.out_channels * g.out_pixels)
        # A stall is a cycle no popcount unit works because rows are missing or the output is
        # held.
        idle = ~Cat(lane["issue"] for lane in lanes).any()
        count_activity(
            m, self.counters, begin=taken & (in_count == 0), finish=given & last_out,
            starved=idle & Cat(lane["waiting_for_rows"] for lane in lanes).any() &
            ~self.i_stream.valid,
            blocked=idle & self.o_stream.valid & ~self.o_stream.ready,
            max_inflight=rows + TILE_SLOTS + OUT_FIFO_DEPTH + 8)
        effective = sum(lane["effective"] for lane in lanes)
        scanned = sum(lane["scanned"] for lane in lanes)
        m.d.sync += [
            self.counters.effective_macs.eq(self.counters.effective_macs + effective),
            self.counters.skipped_pairs.eq(self.counters.skipped_pairs + scanned - effective),
        ]
