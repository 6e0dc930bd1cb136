"""Amaranth components to Verilog text, and the Verilator waivers that text needs.

:func:`convert` writes a component as Verilog, its ports taken from the component's signature
(``i_stream__payload``, ``counters__busy_cycles``, ... plus ``clk`` and ``rst`` when it has
synchronous logic). Its output is deterministic: the same component gives the same bytes in any
process and any checkout, which is what lets :mod:`zeroskip.testbench.runner` key its build cache
on the Verilog text.

RAMs carry no initial value: a memory with a write port whose initial contents are all zeros
(Amaranth's ``init=[]``) is written without one. Every RAM of the engines, the FIFOs and the
harness is written before it is read, so its initial contents are never seen; initialising them
was most of the Verilog (the zeros of the line buffers, masks and FIFOs: 72 % of a MobileNet's
8.5 MB), of the time Amaranth and Yosys spend on it, and of Yosys's memory when it maps the RAMs.
ROMs (no write port) and RAMs with nonzero contents keep theirs. The Amaranth simulator still
starts every RAM at zero.

:data:`WAIVER_FILE` is the project's only Verilator configuration (``verilator.vlt`` beside this
module): every lint waiver, each with its reason, for files written by Amaranth's builtin Yosys.
Lint and every simulation build use it (:mod:`zeroskip.testbench`).

:data:`YOSYS_AFTER_READ` is the Yosys command every synthesis script runs on this text (or on
Amaranth's RTLIL of the same design) right after reading it. Amaranth writes a wire for each
field and element of a signal with a layout, an alias of its slice: ``payload.acc``,
``payload[0]``. Yosys's ABC9 (in ``synth_ecp5`` and ``synth_ice40``) names the bits it maps by
appending ``[index]`` to a wire's name, so bit 1 of ``payload`` and bit 0 of the wire
``payload[1]`` come back under one name, and Yosys stops on an assertion
(``count_id(wire->name) == 0``) when it renames ``payload`` ``payload[0]``. The command makes
every wire whose name holds a bracket private (``$auto$rename...``): no port holds one, and each
is an alias of a slice of a signal that keeps its name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from amaranth.back import rtlil
from amaranth.back import verilog as amaranth_verilog
from amaranth.lib import wiring

from . import dsp

__all__ = ["UNINITIALIZED", "WAIVER_FILE", "YOSYS_AFTER_READ", "convert", "uninitialised_rams"]

#: Marks a memory whose contents are undefined until written (``Memory(..., attrs=
#: {UNINITIALIZED: 1})``, ``init=[]``), such as one Yosys maps onto an iCE40UP5K's SPRAM, which
#: has no initial contents: written, like every RAM of zeros, without an initial value.
UNINITIALIZED = "zeroskip_uninitialized"

WAIVER_FILE = Path(__file__).resolve().parent / "verilator.vlt"

#: Run by Yosys after reading the Verilog :func:`convert` writes (see the module doc): the
#: element wires of Amaranth (``payload[0]``), which ABC9 confuses with bits of ``payload``,
#: lose their names. ``[[]`` is a glob class holding ``[``.
YOSYS_AFTER_READ = "rename -hide w:*[[]*"


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
        the Yosys version, constant for a given installation. RAMs have no initial value (see
        the module's documentation).
    """
    with _builtin_yosys(), uninitialised_rams(), dsp.as_instances():
        text = amaranth_verilog.convert(component, name=name, emit_src=False)
    # The definition of the multiplies' module, once, where the design has one.
    return text + dsp.VERILOG if f"\n  {dsp.MODULE} " in text else text


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


@contextlib.contextmanager
def uninitialised_rams() -> Iterator[None]:
    """While active, Amaranth writes its RAMs of zeros without initial contents, as
    :func:`convert` does (also for a platform's build: an SPRAM has none)."""
    # Amaranth 0.5 emits a $meminit_v2 cell for every memory, zeros included, and has no
    # option to leave one out: its RTLIL emitter's memory method is wrapped for the conversion.
    emit_memory = rtlil.ModuleEmitter.emit_memory

    def emit_memory_unless_ram(self, cell_idx, cell):
        if self.memories[cell_idx].num_write_ports and not any(cell.init):
            return
        emit_memory(self, cell_idx, cell)

    rtlil.ModuleEmitter.emit_memory = emit_memory_unless_ram
    try:
        yield
    finally:
        rtlil.ModuleEmitter.emit_memory = emit_memory
