"""Tests for zeroskip.testbench: deterministic Verilog, scoped lint waivers, cached Verilator
builds, and stream jobs that check outputs, counters, cycles and failures under random idle and
backpressure.

Three tiny components follow the contract of zeroskip.hdl.common; each is built once per session
(about 10 s each on two cores), every run after that takes a second or two.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from zeroskip.hdl.common import COUNTER_NAMES, COUNTER_WIDTH, counters_signature
from zeroskip.hdl.verilog import WAIVER_FILE
from zeroskip.testbench import runner, verilog
from zeroskip.hdl.verilog import convert
from zeroskip.testbench.runner import OutputStream, SimulationError, StreamJob

SHAKEN = {"idle_probability": 0.35, "backpressure_probability": 0.35}


class RegisteredPassthrough(wiring.Component):
    """One register stage from i_stream to o_stream; a beat per cycle when nothing stalls."""

    def __init__(self, shape=unsigned(8)):
        super().__init__(
            {"i_stream": In(stream.Signature(shape)), "o_stream": Out(stream.Signature(shape))}
        )

    def elaborate(self, platform):
        m = Module()
        # The register takes a new beat whenever it is empty or being emptied this cycle.
        m.d.comb += self.i_stream.ready.eq(~self.o_stream.valid | self.o_stream.ready)
        with m.If(self.i_stream.ready):
            m.d.sync += self.o_stream.valid.eq(self.i_stream.valid)
            m.d.sync += self.o_stream.payload.eq(self.i_stream.payload)
        return m


class AddOneAndCount(wiring.Component):
    """o = i + 1 (signed 8 bits in, signed 9 out), with the four contract counters.

    effective_macs counts nonzero beats taken and skipped_pairs zero ones (exact whatever the
    timing); busy_cycles counts cycles holding a result and stall_cycles those where it waits.
    """

    def __init__(self):
        super().__init__(
            {
                "i_stream": In(stream.Signature(signed(8))),
                "o_stream": Out(stream.Signature(signed(9))),
                "counters": Out(counters_signature()),
            }
        )

    def elaborate(self, platform):
        m = Module()
        i, o, counters = self.i_stream, self.o_stream, self.counters
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(i.ready):
            m.d.sync += o.valid.eq(i.valid)
            m.d.sync += o.payload.eq(i.payload + 1)
        with m.If(i.valid & i.ready):
            with m.If(i.payload != 0):
                m.d.sync += counters.effective_macs.eq(counters.effective_macs + 1)
            with m.Else():
                m.d.sync += counters.skipped_pairs.eq(counters.skipped_pairs + 1)
        with m.If(o.valid):
            m.d.sync += counters.busy_cycles.eq(counters.busy_cycles + 1)
        with m.If(o.valid & ~o.ready):
            m.d.sync += counters.stall_cycles.eq(counters.stall_cycles + 1)
        return m


class BrokenPassthrough(wiring.Component):
    """A passthrough with two bugs: beat 5 leaves with its low bit flipped, and a beat kept
    waiting by backpressure has its top bit flipped every cycle (breaking the stream rules)."""

    CORRUPTED_BEAT = 5

    def __init__(self):
        super().__init__(
            {
                "i_stream": In(stream.Signature(unsigned(8))),
                "o_stream": Out(stream.Signature(unsigned(8))),
            }
        )

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        taken = Signal(8)
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(i.ready):
            m.d.sync += o.valid.eq(i.valid)
            m.d.sync += o.payload.eq(i.payload ^ (taken == self.CORRUPTED_BEAT))
        with m.Elif(o.valid):
            m.d.sync += o.payload.eq(o.payload ^ 0x80)
        with m.If(i.valid & i.ready):
            m.d.sync += taken.eq(taken + 1)
        return m


class FifoWithFsm(wiring.Component):
    """Only linted, never simulated: a FIFO submodule, an FSM, a variable bit select and a
    zero-width lane index bring out every artefact the waiver file covers."""

    def __init__(self):
        super().__init__(
            {
                "i_stream": In(stream.Signature(signed(8))),
                "o_stream": Out(stream.Signature(signed(16))),
                "counters": Out(counters_signature()),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=8, depth=4)
        wiring.connect(m, wiring.flipped(self.i_stream), queue.w_stream)
        total = Signal(signed(24))
        shift = Signal(3)
        lane = Signal(range(1))  # the lane of a one-lane engine: zero bits
        with m.FSM():
            with m.State("ADD"):
                m.d.comb += queue.r_stream.ready.eq(1)
                with m.If(queue.r_stream.valid):
                    m.d.sync += total.eq(total + queue.r_stream.payload.as_signed())
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += self.o_stream.valid.eq(1)
                m.d.comb += self.o_stream.payload.eq(total.bit_select(shift, 16) + lane)
                with m.If(self.o_stream.ready):
                    m.d.sync += shift.eq(shift + 1)
                    m.next = "ADD"
        return m


# ---------------------------------------------------------------------------------------------
# Verilog and lint (no simulation)


def _no_machine_paths(text):
    return "src =" not in text and str(Path(__file__).resolve().parent.parent) not in text


def test_convert_names_ports_after_the_signature():
    text = convert(AddOneAndCount(), "add_one")
    for port in ("clk", "rst", "i_stream__payload", "o_stream__ready", "counters__busy_cycles"):
        assert f" {port};" in text
    assert _no_machine_paths(text)


def test_convert_is_deterministic_across_processes():
    """Same component, same bytes: twice here, and in a process with another hash seed."""
    components = ["RegisteredPassthrough", "AddOneAndCount", "BrokenPassthrough", "FifoWithFsm"]
    here = {name: convert(globals()[name](), "top") for name in components}
    assert here == {name: convert(globals()[name](), "top") for name in components}
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_testbench as t; "
        "from zeroskip.hdl.verilog import convert; "
        "print(json.dumps({n: convert(getattr(t, n)(), 'top') for n in sys.argv[2:]}))"
    )
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    completed = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent), *components],
        env=dict(os.environ, PYTHONHASHSEED=hash_seed),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(completed.stdout) == here
    assert all(_no_machine_paths(text) for text in here.values())


@pytest.mark.parametrize(
    "component", [RegisteredPassthrough, AddOneAndCount, BrokenPassthrough, FifoWithFsm]
)
def test_lint_passes_on_amaranth_output_with_the_waivers(component, tmp_path):
    path = tmp_path / "dut.v"
    path.write_text(convert(component(), "dut"))
    verilog.lint(path, "dut")


def test_lint_waivers_are_all_needed_and_scoped_to_amaranth_output(tmp_path):
    """Without the Amaranth banner the same Verilog trips every waived rule: the waivers cover
    generated files only, and each one is needed for Amaranth's output to pass."""
    text = convert(FifoWithFsm(), "dut")
    banner, _, body = text.partition("\n")
    assert "Generated by Amaranth Yosys" in banner
    path = tmp_path / "dut.v"
    path.write_text(body)
    with pytest.raises(verilog.LintError) as failure:
        verilog.lint(path, "dut")
    tripped = set(re.findall(r"%Warning-(\w+)", failure.value.report))
    waived = set(re.findall(r"^lint_off -rule (\w+)", WAIVER_FILE.read_text(), re.MULTILINE))
    assert tripped == waived


