"""Cocotb-side stream components: a driver, a sink that monitors, and an in-order scoreboard.

A stream is the three ports ``<prefix>__payload``, ``<prefix>__valid`` and ``<prefix>__ready``
that Amaranth writes for a :class:`amaranth.lib.stream.Signature` member (see
:mod:`zeroskip.hdl.common`), and it follows Amaranth's data transfer rules: a beat moves on a
rising clock edge where ``valid`` and ``ready`` are both high; once the producer raises ``valid``
it keeps ``valid`` and ``payload`` until that happens; the consumer may change ``ready`` at any
time.

Timing. Every component writes its signals just after a rising edge, waits for the
:class:`~cocotb.triggers.ReadOnly` phase of that cycle to see the design's combinational response
(``ready`` may depend on ``valid``), and counts a transfer at the next rising edge. Times are
simulator steps (:func:`cocotb.simtime.get_sim_time`) of rising edges, so components agree on
them without sharing a counter.

Randomness. Each component takes its own :class:`random.Random`, so a stream's pattern of idle or
backpressure cycles depends only on its seed, not on the other streams.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge


def _stream_ports(dut, prefix):
    try:
        return (
            getattr(dut, f"{prefix}__payload"),
            getattr(dut, f"{prefix}__valid"),
            getattr(dut, f"{prefix}__ready"),
        )
    except AttributeError:
        raise AttributeError(
            f"the design has no stream {prefix!r}: it needs ports {prefix}__payload, "
            f"{prefix}__valid and {prefix}__ready"
        ) from None


class StreamDriver:
    """Offers beats on an input stream of the design, in order, with random idle cycles.

    Before each beat the driver stays idle for a cycle with probability ``idle_probability``,
    again and again (so about that fraction of the cycles the design is ready are idle). An
    idle cycle drives ``valid`` low and a random ``payload``, so a design that samples the payload
    without ``valid`` fails. Once it offers a beat it holds it until the design takes it.

    Parameters
    ----------
    dut : cocotb.handle.HierarchyObject
        The design's top.
    prefix : str
        The stream's port prefix, e.g. ``"i_stream"``.
    beats : sequence of int
        Payloads to send; negative values are sent in two's complement.
    clock : cocotb.handle.LogicObject
        The clock the stream is synchronous to.
    idle_probability : float
        Probability in [0, 1) of an idle cycle before each beat.
    rng : random.Random
        Source of idle cycles and idle payloads.

    Attributes
    ----------
    sent : int
        Beats the design has taken so far.
    first_offer_time : int or None
        Simulator time (steps) of the rising edge after which the first beat was offered.
    """

    def __init__(
        self,
        dut,
        prefix: str,
        beats: Sequence[int],
        *,
        clock,
        idle_probability: float,
        rng: random.Random,
    ):
        self.name = prefix
        self._payload, self._valid, self._ready = _stream_ports(dut, prefix)
        self._width = len(self._payload)
        mask = (1 << self._width) - 1
        self._beats = [int(beat) & mask for beat in beats]
        self._clock = clock
        self._idle_probability = idle_probability
        self._rng = rng
        self.sent = 0
        self.first_offer_time: int | None = None

    @property
    def total(self) -> int:
        """Number of beats the driver has to send."""
        return len(self._beats)

    def idle(self) -> None:
        """Drive an idle cycle: ``valid`` low, a random payload."""
        self._valid.value = 0
        self._payload.value = self._rng.getrandbits(self._width)

    async def run(self) -> None:
        """Send every beat; start it just after a rising edge. Returns once the last is taken."""
        for beat in self._beats:
            while self._rng.random() < self._idle_probability:
                self.idle()
                await RisingEdge(self._clock)
            self._payload.value = beat
            self._valid.value = 1
            if self.first_offer_time is None:
                self.first_offer_time = get_sim_time()
            while True:
                await ReadOnly()
                taken = self._ready.value == 1
                await RisingEdge(self._clock)
                if taken:
                    break
            self.sent += 1
        self.idle()


class InOrderScoreboard:
    """Compares the beats of one output stream, in arrival order, with the expected ones.

    Parameters
    ----------
    stream : str
        The stream's name, for messages.
    expected : sequence of int
        The expected beats, as signed or unsigned integers to match the sink.
    """

    def __init__(self, stream: str, expected: Sequence[int]):
        self._stream = stream
        self._expected = [int(value) for value in expected]

    def check(self, index: int, got: int) -> str | None:
        """Return why beat ``index`` (one of the expected ones) with value ``got`` is wrong.

        Returns None if it is right. Beats past the expected ones are the sink's to reject.
        """
        expected = self._expected[index]
        if got != expected:
            return f"{self._stream} beat {index}: expected {expected}, got {got}"
        return None


class StreamSink:
    """Takes beats from an output stream of the design, with random backpressure.

    Each cycle ``ready`` is low with probability ``backpressure_probability``, until ``count``
    beats have arrived; after that ``ready`` stays high, so that a design sending more beats than
    expected is caught. The sink also checks the producer's side of the transfer rules: a beat
    offered and not taken must be offered again, unchanged, on the next cycle.

    The first problem (a protocol violation, an unexpected beat, a scoreboard mismatch) is kept
    in :attr:`failure` and the sink stops; ``on_update`` is called then and when the expected
    count is reached.

    Parameters
    ----------
    dut : cocotb.handle.HierarchyObject
        The design's top.
    prefix : str
        The stream's port prefix, e.g. ``"o_stream"``.
    count : int
        Number of beats expected.
    signed : bool
        Whether to read the payload as two's complement.
    clock : cocotb.handle.LogicObject
        The clock the stream is synchronous to.
    backpressure_probability : float
        Probability in [0, 1) that ``ready`` is low in a cycle.
    rng : random.Random
        Source of backpressure cycles.
    on_update : callable
        Called with no arguments when the sink completes or fails.
    scoreboard : InOrderScoreboard, optional
        Checks each beat as it arrives.

    Attributes
    ----------
    beats : list of int
        The beats taken, sign-extended when ``signed``.
    failure : str or None
        What went wrong, naming the stream and the beat.
    last_accept_time : int or None
        Simulator time (steps) of the rising edge that took the last expected beat.
    """

    def __init__(
        self,
        dut,
        prefix: str,
        count: int,
        *,
        signed: bool,
        clock,
        backpressure_probability: float,
        rng: random.Random,
        on_update: Callable[[], None],
        scoreboard: InOrderScoreboard | None = None,
    ):
        self.name = prefix
        self._payload, self._valid, self._ready = _stream_ports(dut, prefix)
        self._width = len(self._payload)
        self._signed = signed
        self._count = count
        self._clock = clock
        self._backpressure_probability = backpressure_probability
        self._rng = rng
        self._on_update = on_update
        self._scoreboard = scoreboard
        self.beats: list[int] = []
        self.failure: str | None = None
        self.last_accept_time: int | None = None

    @property
    def count(self) -> int:
        """Number of beats expected."""
        return self._count

    @property
    def complete(self) -> bool:
        """Whether all expected beats have arrived."""
        return len(self.beats) >= self._count

    def hold(self) -> None:
        """Keep ``ready`` low (during reset)."""
        self._ready.value = 0

    async def run(self) -> None:
        """Take beats until a failure; start it just after a rising edge."""
        waiting: int | None = None  # payload offered in the previous cycle and not taken
        while self.failure is None:
            ready = self.complete or self._rng.random() >= self._backpressure_probability
            self._ready.value = int(ready)
            await ReadOnly()
            valid = self._valid.value == 1
            payload = self._read_payload() if valid else None
            violation = None if waiting is None else self._violation(waiting, valid, payload)
            # Failures are reported after the edge: whoever is waiting on them may then act
            # (write signals, await ReadOnly) as it could not in the read-only phase.
            await RisingEdge(self._clock)
            if violation is not None:
                self._fail(violation)
            elif valid and ready:
                waiting = None
                self._take(payload)
            else:
                waiting = payload

    def _violation(self, waiting: int, valid: bool, payload: int | None) -> str | None:
        """What is wrong with this cycle's offer when ``waiting`` was offered and not taken."""
        index = len(self.beats)
        if not valid:
            return (
                f"{self.name}: protocol violation at beat {index}: valid was dropped before the "
                "beat was taken"
            )
        if payload != waiting:
            return (
                f"{self.name}: protocol violation at beat {index}: payload changed from "
                f"{waiting} to {payload} before the beat was taken"
            )
        return None

    def _read_payload(self) -> int:
        # A one-bit payload (a binary stream) reads as a Logic, which has no to_unsigned.
        value = int(self._payload.value) if self._width == 1 else \
            self._payload.value.to_unsigned()
        if self._signed and value >> (self._width - 1):
            value -= 1 << self._width
        return value

    def _take(self, payload: int) -> None:
        index = len(self.beats)
        if index >= self._count:
            self._fail(
                f"{self.name}: unexpected beat {index} (value {payload}) after the "
                f"{self._count} expected"
            )
            return
        if self._scoreboard is not None:
            mismatch = self._scoreboard.check(index, payload)
            if mismatch is not None:
                self._fail(mismatch)
                return
        self.beats.append(payload)
        if self.complete:
            self.last_accept_time = get_sim_time()
            self._on_update()

    def _fail(self, message: str) -> None:
        self.failure = message
        self._on_update()
