"""Stream driver and sink for engine tests in the Amaranth simulator.

Every engine talks ``lib.stream`` valid/ready; these helpers feed and drain such streams from
async testbenches with seeded random gaps on both sides, so each test exercises idle inputs and
output backpressure the same reproducible way::

    rng = np.random.default_rng(seed)

    async def producer(ctx):
        await drive(ctx, dut.i_stream, beats, rng, idle_probability=0.3)

    async def consumer(ctx):
        received.extend(await collect(ctx, dut.o_stream, len(expected), rng,
                                      backpressure_probability=0.3))

    simulate(dut, producer, consumer)

or, for the usual case of whole streams in and out, :func:`run_streams`, which also reads the
engine's counters at the end and can record a per-cycle trace of any signals. Both helpers fail the
test (``AssertionError``) instead of hanging when a stream makes no progress for ``timeout``
cycles, and :func:`collect` checks the producer side of the stream rules: once ``valid`` is high
it stays high, with the same payload, until the beat is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Value
from amaranth.sim import Simulator

from zeroskip.hdl.common import COUNTER_LAG, COUNTER_NAMES

__all__ = ["drive", "collect", "simulate", "StreamRun", "run_streams", "activity_from_trace",
           "engine_kinds", "rtl_network"]

DEFAULT_TIMEOUT = 1000
CLOCK_PERIOD = 1e-6


def _settable(beat):
    """numpy integers as Python ints, a row of a wide beat as a list of them (the simulator
    takes ints, lists for array payloads, or dicts for struct payloads)."""
    if isinstance(beat, (int, np.integer)):
        return int(beat)
    if isinstance(beat, (np.ndarray, list, tuple)):
        return [int(value) for value in beat]
    return beat


def _plain(payload):
    """A received payload as Python values: an int, or a list of ints for an array payload."""
    if isinstance(payload, int):
        return payload
    try:
        return [int(value) for value in payload]
    except TypeError:
        return payload


async def drive(ctx, stream, beats, rng, idle_probability=0.0, *, timeout=DEFAULT_TIMEOUT):
    """Send ``beats`` on ``stream`` (an input of the design), in order.

    Parameters
    ----------
    ctx : amaranth.sim testbench context
    stream : lib.stream.Interface
    beats : iterable
        Payloads: integers, or dicts for ``data.StructLayout`` payloads.
    rng : numpy.random.Generator
        Source of the idle cycles (seed it for reproducible tests).
    idle_probability : float
        Before each beat, the driver leaves ``valid`` low for a cycle with this probability,
        repeatedly (a geometric number of idle cycles).
    timeout : int
        Cycles a presented beat may wait for ``ready`` before the test fails.
    """
    for index, beat in enumerate(beats):
        while rng.random() < idle_probability:
            await ctx.tick()
        ctx.set(stream.payload, _settable(beat))
        ctx.set(stream.valid, 1)
        for _ in range(timeout):
            _, _, ready = await ctx.tick().sample(stream.ready)
            if ready:
                break
        else:
            raise AssertionError(f"beat {index} was not accepted within {timeout} cycles")
        ctx.set(stream.valid, 0)


async def collect(ctx, stream, count, rng, backpressure_probability=0.0, *,
                  timeout=DEFAULT_TIMEOUT):
    """Receive ``count`` beats from ``stream`` (an output of the design) and return them.

    Parameters
    ----------
    ctx : amaranth.sim testbench context
    stream : lib.stream.Interface
    count : int
    rng : numpy.random.Generator
        Source of the backpressure.
    backpressure_probability : float
        Each cycle, ``ready`` is low with this probability.
    timeout : int
        Cycles without a new beat before the test fails.

    Returns
    -------
    list
        The payloads in arrival order (ints for plain shapes).
    """
    beats = []
    refused = None  # the payload offered but not taken at the previous clock edge
    idle = 0
    while len(beats) < count:
        ready = bool(rng.random() >= backpressure_probability)
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if refused is not None:
            assert valid, f"valid dropped before beat {len(beats)} was taken"
            assert payload == refused, (f"payload of beat {len(beats)} changed from {refused} "
                                        f"to {payload} before it was taken")
        refused = None
        if valid and ready:
            beats.append(_plain(payload))
            idle = 0
        else:
            if valid:
                refused = payload
            idle += 1
            assert idle < timeout, f"no beat for {timeout} cycles after {len(beats)} of {count}"
    ctx.set(stream.ready, 0)
    return beats


def simulate(dut, *testbenches, background=()):
    """Run ``testbenches`` (async functions of the context) on ``dut`` with one clock domain,
    until they all return; ``background`` testbenches stop with them."""
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    for testbench in background:
        sim.add_testbench(testbench, background=True)
    sim.run()


@dataclass(frozen=True)
class StreamRun:
    """What :func:`run_streams` saw.

    Attributes
    ----------
    received : list of list
        The beats of each sink, in ``sinks`` order.
    counters : dict or None
        ``dut.counters`` (name to value) once every sink has its beats, if ``dut`` has counters.
    trace : numpy.ndarray
        ``(cycles, len(record))``: the ``record`` signals sampled at every clock edge, from the
        first edge on (the values each cycle ends with, the ones a handshake sees).
    """

    received: list
    counters: dict | None
    trace: np.ndarray


def run_streams(dut, sources, sinks, *, seed, idle_probability=0.0,
                backpressure_probability=0.0, record=(), timeout=DEFAULT_TIMEOUT):
    """Drive every source stream and drain every sink stream of ``dut`` concurrently.

    Parameters
    ----------
    dut : amaranth Elaboratable
    sources : list of (stream, beats)
    sinks : list of (stream, count)
    seed : int
        Seeds one generator per stream, so the gaps of one stream do not depend on another's.
    idle_probability, backpressure_probability : float
        See :func:`drive` and :func:`collect`.
    record : sequence of Value
        Signals to sample every cycle into :attr:`StreamRun.trace`.
    timeout : int
        Cycles a stream may make no progress (see :func:`drive` and :func:`collect`).

    Returns
    -------
    StreamRun
    """
    seeds = np.random.SeedSequence(seed).spawn(len(sources) + len(sinks))
    rngs = [np.random.default_rng(child) for child in seeds]
    received = [None] * len(sinks)
    counters = {}
    samples = []

    def producer(stream, beats, rng):
        async def testbench(ctx):
            await drive(ctx, stream, beats, rng, idle_probability, timeout=timeout)
        return testbench

    def consumer(index, stream, count, rng):
        async def testbench(ctx):
            received[index] = await collect(ctx, stream, count, rng, backpressure_probability,
                                            timeout=timeout)
        return testbench

    async def read_counters(ctx):
        while any(beats is None for beats in received):
            await ctx.tick()
        await ctx.tick().repeat(COUNTER_LAG)
        for name in COUNTER_NAMES:
            counters[name] = ctx.get(getattr(dut.counters, name))

    async def recorder(ctx):
        async for _, _, *values in ctx.tick().sample(*record):
            samples.append(values)

    testbenches = [producer(stream, beats, rngs[index])
                   for index, (stream, beats) in enumerate(sources)]
    testbenches += [consumer(index, stream, count, rngs[len(sources) + index])
                    for index, (stream, count) in enumerate(sinks)]
    if hasattr(dut, "counters"):
        testbenches.append(read_counters)
    simulate(dut, *testbenches, background=[recorder] if record else [])
    trace = np.array(samples, dtype=np.int64).reshape(len(samples), len(record))
    return StreamRun(received, counters if hasattr(dut, "counters") else None, trace)


def activity_from_trace(taken, out_taken, starving, blocked, inputs_per_inference,
                        outputs_per_inference):
    """The ``busy_cycles`` and ``stall_cycles`` an engine must count, from a per-cycle trace.

    The counter contract (:mod:`zeroskip.hdl.common`), restated over handshakes: an inference is
    in progress from the cycle of its first input handshake to the cycle of its last output
    handshake, both included; a busy cycle stalls when the output is *blocked*, or when the
    engine is *starving* (ready for an input beat, none valid) between the first and the last
    input handshake of an inference.

    Parameters
    ----------
    taken, out_taken, starving, blocked : array_like of bool, one entry per cycle
        An input beat (or pair) was taken; an output beat was taken; the engine waits for an
        input; the output holds a beat its consumer refuses.
    inputs_per_inference, outputs_per_inference : int

    Returns
    -------
    dict
        ``{"busy_cycles": int, "stall_cycles": int}``.
    """
    taken, out_taken, starving, blocked = (np.asarray(column, dtype=bool) for column in
                                           (taken, out_taken, starving, blocked))
    in_cycles, out_cycles = np.flatnonzero(taken), np.flatnonzero(out_taken)
    inferences = len(out_cycles) // outputs_per_inference
    busy = np.zeros(len(taken), dtype=bool)
    mid_input = np.zeros(len(taken), dtype=bool)
    for k in range(inferences):
        first = in_cycles[k * inputs_per_inference]
        last = in_cycles[(k + 1) * inputs_per_inference - 1]
        busy[first:out_cycles[(k + 1) * outputs_per_inference - 1] + 1] = True
        mid_input[first + 1:last + 1] = True
    stalled = busy & ((mid_input & starving) | blocked)
    return {"busy_cycles": int(busy.sum()), "stall_cycles": int(stalled.sum())}


def engine_kinds(design):
    """``{layer: engine class name}`` of the engines ``design``'s top builds, each elaborated."""
    from amaranth.hdl import Fragment

    engines = {spec.name: design.architecture.layer_engine(spec) for spec in design.layers}
    for engine in engines.values():
        Fragment.get(engine, None)
    return {name: type(engine).__name__ for name, engine in engines.items()}


