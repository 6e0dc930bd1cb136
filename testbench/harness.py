"""A self-running hardware testbench around an engine, for fast Verilator co-simulation.

Driving every clock edge from Python cocotb coroutines caps a simulation at some ten thousand
cycles per second. :class:`Harness` moves the stream driver, the sinks, the random stalls and
the bookkeeping into the design itself: Python loads the input beats into a memory, pulses
``start``, waits for ``done`` while the Verilator model runs at native speed, and reads the
captured outputs and timestamps back. :mod:`zeroskip.testbench.fast` runs it.

Randomness. Every random choice comes from a xorshift32 generator per stream, seeded from the
``seed`` port at ``start``: a run is reproducible, and a stream's stall pattern depends only on
the seed. A generator steps once per cycle; its low byte compared with a threshold gives an
event of probability ``threshold / 256``.
"""

from __future__ import annotations

from collections.abc import Mapping

from amaranth.hdl import (Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Instance, Module,
                          Mux, ResetSignal, Shape, Signal, Value, unsigned)
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

#: Width of the cycle counter and of every timestamp: 2**32 cycles is hours of simulation.
CYCLE_WIDTH = 32

#: Width of the seed port and of each stall generator's state.
SEED_WIDTH = 32

#: Stall probabilities are set in steps of 1/256.
THRESHOLD_WIDTH = 8

#: The load port packs as many input beats as fit in this many bits (a power of two of them):
#: every load costs Python a clock cycle, so fewer, wider loads fill the memory faster.
LOAD_WORD_BITS = 64

# Per-generator constants mixed into the seed, so that the source and the sinks draw different
# sequences from one seed (odd multiples of the 32-bit golden ratio, all nonzero).
_GOLDEN_RATIO_32 = 0x9E3779B9


def _xorshift32(state):
    """Marsaglia's xorshift32 step: a full-period (2**32 - 1) generator of pure XOR logic."""
    state = (state ^ (state << 13))[:32]
    state = state ^ (state >> 17)
    return (state ^ (state << 5))[:32]


def _output_stream_names(dut):
    return [name for name in dut.signature.members if name.startswith("o_stream")]


def _stream_member(dut, name, flow):
    members = dut.signature.members
    # SignatureMembers.get raises SignatureError for a missing name instead of returning None.
    member = members[name] if name in members else None
    if member is None or member.flow != flow or not member.is_signature \
            or not isinstance(member.signature, stream.Signature):
        role = "input" if flow == In else "output"
        raise TypeError(f"the DUT needs an {role} stream {name!r} (In/Out(stream.Signature))")
    if member.signature.always_valid or member.signature.always_ready:
        raise TypeError(f"stream {name!r}: always_valid / always_ready streams are not supported")
    return member.signature


class VerilogInstance(wiring.Component):
    """A module already written as Verilog, as a component with that module's signature.

    Lets a harness wrap a design converted once (its Verilog text written beside the
    harness's) instead of elaborating and converting the design a second time. Ports follow
    :func:`zeroskip.hdl.verilog.convert`'s naming: members joined by ``__``, plus ``clk``
    and ``rst``.

    Parameters
    ----------
    signature : amaranth.lib.wiring.Signature
        The signature the module was converted with.
    module : str
        Its module name.
    """

    def __init__(self, signature, module):
        self.module = module
        super().__init__(signature)

    def elaborate(self, platform):
        m = Module()
        ports = {"i_clk": ClockSignal(), "i_rst": ResetSignal()}
        for path, member, value in self.signature.flatten(self):
            prefix = "i_" if member.flow == In else "o_"
            ports[prefix + "__".join(str(part) for part in path)] = value
        m.submodules.dut = Instance(self.module, **ports)
        return m


