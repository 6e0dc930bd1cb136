"""Amaranth components to Verilog text, and the Verilator waivers that text needs.

:func:`convert` writes a component as Verilog, its ports taken from the component's signature
(``i_stream__payload``, ``counters__busy_cycles``, ... plus ``clk`` and ``rst`` when it has
synchronous logic). Its output is deterministic: the same component gives the same bytes in any
process and any checkout, which is what lets :mod:`zeroskip.testbench.runner` key its build cache
on the Verilog text.

:data:`WAIVER_FILE` is the project's only Verilator configuration (``verilator.vlt`` beside this
module): every lint waiver, each with its reason, for files written by Amaranth's builtin Yosys.
Lint and every simulation build use it (:mod:`zeroskip.testbench`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from amaranth.back import rtlil
from amaranth.back import verilog as amaranth_verilog
from amaranth.hdl import Fragment
from amaranth.hdl import _ir
from amaranth.lib import wiring

__all__ = ["UNINITIALIZED", "WAIVER_FILE", "convert"]

#: A memory with this attribute (``Memory(..., attrs={UNINITIALIZED: 1})``) is written without
#: an initial value: its contents are undefined until written, which is what lets Yosys map it
#: onto a RAM that has no initial contents (an iCE40UP5K's SPRAM).
UNINITIALIZED = "zeroskip_uninitialized"

WAIVER_FILE = Path(__file__).resolve().parent / "verilator.vlt"


def convert(component, name: str) -> str:
    """Write an Amaranth component as Verilog.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The design; its signature gives the ports, flattened with ``__`` (a stream member
        ``i_stream`` becomes ``i_stream__payload``, ``i_stream__valid``, ``i_stream__ready``).
    name : str
        Name of the top module.

    Returns
    -------
    str
        The Verilog text. Deterministic: no source locations (they would be absolute paths of
        whoever elaborated the design), no timestamps; the only varying part is the banner naming
        the Yosys version, constant for a given installation.
    """
    ports = {}
    for path, member, value in component.signature.flatten(component):
        direction = _ir.PortDirection.Input if member.flow == wiring.In else \
            _ir.PortDirection.Output
        ports["__".join(map(str, path))] = (value.as_value() if hasattr(value, "as_value")
                                            else value, direction)
    text, _ = rtlil.convert_fragment(Fragment.get(component, None), ports, name,
                                     emit_src=False)
    with _builtin_yosys():
        return amaranth_verilog._convert_rtlil_text(_without_initial_values(text))


def _without_initial_values(text):
    """The RTLIL ``text`` without the ``$meminit_v2`` cells of memories marked
    :data:`UNINITIALIZED` (memory names are per module)."""
    if UNINITIALIZED not in text:
        return text
    lines = text.split("\n")
    kept, marked, index = [], set(), 0
    while index < len(lines):
        line = lines[index]
        stripped = line.lstrip()
        if stripped.startswith("module "):
            marked = set()
        elif stripped.startswith("memory ") and kept and \
                kept[-1].strip() == f"attribute \\{UNINITIALIZED} 1":
            marked.add(stripped.split()[-1])
        elif stripped.startswith("cell $meminit_v2 "):
            end = index
            while lines[end].strip() != "end":
                end += 1
            memid = next(entry.split()[-1] for entry in lines[index:end]
                         if entry.lstrip().startswith("parameter \\MEMID "))
            if memid.strip('"').replace("\\\\", "\\") in marked:
                while kept and kept[-1].lstrip().startswith("attribute "):
                    kept.pop()
                index = end + 1
                continue
        kept.append(line)
        index += 1
    return "\n".join(kept)


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
