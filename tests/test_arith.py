# amaranth: UnusedElaboratable=no
"""Arithmetic helpers of the engines (`zeroskip.hdl.arith`): ``times``, ``at_most``,
``popcount`` and ``prefix_or`` against Python over every input of narrow values and a sample of wide ones, what
Yosys makes of ``times``, and the size of the trees' netlists."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from zeroskip.boards import synth
from zeroskip.hdl.arith import at_most, popcount, prefix_or, times
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


def settled(dut, values, read):
    """``read(ctx)`` after setting ``dut.a`` to each of ``values``, in the simulator."""
    got = []

    async def bench(ctx):
        for value in values:
            ctx.set(dut.a, int(value))
            got.append(read(ctx))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return got


def rtl_products(shape, values):
    dut = _Product(shape, CONSTANTS)
    return np.array(settled(dut, values, lambda ctx: [ctx.get(getattr(dut, f"y{i}"))
                                                      for i in range(len(CONSTANTS))]),
                    np.int64)


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
        m.d.comb += [self.y[k].eq(at_most(m, self.a, k)) for k in range(3)]
        return m


def rtl_at_most(width, values):
    dut = _AtMost(width)
    return np.array(settled(dut, values, lambda ctx: [ctx.get(dut.y) >> k & 1
                                                      for k in range(3)]))


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


class _Popcount(wiring.Component):
    """``y = popcount(a)``."""

    def __init__(self, width):
        super().__init__({"a": In(width), "y": Out(width.bit_length())})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(popcount(self.a))
        return m


def rtl_popcount(width, values):
    dut = _Popcount(width)
    return np.array(settled(dut, values, lambda ctx: ctx.get(dut.y)))


def ref_popcount(values):
    return np.array([bin(int(value)).count("1") for value in values])


@pytest.mark.parametrize("width", [1, 3, 4, 7, 8, 16, 33])
def test_popcount_counts_the_set_bits(width):
    # Every value of a narrow word (the 4-bit groups and a partial one); of a wide one, every
    # value with one bit set, all bits set and a random sample.
    if width <= 8:
        values = list(range(1 << width))
    else:
        values = [0, (1 << width) - 1] + [1 << a for a in range(width)]
        values += [int(v) for v in np.random.default_rng(7).integers(0, 1 << min(width, 63), 300,
                                                                      dtype=np.uint64)]
        values += [(1 << width) - 1 - (1 << a) for a in range(width)]
    np.testing.assert_array_equal(rtl_popcount(width, values), ref_popcount(values))


def test_at_most_rejects_a_limit_past_two():
    with pytest.raises(ValueError, match="limit"):
        at_most(Module(), Signal(4), 3)


class _PrefixOr(wiring.Component):
    """``y = prefix_or(a)``."""

    def __init__(self, width):
        super().__init__({"a": In(width), "y": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(prefix_or(m, self.a))
        return m


def rtl_prefix_or(width, values):
    dut = _PrefixOr(width)
    return settled(dut, values, lambda ctx: ctx.get(dut.y))


def ref_prefix_or(width, values):
    return [sum(1 << i for i in range(width) if value & ((2 << i) - 1)) for value in values]


@pytest.mark.parametrize("width", [1, 2, 5, 8, 40])
def test_prefix_or_sets_every_bit_from_the_lowest_set_one_up(width):
    rng = np.random.default_rng(width)
    values = list(range(1 << width)) if width <= 8 else \
        [0, 1, 1 << (width - 1)] + [1 << int(a) for a in rng.integers(0, width, 40)] + \
        [int(v) for v in rng.integers(0, 1 << 62, 100, dtype=np.uint64)]
    assert rtl_prefix_or(width, values) == ref_prefix_or(width, values)


@pytest.mark.parametrize("component", [_AtMost, _PrefixOr])
def test_trees_grow_with_the_width_not_with_its_powers(component):
    """A node that reads its children several times must read signals: as expressions they
    would be copied into every reader, and the netlist (and every conversion of an engine with
    a 288-bit mask) would grow exponentially with the depth."""
    sizes = {width: len(rtlil.convert(component(width))) for width in (16, 32)}
    assert sizes[32] <= 3 * sizes[16], sizes  # as expressions: 7.8 times (at_most)