class Harness(wiring.Component):
    """A DUT with an input beat memory, a stalling source, stalling sinks and output capture.

    The DUT follows :mod:`zeroskip.hdl.common`: an input stream ``i_stream``, one or more output
    streams whose names start with ``o_stream``, optional ``counters``; inferences follow each
    other back to back, each a fixed number of beats on every stream. Payload widths come from
    the DUT's signature. ``rst`` resets the DUT and the harness together, from the edge after
    the one that sees it (it is registered), and at power-up.

    A run: hold ``rst``; load the batch's input beats through ``load_valid``/``load_payload``
    (``load_lanes`` beats per cycle, written at consecutive addresses from 0); set
    ``inferences``, ``seed`` and the two thresholds; pulse ``start``; wait for ``done``; read
    the memories back by setting ``read_address`` (reads are combinational). A ``start`` also
    rewinds the load address, so a next batch can be loaded over the last one.

    Parameters
    ----------
    dut : amaranth.lib.wiring.Component
        The design under test; it becomes a submodule named ``dut``.
    max_inferences : int
        Capacity: the memories hold this many inferences.
    input_beats_per_inference : int
        Beats of ``i_stream`` per inference.
    output_beats_per_inference : mapping of str to int
        For every output stream of the DUT, its beats per inference.
    preload : sequence of int, optional
        For a DUT with a ``w_stream`` (16-bit words: weights in memory without initial
        contents): the words it takes, in order, once after the first ``start`` and before
        the first input beat.

    Members
    -------
    load_valid : In(1)
        Write ``load_payload`` into the input memory at the load address, and advance it.
    load_payload : In(load_lanes * input payload width)
        ``load_lanes`` consecutive raw input beats, the first in the low bits (two's complement
        for a signed payload).
    load_lanes : Out(range(LOAD_WORD_BITS + 1))
        The constant number of beats per load: the largest power of two of input beats that fit
        in :data:`LOAD_WORD_BITS` bits, at least 1.
    inferences : In(range(max_inferences + 1))
        How many inferences the loaded batch holds; taken at ``start``, like the seed and the
        two thresholds.
    seed : In(32)
        Seeds the stall generators at ``start``.
    idle_threshold : In(8)
        The source leaves ``valid`` low in a cycle with probability ``idle_threshold / 256``
        (never while it holds an offered beat, as the stream rules demand).
    backpressure_threshold : In(8)
        Each sink holds ``ready`` low in a cycle with probability
        ``backpressure_threshold / 256``, until it has all its beats; then ``ready`` stays high
        so that a surplus beat is seen.
    start : In(1)
        Starts a run: clears the cycle counter, the stream positions and ``done``.
    done : Out(1)
        Every expected output beat (``inferences`` times the per-inference count, on every output
        stream) has been captured. Also high at reset, as nothing is expected before a start.
    surplus : Out(1)
        An output stream sent a beat beyond its expected count (sticky until ``start``).
    total_cycles : Out(32)
        Cycles from the first cycle after ``start`` to the last captured output beat, inclusive.
    completed : Out(range(max_inferences + 1))
        Inferences completed since ``start``: the least, over the output streams, of whole
        inferences captured. Software may read it while running to report progress.
    max_inferences : Out(range(max_inferences + 1))
        The constant capacity, so that software can refuse a batch that does not fit.
    read_address : In(address width)
        Address of every read-back port below (for inference timestamps: the inference index).
    captured : Out(Signature({name: Out(payload width)}))
        For every output stream, its captured beat at ``read_address`` (raw bits).
    first_input_cycle : Out(32)
        Cycle (counted from 0 at the first cycle after ``start``) in which the first beat of
        inference ``read_address`` entered the DUT.
    last_output_cycle : Out(Signature({name: Out(32)}))
        For every output stream, the cycle in which the last beat of inference ``read_address``
        left the DUT.
    counters : Out(the DUT's counters signature)
        The DUT's counters, passed through; present only if the DUT has them.
    """

    def __init__(self, dut, *, max_inferences, input_beats_per_inference,
                 output_beats_per_inference: Mapping[str, int], preload=None):
        if not isinstance(dut, wiring.Component):
            raise TypeError(f"the DUT must be a wiring.Component, not {dut!r}")
        input_signature = _stream_member(dut, "i_stream", In)
        output_names = _output_stream_names(dut)
        if not output_names:
            raise TypeError("the DUT has no output stream (a member whose name starts with "
                            "'o_stream')")
        output_signatures = {name: _stream_member(dut, name, Out) for name in output_names}
        if set(output_beats_per_inference) != set(output_names):
            raise ValueError(f"output_beats_per_inference must name exactly the DUT's output "
                             f"streams {output_names}, got {sorted(output_beats_per_inference)}")
        for what, count in [("max_inferences", max_inferences),
                            ("input_beats_per_inference", input_beats_per_inference),
                            *((f"output_beats_per_inference[{name!r}]", count)
                              for name, count in output_beats_per_inference.items())]:
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"{what} must be a positive integer, got {count!r}")

        self.dut = dut
        self.preload = None
        if "w_stream" in dut.signature.members:
            if not preload:
                raise ValueError("the DUT has a w_stream: give the words to preload")
            self.preload = [int(word) for word in preload]
        elif preload is not None:
            raise ValueError("preload words given for a DUT without a w_stream")
        self.max_inferences_value = max_inferences
        self.input_beats_per_inference = input_beats_per_inference
        self.output_beats_per_inference = {name: output_beats_per_inference[name]
                                           for name in output_names}
        self.input_width = self._payload_width(input_signature)
        self.output_widths = {name: self._payload_width(signature)
                              for name, signature in output_signatures.items()}
        self.input_depth = max_inferences * input_beats_per_inference
        self.lanes_per_load = 1
        while 2 * self.lanes_per_load * self.input_width <= LOAD_WORD_BITS:
            self.lanes_per_load *= 2
        self.input_words = -(-self.input_depth // self.lanes_per_load)
        self.output_depths = {name: max_inferences * count
                              for name, count in self.output_beats_per_inference.items()}
        address_width = Shape.cast(
            range(max(max_inferences, self.input_depth, *self.output_depths.values()))).width

        members = {
            "load_valid": In(1),
            "load_payload": In(self.lanes_per_load * self.input_width),
            "load_lanes": Out(range(LOAD_WORD_BITS + 1)),
            "inferences": In(range(max_inferences + 1)),
            "seed": In(SEED_WIDTH),
            "idle_threshold": In(THRESHOLD_WIDTH),
            "backpressure_threshold": In(THRESHOLD_WIDTH),
            "start": In(1),
            "done": Out(1),
            "surplus": Out(1),
            "total_cycles": Out(CYCLE_WIDTH),
            "completed": Out(range(max_inferences + 1)),
            "max_inferences": Out(range(max_inferences + 1)),
            "read_address": In(max(address_width, 1)),
            "captured": Out(wiring.Signature(
                {name: Out(width) for name, width in self.output_widths.items()})),
            "first_input_cycle": Out(CYCLE_WIDTH),
            "last_output_cycle": Out(wiring.Signature(
                {name: Out(CYCLE_WIDTH) for name in output_names})),
        }
        if "counters" in dut.signature.members:
            counters = dut.signature.members["counters"]
            if counters.flow != Out or not counters.is_signature:
                raise TypeError("the DUT's counters must be an Out(Signature) member")
            members["counters"] = Out(counters.signature)
        super().__init__(members)

    @staticmethod
    def _payload_width(signature):
        return Shape.cast(signature.members["payload"].shape).width

    def elaborate(self, platform):
        # Everything runs in a domain whose reset is ``rst`` registered: a synchronous reset is
        # logic fed by the reset, and Verilator re-evaluates logic fed by a top-level input on
        # every clock edge (its "ico" region), which was most of a network's simulation time.
        top = Module()
        top.domains.run = ClockDomain("run")
        reset = Signal(init=1)
        top.d.sync += reset.eq(ResetSignal("sync"))
        top.d.comb += [ClockSignal("run").eq(ClockSignal("sync")), ResetSignal("run").eq(reset)]
        top.submodules.harness = DomainRenamer("run")(self._elaborate_harness())
        return top

    def _elaborate_harness(self):
        m = Module()
        m.submodules.dut = dut = self.dut

        running = Signal()
        cycle = Signal(CYCLE_WIDTH)
        m.d.comb += self.max_inferences.eq(self.max_inferences_value)
        # The run's settings are registered at start: logic fed by a top-level input is
        # re-evaluated by Verilator on every input change (each clock edge), so the DUT's
        # handshakes must not depend on one combinationally.
        inferences = Signal.like(self.inferences)
        idle_threshold = Signal.like(self.idle_threshold)
        backpressure_threshold = Signal.like(self.backpressure_threshold)
        with m.If(self.start):
            m.d.sync += [running.eq(1), cycle.eq(0), self.total_cycles.eq(0),
                         inferences.eq(self.inferences), idle_threshold.eq(self.idle_threshold),
                         backpressure_threshold.eq(self.backpressure_threshold)]
        with m.Elif(running):
            m.d.sync += cycle.eq(cycle + 1)

        preloaded = self._elaborate_preload(m, dut, running)
        self._elaborate_source(m, dut, running & preloaded, cycle, inferences, idle_threshold)
        complete, completed_per_stream = self._elaborate_sinks(m, dut, running, cycle, inferences,
                                                               backpressure_threshold)

        least = completed_per_stream[0]
        for completed in completed_per_stream[1:]:
            least = Mux(completed < least, completed, least)
        m.d.comb += self.completed.eq(least)

        # A register, so that `done` rises exactly once per run, on a clock edge.
        m.d.sync += self.done.eq(~self.start & (~running | Cat(*complete).all()))

        if "counters" in self.signature.members:
            counters_signature = self.signature.members["counters"].signature
            ours_and_theirs = zip(counters_signature.flatten(self.counters),
                                  counters_signature.flatten(dut.counters), strict=True)
            for (_, _, ours), (_, _, theirs) in ours_and_theirs:
                m.d.comb += ours.eq(theirs)
        return m

    def _stall_generator(self, m, name, index):
        """A generator seeded at start; returns its current low byte."""
        state = Signal(SEED_WIDTH, name=f"{name}_random", init=1)
        mixed = Signal(SEED_WIDTH, name=f"{name}_seed")
        m.d.comb += mixed.eq(self.seed ^ Const((_GOLDEN_RATIO_32 * (2 * index + 1))
                                               % (1 << SEED_WIDTH), SEED_WIDTH))
        with m.If(self.start):
            # xorshift never leaves 0: replace that one seed by a fixed nonzero one.
            m.d.sync += state.eq(Mux(mixed == 0, _GOLDEN_RATIO_32, mixed))
        with m.Else():
            m.d.sync += state.eq(_xorshift32(state))
        return state[:THRESHOLD_WIDTH]

    def _elaborate_preload(self, m, dut, running):
        """A DUT with a ``w_stream`` (weights in a memory without initial contents) gets its
        words once, at the first start, before any input; returns whether they are in."""
        if self.preload is None:
            return 1
        words = Signal(range(len(self.preload) + 1))
        done = Signal()
        m.submodules.preload_memory = rom = memory.Memory(shape=unsigned(16),
                                                          depth=len(self.preload),
                                                          init=self.preload)
        read = rom.read_port(domain="comb")
        m.d.comb += [read.addr.eq(words), dut.w_stream.payload.eq(read.data),
                     dut.w_stream.valid.eq(running & ~done)]
        with m.If(dut.w_stream.valid & dut.w_stream.ready):
            m.d.sync += words.eq(words + 1)
            with m.If(words == len(self.preload) - 1):
                m.d.sync += done.eq(1)
        return done

    def _elaborate_source(self, m, dut, running, cycle, inferences, idle_threshold):
        """The input memory, its load port, and the source streaming it into the DUT."""
        input_memory = memory.Memory(shape=unsigned(self.lanes_per_load * self.input_width),
                                     depth=self.input_words, init=[])
        m.submodules.input_memory = input_memory
        load_port = input_memory.write_port()
        m.d.comb += self.load_lanes.eq(self.lanes_per_load)
        load_address = Signal(range(self.input_words + 1))
        # Beats past the end of the memory are dropped; software checks the capacity first.
        load_accepted = self.load_valid & (load_address < self.input_words)
        m.d.comb += [
            load_port.addr.eq(load_address),
            load_port.data.eq(self.load_payload),
            load_port.en.eq(load_accepted),
        ]
        with m.If(self.start):
            m.d.sync += load_address.eq(0)
        with m.Elif(load_accepted):
            m.d.sync += load_address.eq(load_address + 1)

        source_port = input_memory.read_port(domain="comb")
        source_address = Signal(range(self.input_depth + 1))
        lane_bits = self.lanes_per_load.bit_length() - 1
        source_beat = Signal(range(self.input_beats_per_inference))
        source_inference = Signal(range(self.max_inferences_value))
        # Set while an offered beat waits for ready: valid must then stay high.
        source_holding = Signal()
        source_idle = self._stall_generator(m, "source", 0) < idle_threshold
        input_total = inferences * self.input_beats_per_inference
        source_valid = running & (source_address < input_total) & (source_holding | ~source_idle)
        source_taken = source_valid & dut.i_stream.ready
        m.d.comb += [
            # load_lanes is a power of two: the low address bits pick the lane.
            source_port.addr.eq(source_address >> lane_bits),
            Value.cast(dut.i_stream.payload).eq(
                source_port.data.word_select(source_address[:lane_bits], self.input_width)),
            dut.i_stream.valid.eq(source_valid),
        ]

        first_input_memory = memory.Memory(shape=CYCLE_WIDTH, depth=self.max_inferences_value,
                                           init=[])
        m.submodules.first_input_memory = first_input_memory
        first_input_write = first_input_memory.write_port()
        first_input_read = first_input_memory.read_port(domain="comb")
        m.d.comb += [
            first_input_write.addr.eq(source_inference),
            first_input_write.data.eq(cycle),
            first_input_write.en.eq(source_taken & (source_beat == 0)),
            first_input_read.addr.eq(self.read_address),
            self.first_input_cycle.eq(first_input_read.data),
        ]
        with m.If(self.start):
            m.d.sync += [source_address.eq(0), source_beat.eq(0), source_inference.eq(0),
                         source_holding.eq(0)]
        with m.Elif(source_taken):
            m.d.sync += [source_address.eq(source_address + 1), source_holding.eq(0)]
            with m.If(source_beat == self.input_beats_per_inference - 1):
                m.d.sync += [source_beat.eq(0), source_inference.eq(source_inference + 1)]
            with m.Else():
                m.d.sync += source_beat.eq(source_beat + 1)
        with m.Elif(source_valid):
            m.d.sync += source_holding.eq(1)

    def _elaborate_sinks(self, m, dut, running, cycle, inferences, backpressure_threshold):
        """A sink, a capture memory and a last-output timestamp memory per output stream;
        returns each stream's completion flag and completed-inference count."""
        complete = []
        completed_per_stream = []
        for index, name in enumerate(self.output_beats_per_inference, start=1):
            out_stream = getattr(dut, name)
            beats_per_inference = self.output_beats_per_inference[name]
            depth = self.output_depths[name]
            captured_count = Signal(range(depth + 1), name=f"{name}_captured_count")
            beat = Signal(range(beats_per_inference), name=f"{name}_beat")
            inference = Signal(range(self.max_inferences_value), name=f"{name}_inference")
            # `inference` wraps at the last one (it is an address); this one counts to the end.
            completed = Signal(range(self.max_inferences_value + 1), name=f"{name}_completed")
            completed_per_stream.append(completed)
            expected_total = inferences * beats_per_inference
            stream_complete = captured_count >= expected_total
            complete.append(stream_complete)
            drop_ready = self._stall_generator(m, name, index) < backpressure_threshold
            m.d.comb += out_stream.ready.eq(running & (stream_complete | ~drop_ready))
            taken = out_stream.valid & out_stream.ready

            capture_memory = memory.Memory(shape=unsigned(self.output_widths[name]), depth=depth,
                                           init=[])
            m.submodules[f"{name}_capture_memory"] = capture_memory
            capture_write = capture_memory.write_port()
            capture_read = capture_memory.read_port(domain="comb")
            last_output_memory = memory.Memory(shape=CYCLE_WIDTH,
                                               depth=self.max_inferences_value, init=[])
            m.submodules[f"{name}_last_output_memory"] = last_output_memory
            last_output_write = last_output_memory.write_port()
            last_output_read = last_output_memory.read_port(domain="comb")
            last_beat = beat == beats_per_inference - 1
            m.d.comb += [
                capture_write.addr.eq(captured_count),
                capture_write.data.eq(Value.cast(out_stream.payload)),
                capture_write.en.eq(taken & ~stream_complete),
                capture_read.addr.eq(self.read_address),
                getattr(self.captured, name).eq(capture_read.data),
                last_output_write.addr.eq(inference),
                last_output_write.data.eq(cycle),
                last_output_write.en.eq(taken & ~stream_complete & last_beat),
                last_output_read.addr.eq(self.read_address),
                getattr(self.last_output_cycle, name).eq(last_output_read.data),
            ]
            with m.If(self.start):
                m.d.sync += [captured_count.eq(0), beat.eq(0), inference.eq(0), completed.eq(0),
                             self.surplus.eq(0)]
            with m.Elif(taken & stream_complete):
                m.d.sync += self.surplus.eq(1)
            with m.Elif(taken):
                m.d.sync += [captured_count.eq(captured_count + 1),
                             self.total_cycles.eq(cycle + 1)]
                with m.If(last_beat):
                    m.d.sync += [beat.eq(0), inference.eq(inference + 1),
                                 completed.eq(completed + 1)]
                with m.Else():
                    m.d.sync += beat.eq(beat + 1)
        return complete, completed_per_stream
