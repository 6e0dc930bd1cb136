"""The conv walkers: the groups of a conv step, and the entries each group replays.

:class:`GroupWalker` steps through a conv step's groups (8 consecutive output pixels each, see
:class:`~zeroskip.hdl.seq_plan.ConvStep`) and hands out one *descriptor* per group once the
filler has written every input row the group reads. It also tells the filler the oldest row
still read (``ring_start``): that of the oldest group whose entries have not all passed the line
buffer, or of the next group when none is in flight.

:class:`EntryWalker` (in :mod:`.seq_entries`) replays the weight stream for each descriptor.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .seq_memory import ram
from .seq_plan import ConvStep

__all__ = ["GroupWalker", "descriptor_layout", "group_walker_layout", "group_walker_settings"]

#: Groups handed out whose entries may still be on their way to the line buffer.
IN_FLIGHT = 2


def group_walker_layout(w):
    """Settings of one conv step for the :class:`GroupWalker`."""
    return data.StructLayout({
        "single": 1,                                   # one group (flat, or a 1x1 output)
        "row_mode": 1, "lanes_log": unsigned(2),
        "out_width": unsigned(w.coord_bits), "last_out_row": unsigned(w.coord_bits),
        "out_pixels": unsigned(w.pixel_bits),
        "row_jump": unsigned(2), "column_step": unsigned(w.coord_bits),  # lanes = jump*Wo+step
        "row_v": unsigned(w.v_bits), "jump_v": unsigned(w.v_bits),
        "stride_y": unsigned(4), "jump_y": unsigned(w.coord_bits),
        # Crossing rows, by whether the group before wrapped to a new row: the columns moved,
        # the jumps, and the columns left at or below which the next group wraps.
        "column_back": signed(w.coord_bits + 1),        # column_step - out_width
        "jump_v_wrap": unsigned(w.v_bits), "jump_y_wrap": unsigned(w.coord_bits),
        "wrap_at": signed(w.coord_bits + 2), "wrap_at_wrapped": signed(w.coord_bits + 2),
        "stride_y_log": unsigned(2), "pad_y": unsigned(w.coord_bits),
        "kernel_h_last": unsigned(w.coord_bits), "last_row": unsigned(w.coord_bits),
        "split_mask": unsigned(2), "class_shift": unsigned(2),
        "rowsel_start": unsigned(w.table_bits), "bounded": 1,
    })


def group_walker_settings(step: ConvStep):
    lanes = step.group_lanes
    jump, column = divmod(lanes, step.out_width) if not step.row_mode else (0, lanes)
    row_v = (step.stride[0] // step.split_y) * step.reduced_width
    return {
        "single": step.groups == 1, "row_mode": step.row_mode,
        "lanes_log": lanes.bit_length() - 1,
        "out_width": step.out_width, "last_out_row": step.out_height - 1,
        "out_pixels": step.out_pixels, "row_jump": jump, "column_step": column,
        "row_v": row_v, "jump_v": jump * row_v,
        "stride_y": step.stride[0], "jump_y": jump * step.stride[0],
        "column_back": column - step.out_width,
        "jump_v_wrap": (jump + 1) * row_v, "jump_y_wrap": (jump + 1) * step.stride[0],
        "wrap_at": 2 * column, "wrap_at_wrapped": 2 * column - step.out_width,
        "stride_y_log": max(step.stride[0].bit_length() - 1, 0) if not step.row_mode else 0,
        "pad_y": step.padding[0], "kernel_h_last": step.kernel[0] - 1,
        "last_row": (1 if step.flat else step.source.height) - 1,
        "split_mask": step.split_y - 1, "class_shift": step.class_shift,
        "rowsel_start": step.rowsel_start, "bounded": step.bounded,
    }


def descriptor_layout(w):
    """A group as the entry walker needs it."""
    return data.StructLayout({
        "base_v": unsigned(w.v_bits), "klass": unsigned(w.coord_bits),
        "out_y": unsigned(w.coord_bits), "rowsel": unsigned(16), "out_valid": unsigned(8),
        "ring_start": unsigned(w.coord_bits), "last": 1,
        "odd": 1,                        # the group's first output pixel is odd
    })


class GroupWalker(wiring.Component):
    """The groups of a conv step, in order.

    Members
    -------
    settings : In(group_walker_layout(w))
    start : In(1)
        One cycle: begin at group 0 (also starts the step's next chunk of filters over).
    rows_done : In(coord)
        Input rows the filler has written; a descriptor is offered once its group's rows are.
    group_done : In(1)
        One cycle per group whose last entry has read the line buffer, in order.
    ring_start : Out(coord)
        The oldest input row a group handed out or about to be reads.
    o_stream : Out(stream.Signature(descriptor_layout(w)))

    Parameters
    ----------
    w : Widths
    rowsels : sequence of int
        The row-offset table (:attr:`~zeroskip.hdl.seq_plan.Program.rowsels`).
    """

    def __init__(self, w, rowsels):
        self.w = w
        self.rowsels = [int(word) for word in rowsels] or [0]
        super().__init__({
            "settings": In(group_walker_layout(w)), "start": In(1),
            "rows_done": In(w.coord_bits), "group_done": In(1),
            "ring_start": Out(w.coord_bits),
            "o_stream": Out(stream.Signature(descriptor_layout(w))),
        })

    def elaborate(self, platform):
        m = Module()
        w, cfg = self.w, self.settings
        m.submodules.rowsels = rowsels = ram(unsigned(16), len(self.rowsels), self.rowsels)
        rowsel_read = rowsels.read_port()
        lanes = Signal(4)
        m.d.comb += lanes.eq(1 << cfg.lanes_log)

        # --- stage A: the group's coordinates (state), its table read ------------------------
        # What ends a row or the step is decided a group ahead, into flags, from down-counters
        # (columns and pixels left, rows left): the handshake then only gates registers.
        running = Signal()                     # groups left to hand out
        out_y, out_x = Signal(w.coord_bits), Signal(w.coord_bits)
        pixel = Signal(w.pixel_bits)           # first output pixel (cross mode)
        x_left = Signal(w.coord_bits + 1)      # out_width - out_x
        y_left = Signal(w.coord_bits)          # last_out_row - out_y
        p_left = Signal(w.pixel_bits + 1)      # out_pixels - pixel
        row_end, last_group = Signal(), Signal()   # of the group at (out_y, out_x) / pixel
        # The comparisons those flags take, as signs of counters moved beside x_left / p_left
        # (below zero: at or under the bound), and y_left's two values of note as flags.
        ends_left = Signal(signed(max(w.coord_bits, 5) + 2))     # x_left - 2 * lanes - 1
        ends_row = Signal.like(ends_left)                      # its value at a row's start
        last_left = Signal(signed(max(w.pixel_bits, 5) + 2))   # p_left - 2 * lanes - 1
        wrap_left = Signal(signed(w.coord_bits + 3))           # x_left - wrap_at - 1
        wrapped_left = Signal(signed(w.coord_bits + 3))        # x_left - wrap_at_wrapped - 1
        y_last, y_next_last = Signal(), Signal()               # y_left == 0, y_left == 1
        narrow = Signal()                      # a row is one group (row mode)
        wrap = Signal()                        # the next group is on a new row (cross mode)
        row_v = Signal(w.v_bits)               # out_y * row_v
        top = Signal(signed(w.coord_bits + 2)) # out_y * stride_y - pad_y
        klass = Signal(w.coord_bits)
        m.d.comb += klass.eq(out_x >> cfg.class_shift)
        a_layout = data.StructLayout({"valid": 1, "base_v": unsigned(w.v_bits),
                                      "klass": unsigned(w.coord_bits),
                                      "out_y": unsigned(w.coord_bits),
                                      "top": signed(w.coord_bits + 2),
                                      "remaining": unsigned(w.pixel_bits), "last": 1,
                                      "odd": 1})
        a = Signal(a_layout)
        b = Signal(descriptor_layout(w))
        b_newest, b_full = Signal(signed(w.coord_bits + 3)), Signal()
        advance_b = ~b_full | (self.o_stream.valid & self.o_stream.ready)
        # Stage A moves while it or B is empty: registers only, not the handshake, so that its
        # many enables do not wait on the entry walker. When B takes A's group and A does not
        # move, A empties (a group takes at least two cycles to be offered anyway).
        advance_a = ~a.valid | ~b_full

        remaining = Mux(cfg.row_mode, x_left, p_left)
        m.d.comb += [rowsel_read.addr.eq(cfg.rowsel_start + klass),
                     rowsel_read.en.eq(advance_a)]
        with m.If(advance_a):
            m.d.sync += [a.valid.eq(running), a.base_v.eq(row_v + out_x), a.klass.eq(klass),
                         a.out_y.eq(out_y), a.top.eq(top), a.remaining.eq(remaining),
                         a.last.eq(last_group),
                         a.odd.eq(Mux(cfg.row_mode,
                                      out_x[0] ^ (out_y[0] & cfg.out_width[0]), pixel[0]))]
            with m.If(running):
                with m.If(last_group):
                    m.d.sync += running.eq(0)
                with m.Elif(cfg.row_mode):
                    with m.If(row_end):
                        m.d.sync += [out_x.eq(0), x_left.eq(cfg.out_width),
                                     ends_left.eq(ends_row),
                                     out_y.eq(out_y + 1), y_left.eq(y_left - 1),
                                     y_last.eq(y_next_last), y_next_last.eq(y_left == 2),
                                     row_v.eq(row_v + cfg.row_v), top.eq(top + cfg.stride_y),
                                     row_end.eq(narrow),
                                     last_group.eq(narrow & y_next_last)]
                    with m.Else():
                        # The next group ends the row when at most two groups' columns are left.
                        ends = ends_left[-1]
                        m.d.sync += [out_x.eq(out_x + lanes), x_left.eq(x_left - lanes),
                                     ends_left.eq(ends_left - lanes),
                                     row_end.eq(ends), last_group.eq(ends & y_last)]
                with m.Else():
                    # Crossing rows: lanes = row_jump rows and column_step columns further,
                    # one row more when the columns wrap (decided a group ahead).
                    moved = Mux(wrap, cfg.column_back, cfg.column_step)
                    m.d.sync += [pixel.eq(pixel + lanes), p_left.eq(p_left - lanes),
                                 last_left.eq(last_left - lanes),
                                 last_group.eq(last_left[-1]),
                                 out_x.eq(out_x + moved), x_left.eq(x_left - moved),
                                 wrap_left.eq(wrap_left - moved),
                                 wrapped_left.eq(wrapped_left - moved),
                                 wrap.eq(Mux(wrap, wrapped_left[-1], wrap_left[-1])),
                                 out_y.eq(out_y + cfg.row_jump + wrap),
                                 row_v.eq(row_v + Mux(wrap, cfg.jump_v_wrap, cfg.jump_v)),
                                 top.eq(top + Mux(wrap, cfg.jump_y_wrap, cfg.jump_y))]

        with m.Elif(advance_b):
            m.d.sync += a.valid.eq(0)

        # --- stage B: the descriptor, offered once its rows are in ---------------------------
        rowsel = Mux(cfg.bounded, rowsel_read.data, 0)
        last_lane_rows, last_lane = Signal(2), Signal(3)
        m.d.comb += [last_lane.eq(lanes - 1),
                     last_lane_rows.eq(rowsel.word_select(last_lane, 2))]
        count = Signal(range(9))               # at most 8 lanes: a mask of 8 bits, not 2 ** width
        m.d.comb += count.eq(Mux(a.remaining < lanes, a.remaining, lanes))
        oldest = Signal(w.coord_bits)
        m.d.comb += oldest.eq(Mux(a.top < 0, 0, a.top))
        with m.If(advance_b):
            m.d.sync += [b_full.eq(a.valid), b.base_v.eq(a.base_v), b.klass.eq(a.klass),
                         b.out_y.eq(a.out_y), b.rowsel.eq(rowsel),
                         b.out_valid.eq((1 << count) - 1), b.last.eq(a.last),
                         b.odd.eq(a.odd),
                         b.ring_start.eq(oldest - (oldest & cfg.split_mask)),
                         b_newest.eq(a.top + (last_lane_rows << cfg.stride_y_log)
                                     + cfg.kernel_h_last)]
        offer, in_flight = self._in_flight(m, b, b_full, b_newest)

        with m.If(self.start):
            narrow_now = cfg.out_width <= lanes
            width_ends = cfg.out_width - (lanes << 1) - 1
            m.d.sync += [offer.eq(0), running.eq(1), out_x.eq(0), out_y.eq(0), pixel.eq(0),
                         row_v.eq(0),
                         x_left.eq(cfg.out_width), y_left.eq(cfg.last_out_row),
                         p_left.eq(cfg.out_pixels), narrow.eq(narrow_now), wrap.eq(0),
                         ends_left.eq(width_ends), ends_row.eq(width_ends),
                         last_left.eq(cfg.out_pixels - (lanes << 1) - 1),
                         wrap_left.eq(cfg.out_width - cfg.wrap_at - 1),
                         wrapped_left.eq(cfg.out_width - cfg.wrap_at_wrapped - 1),
                         y_last.eq(cfg.last_out_row == 0), y_next_last.eq(cfg.last_out_row == 1),
                         row_end.eq(cfg.row_mode & narrow_now),
                         last_group.eq(cfg.single | Mux(cfg.row_mode,
                                                        narrow_now & (cfg.last_out_row == 0),
                                                        cfg.out_pixels <= lanes)),
                         top.eq(-cfg.pad_y), a.valid.eq(0), b_full.eq(0), in_flight.eq(0)]
        return m

    def _in_flight(self, m, b, b_full, b_newest):
        """The offer of stage B's group and the groups in flight (``(offer, in_flight)``)."""
        w, cfg = self.w, self.settings
        # --- groups in flight: their ring starts, oldest first ---------------------------------
        # The offer is a register: set for the next cycle when B holds a group that is not taken
        # now, whose rows are in (its newest row, or every row of the source), and for which
        # there will be room among the groups in flight; so the handshake starts at registers.
        in_flight = Signal(range(IN_FLIGHT + 1))
        ring = [Signal(w.coord_bits, name=f"ring_{i}") for i in range(IN_FLIGHT)]
        offer = Signal()
        m.d.comb += [self.o_stream.payload.eq(b), self.o_stream.valid.eq(offer),
                     self.ring_start.eq(Mux(in_flight != 0, ring[0], b.ring_start))]
        rows_in = (b_newest < self.rows_done) | (self.rows_done > cfg.last_row)
        handed = self.o_stream.valid & self.o_stream.ready
        next_in_flight = Signal(range(-1, IN_FLIGHT + 2))
        m.d.comb += next_in_flight.eq(in_flight + handed - self.group_done)
        m.d.sync += offer.eq(b_full & ~handed & rows_in & (next_in_flight < IN_FLIGHT))
        with m.If(handed & ~self.group_done):
            m.d.sync += in_flight.eq(in_flight + 1)
            for i in range(IN_FLIGHT):
                with m.If(in_flight == i):
                    m.d.sync += ring[i].eq(b.ring_start)
        with m.Elif(self.group_done & ~handed):
            m.d.sync += [in_flight.eq(in_flight - 1)]
            m.d.sync += [ring[i].eq(ring[i + 1]) for i in range(IN_FLIGHT - 1)]
        with m.Elif(self.group_done & handed):
            # One leaves, one comes: the newcomer lands behind the ones that stay.
            m.d.sync += [ring[i].eq(ring[i + 1]) for i in range(IN_FLIGHT - 1)]
            for i in range(1, IN_FLIGHT + 1):
                with m.If(in_flight == i):
                    m.d.sync += ring[i - 1].eq(b.ring_start)
        return offer, in_flight
