# amaranth: UnusedElaboratable=no
"""Formal proofs of the stream contract of every engine kind (SymbiYosys, ``abc pdr``).

For each kind, in a tiny configuration, :class:`zeroskip.testbench.formal.StreamHarness` assumes
``lib.stream``'s rules on the inputs (a refused beat offered again, unchanged), asserts them on
the outputs, and asserts that no output beat comes that the inferences started since the last
reset do not justify. ``rst`` is free any cycle and RAMs start with any contents, so a proof
covers a reset in the middle of any inference, with any garbage left in the RAMs.

PDR proves the stream rules of every kind for all time, and the beat count of the small ones;
the count of the engines with a schedule (pools, conv, linear, XNOR, the network tops) and of
the add engine (two scaled inputs into a requantizer) is out of its reach in minutes: PDR
proves instead that after a reset they offer no beat before an input (the network tops
excepted: out of reach too), and the count is checked for the first :data:`COUNT_DEPTH` cycles
(``abc bmc3``), which hold a reset and the beats after it (the add engine excepted: out of
bmc3's reach too; its simulation tests count its beats). Broken
engines (a register slice that drops valid, changes its payload while waiting, or keeps a beat
through a reset) must fail.
"""

import numpy as np
import pytest
from amaranth.hdl import Assert, Elaboratable, Module, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

import engine_kinds as kinds
from hdl_sim import run_streams
from zeroskip import ir
from zeroskip.hdl.stream import StreamFIFO, StreamFork, StreamRegister
from zeroskip.testbench.formal import FormalError, StreamHarness, prove, without_ram_contents
from zeroskip.testbench.formal_abc import verdict

pytestmark = pytest.mark.formal

S4 = ir.Activation(4, True, 0.1)
U4 = ir.Activation(4, False, 0.1)

#: Cycles the beat count of the scheduled engines is checked for (bounded).
COUNT_DEPTH = 30
#: Their harness's ``inflight``: no more inferences can start in COUNT_DEPTH cycles, so the
#: count never saturates.
BOUNDED = COUNT_DEPTH

#: name -> (the kind, tiny; the harness's ``inflight``: at least the inferences the engine can
#: hold; what PDR proves besides the stream rules: ``"count"`` the beat count, ``"quiet"`` no
#: beat after a reset before an input, ``"rules"`` nothing more). The count of the ``"quiet"``
#: and ``"rules"`` kinds is checked for COUNT_DEPTH cycles.
KINDS = {
    "register": (lambda rng: kinds.stream_kind(lambda: StreamRegister(2), 2, 2), 4, "count"),
    "fifo": (lambda rng: kinds.stream_kind(lambda: StreamFIFO(2, 3), 2, 2), 4, "count"),
    "fork": (lambda rng: kinds.stream_kind(lambda: StreamFork(2, 2), 2, 2,
                                           outputs=("o_stream_0", "o_stream_1")), 4, "count"),
    "argmax": (lambda rng: kinds.argmax_kind(3, act=S4), 4, "count"),
    "requantizer": (lambda rng: kinds.requantizer_kind(rng, 2, 6, act=S4), 8, "count"),
    # The add engine's count: proved within PROOF_TIMEOUT_S with the requantizer's 7 stages,
    # not with its 9 (the multiply between registers of its own), nor checked for COUNT_DEPTH
    # cycles by bmc3 in that time (NO_BOUNDED_COUNT); tests/test_hdl_add.py counts its beats.
    "add": (lambda rng: kinds.add_kind(rng, (1, 2, 1), act=S4), BOUNDED, "quiet"),
    "maxpool": (lambda rng: kinds.pool_kind(rng, "max", (1, 2, 2), 2, 2, act=S4), 4, "count"),
    "avgpool": (lambda rng: kinds.pool_kind(rng, "avg", (1, 2, 4), 2, 2, act=S4),
                BOUNDED, "quiet"),
    "avgpool-global": (lambda rng: kinds.pool_kind(rng, "avg", (1, 2, 2), 2, 2, act=S4),
                       BOUNDED, "quiet"),
    "linear": (lambda rng: kinds.conv_kind(rng, "linear", (3,), 2, act=U4, weight_bits=4),
               BOUNDED, "quiet"),
    "conv": (lambda rng: kinds.conv_kind(rng, "conv2d", (1, 2, 2), 2, kernel=2, act=U4,
                                         weight_bits=4), BOUNDED, "quiet"),
    # 1x1: with a 2x2 kernel, the dense engine's proof takes 30 to 45 s.
    "conv-dense": (lambda rng: kinds.conv_kind(rng, "conv2d", (1, 2, 2), 2, kernel=1, act=U4,
                                               weight_bits=4, zero_skip=False), BOUNDED, "quiet"),
    "conv-threshold": (lambda rng: kinds.conv_kind(rng, "conv2d", (1, 2, 2), 2, kernel=2,
                                                   act=U4, weight_bits=4, binary_out=True),
                       BOUNDED, "quiet"),
    "xnor-linear": (lambda rng: kinds.xnor_kind(rng, "linear", (4,), 2, width=2, act=S4),
                    BOUNDED, "quiet"),
    "xnor-conv": (lambda rng: kinds.xnor_kind(rng, "conv2d", (1, 2, 2), 2, kernel=2, width=2,
                                              binary_out=True), BOUNDED, "quiet"),
    "network": (lambda rng: kinds.network_kind(kinds.classifier_graph(rng, in_shape=(1, 2, 4)),
                                               chunk=2), BOUNDED, "rules"),
    # Weights in a ROM (block RAM): the SPRAM settings load them through a third stream.
    "sequential": (lambda rng: kinds.network_kind(
        kinds.classifier_graph(rng, in_shape=(1, 2, 4)), chunk=2, architecture="sequential",
        memory="bram"), BOUNDED, "rules"),
}


