"""The network's own counters (:class:`zeroskip.hdl.counters.NetworkCounters`): ``ref_*`` counts
the handshakes of a random trace in Python, ``rtl_*`` the same trace in the simulator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from zeroskip.hdl.counters import NetworkCounters


def ref_counters(inputs, outputs, in_beats, out_beats):
    """(inferences, latency of the last, interval between the last two) of a trace of
    input and output handshakes (one bool per cycle each)."""
    starts = [t for t in np.flatnonzero(inputs)[::in_beats]]
    finishes = [t for t in np.flatnonzero(outputs)[out_beats - 1::out_beats]]
    latency = finishes[-1] - starts[len(finishes) - 1] + 1
    interval = finishes[-1] - finishes[-2] if len(finishes) > 1 else 0
    return len(finishes), latency, interval


def random_trace(rng, in_beats, out_beats, inferences, inflight, fast):
    """Input and output handshakes of ``inferences`` inferences, at most ``inflight`` in flight,
    each output at least a cycle after its inference's last input beat; with ``fast``, as
    close together as the rules allow (finishes in consecutive cycles where a beat is one)."""
    inputs, outputs = [], []
    sent_beats = taken_beats = 0
    gap = 0.0 if fast else 0.5
    while taken_beats < inferences * out_beats:
        started = sent_beats // in_beats
        finished = taken_beats // out_beats
        # An input beat while fewer than `inflight` inferences are in.
        send = sent_beats < inferences * in_beats and \
            (started - finished < inflight or sent_beats % in_beats) and rng.random() >= gap
        # An output beat of an inference whose input is all in (before this cycle).
        take = taken_beats // out_beats < (sent_beats // in_beats) and rng.random() >= gap
        inputs.append(bool(send))
        outputs.append(bool(take))
        sent_beats += bool(send)
        taken_beats += bool(take)
    return np.array(inputs), np.array(outputs)


def rtl_counters(inputs, outputs, in_beats, out_beats, inflight):
    dut = NetworkCounters(in_beats, out_beats, inflight)
    seen = {}

    async def testbench(ctx):
        for send, take in zip(inputs, outputs):
            ctx.set(dut.input_taken, int(send))
            ctx.set(dut.output_taken, int(take))
            await ctx.tick()
        ctx.set(dut.input_taken, 0)
        ctx.set(dut.output_taken, 0)
        await ctx.tick().repeat(2)
        for name in ("inferences", "latency_cycles", "interval_cycles"):
            seen[name] = ctx.get(getattr(dut.counters, name))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return seen["inferences"], seen["latency_cycles"], seen["interval_cycles"]


@pytest.mark.parametrize("inflight", [2, 3, 8])
@pytest.mark.parametrize("in_beats,out_beats", [(1, 1), (3, 1), (1, 4), (5, 2)])
@pytest.mark.parametrize("fast", [False, True])
def test_matches_reference(inflight, in_beats, out_beats, fast):
    """Every prefix of a random trace: the counters after it are the reference's."""
    rng = np.random.default_rng(inflight * 100 + in_beats * 10 + out_beats + fast)
    inputs, outputs = random_trace(rng, in_beats, out_beats, 9, inflight, fast)
    ends = np.flatnonzero(outputs)[out_beats - 1::out_beats] + 1
    for end in ends[[0, 1, len(ends) // 2, -1]]:
        assert rtl_counters(inputs[:end], outputs[:end], in_beats, out_beats, inflight) == \
            ref_counters(inputs[:end], outputs[:end], in_beats, out_beats)


def test_finishes_in_consecutive_cycles():
    """One-beat inferences finishing a cycle apart, 4 in flight: each latency its own."""
    inputs = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    outputs = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 0], bool)
    for end in (6, 7, 8, 9):
        assert rtl_counters(inputs[:end], outputs[:end], 1, 1, 4) == \
            ref_counters(inputs[:end], outputs[:end], 1, 1)