def test_lint_fails_on_bad_hand_written_verilog(tmp_path):
    path = tmp_path / "bad.v"
    path.write_text(
        "module bad(input wire [7:0] a, output wire [3:0] y);\n"
        "  assign y = a;\n"
        "endmodule\n"
    )
    with pytest.raises(verilog.LintError) as failure:
        verilog.lint(path, "bad")
    message = str(failure.value)
    assert "WIDTHTRUNC" in message and "bad.v:2" in message and str(WAIVER_FILE) in message


def test_lint_keeps_the_top_module_file_name_check(tmp_path):
    path = tmp_path / "elsewhere.v"
    path.write_text(convert(RegisteredPassthrough(), "passthrough"))
    with pytest.raises(verilog.LintError, match="DECLFILENAME"):
        verilog.lint(path, "passthrough")


# ---------------------------------------------------------------------------------------------
# Jobs checked before anything is built or run


def test_job_rejects_impossible_settings():
    with pytest.raises(ValueError, match="idle_probability"):
        StreamJob(idle_probability=1.0)
    with pytest.raises(ValueError, match="waves"):
        StreamJob(waves="gif")
    with pytest.raises(ValueError, match="count=3 but 2 expected"):
        OutputStream(count=3, expected=[1, 2])
    with pytest.raises(ValueError, match="integers"):
        StreamJob(inputs={"i_stream": [0.5]})
    counted = StreamJob(outputs={"o_stream": 4}).outputs["o_stream"]
    assert (counted.count, counted.signed, counted.expected) == (4, False, None)


