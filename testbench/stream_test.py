"""The cocotb test module that runs one stream job on a design.

:func:`zeroskip.testbench.runner.run` starts the simulator with this module and the run directory
in :data:`~zeroskip.testbench.runner.RUN_DIR_ENV`; the job comes from there and the result goes
back there, through :func:`~zeroskip.testbench.runner.read_job` and
:func:`~zeroskip.testbench.runner.write_result`. Not meant to be run by hand.
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, Event, First, ReadOnly
from cocotb.utils import get_sim_steps

from zeroskip.testbench import runner
from zeroskip.testbench.streams import InOrderScoreboard, StreamDriver, StreamSink


@cocotb.test()
async def stream_test(dut):
    """Reset, drive every input stream, take and check every output stream, write the result."""
    run_dir = os.environ[runner.RUN_DIR_ENV]
    job, counter_names = runner.read_job(run_dir)
    clock = dut.clk
    Clock(clock, runner.CLOCK_PERIOD_NS, unit="ns").start()

    settled = Event()
    drivers = [
        StreamDriver(
            dut,
            name,
            beats,
            clock=clock,
            idle_probability=job.idle_probability,
            rng=random.Random(f"{job.seed}/{name}"),
        )
        for name, beats in job.inputs.items()
    ]
    sinks = []

    def on_sink_update():
        if any(sink.failure for sink in sinks) or all(sink.complete for sink in sinks):
            settled.set()

    for name, output in job.outputs.items():
        scoreboard = None if output.expected is None else InOrderScoreboard(name, output.expected)
        sinks.append(
            StreamSink(
                dut,
                name,
                output.count,
                signed=output.signed,
                clock=clock,
                backpressure_probability=job.backpressure_probability,
                rng=random.Random(f"{job.seed}/{name}"),
                on_update=on_sink_update,
                scoreboard=scoreboard,
            )
        )

    # Amaranth's reset is synchronous and active high; a design without one has no `rst` port.
    has_reset = hasattr(dut, "rst")
    if has_reset:
        dut.rst.value = 1
    for driver in drivers:
        driver.idle()
    for sink in sinks:
        sink.hold()
    await ClockCycles(clock, job.reset_cycles)
    if has_reset:
        dut.rst.value = 0
    released = get_sim_time()

    for driver in drivers:
        cocotb.start_soon(driver.run())
    for sink in sinks:
        cocotb.start_soon(sink.run())
    on_sink_update()  # settles at once when there is no output stream
    timeout = ClockCycles(clock, job.timeout_cycles)
    fired = await First(settled.wait(), timeout)

    failure = _first_failure(sinks)
    if failure is None and fired is timeout:
        failure = f"timed out after {job.timeout_cycles} cycles: {_progress(drivers, sinks)}"
    if failure is None and job.drain_cycles:
        # Sinks keep ready high now: any further beat is one too many.
        await ClockCycles(clock, job.drain_cycles)
        failure = _first_failure(sinks)
    if failure is None:
        failure = next(
            (
                f"{driver.name}: the design took only {driver.sent} of {driver.total} input beats"
                for driver in drivers
                if driver.sent < driver.total
            ),
            None,
        )

    await ReadOnly()
    counters = {
        name: getattr(dut, f"counters__{name}").value.to_unsigned() for name in counter_names
    }
    offers = [driver.first_offer_time for driver in drivers if driver.first_offer_time is not None]
    accepts = [sink.last_accept_time for sink in sinks if sink.last_accept_time is not None]
    start = min(offers, default=released)
    end = max(accepts, default=start)
    cycles = (end - start) // get_sim_steps(runner.CLOCK_PERIOD_NS, "ns")
    runner.write_result(
        run_dir,
        outputs={sink.name: sink.beats for sink in sinks},
        cycles=cycles,
        counters=counters,
        failure=failure,
    )
    assert failure is None, failure


def _first_failure(sinks):
    return next((sink.failure for sink in sinks if sink.failure is not None), None)


def _progress(drivers, sinks):
    parts = [f"{sink.name} got {len(sink.beats)} of {sink.count} beats" for sink in sinks]
    parts += [f"{driver.name} sent {driver.sent} of {driver.total}" for driver in drivers]
    return "; ".join(parts)
