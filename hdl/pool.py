"""Streaming max and average pooling, exactly as :func:`zeroskip.reference.maxpool2d` and
:func:`zeroskip.reference.avgpool2d`.

How a pool engine works
-----------------------
Max and sum are associative, so a window reduces *separably*: along its row first, then down its
column. The engine scans its input once in stream order (HWC) and keeps running partial results
instead of raw pixels:

* a *horizontal* partial per channel for every window open along the current row
  (a :class:`~amaranth.lib.memory.Memory` of ``channels`` rows);
* a *vertical* partial per output column and channel for every window open down the rows (a
  line buffer of ``out_width * channels`` rows), fed with each finished horizontal partial.

Windows that overlap (kernel larger than stride) are open at the same time; each is assigned a
*lane*, ``window index mod ceil(kernel / stride)``, and every lane has its own partial. Which
lanes each row and column starts, extends and closes is worked out here in Python and stored in
two small schedule ROMs, so the hardware only follows its scan position. A global average pool
is the one-lane case: one running sum per channel.

Padding: max pooling pads with the input's ``qmin``, which never wins a max, so a window that
begins in the left or top padding simply starts at the first pixel. A window that ends in the
right or bottom padding closes at a scan position beyond the input, which takes a cycle but no
input beat; this is the only time the scan is longer than the input.

Wide streams: with an input of ``W`` channels a beat, the scan steps over a pixel's channels
``W`` at a time, and every partial word holds ``W`` channels' partials, reduced side by side.
An output width other than the input's goes through a
:class:`~zeroskip.hdl.stream.StreamWidthConverter`.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zeroskip import ir
from zeroskip.errors import GraphError

from .activity import count_activity, count_beats
from .common import activation_shape, activation_stream, check_width, counters_signature
from .requant import Requantizer, wide_requantizer
from .stream import StreamRegister, StreamWidthConverter

__all__ = ["MaxPool2dEngine", "AvgPool2dEngine"]


class _AxisSchedule:
    """What each scan position along one axis (rows or columns) does to the windows.

    Attributes
    ----------
    out_size : int
        Windows along the axis.
    lanes : int
        Partials kept per channel: the most windows open at one position.
    positions : int
        Scan positions: the input's ``size``, or more when a window ends in the padding.
    layout : data.StructLayout
        One ROM row: ``start`` and ``active`` (a bit per lane: the position begins, or lies in,
        that lane's window), ``emit`` (a window ends here) with its ``emit_lane``, and ``pad``
        (the position lies beyond the input).
    init : list of dict
        The ROM contents, one row per position.
    """

    def __init__(self, size, kernel, stride, padding):
        self.out_size = (size + 2 * padding - kernel) // stride + 1
        self.lanes = min(math.ceil(kernel / stride), self.out_size)
        last_end = (self.out_size - 1) * stride - padding + kernel - 1
        self.positions = max(size, last_end + 1)
        self.layout = data.StructLayout({
            "start": unsigned(self.lanes),
            "active": unsigned(self.lanes),
            "emit": unsigned(1),
            "emit_lane": unsigned(ceil_log2(self.lanes)),
            "pad": unsigned(1),
        })
        self.init = [{"start": 0, "active": 0, "emit": 0, "emit_lane": 0, "pad": int(x >= size)}
                     for x in range(self.positions)]
        for window in range(self.out_size):
            lane = window % self.lanes
            first = max(window * stride - padding, 0)  # padding before the input never wins
            last = window * stride - padding + kernel - 1
            self.init[first]["start"] |= 1 << lane
            for x in range(first, last + 1):
                self.init[x]["active"] |= 1 << lane
            self.init[last].update(emit=1, emit_lane=lane)


def _wide(shape, width):
    """A word of ``width`` channels' ``shape`` (the shape itself for one)."""
    return shape if width == 1 else data.ArrayLayout(shape, width)


def _emitted(partials, lane, width):
    """The window results of a beat's channels: each channel's partial of ``lane``."""
    if width == 1:
        return partials[lane]
    return Cat(partials[index][lane] for index in range(width))


def _checked_shape(in_shape):
    if (not isinstance(in_shape, tuple) or len(in_shape) != 3 or
            not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1
                    for size in in_shape)):
        raise ValueError(f"in_shape must be (channels, height, width) of positive integers, "
                         f"got {in_shape!r}")
    return in_shape