def rtl_network(design, x, stall_probability, *, timeout=20_000):
    """``design``'s network top on the batch ``x`` with random stalls on every stream:
    ``(outputs decoded into the graph's output shape, classes)``."""
    from zeroskip.hdl.common import (batch_from_beats, batch_to_beats, decode_beats,
                                     encode_beats, from_wide, to_wide)

    graph = design.graph
    out_shape = graph.shapes[graph.output]
    dut = design.engine()
    received = {}

    async def producer(ctx):
        beats = to_wide(encode_beats(batch_to_beats(x), graph.input.act), design.in_width)
        await drive(ctx, dut.i_stream, beats, np.random.default_rng(1), stall_probability,
                    timeout=timeout)

    async def sink(ctx):
        received["outputs"] = await collect(
            ctx, dut.o_stream, len(x) * int(np.prod(out_shape)) // design.out_width,
            np.random.default_rng(2), stall_probability, timeout=timeout)

    async def class_sink(ctx):
        received["classes"] = await collect(ctx, dut.o_stream_class, len(x),
                                            np.random.default_rng(3), stall_probability,
                                            timeout=timeout)

    simulate(dut, producer, sink, class_sink)
    outputs = decode_beats(from_wide(np.array(received["outputs"], np.int64), design.out_width),
                           graph.acts[graph.output])
    return batch_from_beats(outputs, out_shape), received["classes"]


