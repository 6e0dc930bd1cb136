"""The network's own counters: inferences, latency and initiation interval, measured in hardware.

An engine's counters (busy, effective MACs, skipped pairs, stalls) are
:data:`zeroskip.hdl.common.COUNTER_NAMES`, driven by :mod:`.activity`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .activity import count_beats
from .common import COUNTER_WIDTH

__all__ = ["NETWORK_COUNTER_NAMES", "NetworkCounters", "network_counters_signature"]

#: The network's own counters: inferences finished, the latency of the last one (its first input
#: beat taken to its last logit given, inclusive) and the interval between the last logits of the
#: last two (the initiation interval, in steady state).
NETWORK_COUNTER_NAMES = ("inferences", "latency_cycles", "interval_cycles")


def network_counters_signature():
    return wiring.Signature({name: Out(COUNTER_WIDTH) for name in NETWORK_COUNTER_NAMES})


class NetworkCounters(wiring.Component):
    """Latency and initiation interval, watched on the input and the output handshakes.

    Each inference's first-input cycle waits in a ring of ``inflight`` entries until its last
    output beat; ``inflight`` must exceed the inferences the pipeline can hold at once. With
    at most two in flight (an engine that overlaps one input with one computation), each entry
    is a counter of the inference's age instead: no cycle count, no difference taken.

    Members
    -------
    input_taken, output_taken : In(1)
        Handshakes of the network's input stream and of its output (logit) stream.
    counters : Out(Signature of :data:`NETWORK_COUNTER_NAMES`, 32 bits each)
    """

    def __init__(self, in_beats, out_beats, inflight):
        self.in_beats, self.out_beats = in_beats, out_beats
        self.inflight = 1 << max(ceil_log2(inflight), 1)
        super().__init__({"input_taken": In(1), "output_taken": In(1),
                          "counters": Out(network_counters_signature())})

    def elaborate(self, platform):
        m = Module()
        in_position, _ = count_beats(m, self.input_taken, self.in_beats)
        _, out_last = count_beats(m, self.output_taken, self.out_beats)
        started = Signal(ceil_log2(self.inflight))
        finished = Signal(ceil_log2(self.inflight))
        first_beat = self.input_taken & (in_position == 0)
        finishing = self.output_taken & out_last
        with m.If(first_beat):
            m.d.sync += started.eq(started + 1)
        since_finish = Signal(COUNTER_WIDTH)   # cycles since the last finish, that one counted
        m.d.sync += since_finish.eq(since_finish + 1)
        self._latency(m, first_beat, started, finishing, finished)
        with m.If(finishing):
            m.d.sync += [finished.eq(finished + 1), since_finish.eq(1),
                         self.counters.inferences.eq(self.counters.inferences + 1)]
            with m.If(self.counters.inferences != 0):
                m.d.sync += self.counters.interval_cycles.eq(since_finish)
        return m

    def _latency(self, m, first_beat, started, finishing, finished):
        """``latency_cycles`` of the inference finishing now (first beat to now, both counted):
        set as it finishes with two in flight, two cycles later with more."""
        if self.inflight == 2:
            # An age per entry, 2 in the cycle after its first beat: the latency as it finishes.
            ages = [Signal(COUNTER_WIDTH, name=f"age_{i}") for i in range(2)]
            for i, age in enumerate(ages):
                m.d.sync += age.eq(age + 1)
                with m.If(first_beat & (started == i)):
                    m.d.sync += age.eq(2)
            with m.If(finishing):
                m.d.sync += self.counters.latency_cycles.eq(Mux(finished, ages[1], ages[0]))
            return
        cycle = Signal(COUNTER_WIDTH)
        m.d.sync += cycle.eq(cycle + 1)
        m.submodules.starts = starts = Memory(shape=COUNTER_WIDTH, depth=self.inflight, init=[])
        # A registered read (a RAM block, not a register file): its address is the entry of
        # the inference finishing next, so the start is ready by the time it finishes.
        write = starts.write_port()
        read = starts.read_port(transparent_for=(write,))
        m.d.comb += [write.addr.eq(started), write.data.eq(cycle), write.en.eq(first_beat),
                     read.addr.eq(Mux(finishing, finished + 1, finished))]
        # The start passes two registers before the subtraction, the first as it leaves the
        # RAM block (Yosys makes that one the block's own read register, whose output is
        # slow), the second as the inference finishes: the block's output into the difference
        # was ResNet-8's longest path on the ECP5-85F. The difference is taken two cycles
        # after the finish: ``cycle - start - 1`` then is the latency, ``cycle + ~start``.
        read_out, start = Signal(COUNTER_WIDTH), Signal(COUNTER_WIDTH)
        finished_1, finished_2 = Signal(), Signal()
        m.d.sync += [read_out.eq(read.data), finished_1.eq(finishing),
                     finished_2.eq(finished_1)]
        with m.If(finished_1):
            m.d.sync += start.eq(read_out)
        with m.If(finished_2):
            m.d.sync += self.counters.latency_cycles.eq(cycle + ~start)