def harness(name, **properties):
    make, inflight, _ = KINDS[name]
    kind = make(np.random.default_rng(sorted(KINDS).index(name)))
    return StreamHarness(kind.make(), kind.inputs, kind.outputs, inflight=inflight,
                         **properties)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_stream_rules_hold_for_all_time(name, tmp_path):
    """Valid held until ready and the payload stable, from any reset on; for the small kinds,
    the beat count too; for the scheduled engines, no beat after a reset before an input."""
    proves = KINDS[name][2]
    result = prove(harness(name, count=proves == "count", quiet=proves == "quiet"), tmp_path)
    assert result.passed


#: Kinds whose bounded count bmc3 does not finish in PROOF_TIMEOUT_S.
NO_BOUNDED_COUNT = {"add"}


@pytest.mark.parametrize("name", sorted(name for name, (_, _, proves) in KINDS.items()
                                        if proves != "count" and name not in NO_BOUNDED_COUNT))
def test_no_beat_without_input_in_the_first_cycles(name, tmp_path):
    assert prove(harness(name, count=True), tmp_path, engine="abc bmc3", mode="bmc",
                 depth=COUNT_DEPTH).passed


class _Inside(Elaboratable):
    """``engine`` as a submodule: the simulator drives its streams, its counters unread."""

    def __init__(self, engine):
        self.engine = engine

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = self.engine
        return m


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_proved_configurations_are_bit_exact(name):
    """What the proofs are about computes the golden model's outputs (two inferences, random
    stalls)."""
    rng = np.random.default_rng(sorted(KINDS).index(name))
    kind = KINDS[name][0](rng)
    x = kind.sample(rng, 2)
    engine = kind.make()
    run = run_streams(_Inside(engine),
                      [(getattr(engine, n), list(x[n].reshape(-1))) for n in kind.inputs],
                      [(getattr(engine, n), 2 * beats) for n, beats in kind.outputs.items()],
                      seed=1, idle_probability=0.3, backpressure_probability=0.3)
    ref = [[int(v) for v in values.reshape(-1)] for values in kind.golden(x).values()]
    rtl = [[int(v) for v in beats] for beats in run.received]
    assert rtl == ref


# --- broken engines: each must fail a proof -------------------------------------------------------


