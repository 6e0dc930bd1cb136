"""The FPGA parts zeroskip builds for: what each holds, and how its tools are asked for it.

Shared by the compiler (``--target``: what must fit) and the boards (``zeroskip synth``,
``build-board``). Capacities from the Lattice data sheets (iCE40 UltraPlus DS1056, iCE40 LP/HX
DS1040, ECP5 DS1044); nextpnr's own counts agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ZeroskipError

__all__ = ["ECP5_LUTRAM_SITES", "ICE40_NEXTPNR_OPTIONS", "ICE40_SYNTH_OPTIONS", "PARTS",
           "RESOURCES", "Part", "part"]

#: The resources a fit is decided on, with the words messages use.
RESOURCES = {"luts": "LUTs", "ffs": "FFs", "brams": "RAM blocks", "dsps": "DSPs",
             "spram": "SPRAM blocks"}

#: LUT4 sites of one ECP5 ``TRELLIS_DPR16X4`` (16x4 LUT RAM): four in the two slices that hold
#: it, two in the slice beside them that writes it (``TRELLIS_RAMW``), which holds no logic; as
#: nextpnr counts them.
ECP5_LUTRAM_SITES = 6

#: ``synth_ice40`` options every iCE40 design gets: multipliers onto SB_MAC16 blocks, and a
#: flip-flop whose enable drives fewer than four flip-flops takes it as logic instead: an iCE40
#: logic block's eight cells share one enable, and with hundreds of small enables nextpnr cannot
#: legalise the binary digits net on the UP5K at 79 % of its cells (with this it places, 2 %
#: fewer cells).
ICE40_SYNTH_OPTIONS = "-dsp -dffe_min_ce_use 4"

#: ``nextpnr-ice40`` options every iCE40 design gets: the heap placer's timing weight 30 (its
#: default 10). On the four sequential UP5K designs (the nets of
#: ``benchmarks/sequential_bench.py``), the same netlists at seeds 1 to 3: mean Fmax 41.1
#: against 39.8 MHz, the lowest 38.4 against 35.0 (ResNet-8: 40.8 against 36.6 on average; the
#: DS-CNN 39.6 against 40.5, within a seed's spread of 3 MHz).
ICE40_NEXTPNR_OPTIONS = ("--placer-heap-timingweight", "30")


@dataclass(frozen=True)
class Part:
    """One FPGA part.

    Attributes
    ----------
    name : str
        zeroskip's name (``--target``).
    family : str
        ``"ice40"`` or ``"ecp5"``: the Yosys ``synth_<family>`` and the nextpnr to use.
    device, package : str
        As the data sheet names them.
    nextpnr_args : tuple of str
        The device and package arguments of ``nextpnr-<family>``.
    nextpnr_options : tuple of str
        Further ``nextpnr-<family>`` arguments (:data:`ICE40_NEXTPNR_OPTIONS`).
    yosys_options : str
        Appended to ``synth_<family>``.
    capacity : dict of str to int
        Per resource of :data:`RESOURCES`: LUT4 sites (logic cells on iCE40), flip-flops,
        block RAMs (``SB_RAM40_4K`` / ``DP16KD``), multipliers (``SB_MAC16`` /
        ``MULT18X18D``), SPRAMs.
    default_mhz : float
        The clock nextpnr aims for unless told otherwise.
    bram_bits : int
        Bits of one RAM block (iCE40 SB_RAM40_4K: 4,096; ECP5 DP16KD: 18,432).
    """

    name: str
    family: str
    device: str
    package: str
    nextpnr_args: tuple
    yosys_options: str
    capacity: dict
    default_mhz: float
    bram_bits: int
    nextpnr_options: tuple = ()


def _capacity(luts, brams, dsps, spram=0):
    return {"luts": luts, "ffs": luts, "brams": brams, "dsps": dsps, "spram": spram}


#: The parts zeroskip knows, by name.
PARTS = {p.name: p for p in (
    # Not ``-dff`` (ABC across flip-flops): 4 to 6 % fewer logic cells on the sequential
    # engine, but ABC9 under WebAssembly then exhausts its call stack on some designs (the
    # digits-shaped net behind the host link).
    Part("ice40-up5k", "ice40", "iCE40UP5K", "SG48", ("--up5k", "--package", "sg48"),
         f"-device u -spram {ICE40_SYNTH_OPTIONS}", _capacity(5280, 30, 8, 4), 40.0, 4096,
         ICE40_NEXTPNR_OPTIONS),
    Part("ice40-hx8k", "ice40", "iCE40HX8K", "CT256", ("--hx8k", "--package", "ct256"),
         ICE40_SYNTH_OPTIONS, _capacity(7680, 32, 0), 40.0, 4096, ICE40_NEXTPNR_OPTIONS),
    Part("ecp5-25k", "ecp5", "LFE5U-25F", "CABGA256", ("--25k", "--package", "CABGA256"),
         "", _capacity(24288, 56, 28), 120.0, 18432),
    Part("ecp5-85k", "ecp5", "LFE5U-85F", "CABGA381", ("--85k", "--package", "CABGA381"),
         "", _capacity(83640, 208, 156), 120.0, 18432),
)}


def part(name, option="--target"):
    """The :class:`Part` called ``name``; a :class:`ZeroskipError` naming the known ones."""
    if not isinstance(name, str) or name not in PARTS:
        raise ZeroskipError(f"{option}: unknown part {name!r}; known: {', '.join(PARTS)}")
    return PARTS[name]
