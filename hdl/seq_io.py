"""The sequential engine's edges: the input loader, the emitter, the pool-sum reader.

:class:`Loader` writes an input, beat by beat in HWC order, into the input tensor's region
(:func:`~zeroskip.hdl.seq_plan.byte_address`), a byte a cycle while its memory block is free.
:class:`Emitter` reads the output tensor back in HWC order, a byte a cycle. :class:`PoolSumReader`
turns the sums of a fused average pool into beats for the requantizer.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .seq_post import beat_layout

__all__ = ["Emitter", "Loader", "PoolSumReader", "slot_layout", "slot_settings"]


def slot_layout(w):
    """A tensor's region and shape as the loader and the emitter walk it."""
    return data.StructLayout({
        "block": unsigned(w.block_bits), "word": unsigned(w.word_bits),
        "last_channel": unsigned(w.channel_bits), "channel_words": unsigned(w.word_bits),
        "last_pixel": unsigned(w.pixel_bits)})


def slot_settings(slot):
    return {"block": slot.block, "word": slot.word, "last_channel": slot.channels - 1,
            "channel_words": 4 * slot.channels, "last_pixel": slot.pixels - 1}


class _Walk:
    """A tensor in HWC order: pixel, channel, and the byte's 16-bit word and half."""

    def __init__(self, m, w, cfg, name):
        self.m, self.cfg = m, cfg
        self.pixel = Signal(w.pixel_bits, name=f"{name}_pixel")
        self.channel = Signal(w.channel_bits, name=f"{name}_channel")
        # (pixel >> 3) * 4 * channels, and the pixel's word within its block.
        self.block_base = Signal(w.word_bits, name=f"{name}_block_base")
        self.address = Signal(w.word_bits, name=f"{name}_address")
        m.d.comb += self.address.eq(cfg.word + self.block_base + (self.channel << 2)
                                    + (self.pixel[:3] >> 1))
        self.last = (self.pixel == cfg.last_pixel) & (self.channel == cfg.last_channel)

    def reset(self):
        return [self.pixel.eq(0), self.channel.eq(0), self.block_base.eq(0)]

    def advance(self):
        cfg = self.cfg
        with self.m.If(self.channel != cfg.last_channel):
            self.m.d.sync += self.channel.eq(self.channel + 1)
        with self.m.Else():
            self.m.d.sync += [self.channel.eq(0), self.pixel.eq(self.pixel + 1)]
            with self.m.If(self.pixel[:3] == 7):
                self.m.d.sync += self.block_base.eq(self.block_base + cfg.channel_words)


