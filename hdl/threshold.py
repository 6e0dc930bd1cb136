"""Folded batch norm + sign in hardware: one accumulator in, one binary activation out, exactly
as :func:`zeroskip.reference.threshold`.

The output stage of every conv / linear engine whose layer ends in a
:class:`zeroskip.ir.Threshold` (:mod:`.conv` for integer inputs, :mod:`.xnor` for binary ones).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .. import ir
from .sparse_plan import signed_width

__all__ = ["Thresholder", "threshold_slice"]


def threshold_slice(threshold, start, step):
    """The :class:`zeroskip.ir.Threshold` of channels ``start, start + step, ...``."""
    return ir.Threshold(threshold.thresholds[start::step], threshold.signs[start::step])


class Thresholder(wiring.Component):
    """Folded batch norm + sign: a sum of products and its channel in, one bit out.

    For channel ``c`` the output is 1 (+1) iff ``signs[c] * (acc + bias[c]) >= thresholds[c]``
    (:class:`zeroskip.ir.Threshold`). Bias, sign and threshold fold into one limit per channel:
    ``acc >= thresholds[c] - bias[c]`` for a positive sign, ``acc <= -thresholds[c] - bias[c]``
    for a negative one; a ROM addressed by the channel holds the limit and the direction, the
    limit clamped to just outside ``acc_bounds`` (beyond, the answer no longer changes).

    Parameters
    ----------
    threshold : zeroskip.ir.Threshold
    bias : numpy.ndarray
        The layer's bias, one entry per channel.
    acc_bounds : tuple of int
        Smallest and largest ``acc`` the engine can produce.
    channels : int

    Members
    -------
    i_stream : ``In(stream.Signature(StructLayout({"acc": signed, "channel": unsigned(n)})))``
        ``n = ceil_log2(channels)``.
    o_stream : ``Out(stream.Signature(unsigned(1)))``
        The output bits, in input order.

    Latency and throughput
    ----------------------
    :attr:`latency` (2) cycles: ROM read, compare. One beat per cycle; the pipeline stalls as a
    whole when ``o_stream`` is not ready (``i_stream.ready`` follows ``o_stream.ready``).
    """

    latency = 2

    def __init__(self, threshold, bias, acc_bounds, channels):
        low, high = acc_bounds
        signs = np.broadcast_to(np.asarray(threshold.signs, np.int64), (channels,))
        thresholds = np.broadcast_to(np.asarray(threshold.thresholds, np.int64), (channels,))
        bias = np.asarray(bias, np.int64)
        limits = np.where(signs > 0, thresholds - bias, -thresholds - bias)
        self.limits = np.clip(limits, low - 1, high + 1)
        self.below = signs < 0
        self.acc_shape = signed(signed_width(low, high))
        self.channels = channels
        payload = data.StructLayout({"acc": self.acc_shape,
                                     "channel": unsigned(ceil_log2(channels))})
        super().__init__({"i_stream": In(stream.Signature(payload)),
                          "o_stream": Out(stream.Signature(unsigned(1)))})

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o_stream.valid | self.o_stream.ready),
                     self.i_stream.ready.eq(advance)]
        layout = data.StructLayout({
            "limit": signed(signed_width(int(self.limits.min()), int(self.limits.max()))),
            "below": 1})
        m.submodules.limits = rom = Memory(
            shape=layout, depth=self.channels,
            init=[{"limit": int(limit), "below": bool(below)}
                  for limit, below in zip(self.limits, self.below)])
        port = rom.read_port()
        m.d.comb += [port.addr.eq(self.i_stream.p.channel), port.en.eq(advance)]

        acc = Signal(self.acc_shape)
        valid = Signal()
        entry = port.data
        bit = Mux(entry.below, acc <= entry.limit, acc >= entry.limit)
        with m.If(advance):
            m.d.sync += [valid.eq(self.i_stream.valid), acc.eq(self.i_stream.p.acc),
                         self.o_stream.valid.eq(valid), self.o_stream.payload.eq(bit)]
        return m
