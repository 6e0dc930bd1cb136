# amaranth: UnusedElaboratable=no
"""The self-running Harness: in the Amaranth simulator, and around real engines under Verilator."""

import io
import json
import re
import shutil
import time

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from zeroskip import reference
from zeroskip.hdl.common import batch_from_beats, batch_to_beats
from zeroskip.hdl.conv import SparseConvEngine
from zeroskip.testbench import runner
from zeroskip.hdl.verilog import convert
from zeroskip.testbench.fast import ProgressBar, fast_simulate
from zeroskip.testbench.harness import Harness
from zeroskip.testbench.runner import SimulationError

from test_hdl_conv import conv_graph, random_inputs

STALLS = 0.3


class RegisterSlice(wiring.Component):
    """A passthrough with one register stage: a beat taken in cycle c leaves in cycle c + 1."""

    def __init__(self, width=8):
        super().__init__({
            "i_stream": In(stream.Signature(signed(width))),
            "o_stream": Out(stream.Signature(signed(width))),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i_stream.ready.eq(~self.o_stream.valid | self.o_stream.ready)
        with m.If(self.i_stream.ready):
            m.d.sync += [self.o_stream.valid.eq(self.i_stream.valid),
                         self.o_stream.payload.eq(self.i_stream.payload)]
        return m


class SlowSlice(wiring.Component):
    """Holds each beat ``delay`` cycles before offering it: a long run out of a tiny design."""

    def __init__(self, delay, width=8):
        self.delay = delay
        super().__init__({
            "i_stream": In(stream.Signature(signed(width))),
            "o_stream": Out(stream.Signature(signed(width))),
        })

    def elaborate(self, platform):
        m = Module()
        full = Signal()
        wait = Signal(range(self.delay + 1))
        m.d.comb += [self.i_stream.ready.eq(~full), self.o_stream.valid.eq(full & (wait == 0))]
        with m.If(self.i_stream.valid & ~full):
            m.d.sync += [full.eq(1), wait.eq(self.delay),
                         self.o_stream.payload.eq(self.i_stream.payload)]
        with m.Elif(full & (wait != 0)):
            m.d.sync += wait.eq(wait - 1)
        with m.Elif(self.o_stream.ready):
            m.d.sync += full.eq(0)
        return m


# ---------------------------------------------------------------------------------------------
# The harness itself in the Amaranth simulator


def _load_words(ctx, harness, beats, first_word=0):
    """Write ``beats`` into the input ring from word ``first_word`` on (one tick per word)."""
    lanes, width = harness.lanes_per_load, harness.input_width
    ctx.set(harness.load_valid, 1)
    for word, start in enumerate(range(0, len(beats), lanes), start=first_word):
        ctx.set(harness.load_address, word)
        ctx.set(harness.load_payload, sum((int(beat) & ((1 << width) - 1)) << (lane * width)
                                          for lane, beat in enumerate(beats[start:start + lanes])))
        yield
    ctx.set(harness.load_valid, 0)


def _read(ctx, harness, name, slots, positions):
    """``(first, last, captured)`` of the given timestamp slots and capture positions, taken
    out of the words the read-back ports show."""
    def entry(port, address, lanes, width, index):
        ctx.set(address, int(index) // lanes)
        return ctx.get(port) >> (int(index) % lanes * width) & ((1 << width) - 1)

    stamps = harness.timestamp_lanes_value
    first = [entry(harness.first_input_cycle, harness.timestamp_address, stamps, 32, slot)
             for slot in slots]
    last = [entry(getattr(harness.last_output_cycle, name), harness.timestamp_address, stamps,
                  32, slot) for slot in slots]
    captured = [entry(getattr(harness.captured, name), getattr(harness.capture_address, name),
                      harness.capture_lanes_value[name], harness.output_widths[name], position)
                for position in positions]
    return first, last, captured


def _amaranth_run(harness, beats, *, inferences, idle=0, backpressure=0, seed=1):
    """Load, run and read back a batch that fits the rings with Amaranth's simulator; returns
    what the ports showed."""
    seen = {}

    async def testbench(ctx):
        await ctx.tick()  # the power-up reset (a register) holds for the first edge
        for _ in _load_words(ctx, harness, beats):
            await ctx.tick()
        ctx.set(harness.loaded, inferences)
        ctx.set(harness.wake_at, inferences)
        ctx.set(harness.inferences, inferences)
        ctx.set(harness.seed, seed)
        ctx.set(harness.idle_threshold, idle)
        ctx.set(harness.backpressure_threshold, backpressure)
        ctx.set(harness.start, 1)
        await ctx.tick()
        ctx.set(harness.start, 0)
        valid_trace = []
        ready_trace = []
        completed_trace = []
        for _ in range(2000):
            valid_trace.append(ctx.get(harness.dut.i_stream.valid))
            ready_trace.append(ctx.get(harness.dut.o_stream.ready))
            completed_trace.append(ctx.get(harness.completed))
            await ctx.tick()
            if ctx.get(harness.done):
                break
        completed_trace.append(ctx.get(harness.completed))
        seen["valid"], seen["ready"] = np.array(valid_trace), np.array(ready_trace)
        seen["completed"] = np.array(completed_trace)
        seen["total_cycles"] = ctx.get(harness.total_cycles)
        seen["held_cycles"] = ctx.get(harness.held_cycles)
        first, last, captured = _read(ctx, harness, "o_stream", range(inferences),
                                      range(len(beats)))
        seen["first"], seen["last"], seen["captured"] = map(np.array, (first, last, captured))

    sim = Simulator(harness)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return seen


def test_harness_loads_streams_and_reads_back_without_stalls():
    beats = np.arange(12) - 6
    harness = Harness(RegisterSlice(), max_inferences=4, input_beats_per_inference=3,
                      output_beats_per_inference={"o_stream": 3})
    seen = _amaranth_run(harness, beats, inferences=4)
    assert harness.lanes_per_load == 16  # 8-bit beats, as many as the 12-beat ring needs
    assert (seen["captured"].astype(np.int8) == beats).all()
    # Back to back: inference i enters at 3 i; its last beat leaves 3 cycles later.
    assert seen["first"].tolist() == [0, 3, 6, 9]
    assert seen["last"].tolist() == [3, 6, 9, 12]
    assert seen["total_cycles"] == 13
    assert seen["valid"][:12].all() and seen["ready"].all()
    # `completed` counts an inference in the cycle after its last beat left: 4, 7, 10, 13.
    assert (np.flatnonzero(np.diff(seen["completed"])) + 1).tolist() == [4, 7, 10, 13]
    assert seen["completed"][-1] == 4


def test_wide_payloads_pack_fewer_to_a_word():
    beats = np.arange(6) * 0x1_0000_0001 - 3
    harness = Harness(RegisterSlice(width=40), max_inferences=3, input_beats_per_inference=2,
                      output_beats_per_inference={"o_stream": 2})
    assert harness.lanes_per_load == 4 and harness.capture_lanes_value["o_stream"] == 4
    seen = _amaranth_run(harness, beats, inferences=3)
    assert (seen["captured"] == beats % (1 << 40)).all()


def test_lfsr_thresholds_gate_valid_and_ready():
    rng = np.random.default_rng(0)
    beats = rng.integers(-128, 128, 400)
    harness = Harness(RegisterSlice(), max_inferences=100, input_beats_per_inference=4,
                      output_beats_per_inference={"o_stream": 4})
    half = 128  # probability 1/2 in 1/256 steps
    seen = _amaranth_run(harness, beats, inferences=100, idle=half, backpressure=half)
    assert (seen["captured"].astype(np.int8) == beats).all()
    assert 0.35 < 1 - seen["ready"].mean() < 0.65
    assert 0.2 < 1 - seen["valid"].mean() < 0.8
    assert (np.diff(seen["first"]) > 0).all() and (seen["first"] < seen["last"]).all()
    assert (np.diff(seen["completed"]) >= 0).all() and seen["completed"][-1] == 100
    # A different seed stalls differently, with the same data.
    other = _amaranth_run(harness, beats, inferences=100, idle=half, backpressure=half, seed=2)
    assert (other["captured"] == seen["captured"]).all()
    assert other["total_cycles"] != seen["total_cycles"]


def _amaranth_chunked_run(harness, beats, *, inferences, idle=0, backpressure=0, seed=1):
    """A batch longer than the rings, served as :mod:`zeroskip.testbench.fast_test` serves it:
    on every ``wake``, read back what finished, release it, load what fits."""
    capacity, per = harness.max_inferences_value, harness.input_beats_per_inference
    out = harness.output_beats_per_inference["o_stream"]
    lanes = harness.lanes_per_load
    ring = np.zeros(-(-capacity * per // lanes) * lanes, dtype=np.int64)
    seen = {"first": [], "last": [], "captured": [], "wakes": 0}

    async def testbench(ctx):
        state = {"loaded": 0, "released": 0}

        async def load():
            upto = min(inferences, state["released"] + capacity, ctx.get(harness.sent) + capacity)
            if upto <= state["loaded"]:
                return
            positions = np.arange(state["loaded"] * per, upto * per) % (capacity * per)
            ring[positions] = beats[state["loaded"] * per:upto * per]
            words = np.unique(positions // lanes)
            for word in words.tolist():
                for _ in _load_words(ctx, harness, ring[word * lanes:(word + 1) * lanes], word):
                    await ctx.tick()
            state["loaded"] = upto
            ctx.set(harness.loaded, upto)

        def wake_at():
            return min(inferences, state["released"] + max(capacity // 2, 1))

        await ctx.tick()
        await load()
        for port, value in [(harness.inferences, inferences), (harness.seed, seed),
                            (harness.idle_threshold, idle), (harness.wake_at, wake_at()),
                            (harness.backpressure_threshold, backpressure), (harness.start, 1)]:
            ctx.set(port, value)
        await ctx.tick()
        ctx.set(harness.start, 0)
        for _ in range(5000):
            await ctx.tick()
            if ctx.get(harness.wake) or ctx.get(harness.done):
                seen["wakes"] += 1
                done = ctx.get(harness.completed)
                first, last, captured = _read(
                    ctx, harness, "o_stream", np.arange(state["released"], done) % capacity,
                    np.arange(state["released"] * out, done * out) % (capacity * out))
                seen["first"] += first
                seen["last"] += last
                seen["captured"] += captured
                state["released"] = done
                ctx.set(harness.released, done)
                if ctx.get(harness.done):
                    break
                await load()
                ctx.set(harness.wake_at, wake_at())
                await ctx.tick().repeat(2)
        seen["total_cycles"] = ctx.get(harness.total_cycles)
        seen["held_cycles"] = ctx.get(harness.held_cycles)

    sim = Simulator(harness)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return {key: np.array(value) if isinstance(value, list) else value
            for key, value in seen.items()}


@pytest.mark.parametrize("make, held", [(RegisterSlice, True), (lambda: SlowSlice(40), False)],
                         ids=["fast", "slow"])
def test_a_batch_longer_than_the_rings_runs_in_chunks(make, held):
    beats = np.random.default_rng(5).integers(-128, 128, 9 * 3)
    spec = {"input_beats_per_inference": 3, "output_beats_per_inference": {"o_stream": 3}}
    stalls = {"idle": 64, "backpressure": 64, "seed": 4}
    whole = _amaranth_run(Harness(make(), max_inferences=16, **spec), beats, inferences=9,
                          **stalls)
    chunked = _amaranth_chunked_run(Harness(make(), max_inferences=2, **spec), beats,
                                    inferences=9, **stalls)
    assert whole["held_cycles"] == 0
    assert (chunked["captured"].astype(np.int8) == beats).all()
    assert len(chunked["first"]) == len(chunked["last"]) == 9 and chunked["wakes"] >= 4
    if held:
        # The passthrough outruns the service of the rings: the harness held it, and says so.
        assert chunked["held_cycles"] > 0
        assert chunked["total_cycles"] > whole["total_cycles"]
    else:
        # Served in time: every cycle is the unbounded run's.
        assert chunked["held_cycles"] == 0
        assert (chunked["first"] == whole["first"]).all()
        assert (chunked["last"] == whole["last"]).all()
        assert chunked["total_cycles"] == whole["total_cycles"]


def test_harness_refuses_bad_parameters():
    with pytest.raises(ValueError, match="max_inferences"):
        Harness(RegisterSlice(), max_inferences=0, input_beats_per_inference=1,
                output_beats_per_inference={"o_stream": 1})
    with pytest.raises(ValueError, match="exactly the DUT's output streams"):
        Harness(RegisterSlice(), max_inferences=1, input_beats_per_inference=1,
                output_beats_per_inference={"o_stream_b": 1})
    with pytest.raises(TypeError, match="wiring.Component"):
        Harness(object(), max_inferences=1, input_beats_per_inference=1,
                output_beats_per_inference={"o_stream": 1})


# ---------------------------------------------------------------------------------------------
# Under Verilator


@pytest.mark.verilator
def test_passthrough_latency_is_one_register(verilator_build_root):
    beats_per_inference = 5
    harness = Harness(RegisterSlice(), max_inferences=8,
                      input_beats_per_inference=beats_per_inference,
                      output_beats_per_inference={"o_stream": beats_per_inference})
    text = convert(harness, "passthrough_harness")
    beats = np.random.default_rng(3).integers(-128, 128, 8 * beats_per_inference)
    spec = (beats_per_inference, {"o_stream": beats_per_inference})
    result = fast_simulate(text, "passthrough_harness", beats, {"o_stream": True}, spec,
                           build_root=verilator_build_root)
    assert (result.outputs["o_stream"] == beats).all()
    # Without stalls inferences go back to back, and each takes its beats plus the register.
    assert result.first_input_cycle.tolist() == list(range(0, 40, beats_per_inference))
    assert (result.latencies == beats_per_inference + 1).all()
    assert result.cycles == 8 * beats_per_inference + 1

    stalled = fast_simulate(text, "passthrough_harness", beats[:15], {"o_stream": True}, spec,
                            build_root=verilator_build_root, idle_probability=STALLS,
                            backpressure_probability=STALLS, seed=7)
    assert stalled.build_seconds == 0.0
    assert (stalled.outputs["o_stream"] == beats[:15]).all()
    assert (stalled.latencies >= beats_per_inference + 1).all()

    # A successful run leaves no run directory behind; a failed one keeps it and names it.
    runs = verilator_build_root.glob("passthrough_harness-*/runs/*")
    assert result.run_dir is None and stalled.run_dir is None and not list(runs)
    with pytest.raises(SimulationError, match="did not rise within 10 cycles") as timeout:
        fast_simulate(text, "passthrough_harness", beats, {"o_stream": True}, spec,
                      build_root=verilator_build_root, timeout_cycles=10)
    kept = sorted(verilator_build_root.glob("passthrough_harness-*/runs/*"))
    assert kept == [timeout.value.run_dir]
    assert f"run directory {timeout.value.run_dir}" in str(timeout.value)
    for path in kept:
        shutil.rmtree(path)
    # A batch longer than the rings runs in chunks through the same model, bit-exact, served
    # while it runs without holding the passthrough back: back to back, as one run.
    longer = np.random.default_rng(4).integers(-128, 128, 50 * beats_per_inference)
    chunked = fast_simulate(text, "passthrough_harness", longer, {"o_stream": True}, spec,
                            build_root=verilator_build_root)
    assert chunked.build_seconds == 0.0
    assert (chunked.outputs["o_stream"] == longer).all()
    assert result.held_cycles == chunked.held_cycles == 0
    assert chunked.first_input_cycle.tolist() == list(range(0, 250, beats_per_inference))
    assert (chunked.latencies == beats_per_inference + 1).all()


@pytest.mark.verilator
def test_conv_engine_is_bit_exact_in_the_harness(verilator_build_root):
    rng = np.random.default_rng(11)
    graph = conv_graph(rng, channels=4, filters=6, size=6, kernel=3, padding=1)
    node = graph.nodes[-1]
    in_shape, out_shape = graph.input.shape, graph.shapes[node.name]
    in_beats, out_beats = int(np.prod(in_shape)), int(np.prod(out_shape))
    engine = SparseConvEngine(node, in_shape, graph.input.act, lanes=2)
    harness = Harness(engine, max_inferences=8, input_beats_per_inference=in_beats,
                      output_beats_per_inference={"o_stream": out_beats})
    text = convert(harness, "conv_harness")
    spec = (in_beats, {"o_stream": out_beats})
    signed_output = {"o_stream": node.act.signed}

    for batch, seed in [(6, 1), (8, 2)]:
        x = random_inputs(rng, graph, batch)
        result = fast_simulate(text, "conv_harness", batch_to_beats(x), signed_output, spec,
                               build_root=verilator_build_root, idle_probability=STALLS,
                               backpressure_probability=STALLS, seed=seed)
        expected = reference.run(graph, x)
        assert (batch_from_beats(result.outputs["o_stream"], out_shape) == expected).all()
        first, last = result.first_input_cycle, result.last_output_cycle
        assert (np.diff(first) > 0).all() and (np.diff(last) > 0).all()
        assert (first <= last).all()
        assert result.cycles == last[-1] + 1
        assert result.counters["busy_cycles"] > 0
        print(f"conv in harness: batch {batch}, {result.cycles} cycles, "
              f"{result.cycles_per_second:,.0f} cycles/s, run {result.seconds:.2f} s, "
              f"build {result.build_seconds:.1f} s")
    # The second batch ran on the model the first one built.
    assert result.build_seconds == 0.0


@pytest.mark.verilator
def test_progress_is_reported_while_running(verilator_build_root):
    inferences, delay = 20, 20_000
    harness = Harness(SlowSlice(delay), max_inferences=inferences, input_beats_per_inference=1,
                      output_beats_per_inference={"o_stream": 1})
    text = convert(harness, "slow_harness")
    beats = np.arange(inferences) - 10
    spec = (1, {"o_stream": 1})
    calls = []
    result = fast_simulate(text, "slow_harness", beats, {"o_stream": True}, spec,
                           build_root=verilator_build_root,
                           progress=lambda done, total: calls.append((done, total)))
    assert (result.outputs["o_stream"] == beats).all()
    assert result.cycles == inferences * (delay + 2)
    # Some 0.2 s apart while the run lasts, never decreasing; exactly one final report.
    done = [call[0] for call in calls]
    assert {call[1] for call in calls} == {inferences}
    assert done[-1] == inferences and done.count(inferences) == 1
    assert done == sorted(done) and any(0 < count < inferences for count in done)
    print(f"slow harness: {len(calls)} progress reports, {result.cycles_per_second:,.0f} "
          f"cycles/s, run {result.seconds:.2f} s")

    # The sliced wait keeps the timeout, to the cycle.
    with pytest.raises(SimulationError, match="did not rise within 30000 cycles"):
        fast_simulate(text, "slow_harness", beats, {"o_stream": True}, spec,
                      build_root=verilator_build_root, timeout_cycles=30_000,
                      progress=lambda done, total: None)

    # A callback that raises cancels the run: it ends at its next slice, not after the batch.
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    started = time.monotonic()
    with pytest.raises(Stop):
        fast_simulate(text, "slow_harness", beats, {"o_stream": True}, spec,
                      build_root=verilator_build_root, progress=stop)
    assert time.monotonic() - started < result.seconds + 5
    runs = sorted(verilator_build_root.glob("slow_harness-*/runs/fast-*"),
                  key=lambda path: path.stat().st_mtime)
    failure = json.loads((runs[-1] / "result.json").read_text())["failure"]
    assert failure.startswith("cancelled by the caller after")


@pytest.mark.verilator
def test_chunks_served_in_time_give_the_cycles_of_one_run(verilator_build_root):
    inferences, delay = 20, 20_000
    beats = np.arange(inferences) - 10
    spec = (1, {"o_stream": 1})
    results = []
    for capacity, top in [(inferences, "slow_harness"), (4, "slow_chunked_harness")]:
        harness = Harness(SlowSlice(delay), max_inferences=capacity,
                          input_beats_per_inference=1, output_beats_per_inference={"o_stream": 1})
        results.append(fast_simulate(convert(harness, top), top, beats, {"o_stream": True}, spec,
                                     build_root=verilator_build_root, idle_probability=STALLS,
                                     backpressure_probability=STALLS, seed=3))
    whole, chunked = results
    assert (chunked.outputs["o_stream"] == beats).all()
    assert whole.held_cycles == chunked.held_cycles == 0
    assert (chunked.first_input_cycle == whole.first_input_cycle).all()
    assert (chunked.last_output_cycle == whole.last_output_cycle).all()
    assert chunked.cycles == whole.cycles


def test_progress_bar_draws_on_terminals_only():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log = io.StringIO()
    bar = ProgressBar(stream=log)
    for done in (0, 120, 360):
        bar(done, 360)
    assert log.getvalue() == ""

    terminal = Terminal()
    with ProgressBar(stream=terminal, label="digits", width=10) as bar:
        bar(0, 360)
        bar(120, 360)
        bar(360, 360)
        bar(1, 2)  # a next run starts a new bar
    frames = terminal.getvalue().split("\r")[1:]
    assert re.fullmatch(r"digits \[\.{10}\] 0/360 inferences, \d+\.\d s", frames[0].rstrip())
    assert frames[1].startswith("digits [###.......] 120/360 inferences, ")
    assert frames[2].startswith("digits [##########] 360/360 inferences, ")
    assert frames[2].endswith(" s\n")
    # The bar the context manager closed ends its line too.
    assert frames[3].startswith("digits [#####.....] 1/2 inferences, ")
    assert frames[3].endswith(" s\n")


@pytest.mark.verilator
def test_waves_are_dumped_into_the_run_directory(verilator_build_root, monkeypatch):
    harness = Harness(RegisterSlice(), max_inferences=4, input_beats_per_inference=3,
                      output_beats_per_inference={"o_stream": 3})
    text = convert(harness, "waves_harness")
    beats = np.arange(12) - 6
    spec = (3, {"o_stream": 3})
    result = fast_simulate(text, "waves_harness", beats, {"o_stream": True}, spec,
                           build_root=verilator_build_root, waves="vcd")
    assert (result.outputs["o_stream"] == beats).all()
    assert result.waves_path == result.run_dir / "waves.vcd"
    dump = result.waves_path.read_text()
    # The DUT's own signals are in it, not only the harness's ports.
    assert "$scope module dut" in dump
    for name in ("i_stream__valid", "o_stream__payload", "completed"):
        assert re.search(rf"\$var \w+ +\d+ +\S+ +{name}[ \[]", dump), name

    monkeypatch.setattr(runner, "fst_available", lambda: False)
    with pytest.raises(runner.BuildError, match="lz4"):
        fast_simulate(text, "waves_harness", beats, {"o_stream": True}, spec,
                      build_root=verilator_build_root, waves="fst")
    with pytest.raises(ValueError, match="waves must be one of"):
        fast_simulate(text, "waves_harness", beats, {"o_stream": True}, spec,
                      build_root=verilator_build_root, waves="gtkw")