class Loader(wiring.Component):
    """Input beats into the input tensor's memory region.

    Members
    -------
    settings : In(slot_layout(w))
    i_stream : In(stream.Signature(unsigned(8)))
        Taken while ``enable`` (the region is no longer read) and the write goes through.
    enable : In(1)
    loaded : Out(1)
        One cycle, with the last beat's write.
    mem_block, mem_addr, mem_data, mem_mask, mem_we : Out; granted : In(1)
        A write request, repeated until granted (the loader yields its block to the steps).
    """

    def __init__(self, w):
        self.w = w
        super().__init__({
            "settings": In(slot_layout(w)), "i_stream": In(stream.Signature(unsigned(8))),
            "enable": In(1), "loaded": Out(1),
            "mem_block": Out(w.block_bits), "mem_addr": Out(w.word_bits), "mem_data": Out(16),
            "mem_mask": Out(2), "mem_we": Out(1), "granted": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.settings
        walk = _Walk(m, self.w, cfg, "load")
        # One beat held while its write waits for the block.
        held = Signal()
        odd = Signal()
        last = Signal()
        value = Signal(8)
        m.d.comb += [self.i_stream.ready.eq(self.enable & (~held | self.granted)),
                     self.mem_block.eq(cfg.block), self.mem_we.eq(held),
                     self.mem_data.eq(value.replicate(2)), self.mem_mask.eq(Mux(odd, 2, 1))]
        with m.If(held & self.granted):
            m.d.sync += held.eq(0)
        m.d.comb += self.loaded.eq(held & self.granted & last)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [held.eq(1), value.eq(self.i_stream.payload),
                         self.mem_addr.eq(walk.address), odd.eq(walk.pixel[0]),
                         last.eq(walk.last)]
            with m.If(walk.last):
                m.d.sync += walk.reset()
            with m.Else():
                walk.advance()
        return m


class Emitter(wiring.Component):
    """The output tensor, out in HWC order.

    Members
    -------
    settings : In(slot_layout(w)); signed : In(1)
    start : In(1)
    o_stream : Out(stream.Signature(unsigned(8)))
    done : Out(1)
        High from the last beat's handshake until the next ``start``.
    mem_block, mem_addr, mem_re : Out; mem_data : In(16)
    """

    def __init__(self, w):
        self.w = w
        super().__init__({
            "settings": In(slot_layout(w)), "start": In(1),
            "o_stream": Out(stream.Signature(unsigned(8))), "done": Out(1),
            "mem_block": Out(w.block_bits), "mem_addr": Out(w.word_bits), "mem_re": Out(1),
            "mem_data": In(16),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, out = self.settings, self.o_stream
        walk = _Walk(m, self.w, cfg, "emit")
        running = Signal()
        # A read in flight, and the byte it brings (held while the output is busy).
        reading, high = Signal(), Signal()
        holding, held = Signal(), Signal(8)
        read_last, hold_last = Signal(), Signal()
        arriving = Mux(high, self.mem_data[8:], self.mem_data[:8])
        # A read goes out when its byte will have a place: the output or the holding register.
        space = ~holding & (~out.valid | out.ready | ~reading)
        issue = running & space
        m.d.comb += [self.mem_block.eq(cfg.block), self.mem_addr.eq(walk.address),
                     self.mem_re.eq(issue)]
        m.d.sync += reading.eq(issue)
        with m.If(issue):
            m.d.sync += [high.eq(walk.pixel[0]), read_last.eq(walk.last)]
            with m.If(walk.last):
                m.d.sync += running.eq(0)
            with m.Else():
                walk.advance()
        with m.If(~out.valid | out.ready):
            with m.If(holding):
                m.d.sync += [out.valid.eq(1), out.payload.eq(held), holding.eq(0),
                             self.done.eq(0)]
                m.d.sync += hold_last.eq(0)
                with m.If(hold_last):
                    m.d.sync += self.done.eq(1)
            with m.Elif(reading):
                m.d.sync += [out.valid.eq(1), out.payload.eq(arriving)]
                with m.If(read_last):
                    m.d.sync += self.done.eq(1)
            with m.Else():
                m.d.sync += out.valid.eq(0)
        with m.Elif(reading):
            m.d.sync += [holding.eq(1), held.eq(arriving), hold_last.eq(read_last)]
        with m.If(self.start):
            m.d.sync += [running.eq(1), self.done.eq(0), *walk.reset()]
        return m


class PoolSumReader(wiring.Component):
    """The sums of a fused average pool, one beat a channel (pixel 0 of the pool's output).

    Members
    -------
    start : In(1); channels : In(filter count); cache : In(filter count)
    beats : Out(beat_layout(w))
    sum_addr, sum_en : Out; sum_data : In
        The writer's sum memory (data a cycle after the address).
    done : Out(1)
    """

    def __init__(self, w, cache):
        self.w, self.cache = w, cache
        super().__init__({
            "start": In(1), "channels": In(w.filter_bits), "beats": Out(beat_layout(w)),
            "sum_addr": Out(w.filter_bits), "sum_en": Out(1), "sum_data": In(w.sum_bits),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        channel = Signal(self.w.filter_bits)
        in_chunk = Signal(self.w.cache_bits + 1)
        running, reading = Signal(), Signal()
        m.d.comb += [self.sum_addr.eq(channel), self.sum_en.eq(running)]
        m.d.sync += reading.eq(running)
        beat = self.beats
        filt = Signal.like(beat.filter)
        m.d.sync += [beat.valid.eq(reading), beat.requant.eq(1), beat.acc.eq(self.sum_data),
                     beat.byte.eq(0), beat.both.eq(0), beat.other_skip.eq(0),
                     beat.write.eq(1), beat.mask.eq(1), beat.word_end.eq(1), beat.count.eq(1),
                     beat.filter.eq(filt), filt.eq(in_chunk)]
        with m.If(running):
            m.d.sync += [channel.eq(channel + 1),
                         in_chunk.eq(Mux(in_chunk == self.cache - 1, 0, in_chunk + 1))]
            with m.If(channel + 1 == self.channels):
                m.d.sync += running.eq(0)
        m.d.comb += self.done.eq(~running & ~reading & ~beat.valid)
        with m.If(self.start):
            m.d.sync += [running.eq(1), channel.eq(0), in_chunk.eq(0)]
        return m