# ---------------------------------------------------------------------------------------------
# Verilator builds and runs


@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("verilator-builds")


@pytest.fixture(scope="session")
def passthrough_text():
    return convert(RegisteredPassthrough(), "passthrough")


@pytest.fixture(scope="session")
def passthrough(passthrough_text, build_root):
    return runner.build_model(passthrough_text, "passthrough", build_root)


@pytest.fixture(scope="session")
def add_one(build_root):
    return runner.build_model(convert(AddOneAndCount(), "add_one"), "add_one", build_root)


@pytest.fixture(scope="session")
def broken(build_root):
    return runner.build_model(convert(BrokenPassthrough(), "broken"), "broken", build_root)


def passthrough_job(beats, **settings):
    return StreamJob(
        inputs={"i_stream": beats},
        outputs={"o_stream": OutputStream(expected=beats)},
        **settings,
    )


@pytest.mark.verilator
def test_passthrough_under_idle_and_backpressure(passthrough):
    beats = np.random.default_rng(0).integers(0, 256, 300)
    kept = sorted((passthrough.build_dir / "runs").glob("*"))
    result = runner.run(passthrough, passthrough_job(beats, seed=7, **SHAKEN))
    # The run's directory went with its success (failed runs keep theirs: see below).
    assert result.run_dir is None and sorted((passthrough.build_dir / "runs").glob("*")) == kept
    np.testing.assert_array_equal(result.outputs["o_stream"], beats)
    assert result.outputs["o_stream"].dtype == np.int64
    # Each side stalls about a third of the cycles: well over the 301 of a free-running run.
    assert result.cycles > 1.3 * len(beats)
    assert result.counters == {}
    again = runner.run(passthrough, passthrough_job(beats, seed=7, **SHAKEN))
    assert again.cycles == result.cycles, "the same seed must give the same run"


@pytest.mark.verilator
def test_cycles_of_a_free_running_stream(passthrough):
    """One register stage, no idle, no backpressure: N beats take N + 1 cycles."""
    beats = np.arange(100)
    result = runner.run(passthrough, passthrough_job(beats))
    assert result.cycles == len(beats) + 1


@pytest.mark.verilator
def test_signed_payloads_and_counters(add_one):
    rng = np.random.default_rng(1)
    beats = np.concatenate([[-128, -1, 0, 127], rng.integers(-128, 128, 200)])
    beats[rng.random(beats.size) < 0.4] = 0  # a sparse stream, as after ReLU
    job = StreamJob(
        inputs={"i_stream": beats},
        outputs={"o_stream": OutputStream(signed=True, expected=beats + 1)},
        seed=3,
        **SHAKEN,
    )
    result = runner.run(add_one, job)
    out = result.outputs["o_stream"]
    np.testing.assert_array_equal(out, beats + 1)
    assert out[:4].tolist() == [-127, 0, 1, 128]  # 9 bits: -127 and 128 need the sign bit right
    assert set(result.counters) == set(COUNTER_NAMES)
    assert result.counters["effective_macs"] == np.count_nonzero(beats)
    assert result.counters["skipped_pairs"] == np.count_nonzero(beats == 0)
    assert result.counters["stall_cycles"] > 0
    assert len(beats) <= result.counters["busy_cycles"] < 2**COUNTER_WIDTH


@pytest.mark.verilator
def test_collected_without_a_scoreboard_and_without_stalls(add_one):
    beats = np.array([5, -6, 0, 7])
    job = StreamJob(inputs={"i_stream": beats}, outputs={"o_stream": OutputStream(4, signed=True)})
    result = runner.run(add_one, job)
    assert result.outputs["o_stream"].tolist() == [6, -5, 1, 8]
    assert result.counters["stall_cycles"] == 0


