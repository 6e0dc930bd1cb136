"""The class of a classifier's logits, computed as they stream past."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .activity import count_beats
from .arith import times
from .common import activation_shape, activation_stream, check_width

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
    width : int
        Logits per beat, a power of two dividing ``features``.

    Members
    -------
    i_stream : In(stream.Signature(stream_shape(logit, width)))
    o_stream : Out(stream.Signature(stream_shape(logit, width)))
        The logits, unchanged (combinational path).
    o_stream_class : Out(stream.Signature(range(features)))
        One beat per inference, two cycles after its last logit is given (two more, and one
        per two halvings of a wide beat, to reduce the beat first).

    Latency: 0 for the logits, 2 cycles for the class (plus the reduction of a wide beat). One
    beat per cycle; an inference's last beat waits while the previous class has not been taken.
    """

    def __init__(self, features, act, width=1):
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive integer, got {features!r}")
        self.features, self.act = features, act
        self.width = check_width(width, features, f"argmax of {features} logits")
        super().__init__({
            "i_stream": In(activation_stream(act, width)),
            "o_stream": Out(activation_stream(act, width)),
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
        position, last = count_beats(m, given, self.features // self.width)
        # The logit given, compared with the best the cycle after: the comparison then does not
        # share a cycle with the output's handshake.
        seen = Signal(data.StructLayout({"valid": 1, "last": 1, "value": best_value.shape(),
                                         "position": best_index.shape()}))
        # An inference's last logit waits while a class, or a last logit still to compare, is
        # ahead of it: so a class never overwrites one not taken.
        if self.width == 1:
            hold = last & (class_valid | seen.valid & seen.last)
        else:
            stages = self._reduce(m, given, last, position, seen)
            hold = last & (class_valid | Cat(stage.valid & stage.last for stage in stages).any())
        m.d.comb += [
            self.o_stream.payload.eq(self.i_stream.payload),
            self.o_stream.valid.eq(self.i_stream.valid & ~hold),
            self.i_stream.ready.eq(self.o_stream.ready & ~hold),
            self.o_stream_class.valid.eq(class_valid),
        ]
        if self.width == 1:
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

    def _reduce(self, m, given, last, position, seen):
        """A wide beat's largest logit and its index (the first of equal ones), by a tree of
        comparisons registered every two levels, into ``seen``; returns every stage."""
        layout = seen.shape()
        beat = Signal(data.StructLayout({"valid": 1, "last": 1,
                                         "values": self.i_stream.payload.shape(),
                                         "position": position.shape()}))
        m.d.sync += [beat.valid.eq(given), beat.last.eq(last),
                     beat.values.eq(self.i_stream.payload), beat.position.eq(position)]
        base = times(beat.position, self.width)
        level = [(beat.values[index], base + index) for index in range(self.width)]
        stages, valid, last_flag = [beat], beat.valid, beat.last
        depth = 0
        while len(level) > 1:
            # Greater or equal keeps the left (lower) index: the first of equal logits wins.
            level = [(Mux(left[0] >= right[0], left[0], right[0]),
                      Mux(left[0] >= right[0], left[1], right[1]))
                     for left, right in zip(level[::2], level[1::2])]
            depth += 1
            if depth % 2 == 0 and len(level) > 1:
                stage = Signal(data.StructLayout({
                    "valid": 1, "last": 1,
                    "values": data.ArrayLayout(layout["value"].shape, len(level)),
                    "indices": data.ArrayLayout(layout["position"].shape, len(level))}))
                m.d.sync += [stage.valid.eq(valid), stage.last.eq(last_flag)]
                m.d.sync += [stage.values[index].eq(value) for index, (value, _) in
                             enumerate(level)]
                m.d.sync += [stage.indices[index].eq(where) for index, (_, where) in
                             enumerate(level)]
                level = [(stage.values[index], stage.indices[index])
                         for index in range(len(level))]
                stages.append(stage)
                valid, last_flag = stage.valid, stage.last
        m.d.sync += [seen.valid.eq(valid), seen.last.eq(last_flag), seen.value.eq(level[0][0]),
                     seen.position.eq(level[0][1])]
        return stages + [seen]
