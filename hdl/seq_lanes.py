"""The lanes: 8 multiply-accumulates on one broadcast weight, and the word they close.

Every lane multiplies its activation by the entry's weight (256 times it for an add's high
digit) and adds the product to its sum; a filter's first entry adds its bias (from the bias
cache, written by the entry walker) with its product, its last closes the *word*: the 8 sums,
which lanes hold an output, the filter. Lanes on a DSP compute ``a * w + bias`` in one block (a
SB_MAC16 on iCE40: registered inputs, registered output); a lane built from logic
(``lut_lanes``, where the part has too few multipliers) sums a radix-4 Booth recoding of the
weight in two stages to the same timing.

Pipeline: operand (L0) | inputs (L1) | product (L2) | sum = word (3 cycles). One word is held
until taken; the lanes stop (``i_stream.ready`` low, a register) a cycle before a filter's last
entry would close a word the slot cannot take.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .seq_entries import param_write_layout
from .seq_gather import operand_layout
from .seq_memory import ram
from .seq_plan import BANKS

__all__ = ["Lanes", "booth_product", "word_layout"]


def word_layout(w):
    """A closed word, laid out for the scanner: position ``p`` holds lane ``p - shift`` (``shift``:
    the word's first pixel is odd), so that slot ``s`` is positions ``2s`` and ``2s + 1``. Per
    position the sum, whether it holds an output (``valid``) and whether that output needs
    requantizing (``pending``); the last slot, the count of lanes, the filter."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(w.acc_bits), BANKS + 1),
        "valid": unsigned(BANKS + 1), "pending": unsigned(BANKS + 1),
        "last_slot": unsigned(3), "count": unsigned(4), "filter": unsigned(w.cache_bits),
    })


def close_word(acc, out_valid, filter, odd, *, skip, flat_out):
    """The :func:`word_layout` value of the lanes' sums ``acc`` (lane 0 first), the lanes that
    hold an output, the filter and whether the first pixel is odd, under a step's ``skip`` (a
    negative sum needs no requantizing) and ``flat_out`` (the filter's parity is the shift)."""
    shift = filter & 1 if flat_out else int(odd)
    positions = [0] * (BANKS + 1)
    valid = pending = 0
    for lane, value in enumerate(acc):
        positions[lane + shift] = value
        if out_valid >> lane & 1:
            valid |= 1 << (lane + shift)
            if not (skip and value < 0):
                pending |= 1 << (lane + shift)
    last_lane = max(out_valid.bit_length() - 1, 0)
    return {"acc": positions, "valid": valid, "pending": pending,
            "last_slot": (last_lane + shift) >> 1, "count": last_lane + 1, "filter": filter}


def _booth_digits(weight):
    """Radix-4 Booth digits of an 8-bit signed weight: (negate, one, two) for k = 0..3,
    weight = sum(d_k * 4**k) with d_k in -2..2."""
    bits = Cat(Const(0, 1), weight)     # w[-1] = 0
    digits = []
    for k in range(4):
        low, mid, high = bits[2 * k], bits[2 * k + 1], bits[2 * k + 2]
        one = low ^ mid
        two = (high & ~mid & ~low) | (~high & mid & low)
        digits.append((high & ~(mid & low), one, two))
    return digits


def booth_product(m, activation, weight, shift8, name):
    """``activation * weight`` (9-bit and 8-bit signed) as two registered partial sums (the
    first pipeline stage of a logic lane); ``shift8`` multiplies by 256. Returns the signals
    ``low`` and ``high`` with ``low + (high << 4)`` the product."""
    partial = []
    for k, (negate, one, two) in enumerate(_booth_digits(weight)):
        magnitude = Mux(two, activation << 1, Mux(one, activation, 0))
        partial.append(Mux(negate, -magnitude, magnitude))
    width = 9 + 8 + 1
    low = Signal(signed(width + 8), name=f"{name}_low")
    high = Signal(signed(width + 8), name=f"{name}_high")
    low_sum = partial[0] + (partial[1] << 2)
    high_sum = partial[2] + (partial[3] << 2)
    return low, high, [low.eq(Mux(shift8, low_sum << 8, low_sum)),
                       high.eq(Mux(shift8, high_sum << 8, high_sum))]


