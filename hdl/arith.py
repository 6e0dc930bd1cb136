"""Arithmetic built as balanced trees: shallow logic, few simulator steps."""

from __future__ import annotations

from amaranth.hdl import Const

__all__ = ["balanced_sum", "popcount"]


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
