"""The gather: one line-buffer read per entry, the 8 bytes turned to the 8 lanes.

A request (:func:`~zeroskip.hdl.seq_entries.request_layout`) names two addresses: bank ``b``
reads ``addr1`` when ``b < rotate`` and ``addr0`` otherwise, and lane ``i`` takes bank
``(rotate + i) % 8``. A lane outside the source, or past the output's end, takes 0; the others
their byte sign-extended when the source is signed.

Pipeline: the read (the request's cycle) | the bytes registered | rotated = output. A request
whose ``group_last`` is set pulses ``group_done`` as its read is made.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .seq_entries import request_layout
from .seq_memory import line_read_signature
from .seq_plan import BANKS

__all__ = ["Gather", "operand_layout"]


def operand_layout(w):
    """One entry as the lanes take it."""
    return data.StructLayout({
        "acts": data.ArrayLayout(signed(9), BANKS), "weight": signed(8), "shift8": 1,
        "first": 1, "last": 1, "filter": unsigned(w.cache_bits), "out_valid": unsigned(8),
        "odd": 1,
    })


class Gather(wiring.Component):
    """Line-buffer reads for the lanes.

    Members
    -------
    max_mode : In(1)
        A max pool: bytes offset by 128 when signed, 0 outside (the least of any value).
    i_stream : In(stream.Signature(request_layout(w)))
    o_stream : Out(stream.Signature(operand_layout(w)))
        Moves as a whole with ``o_stream.ready`` (``i_stream.ready`` follows it).
    lb : Out(line_read_signature(w.lb_bits))
    group_done : Out(1)
    idle : Out(1)
        Nothing in flight.
    """

    def __init__(self, w, *, max_pool=True):
        self.w, self.max_pool = w, max_pool
        super().__init__({
            "max_mode": In(1), "i_stream": In(stream.Signature(request_layout(w))),
            "o_stream": Out(stream.Signature(operand_layout(w))),
            "lb": Out(line_read_signature(w.lb_bits)),
            "group_done": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.w
        request, out = self.i_stream.payload, self.o_stream
        advance = Signal()
        m.d.comb += [advance.eq(~out.valid | out.ready), self.i_stream.ready.eq(advance),
                     self.lb.en.eq(advance)]
        for bank in range(BANKS):
            # Bank b reads the next slot for lanes rotated past it (never the last bank).
            above = request.rotate > bank if bank < BANKS - 1 else 0
            m.d.comb += self.lb.addr[bank].eq(Mux(above, request.addr1, request.addr0))
        m.d.comb += self.group_done.eq(self.i_stream.valid & advance & request.group_last)

        # The bytes arrive with the request that read them.
        read_layout = data.StructLayout({
            "valid": 1, "rotate": unsigned(3), "inside": unsigned(8), "signed": 1,
            "weight": signed(8), "shift8": 1, "first": 1, "last": 1,
            "filter": unsigned(w.cache_bits), "out_valid": unsigned(8), "odd": 1})
        read = Signal(read_layout)
        with m.If(advance):
            m.d.sync += [read.valid.eq(self.i_stream.valid), read.rotate.eq(request.rotate),
                         read.inside.eq(request.inside), read.signed.eq(request.signed),
                         read.weight.eq(request.weight), read.shift8.eq(request.shift8),
                         read.first.eq(request.first), read.last.eq(request.last),
                         read.filter.eq(request.filter), read.out_valid.eq(request.out_valid),
                         read.odd.eq(request.odd)]
        # Rotate in three stages of two-way choices (by 1, 2, 4 banks).
        lanes = [self.lb.data[bank] for bank in range(BANKS)]
        for level in range(3):
            step = 1 << level
            lanes = [Mux(read.rotate[level], lanes[(i + step) % BANKS], lanes[i])
                     for i in range(BANKS)]
        p = out.payload
        m.d.comb += self.idle.eq(~read.valid & ~out.valid)
        with m.If(advance):
            m.d.sync += [out.valid.eq(read.valid), p.weight.eq(read.weight),
                         p.shift8.eq(read.shift8), p.first.eq(read.first), p.last.eq(read.last),
                         p.filter.eq(read.filter), p.out_valid.eq(read.out_valid),
                         p.odd.eq(read.odd)]
            for i in range(BANKS):
                value = Mux(read.signed, lanes[i].as_signed(), lanes[i].as_unsigned())
                if self.max_pool:
                    value = Mux(self.max_mode, (lanes[i] ^ (read.signed << 7)).as_unsigned(),
                                value)
                m.d.sync += p.acts[i].eq(Mux(read.inside[i], value, 0))
        return m
