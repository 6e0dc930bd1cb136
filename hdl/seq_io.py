"""The sequential engine's edges: the input loader, the emitter, the pool-sum reader.

:class:`Loader` writes an input, beat by beat in HWC order, into the input tensor's region
(:func:`~zeroskip.hdl.seq_plan.byte_address`), a byte a cycle while its memory block is free.
:class:`Emitter` reads the output tensor back in HWC order, a byte a cycle. :class:`PoolSumReader`
turns the sums of a fused average pool into beats for the requantizer.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
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
        A write request, repeated until granted (the loader yields its block to the steps);
        two beats wait at most.
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
        # Up to two beats wait for their writes (a beat a cycle while each goes through): the
        # stream's ready is then a register's, not the memory's arbitration.
        beat = data.StructLayout({"value": 8, "addr": self.w.word_bits, "odd": 1, "last": 1})
        slots = [Signal(beat, name=f"slot_{i}") for i in range(2)]
        full = Signal(2)                       # slot 1 only behind slot 0
        incoming = Signal(beat)
        head = slots[0]
        push = self.i_stream.valid & self.i_stream.ready
        pop = full[0] & self.granted
        m.d.comb += [incoming.value.eq(self.i_stream.payload), incoming.addr.eq(walk.address),
                     incoming.odd.eq(walk.pixel[0]), incoming.last.eq(walk.last),
                     self.i_stream.ready.eq(self.enable & ~full[1]),
                     self.mem_block.eq(cfg.block), self.mem_we.eq(full[0]),
                     self.mem_addr.eq(head.addr), self.mem_data.eq(head.value.replicate(2)),
                     self.mem_mask.eq(Mux(head.odd, 2, 1)),
                     self.loaded.eq(pop & head.last)]
        with m.If(pop):
            m.d.sync += [slots[0].eq(Mux(full[1], slots[1], incoming)), slots[1].eq(incoming),
                         full.eq(Cat(full[1] | push, 0))]
        with m.Elif(push):
            with m.If(full[0]):
                m.d.sync += [slots[1].eq(incoming), full[1].eq(1)]
            with m.Else():
                m.d.sync += [slots[0].eq(incoming), full[0].eq(1)]
        with m.If(push):
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
        # A read in flight brings its byte the cycle after; bytes the output cannot take yet
        # wait in two holding registers. A read goes out while fewer than three bytes are
        # owed to the output (in flight, held, or in it): a count, so that the memory's
        # request does not wait on the output's ready.
        reading, high, read_last = Signal(), Signal(), Signal()
        owed = Signal(range(4))
        arriving = Signal(9)                   # the byte, and whether it is the last
        m.d.comb += arriving.eq(Cat(Mux(high, self.mem_data[8:], self.mem_data[:8]), read_last))
        held = [Signal(9, name=f"held_{i}") for i in range(2)]
        held_valid = Signal(2)                 # held_1 only behind held_0
        issue = running & (owed < 3)
        taken = out.valid & out.ready
        m.d.comb += [self.mem_block.eq(cfg.block), self.mem_addr.eq(walk.address),
                     self.mem_re.eq(issue)]
        m.d.sync += [reading.eq(issue), owed.eq(owed + issue - taken)]
        with m.If(issue):
            m.d.sync += [high.eq(walk.pixel[0]), read_last.eq(walk.last)]
            with m.If(walk.last):
                m.d.sync += running.eq(0)
            with m.Else():
                walk.advance()

        def emit(byte):
            m.d.sync += [out.valid.eq(1), out.payload.eq(byte[:8])]
            with m.If(byte[8]):
                m.d.sync += self.done.eq(1)

        with m.If(~out.valid | out.ready):
            with m.If(held_valid[0]):
                emit(held[0])
                m.d.sync += [held[0].eq(Mux(held_valid[1], held[1], arriving)),
                             held[1].eq(arriving),
                             held_valid.eq(Cat(held_valid[1] | reading,
                                               held_valid[1] & reading))]
            with m.Elif(reading):
                emit(arriving)
            with m.Else():
                m.d.sync += out.valid.eq(0)
        with m.Elif(reading):
            with m.If(held_valid[0]):
                m.d.sync += [held[1].eq(arriving), held_valid[1].eq(1)]
            with m.Else():
                m.d.sync += [held[0].eq(arriving), held_valid[0].eq(1)]
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
        m.d.sync += [beat.valid.eq(reading), beat.requant.eq(1), beat.acc.eq(self.sum_data),
                     beat.byte.eq(0), beat.both.eq(0), beat.other_skip.eq(0),
                     beat.write.eq(1), beat.mask.eq(1), beat.word_end.eq(1), beat.count.eq(1),
                     beat.filter.eq(in_chunk)]
        with m.If(reading):  # the filter of the sum being read
            m.d.sync += in_chunk.eq(Mux(in_chunk == self.cache - 1, 0, in_chunk + 1))
        with m.If(running):
            m.d.sync += channel.eq(channel + 1)
            with m.If(channel + 1 == self.channels):
                m.d.sync += running.eq(0)
        m.d.comb += self.done.eq(~running & ~reading & ~beat.valid)
        with m.If(self.start):
            m.d.sync += [running.eq(1), channel.eq(0), in_chunk.eq(0)]
        return m
