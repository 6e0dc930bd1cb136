"""Run whole input batches through a :class:`~zeroskip.testbench.harness.Harness` under Verilator.

Where :mod:`zeroskip.testbench.runner` drives every clock edge from Python, here the harness in
the design drives the streams, stalls them and timestamps them, and the clock is cocotb's C++
clock: Python loads the inputs, pulses ``start``, sleeps until ``done`` and reads the memories
back, so the model runs at Verilator's native speed between the two. One compiled model serves
any batch: one longer than the harness's rings runs in chunks, read back and loaded while the
model runs (:mod:`zeroskip.testbench.fast_test`). Typical use::

    from zeroskip.hdl.verilog import convert
    from zeroskip.testbench import fast
    from zeroskip.testbench.harness import Harness

    harness = Harness(engine, max_inferences=64, input_beats_per_inference=64,
                      output_beats_per_inference={"o_stream": 10})
    text = convert(harness, "digits_harness")
    result = fast.fast_simulate(text, "digits_harness", beats, {"o_stream": True},
                                (64, {"o_stream": 10}), idle_probability=0.3,
                                backpressure_probability=0.3, build_root=build_root)
    result.outputs["o_stream"], result.latencies, result.initiation_intervals

Long runs can report progress (``progress=ProgressBar()``, or any callable taking the
inferences done and the total) and dump a waveform (``waves="vcd"`` or ``"fst"``, returned as
:attr:`FastResult.waves_path`).

Builds go through :func:`zeroskip.testbench.runner.build_model` (its cache, waivers and make
fixes). A run writes ``job.json`` and ``inputs.npz`` into a fresh run directory under the
model's ``runs/``, runs the cocotb test module :mod:`zeroskip.testbench.fast_test`, which writes
``result.json`` and ``outputs.npz`` back, and returns a :class:`FastResult`. The run directory is
removed after a successful run; one that failed (the error names it) or dumped a waveform keeps
it. With progress reporting, the simulator
runs in a worker thread while the calling thread polls ``progress.json``, which the test module
rewrites after every slice of the run, and leaves a ``cancel`` file to stop the run early if the
callback raises or the caller is interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from zeroskip import progress
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
_PROGRESS_FILE = "progress.json"
_CANCEL_FILE = "cancel"

#: With progress reporting, the test module wakes up about this often (wall time) to update the
#: progress file: Python's share of the run stays under 1%.
PROGRESS_SLICE_SECONDS = 0.25

#: With progress reporting, the calling thread reads the progress file and calls the callback
#: this often.
PROGRESS_POLL_SECONDS = 0.2

# How long to wait for a cancelled run to wind up before giving up on it.
_CANCEL_GRACE_SECONDS = 30.0


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
    held_cycles : int
        Cycles in which the harness's rings held the design back (a batch longer than the rings,
        read back and loaded while it runs, fell behind): 0 means every cycle is what the design
        alone would do.
    run_dir : pathlib.Path or None
        The run's directory (job and result files, ``sim.log``, the waveform), kept when a
        waveform was asked for; None when the run succeeded without one (it was removed).
    waves_path : pathlib.Path or None
        The waveform the run dumped (``waves.vcd`` or ``waves.fst`` in ``run_dir``), or None if
        none was asked for.
    """

    outputs: dict[str, np.ndarray]
    cycles: int
    first_input_cycle: np.ndarray
    last_output_cycle: np.ndarray
    counters: dict[str, int]
    seconds: float
    simulation_seconds: float
    build_seconds: float
    held_cycles: int
    run_dir: Path | None
    waves_path: Path | None = None

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
    progress: Callable[[int, int], object] | None = None,
    waves: str | None = None,
    elements: Mapping[str, int] | None = None,
) -> FastResult:
    """Build (or reuse) the Verilator model of a harness and run one input batch through it.

    Parameters
    ----------
    harness_verilog_text : str
        A :class:`~zeroskip.testbench.harness.Harness` converted by
        :func:`zeroskip.hdl.verilog.convert`.
    top : str
        Its top module.
    inputs : array-like of int
        The batch's input beats, inference after inference (negative values in two's
        complement); a whole number of inferences. For an input of several elements a beat
        (``elements``), the elements in stream order.
    outputs : mapping of str to bool
        Every output stream of the DUT, and whether to read its payload (each element of it)
        as signed.
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
    progress : callable, optional
        Called as ``progress(done, total)`` with the inferences completed so far and the batch's
        inferences, from the calling thread: about every :data:`PROGRESS_POLL_SECONDS` while
        the simulation runs, with ``done < total`` (never decreasing), then once with
        ``done == total`` if and when the run succeeds. :class:`ProgressBar` draws one. If it
        raises, the run is cancelled (at its next slice) and the exception propagates.
    waves : {"vcd", "fst"} or None
        Dump a waveform of the whole run into the run directory (see
        :attr:`FastResult.waves_path`). It needs a model built with tracing, a separate build
        from the one without; and it slows the simulation down a lot.
    elements : mapping of str to int, optional
        Elements per beat of ``"i_stream"`` and of output streams (1 where not named): a
        payload of ``k`` elements holds them side by side, the first in the low bits. Inputs
        are given, and outputs returned, as elements.

    Returns
    -------
    FastResult

    Raises
    ------
    ValueError
        If the batch is not a whole number of inferences, or the streams or probabilities do
        not fit.
    zeroskip.testbench.runner.SimulationError
        If the run times out, a stream sends too many beats, or the simulation crashes.
    zeroskip.testbench.runner.BuildError
        If Verilator cannot build the model, or ``waves="fst"`` is asked for where the lz4
        headers that Verilator's FST writer needs are missing (see
        :func:`zeroskip.testbench.runner.fst_available`; ``waves="vcd"`` always works).
    """
    input_beats_per_inference, output_beats_per_inference = beats_per_inference
    elements = dict(elements or {})
    unknown = sorted(set(elements) - {"i_stream", *outputs})
    if unknown or any(not isinstance(count, int) or count < 1 for count in elements.values()):
        raise ValueError(f"elements must map 'i_stream' and output streams to positive counts, "
                         f"got {elements}")
    input_elements = elements.get("i_stream", 1)
    beats, thresholds = _checked_job(inputs, outputs, input_beats_per_inference * input_elements,
                                     output_beats_per_inference, idle_probability,
                                     backpressure_probability, timeout_cycles, reset_cycles,
                                     waves)

    model = runner.build_model(harness_verilog_text, top, build_root, waves=waves,
                               ports_only=True)
    _check_ports(model, beats, outputs)
    runs = model.build_dir / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="fast-", dir=runs))
    job = {
        "inferences": beats.size // (input_beats_per_inference * input_elements),
        "input_beats": input_beats_per_inference,
        "input_elements": input_elements,
        "outputs": {
            name: {"beats": count, "signed": bool(outputs[name]),
                   "elements": elements.get(name, 1)}
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
        "progress_seconds": PROGRESS_SLICE_SECONDS if progress is not None else None,
    }
    np.savez(run_dir / _INPUTS_FILE, inputs=beats)
    (run_dir / _JOB_FILE).write_text(json.dumps(job, indent=2) + "\n")

    waves_path = run_dir / f"waves.{waves}" if waves is not None else None

    def simulate() -> None:
        runner.run_test_module(model, TEST_MODULE, run_dir, RUN_DIR_ENV, waves_path)

    started = time.monotonic()
    with runner._cocotb_environment():
        if progress is None:
            simulate()
        else:
            _simulate_reporting_progress(simulate, run_dir, job["inferences"], progress)
    seconds = time.monotonic() - started
    result = _read_result(model, run_dir, outputs, seconds, waves_path)
    if waves_path is None:
        # Nothing in it is wanted after a successful run; a failed one keeps it (the error
        # names it), and so does one that dumped a waveform.
        shutil.rmtree(run_dir, ignore_errors=True)
        result = dataclasses.replace(result, run_dir=None)
    return result


def _checked_job(inputs, outputs, input_beats_per_inference, output_beats_per_inference,
                 idle_probability, backpressure_probability, timeout_cycles, reset_cycles, waves):
    """:func:`fast_simulate`'s arguments checked: the input beats as int64 and the stall
    thresholds."""
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
    if waves is not None and waves not in runner.WAVE_FORMATS:
        raise ValueError(f"waves must be one of {runner.WAVE_FORMATS} or None, got {waves!r}")
    if waves == "fst" and not runner.fst_available():
        raise runner.BuildError(
            "FST waveforms need the lz4 headers, which Verilator's FST writer includes; install "
            "them (Debian/Ubuntu: `apt-get install liblz4-dev`) or use waves='vcd'")
    return beats, thresholds


def _read_result(model, run_dir, outputs, seconds, waves_path):
    """The :class:`FastResult` a finished run left in ``run_dir``."""
    where = f"run directory {run_dir}" + (f", waveform {waves_path}" if waves_path else "")
    result_path = run_dir / _RESULT_FILE
    if not result_path.exists():
        raise runner.SimulationError(
            f"the simulation of {model.top!r} ended without writing {result_path} ({where}); "
            f"the end of {run_dir / _SIM_LOG}:\n{runner._tail(run_dir / _SIM_LOG)}",
            run_dir,
        )
    result = json.loads(result_path.read_text())
    if result["failure"] is not None:
        raise runner.SimulationError(f"{model.top}: {result['failure']} ({where})", run_dir)
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
        held_cycles=result["held_cycles"],
        run_dir=run_dir,
        waves_path=waves_path,
    )


