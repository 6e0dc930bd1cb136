"""Streaming residual add, exactly as :func:`zeroskip.reference.add`."""

from __future__ import annotations

import math

from amaranth.hdl import Module, Mux, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from zeroskip import ir
from zeroskip.errors import GraphError

from .activity import count_activity, count_beats
from .common import activation_shape, activation_stream, check_width, counters_signature
from .requant import Requantizer, wide_requantizer
from .stream import StreamRegister, StreamWidthConverter

__all__ = ["AddEngine"]


class AddEngine(wiring.Component):
    """``y = requant(a * m_a + b * m_b)`` over two streams of the same tensor shape.

    The two inputs are joined beat by beat: a pair moves on only when both beats are valid, so
    either input may run ahead and wait. The pair is registered, then its scaled terms; their
    sum, exact, goes into a :class:`~zeroskip.hdl.requant.Requantizer`. A constant multiplier
    of 1 (the usual case) is no multiply.

    Parameters
    ----------
    node : zeroskip.ir.Add
        ``input_multipliers`` ``(m_a, m_b)``, the requantization and the output encoding.
    shape : tuple of int
        Shape of each input and of the output: ``(channels, height, width)`` or
        ``(features,)``; the requantizer's channel is ``channels`` or the feature.
    act_a, act_b : zeroskip.ir.Activation
        Encodings of the two inputs.
    in_width, out_width : int
        Activations per beat of both inputs, and of the output: powers of two dividing the
        channels (the features of a flat tensor). Pairs of beats go through ``in_width``
        requantizers side by side; another output width through a
        :class:`~zeroskip.hdl.stream.StreamWidthConverter`.

    Members
    -------
    i_stream_a : ``In(activation_stream(act_a, in_width))``
    i_stream_b : ``In(activation_stream(act_b, in_width))``
        The two input tensors, HWC (or feature order), inference after inference.
    o_stream : ``Out(activation_stream(node.act, out_width))``
        The output tensor, in the same order.
    counters : ``Out(counters_signature())``
        ``busy_cycles`` and ``stall_cycles``; ``effective_macs`` and ``skipped_pairs`` stay 0
        (the input scalings are constants, not weight products).

    Latency and throughput
    ----------------------
    :attr:`latency` (12: two registers, the requantizer's 9, a register slice) cycles from the
    handshake of an input pair to its result on ``o_stream`` (2 more through a width
    converter). One pair of beats per cycle. Each input's ``ready`` depends combinationally on
    the other input's ``valid``, not on ``o_stream.ready``: the slice's ``ready`` is a register.
    """

    latency = 2 + Requantizer.latency + StreamRegister.latency

    def __init__(self, node: ir.Add, shape, act_a: ir.Activation, act_b: ir.Activation, *,
                 in_width=1, out_width=1):
        if not isinstance(node, ir.Add):
            raise TypeError(f"node must be a zeroskip.ir.Add, got {type(node).__name__}")
        for name, act in (("act_a", act_a), ("act_b", act_b)):
            if not isinstance(act, ir.Activation):
                raise TypeError(f"{name} must be a zeroskip.ir.Activation, got "
                                f"{type(act).__name__}")
        if (not isinstance(shape, tuple) or len(shape) not in (1, 3) or
                not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1
                        for size in shape)):
            raise ValueError(f"shape must be (channels, height, width) or (features,) of "
                             f"positive integers, got {shape!r}")
        try:
            node.infer((shape, shape), (act_a, act_b))
        except GraphError as error:
            raise ValueError(f"add does not fit inputs of shape {shape}: {error}") from None
        self.shape = shape
        self._node = node
        self._acts = act_a, act_b
        what = f"{'input' if len(shape) == 3 else 'flat input'} of {shape[0]} " + \
            ("channels" if len(shape) == 3 else "features")
        self.in_width = check_width(in_width, shape[0], what)
        self.out_width = check_width(out_width, shape[0], what.replace("input", "output"))
        super().__init__({
            "i_stream_a": In(activation_stream(act_a, in_width)),
            "i_stream_b": In(activation_stream(act_b, in_width)),
            "o_stream": Out(activation_stream(node.act, out_width)),
            "counters": Out(counters_signature()),
        })

    def _sum_shape(self):
        """The shape of ``a * m_a + b * m_b`` over the whole input ranges (multipliers >= 0)."""
        (act_a, act_b), (m_a, m_b) = self._acts, self._node.input_multipliers
        low = act_a.qmin * m_a + act_b.qmin * m_b
        high = act_a.qmax * m_a + act_b.qmax * m_b
        return Shape.cast(range(low, max(high, 1) + 1))  # one bit at least, for m_a = m_b = 0

    def elaborate(self, platform):
        m = Module()
        a, b = self.i_stream_a, self.i_stream_b
        m_a, m_b = self._node.input_multipliers
        width = self.in_width
        channels, size = self.shape[0] // width, math.prod(self.shape) // width  # in beats

        m.submodules.requantizer = requantizer = wide_requantizer(
            self._node.requant, self._sum_shape(), self.shape[0], self._node.act, width)
        pair_valid = a.valid & b.valid
        # The pair is registered before its scaling, and the scaled terms before their sum:
        # the inputs often come from a FIFO's block RAM, and the scaling is a multiply.
        staged, scaled = Signal(), Signal()
        staged_a, staged_b = Signal.like(a.payload), Signal.like(b.payload)
        staged_channel, scaled_channel = Signal(range(channels)), Signal(range(channels))
        staged_lanes = [(staged_a, staged_b)] if width == 1 else \
            [(staged_a[index], staged_b[index]) for index in range(width)]
        terms = [(Signal.like(x * m_a, name=f"term_a_{index}"),
                  Signal.like(y * m_b, name=f"term_b_{index}"))
                 for index, (x, y) in enumerate(staged_lanes)]
        scaled_ready = ~scaled | requantizer.i_stream.ready
        stage_ready = ~staged | scaled_ready
        taken = pair_valid & stage_ready

        # HWC and feature order both cycle through the channels fastest.
        channel = Signal(range(channels))
        beat = Signal(range(size))
        with m.If(stage_ready):
            m.d.sync += [staged.eq(pair_valid), staged_a.eq(a.payload),
                         staged_b.eq(b.payload), staged_channel.eq(channel)]
        with m.If(scaled_ready):
            m.d.sync += [scaled.eq(staged), scaled_channel.eq(staged_channel)]
            for (x, y), (term_a, term_b) in zip(staged_lanes, terms):
                m.d.sync += [term_a.eq(x * m_a), term_b.eq(y * m_b)]
        with m.If(taken):
            m.d.sync += [
                channel.eq(Mux(channel == channels - 1, 0, channel + 1)),
                beat.eq(Mux(beat == size - 1, 0, beat + 1)),
            ]
        m.d.comb += [
            a.ready.eq(stage_ready & b.valid),
            b.ready.eq(stage_ready & a.valid),
            requantizer.i_stream.valid.eq(scaled),
            *([requantizer.i_stream.p.acc.eq(terms[0][0] + terms[0][1])] if width == 1
              else [requantizer.i_stream.p.acc[index].eq(term_a + term_b)
                    for index, (term_a, term_b) in enumerate(terms)]),
            requantizer.i_stream.p.channel.eq(scaled_channel),
        ]
        # The results leave through a register slice: the consumer's ready (a fork waiting on
        # its FIFOs), the pipeline's and the inputs' made ResNet-8's longest path on the ECP5.
        m.submodules.out = out = StreamRegister(requantizer.o_stream.payload.shape())
        wiring.connect(m, requantizer.o_stream, out.i_stream)
        if self.out_width == width:
            wiring.connect(m, out.o_stream, wiring.flipped(self.o_stream))
        else:
            m.submodules.widths = widths = StreamWidthConverter(
                activation_shape(self._node.act), width, self.out_width)
            wiring.connect(m, out.o_stream, widths.i_stream)
            wiring.connect(m, widths.o_stream, wiring.flipped(self.o_stream))

        out_taken = self.o_stream.valid & self.o_stream.ready
        _, last_out = count_beats(m, out_taken, math.prod(self.shape) // self.out_width)
        # The add waits while an output slot is free and a pair is not valid. Every term is
        # registered (the activity is counted a cycle late, as it was), so that the consumer's
        # ready reaches a flip-flop rather than the counters' enables.
        begin, finish, starved, blocked = (Signal() for _ in range(4))
        m.d.sync += [
            begin.eq(taken & (beat == 0)), finish.eq(out_taken & last_out),
            starved.eq((beat != 0) & (~self.o_stream.valid | self.o_stream.ready) &
                       ~pair_valid),
            blocked.eq(self.o_stream.valid & ~self.o_stream.ready),
        ]
        # Beyond its latency's beats, the requantizer's skid register holds one.
        count_activity(m, self.counters, begin=begin, finish=finish, starved=starved,
                       blocked=blocked,
                       max_inflight=self.latency + 1 + (1 if self.out_width == width else 4))
        return m
