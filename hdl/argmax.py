"""The class of a classifier's logits, computed as they stream past."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .activity import count_beats
from .common import activation_shape, activation_stream

__all__ = ["ArgmaxEngine"]


class ArgmaxEngine(wiring.Component):
    """Passes the logits through and gives, after each inference's last one, its class.

    The class is the index of the largest logit, the first of equal ones (numpy's ``argmax``).

    Parameters
    ----------
    features : int
        Logits per inference.
    act : zeroskip.ir.Activation
        Their encoding.

    Members
    -------
    i_stream : In(stream.Signature(logit))
    o_stream : Out(stream.Signature(logit))
        The logits, unchanged (combinational path).
    o_stream_class : Out(stream.Signature(range(features)))
        One beat per inference, two cycles after its last logit is given.

    Latency: 0 for the logits, 2 cycles for the class. One logit per cycle; an inference's last
    logit waits while the previous class has not been taken.
    """

    def __init__(self, features, act):
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive integer, got {features!r}")
        self.features, self.act = features, act
        super().__init__({
            "i_stream": In(activation_stream(act)),
            "o_stream": Out(activation_stream(act)),
            "o_stream_class": Out(stream.Signature(range(max(features, 2)))),
        })

    def elaborate(self, platform):
        m = Module()
        # Between inferences the best is the smallest value at index 0: then an inference's
        # first logit needs no comparison of its own (one logic level less on the update).
        shape = activation_shape(self.act)
        smallest = -(1 << (shape.width - 1)) if shape.signed else 0
        best_value = Signal(shape, init=smallest)
        best_index = Signal(range(max(self.features, 2)))
        class_valid = Signal()
        given = self.o_stream.valid & self.o_stream.ready
        position, last = count_beats(m, given, self.features)
        # The logit given, compared with the best the cycle after: the comparison then does not
        # share a cycle with the output's handshake.
        seen = Signal(data.StructLayout({"valid": 1, "last": 1, "value": best_value.shape(),
                                         "position": best_index.shape()}))
        # An inference's last logit waits while a class, or a last logit still to compare, is
        # ahead of it: so a class never overwrites one not taken.
        hold = last & (class_valid | seen.valid & seen.last)
        m.d.comb += [
            self.o_stream.payload.eq(self.i_stream.payload),
            self.o_stream.valid.eq(self.i_stream.valid & ~hold),
            self.i_stream.ready.eq(self.o_stream.ready & ~hold),
            self.o_stream_class.valid.eq(class_valid),
        ]
        m.d.sync += [seen.valid.eq(given), seen.last.eq(last),
                     seen.value.eq(self.i_stream.payload), seen.position.eq(position)]
        # Strictly greater: the first of equal logits wins, as in numpy.
        better = seen.value > best_value
        index = Mux(better, seen.position, best_index)
        with m.If(self.o_stream_class.ready):
            m.d.sync += class_valid.eq(0)
        with m.If(seen.valid):
            with m.If(seen.last):
                m.d.sync += [class_valid.eq(1), self.o_stream_class.payload.eq(index),
                             best_value.eq(smallest), best_index.eq(0)]
            with m.Elif(better):
                m.d.sync += [best_value.eq(seen.value), best_index.eq(seen.position)]
        return m