# --- reset in the middle of an inference ---------------------------------------------------------

#: Where :func:`run_reset` puts the reset: among the inputs of the interrupted inference, after
#: them while the engine works (outputs held back), or among its outputs.
RESET_PHASES = ("input", "compute", "output")


@dataclass(frozen=True)
class ResetRun:
    """What :func:`run_reset` saw from the reset on.

    Attributes
    ----------
    received : list of list
        Each sink's beats after the reset, in ``sinks`` order.
    counters : dict or None
        ``dut.counters`` once every sink had its beats, if ``dut`` has a flat counters port.
    reset_cycle : int
        The cycle the reset began.
    moved : tuple of int
        Beats each source took and each sink gave before the reset (``sources`` then
        ``sinks``): where in the inference the reset came.
    """

    received: list
    counters: dict | None
    reset_cycle: int
    moved: tuple


class _Port:
    """One stream of :func:`run_reset`: a source's beats before and after the reset, or a
    sink's counts of them, and how far the current epoch has gone."""

    def __init__(self, stream, before, after, rng, *, sink):
        self.stream, self.before, self.after, self.rng, self.sink = \
            stream, before, after, rng, sink
        self.restart(before)

    def restart(self, beats):
        """Begin an epoch: nothing on offer; a source sends ``beats``, a sink collects."""
        self.done = 0         # beats taken (a source) or given (a sink)
        self.offered = None   # a source's beat on offer, or a sink's refused payload
        self.beats = [] if self.sink else list(beats)


