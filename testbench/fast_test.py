"""The cocotb test module that runs one batch through a Harness at native Verilator speed.

:func:`zeroskip.testbench.fast.fast_simulate` starts the simulator with this module and the run
directory in :data:`~zeroskip.testbench.fast.RUN_DIR_ENV`. Python works only before ``start``
(loading the inputs, several beats per cycle) and after ``done`` (reading the memories back, one
word per cycle); in between it awaits ``done`` while cocotb's C++ clock runs the model. Not meant
to be run by hand.

Progress. When the job asks for progress reports, the wait for ``done`` is cut into slices of
simulated time sized to last about ``progress_seconds`` of wall time each (the slice adapts to
the model's speed); after each slice the harness's ``completed`` count goes to the run's progress
file (:func:`zeroskip.testbench.fast.write_progress`), and a cancel file left by
:func:`~zeroskip.testbench.fast.fast_simulate` ends the run. A wake-up of Python costs about a
millisecond, well under 1% of a slice. Without progress reports the wait is a single trigger
raced against the timeout.

Timing. Writes happen just after a falling edge and take effect at the next rising edge; reads
of the combinational read-back ports happen at a falling edge, half a cycle after their address
was set.
"""

from __future__ import annotations

import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge, Timer
from cocotb.types import Logic

from zeroskip.testbench import fast


@cocotb.test()
async def fast_test(dut):
    """Reset, load, start, wait for done, read back, write the result."""
    run_dir = os.environ[fast.RUN_DIR_ENV]
    job, inputs = fast.read_job(run_dir)
    period_ns = job["clock_period_ns"]
    clock = dut.clk
    # The C++ clock toggles the model without entering Python on every edge.
    Clock(clock, period_ns, unit="ns", impl="gpi").start()

    dut.rst.value = 1
    dut.start.value = 0
    dut.load_valid.value = 0
    dut.read_address.value = 0
    await ClockCycles(clock, job["reset_cycles"])
    dut.rst.value = 0
    # The harness registers rst: its reset lasts one edge longer than the port's.
    await ClockCycles(clock, 1)

    failure = None
    capacity = dut.max_inferences.value.to_unsigned()
    if job["inferences"] > capacity:
        failure = (f"the batch has {job['inferences']} inferences but the harness holds at most "
                   f"{capacity}; build it with a larger max_inferences")
    cycles, counters, simulation_seconds, arrays = 0, {}, 0.0, {}
    if failure is None:
        await _load(dut, inputs, job.get("input_elements", 1))
        dut.inferences.value = job["inferences"]
        dut.seed.value = job["seed"]
        dut.idle_threshold.value = job["idle_threshold"]
        dut.backpressure_threshold.value = job["backpressure_threshold"]
        dut.start.value = 1
        await FallingEdge(clock)
        dut.start.value = 0

        started = time.monotonic()
        outcome = await _wait_for_done(dut, job, run_dir)
        simulation_seconds = time.monotonic() - started
        await FallingEdge(clock)
        if outcome == "timeout":
            failure = (f"done did not rise within {job['timeout_cycles']} cycles of start "
                       f"({job['inferences']} inferences): the DUT is stuck or needs a larger "
                       "timeout_cycles")
        elif outcome == "cancelled":
            failure = (f"cancelled by the caller after {dut.completed.value.to_unsigned()} of "
                       f"{job['inferences']} inferences")
        elif dut.surplus.value == 1:
            failure = "an output stream sent more beats than expected"
        cycles = dut.total_cycles.value.to_unsigned()
        counters = {name: getattr(dut, f"counters__{name}").value.to_unsigned()
                    for name in job["counters"]}
        if failure is None:
            arrays = await _read_back(dut, job)

    fast.write_result(run_dir, arrays=arrays, cycles=cycles, counters=counters,
                      simulation_seconds=simulation_seconds, failure=failure)
    assert failure is None, failure


# Bounds on a progress slice, in cycles: the first slice is the smallest, then each is resized
# from the wall time the last one took (by at most a factor of 4 either way).
_FIRST_SLICE_CYCLES = 1_000
_MAX_SLICE_CYCLES = 1 << 24


