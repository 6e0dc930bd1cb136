"""The filler: copies the input rows a conv step reads from a memory block into the line buffer.

For each input row, source and channel in turn, it reads the row's 16-bit words (two pixels of
one channel each, :func:`~zeroskip.hdl.seq_plan.byte_address`) and writes each pixel's byte to
line-buffer bank ``v % 8`` (:class:`~zeroskip.hdl.seq_plan.ConvStep`): one word a cycle, two
bytes to two banks; a word whose two bytes fall in the same bank takes two cycles. A row is
started only while it is fewer than ``rows_cap`` rows past ``ring_start`` (the oldest row the
group being computed reads), so the ring never overwrites a row still read.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .seq_memory import line_write_signature
from .seq_plan import BANKS, ConvStep

__all__ = ["Filler", "filler_layout", "filler_settings"]


def filler_layout(limits):
    """Settings of one step (constant while it runs); ``limits`` holds the widths."""
    w = limits
    return data.StructLayout({
        "two": 1,                                         # two sources (an add)
        "block": data.ArrayLayout(unsigned(w.block_bits), 2),
        "word": data.ArrayLayout(unsigned(w.word_bits), 2),
        "last_channel": unsigned(w.channel_bits), "channel_words": unsigned(w.word_bits),
        "block_jump": unsigned(w.word_bits), "row_words": unsigned(w.word_bits),
        "width": unsigned(w.coord_bits), "width_low": unsigned(3), "last_row": unsigned(w.coord_bits),
        "split_y": unsigned(2), "split_x": unsigned(2),   # log2 of the phase split
        "reduced_width": unsigned(w.coord_bits),
        "phase_shift": unsigned(2), "slot_shift": unsigned(4), "slot_mask": unsigned(w.lb_bits),
        "channel_shift": unsigned(4), "rows_cap": unsigned(w.coord_bits),
        "region_shift": unsigned(5),                     # slot_shift + channel_shift
    })


def filler_settings(step: ConvStep):
    """The :func:`filler_layout` values of a conv step."""
    source = step.source
    channels, width = source.channels, source.width
    return {
        "two": len(step.sources) == 2,
        "block": [s.block for s in step.sources] + [0] * (2 - len(step.sources)),
        "word": [s.word for s in step.sources] + [0] * (2 - len(step.sources)),
        "last_channel": channels - 1, "channel_words": 4 * channels,
        "block_jump": 4 * channels - 3, "row_words": (width >> 3) * 4 * channels,
        "width": width, "width_low": width & 7,
        "last_row": (1 if step.flat else source.height) - 1,
        "split_y": step.split_y.bit_length() - 1, "split_x": step.split_x.bit_length() - 1,
        "reduced_width": step.reduced_width,
        "phase_shift": step.phases.bit_length() - 1,
        "slot_shift": step.slots.bit_length() - 1, "slot_mask": step.slots - 1,
        # Beyond the source's rows the ring's size changes nothing.
        "channel_shift": step.c_pad.bit_length() - 1,
        "rows_cap": min(step.rows_cap, 1 if step.flat else source.height),
        "region_shift": step.slots.bit_length() - 1 + step.c_pad.bit_length() - 1,
    }


class Filler(wiring.Component):
    """Line-buffer fill of one conv step.

    Members
    -------
    settings : In(filler_layout(limits))
        Constant from ``start`` to ``done``.
    start : In(1)
        One cycle: begin at row 0.
    ring_start : In(coord)
        The oldest row the current group reads; rows ``>= ring_start + rows_cap`` wait.
    rows_done : Out(coord)
        Rows written (a read of the line buffer the cycle after sees them).
    done : Out(1)
        High once every row is written, until the next ``start``.
    mem_block, mem_addr, mem_re : Out
        The read of a memory block (always granted); ``mem_data`` its word a cycle later.
    lb : Out(line_write_signature(...))
        Line-buffer writes.
    """

    def __init__(self, limits):
        self.limits = limits
        w = limits
        super().__init__({
            "settings": In(filler_layout(limits)), "start": In(1),
            "ring_start": In(w.coord_bits), "rows_done": Out(w.coord_bits), "done": Out(1),
            "mem_block": Out(w.block_bits), "mem_addr": Out(w.word_bits), "mem_re": Out(1),
            "mem_data": In(16),
            "lb": Out(line_write_signature(w.lb_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        w, cfg = self.limits, self.settings
        # --- issue: one word (two pixels of a row and channel) per cycle ---------------------
        busy = Signal()
        y, x = Signal(w.coord_bits), Signal(signed(w.coord_bits + 2))  # x of the word's first byte
        source, channel = Signal(), Signal(w.channel_bits)
        row_base = Signal(w.word_bits)          # word of (row start pixel, channel 0), relative
        row_pixel = Signal(3)                   # row start pixel & 7
        word = Signal(w.word_bits)              # word being read, relative to the region
        channel_word = Signal(w.word_bits)      # first word of the row for this channel
        pair = Signal(2)                        # (pixel & 7) >> 1 of the word
        row_v = Signal(w.v_bits)                # (y >> split_y) * reduced_width
        second = Signal()                       # the second pass of a conflicting word
        # Row y may be filled while it is fewer than rows_cap rows past the ring's start:
        # registered from this cycle's y, so that no issue waits on the sum and comparison (the
        # ring's start only grows, so a cycle old is safe; a row starts after a cycle without
        # an issue, below, in which it is computed for the new y).
        allowed = Signal()
        m.d.sync += allowed.eq(y < self.ring_start + cfg.rows_cap)
        renew = Signal()                        # the cycle between two rows

        # The two bytes of the word: pixel offsets within the row (x0 = x, x1 = x + 1), valid
        # when inside [0, width): by x_left = width - x, counted down beside x.
        # What the issue decides on is registered beside x_left, from the value it gets:
        # ``load_left`` sets x_left and its flags (not zero, at least 2, at most 2).
        x1 = Signal.like(x)                       # x + 1: no sum before the placement
        x_of = [x, x1]

        def set_x(value, plus_one):
            return [x.eq(value), x1.eq(plus_one)]

        def row_start():
            # x at the row's first pixel (one before it when that pixel is odd): word-aligned.
            return [*set_x(-row_pixel[0], 1 - row_pixel[0]), *load_left(cfg.width + row_pixel[0]),
                    pair.eq(row_pixel >> 1)]
        x_left = Signal(w.coord_bits + 2)
        left_nz, left_ge2, left_le2 = Signal(), Signal(), Signal()

        def load_left(value):
            return [x_left.eq(value), left_nz.eq(value != 0), left_ge2.eq(value >= 2),
                    left_le2.eq(value <= 2)]

        byte_valid = Signal(2)
        m.d.comb += [byte_valid[0].eq(~x[-1] & left_nz), byte_valid[1].eq(left_ge2)]

        v, high = self._placement(m, x_of, y, row_v, source)
        # Both bytes in one bank: their reduced columns are equal mod 8, which (from the sum
        # above, for x and x + 1) happens exactly at odd x under a 2-phase split. Decided from
        # x's low bit, not from the banks: it gates every issue's enables.
        conflict = byte_valid.all() & (cfg.split_x == 1) & x[0]

        # Request and its metadata, registered (stage 1), then the data (stage 2).
        # The request holds each byte's reduced-grid index and the high bits of its address;
        # the bank and the whole address are formed from them as the request becomes the
        # arrival, so that no path holds both the index's sums and the address's shifts.
        request = Signal(data.StructLayout({
            "valid": 1, "mask": 2, "row_end": 1, "channel": w.channel_bits,
            "v": data.ArrayLayout(w.v_bits, 2), "high": data.ArrayLayout(w.lb_bits, 2)}))
        issue = Signal()
        mask = Signal(2)
        m.d.comb += mask.eq(Mux(conflict, Mux(second, 0b10, 0b01), byte_valid))

        last_pair = left_le2                      # no pixel of this row after it
        # Registered as channel and y change, for the value they take.
        last_channel = Signal()                   # channel == cfg.last_channel
        new_v_row = Signal()                      # y + 1 starts a row of the reduced grid
        last_row = Signal()                       # y == cfg.last_row
        split_mask = (1 << cfg.split_y) - 1
        last_source = ~cfg.two | source
        m.d.comb += issue.eq(busy & allowed & ~renew)
        m.d.sync += request.valid.eq(0)
        mem_addr = Signal.like(self.mem_addr)
        mem_block = Signal.like(self.mem_block)
        mem_re = Signal()
        m.d.sync += mem_re.eq(0)
        with m.If(issue):
            m.d.sync += [request.valid.eq(1), request.mask.eq(mask), request.channel.eq(channel),
                         request.v[0].eq(v[0]), request.v[1].eq(v[1]),
                         request.high[0].eq(high[0]), request.high[1].eq(high[1]),
                         request.row_end.eq(last_pair & last_channel & last_source &
                                            ~(conflict & ~second)),
                         mem_addr.eq(cfg.word[source] + word),
                         mem_block.eq(cfg.block[source]), mem_re.eq(1)]
            with m.If(conflict & ~second):
                m.d.sync += second.eq(1)
            with m.Else():
                m.d.sync += second.eq(0)
                with m.If(~last_pair):
                    m.d.sync += [*set_x(x + 2, x + 3), *load_left(x_left - 2), pair.eq(pair + 1),
                                 word.eq(word + Mux(pair == 3, cfg.block_jump, 1))]
                with m.Elif(~last_channel):
                    m.d.sync += [channel.eq(channel + 1),
                                 last_channel.eq(channel + 1 == cfg.last_channel),
                                 channel_word.eq(channel_word + 4),
                                 word.eq(channel_word + 4 + (row_pixel >> 1)), *row_start()]
                with m.Elif(~last_source):
                    m.d.sync += [source.eq(1), channel.eq(0), channel_word.eq(row_base),
                                 last_channel.eq(cfg.last_channel == 0),
                                 word.eq(row_base + (row_pixel >> 1)), *row_start()]
                with m.Else():
                    # Next row: its first pixel is width further on; its block base moves by
                    # whole blocks, one more when the pixel within the block wraps. Its first
                    # word's place follows in the cycle between the rows (``renew``).
                    carry = (row_pixel + cfg.width_low)[3]
                    m.d.sync += [y.eq(y + 1), source.eq(0), channel.eq(0), renew.eq(1),
                                 last_channel.eq(cfg.last_channel == 0),
                                 new_v_row.eq(((y + 2) & split_mask) == 0),
                                 last_row.eq(y + 1 == cfg.last_row),
                                 row_base.eq(row_base + cfg.row_words +
                                             Mux(carry, cfg.channel_words, 0)),
                                 row_pixel.eq(row_pixel + cfg.width_low)]
                    with m.If(new_v_row):
                        m.d.sync += row_v.eq(row_v + cfg.reduced_width)
                    with m.If(last_row):
                        m.d.sync += busy.eq(0)
        with m.If(renew):
            m.d.sync += [renew.eq(0), channel_word.eq(row_base),
                         word.eq(row_base + (row_pixel >> 1)), *row_start()]
        m.d.comb += [self.mem_addr.eq(mem_addr), self.mem_block.eq(mem_block),
                     self.mem_re.eq(mem_re)]

        arrived = self._arrival(m, request)
        m.d.comb += self.done.eq(~busy & ~request.valid & ~arrived.valid)

        with m.If(self.start):
            m.d.sync += [busy.eq(1), y.eq(0), source.eq(0), channel.eq(0), row_base.eq(0),
                         last_channel.eq(cfg.last_channel == 0),
                         new_v_row.eq(cfg.split_y == 0), last_row.eq(cfg.last_row == 0),
                         channel_word.eq(0), word.eq(0), row_pixel.eq(0), *set_x(0, 1), pair.eq(0),
                         *load_left(cfg.width), renew.eq(0),
                         allowed.eq(1),                  # row 0 always fits
                         row_v.eq(0), second.eq(0), self.rows_done.eq(0)]
        return m

    def _arrival(self, m, request):
        """Stage 2: the word arrives and its bytes go to their banks; each byte's bank and
        address are formed from the request as it becomes the arrival."""
        w, cfg = self.limits, self.settings
        arrived = Signal(data.StructLayout({
            "valid": 1, "mask": 2, "row_end": 1,
            "bank": data.ArrayLayout(3, 2), "addr": data.ArrayLayout(w.lb_bits, 2)}))
        m.d.sync += [arrived.valid.eq(request.valid), arrived.mask.eq(request.mask),
                     arrived.row_end.eq(request.row_end)]
        for k in range(2):
            slot = (request.v[k] >> 3) & cfg.slot_mask
            m.d.sync += [arrived.bank[k].eq(request.v[k][:3]),
                         arrived.addr[k].eq(request.high[k] | (slot << cfg.channel_shift)
                                            | request.channel)]
        for bank in range(BANKS):
            hit = [arrived.valid & arrived.mask[k] & (arrived.bank[k] == bank) for k in range(2)]
            m.d.comb += [self.lb.en[bank].eq(hit[0] | hit[1]),
                         self.lb.addr[bank].eq(Mux(hit[0], arrived.addr[0], arrived.addr[1])),
                         self.lb.data[bank].eq(Mux(hit[0], self.mem_data[:8],
                                                   self.mem_data[8:]))]
        with m.If(arrived.valid & arrived.row_end):
            m.d.sync += self.rows_done.eq(self.rows_done + 1)
        return arrived

    def _placement(self, m, x_of, y, row_v, source):
        """Of each byte of the word at ``x_of``: its reduced-grid index ``v`` (its bank is
        ``v % 8``) and its line-buffer address above the slot and channel bits."""
        w, cfg = self.limits, self.settings
        vs = [Signal(w.v_bits, name=f"v_{k}") for k in range(2)]
        highs = [Signal(w.lb_bits, name=f"high_{k}") for k in range(2)]
        for k in range(2):
            px = Signal(w.coord_bits, name=f"px_{k}")
            m.d.comb += px.eq(x_of[k])
            phase_x = Signal(2, name=f"phase_x_{k}")
            reduced_x = Signal(w.coord_bits, name=f"reduced_x_{k}")
            with m.Switch(cfg.split_x):
                for shift in range(3):
                    with m.Case(shift):
                        m.d.comb += [phase_x.eq(px[:shift] if shift else 0),
                                     reduced_x.eq((px >> shift) + (px[:shift] if shift else 0))]
            phase_y = Signal(2, name=f"phase_y_{k}")
            with m.Switch(cfg.split_y):
                for shift in range(3):
                    with m.Case(shift):
                        m.d.comb += phase_y.eq(y[:shift] if shift else 0)
            m.d.comb += vs[k].eq(row_v + reduced_x)
            phase = Signal(4, name=f"phase_{k}")
            m.d.comb += phase.eq((phase_y << cfg.split_x) | phase_x)
            region = Signal(5, name=f"region_{k}")
            m.d.comb += region.eq((source << cfg.phase_shift) | phase)
            m.d.comb += highs[k].eq(region << cfg.region_shift)
        return vs, highs