class _PoolEngine(wiring.Component):
    """The scan, the schedules and the partials shared by both pools (see the module doc).

    Subclasses define the reduction (:meth:`_reduce`, :meth:`_partial_shapes`), the stage that
    takes the window results (:meth:`_output`), and the :attr:`latency` and ``_pipeline_depth``
    (beats held after stage 0) that follow from it.
    """

    def __init__(self, node, node_type, in_shape, in_act, in_width=1, out_width=1):
        if not isinstance(node, node_type):
            raise TypeError(f"node must be a zeroskip.ir.{node_type.__name__}, got "
                            f"{type(node).__name__}")
        if not isinstance(in_act, ir.Activation):
            raise TypeError(f"in_act must be a zeroskip.ir.Activation, got "
                            f"{type(in_act).__name__}")
        in_shape = _checked_shape(in_shape)
        try:
            out_shape, out_act = node.infer((in_shape,), (in_act,))
        except GraphError as error:
            raise ValueError(f"{node.op} does not fit an input of shape {in_shape}: "
                             f"{error}") from None
        self.in_shape, self.out_shape = in_shape, out_shape
        self._in_act, self._out_act = in_act, out_act
        self.in_width = check_width(in_width, in_shape[0], f"input of {in_shape[0]} channels")
        self.out_width = check_width(out_width, in_shape[0],
                                     f"output of {in_shape[0]} channels")
        self._kernel = node.kernel
        padding = getattr(node, "padding", (0, 0))
        self._rows = _AxisSchedule(in_shape[1], node.kernel[0], node.stride[0], padding[0])
        self._cols = _AxisSchedule(in_shape[2], node.kernel[1], node.stride[1], padding[1])
        super().__init__({
            "i_stream": In(activation_stream(in_act, in_width)),
            "o_stream": Out(activation_stream(out_act, out_width)),
            "counters": Out(counters_signature()),
        })

    @property
    def scan_cycles(self):
        """Cycles one inference takes at full rate: one per scan position (see the module doc)."""
        return self._rows.positions * self._cols.positions * self.in_shape[0] // self.in_width

    def _partial_shapes(self):
        """Shapes of the horizontal and the vertical partials."""
        raise NotImplementedError

    def _reduce(self, partial, value):
        raise NotImplementedError

    def _output(self, m, result, channel, emit, advance, sink):
        """Give ``result`` (of ``channel``) to the ``sink`` stream when ``emit & advance``;
        return the ready signal."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        width = self.in_width
        channels = self.in_shape[0] // width  # beats of a pixel
        rows, cols = self._rows, self._cols
        advance = Signal()  # the scan and stages 1 and 2 move on

        # Stage 0: the scan position (channel fastest, then column, then row) and its schedule.
        channel = Signal(range(channels))
        col = Signal(range(cols.positions))
        row = Signal(range(rows.positions))
        m.submodules.row_schedule = row_rom = Memory(
            shape=rows.layout, depth=rows.positions, init=rows.init)
        m.submodules.col_schedule = col_rom = Memory(
            shape=cols.layout, depth=cols.positions, init=cols.init)
        row_port = row_rom.read_port(domain="comb")
        col_port = col_rom.read_port(domain="comb")
        m.d.comb += [row_port.addr.eq(row), col_port.addr.eq(col)]
        row_at, col_at = row_port.data, col_port.data

        in_input = ~row_at.pad & ~col_at.pad
        taken = Signal()  # the scan leaves this position
        m.d.comb += [
            self.i_stream.ready.eq(advance & in_input),
            taken.eq(advance & (~in_input | self.i_stream.valid)),
        ]
        at_origin = (channel == 0) & (col == 0) & (row == 0)
        with m.If(taken):
            m.d.sync += channel.eq(channel + 1)
            with m.If(channel == channels - 1):
                m.d.sync += [channel.eq(0), col.eq(col + 1)]
                with m.If(col == cols.positions - 1):
                    m.d.sync += [col.eq(0), row.eq(row + 1)]
                    with m.If(row == rows.positions - 1):
                        m.d.sync += row.eq(0)

        # The vertical partials of a row are addressed in the order its windows end.
        line_depth = cols.out_size * channels
        line_addr = Signal(range(line_depth))
        with m.If(taken & col_at.emit):
            m.d.sync += line_addr.eq(Mux(line_addr == line_depth - 1, 0, line_addr + 1))

        h_shape, v_shape = self._partial_shapes()
        m.submodules.h_partials = h_mem = Memory(
            shape=_wide(data.ArrayLayout(h_shape, cols.lanes), width), depth=channels, init=[])
        m.submodules.v_partials = v_mem = Memory(
            shape=_wide(data.ArrayLayout(v_shape, rows.lanes), width), depth=line_depth,
            init=[])
        # A horizontal partial is read two stages before it is updated and written back, a
        # vertical one three: stages 1b and 3 forward the two and the three writes their reads
        # missed (:meth:`_updated`).
        h_write, v_write = h_mem.write_port(), v_mem.write_port()
        h_read, v_read = h_mem.read_port(), v_mem.read_port()

        # Stage 1: update the horizontal partials.
        valid_1 = Signal()
        value_1 = Signal(_wide(activation_shape(self._in_act), width))
        padding_value = self._in_act.qmin if width == 1 else \
            value_1.shape().const([self._in_act.qmin] * width)
        channel_1 = Signal.like(channel)
        line_addr_1 = Signal.like(line_addr)
        row_1 = Signal(rows.layout)
        col_1 = Signal(cols.layout)
        with m.If(advance):
            m.d.sync += [
                valid_1.eq(taken),
                value_1.eq(Mux(in_input, self.i_stream.payload, padding_value)),
                channel_1.eq(channel),
                line_addr_1.eq(line_addr),
                row_1.eq(row_at),
                col_1.eq(col_at),
            ]
        m.d.comb += [h_read.addr.eq(channel), h_read.en.eq(advance)]
        h_new, stage_1b = self._updated(
            m, "1b", advance, h_read.data, h_write, "channel", lambda stage: stage["valid"],
            lambda old, stage: self._update_all(m, old, stage["col"], stage["value"], h_shape),
            {"valid": valid_1, "value": value_1, "channel": channel_1,
             "line_addr": line_addr_1, "row": row_1, "col": col_1})
        valid_1b, col_1b = stage_1b["valid"], stage_1b["col"]
        # The vertical partial is read a stage earlier still and leaves the RAM into a register
        # of its own: the RAM's output, the forwarding and the update in one cycle were the
        # MobileNet's longest path on the ECP5-85F (12.3 ns).
        m.d.comb += [v_read.addr.eq(line_addr_1), v_read.en.eq(advance)]
        v_old = Signal.like(v_read.data)
        with m.If(advance):
            m.d.sync += v_old.eq(v_read.data)

        # Stage 2: a row's window finished along the row; its vertical partial read. (Both
        # updates in one stage were two comparisons in series, the engine's longest path.)
        valid_2 = Signal()
        h_result_2 = Signal(_wide(h_shape, width))
        channel_2 = Signal.like(channel)
        line_addr_2 = Signal.like(line_addr)
        row_2 = Signal(rows.layout)
        col_emit_2 = Signal()
        with m.If(advance):
            m.d.sync += [
                valid_2.eq(valid_1b),
                h_result_2.eq(_emitted(h_new, col_1b.emit_lane, width)),
                channel_2.eq(stage_1b["channel"]),
                line_addr_2.eq(stage_1b["line_addr"]),
                row_2.eq(stage_1b["row"]),
                col_emit_2.eq(col_1b.emit),
            ]

        # Stage 3: update the vertical partials with a row's window, finish a window.
        v_new, stage_3 = self._updated(
            m, "3", advance, v_old, v_write, "line_addr",
            lambda stage: stage["valid"] & stage["col_emit"],
            lambda old, stage: self._update_all(m, old, stage["row"], stage["h_result"],
                                                v_shape),
            {"valid": valid_2, "h_result": h_result_2, "channel": channel_2,
             "line_addr": line_addr_2, "row": row_2, "col_emit": col_emit_2}, missed=3)
        row_3 = stage_3["row"]
        emit_3 = stage_3["valid"] & stage_3["col_emit"] & row_3.emit
        if self.out_width == width:
            sink = wiring.flipped(self.o_stream)
        else:
            m.submodules.widths = widths = StreamWidthConverter(
                activation_shape(self._out_act), width, self.out_width)
            wiring.connect(m, widths.o_stream, wiring.flipped(self.o_stream))
            sink = widths.i_stream
        ready = self._output(m, _emitted(v_new, row_3.emit_lane, width), stage_3["channel"],
                             emit_3, advance, sink)
        m.d.comb += advance.eq(~emit_3 | ready)

        out_size = math.prod(self.out_shape) // self.out_width
        out_taken = self.o_stream.valid & self.o_stream.ready
        _, last_out = count_beats(m, out_taken, out_size)
        count_activity(
            m, self.counters,
            begin=taken & at_origin,
            finish=out_taken & last_out,
            starved=~at_origin & self.i_stream.ready & ~self.i_stream.valid,
            blocked=self.o_stream.valid & ~self.o_stream.ready,
            max_inflight=self._pipeline_depth + (1 if self.out_width == width else 4))
        return m

    def _updated(self, m, suffix, advance, read_data, write, address, writes, update, ahead,
                 missed=2):
        """Stage ``suffix``: it updates a partial read for it ahead of time (``read_data``, the
        stage before): registers of ``ahead``'s fields (the stage before, whose ``address``
        field was read), the old partial registered, ``update(old, stage)`` written back where
        ``writes(stage)``. Returns the updated partial and the stage's registers.

        A RAM's read, the update and the write back in one cycle were the MobileNet's longest
        paths on the ECP5-85F (15.8 ns, 15.4 ns). The ``missed`` positions ahead wrote after
        this one's read: their partials are taken instead when they wrote its address (the
        newest first)."""
        stage = {name: Signal.like(value, name=f"{name}_{suffix}")
                 for name, value in ahead.items()}
        old = Signal.like(read_data)
        new = Signal.like(read_data)
        wrote, addr = writes(stage), stage[address]
        # The writes of the positions ahead: this stage's, then those of the cycles before.
        history = [(wrote, addr, new)]
        for index in range(1, missed):
            earlier_write = (Signal(name=f"wrote_{suffix}_{index}"),
                             Signal.like(addr, name=f"addr_{suffix}_{index}"),
                             Signal.like(new, name=f"new_{suffix}_{index}"))
            with m.If(advance):
                m.d.sync += [mine.eq(theirs) for mine, theirs in zip(earlier_write, history[-1])]
            history.append(earlier_write)
        with m.If(advance):
            m.d.sync += [stage[name].eq(value) for name, value in ahead.items()]
            m.d.sync += old.eq(read_data)
            # The newest write last: Amaranth's last assignment wins.
            for wrote_then, addr_then, new_then in reversed(history):
                with m.If(wrote_then & (addr_then == ahead[address])):
                    m.d.sync += old.eq(new_then)
        m.d.comb += [new.eq(update(old, stage)), write.addr.eq(addr), write.data.eq(new),
                     write.en.eq(wrote & advance)]
        return new, stage

    def _update_all(self, m, old, schedule, value, shape):
        """:meth:`_update_lanes` of every channel of a beat."""
        if self.in_width == 1:
            return self._update_lanes(m, old, schedule, value, shape)
        new = Signal(old.shape())
        m.d.comb += [new[index].eq(self._update_lanes(m, old[index], schedule, value[index],
                                                      shape))
                     for index in range(self.in_width)]
        return new

    def _update_lanes(self, m, old, schedule, value, shape):
        """Each lane's partial after ``value``: restarted, extended, or kept as it was."""
        lanes = old.shape().length
        new = Signal(data.ArrayLayout(shape, lanes))
        for lane in range(lanes):
            with m.If(schedule.start[lane]):
                m.d.comb += new[lane].eq(value)
            with m.Elif(schedule.active[lane]):
                m.d.comb += new[lane].eq(self._reduce(old[lane], value))
            with m.Else():
                m.d.comb += new[lane].eq(old[lane])
        return new