@pytest.mark.verilator
def test_a_corrupted_beat_fails_naming_stream_beat_and_values(broken):
    beats = np.arange(10)
    with pytest.raises(SimulationError, match=r"o_stream beat 5: expected 5, got 4") as failure:
        runner.run(broken, passthrough_job(beats))
    assert (failure.value.run_dir / "sim.log").exists()


@pytest.mark.verilator
def test_a_payload_changed_under_backpressure_is_a_protocol_violation(broken):
    beats = np.arange(4)  # fewer than the corrupted beat's index
    with pytest.raises(SimulationError, match=r"o_stream: protocol violation at beat \d: payload"):
        runner.run(broken, passthrough_job(beats, backpressure_probability=0.5, seed=1))


@pytest.mark.verilator
def test_missing_beats_time_out_with_progress(passthrough):
    beats = np.arange(10)
    job = StreamJob(inputs={"i_stream": beats}, outputs={"o_stream": 11}, timeout_cycles=200)
    with pytest.raises(
        SimulationError,
        match=r"timed out after 200 cycles: o_stream got 10 of 11 beats; i_stream sent 10 of 10",
    ):
        runner.run(passthrough, job)


@pytest.mark.verilator
def test_an_extra_beat_fails(passthrough):
    beats = np.arange(10)
    job = StreamJob(
        inputs={"i_stream": beats}, outputs={"o_stream": OutputStream(expected=beats[:9])}
    )
    with pytest.raises(SimulationError, match=r"o_stream: unexpected beat 9 \(value 9\) after"):
        runner.run(passthrough, job)


@pytest.mark.verilator
def test_jobs_that_do_not_fit_the_design_are_rejected_before_running(passthrough, add_one):
    with pytest.raises(ValueError, match="leaves out stream"):
        runner.run(passthrough, StreamJob(inputs={"i_stream": [1]}))
    with pytest.raises(ValueError, match="no output stream 'result'"):
        runner.run(
            passthrough,
            StreamJob(inputs={"i_stream": [1]}, outputs={"result": 1, "o_stream": 1}),
        )
    with pytest.raises(ValueError, match="input stream i_stream: beat 1 is 256"):
        runner.run(passthrough, passthrough_job(np.array([1, 256])))
    unsigned_expectation = StreamJob(
        inputs={"i_stream": [-3]}, outputs={"o_stream": OutputStream(expected=[-2])}
    )
    with pytest.raises(ValueError, match="signed=True"):
        runner.run(add_one, unsigned_expectation)
    with pytest.raises(ValueError, match="built with waves=None"):
        runner.run(passthrough, passthrough_job(np.arange(3), waves="vcd"))


@pytest.mark.verilator
def test_builds_are_reused_in_process_and_across_processes(
    passthrough, passthrough_text, build_root, tmp_path
):
    marker = passthrough.build_dir / "zeroskip-build.json"
    stamp = marker.stat().st_mtime_ns
    started = time.monotonic()
    again = runner.build_model(passthrough_text, "passthrough", build_root)
    assert time.monotonic() - started < 1.0
    assert again.reused and again.build_seconds == 0.0 and again.build_dir == passthrough.build_dir

    source = tmp_path / "passthrough.v"
    source.write_text(passthrough_text)
    script = (
        "import json, sys; from zeroskip.testbench import runner; "
        "m = runner.build_model(open(sys.argv[1]).read(), 'passthrough', sys.argv[2]); "
        "print(json.dumps({'reused': m.reused, 'dir': str(m.build_dir)}))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(source), str(build_root)],
        capture_output=True, text=True, check=True, timeout=120,
    )
    assert json.loads(completed.stdout) == {"reused": True, "dir": str(passthrough.build_dir)}
    assert marker.stat().st_mtime_ns == stamp


@pytest.mark.verilator
def test_waveform_on_request(passthrough_text, build_root):
    # FST where Verilator's FST writer can be built (it needs liblz4-dev), VCD elsewhere: a
    # waveform build costs as much as a model, so the suite pays for one.
    wave_format = "fst" if runner.fst_available() else "vcd"
    beats = np.arange(20)
    result = runner.simulate(
        passthrough_text, "passthrough", passthrough_job(beats, waves=wave_format), build_root
    )
    np.testing.assert_array_equal(result.outputs["o_stream"], beats)
    assert result.waves == result.run_dir / f"waves.{wave_format}"
    assert result.waves.stat().st_size > 0
