"""A compiled network behind a UART: the board end of the host link.

:class:`HostLink` speaks the protocol of :mod:`zeroskip.boards.protocol` (the host end is
:mod:`zeroskip.host`): it streams the bytes of an ``'I'`` request straight into the network,
answers ``'R'`` with its logits, class and latency counter, ``'?'`` with the design's
description, and ``'E'`` when it abandons a request.

Abandoned requests. A framing error, an overrun or a gap of the timeout in the middle of an
``'I'`` request resets the network (the partial input it holds is dropped); the board then waits
for the line to be quiet for the timeout and answers ``'E'``. The timeout is counted by a
power-of-two counter: it is at least the ``timeout`` asked for and less than twice it.
An overrun means the network took an input byte slower than the UART delivers them (a first layer
with too few lanes for the baud rate): compile it with more lanes, or lower the baud rate.

Only classifiers (a flat output) go behind the link: their first logit needs the whole input, so
the network takes every input byte while the board is still receiving, and the board answers
once the request is in. A network with an image output would give outputs while the input still
streams in and stall its input until they are taken.

Size. The link adds a UART, a byte counter, a timeout counter, one output value register and
a few states to the network: no buffers (the only input store is the receiver's byte).
"""

from __future__ import annotations

import math

from amaranth.hdl import Array, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..hdl.common import activation_shape
from ..hdl.network import NarrowedNetwork
from ..hdl.stream import StreamRegister
from .protocol import (DESCRIBE, DESCRIPTION_LENGTH, ERROR, FRAMING_BIT, INFER, MAX_CLASSES,
                       MAX_INPUTS, OVERRUN_BIT, RESULT, TIMEOUT_BIT, WORD_BYTES,
                       expected_description)
from .uart import UARTRx, UARTTx, clocks_per_bit

__all__ = ["DEFAULT_TIMEOUT", "HostLink"]

#: Seconds of silence that end a request stopped short (the protocol's 0.1 s default).
DEFAULT_TIMEOUT = 0.1

# Frames of silence the timeout must at least last, so that a host writing bytes back to back
# never trips it.
_MIN_TIMEOUT_FRAMES = 4