def _simulate_reporting_progress(simulate: Callable[[], None], run_dir: Path, total: int,
                                 progress: Callable[[int, int], object]) -> None:
    """Run ``simulate`` in a worker thread; poll the progress file and report, until it ends."""
    finished = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            simulate()
        except BaseException as error:  # handed over to the calling thread
            errors.append(error)
        finally:
            finished.set()

    # A daemon, so that a simulation that ignores its cancellation cannot hold the interpreter.
    worker = threading.Thread(target=work, name=f"fast-simulate {run_dir.name}", daemon=True)
    worker.start()
    done = 0
    try:
        while not finished.wait(PROGRESS_POLL_SECONDS):
            if total > 0:
                # done == total is the final report, made once the run has succeeded; until
                # then (the results are still being read back) the count stops one short.
                done = max(done, min(read_progress(run_dir) or 0, total - 1))
                progress(done, total)
    except BaseException:
        # The callback raised, or the caller was interrupted: stop the run at its next slice.
        (run_dir / _CANCEL_FILE).touch()
        finished.wait(_CANCEL_GRACE_SECONDS)
        raise
    if errors:
        raise errors[0]
    result_path = run_dir / _RESULT_FILE
    if result_path.exists() and json.loads(result_path.read_text())["failure"] is None:
        progress(total, total)


