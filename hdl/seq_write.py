"""The writer: requantized bytes into the target tensor's memory block, a 16-bit word a cycle.

Words arrive in the order every producer makes them: per chunk of filters, per group, per
filter (a flat output: per filter, each its own pixel). A word of ``count`` lanes starting at
pixel ``q0`` covers pixels ``q0 .. q0 + count - 1`` of channel ``c``; its slots are the 16-bit
memory words of those pixels (:func:`~zeroskip.hdl.seq_plan.byte_address`), in order. A result
with ``write`` writes its slot (``mask`` its bytes); a slot's first byte waits for the second.

A step whose output an average pool sums (``pool_window``) also adds every written byte of a
pixel below the window to its channel's sum (the sum memory, read by the pool-sum step).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .seq_memory import ram
from .seq_plan import ConvStep
from .seq_post import result_layout

__all__ = ["Writer", "writer_layout", "writer_settings"]


def writer_layout(w):
    return data.StructLayout({
        "block": unsigned(w.block_bits), "word": unsigned(w.word_bits),
        "channel_words": unsigned(w.word_bits),          # 4 * channels of the target
        "flat_out": 1, "filters": unsigned(w.filter_bits), "skip_value": unsigned(8),
        "signed": 1, "pool": 1, "pool_window": unsigned(w.pixel_bits),
        "pixels": unsigned(w.pixel_bits),                 # output pixels a chunk covers
    })


def writer_settings(step, cache):
    target = step.target
    skip = 0
    requant = getattr(step, "requant", None)
    if requant is not None and requant.clamp_min > requant.epsilon:
        skip = requant.clamp_min & 0xFF
    return {"block": target.block, "word": target.word, "channel_words": 4 * target.channels,
            "flat_out": isinstance(step, ConvStep) and step.out_flat,
            "filters": step.filters, "skip_value": skip, "signed": target.act.signed,
            "pool": isinstance(step, ConvStep) and step.pool_window > 0,
            "pool_window": step.pool_window if isinstance(step, ConvStep) else 0,
            "pixels": 1 if isinstance(step, ConvStep) and step.out_flat else target.pixels}


class Writer(wiring.Component):
    """Results to memory writes.

    Members
    -------
    settings : In(writer_layout(w)); start : In(1)
    results : In(result_layout(w))
    mem_block, mem_addr, mem_data, mem_mask, mem_we : Out
        One write a cycle (registered); the target's block is never busy otherwise.
    sum_addr, sum_data : In / Out
        The pool-sum step's read of the sums (data a cycle after the address).
    idle : Out(1)
        No write pending.
    """

    def __init__(self, w, cache, sum_depth, *, pool_sums=True):
        self.w, self.cache, self.sum_depth = w, cache, max(sum_depth, 2)
        self.pool_sums = pool_sums
        super().__init__({
            "settings": In(writer_layout(w)), "start": In(1),
            "results": In(result_layout(w)),
            "mem_block": Out(w.block_bits), "mem_addr": Out(w.word_bits), "mem_data": Out(16),
            "mem_mask": Out(2), "mem_we": Out(1),
            "sum_addr": In(range(self.sum_depth)), "sum_en": In(1),
            "sum_data": Out(signed(w.sum_bits)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w, cfg, result = self.w, self.settings, self.results
        # Where the current word is: its first pixel, its channel, the chunk.
        q0 = Signal(w.pixel_bits)
        channel = Signal(w.filter_bits)          # absolute filter of the word
        in_chunk = Signal(w.filter_bits)         # filter within the chunk
        chunk_first = Signal(w.filter_bits)
        chunk_filters = Signal(w.filter_bits)
        chunk_last = Signal(w.filter_bits)       # chunk_filters - 1
        pixels_left = Signal(w.pixel_bits + 1)   # cfg.pixels - q0
        left_small = Signal()                    # pixels_left < 16 (a group counts at most 8)
        block_base = Signal(w.word_bits)         # (q0 >> 3) * 4 * channels
        slot = Signal(3)                         # slots written of this word
        held = Signal(8)                         # a slot's low byte, waiting for its high one
        first_group = Signal()
        # The step's flat_out, kept here: the setting's register is placed among the units
        # that read it, and this one is on the chunk's end.
        flat = Signal()
        pixel = Mux(flat, channel, q0)
        c = Mux(flat, 0, channel)
        pair = Signal(4)
        m.d.comb += pair.eq((pixel[:3] >> 1) + slot)
        word_base = Mux(flat, (pixel >> 3) << 2, block_base)
        address = cfg.word + word_base + (c << 2) + Mux(pair[2], cfg.channel_words, 0) + pair[:2]
        # The slot's two bytes: both the constant, or this beat's byte beside the skip value
        # (the other lane's output without a multiply) or beside the byte held.
        other = Mux(result.other_skip, cfg.skip_value, held)
        low_byte = Mux(result.both | ~result.byte, result.value, other)
        high_byte = Mux(result.both | result.byte, result.value, other)
        data_word = Signal(16)
        m.d.comb += data_word.eq(low_byte | (high_byte << 8))
        m.d.sync += self.mem_we.eq(0)
        with m.If(result.valid & ~result.write):
            m.d.sync += held.eq(result.value)
        with m.If(result.valid & result.write):
            m.d.sync += [self.mem_we.eq(1), self.mem_block.eq(cfg.block),
                         self.mem_addr.eq(address), self.mem_data.eq(data_word),
                         self.mem_mask.eq(result.mask), slot.eq(slot + 1)]
        self._sum_pending = Signal()
        if self.pool_sums:
            self._pool_sums(m, result, pixel, slot, first_group, channel, data_word)
        # The next word: the next filter of the group, or the next group, or the next chunk.
        # The next chunk, worked out a stage a cycle while this one runs (a chunk lasts longer
        # than three cycles: its parameters are read first), so that its end only loads them.
        next_first, left = Signal.like(chunk_first), Signal.like(chunk_first)
        next_size, next_last = Signal.like(chunk_filters), Signal.like(chunk_filters)
        m.d.sync += [next_first.eq(chunk_first + chunk_filters),
                     left.eq(cfg.filters - next_first),
                     next_size.eq(Mux(left < self.cache, left, self.cache)),
                     next_last.eq(Mux(left < self.cache, left - 1, self.cache - 1))]
        # Decided from registers (an equality, a count down), not from sums of them.
        last_filter = in_chunk == chunk_last
        with m.If(result.valid & result.word_end):
            m.d.sync += slot.eq(0)
            with m.If(~last_filter):
                m.d.sync += [in_chunk.eq(in_chunk + 1), channel.eq(channel + 1)]
            with m.Else():
                # Next group: q0 moves on by the word's lanes (a flat output by nothing).
                step = Mux(flat, 1, result.count)
                crossed = (q0[:3] + Mux(flat, 0, result.count))[3]
                m.d.sync += [in_chunk.eq(0), channel.eq(chunk_first), q0.eq(q0 + step),
                             pixels_left.eq(pixels_left - step),
                             left_small.eq(pixels_left - step < 16),
                             block_base.eq(block_base + Mux(crossed, cfg.channel_words, 0)),
                             first_group.eq(0)]
                # A group's count is its pixels left in the row or the chunk, whichever is
                # fewer: the chunk's last group is the one that counts them all.
                # pixels_left == step, from a flag and the low bits.
                with m.If(left_small & (pixels_left[:4] == step)):
                    # The chunk is done: the next one starts at pixel 0.
                    m.d.sync += [chunk_first.eq(next_first), channel.eq(next_first), q0.eq(0),
                                 pixels_left.eq(cfg.pixels), left_small.eq(cfg.pixels < 16),
                                 block_base.eq(0), first_group.eq(1),
                                 chunk_filters.eq(next_size), chunk_last.eq(next_last)]
        with m.If(self.start):
            size = Mux(cfg.filters < self.cache, cfg.filters, self.cache)
            m.d.sync += [flat.eq(cfg.flat_out),
                         q0.eq(0), channel.eq(0), in_chunk.eq(0), chunk_first.eq(0),
                         pixels_left.eq(cfg.pixels), left_small.eq(cfg.pixels < 16),
                         block_base.eq(0), slot.eq(0), first_group.eq(1),
                         chunk_filters.eq(size), chunk_last.eq(size - 1)]
        m.d.comb += self.idle.eq(~self.mem_we & ~self._sum_pending)
        return m

    def _pool_sums(self, m, result, pixel, slot, first_group, channel, data_word):
        """Per channel, the sum of its written bytes below the pool window.

        Three stages a word's bytes pass before its sum's read-modify-write: the bytes and
        their place (A), the bytes below the window summed (B), the word's sum (C). Each is a
        compare or an add of registers (together in one cycle, the design's longest path)."""
        w, cfg = self.w, self.settings
        m.submodules.sums = sums = ram(signed(w.sum_bits), self.sum_depth)
        sum_write, sum_read = sums.write_port(), sums.read_port()
        # A: this beat as written, and the position of the slot's even pixel.
        a_valid, a_end, a_first = Signal(), Signal(), Signal()
        a_channel = Signal.like(channel)
        a_data, a_mask, a_even = Signal(16), Signal(2), Signal(w.pixel_bits + 1)
        m.d.sync += a_valid.eq(result.valid)
        with m.If(result.valid):
            m.d.sync += [a_end.eq(result.word_end), a_first.eq(first_group),
                         a_channel.eq(channel), a_data.eq(data_word),
                         a_mask.eq(Mux(result.write, result.mask, 0)),
                         a_even.eq((pixel & ~1) + (slot << 1))]
        # B: the bytes of the slot below the window, as values.
        b_valid, b_end, b_first = Signal(), Signal(), Signal()
        b_channel = Signal.like(channel)
        b_part = Signal(signed(10))
        part = 0
        for byte in range(2):
            value = a_data[8 * byte:8 * byte + 8]
            value = Mux(cfg.signed, value.as_signed(), value.as_unsigned())
            counts = a_mask[byte] & (a_even + byte < cfg.pool_window)
            part = part + Mux(counts, value, 0)
        m.d.sync += b_valid.eq(a_valid)
        with m.If(a_valid):
            m.d.sync += [b_end.eq(a_end), b_first.eq(a_first), b_channel.eq(a_channel),
                         b_part.eq(part)]
        # C: the word's sum, over its slots.
        word_sum = Signal(signed(w.sum_bits))
        total = word_sum + b_part
        with m.If(b_valid):
            m.d.sync += word_sum.eq(Mux(b_end, 0, total))
        m.d.comb += sum_read.addr.eq(Mux(self.sum_en, self.sum_addr, b_channel))
        m.d.comb += self.sum_data.eq(sum_read.data)
        # The read-modify-write a cycle after the word's end; a write pending for the channel
        # read again right away is forwarded.
        pending = Signal()
        pending_channel = Signal.like(channel)
        pending_sum = Signal(signed(w.sum_bits))
        pending_first = Signal()
        written = Signal(signed(w.sum_bits))
        # Decided as the word is taken: the sum written this cycle is the one it adds to.
        forward = Signal()
        m.d.sync += pending.eq(cfg.pool & b_valid & b_end)
        with m.If(b_valid & b_end):
            m.d.sync += [pending_channel.eq(b_channel), pending_sum.eq(total),
                         pending_first.eq(b_first),
                         forward.eq(pending & (pending_channel == b_channel))]
        m.d.comb += self._sum_pending.eq(cfg.pool & (a_valid | b_valid) | pending)
        previous = Mux(forward, written, sum_read.data)
        new = Mux(pending_first, 0, previous) + pending_sum
        m.d.comb += [sum_write.addr.eq(pending_channel), sum_write.data.eq(new),
                     sum_write.en.eq(pending)]
        m.d.sync += written.eq(new)
