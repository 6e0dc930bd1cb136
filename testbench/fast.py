"""Run whole input batches through a :class:`~zeroskip.testbench.harness.Harness` under Verilator.

Where :mod:`zeroskip.testbench.runner` drives every clock edge from Python, here the harness in
the design drives the streams, stalls them and timestamps them, and the clock is cocotb's C++
clock: Python loads the inputs, pulses ``start``, sleeps until ``done`` and reads the memories
back, so the model runs at Verilator's native speed between the two. One compiled model serves
any batch up to the harness's capacity. Typical use::

    from zeroskip.testbench import fast, verilog
    from zeroskip.testbench.harness import Harness

    harness = Harness(engine, max_inferences=360, input_beats_per_inference=64,
                      output_beats_per_inference={"o_stream": 10})
    text = verilog.convert(harness, "digits_harness")
    result = fast.fast_simulate(text, "digits_harness", beats, {"o_stream": True},
                                (64, {"o_stream": 10}), idle_probability=0.3,
                                backpressure_probability=0.3, build_root=build_root)
    result.outputs["o_stream"], result.latencies, result.initiation_intervals

Builds go through :func:`zeroskip.testbench.runner.build_model` (its cache, waivers and make
fixes). A run writes ``job.json`` and ``inputs.npz`` into a fresh run directory, runs the cocotb
test module :mod:`zeroskip.testbench.fast_test`, which writes ``result.json`` and
``outputs.npz`` back, and returns a :class:`FastResult`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cocotb_tools.runner import get_runner

from zeroskip.testbench import runner
from zeroskip.testbench.harness import THRESHOLD_WIDTH

#: The cocotb test module every fast run executes.
TEST_MODULE = "zeroskip.testbench.fast_test"

#: Environment variable that tells the test module its run directory.
RUN_DIR_ENV = "ZEROSKIP_FAST_RUN_DIR"

_JOB_FILE = "job.json"
_INPUTS_FILE = "inputs.npz"
_RESULT_FILE = "result.json"
_OUTPUTS_FILE = "outputs.npz"
_SIM_LOG = "sim.log"


@dataclasses.dataclass(frozen=True)
class FastResult:
    """What a fast run produced.

    Attributes
    ----------
    outputs : dict of str to numpy.ndarray
        Output stream name to its beats (int64, sign-extended for signed streams).
    cycles : int
        Cycles from the first cycle after ``start`` to the last output beat, inclusive.
    first_input_cycle : numpy.ndarray
        Per inference, the cycle its first input beat entered the DUT.
    last_output_cycle : numpy.ndarray
        Per inference, the cycle its last output beat left the DUT (the latest over the output
        streams).
    counters : dict of str to int
        The DUT's counters at the end (``counters__<name>`` ports, keyed by ``<name>``).
    seconds : float
        Wall-clock time of the run (simulator start-up, loading and read-back included).
    simulation_seconds : float
        Wall-clock time from ``start`` to ``done`` alone, as measured inside the simulation.
    build_seconds : float
        Time spent compiling the model for this call (0.0 when a build was reused).
    run_dir : pathlib.Path
        The run's directory (job and result files, ``sim.log``).
    """

    outputs: dict[str, np.ndarray]
    cycles: int
    first_input_cycle: np.ndarray
    last_output_cycle: np.ndarray
    counters: dict[str, int]
    seconds: float
    simulation_seconds: float
    build_seconds: float
    run_dir: Path

    @property
    def latencies(self) -> np.ndarray:
        """Per inference, cycles from its first input beat to its last output beat, inclusive."""
        return self.last_output_cycle - self.first_input_cycle + 1

    @property
    def initiation_intervals(self) -> np.ndarray:
        """Cycles between the first input beats of consecutive inferences."""
        return np.diff(self.first_input_cycle)

    @property
    def cycles_per_second(self) -> float:
        """Simulated cycles per wall-clock second between ``start`` and ``done``."""
        return self.cycles / self.simulation_seconds if self.simulation_seconds else float("inf")


def fast_simulate(
    harness_verilog_text: str,
    top: str,
    inputs: npt.ArrayLike,
    outputs: Mapping[str, bool],
    beats_per_inference: tuple[int, Mapping[str, int]],
    *,
    build_root: str | os.PathLike[str],
    idle_probability: float = 0.0,
    backpressure_probability: float = 0.0,
    seed: int = 0,
    timeout_cycles: int = 10_000_000,
    reset_cycles: int = 4,
) -> FastResult:
    """Build (or reuse) the Verilator model of a harness and run one input batch through it.

    Parameters
    ----------
    harness_verilog_text : str
        A :class:`~zeroskip.testbench.harness.Harness` converted by
        :func:`zeroskip.testbench.verilog.convert`.
    top : str
        Its top module.
    inputs : array-like of int
        The batch's input beats, inference after inference (negative values in two's
        complement); a whole number of inferences.
    outputs : mapping of str to bool
        Every output stream of the DUT, and whether to read its payload as signed.
    beats_per_inference : (int, mapping of str to int)
        Input beats per inference, and output beats per inference of every output stream: the
        values the harness was built with.
    build_root : path-like
        Directory holding the builds (see :func:`zeroskip.testbench.runner.build_model`).
    idle_probability, backpressure_probability : float
        In [0, 1), rounded to steps of 1/256: the source idles, and each sink drops ``ready``,
        in a cycle with this probability.
    seed : int
        Seeds the stall generators (taken modulo 2**32).
    timeout_cycles : int
        Cycles after ``start`` within which ``done`` must rise.
    reset_cycles : int
        Cycles ``rst`` is held high before loading.

    Returns
    -------
    FastResult

    Raises
    ------
    ValueError
        If the batch is not a whole number of inferences, or the streams or probabilities do
        not fit.
    zeroskip.testbench.runner.SimulationError
        If the run times out, a stream sends too many beats, the batch exceeds the harness's
        capacity, or the simulation crashes.
    zeroskip.testbench.runner.BuildError
        If Verilator cannot build the model.
    """
    input_beats_per_inference, output_beats_per_inference = beats_per_inference
    beats = np.asarray(inputs).reshape(-1)
    if beats.size and not np.issubdtype(beats.dtype, np.integer):
        raise ValueError(f"input beats must be integers, got {beats.dtype}")
    beats = beats.astype(np.int64)
    if input_beats_per_inference < 1 or beats.size % input_beats_per_inference:
        raise ValueError(f"{beats.size} input beats are not a whole number of inferences of "
                         f"{input_beats_per_inference} beats")
    if set(outputs) != set(output_beats_per_inference):
        raise ValueError(f"outputs name {sorted(outputs)} but beats_per_inference names "
                         f"{sorted(output_beats_per_inference)}")
    thresholds = {}
    for field, probability in [("idle_probability", idle_probability),
                               ("backpressure_probability", backpressure_probability)]:
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"{field} must be in [0, 1), got {probability}")
        thresholds[field] = min(round(probability * 256), (1 << THRESHOLD_WIDTH) - 1)
    if timeout_cycles < 1 or reset_cycles < 1:
        raise ValueError("timeout_cycles and reset_cycles must be at least 1")

    model = runner.build_model(harness_verilog_text, top, build_root, ports_only=True)
    _check_ports(model, beats, outputs)
    runs = model.build_dir / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="fast-", dir=runs))
    job = {
        "inferences": beats.size // input_beats_per_inference,
        "outputs": {
            name: {"count": beats.size // input_beats_per_inference * count,
                   "signed": bool(outputs[name])}
            for name, count in output_beats_per_inference.items()
        },
        "idle_threshold": thresholds["idle_probability"],
        "backpressure_threshold": thresholds["backpressure_probability"],
        "seed": seed % (1 << 32),
        "timeout_cycles": timeout_cycles,
        "reset_cycles": reset_cycles,
        "clock_period_ns": runner.CLOCK_PERIOD_NS,
        "counters": [name.removeprefix("counters__") for name in model.ports
                     if name.startswith("counters__")],
    }
    np.savez(run_dir / _INPUTS_FILE, inputs=beats)
    (run_dir / _JOB_FILE).write_text(json.dumps(job, indent=2) + "\n")

    started = time.monotonic()
    with runner._cocotb_environment():
        try:
            get_runner("verilator").test(
                test_module=TEST_MODULE,
                hdl_toplevel=model.top,
                hdl_toplevel_lang="verilog",
                build_dir=model.build_dir,
                test_dir=run_dir,
                results_xml=str(run_dir / "results.xml"),
                log_file=run_dir / _SIM_LOG,
                extra_env={RUN_DIR_ENV: str(run_dir)},
            )
        except SystemExit:
            # cocotb's runner exits when the test fails; result.json says why, or its absence
            # says that the simulation crashed.
            pass
    seconds = time.monotonic() - started
    result_path = run_dir / _RESULT_FILE
    if not result_path.exists():
        raise runner.SimulationError(
            f"the simulation of {model.top!r} ended without writing {result_path}; the end of "
            f"{run_dir / _SIM_LOG}:\n{runner._tail(run_dir / _SIM_LOG)}",
            run_dir,
        )
    result = json.loads(result_path.read_text())
    if result["failure"] is not None:
        raise runner.SimulationError(f"{model.top}: {result['failure']} (run directory "
                                     f"{run_dir})", run_dir)
    with np.load(run_dir / _OUTPUTS_FILE) as saved:
        beats_out = {name: saved[f"captured/{name}"] for name in outputs}
        first_input = saved["first_input_cycle"]
        last_output = np.max(np.stack([saved[f"last_output_cycle/{name}"] for name in outputs]),
                             axis=0)
    return FastResult(
        outputs=beats_out,
        cycles=result["cycles"],
        first_input_cycle=first_input,
        last_output_cycle=last_output,
        counters=result["counters"],
        seconds=seconds,
        simulation_seconds=result["simulation_seconds"],
        build_seconds=model.build_seconds,
        run_dir=run_dir,
    )


def _check_ports(model: runner.VerilatorModel, beats: np.ndarray,
                 outputs: Mapping[str, bool]) -> None:
    ports = model.ports
    for port in ("clk", "rst", "start", "done", "load_payload", "read_address"):
        if port not in ports:
            raise ValueError(f"{model.top!r} is not a Harness: it has no port {port!r}")
    for name in outputs:
        if f"captured__{name}" not in ports:
            raise ValueError(f"{model.top!r} captures no output stream {name!r}")
    width = ports["load_payload"].width
    outside = np.flatnonzero((beats < -(1 << (width - 1))) | (beats >= (1 << width)))
    if outside.size:
        index = int(outside[0])
        raise ValueError(f"input beat {index} is {int(beats[index])}, which does not fit the "
                         f"{width}-bit input payload")


def read_job(run_dir: str | os.PathLike[str]) -> tuple[dict, np.ndarray]:
    """The job and input beats :func:`fast_simulate` wrote (the test module's side)."""
    run_dir = Path(run_dir)
    with np.load(run_dir / _INPUTS_FILE) as saved:
        inputs = saved["inputs"]
    return json.loads((run_dir / _JOB_FILE).read_text()), inputs


def write_result(
    run_dir: str | os.PathLike[str],
    *,
    arrays: Mapping[str, npt.ArrayLike],
    cycles: int,
    counters: Mapping[str, int],
    simulation_seconds: float,
    failure: str | None,
) -> None:
    """Write a run's result for :func:`fast_simulate` to read (the test module's side)."""
    run_dir = Path(run_dir)
    np.savez(run_dir / _OUTPUTS_FILE,
             **{name: np.asarray(values, dtype=np.int64) for name, values in arrays.items()})
    result = {"cycles": cycles, "counters": dict(counters),
              "simulation_seconds": simulation_seconds, "failure": failure}
    (run_dir / _RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
