"""Out-of-context synthesis: every layer's engine in a Yosys process of its own, then one join.

A whole network in one Yosys process holds every engine's netlist at once: the MLPerf Tiny nets
at 64 multipliers took 18 minutes of Yosys and up to 2.7 GB of its 4 GB (WebAssembly) memory,
most of it in the passes that see all the design at once (``memory_libmap``, ``opt``, ABC).
Here the network's Verilog is cut at its engines (:func:`partition`): each module
``<top>.layer_<name>`` with its submodules is an engine, synthesized alone to a mapped netlist
(:func:`engine_script`); the rest (the top module, the stream links, forks, FIFOs, argmax and
the counters: the glue) is synthesized inside the three-pin wrapper with the engines as black
boxes, which the join then replaces by their mapped netlists before the whole is flattened for
nextpnr (:func:`join_script`). The top keeps its ports and its modules; nothing is optimised
across an engine's boundary, as nothing was across the top's before.

Amaranth gives a submodule a port only for a signal its parent uses, so an engine's outputs are
all used: synthesizing it alone keeps nothing the whole design would have removed (a network
compiled without layer counters has engines without counter ports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..hdl.verilog import YOSYS_AFTER_READ

__all__ = ["Partition", "engine_script", "join_script", "partition"]

# A module as Yosys's write_verilog gives it: its attribute lines, ``module`` (the name escaped
# with a backslash when it is not a plain identifier), up to ``endmodule``.
_MODULE = re.compile(r"((?:^\(\*[^\n]*\*\)\n)*^module\s+(\\?\S+?)\s*\(.*?^endmodule\n?)",
                     re.MULTILINE | re.DOTALL)
_HEADER = re.compile(r"^module\b.*?;", re.MULTILINE | re.DOTALL)
_DECLARATION = re.compile(r"^\s*(?:input|output|inout)\b[^;]*;", re.MULTILINE)


@dataclass(frozen=True)
class Partition:
    """A network's Verilog cut at its engines.

    Attributes
    ----------
    top : str
        The top module.
    glue : str
        Verilog of every module that belongs to no engine (the top among them).
    engines : dict of str to str
        Engine name (``layer_<name>``, as the top instantiates it) to the Verilog of its module
        and submodules, in the order the design lists them, then every module outside the
        top's hierarchy (which the glue has too).
    stubs : str
        A black box per engine (``(* blackbox *)``): its module header and port declarations.
    """

    top: str
    glue: str
    engines: dict
    stubs: str

    def module(self, engine):
        """The Yosys name of an engine's module (escaped: it holds a dot)."""
        return f"\\{self.top}.{engine}"


def partition(verilog_text, top):
    """Cut ``verilog_text`` (one network, as :func:`zeroskip.hdl.verilog.convert` writes it)
    at the engines its ``top`` instantiates: modules named ``<top>.layer_*``."""
    modules = [(block, name.lstrip("\\")) for block, name in _MODULE.findall(verilog_text)]
    engine_pattern = re.compile(rf"{re.escape(top)}\.(layer_[A-Za-z0-9_$]+)")
    engines, stubs = {}, []
    for block, name in modules:
        match = engine_pattern.fullmatch(name)
        if match:
            engines[match.group(1)] = ""
            stubs.append("(* blackbox *)\n" + _HEADER.search(block).group() + "\n"
                         + "\n".join(_DECLARATION.findall(block)) + "\nendmodule\n")
    glue, library = [], []
    for block, name in modules:
        owner = name[len(top) + 1:].split(".")[0] if name.startswith(top + ".") else None
        if owner in engines:
            engines[owner] += block
        elif name != top and not name.startswith(top + "."):
            library.append(block)
        else:
            glue.append(block)
    # A module outside the top's hierarchy (the multiplies' :data:`zeroskip.hdl.dsp.MODULE`)
    # goes with every engine; Yosys drops it where nothing instantiates it.
    library = "".join(library)
    engines = {engine: text + library for engine, text in engines.items()}
    return Partition(top=top, glue="".join(glue) + library, engines=engines,
                     stubs="".join(stubs))


def engine_script(partition, engine, synth_command, after_synth=()):
    """The Yosys script that maps one engine alone (read from ``<engine>.v``; the commands
    ``after_synth`` follow ``synth_command``) and writes its statistics
    (``<engine>-stat.json``) and mapped netlist (``<engine>.json``)."""
    module = partition.module(engine)
    return "\n".join([
        f"read_verilog {engine}.v",
        YOSYS_AFTER_READ,
        f"{synth_command} -top {module}",
        *after_synth,
        f"tee -q -o {engine}-stat.json stat -json",
        f"select {module}",
        f"write_json -selected {engine}.json",
        "",
    ])


def join_script(partition, synth_command, wrapper):
    """The Yosys script that maps the glue (``glue.v``) inside the wrapper (``wrapper.v``,
    module ``wrapper``) with the engines as black boxes (``stubs.v``), puts every engine's
    mapped netlist in its box, and writes the statistics of the whole (``stat.json``, per
    module) and the flat netlist for nextpnr (``netlist.json``)."""
    top = partition.top
    lines = ["read_verilog glue.v", "read_verilog wrapper.v"]
    if partition.engines:
        lines.append("read_verilog stubs.v")
    lines += [
        YOSYS_AFTER_READ,
        # The top is its own module: counted alone, nothing optimised across its boundary.
        f"setattr -mod -set keep_hierarchy 1 {top}",
        f"{synth_command} -top {wrapper}",
    ]
    for engine in partition.engines:
        # `=` selects the black box too, which a plain name skips.
        lines += [f"delete ={partition.module(engine)}", f"read_json {engine}.json"]
    lines += [
        f"hierarchy -check -top {wrapper}",
        "tee -q -o stat.json stat -json",
        f"setattr -mod -unset keep_hierarchy {top}",
        "flatten",
        "write_json netlist.json",
        "",
    ]
    return "\n".join(lines)