def _rams(fragment):
    """Every memory with a write port in the hierarchy of ``fragment`` (its ROMs left out).

    MemoryInstance keeps its contents and ports in private attributes; this reads them only
    to fill RAMs with garbage."""
    from amaranth.hdl import MemoryInstance

    if isinstance(fragment, MemoryInstance) and fragment._write_ports:
        yield fragment._data
    for subfragment, _, _ in fragment.subfragments:
        yield from _rams(subfragment)


class _ResetHarness:
    """``dut`` with its sync domain's reset driven by ``rst``, elaborated once so that its RAMs
    can be reached."""

    def __init__(self, dut):
        from amaranth.hdl import Elaboratable, Fragment, Module, ResetInserter, Signal

        harness = self

        class Top(Elaboratable):
            def elaborate(self, platform):
                m = Module()
                m.submodules.dut = ResetInserter({"sync": harness.rst})(dut)
                return m

        self.rst = Signal()
        self.fragment = Fragment.get(Top(), None)
        self.rams = list(_rams(self.fragment))


def _phase_reached(phase, sources, sinks, stalled, point):
    """Whether the interrupted epoch has gone far enough for a reset in ``phase``: ``point``
    beats (a fraction of 1) of the first source's, or the first sink's; ``stalled``: the sources
    took no beat for a while."""
    def part(total):
        return min(max(round(point * total), 1), max(total - 1, 1))

    if phase == "input":
        return sources[0].done >= part(len(sources[0].before))
    if phase == "compute":
        return stalled or all(source.done == len(source.before) for source in sources)
    return sinks[0].done >= part(sinks[0].before)


def run_reset(dut, sources, sinks, *, phase, seed, stalls=0.3, reset_cycles=1, drain=64,
              compute_cycles=8, timeout=20_000):
    """Interrupt inferences with a reset, then run more: the beats that come out after it.

    Parameters
    ----------
    dut : wiring.Component
    sources : list of (stream, before, after)
        An input stream, the beats of the inference(s) the reset interrupts, and those sent
        after it.
    sinks : list of (stream, before, after)
        An output stream, the number of beats the interrupted inference(s) would give, and the
        number expected after the reset.
    phase : str
        One of :data:`RESET_PHASES`: the reset comes once a part (10 to 90 %, drawn) of the first
        source's ``before`` beats are taken; or, with every sink holding ``ready`` low, 1 to ``compute_cycles``
        cycles after the last of them is taken (or after the sources stall for
        ``compute_cycles``: an engine whose input waits for its output); or once a part of the
        first sink's ``before`` beats are given.
    seed : int
    stalls : float
        Probability of an idle input cycle and of a cycle without ``ready``, per stream.
    reset_cycles : int
        Cycles ``rst`` is held high; the streams are idle meanwhile. Every RAM of ``dut`` is
        filled with random garbage as the reset begins (ROMs keep their contents).
    drain : int
        Cycles, after the last expected beat, in which no sink may give another one.

    Returns
    -------
    ResetRun

    Raises
    ------
    AssertionError
        A stream rule broken on an output, a beat too many, or no progress for ``timeout``
        cycles.
    """
    if phase not in RESET_PHASES:
        raise ValueError(f"phase must be one of {RESET_PHASES}, got {phase!r}")
    harness = _ResetHarness(dut)
    rng = np.random.default_rng(seed)
    rngs = [np.random.default_rng(child) for child in
            np.random.SeedSequence(seed).spawn(len(sources) + len(sinks))]
    srcs = [_Port(stream, before, after, rngs[i], sink=False)
            for i, (stream, before, after) in enumerate(sources)]
    snks = [_Port(stream, before, after, rngs[len(sources) + i], sink=True)
            for i, (stream, before, after) in enumerate(sinks)]
    result = {}
    extra_delay = int(rng.integers(1, compute_cycles + 1))
    point = float(rng.uniform(0.1, 0.9))

    async def testbench(ctx):
        epoch, idle, reset_cycle, delay = "before", 0, None, extra_delay
        cycle = 0
        while True:
            if epoch == "before" and _phase_reached(phase, srcs, snks, idle > compute_cycles,
                                                      point):
                if phase != "compute" or delay == 0:
                    epoch, reset_cycle = "reset", cycle
                    result["moved"] = tuple(port.done for port in (*srcs, *snks))
                delay -= 1
            if epoch == "reset":
                await _reset(ctx, harness, srcs, snks, rng, reset_cycles)
                for port in (*srcs, *snks):
                    port.restart(port.after)
                epoch, idle = "after", 0
            hold_outputs = epoch == "before" and phase == "compute"
            progress = await _cycle(ctx, srcs, snks, stalls, hold_outputs)
            cycle += 1
            idle = 0 if progress else idle + 1
            assert idle < timeout, f"no progress for {timeout} cycles ({epoch} the reset)"
            if epoch == "after" and all(len(s.beats) >= s.after for s in snks):
                break
        await _drain(ctx, srcs, snks, drain)
        result["received"] = [sink.beats for sink in snks]
        result["counters"] = ({name: ctx.get(getattr(dut.counters, name))
                               for name in COUNTER_NAMES}
                              if _flat_counters(dut) else None)
        result["reset_cycle"] = reset_cycle

    sim = Simulator(harness.fragment)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(testbench)
    sim.run()
    return ResetRun(**result)


