"""FPGA PLL settings: the dividers that turn a board oscillator into the design clock.

:func:`ice40_pll` (SB_PLL40_* in SIMPLE feedback) and :func:`ecp5_pll` (EHXPLLL with CLKOP fed
back) search the dividers as ``icepll`` and ``ecppll`` do and return the setting those tools
print for the same frequencies; a clock no setting reaches within :data:`CLOCK_TOLERANCE` is a
:class:`~zeroskip.errors.ZeroskipError` naming the nearest achievable ones. Pure Python: the
board tops instantiate the PLL cells from these settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..errors import ZeroskipError

__all__ = ["CLOCK_TOLERANCE", "ECP5PLL", "ICE40PLL", "ecp5_pll", "ice40_pll"]

#: A requested clock is reachable when a PLL setting comes this close (relative).
CLOCK_TOLERANCE = 0.005


@dataclass(frozen=True)
class ICE40PLL:
    """SB_PLL40_* settings in SIMPLE feedback: f_out = f_in / (divr + 1) * (divf + 1) / 2**divq.

    Frequencies in MHz; ``filter_range`` is the loop filter setting for ``f_pfd``.
    """

    f_in: float
    f_out: float
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_pfd(self):
        return self.f_in / (self.divr + 1)

    @property
    def f_vco(self):
        return self.f_pfd * (self.divf + 1)


@dataclass(frozen=True)
class ECP5PLL:
    """EHXPLLL settings with CLKOP fed back: f_out = f_in / clki_div * clkfb_div.

    Frequencies in MHz; ``clkop_div`` sets the VCO (``f_out * clkop_div``), ``clkop_cphase`` the
    180 degree phase shift ecppll (and Lattice's tools) give the primary output.
    """

    f_in: float
    f_out: float
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_vco(self):
        return self.f_out * self.clkop_div

    @property
    def clkop_cphase(self):
        return self.clkop_div // 2


# Limits from icepll (iCE40 sysCLOCK PLL) and ecppll (ECP5 sysCLOCK PLL), in MHz.
_ICE40_IN, _ICE40_PFD, _ICE40_VCO, _ICE40_OUT = (10, 133), (10, 133), (533, 1066), (16, 275)
_ECP5_IN, _ECP5_PFD, _ECP5_VCO, _ECP5_OUT = (8, 400), (3.125, 400), (400, 800), (10, 400)


def _within(value, limits):
    return limits[0] <= value <= limits[1]


def _ice40_settings(f_in):
    """Every SIMPLE-feedback setting as (f_out, (divr, divf, divq)), in icepll's search order.

    Exact rationals, so that equally close settings tie exactly and the first one wins.
    """
    f_in = Fraction(f_in)
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not _within(f_pfd, _ICE40_PFD):
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not _within(f_vco, _ICE40_VCO):
                continue
            for divq in range(1, 7):
                yield f_vco / 2 ** divq, (divr, divf, divq)


def _ecp5_settings(f_in):
    """Every CLKOP-feedback setting as (f_out, (clki_div, clkfb_div, clkop_div)), in ecppll's
    search order (exact rationals, as for the iCE40)."""
    f_in = Fraction(f_in)
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not _within(f_pfd, _ECP5_PFD):
            continue
        for clkfb_div in range(1, 81):
            f_out = f_pfd * clkfb_div
            # Only the output dividers that put the VCO (f_out * clkop_div) in range.
            lowest = max(1, math.ceil(_ECP5_VCO[0] / f_out))
            for clkop_div in range(lowest, min(128, math.floor(_ECP5_VCO[1] / f_out)) + 1):
                yield f_out, (clki_div, clkfb_div, clkop_div)


def _check_input(family, f_in, in_limits):
    if not _within(f_in, in_limits):
        raise ZeroskipError(f"{family} PLL input {f_in:g} MHz is outside {in_limits[0]} to "
                            f"{in_limits[1]} MHz")


def _check_reachable(family, f_in, f_out, best, achievable, out_limits):
    if abs(best - f_out) <= CLOCK_TOLERANCE * f_out and _within(best, out_limits):
        return
    below = max((f for f in achievable if f < f_out), default=None)
    above = min((f for f in achievable if f > f_out), default=None)
    nearest = " and ".join(f"{f:.3f} MHz" for f in (below, above) if f is not None)
    raise ZeroskipError(f"--clock: {f_out:g} MHz is not reachable by the {family} PLL from the "
                        f"{f_in:g} MHz oscillator (output {out_limits[0]:g} to "
                        f"{out_limits[1]:g} MHz); nearest achievable: {nearest}")


def ice40_pll(f_in, f_out):
    """The SB_PLL40_PAD setting icepll chooses for ``f_in`` -> ``f_out`` (MHz).

    Raises
    ------
    ZeroskipError
        If no setting comes within :data:`CLOCK_TOLERANCE` of ``f_out``; the message names the
        nearest achievable frequencies.
    """
    _check_input("iCE40", f_in, _ICE40_IN)
    settings = [(f, s) for f, s in _ice40_settings(f_in) if _within(f, _ICE40_OUT)]
    best_f, best = settings[0]
    for f, setting in settings:  # the first of the closest, as icepll keeps it
        if abs(f - f_out) < abs(best_f - f_out):
            best_f, best = f, setting
    _check_reachable("iCE40", f_in, f_out, float(best_f), {float(f) for f, _ in settings},
                     _ICE40_OUT)
    divr, divf, divq = best
    f_pfd = f_in / (divr + 1)
    filter_range = next(i + 1 for i, top in enumerate((17, 26, 44, 66, 101, float("inf")))
                        if f_pfd < top)
    return ICE40PLL(f_in, float(best_f), divr, divf, divq, filter_range)


def ecp5_pll(f_in, f_out):
    """The EHXPLLL setting ecppll chooses for ``f_in`` -> ``f_out`` (MHz).

    Among equally close settings the one with its VCO nearest 600 MHz wins, as in ecppll.

    Raises
    ------
    ZeroskipError
        If no setting comes within :data:`CLOCK_TOLERANCE` of ``f_out``; the message names the
        nearest achievable frequencies.
    """
    _check_input("ECP5", f_in, _ECP5_IN)
    best_f, best, best_vco = None, None, None
    achievable = set()
    for f, setting in _ecp5_settings(f_in):
        achievable.add(float(f))
        vco = f * setting[2]
        error = abs(f - f_out)
        if best is None or error < abs(best_f - f_out) or (
                error == abs(best_f - f_out) and abs(vco - 600) < abs(best_vco - 600)):
            best_f, best, best_vco = f, setting, vco
    _check_reachable("ECP5", f_in, f_out, float(best_f),
                     {f for f in achievable if _within(f, _ECP5_OUT)}, _ECP5_OUT)
    return ECP5PLL(f_in, float(best_f), *best)
