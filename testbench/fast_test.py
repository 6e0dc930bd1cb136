"""The cocotb test module that runs one batch through a Harness at native Verilator speed.

:func:`zeroskip.testbench.fast.fast_simulate` starts the simulator with this module and the run
directory in :data:`~zeroskip.testbench.fast.RUN_DIR_ENV`. Python loads the first inputs into
the harness's rings (several beats per cycle), pulses ``start``, and then sleeps while cocotb's
C++ clock runs the model. A batch that fits the rings is then read back once ``done`` rises. A
longer one runs in chunks without stopping the model: whenever ``wake`` rises (half the rings'
inferences finished) Python reads the finished inferences back, releases their slots, loads the
inputs of the next ones and sleeps again; the model keeps running meanwhile, and the harness
counts any cycle it had to hold the design back. Not meant to be run by hand.

Waits are also cut into slices of simulated time sized to last about ``progress_seconds`` of
wall time each (the slice adapts to the model's speed): after each slice the harness's
``completed`` count goes to the run's progress file
(:func:`zeroskip.testbench.fast.write_progress`) when progress is asked for, a cancel file left
by :func:`~zeroskip.testbench.fast.fast_simulate` ends the run, and the timeout is checked. A
wake-up of Python costs about a millisecond, well under 1% of a slice. A batch that fits,
without progress reports, waits once: ``done`` raced against the timeout.

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

#: Slices of a chunked run without progress reports last about this long (wall time).
_CHUNK_SLICE_SECONDS = 0.25


@cocotb.test()
async def fast_test(dut):
    """Reset, load, start, run chunk after chunk, read back, write the result."""
    run_dir = os.environ[fast.RUN_DIR_ENV]
    job, inputs = fast.read_job(run_dir)
    clock = dut.clk
    # The C++ clock toggles the model without entering Python on every edge.
    Clock(clock, job["clock_period_ns"], unit="ns", impl="gpi").start()

    dut.rst.value = 1
    for port in ("start", "load_valid", "timestamp_address", "loaded", "released", "wake_at"):
        getattr(dut, port).value = 0
    await ClockCycles(clock, job["reset_cycles"])
    dut.rst.value = 0
    # The harness registers rst: its reset lasts one edge longer than the port's.
    await ClockCycles(clock, 1)

    run = _Run(dut, job, inputs, run_dir)
    failure = run.check_inputs(inputs)
    if failure is not None:
        fast.write_result(run_dir, arrays={}, cycles=0, counters={}, simulation_seconds=0.0,
                          held_cycles=0, failure=failure)
        assert failure is None, failure
    await run.load()
    dut.inferences.value = job["inferences"]
    dut.seed.value = job["seed"]
    dut.idle_threshold.value = job["idle_threshold"]
    dut.backpressure_threshold.value = job["backpressure_threshold"]
    dut.wake_at.value = run.next_wake()
    dut.start.value = 1
    await FallingEdge(clock)
    dut.start.value = 0

    started = time.monotonic()
    failure = await run.run()
    simulation_seconds = time.monotonic() - started
    await FallingEdge(clock)
    if failure is None and dut.surplus.value == 1:
        failure = "an output stream sent more beats than expected"
    counters = {name: getattr(dut, f"counters__{name}").value.to_unsigned()
                for name in job["counters"]}
    arrays = {}
    if failure is None:
        await run.read_back()
        arrays = run.arrays()
    fast.write_result(run_dir, arrays=arrays, cycles=dut.total_cycles.value.to_unsigned(),
                      counters=counters, simulation_seconds=simulation_seconds,
                      held_cycles=dut.held_cycles.value.to_unsigned(), failure=failure)
    assert failure is None, failure


# Bounds on a slice, in cycles: the first slice is the smallest, then each is resized from the
# wall time the last one took (by at most a factor of 4 either way).
_FIRST_SLICE_CYCLES = 1_000
_MAX_SLICE_CYCLES = 1 << 24


class _Run:
    """One batch through the harness's rings: what is loaded, released, and read back."""

    def __init__(self, dut, job, inputs, run_dir):
        self.dut, self.job, self.run_dir = dut, job, run_dir
        self.total = job["inferences"]
        self.capacity = dut.max_inferences.value.to_unsigned()
        self.lanes = dut.load_lanes.value.to_unsigned()
        self.width = len(dut.load_payload) // self.lanes
        self.input_beats = job["input_beats"]
        # A beat of several elements holds them side by side, the first in the low bits.
        self.elements = job.get("input_elements", 1)
        self.part = self.width // self.elements
        if self.elements == 1:
            self.raw = inputs.astype(np.uint64) & np.uint64((1 << self.width) - 1)
        else:
            parts = (inputs.astype(object) & ((1 << self.part) - 1)).reshape(-1, self.elements)
            self.raw = sum(parts[:, index] << (index * self.part)
                           for index in range(self.elements))
        ring = self.capacity * self.input_beats
        # Python ints: a load word may be wider than 64 bits.
        self.ring = np.zeros(-(-ring // self.lanes) * self.lanes, dtype=object)
        self.loaded = self.released = 0
        self.outputs = {name: [] for name in job["outputs"]}
        self.first = []
        self.last = {name: [] for name in job["outputs"]}

    def check_inputs(self, inputs):
        """None, or why a beat does not fit the input payload."""
        low, high = -(1 << (self.part - 1)), 1 << self.part
        outside = np.flatnonzero((inputs < low) | (inputs >= high))
        if outside.size:
            index = int(outside[0])
            return (f"input beat {index} is {int(inputs[index])}, which does not fit the "
                    f"{self.part}-bit input payload")
        return None

    def next_wake(self):
        """``wake_at`` for the next chunk: half the rings' inferences past the released ones."""
        return min(self.total, self.released + max(self.capacity // 2, 1))

    async def load(self):
        """Load the inputs of every inference that has a free slot (released, and sent)."""
        sent = self.dut.sent.value.to_unsigned()
        upto = min(self.total, self.released + self.capacity, sent + self.capacity)
        if upto <= self.loaded:
            return
        positions = np.arange(self.loaded * self.input_beats, upto * self.input_beats)
        positions %= self.capacity * self.input_beats
        self.ring[positions] = self.raw[self.loaded * self.input_beats:
                                        upto * self.input_beats].tolist()
        dut = self.dut
        await FallingEdge(dut.clk)
        dut.load_valid.value = 1
        # Every word holding a position loaded; a word shared with beats loaded before is
        # written again with those same beats.
        for word in dict.fromkeys((positions // self.lanes).tolist()):
            beats = self.ring[word * self.lanes:(word + 1) * self.lanes].tolist()
            dut.load_address.value = word
            dut.load_payload.value = sum(beat << (lane * self.width)
                                         for lane, beat in enumerate(beats))
            await FallingEdge(dut.clk)
        dut.load_valid.value = 0
        self.loaded = upto
        dut.loaded.value = upto

    async def read_back(self):
        """Read every completed inference not read yet, then release its slots."""
        dut = self.dut
        upto = min(dut.completed.value.to_unsigned(), self.total)
        if upto <= self.released:
            return
        slots = np.arange(self.released, upto) % self.capacity
        stamps = dut.timestamp_lanes.value.to_unsigned()
        reads = {"first": _Read(dut.first_input_cycle, dut.timestamp_address, stamps, slots,
                                False)}
        for name, output in self.job["outputs"].items():
            beats = output["beats"]
            positions = np.arange(self.released * beats, upto * beats) % (self.capacity * beats)
            reads[f"captured/{name}"] = _Read(
                getattr(dut, f"captured__{name}"), getattr(dut, f"capture_address__{name}"),
                getattr(dut, f"capture_lanes__{name}").value.to_unsigned(), positions,
                output["signed"], output.get("elements", 1))
            reads[f"last/{name}"] = _Read(getattr(dut, f"last_output_cycle__{name}"),
                                          dut.timestamp_address, stamps, slots, False)
        for step in range(max(len(read.words) for read in reads.values())):
            for read in reads.values():
                read.address(step)
            await FallingEdge(dut.clk)
            for read in reads.values():
                read.take(step)
        self.first += reads["first"].values()
        for name in self.outputs:
            self.outputs[name] += reads[f"captured/{name}"].values()
            self.last[name] += reads[f"last/{name}"].values()
        self.released = upto
        dut.released.value = upto

    async def run(self):
        """Wait for ``done``, serving the rings on every ``wake``; a failure message or None."""
        dut, job = self.dut, self.job
        progress = job.get("progress_seconds")
        chunked = self.total > self.capacity
        if progress is None and not chunked:
            done = RisingEdge(dut.done)
            timeout = Timer(job["timeout_cycles"] * job["clock_period_ns"], unit="ns")
            return self._timed_out() if await First(done, timeout) is timeout else None
        target = progress if progress is not None else _CHUNK_SLICE_SECONDS
        slice_cycles = _FIRST_SLICE_CYCLES
        while True:
            if chunked and dut.wake.value == 1 and dut.done.value == 0:
                await self._serve()
                continue
            started = time.monotonic()
            timer = Timer(slice_cycles * job["clock_period_ns"], unit="ns")
            triggers = [RisingEdge(dut.done), timer]
            if chunked and dut.wake.value == 0:
                triggers.append(RisingEdge(dut.wake))
            fired = await First(*triggers)
            elapsed = time.monotonic() - started
            await FallingEdge(dut.clk)
            if dut.done.value == 1:
                fast.write_progress(self.run_dir, self.total, self.total)
                return None
            if chunked:
                await self._serve()
            if progress is not None:
                fast.write_progress(self.run_dir, dut.completed.value.to_unsigned(), self.total)
            if dut.cycle.value.to_unsigned() >= job["timeout_cycles"]:
                return self._timed_out()
            if fast.cancel_requested(self.run_dir):
                return (f"cancelled by the caller after {dut.completed.value.to_unsigned()} "
                        f"of {self.total} inferences")
            if fired is timer:
                scale = min(max(target / max(elapsed, 1e-6), 0.25), 4.0)
                slice_cycles = min(max(int(slice_cycles * scale), _FIRST_SLICE_CYCLES),
                                   _MAX_SLICE_CYCLES)

    async def _serve(self):
        """Read back what finished, load what fits, and set the next ``wake_at``; the new
        ``wake_at`` is registered twice before ``wake`` answers to it."""
        await self.read_back()
        await self.load()
        self.dut.wake_at.value = self.next_wake()
        await ClockCycles(self.dut.clk, 2, FallingEdge)

    def _timed_out(self):
        return (f"done did not rise within {self.job['timeout_cycles']} cycles of start "
                f"({self.total} inferences): the DUT is stuck or needs a larger timeout_cycles")

    def arrays(self):
        arrays = {"first_input_cycle": self.first}
        for name in self.outputs:
            arrays[f"captured/{name}"] = self.outputs[name]
            arrays[f"last_output_cycle/{name}"] = self.last[name]
        return arrays


class _Read:
    """Entries read back through a port of whole words: the words they lie in, read in turn,
    and the entries taken out of them (each of ``elements`` values side by side, the first in
    the low bits)."""

    def __init__(self, port, address_port, lanes, positions, signed, elements=1):
        self.port, self.address_port, self.lanes, self.signed = port, address_port, lanes, signed
        self.width = len(port) // lanes
        self.elements = elements
        self.positions = positions
        # In order of the positions (a range that may wrap around the ring once).
        self.words = list(dict.fromkeys((positions // lanes).tolist()))
        self.read = {}

    def address(self, step):
        if step < len(self.words):
            self.address_port.value = self.words[step]

    def take(self, step):
        if step < len(self.words):
            value = self.port.value
            self.read[self.words[step]] = int(value) if isinstance(value, Logic) \
                else value.to_unsigned()

    def values(self):
        part = self.width // self.elements
        mask, sign = (1 << part) - 1, 1 << (part - 1)
        values = []
        for position in self.positions.tolist():
            beat = self.read[position // self.lanes] >> (position % self.lanes * self.width)
            for index in range(self.elements):
                value = beat >> (index * part) & mask
                values.append(value - (value & sign) * 2 if self.signed else value)
        return values