class MaxPool2dEngine(_PoolEngine):
    """Max pooling over an HWC stream, as :func:`zeroskip.reference.maxpool2d`.

    Parameters
    ----------
    node : zeroskip.ir.MaxPool2d
        Kernel, stride and padding (padding with ``in_act.qmin``).
    in_shape : tuple of int
        ``(channels, height, width)`` of the input.
    in_act : zeroskip.ir.Activation
        Encoding of the input, which the output keeps.

    Members
    -------
    i_stream : ``In(activation_stream(in_act))``
        The input tensor, HWC, one activation per beat, inference after inference.
    o_stream : ``Out(activation_stream(in_act))``
        The output tensor ``out_shape``, HWC.
    counters : ``Out(counters_signature())``
        ``busy_cycles`` and ``stall_cycles``; ``effective_macs`` and ``skipped_pairs`` stay 0
        (a pool multiplies nothing).

    Latency and throughput
    ----------------------
    :attr:`latency` (5) cycles from the handshake of the last input beat a window needs to its
    result on ``o_stream`` (plus one cycle per padding position the scan passes first, for a
    window that ends in the right or bottom padding). One scan position per cycle:
    :attr:`scan_cycles` per inference, one input beat per cycle unless a window ends in the
    padding. ``i_stream.ready`` depends combinationally on ``o_stream.ready``.
    """

    latency = 5
    _pipeline_depth = 5  # stages 1, 1b, 2, 3 and the output register

    def __init__(self, node: ir.MaxPool2d, in_shape, in_act: ir.Activation, *, in_width=1,
                 out_width=1):
        super().__init__(node, ir.MaxPool2d, in_shape, in_act, in_width, out_width)

    def _partial_shapes(self):
        shape = activation_shape(self._in_act)
        return shape, shape

    def _reduce(self, partial, value):
        return Mux(value > partial, value, partial)

    def _output(self, m, result, channel, emit, advance, sink):
        ready = ~sink.valid | sink.ready
        with m.If(emit & advance):
            m.d.sync += [sink.valid.eq(1), sink.payload.eq(result)]
        with m.Elif(sink.ready):
            m.d.sync += sink.valid.eq(0)
        return ready


