"""The busy and stall counters of :data:`zeroskip.hdl.common.COUNTER_NAMES`, for engines that know
when each inference begins and ends."""

from __future__ import annotations

from amaranth.hdl import Mux, Signal

__all__ = ["count_activity", "count_beats"]


def count_beats(m, taken, per_inference):
    """Position of the next beat within its inference, counting ``taken`` handshakes.

    Returns ``(position, last)``: ``last`` is true while the next beat ends an inference.
    """
    position = Signal(range(per_inference))
    last = position == per_inference - 1
    with m.If(taken):
        m.d.sync += position.eq(Mux(last, 0, position + 1))
    return position, last


def count_activity(m, counters, *, begin, finish, starved, blocked, max_inflight):
    """Drive ``counters.busy_cycles`` and ``counters.stall_cycles`` from ``m``'s sync domain.

    An inference is *in progress* from the cycle of its first input handshake to the cycle of its
    last output handshake, both included; ``busy_cycles`` counts the cycles in which at least one
    is. ``stall_cycles`` counts the busy cycles in which the engine is starved or blocked.

    Parameters
    ----------
    m : amaranth.hdl.Module
    counters : interface of :func:`zeroskip.hdl.common.counters_signature`
    begin : Value
        The first input beat of an inference is taken this cycle.
    finish : Value
        The last output beat of an inference is taken this cycle.
    starved : Value
        The engine would take an input beat of an inference in progress, but none is valid.
    blocked : Value
        The output offers a beat its consumer does not take.
    max_inflight : int
        The most inferences that can be in progress at once (one more than the beats the
        pipeline behind the input holds is always enough).
    """
    inflight = Signal(range(max_inflight + 1))
    m.d.sync += inflight.eq(inflight + begin - finish)
    busy = begin | (inflight != 0)
    with m.If(busy):
        m.d.sync += counters.busy_cycles.eq(counters.busy_cycles + 1)
    with m.If(busy & (starved | blocked)):
        m.d.sync += counters.stall_cycles.eq(counters.stall_cycles + 1)
