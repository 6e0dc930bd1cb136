"""Board tops and bitstreams: a compiled network behind a UART on a real FPGA board.

A board top (:class:`BoardTop`; one subclass per board in ``icebreaker.py`` and ``ulx3s.py``)
turns the board oscillator into the design clock with the FPGA's PLL, holds the design in reset
until the PLL locks, puts :class:`~zeroskip.boards.link.HostLink` (the whole network and its UART
protocol) on the pins of the board's FTDI UART, and shows on the LEDs that the clock runs (a
heartbeat), that a request is in progress and that one was abandoned. Weights stay in block RAM:
they are ROMs with init values in the bitstream; SPRAM cannot be initialised from the bitstream,
so a sequential engine's weights in SPRAM are loaded over the link (its ``'W'`` request).

:func:`build_board` runs an amaranth-boards platform's build script with the YoWASP tools (Yosys,
nextpnr, icepack / ecppack from PyPI) and writes ``board-<board>/`` with the bitstream, the logs,
nextpnr's timing and utilisation report and ``board.json``. The boards it knows are the registry
in :mod:`zeroskip.boards`; the PLL settings come from :mod:`zeroskip.boards.pll`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from amaranth import Cat, ClockDomain, Module, Signal
from amaranth.hdl import UnusedElaboratable
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer

from .. import progress
from ..build import replace_directory, scratch_directory
from ..errors import ToolchainError, ZeroskipError
from ..hdl.verilog import YOSYS_AFTER_READ, uninitialised_rams
from ..parts import PARTS
from ..toolchain import yowasp_executable
from . import get_board
from .pll import CLOCK_TOLERANCE
from .pnr import last_error, parse_report
from .uart import clocks_per_bit

#: In ``board-<board>/``: nextpnr's timing and utilisation report, and the build's record.
REPORT_FILE, BOARD_FILE = "nextpnr-report.json", "board.json"

#: About the heartbeat LED's period, and how long the busy LED stays lit after a request (s).
HEARTBEAT_S, BUSY_S = 1.0, 0.1


class BoardBuildError(ZeroskipError):
    """The design does not fit the FPGA or misses timing at the requested clock."""


# --- board top ----------------------------------------------------------------------------------


class BoardTop(wiring.Component):
    """A compiled network on a board: PLL clock, reset until lock, HostLink on the FTDI UART.

    A subclass per board defines ``oscillator_mhz``, :attr:`leds`, ``pll_setting(f_in, f_out)``
    (the PLL setting for ``f_out`` MHz, a static method) and ``elaborate_pll(m, platform, clock,
    locked)`` (instantiates that PLL driving ``clock``, with ``locked`` high once it locks).

    Parameters
    ----------
    design : zeroskip.design.Design
        The compiled network.
    clock_mhz : float
        The design clock; the PLL makes the closest frequency it can (within
        :data:`~zeroskip.boards.pll.CLOCK_TOLERANCE`), and the UART divides that one.
    baud : int
        UART bit rate.

    Members
    -------
    None: every port is a board pin, requested from the platform.

    The design leaves reset a few cycles after the PLL locks (two synchronizer stages).
    """

    #: Board oscillator frequency in MHz.
    oscillator_mhz: float
    #: (indicator, board LED) pairs: which ``led`` resource shows the heartbeat, busy and error
    #: indicators; indicators sharing an LED are ORed.
    leds: tuple

    def __init__(self, design, *, clock_mhz, baud=115200):
        from .link import HostLink

        # A refused option or net leaves this top (and a half-made link) unused: no warning.
        self._MustUse__silence = True
        self.pll, self.baud = self.clock_setting(clock_mhz, baud), baud
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedElaboratable)
            try:
                self.link = HostLink(design, clk_freq=round(self.clock_hz), baud=baud)
                problem = None
            except ValueError as error:
                problem = str(error)
            if problem is not None:
                gc.collect()  # the half-made link (in a reference cycle) goes here, unheard
        if problem is not None:
            raise ZeroskipError(f"{design.top}: {problem}")
        self._MustUse__silence = False
        super().__init__({})

    @property
    def clock_hz(self):
        """The design clock the PLL actually makes, in Hz."""
        return self.pll.f_out * 1e6

    @classmethod
    def clock_setting(cls, clock_mhz, baud):
        """The PLL setting for ``clock_mhz``, checked with ``baud`` (ZeroskipError if either
        cannot be met)."""
        if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or \
                not clock_mhz > 0:
            raise ZeroskipError(f"--clock must be a positive frequency in MHz, got {clock_mhz!r}")
        pll = cls.pll_setting(cls.oscillator_mhz, clock_mhz)
        try:
            clocks_per_bit(pll.f_out * 1e6, baud)
        except ValueError as error:
            raise ZeroskipError(f"--baud: {error}") from None
        return pll

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        locked = Signal()
        # nextpnr derives the clock's constraint from the oscillator's through the PLL.
        self.elaborate_pll(m, platform, sync.clk, locked)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

        m.submodules.link = link = self.link
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx.i), tx.o.eq(link.tx)]  # the UART synchronises rx

        # One free-running counter times both LEDs; a down-counter per LED would be the design's
        # critical path on an iCE40 (a 20-bit carry chain feeding its own enable).
        cycles = Signal(max(1, round(self.clock_hz * HEARTBEAT_S).bit_length() - 1))
        m.d.sync += cycles.eq(cycles + 1)
        epoch = cycles[max(0, round(self.clock_hz * BUSY_S).bit_length() - 1)]
        indicators = {
            # Blinks once the PLL has locked and the design is out of reset.
            "heartbeat": cycles[-1],
            # A request lasts a few milliseconds: stretched so that the eye sees it.
            "busy": _stretch(m, "busy", link.busy, epoch),
            "error": link.error,
        }
        for led in sorted({number for _, number in self.leds}):
            shown = [indicators[name] for name, number in self.leds if number == led]
            m.submodules[f"led_{led}"] = buffer = io.Buffer("o", platform.request("led", led,
                                                                               dir="-"))
            m.d.comb += buffer.o.eq(Cat(*shown).any())
        return m


def _stretch(m, name, level, epoch):
    """High while ``level`` is, and after it until ``epoch`` (a slow square wave) has changed
    twice: for between one and two of its half periods."""
    lit, armed, last_epoch = (Signal(name=f"{name}_{part}") for part in ("lit", "armed", "epoch"))
    m.d.sync += last_epoch.eq(epoch)
    with m.If(level):
        m.d.sync += [lit.eq(1), armed.eq(0)]
    with m.Elif(epoch != last_epoch):
        m.d.sync += armed.eq(1)
        with m.If(armed):
            m.d.sync += lit.eq(0)
    return level | lit


# --- boards and their builds -----------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    """A board zeroskip can build for: its platform, top, tools and default clock."""

    name: str
    title: str
    platform: type
    top: type
    default_clock_mhz: float
    bitstream_suffix: str
    tools: tuple  # (amaranth's tool name, YoWASP script) for each tool of the build script
    synth_opts: str = ""
    nextpnr_opts: str = ""   # beside the report and --timing-allow-fail
    part: str = ""           # its FPGA, a key of zeroskip.parts.PARTS

    def nextpnr_options(self, luts):
        """nextpnr's options for a design of ``luts`` LUT4 sites: the board's, and the router
        ``zeroskip synth`` would pick on its part (:func:`zeroskip.boards.synth.router`; on the
        ECP5-85F router1 did not converge on the large MLPerf designs)."""
        from .synth import router

        chosen = router(PARTS[self.part], luts) if self.part else "router1"
        return " ".join(filter(None, (self.nextpnr_opts, "--router router2"
                                      if chosen == "router2" else "")))


@dataclass(frozen=True)
class BoardBuild:
    """What :func:`build_board` made (``board.json`` holds the same)."""

    board: str
    device: str
    clock_mhz: float
    requested_clock_mhz: float
    baud: int
    fmax_mhz: float
    resources: dict
    bitstream: str
    bitstream_bytes: int
    sha256: str
    seconds: float

    def to_dict(self):
        return asdict(self)

    def summary(self):
        used = ", ".join(f"{name} {r['used']}/{r['available']}"
                         for name, r in self.resources.items() if r["used"])
        return (f"{self.board} ({self.device}): bitstream built\n"
                f"  clock   {self.clock_mhz:.3f} MHz (fmax {self.fmax_mhz:.2f} MHz), "
                f"UART {self.baud} baud\n"
                f"  used    {used}\n"
                f"  wrote   {self.bitstream} ({self.bitstream_bytes} bytes, sha256 "
                f"{self.sha256[:16]}...) in {self.seconds:.0f} s")


def board_directory(build, board):
    """The directory :func:`build_board` writes for ``board`` inside a compile build."""
    return Path(build) / f"board-{board}"


def check_board_options(board, clock_mhz=None, baud=115200):
    """The :class:`Board` named ``board`` and the clock to build at, once both it and ``baud``
    are known to be reachable (ZeroskipError naming the option otherwise)."""
    spec = get_board(board)
    clock_mhz = spec.default_clock_mhz if clock_mhz is None else clock_mhz
    spec.top.clock_setting(clock_mhz, baud)
    return spec, clock_mhz


def build_board(design, build, board, *, clock_mhz=None, baud=115200, luts=None, log=None):
    """Build the bitstream of ``design`` for ``board`` into ``<build>/board-<board>/``.

    Parameters
    ----------
    design : zeroskip.design.Design
    build : path-like
        The compile build directory; ``board-<board>/`` is written inside it, complete or not at
        all (a failed build leaves its logs in ``board-<board>.failed/`` instead).
    board : str
        A key of :func:`zeroskip.boards.boards`.
    clock_mhz : float, optional
        The design clock; the board's default when not given.
    baud : int
        UART bit rate.
    luts : int, optional
        The design's estimated LUT4 sites on the board's part
        (:func:`zeroskip.compiler.resources.estimate`): they choose nextpnr's router
        (:meth:`Board.nextpnr_options`). Without it, router1.
    log : callable, optional
        Called with a line of progress now and then.

    Returns
    -------
    BoardBuild

    Raises
    ------
    ZeroskipError
        Bad input (unknown board, unreachable clock, baud too fast for the clock).
    BoardBuildError
        The design does not fit the FPGA, or misses timing at the clock.
    zeroskip.errors.ToolchainError
        A tool of the build failed; the message names it and the logs.
    """
    spec, requested = check_board_options(board, clock_mhz, baud)
    top = spec.top(design, clock_mhz=requested, baud=baud)
    env = dict(os.environ)
    env.update({_tool_variable(tool): str(yowasp_executable(script))
                for tool, script in spec.tools})
    platform = spec.platform()
    name = design.top
    # The accelerator's estimated LUT4 sites choose the router (a board build runs Yosys and
    # nextpnr in one script, so Yosys's own count comes too late).
    luts = 0 if luts is None else luts
    with uninitialised_rams():  # as in every other build; Yosys then maps SPRAMs
        plan = platform.build(top, name=name, do_build=False, synth_opts=spec.synth_opts,
                              script_after_read=YOSYS_AFTER_READ,
                              nextpnr_opts=f"--report {REPORT_FILE} --timing-allow-fail "
                                           f"{spec.nextpnr_options(luts)}".strip())
    build = Path(build)
    final, failed = board_directory(build, board), build / f"board-{board}.failed"
    started = time.monotonic()
    work = scratch_directory(build, f".board-{board}-")
    try:
        plan.extract(work)
        if log:
            log(f"{spec.title}: synthesis, place and route at {top.pll.f_out:.3f} MHz")
        status = _run_script(work, name, env)
        seconds = time.monotonic() - started
        problem = _build_problem(work, name, spec, status, top.pll.f_out)
        if problem is not None:
            error, message = problem
            _remove_products(work, name)
            _remove_intermediates(work, name)
            replace_directory(work, failed)
            raise error(f"{spec.title}: {message} (logs in {failed})")
        report = json.loads((work / REPORT_FILE).read_text())
        bitstream = work / f"{name}.{spec.bitstream_suffix}"
        data = bitstream.read_bytes()
        result = BoardBuild(
            board=board, device=platform.device, clock_mhz=top.pll.f_out,
            requested_clock_mhz=requested, baud=baud,
            fmax_mhz=_fmax(report, top.pll.f_out), resources=_resources(report),
            bitstream=str(final / bitstream.name), bitstream_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(), seconds=round(seconds, 1))
        record = {**result.to_dict(), "pll": asdict(top.pll),
                  "bitstream": bitstream.name}
        (work / BOARD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _remove_intermediates(work, name)
        replace_directory(work, final)
        shutil.rmtree(failed, ignore_errors=True)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_script(work, name, env):
    """Run amaranth's build script in ``work`` (output in ``build.log``): its exit status. In
    a session of its own, so that an interruption stops the tools it started too."""
    with open(work / "build.log", "w") as output:
        process = subprocess.Popen(["sh", f"build_{name}.sh"], cwd=work, env=env,
                                   stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with progress.step(f"Yosys, nextpnr and the packer: bitstream {name}"):
                return process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise


def _tool_variable(tool):
    """The environment variable amaranth's build scripts read the tool's command from."""
    from amaranth._toolchain import tool_env_var

    return tool_env_var(tool)


def _remove_products(work, name):
    for suffix in ("bin", "bit", "svf", "asc", "config"):
        (work / f"{name}.{suffix}").unlink(missing_ok=True)


def _remove_intermediates(work, name):
    """Keep the bitstream, the scripts, constraints, logs and reports; drop the netlists."""
    for file in (f"{name}.il", f"{name}.debug.v", f"{name}.json", f"{name}.asc",
                 f"{name}.config", f"{name}.svf", f"build_{name}.bat", f"build_{name}.json"):
        (work / file).unlink(missing_ok=True)


# nextpnr's utilisation lines: "Info:          ICESTORM_LC:  6123/ 5280   115%".
_UTILISATION = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.MULTILINE)


def _build_problem(work, name, spec, status, clock_mhz):
    """Why the build gave no bitstream meeting timing, as ``(error class, one line)``, or None.

    :class:`BoardBuildError` when the design does not fit or misses timing, ToolchainError
    when a tool failed (naming the step).
    """
    pnr_log = work / f"{name}.tim"
    pnr_text = pnr_log.read_text(errors="replace") if pnr_log.is_file() else ""
    over = [(cell, int(used), int(available))
            for cell, used, available in _UTILISATION.findall(pnr_text)
            if int(used) > int(available)]
    if over:
        return BoardBuildError, "does not fit: " + ", ".join(
            f"{cell} {used} of {available} ({used - available} over, "
            f"{100 * used / available:.0f}%)" for cell, used, available in over)
    if status != 0 or not (work / REPORT_FILE).is_file():
        return ToolchainError, _failed_step(work, name, spec, status)
    fmax = _fmax(json.loads((work / REPORT_FILE).read_text()), clock_mhz)
    if fmax < clock_mhz:
        return BoardBuildError, (f"misses timing: fmax {fmax:.2f} MHz < clock {clock_mhz:.3f} "
                                 f"MHz ({100 * (clock_mhz - fmax) / clock_mhz:.0f}% short)")
    if not (work / f"{name}.{spec.bitstream_suffix}").is_file():
        return ToolchainError, f"{spec.tools[2][0]} gave no {name}.{spec.bitstream_suffix}"
    return None


def _failed_step(work, name, spec, status):
    """One line: which tool of the build script failed (the first whose product is missing)
    and its last error."""
    (yosys, _), (nextpnr, _), (packer, _) = spec.tools
    if not (work / f"{name}.json").is_file():
        step, log = yosys, f"{name}.rpt"
    elif not (work / REPORT_FILE).is_file():
        step, log = nextpnr, f"{name}.tim"
    else:
        step, log = packer, "build.log"
    text = "".join((work / file).read_text(errors="replace")
                   for file in dict.fromkeys((log, "build.log")) if (work / file).is_file())
    return f"{step} failed (exit status {status}): {last_error(text)}"


def _fmax(report, clock_mhz):
    """The design clock's achieved fmax in MHz.

    nextpnr reports every clock net it finds; the design clock is the one constrained at
    ``clock_mhz`` (others, such as the constant clock of a DSP block, are not the design's).
    """
    fmax, constraint, _ = parse_report(report)
    design_clocks = [fmax[net] for net in fmax
                     if abs(constraint[net] - clock_mhz) <= CLOCK_TOLERANCE * clock_mhz]
    if not design_clocks:
        raise ZeroskipError(f"nextpnr's report has no clock constrained at {clock_mhz:.3f} MHz: "
                            f"only {', '.join(map(str, constraint.values())) or 'none'}")
    return min(design_clocks)


def _resources(report):
    _, _, utilization = parse_report(report)
    return dict(sorted(utilization.items()))
