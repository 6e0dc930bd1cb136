"""Arithmetic helpers of the engines (`zeroskip.hdl.arith`): ``times`` against Python's product
over every input of narrow values and a sample of wide ones, and what Yosys makes of it."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from zeroskip.boards import synth
from zeroskip.hdl.arith import at_most, times
from zeroskip.hdl.verilog import convert


class _Product(wiring.Component):
    """``y = a * constant``, by ``times`` or, with ``plain``, by Amaranth's ``*``."""

    def __init__(self, shape, constants, plain=False):
        self._constants, self._plain = constants, plain
        widths = [len((Signal(shape) * c) if c else Signal(1)) + 1 for c in constants]
        super().__init__({"a": In(shape),
                          **{f"y{i}": Out(signed(w)) for i, w in enumerate(widths)}})

    def elaborate(self, platform):
        m = Module()
        for index, constant in enumerate(self._constants):
            value = self.a * constant if self._plain else times(self.a, constant)
            m.d.comb += getattr(self, f"y{index}").eq(value)
        return m


CONSTANTS = (0, 1, 2, 3, 5, 6, 7, 10, 13, 16, 21, 100, 255)


def rtl_products(shape, values):
    dut = _Product(shape, CONSTANTS)
    got = []

    async def bench(ctx):
        for value in values:
            ctx.set(dut.a, int(value))
            got.append([ctx.get(getattr(dut, f"y{i}")) for i in range(len(CONSTANTS))])

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, np.int64)


def ref_products(values):
    return np.outer(np.asarray(values, np.int64), np.array(CONSTANTS, np.int64))


@pytest.mark.parametrize("shape", [unsigned(1), unsigned(2), unsigned(4), unsigned(5),
                                   unsigned(9), signed(3), signed(8)])
def test_times_is_the_product(shape):
    # Narrow values whole (the table and the shifts), wide ones at their ends and a sample.
    low, high = (-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed else \
        (0, 1 << shape.width)
    values = np.arange(low, high)
    if len(values) > 64:
        values = np.unique(np.concatenate([values[:8], values[-8:],
                                           np.random.default_rng(7).choice(values, 48)]))
    np.testing.assert_array_equal(rtl_products(shape, values), ref_products(values))


def test_times_rejects_a_negative_constant():
    with pytest.raises(ValueError, match="non-negative"):
        times(Signal(4), -3)


def test_times_takes_no_dsp_block_where_a_product_does():
    # A slot index times a tile's filter count, as the accumulators address their tiles: Yosys
    # maps the plain product onto MULT18X18D blocks, ``times`` onto logic.
    shape = unsigned(3)
    plain = synth.synthesize(convert(_Product(shape, (3, 6, 13), plain=True), "plain"),
                             "plain", "ecp5")
    built = synth.synthesize(convert(_Product(shape, (3, 6, 13)), "built"), "built", "ecp5")
    assert plain.dsps > 0
    assert built.dsps == 0


class _AtMost(wiring.Component):
    """``y[k] = at_most(a, k)`` for k = 0, 1, 2."""

    def __init__(self, width):
        super().__init__({"a": In(width), "y": Out(3)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.y[k].eq(at_most(self.a, k)) for k in range(3)]
        return m


def rtl_at_most(width, values):
    dut = _AtMost(width)
    got = []

    async def bench(ctx):
        for value in values:
            ctx.set(dut.a, int(value))
            got.append([ctx.get(dut.y) >> k & 1 for k in range(3)])

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got)


def ref_at_most(values):
    counts = np.array([bin(int(value)).count("1") for value in values])
    return np.stack([counts <= k for k in range(3)], axis=1).astype(int)


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 32])
def test_at_most_counts_the_set_bits(width):
    # Every value of a narrow word; of a wide one, every value with up to 3 bits set (where the
    # answer changes) and a random sample.
    if width <= 8:
        values = list(range(1 << width))
    else:
        bits = range(width)
        values = [0] + [1 << a for a in bits] + [1 << a | 1 << b for a in bits for b in bits
                                                  if a < b]
        values += [1 << a | 1 << b | 1 << c for a, b, c in
                   np.random.default_rng(3).choice(width, (200, 3))]
        values += [int(v) for v in np.random.default_rng(5).integers(0, 1 << width, 200,
                                                                      dtype=np.uint64)]
    np.testing.assert_array_equal(rtl_at_most(width, values), ref_at_most(values))


def test_at_most_rejects_a_limit_past_two():
    with pytest.raises(ValueError, match="limit"):
        at_most(Signal(4), 3)