async def _wait_for_done(dut, job, run_dir):
    """Wait at most ``timeout_cycles`` for ``done``; ``"done"``, ``"timeout"`` or ``"cancelled"``.

    Called just after a falling edge; slices are whole cycles, so every slice ends just after a
    falling edge too, never at a rising edge where ``done`` could change.
    """
    period_ns, remaining = job["clock_period_ns"], job["timeout_cycles"]
    target_seconds = job.get("progress_seconds")
    done = RisingEdge(dut.done)
    if target_seconds is None:
        timeout = Timer(remaining * period_ns, unit="ns")
        return "timeout" if await First(done, timeout) is timeout else "done"
    total = job["inferences"]
    slice_cycles = _FIRST_SLICE_CYCLES
    while True:
        cycles = min(slice_cycles, remaining)
        timer = Timer(cycles * period_ns, unit="ns")
        started = time.monotonic()
        fired = await First(done, timer)
        elapsed = time.monotonic() - started
        if fired is not timer or dut.done.value == 1:
            fast.write_progress(run_dir, total, total)
            return "done"
        fast.write_progress(run_dir, dut.completed.value.to_unsigned(), total)
        remaining -= cycles
        if remaining <= 0:
            return "timeout"
        if fast.cancel_requested(run_dir):
            return "cancelled"
        scale = min(max(target_seconds / max(elapsed, 1e-6), 0.25), 4.0)
        slice_cycles = min(max(int(cycles * scale), _FIRST_SLICE_CYCLES), _MAX_SLICE_CYCLES)


async def _load(dut, inputs, elements=1):
    """Write the input beats into the harness's memory, ``load_lanes`` beats per cycle (a beat
    of ``elements`` inputs side by side, the first in the low bits)."""
    lanes = dut.load_lanes.value.to_unsigned()
    width = len(dut.load_payload) // lanes
    if elements == 1 and width * lanes <= 64:
        raw = np.zeros(-(-inputs.size // lanes) * lanes, dtype=np.uint64)
        raw[:inputs.size] = inputs.astype(np.uint64) & np.uint64((1 << width) - 1)
        shifts = np.arange(lanes, dtype=np.uint64) * np.uint64(width)
        words = np.bitwise_or.reduce(raw.reshape(-1, lanes) << shifts, axis=1).tolist()
    else:
        # Python integers: a word may exceed 64 bits.
        part = width // elements
        values = [int(value) & ((1 << part) - 1) for value in inputs.tolist()]
        per_word = lanes * elements
        values += [0] * (-len(values) % per_word)
        words = [sum(value << (index * part) for index, value in
                     enumerate(values[start:start + per_word]))
                 for start in range(0, len(values), per_word)]
    payload = dut.load_payload
    await FallingEdge(dut.clk)
    dut.load_valid.value = 1
    for word in words:
        payload.value = word
        await FallingEdge(dut.clk)
    dut.load_valid.value = 0


def _split(value, elements, signed):
    """A captured beat's elements (the first in the low bits), sign-extended if ``signed``."""
    if isinstance(value, Logic):  # a one-bit port (binary activations)
        return [int(value)]
    if elements == 1:
        return [value.to_signed() if signed else value.to_unsigned()]
    raw, part = value.to_unsigned(), len(value) // elements
    parts = [raw >> (index * part) & ((1 << part) - 1) for index in range(elements)]
    return [v - (1 << part) if signed and v >> (part - 1) else v for v in parts]


async def _read_back(dut, job):
    """Every capture and timestamp memory, one address per cycle, all memories at once."""
    inferences = job["inferences"]
    ports = {"first_input_cycle": (dut.first_input_cycle, inferences, False, 1)}
    for name, output in job["outputs"].items():
        ports[f"captured/{name}"] = (getattr(dut, f"captured__{name}"), output["count"],
                                     output["signed"], output.get("elements", 1))
        ports[f"last_output_cycle/{name}"] = (getattr(dut, f"last_output_cycle__{name}"),
                                              inferences, False, 1)
    arrays = {key: [] for key in ports}
    for address in range(max((count for _, count, _, _ in ports.values()), default=0)):
        dut.read_address.value = address
        await FallingEdge(dut.clk)
        for key, (port, count, signed, elements) in ports.items():
            if address < count:
                arrays[key].extend(_split(port.value, elements, signed))
    return arrays
