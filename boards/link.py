"""A compiled network behind a UART: the board end of the host link.

:class:`HostLink` speaks the protocol of :mod:`zeroskip.boards.protocol` (the host end is
:mod:`zeroskip.host`): it streams the bytes of an ``'I'`` request straight into the network,
answers ``'R'`` with its logits, class and latency counter, ``'?'`` with the design's
description, ``'W'`` (a design whose weights are in SPRAM) by streaming each word into the
network's ``w_stream`` and answering ``'A'``, and ``'E'`` when it abandons or refuses a request.

Abandoned requests. A framing error, an overrun or a gap of the timeout in the middle of an
``'I'`` or ``'W'`` request resets the network (the partial input it holds is dropped); the board
then waits for the line to be quiet for the timeout and answers ``'E'``. The timeout is counted
by a power-of-two counter: it is at least the ``timeout`` asked for and less than twice it.
An overrun means the network took an input byte slower than the UART delivers them (a first layer
with too few lanes for the baud rate): compile it with more lanes, or lower the baud rate.

Weights in SPRAM. The engine keeps whether its weights are loaded (``weights_loaded``) through
the link's resets, as the SPRAM keeps its contents, and a reset restarts its loader at address 0:
a ``'W'`` abandoned before its first word keeps the weights, one abandoned later leaves none
loaded. Whatever the design, a ``'W'`` whose count is not its weight word count (0 when the
bitstream holds the weights) is refused (``'E'``, the weight count flag) once the line is quiet,
and an ``'I'`` while no weights are loaded is refused the same way (the no-weights flag) rather
than fed to a network that would wait for them.

Only classifiers (a flat output) go behind the link: their first logit needs the whole input, so
the network takes every input byte while the board is still receiving, and the board answers
once the request is in. A network with an image output would give outputs while the input still
streams in and stall its input until they are taken.

Size. The link adds a UART, a byte counter, a timeout counter, one output value register and
a few states to the network (with SPRAM weights, a byte register for a word's low byte): no
buffers (the only input store is the receiver's byte).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..hdl.common import activation_shape
from ..hdl.network import NarrowedNetwork
from ..hdl.stream import StreamRegister
from .protocol import (ACK, COUNT_BIT, DESCRIBE, DESCRIPTION_LENGTH, ERROR, ERROR_FLAGS,
                       FRAMING_BIT, INFER, MAX_CLASSES, MAX_INPUTS, NO_WEIGHTS_BIT, OVERRUN_BIT,
                       RESULT, TIMEOUT_BIT, WEIGHTS, WORD_BYTES, expected_description,
                       weight_words)
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
        High from an abandoned or refused request until a later one is received whole (an
        error LED).

    Latency: the ``'R'`` header starts the cycle after the network takes the last input byte;
    each logit follows as soon as the network gives it and the UART is free.

    Raises
    ------
    ValueError
        If the clock and baud rate do not fit, ``clk_freq`` is not an integer below 2**32 (the
        description's field), the timeout is shorter than 4 UART frames, or the network is not
        a classifier (a flat output), or has more than 65535 input values or more than 256
        classes (the class is one byte).
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
        self.design, self.clk_freq, self.baud = design, clk_freq, baud
        self.weight_words = len(weight_words(design))
        self.timeout_bits = ceil_log2(math.ceil(timeout * clk_freq))
        self.description = expected_description(design, clk_freq).encode()
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1),
                          "busy": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        p = self._parts(m)
        with m.FSM() as fsm:
            self._idle_state(m, p)
            self._load_state(m, p)
            self._weights_states(m, p)
            self._error_states(m, p)
            self._describe_state(m, p)
            self._result_states(m, p)
        m.d.comb += self.busy.eq(~fsm.ongoing("idle"))
        return m

    def _parts(self, m):
        """The UART, the network and the registers the states share."""
        design, p = self.design, SimpleNamespace()
        m.submodules.uart_rx = p.uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        m.d.comb += [p.uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        # Bytes to send pass a register slice: the transmitter's ready then comes from a
        # register, not through the UART into every state's decision.
        m.submodules.send_register = send_register = StreamRegister(8)
        wiring.connect(m, send_register.o_stream, uart_tx.i_stream)
        p.received, p.send = p.uart_rx.o_stream, send_register.i_stream
        p.sent = p.send.valid & p.send.ready

        # Resetting the network drops the partial input of an abandoned request. The reset is
        # registered: it reaches every flip-flop of the network, and decided in the same cycle
        # as a UART error it was the board's longest path. (The network gets no input meanwhile.)
        p.abandon, network_reset = Signal(), Signal()
        m.d.sync += network_reset.eq(p.abandon)
        p.engine = engine = design.engine()
        if getattr(design, "in_width", 1) > 1 or getattr(design, "out_width", 1) > 1:
            # The link carries one value a byte: width converters at the network's ports.
            p.engine = engine = NarrowedNetwork(engine)
        assert ("w_stream" in engine.signature.members) == bool(self.weight_words), \
            "a design has words to preload exactly when its network has a w_stream"
        m.submodules.network = ResetInserter({"sync": network_reset})(engine)
        in_bits = activation_shape(design.in_act).width
        m.d.comb += engine.i_stream.payload.eq(p.received.payload[:in_bits])
        # Whether the network may infer: the engine's own flag, which a reset keeps.
        p.loaded = engine.weights_loaded if self.weight_words else Const(1)

        # The input bytes, weight words, output values or description bytes left, less one.
        p.count = Signal(range(max(self.in_count, self.out_count, DESCRIPTION_LENGTH,
                                   self.weight_words)))
        p.word_byte = Signal(range(WORD_BYTES))  # byte of the 32-bit word sent or received
        p.flags = Signal(len(ERROR_FLAGS))
        # Counts silent cycles; the top bit is the timeout.
        p.silence = Signal(self.timeout_bits + 1)
        p.timed_out = p.silence[-1]
        with m.If(~p.timed_out):
            m.d.sync += p.silence.eq(p.silence + 1)
        return p

    def _refuse(self, m, p, bit):
        """Answer the request with ``'E'`` and flag ``bit`` once the line is quiet (the rest of
        the request is not read as requests); the network is left as it is."""
        m.d.sync += [p.flags.eq(1 << bit), p.silence.eq(0), self.error.eq(1)]
        m.next = "drain"

    def _abandon_on_failure(self, m, p):
        """In a state receiving a request: a framing error, an overrun or a timeout resets the
        network and abandons the request (``'E'`` once the line is quiet). Last in the state:
        it overrides the state's own next state."""
        rx = p.uart_rx
        failed = [(FRAMING_BIT, rx.framing_error), (OVERRUN_BIT, rx.overrun),
                  (TIMEOUT_BIT, p.timed_out)]
        with m.If(rx.framing_error | rx.overrun | p.timed_out):
            m.d.comb += p.abandon.eq(1)
            m.d.sync += [p.flags.eq(sum(condition << bit for bit, condition in failed)),
                         p.silence.eq(0), self.error.eq(1)]
            m.next = "drain"

    def _idle_state(self, m, p):
        received = p.received
        with m.State("idle"):
            m.d.comb += received.ready.eq(1)
            with m.If(received.valid & (received.payload == INFER)):
                with m.If(p.loaded):
                    m.d.sync += [p.count.eq(self.in_count - 1), p.silence.eq(0), p.flags.eq(0)]
                    m.next = "load"
                with m.Else():  # the network would wait for its weights, the board forever
                    self._refuse(m, p, NO_WEIGHTS_BIT)
            with m.If(received.valid & (received.payload == DESCRIBE)):
                m.d.sync += p.count.eq(DESCRIPTION_LENGTH - 1)
                m.next = "describe"
            with m.If(received.valid & (received.payload == WEIGHTS)):
                m.d.sync += [p.word_byte.eq(0), p.silence.eq(0), p.flags.eq(0)]
                m.next = "weights_count"

    def _load_state(self, m, p):
        """``'I'``: each input byte straight into the network."""
        received, engine = p.received, p.engine
        with m.State("load"):
            m.d.comb += [engine.i_stream.valid.eq(received.valid),
                         received.ready.eq(engine.i_stream.ready)]
            with m.If(received.valid & engine.i_stream.ready):
                m.d.sync += [p.count.eq(p.count - 1), p.silence.eq(0)]
                with m.If(p.count == 0):
                    m.d.sync += [p.count.eq(self.out_count - 1), self.error.eq(0)]
                    m.next = "result_header"
            self._abandon_on_failure(m, p)

    def _weights_states(self, m, p):
        """``'W'``: the count compared byte by byte with the design's (it is not stored), then
        each word into the network's ``w_stream`` as its high byte arrives, then ``'A'``."""
        received, words = p.received, self.weight_words
        expected = Array(Const(byte, 8) for byte in words.to_bytes(WORD_BYTES, "little"))
        differs, mismatch = received.payload != expected[p.word_byte], Signal()
        high = Signal()  # the next byte is a word's high byte
        with m.State("weights_count"):
            m.d.comb += received.ready.eq(1)
            with m.If(received.valid):
                m.d.sync += [p.word_byte.eq(p.word_byte + 1), p.silence.eq(0),
                             mismatch.eq(mismatch | differs)]
                with m.If(p.word_byte == 0):  # a request's first count byte
                    m.d.sync += mismatch.eq(differs)
                with m.If(p.word_byte == WORD_BYTES - 1):
                    m.d.sync += [p.count.eq(max(words - 1, 0)), high.eq(0)]
                    m.next = "weights" if words else "ack"
                    with m.If(mismatch | differs):
                        self._refuse(m, p, COUNT_BIT)
            self._abandon_on_failure(m, p)

        if words:
            w_stream, low = p.engine.w_stream, Signal(8)
            m.d.comb += w_stream.payload.eq(Cat(low, received.payload))
            with m.State("weights"):
                m.d.comb += [w_stream.valid.eq(received.valid & high),
                             received.ready.eq(~high | w_stream.ready)]
                with m.If(received.valid & received.ready):
                    m.d.sync += [high.eq(~high), low.eq(received.payload), p.silence.eq(0)]
                    with m.If(high):
                        m.d.sync += p.count.eq(p.count - 1)
                        with m.If(p.count == 0):
                            m.next = "ack"
                self._abandon_on_failure(m, p)

        with m.State("ack"):
            m.d.comb += [received.ready.eq(1), p.send.payload.eq(ACK), p.send.valid.eq(1)]
            m.d.sync += self.error.eq(0)
            with m.If(p.sent):
                m.next = "idle"

    def _error_states(self, m, p):
        """Wait for the rest of a broken request to pass, then answer ``'E'`` and the flags."""
        received, rx = p.received, p.uart_rx
        with m.State("drain"):
            m.d.comb += received.ready.eq(1)
            with m.If(received.valid | rx.framing_error | rx.overrun):
                m.d.sync += p.silence.eq(0)
            with m.If(p.timed_out):
                m.next = "error_header"

        with m.State("error_header"):
            m.d.comb += [received.ready.eq(1), p.send.payload.eq(ERROR), p.send.valid.eq(1)]
            with m.If(p.sent):
                m.next = "error_flags"

        with m.State("error_flags"):
            m.d.comb += [received.ready.eq(1), p.send.payload.eq(p.flags), p.send.valid.eq(1)]
            with m.If(p.sent):
                m.next = "idle"

    def _describe_state(self, m, p):
        # Indexed by the bytes left, so that the count goes down as in every other state.
        description = Array(Const(byte, 8) for byte in reversed(self.description))
        with m.State("describe"):
            m.d.comb += [p.received.ready.eq(1), p.send.payload.eq(description[p.count]),
                         p.send.valid.eq(1)]
            with m.If(p.sent):
                m.d.sync += p.count.eq(p.count - 1)
                with m.If(p.count == 0):
                    m.next = "idle"

    def _result_states(self, m, p):
        """``'R'``, each logit as it leaves the network (sign-extended to 4 bytes), the class,
        the latency counter."""
        design, engine, received, send, sent = self.design, p.engine, p.received, p.send, p.sent
        word_byte, count = p.word_byte, p.count
        value = Signal(activation_shape(design.out_act))  # the output value being sent
        if design.out_act.binary:  # 1 means +1, 0 means -1
            low_byte, sign_byte = Mux(value, 0x01, 0xFF), Mux(value, 0x00, 0xFF)
        else:
            low_byte, sign_byte = value.as_signed() if design.out_act.signed else value, \
                Mux(value.as_signed() < 0, 0xFF, 0x00) if design.out_act.signed else 0x00
        latency = engine.counters.network.latency_cycles

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
            m.d.comb += [received.ready.eq(1), send.payload.eq(engine.o_stream_class.payload),
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
