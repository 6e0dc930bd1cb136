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
from amaranth.sim import Simulator

from zeroskip.hdl.common import COUNTER_NAMES

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