class _Slice(wiring.Component):
    """A one-register stream slice; ``broken`` names a bug: ``"drop"`` (valid dropped while
    not ready), ``"payload"`` (the payload follows the input while waiting), ``"stale"`` (valid
    kept through a reset: a beat with no input since)."""

    def __init__(self, broken=None):
        self.broken = broken
        super().__init__({"i_stream": In(stream.Signature(2)),
                          "o_stream": Out(stream.Signature(2))})

    def elaborate(self, platform):
        m = Module()
        valid = Signal(reset_less=self.broken == "stale")
        m.d.comb += [self.o_stream.valid.eq(valid),
                     self.i_stream.ready.eq(~valid | self.o_stream.ready)]
        with m.If(self.i_stream.ready):
            m.d.sync += [valid.eq(self.i_stream.valid),
                         self.o_stream.payload.eq(self.i_stream.payload)]
        with m.Else():  # a beat waits
            if self.broken == "drop":
                m.d.sync += valid.eq(0)
            if self.broken == "payload":
                m.d.sync += self.o_stream.payload.eq(self.i_stream.payload)
        return m


def _slice_proof(broken, directory, **properties):
    return prove(StreamHarness(_Slice(broken), {"i_stream": 2}, {"o_stream": 2}, **properties),
                 directory)


#: broken -> whether the proof passes with the stream rules alone, with the count, quiet.
BROKEN = {None: (True, True, True), "drop": (False, False, False),
          "payload": (False, False, False), "stale": (True, False, False)}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_register_slice_fails_the_property_it_breaks(broken, tmp_path):
    """A stale beat breaks no stream rule: its failures are the count's and quiet's."""
    passed = (_slice_proof(broken, tmp_path / "rules", count=False).passed,
                  _slice_proof(broken, tmp_path / "count", count=True).passed,
                  _slice_proof(broken, tmp_path / "quiet", count=False, quiet=True).passed)
    assert passed == BROKEN[broken]
    if broken is not None:  # the counterexample is kept
        assert (tmp_path / "count" / "harness" / "engine_0" / "trace.yw").exists()


def test_a_broken_slice_fails_the_bounded_check_too(tmp_path):
    result = prove(StreamHarness(_Slice("stale"), {"i_stream": 2}, {"o_stream": 2}), tmp_path,
                   engine="abc bmc3", mode="bmc", depth=5)
    assert not result.passed


# --- the harness's pieces ------------------------------------------------------------------------


class _Zeros(wiring.Component):
    """A memory initialised to zeros, read anywhere; a RAM (``write``) or a ROM; asserts that
    it reads 0."""

    def __init__(self, write):
        self.write = write
        super().__init__({"addr": In(2), "we": In(1), "data": Out(4)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=4, depth=4, init=[0] * 4)
        read = mem.read_port(domain="comb")
        m.d.comb += [read.addr.eq(self.addr), self.data.eq(read.data),
                     Assert(read.data == 0)]
        if self.write:
            write = mem.write_port()
            m.d.comb += [write.addr.eq(self.addr), write.data.eq(0), write.en.eq(self.we)]
        return m


@pytest.mark.parametrize("write", [False, True])
def test_a_ram_starts_with_any_contents_and_a_rom_with_its_own(write, tmp_path):
    assert prove(_Zeros(write), tmp_path).passed == (not write)


def test_without_ram_contents_removes_only_the_rams_init():
    from amaranth.back import rtlil

    for write in (False, True):
        text = rtlil.convert(_Zeros(write), name="top")
        assert "$meminit_v2" in text
        assert ("$meminit_v2" in without_ram_contents(text)) == (not write)


def test_verdicts_from_abc_status():
    assert verdict("snl_UNSAT 9 unknown\nNULL\n", "pdr") == "Property proved."
    assert verdict("snl_SAT 7 pdr 1 39\n", "pdr") == \
        'Output 1 of miter "formal" was asserted in frame 39.'
    assert verdict("snl_UNK 29 unknown\n", "bmc3 -F 30 -v") == "No output asserted in 30 frames."
    assert verdict("snl_UNK 12 unknown\n", "bmc3 -F 30 -v") is None  # stopped short
    assert verdict("snl_UNK -1 unknown\n", "pdr") is None


def test_a_tool_error_is_a_formal_error(tmp_path):
    with pytest.raises(FormalError, match="without a verdict"):
        prove(_Slice(), tmp_path, engine="abc no_such_command")


def test_harness_parameters_are_checked():
    with pytest.raises(ValueError, match="no stream 'o_stream_x'"):
        StreamHarness(_Slice(), {"i_stream": 1}, {"o_stream_x": 1})
    with pytest.raises(ValueError, match="positive integer"):
        StreamHarness(_Slice(), {"i_stream": 0}, {"o_stream": 1})
