"""Generic stream parts: a fork to several consumers, a register slice, a FIFO.

All follow :mod:`amaranth.lib.stream`'s rules (``valid`` held until ``ready``, payload stable
while waiting) on their outputs, given they hold on their inputs.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

__all__ = ["StreamFIFO", "StreamFork", "StreamRegister"]


class StreamFork(wiring.Component):
    """One stream to several consumers: every beat goes to all of them.

    An output that takes a beat early is not offered it again while the others catch up
    (verilog-axis's broadcast without its register), so consumers need not be ready together.

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream_0 ... o_stream_{n-1} : Out(stream.Signature(shape))

    Latency 0 (combinational); one beat per cycle when every consumer is ready.
    """

    def __init__(self, shape, outputs):
        if not isinstance(outputs, int) or outputs < 2:
            raise ValueError(f"a fork needs at least 2 outputs, got {outputs!r}")
        self.outputs = outputs
        members = {"i_stream": In(stream.Signature(shape))}
        members.update({f"o_stream_{index}": Out(stream.Signature(shape))
                        for index in range(outputs)})
        super().__init__(members)

    def output(self, index):
        return getattr(self, f"o_stream_{index}")

    def elaborate(self, platform):
        m = Module()
        sent = Signal(self.outputs)  # outputs that have taken the current beat already
        outs = [self.output(index) for index in range(self.outputs)]
        done = Cat(out.ready | sent[index] for index, out in enumerate(outs)).all()
        m.d.comb += self.i_stream.ready.eq(done)
        for index, out in enumerate(outs):
            m.d.comb += [out.payload.eq(self.i_stream.payload),
                         out.valid.eq(self.i_stream.valid & ~sent[index])]
        with m.If(self.i_stream.valid):
            with m.If(done):
                m.d.sync += sent.eq(0)
            with m.Else():
                m.d.sync += sent.eq(sent | Cat(out.ready for out in outs))
        return m


class StreamRegister(wiring.Component):
    """A register slice with a skid register (verilog-axis's ``axis_register``, skid type):
    ``valid``, ``payload`` and ``ready`` all leave registers, so no combinational path crosses
    it in either direction.

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))

    Latency 1 cycle; one beat per cycle.
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        # A beat that arrived while the output was held: ready was already given for it.
        skid = Signal(self.shape)
        skid_valid = Signal()
        m.d.comb += self.i_stream.ready.eq(~skid_valid)
        with m.If(self.o_stream.ready | ~self.o_stream.valid):
            with m.If(skid_valid):
                m.d.sync += [self.o_stream.payload.eq(skid), self.o_stream.valid.eq(1),
                             skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o_stream.payload.eq(self.i_stream.payload),
                             self.o_stream.valid.eq(self.i_stream.valid)]
        with m.Elif(self.i_stream.valid & ~skid_valid):
            m.d.sync += [skid.eq(self.i_stream.payload), skid_valid.eq(1)]
        return m


class StreamFIFO(wiring.Component):
    """A stream FIFO of ``depth`` beats (:class:`amaranth.lib.fifo.SyncFIFOBuffered`).

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))

    Latency 1 cycle when empty; one beat per cycle.
    """

    def __init__(self, shape, depth):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        self.shape, self.depth = shape, depth
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=Shape.cast(self.shape).width,
                                                    depth=self.depth)
        m.d.comb += [
            fifo.w_data.eq(self.i_stream.payload), fifo.w_en.eq(self.i_stream.valid),
            self.i_stream.ready.eq(fifo.w_rdy),
            self.o_stream.payload.eq(fifo.r_data), self.o_stream.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o_stream.ready),
        ]
        return m
