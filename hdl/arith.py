"""Arithmetic built as balanced trees: shallow logic, few simulator steps."""

from __future__ import annotations

from amaranth.hdl import Array, Const, Value

__all__ = ["balanced_sum", "popcount", "times"]


def balanced_sum(terms):
    """The sum of ``terms`` as a balanced tree of adders."""
    terms = list(terms) or [Const(0, 1)]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def popcount(value):
    """Set bits of ``value``."""
    return balanced_sum(value[i] for i in range(len(value)))


def times(value, constant):
    """``value * constant`` for a non-negative integer ``constant``, without a multiplier.

    Yosys maps a product with a constant onto a DSP block like any other (an address's 2-bit
    slot times 6 took a MULT18X18D, whose 3.9 ns then began the longest path of ResNet-8's
    pipeline on the ECP5). A power of two is a shift; a value of at most 4 bits indexes a table
    of its multiples (a LUT4 per result bit); a wider one is a sum of shifted copies.
    """
    value = Value.cast(value)
    if constant < 0:
        raise ValueError(f"constant must be a non-negative integer, got {constant}")
    if constant == 0:
        return Const(0, 1)
    shift = constant.bit_length() - 1
    if constant == 1 << shift:
        return value << shift
    if not value.shape().signed and len(value) <= 4:
        return Array(Const(index * constant) for index in range(1 << len(value)))[value]
    return balanced_sum(value << bit for bit in range(constant.bit_length())
                        if constant >> bit & 1)