class HostLink(wiring.Component):
    """A compiled network (its :meth:`~zeroskip.design.Design.engine`) behind a UART,
    speaking the protocol of :mod:`zeroskip.boards.protocol`.

    Parameters
    ----------
    design : zeroskip.design.Design
        The compiled network.
    clk_freq : int
        The clock frequency in Hz (the description reports it).
    baud : int
        The UART's baud rate; ``clk_freq / baud`` must be at least 4 clocks per bit and give
        the rate within 2% (:func:`zeroskip.boards.uart.clocks_per_bit`).
    timeout : float
        Seconds of silence that end a request stopped short (see the module docstring).

    Members
    -------
    rx : In(1)
        UART receive pin (from the host), idle high.
    tx : Out(1)
        UART transmit pin (to the host), idle high.
    busy : Out(1)
        High while a request is being received, computed or answered (an activity LED).
    error : Out(1)
        High from an abandoned request until a later one is received whole (an error LED).

    Latency: the ``'R'`` header starts the cycle after the network takes the last input byte;
    each logit follows as soon as the network gives it and the UART is free.

    Raises
    ------
    ValueError
        If the clock and baud rate do not fit, ``clk_freq`` is not an integer below 2**32 (the
        description's field), the timeout is shorter than 4 UART frames, or the network is not
        a classifier (a flat output), or has more than 65535 input values or more than 256
        classes (the class is one byte), or keeps its weights in SPRAM (no command loads them).
    """

    def __init__(self, design, *, clk_freq, baud=115200, timeout=DEFAULT_TIMEOUT):
        self.divisor = clocks_per_bit(clk_freq, baud)
        if isinstance(clk_freq, bool) or not isinstance(clk_freq, int) or clk_freq >= 1 << 32:
            raise ValueError(f"clk_freq must be an integer number of Hz below 2**32, got "
                             f"{clk_freq!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                not timeout * clk_freq >= _MIN_TIMEOUT_FRAMES * 10 * self.divisor:
            raise ValueError(f"timeout must be at least {_MIN_TIMEOUT_FRAMES} UART frames "
                             f"({_MIN_TIMEOUT_FRAMES * 10 / baud:.2g} s at {baud} baud), got "
                             f"{timeout!r}")
        self.in_count, self.out_count = math.prod(design.in_shape), math.prod(design.out_shape)
        if not design.has_class:
            raise ValueError(f"the host link runs classifiers (a flat output); "
                             f"{design.graph.name!r} outputs a {design.out_shape} tensor")
        if self.in_count > MAX_INPUTS or self.out_count > MAX_CLASSES:
            raise ValueError(f"the link carries at most {MAX_INPUTS} input values and "
                             f"{MAX_CLASSES} classes, the network has {self.in_count} and "
                             f"{self.out_count}")
        if getattr(design.architecture, "memory", None) == "spram":
            raise ValueError("the host link has no command that loads weights into SPRAM, "
                             "where this design keeps them (they do not fit a block-RAM ROM "
                             "beside its other memories)")
        self.design, self.clk_freq, self.baud = design, clk_freq, baud
        self.timeout_bits = ceil_log2(math.ceil(timeout * clk_freq))
        self.description = expected_description(design, clk_freq).encode()
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1),
                          "busy": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        design = self.design
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        # Bytes to send pass a register slice: the transmitter's ready then comes from a
        # register, not through the UART into every state's decision.
        m.submodules.send_register = send_register = StreamRegister(8)
        wiring.connect(m, send_register.o_stream, uart_tx.i_stream)
        received, send = uart_rx.o_stream, send_register.i_stream
        sent = send.valid & send.ready

        # Resetting the network drops the partial input of an abandoned request. The reset is
        # registered: it reaches every flip-flop of the network, and decided in the same cycle
        # as a UART error it was the board's longest path. (The network gets no input meanwhile.)
        abandon, network_reset = Signal(), Signal()
        m.d.sync += network_reset.eq(abandon)
        engine = design.engine()
        if getattr(design, "in_width", 1) > 1 or getattr(design, "out_width", 1) > 1:
            # The link carries one value a byte: width converters at the network's ports.
            engine = NarrowedNetwork(engine)
        m.submodules.network = ResetInserter({"sync": network_reset})(engine)
        in_bits = activation_shape(design.in_act).width
        m.d.comb += engine.i_stream.payload.eq(received.payload[:in_bits])

        # Counts input bytes, then output values, or indexes the description.
        count = Signal(range(max(self.in_count, self.out_count, DESCRIPTION_LENGTH)))
        word_byte = Signal(range(WORD_BYTES))  # byte of the 32-bit word being sent
        value = Signal(activation_shape(design.out_act))  # the output value being sent
        flags = Signal(3)
        # Counts silent cycles; the top bit is the timeout.
        silence = Signal(self.timeout_bits + 1)
        timed_out = silence[-1]
        with m.If(~timed_out):
            m.d.sync += silence.eq(silence + 1)

        if design.out_act.binary:  # 1 means +1, 0 means -1
            low_byte, sign_byte = Mux(value, 0x01, 0xFF), Mux(value, 0x00, 0xFF)
        else:
            low_byte, sign_byte = value.as_signed() if design.out_act.signed else value, \
                Mux(value.as_signed() < 0, 0xFF, 0x00) if design.out_act.signed else 0x00
        latency = engine.counters.network.latency_cycles
        description = Array(Const(byte, 8) for byte in self.description)

        with m.FSM() as fsm:
            with m.State("idle"):
                m.d.comb += received.ready.eq(1)
                with m.If(received.valid & (received.payload == INFER)):
                    m.d.sync += [count.eq(self.in_count - 1), silence.eq(0), flags.eq(0)]
                    m.next = "load"
                with m.If(received.valid & (received.payload == DESCRIBE)):
                    m.d.sync += count.eq(0)
                    m.next = "describe"

            with m.State("load"):
                m.d.comb += [engine.i_stream.valid.eq(received.valid),
                             received.ready.eq(engine.i_stream.ready)]
                with m.If(received.valid & engine.i_stream.ready):
                    m.d.sync += [count.eq(count - 1), silence.eq(0)]
                    with m.If(count == 0):
                        m.d.sync += [count.eq(self.out_count - 1), self.error.eq(0)]
                        m.next = "result_header"
                failed = [(FRAMING_BIT, uart_rx.framing_error),
                          (OVERRUN_BIT, uart_rx.overrun), (TIMEOUT_BIT, timed_out)]
                with m.If(uart_rx.framing_error | uart_rx.overrun | timed_out):
                    m.d.comb += abandon.eq(1)
                    m.d.sync += [flags.eq(sum(condition << bit for bit, condition in failed)),
                                 silence.eq(0), self.error.eq(1)]
                    m.next = "drain"

            with m.State("drain"):  # wait for the rest of a broken request to pass
                m.d.comb += received.ready.eq(1)
                with m.If(received.valid | uart_rx.framing_error | uart_rx.overrun):
                    m.d.sync += silence.eq(0)
                with m.If(timed_out):
                    m.next = "error_header"

            with m.State("error_header"):
                m.d.comb += [received.ready.eq(1), send.payload.eq(ERROR), send.valid.eq(1)]
                with m.If(sent):
                    m.next = "error_flags"

            with m.State("error_flags"):
                m.d.comb += [received.ready.eq(1), send.payload.eq(flags), send.valid.eq(1)]
                with m.If(sent):
                    m.next = "idle"

            with m.State("describe"):
                m.d.comb += [received.ready.eq(1), send.payload.eq(description[count]),
                             send.valid.eq(1)]
                with m.If(sent):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == DESCRIPTION_LENGTH - 1):
                        m.next = "idle"

            with m.State("result_header"):
                m.d.comb += [received.ready.eq(1), send.payload.eq(RESULT), send.valid.eq(1)]
                with m.If(sent):
                    m.next = "take_value"

            with m.State("take_value"):  # the one output value buffered
                m.d.comb += [received.ready.eq(1), engine.o_stream.ready.eq(1)]
                with m.If(engine.o_stream.valid):
                    m.d.sync += [value.eq(engine.o_stream.payload), word_byte.eq(0)]
                    m.next = "send_value"

            with m.State("send_value"):
                m.d.comb += [received.ready.eq(1), send.valid.eq(1),
                             send.payload.eq(Mux(word_byte == 0, low_byte, sign_byte))]
                with m.If(sent):
                    m.d.sync += word_byte.eq(word_byte + 1)
                    with m.If(word_byte == WORD_BYTES - 1):
                        m.d.sync += count.eq(count - 1)
                        m.next = "take_value"
                        with m.If(count == 0):
                            m.next = "send_class"

            with m.State("send_class"):
                m.d.comb += [received.ready.eq(1),
                             send.payload.eq(engine.o_stream_class.payload),
                             send.valid.eq(engine.o_stream_class.valid),
                             engine.o_stream_class.ready.eq(send.ready)]
                with m.If(sent):
                    m.d.sync += word_byte.eq(0)
                    m.next = "send_latency"

            with m.State("send_latency"):
                m.d.comb += [received.ready.eq(1), send.valid.eq(1),
                             send.payload.eq(latency.word_select(word_byte, 8))]
                with m.If(sent):
                    m.d.sync += word_byte.eq(word_byte + 1)
                    with m.If(word_byte == WORD_BYTES - 1):
                        m.next = "idle"

        m.d.comb += self.busy.eq(~fsm.ongoing("idle"))
        return m
