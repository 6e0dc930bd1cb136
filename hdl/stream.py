"""Generic stream parts: a fork to several consumers, a register slice, a FIFO, a width
converter.

All follow :mod:`amaranth.lib.stream`'s rules (``valid`` held until ``ready``, payload stable
while waiting) on their outputs, given they hold on their inputs. All but the converter take any
payload shape; the converter takes element shapes and widths
(:func:`zeroskip.hdl.common.stream_shape`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

__all__ = ["StreamFIFO", "StreamFork", "StreamRegister", "StreamWidthConverter"]


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

    :attr:`latency` 1 cycle; one beat per cycle.
    """

    latency = 1

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
    """A stream FIFO of ``depth`` beats (:class:`amaranth.lib.fifo.SyncFIFOBuffered`), a
    landing register, then a :class:`StreamRegister`. A deep FIFO is a block RAM, whose read
    is slow (5.8 ns on the ECP5) and which sits where the part has RAM rows, often far from
    the engine it feeds: its word lands in a register of its own, loaded through the
    flip-flops' enable with no logic before them, so that nextpnr can place it by the RAM, and
    the register slice's logic starts from there (the RAM's output routed across the part
    into that logic was ResNet-8's longest path on the ECP5-85F, 11.3 ns).

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))

    :attr:`latency` (4: the buffered FIFO's 2, the landing register's 1, the register
    slice's 1) cycles from a beat's handshake to it on ``o_stream`` when empty; one beat per
    cycle.
    """

    latency = 4

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
        m.submodules.out = out = StreamRegister(self.shape)
        landed = Signal(Shape.cast(self.shape).width)
        landed_valid = Signal()
        moves = ~landed_valid | out.i_stream.ready
        m.d.comb += [
            fifo.w_data.eq(self.i_stream.payload), fifo.w_en.eq(self.i_stream.valid),
            self.i_stream.ready.eq(fifo.w_rdy),
            fifo.r_en.eq(moves),
            out.i_stream.payload.eq(landed), out.i_stream.valid.eq(landed_valid),
        ]
        with m.If(moves):
            m.d.sync += landed_valid.eq(fifo.r_rdy)
            with m.If(fifo.r_rdy):
                m.d.sync += landed.eq(fifo.r_data)
        wiring.connect(m, out.o_stream, wiring.flipped(self.o_stream))
        return m


def _beat_shape(shape, width):
    return shape if width == 1 else data.ArrayLayout(shape, width)


class StreamWidthConverter(wiring.Component):
    """Beats of ``in_width`` elements to beats of ``out_width`` elements, the elements in order
    (the first in a beat is the first in the stream). One width divides the other.

    Widening gathers ``out_width / in_width`` beats and gives them as one; narrowing gives a
    beat's parts one after another. A register slice (:class:`StreamRegister`) follows, so no
    combinational path leaves on the output side.

    Members
    -------
    i_stream : In(stream.Signature(shape, or ArrayLayout(shape, in_width)))
    o_stream : Out(stream.Signature(shape, or ArrayLayout(shape, out_width)))

    Latency 1 cycle after a widened beat is complete, 1 cycle for a narrowed beat's first
    part; one beat per cycle on the narrower side.
    """

    def __init__(self, shape, in_width, out_width):
        for name, width in (("in_width", in_width), ("out_width", out_width)):
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise ValueError(f"{name} must be a positive integer, got {width!r}")
        if in_width == out_width or max(in_width, out_width) % min(in_width, out_width):
            raise ValueError(f"a width converter joins two different widths, one dividing the "
                             f"other, got {in_width} and {out_width}")
        self.shape, self.in_width, self.out_width = shape, in_width, out_width
        super().__init__({"i_stream": In(stream.Signature(_beat_shape(shape, in_width))),
                          "o_stream": Out(stream.Signature(_beat_shape(shape, out_width)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.register = register = StreamRegister(_beat_shape(self.shape,
                                                                      self.out_width))
        wiring.connect(m, register.o_stream, wiring.flipped(self.o_stream))
        out = register.i_stream
        piece = Shape.cast(self.shape).width * min(self.in_width, self.out_width)
        if self.out_width > self.in_width:
            parts = self.out_width // self.in_width
            gathered = Signal((parts - 1) * piece)
            count = Signal(range(parts))
            full = count == parts - 1
            m.d.comb += [out.valid.eq(self.i_stream.valid & full),
                         out.payload.eq(Cat(gathered, Value.cast(self.i_stream.payload))),
                         self.i_stream.ready.eq(~full | out.ready)]
            with m.If(self.i_stream.valid & self.i_stream.ready):
                m.d.sync += count.eq(Mux(full, 0, count + 1))
                with m.Switch(count):
                    for index in range(parts - 1):
                        with m.Case(index):
                            m.d.sync += gathered.word_select(index, piece).eq(
                                self.i_stream.payload)
        else:
            parts = self.in_width // self.out_width
            held = Signal(parts * piece)
            held_valid = Signal()
            index = Signal(range(parts))
            last = index == parts - 1
            given = out.valid & out.ready
            m.d.comb += [out.valid.eq(held_valid),
                         out.payload.eq(held.word_select(index, piece)),
                         self.i_stream.ready.eq(~held_valid | given & last)]
            with m.If(given):
                m.d.sync += index.eq(index + 1)
                with m.If(last):
                    m.d.sync += [index.eq(0), held_valid.eq(0)]
            with m.If(self.i_stream.valid & self.i_stream.ready):
                m.d.sync += [held.eq(self.i_stream.payload), held_valid.eq(1)]
        return m