class Lanes(wiring.Component):
    """8 lanes of multiply-accumulate.

    Members
    -------
    max_mode : In(1)
        Keep each lane's largest product (activations of a max pool, all at least 0) instead
        of the sum.
    skip, flat_out : In(1)
        The step's: a negative sum needs no requantizing; the filter's parity shifts the word.
    i_stream : In(stream.Signature(operand_layout(w)))
    o_stream : Out(stream.Signature(word_layout(w)))
    params : In(stream.Signature(param_write_layout(w)))
        Bias-cache writes (taken every cycle).
    idle : Out(1)
        Nothing in flight, no word held.

    Parameters
    ----------
    w : Widths
    lanes : int
        The lanes built (1, 2, 4 or 8): a program of fewer lanes never gives the others an
        output, so their sums are constant zeros.
    lut_lanes : iterable of int
        Lanes whose multiplier is logic rather than a DSP block.
    max_pool, shift8 : bool
        Build the max mode, and the weight's shift by 8 (an add's high digits): only when the
        program has them.
    """

    def __init__(self, w, lut_lanes=(), *, lanes=BANKS, max_pool=True, shift8=True):
        self.w = w
        if lanes not in (1, 2, 4, BANKS) or isinstance(lanes, bool):
            raise ValueError(f"lanes must be 1, 2, 4 or {BANKS}, got {lanes!r}")
        self.lanes = lanes
        self.max_pool, self.shift8 = max_pool, shift8
        self.lut_lanes = frozenset(lut_lanes)
        if not self.lut_lanes <= set(range(lanes)):
            raise ValueError(f"lut_lanes must name lanes 0..{lanes - 1}, got "
                             f"{sorted(self.lut_lanes)}")
        super().__init__({
            "max_mode": In(1), "skip": In(1), "flat_out": In(1),
            "i_stream": In(stream.Signature(operand_layout(w))),
            "o_stream": Out(stream.Signature(word_layout(w))),
            "params": In(stream.Signature(param_write_layout(w))), "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.w
        operand, out = self.i_stream.payload, self.o_stream
        freeze = Signal()
        advance = ~freeze
        m.d.comb += self.i_stream.ready.eq(advance)

        m.submodules.biases = biases = ram(signed(24), 1 << w.cache_bits)
        bias_write, bias_read = biases.write_port(), biases.read_port()
        m.d.comb += [bias_write.addr.eq(self.params.payload.index),
                     bias_write.data.eq(self.params.payload.bias),
                     bias_write.en.eq(self.params.valid), self.params.ready.eq(1),
                     bias_read.addr.eq(operand.filter), bias_read.en.eq(advance)]

        # L1: inputs.
        flags = data.StructLayout({"valid": 1, "first": 1, "last": 1, "out_valid": unsigned(8),
                                   "filter": unsigned(w.cache_bits), "odd": 1})
        l1, l2 = Signal(flags), Signal(flags)
        # The weight stays 8 bits and an add's high digit shifts the product instead: a 9 x 8
        # bit product is one SB_MAC16 (16 x 16); a 17-bit weight would take two.
        weight = Signal(signed(8))
        shift = Signal()
        acts = [Signal(signed(9), name=f"act_{i}") for i in range(BANKS)]
        with m.If(advance):
            m.d.sync += [l1.valid.eq(self.i_stream.valid), l1.first.eq(operand.first),
                         l1.last.eq(operand.last), l1.out_valid.eq(operand.out_valid),
                         l1.filter.eq(operand.filter), l1.odd.eq(operand.odd),
                         weight.eq(operand.weight),
                         shift.eq(operand.shift8 if self.shift8 else 0)]
            m.d.sync += [acts[i].eq(operand.acts[i]) for i in range(self.lanes)
                         if i not in self.lut_lanes]
        bias = Mux(l1.first, bias_read.data, 0)

        # L2: products (bias added on a filter's first entry).
        products = [Signal(signed(w.acc_bits + 1), name=f"product_{i}") for i in range(BANKS)]
        for i in range(self.lanes):
            if i in self.lut_lanes:
                low, high, stage = booth_product(m, operand.acts[i], operand.weight,
                                                 operand.shift8 if self.shift8 else 0,
                                                 f"lane_{i}")
                with m.If(advance):
                    m.d.sync += stage
                    m.d.sync += products[i].eq(low + (high << 4) + bias)
            else:
                with m.If(advance):
                    # A signal, so that the multiply is one cell however often it is used.
                    product = Signal(signed(17), name=f"multiply_{i}")
                    m.d.comb += product.eq(acts[i] * weight)
                    if self.shift8:
                        product = Mux(shift, product << 8, product)
                    m.d.sync += products[i].eq(product + bias)
        with m.If(advance):
            m.d.sync += l2.eq(l1)

        # L3: sums; a filter's last entry closes the word into the slot, laid out for the
        # scanner (:func:`word_layout`) here, so that the scanner's logic starts at registers.
        sums = [Signal(signed(w.acc_bits), name=f"sum_{i}") for i in range(BANKS)]
        slot_full = Signal()
        taken = out.valid & out.ready
        closing = l2.valid & l2.last & advance
        totals = []
        for i in range(self.lanes):
            total = sums[i] + products[i]
            if self.max_pool:
                # A max pool's values are bytes: the comparison and the choice on 9 bits.
                larger = Mux(products[i][:9] > sums[i][:9], products[i][:9], sums[i][:9])
                total = Cat(Mux(self.max_mode, larger, total[:9]), total[9:])
            with m.If(advance & l2.valid):
                m.d.sync += sums[i].eq(Mux(l2.last, 0, total))
            totals.append(total[:w.acc_bits].as_signed())
        shift = Mux(self.flat_out, l2.filter[0], l2.odd)
        last_lane = Signal(3)
        for i in range(self.lanes):
            with m.If(l2.out_valid[i]):
                m.d.comb += last_lane.eq(i)
        word = out.payload
        with m.If(closing):
            for p in range(BANKS + 1):
                unshifted = (totals[p], l2.out_valid[p]) if p < self.lanes else (0, 0)
                shifted = (totals[p - 1], l2.out_valid[p - 1]) \
                    if 1 <= p <= self.lanes else (0, 0)
                value = Mux(shift, shifted[0], unshifted[0])
                valid = Mux(shift, shifted[1], unshifted[1])
                m.d.sync += [word.acc[p].eq(value), word.valid[p].eq(valid),
                             word.pending[p].eq(valid & ~(self.skip & value[-1]))]
            m.d.sync += [word.filter.eq(l2.filter), word.count.eq(last_lane + 1),
                         word.last_slot.eq((last_lane + shift) >> 1)]
        full_next = (slot_full & ~taken) | closing
        close_next = Mux(advance, l1.valid & l1.last, l2.valid & l2.last)
        m.d.sync += [slot_full.eq(full_next),
                     # Hold while the close next in line would find the slot still full.
                     freeze.eq(close_next & full_next)]
        m.d.comb += [out.valid.eq(slot_full), self.idle.eq(~l1.valid & ~l2.valid & ~slot_full)]
        return m