def _check_ports(model: runner.VerilatorModel, beats: np.ndarray,
                 outputs: Mapping[str, bool]) -> None:
    ports = model.ports
    for port in ("clk", "rst", "start", "done", "wake", "load_payload", "load_address",
                 "timestamp_address"):
        if port not in ports:
            raise ValueError(f"{model.top!r} is not a Harness: it has no port {port!r}")
    for name in outputs:
        if f"captured__{name}" not in ports or f"capture_address__{name}" not in ports:
            raise ValueError(f"{model.top!r} captures no output stream {name!r}")
    # A beat must fit a load word here; the test module checks it against the payload's width.
    width = min(ports["load_payload"].width, 63)
    outside = np.flatnonzero((beats < -(1 << (width - 1))) | (beats >= (1 << width)))
    if outside.size:
        index = int(outside[0])
        raise ValueError(f"input beat {index} is {int(beats[index])}, which does not fit the "
                         f"{width}-bit input payload")


def write_progress(run_dir: str | os.PathLike[str], done: int, total: int) -> None:
    """Record the inferences done so far, atomically (the test module's side)."""
    run_dir = Path(run_dir)
    aside = run_dir / f"{_PROGRESS_FILE}.partial"
    aside.write_text(json.dumps({"done": done, "total": total}) + "\n")
    os.replace(aside, run_dir / _PROGRESS_FILE)


def read_progress(run_dir: str | os.PathLike[str]) -> int | None:
    """The inferences done so far that :func:`write_progress` recorded, None before any."""
    try:
        return int(json.loads((Path(run_dir) / _PROGRESS_FILE).read_text())["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cancel_requested(run_dir: str | os.PathLike[str]) -> bool:
    """Whether :func:`fast_simulate` asked the run to stop (the test module's side)."""
    return (Path(run_dir) / _CANCEL_FILE).exists()


class ProgressBar:
    """A ``progress`` callable for :func:`fast_simulate` that draws a text progress bar.

    On a terminal it redraws one line in place, ``label [#####.......] 120/360 inferences,
    4.1 s``, and ends it when the batch completes (or at :meth:`close`). On anything else (a
    file, a pipe, a CI log) it writes nothing: the caller reports the outcome. One bar can follow
    several runs in turn; use it as a context manager so that an interrupted run does not leave
    the line unfinished::

        with fast.ProgressBar(label="conv") as bar:
            fast_simulate(..., progress=bar)

    Parameters
    ----------
    stream : text stream, optional
        Where to draw; ``sys.stderr`` (at the time of each call) by default.
    label : str
        Printed before the bar.
    width : int
        Characters between the brackets.
    """

    def __init__(self, stream: TextIO | None = None, label: str = "simulating",
                 width: int = 30) -> None:
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        self._stream = stream
        self.label = label
        self.width = width
        self._started: float | None = None
        self._drawn = 0  # length of the line on screen; 0 when none is open

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._stream is None else self._stream

    def __call__(self, done: int, total: int) -> None:
        stream = self.stream
        if progress.is_quiet() or not _is_terminal(stream):
            return
        if self._started is None:
            self._started = time.monotonic()
        filled = self.width * min(done, total) // total if total > 0 else self.width
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                f"inferences, {time.monotonic() - self._started:.1f} s")
        # Pad over the rest of a longer previous line.
        stream.write("\r" + line + " " * max(self._drawn - len(line), 0))
        self._drawn = len(line)
        if done >= total:
            self.close()
        else:
            stream.flush()

    def close(self) -> None:
        """End the line drawn so far, if any; the next call starts a new bar."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = 0
        self._started = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


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
    held_cycles: int,
    failure: str | None,
) -> None:
    """Write a run's result for :func:`fast_simulate` to read (the test module's side)."""
    run_dir = Path(run_dir)
    np.savez(run_dir / _OUTPUTS_FILE,
             **{name: np.asarray(values, dtype=np.int64) for name, values in arrays.items()})
    result = {"cycles": cycles, "counters": dict(counters),
              "simulation_seconds": simulation_seconds, "held_cycles": held_cycles,
              "failure": failure}
    (run_dir / _RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