def _flat_counters(dut):
    counters = getattr(dut, "counters", None)
    return counters is not None and all(hasattr(counters, name) for name in COUNTER_NAMES)


async def _reset(ctx, harness, sources, sinks, rng, cycles):
    """``rst`` high for ``cycles`` cycles, the streams idle, every RAM filled with garbage."""
    for port in sources:
        ctx.set(port.stream.valid, 0)
    for port in sinks:
        ctx.set(port.stream.ready, 0)
    for data in harness.rams:
        for address in range(data.depth):
            row = Value.cast(data[address])  # a struct row's bits
            ctx.set(row, int(rng.integers(0, 1 << len(row))) if row.shape().signed is False
                    else int(rng.integers(-(1 << len(row) - 1), 1 << len(row) - 1)))
    ctx.set(harness.rst, 1)
    for _ in range(cycles):
        await ctx.tick()
    ctx.set(harness.rst, 0)


async def _cycle(ctx, sources, sinks, stalls, hold_outputs):
    """One clock cycle of every stream; True when a beat moved."""
    for port in sources:
        if port.offered is None and port.done < len(port.beats) and \
                port.rng.random() >= stalls:
            port.offered = port.beats[port.done]
            ctx.set(port.stream.payload, _settable(port.offered))
        ctx.set(port.stream.valid, port.offered is not None)
    for port in sinks:
        ctx.set(port.stream.ready, not hold_outputs and port.rng.random() >= stalls)
    signals = [port.stream.ready for port in sources]
    for port in sinks:
        signals += [port.stream.valid, port.stream.ready, port.stream.payload]
    _, _, *values = await ctx.tick().sample(*signals)
    progress = False
    for port, ready in zip(sources, values):
        if port.offered is not None and ready:
            port.offered, port.done, progress = None, port.done + 1, True
    values = values[len(sources):]
    for index, port in enumerate(sinks):
        valid, ready, payload = values[3 * index:3 * index + 3]
        if port.offered is not None:
            assert valid, f"valid dropped before beat {port.done} was taken"
            assert payload == port.offered, (f"payload of beat {port.done} changed from "
                                              f"{port.offered} to {payload} while waiting")
        port.offered = None
        if valid and ready:
            port.beats.append(payload)
            port.done, progress = port.done + 1, True
        elif valid:
            port.offered = payload
    return progress


async def _drain(ctx, sources, sinks, cycles):
    """``cycles`` cycles with the sources idle and every sink ready: no beat may come."""
    for port in sources:
        ctx.set(port.stream.valid, 0)
    for port in sinks:
        ctx.set(port.stream.ready, 1)
    for _ in range(cycles):
        _, _, *valids = await ctx.tick().sample(*[port.stream.valid for port in sinks])
        for port, valid in zip(sinks, valids):
            assert not valid, (f"a beat beyond the {len(port.beats)} expected after the reset "
                               f"(on {port.stream.payload!r})")
