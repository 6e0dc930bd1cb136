"""Arithmetic built as balanced trees: shallow logic, few simulator steps."""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Signal, Value

__all__ = ["at_most", "balanced_sum", "group_counts", "popcount", "prefix_or", "times"]


def balanced_sum(terms):
    """The sum of ``terms`` as a balanced tree of adders."""
    terms = list(terms) or [Const(0, 1)]
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def group_counts(value):
    """The set bits of each 4-bit group of ``value`` (the last group may be narrower), each a
    function of its four bits alone: a LUT4 per count bit, no carry chain."""
    value = Value.cast(value)
    counts = []
    for low in range(0, len(value), 4):
        bits = [value[i] for i in range(low, min(low + 4, len(value)))]
        if len(bits) < 4:
            counts.append(balanced_sum(bits))
            continue
        b0, b1, b2, b3 = bits
        all_four = b0 & b1 & b2 & b3
        two_or_more = (b0 & b1) | (b0 & b2) | (b0 & b3) | (b1 & b2) | (b1 & b3) | (b2 & b3)
        counts.append(Cat(b0 ^ b1 ^ b2 ^ b3, two_or_more & ~all_four, all_four))
    return counts


def popcount(value):
    """Set bits of ``value``: the balanced sum of its :func:`group_counts`. (Within one cycle
    Yosys's ABC restructures the groups freely; registered between the two, as the conv
    issuer does, they bound the logic of each cycle.)"""
    return balanced_sum(group_counts(value))


def at_most(m, value, limit):
    """Whether at most ``limit`` (0, 1 or 2) bits of ``value`` are set: a tree of counts that
    stop at 3, two bits each, so every node is a few LUT4s and no carry chain grows with the
    width (``bits & (bits - 1) == 0`` is a subtraction across the whole word). Each node is a
    pair of signals driven in ``m``'s comb domain: a node reads its children several times,
    and as expressions they would be copied into every reader, doubling at each level."""
    if limit not in (0, 1, 2):
        raise ValueError(f"limit must be 0, 1 or 2, got {limit!r}")
    value = Value.cast(value)
    counts = [(value[i], Const(0, 1)) for i in range(len(value))] or [(Const(0, 1), Const(0, 1))]
    while len(counts) > 1:
        merged = []
        for i in range(0, len(counts) - 1, 2):
            (a0, a1), (b0, b1) = counts[i], counts[i + 1]
            low, high = Signal(name="count_low"), Signal(name="count_high")
            # a + b, held at 3: the high bit is any 2 among them, the low one an odd sum or 3.
            three = (a1 & a0) | (b1 & b0) | (a1 & (b1 | b0)) | (a0 & b1)
            m.d.comb += [low.eq((a0 ^ b0) | three), high.eq(a1 | b1 | (a0 & b0))]
            merged.append((low, high))
        if len(counts) % 2:
            merged.append(counts[-1])
        counts = merged
    low, high = counts[0]
    return [~(low | high), ~high, ~(high & low)][limit]


def prefix_or(m, bits):
    """Prefix OR: bit ``i`` is set when any of ``bits[0..i]`` is, by doubling (log depth, no
    carry chain). Each level is a signal driven in ``m``'s comb domain: a level reads the one
    before twice, and as expressions the copies would double at every level."""
    prefix = Value.cast(bits)
    step = 1
    while step < len(prefix):
        level = Signal(len(prefix), name="prefix_or")
        m.d.comb += level.eq(prefix | (prefix << step)[:len(prefix)])
        prefix, step = level, step * 2
    return prefix


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
