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
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .. import ir
from .activity import count_activity, count_beats
from .common import activation_stream, counters_signature
from .conv import OUT_FIFO_DEPTH, TILE_SLOTS, _PixelCursor, _popcount, elaborate_collector
from .sparse_plan import plan as make_plan
from .sparse_plan import signed_width

__all__ = ["XnorConvEngine"]


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
    input rows are in. An output pixel's first value leaves about 9 cycles after
    its last entry (4 in the lane, 2 in the collector, 1 in the output FIFO, 2 in a thresholder
    or 4 in a requantizer); then one output per cycle.
    """

    def __init__(self, node, in_shape, in_act, *, width=32, lanes=1):
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
        self.node, self.in_shape, self.in_act = node, tuple(in_shape), in_act
        self.plan = make_plan(node, in_shape, in_act, lanes, True, width)
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
        rows = min(g.kernel[0] + g.stride[0] + 1, 2 ** 16)
        rows_written = Signal(32)
        collector_released = Signal(32)

        words = rows * g.width * g.groups * g.chunks
        m.submodules.line_buffer = line_buffer = Memory(shape=unsigned(g.chunk), depth=words,
                                                        init=[])
        oldest_needed = [Signal(32, name=f"oldest_needed_{i}")
                         for i in range(len(self.plan.lanes))]
        self._elaborate_writer(m, line_buffer, rows, rows_written, oldest_needed)

        lanes = [self._elaborate_lane(m, index, lane, line_buffer, rows, rows_written,
                                      collector_released, oldest_needed[index])
                 for index, lane in enumerate(self.plan.lanes)]
        elaborate_collector(m, self, self.acc_bounds, [lane["pixels_done"] for lane in lanes],
                            [(lane["tile_read"], lane["filters"]) for lane in lanes],
                            collector_released)
        self._elaborate_counters(m, lanes, rows)
        return m

    def _elaborate_writer(self, m, line_buffer, rows, rows_written, oldest_needed):
        """Input bits -> the line buffer, packed into words as they arrive."""
        g = self.geometry
        write = line_buffer.write_port()
        address = Signal(range(line_buffer.depth))
        channel_in_group = Signal(range(g.group_channels))
        bit = Signal(range(g.chunk))
        column = Signal(range(g.width))
        channel = Signal(range(g.in_channels))
        bits = Signal(g.chunk)

        oldest = oldest_needed[0]
        for candidate in oldest_needed[1:]:
            oldest = Mux(candidate < oldest, candidate, oldest)
        # A row slot may be overwritten once no lane needs the row it holds.
        m.d.comb += self.i_stream.ready.eq(rows_written < oldest + rows)

        word_done = (bit == g.chunk - 1) | (channel_in_group == g.group_channels - 1)
        word = bits | (self.i_stream.payload[0] << bit)
        m.d.comb += [write.addr.eq(address), write.data.eq(word)]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            with m.If(word_done):
                m.d.comb += write.en.eq(1)
                m.d.sync += [bits.eq(0), bit.eq(0),
                             address.eq(Mux(address == line_buffer.depth - 1, 0, address + 1))]
            with m.Else():
                m.d.sync += [bits.eq(word), bit.eq(bit + 1)]
            with m.If(channel_in_group == g.group_channels - 1):
                m.d.sync += channel_in_group.eq(0)
            with m.Else():
                m.d.sync += channel_in_group.eq(channel_in_group + 1)
            with m.If(channel == g.in_channels - 1):
                m.d.sync += channel.eq(0)
                with m.If(column == g.width - 1):
                    m.d.sync += [column.eq(0), rows_written.eq(rows_written + 1)]
                with m.Else():
                    m.d.sync += column.eq(column + 1)
            with m.Else():
                m.d.sync += channel.eq(channel + 1)

    def _elaborate_lane(self, m, index, lane, line_buffer, rows, rows_written,
                        collector_released, oldest_needed):
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
        group_of_filter = Array(Const(f // g.filters_per_group, range(max(g.groups, 2)))
                                for f in lane.filters)

        # --- scanner: one ROM entry per cycle, a new pixel once its rows are in -------------
        entry = Signal(range(max(len(entries), 2)))
        pixel_index = Signal(32)  # output pixels this lane has started, all inferences
        cursor = _PixelCursor(g, rows, f"scan_{index}")
        # Rows are released by pixels whose words have all been read, not by pixels scanned.
        retired = _PixelCursor(g, rows, f"retired_{index}")
        m.d.comb += oldest_needed.eq(retired.oldest_row())
        rows_needed = Signal(32)
        m.d.comb += rows_needed.eq(cursor.rows_needed())
        can_start = (rows_written >= rows_needed) & (pixel_index < collector_released + TILE_SLOTS)
        starting = (entry == 0) & can_start
        issue = Signal()
        m.d.comb += [issue.eq((entry != 0) | can_start), rom_read.addr.eq(entry)]
        waiting_for_rows = (entry == 0) & (rows_written < rows_needed)

        stage_b = Signal(data.StructLayout({
            "valid": 1, "slot": 1, "top": signed(32), "left": signed(32),
            "top_slot": range(rows)}))
        m.d.sync += stage_b.valid.eq(issue)
        with m.If(issue):
            m.d.sync += [stage_b.slot.eq(pixel_index[0]), stage_b.top.eq(cursor.top),
                         stage_b.left.eq(cursor.left), stage_b.top_slot.eq(cursor.top_slot)]
            with m.If(entry == len(entries) - 1):
                m.d.sync += [entry.eq(0), pixel_index.eq(pixel_index + 1)]
                cursor.advance(m)
            with m.Else():
                m.d.sync += entry.eq(entry + 1)

        # --- stage B: the entry is known; its line-buffer word is addressed ------------------
        entry_b = rom_read.data
        filter_index = Signal(range(max(filters, 2)))
        with m.If(stage_b.valid & entry_b.last):
            m.d.sync += filter_index.eq(Mux(filter_index == filters - 1, 0, filter_index + 1))
        row = stage_b.top + entry_b.tap_y
        column = stage_b.left + entry_b.tap_x
        pad = (row < 0) | (row >= g.height) | (column < 0) | (column >= g.width)
        slot_of_row = Signal(range(rows))
        m.d.comb += slot_of_row.eq(Mux(stage_b.top_slot + entry_b.tap_y >= rows,
                                       stage_b.top_slot + entry_b.tap_y - rows,
                                       stage_b.top_slot + entry_b.tap_y))
        ring_pixel = slot_of_row * g.width + column[:max(ceil_log2(g.width), 1)]
        m.d.comb += word_read.addr.eq(ring_pixel * words_per_pixel +
                                      group_of_filter[filter_index] * g.chunks + entry_b.word)
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

        # --- stage C: the activation word is here; matches minus mismatches ------------------
        agree = stage_c.mask & ~(stage_c.sign ^ word_read.data)
        value = (_popcount(agree) << 1) - stage_c.count
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
            stage_d.effective.eq(Mux(stage_c.valid & ~stage_c.pad, credit, 0)),
            stage_d.filter.eq(stage_c.filter), stage_d.slot.eq(stage_c.slot),
        ]

        # --- stage D: accumulate; a filter's last entry writes its sum to the tile -----------
        accumulator = Signal(self.sum_shape)
        total = Signal(self.sum_shape)
        pixels_done = Signal(32)
        m.d.comb += [total.eq(accumulator + stage_d.value),
                     tile_write.addr.eq(stage_d.slot * filters + stage_d.filter),
                     tile_write.data.eq(total)]
        with m.If(stage_d.valid):
            with m.If(stage_d.last):
                m.d.comb += tile_write.en.eq(1)
                m.d.sync += accumulator.eq(0)
                with m.If(stage_d.filter == filters - 1):
                    m.d.sync += pixels_done.eq(pixels_done + 1)
                    retired.advance(m)
            with m.Else():
                m.d.sync += accumulator.eq(total)

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
