"""8N1 UART receiver and transmitter: one start bit, eight data bits LSB first, one stop bit.

Both run from the design's clock at ``divisor`` clocks per bit (:func:`clocks_per_bit` picks it
from the clock and the baud rate and refuses pairs a UART cannot meet). The lines idle high.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MIN_CLOCKS_PER_BIT", "MAX_BAUD_ERROR", "UARTRx", "UARTTx", "clocks_per_bit"]

#: Fewest clocks per bit: the receiver samples mid-bit after a 2-flop synchroniser, so it needs a
#: few clocks per bit to find the middle.
MIN_CLOCKS_PER_BIT = 4

#: Largest relative difference between the baud rate asked for and the one the divisor gives:
#: the stop bit of a 10-bit frame is sampled 9.5 bits after the start edge, so the two ends may
#: drift apart by about 5% in all; each end gets half of that, less a margin.
MAX_BAUD_ERROR = 0.02


def clocks_per_bit(clk_freq, baud):
    """The divisor for ``baud`` at ``clk_freq`` Hz, rounded to the nearest integer.

    Raises
    ------
    ValueError
        If either is not a positive number, the divisor is under :data:`MIN_CLOCKS_PER_BIT`, or
        the baud rate it gives is off by more than :data:`MAX_BAUD_ERROR`.
    """
    for name, value in (("clk_freq", clk_freq), ("baud", baud)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    divisor = round(clk_freq / baud)
    if divisor < MIN_CLOCKS_PER_BIT:
        raise ValueError(f"{baud} baud at {clk_freq} Hz is {clk_freq / baud:.2f} clocks per bit; "
                         f"the UART needs at least {MIN_CLOCKS_PER_BIT}")
    error = abs(clk_freq / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud at {clk_freq} Hz: the nearest divisor {divisor} gives "
                         f"{clk_freq / divisor:.0f} baud, {100 * error:.1f}% off (at most "
                         f"{100 * MAX_BAUD_ERROR:.0f}%)")
    return divisor


def _check_divisor(divisor):
    if isinstance(divisor, bool) or not isinstance(divisor, int) or \
            divisor < MIN_CLOCKS_PER_BIT:
        raise ValueError(f"divisor must be an integer of at least {MIN_CLOCKS_PER_BIT} clocks "
                         f"per bit, got {divisor!r}")


class UARTRx(wiring.Component):
    """8N1 receiver: a 2-flop synchroniser, then each bit sampled in its middle.

    A low level on the synchronised line starts a frame; if it is gone half a bit later (a
    glitch) the receiver goes back to waiting. The stop bit is sampled in its middle too, and
    the receiver looks for the next start bit from there, so frames may follow back to back.

    Parameters
    ----------
    divisor : int
        Clocks per bit, at least :data:`MIN_CLOCKS_PER_BIT` (see :func:`clocks_per_bit`).

    Members
    -------
    rx : In(1)
        The serial line (asynchronous to the clock, idle high).
    o_stream : Out(stream.Signature(8))
        Each byte received, offered until taken.
    framing_error : Out(1)
        One-cycle pulse: a frame ended with a low stop bit; its byte is dropped.
    overrun : Out(1)
        One-cycle pulse: a byte arrived while the last one was still not taken; the new byte is
        dropped.

    Latency: a byte is offered 2 cycles (the synchroniser) plus 9.5 bit times after its start
    edge.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "o_stream": Out(stream.Signature(8)),
                          "framing_error": Out(1), "overrun": Out(1)})

    def elaborate(self, platform):
        m = Module()
        # Two flops against metastability; they start high so reset reads as an idle line.
        meta = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [meta.eq(self.rx), line.eq(meta)]

        timer = Signal(range(self.divisor))
        bits = Signal(range(10))  # bits sampled so far in this frame: start, 8 data, stop
        shift = Signal(8)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("idle"):
                with m.If(~line):
                    m.d.sync += [timer.eq(self.divisor // 2 - 1), bits.eq(0)]
                    m.next = "frame"
            with m.State("frame"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bits.eq(bits + 1)]
                    with m.If(bits == 0):
                        with m.If(line):  # the start bit did not last: a glitch
                            m.next = "idle"
                    with m.Elif(bits < 9):
                        m.d.sync += shift.eq(Cat(shift[1:], line))
                    with m.Else():
                        m.next = "idle"
                        with m.If(~line):
                            m.d.sync += self.framing_error.eq(1)
                        with m.Elif(self.o_stream.valid & ~self.o_stream.ready):
                            m.d.sync += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o_stream.payload.eq(shift),
                                         self.o_stream.valid.eq(1)]
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Clocks per bit, at least :data:`MIN_CLOCKS_PER_BIT` (see :func:`clocks_per_bit`).

    Members
    -------
    i_stream : In(stream.Signature(8))
        Bytes to send; one is taken when the line is idle or in the last cycle of a stop bit,
        so frames follow back to back, each exactly 10 bit times long.
    tx : Out(1)
        The serial line, idle high.

    Latency: the start bit begins the cycle after a byte is taken; a frame lasts 10 bit times.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__({"i_stream": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        # The frame still to send, LSB first: start bit, data, stop bit. Shifting in ones leaves
        # the line high once the frame is out.
        frame = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))
        # Ready from the last cycle of a stop bit: a frame lasts exactly 10 bit times, so bytes
        # received at the same baud rate can be sent on without piling up.
        m.d.comb += [self.tx.eq(frame[0]),
                     self.i_stream.ready.eq((bits_left == 0) | (bits_left == 1) & (timer == 0))]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [frame.eq(Cat(Const(0, 1), self.i_stream.payload, Const(1, 1))),
                         bits_left.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(bits_left != 0):
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.sync += [frame.eq(Cat(frame[1:], Const(1, 1))), bits_left.eq(bits_left - 1),
                             timer.eq(self.divisor - 1)]
        return m