class AvgPool2dEngine(_PoolEngine):
    """Average pooling over an HWC stream, as :func:`zeroskip.reference.avgpool2d`: the exact
    window sum, requantized per channel by a :class:`~zeroskip.hdl.requant.Requantizer`.

    A kernel the size of the input is a global average pool: one running sum per channel.

    Parameters
    ----------
    node : zeroskip.ir.AvgPool2d
        Kernel, stride (no padding), requantization and output encoding.
    in_shape : tuple of int
        ``(channels, height, width)`` of the input.
    in_act : zeroskip.ir.Activation
        Encoding of the input.

    Members
    -------
    i_stream : ``In(activation_stream(in_act))``
        The input tensor, HWC, one activation per beat, inference after inference.
    o_stream : ``Out(activation_stream(node.act))``
        The output tensor ``out_shape``, HWC.
    counters : ``Out(counters_signature())``
        ``busy_cycles`` and ``stall_cycles``; ``effective_macs`` and ``skipped_pairs`` stay 0
        (window sums are additions; the requantizer's multiply is not a weight product).

    Latency and throughput
    ----------------------
    :attr:`latency` (14) cycles from the handshake of the last input beat of a window to its result
    on ``o_stream``: four to finish the sum, a register slice's one, then the requantizer's 9. One
    input beat per cycle (:attr:`scan_cycles` per inference is the input size).
    """

    latency = 4 + StreamRegister.latency + Requantizer.latency
    # The slice holds up to two sums (its skid register's too).
    _pipeline_depth = 4 + 2 + Requantizer.beats_held

    def __init__(self, node: ir.AvgPool2d, in_shape, in_act: ir.Activation, *, in_width=1,
                 out_width=1):
        super().__init__(node, ir.AvgPool2d, in_shape, in_act, in_width, out_width)
        self._requant = node.requant

    def _partial_shapes(self):
        kh, kw = self._kernel
        qmin, qmax = self._in_act.qmin, self._in_act.qmax
        return (Shape.cast(range(kw * qmin, kw * qmax + 1)),
                Shape.cast(range(kh * kw * qmin, kh * kw * qmax + 1)))

    def _reduce(self, partial, value):
        return partial + value

    def _output(self, m, result, channel, emit, advance, sink):
        _, v_shape = self._partial_shapes()
        m.submodules.requantizer = requantizer = wide_requantizer(
            self._requant, v_shape, self.in_shape[0], self._out_act, self.in_width)
        # The sum reaches the requantizer through a register slice: the vertical partial's
        # block-RAM read, its add and the requantizer's first stage in one cycle were the
        # MobileNet's longest path on the ECP5-85F (15.5 ns), and the slice's registered ready
        # keeps the requantizer's stall out of the scan's `advance`.
        m.submodules.result_slice = result_slice = StreamRegister(
            requantizer.i_stream.payload.shape())
        m.d.comb += [
            result_slice.i_stream.valid.eq(emit),
            result_slice.i_stream.p.acc.eq(result),
            result_slice.i_stream.p.channel.eq(channel),
        ]
        wiring.connect(m, result_slice.o_stream, requantizer.i_stream)
        wiring.connect(m, requantizer.o_stream, sink)
        return result_slice.i_stream.ready
