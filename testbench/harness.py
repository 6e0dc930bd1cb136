"""A self-running hardware testbench around an engine, for fast Verilator co-simulation.

Driving every clock edge from Python cocotb coroutines caps a simulation at some ten thousand
cycles per second. :class:`Harness` moves the stream driver, the sinks, the random stalls and
the bookkeeping into the design itself: Python loads input beats into a memory, pulses
``start``, sleeps while the Verilator model runs at native speed, and reads the captured outputs
and timestamps back. :mod:`zeroskip.testbench.fast` runs it.

Capacity. The memories are rings of ``max_inferences`` inferences (inputs, outputs,
timestamps), sized by the caller to a memory budget, not to the batch: one build serves any
batch. A batch longer than the rings runs in one go, the DUT never reset: software loads the
inputs of the inferences ahead (``loaded``) and reads back the finished ones (``released``)
while the model runs, woken by ``wake``. The source offers no beat of an inference not loaded
yet, and a sink takes no beat of an inference whose ring slot is not released yet; each cycle
either holds the DUT back is counted in ``held_cycles``, and while that stays 0 every cycle of
the run is what an unbounded memory would have given.

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

#: Width of the inference counts (``inferences``, ``loaded``, ``released``, ``completed``).
COUNT_WIDTH = 32

#: Width of the seed port and of each stall generator's state.
SEED_WIDTH = 32

#: Stall probabilities are set in steps of 1/256.
THRESHOLD_WIDTH = 8

#: The load port packs as many input beats as fit in this many bits (a power of two of them),
#: and every read-back port as many entries: every load and every read costs Python a clock
#: cycle (about a millisecond), so fewer, wider words move a batch faster.
LOAD_WORD_BITS = 256
READ_WORD_BITS = 256

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
    """A DUT with ring memories of inputs and outputs, a stalling source, stalling sinks and
    output capture.

    The DUT follows :mod:`zeroskip.hdl.common`: an input stream ``i_stream``, one or more output
    streams whose names start with ``o_stream``, optional ``counters``; inferences follow each
    other back to back, each a fixed number of beats on every stream. Payload widths come from
    the DUT's signature. ``rst`` resets the DUT and the harness together, from the edge after
    the one that sees it (it is registered), and at power-up.

    A run of ``inferences`` inferences (any number): hold ``rst``; load the inputs of the first
    ``max_inferences`` (or fewer) at their ring positions and say how many are in (``loaded``);
    set ``inferences``, ``seed``, the two thresholds, ``released`` (0) and ``wake_at``; pulse
    ``start``. While it runs, whenever ``wake`` rises: read the outputs and timestamps of the
    inferences finished (``completed``) back from their ring slots, raise ``released`` past
    them, load the inputs of the inferences that fit in the slots freed, raise ``loaded``, and
    set the next ``wake_at``; an input slot is loaded again only once its inference is
    ``sent``. The run ends when ``done`` rises. ``loaded``, ``released`` and
    ``wake_at`` are registered: they take effect a cycle after they are set, and ``wake``
    answers to ``wake_at`` a cycle later still.

    Ring positions: inference ``i`` holds slot ``i % max_inferences``; its input beat ``k`` is
    at beat position ``slot * input_beats_per_inference + k``, packed ``load_lanes`` to a word
    (word ``position // load_lanes``, lane ``position % load_lanes``); its output beat ``k`` of
    a stream at that stream's capture position ``slot * beats + k``.

    Parameters
    ----------
    dut : amaranth.lib.wiring.Component
        The design under test; it becomes a submodule named ``dut``.
    max_inferences : int
        Capacity of the rings, in inferences.
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
        Write ``load_payload`` into the input ring's word ``load_address``.
    load_address : In(range(input words))
    load_payload : In(load_lanes * input payload width)
        ``load_lanes`` consecutive raw input beats, the first in the low bits (two's complement
        for a signed payload).
    load_lanes : Out(range(LOAD_WORD_BITS + 1))
        The constant number of beats per word: the largest power of two of input beats that fit
        in :data:`LOAD_WORD_BITS` bits, at least 1.
    inferences : In(32)
        How many inferences the run has; taken at ``start``, like the seed and the thresholds.
    loaded : In(32)
        Inferences whose inputs are in the ring, counted from the run's first.
    released : In(32)
        Inferences read back, counted from the run's first: their slots may be written again.
    wake_at : In(32)
        ``wake`` is set while at least this many inferences are completed, or none is running.
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
    wake : Out(1)
        ``completed`` has reached ``wake_at``, or the harness is not running.
    surplus : Out(1)
        An output stream sent a beat beyond its expected count (sticky until ``start``).
    cycle : Out(32)
        Cycles since ``start``.
    total_cycles : Out(32)
        Cycles from the first cycle after ``start`` to the last captured output beat, inclusive.
    held_cycles : Out(32)
        Cycles in which the rings held the DUT back: the source had a beat of an inference not
        loaded yet, or a sink was offered a beat of an inference whose slot was not released.
    completed : Out(32)
        Inferences completed since ``start``: the least, over the output streams, of whole
        inferences captured.
    sent : Out(32)
        Inferences whose inputs have all entered the DUT since ``start``: their input slots may
        be loaded again (an inference may complete before its last input beats are taken, when
        the network ignores them).
    max_inferences : Out(range(max_inferences + 1))
        The constant capacity.
    The read-back ports are combinational and show whole words: ``lanes`` consecutive entries,
    the first in the low bits, the word ``address`` holding entries ``address * lanes`` to
    ``address * lanes + lanes - 1`` (``lanes`` the largest power of two of entries that fit
    in :data:`READ_WORD_BITS` bits).

    timestamp_lanes : Out(range(READ_WORD_BITS + 1))
        Slots per timestamp word.
    timestamp_address : In(range(timestamp words))
        The word of slots whose timestamps ``first_input_cycle`` and ``last_output_cycle`` show.
    capture_lanes : Out(Signature({name: Out(range(READ_WORD_BITS + 1))}))
        For every output stream, capture positions per word.
    capture_address : In(Signature({name: Out(range(capture words))}))
        For every output stream, the word of capture positions ``captured`` shows.
    captured : Out(Signature({name: Out(lanes * payload width)}))
        For every output stream, its captured beats in that word (raw bits).
    first_input_cycle : Out(lanes * 32)
        Per slot, the cycle (counted from 0 at the first cycle after ``start``) in which the
        first beat of its inference entered the DUT.
    last_output_cycle : Out(Signature({name: Out(lanes * 32)}))
        For every output stream and slot, the cycle in which the last beat of its inference left
        the DUT.
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
        self.lanes_per_load = _lanes(self.input_width, self.input_depth, LOAD_WORD_BITS)
        self.input_words = -(-self.input_depth // self.lanes_per_load)
        self.output_depths = {name: max_inferences * count
                              for name, count in self.output_beats_per_inference.items()}
        self.capture_lanes_value = {name: _lanes(width, self.output_depths[name],
                                                 READ_WORD_BITS)
                                    for name, width in self.output_widths.items()}
        self.timestamp_lanes_value = _lanes(CYCLE_WIDTH, max_inferences, READ_WORD_BITS)
        self.timestamp_words = -(-max_inferences // self.timestamp_lanes_value)

        members = {
            "load_valid": In(1),
            "load_address": In(range(max(self.input_words, 2))),
            "load_payload": In(self.lanes_per_load * self.input_width),
            "load_lanes": Out(range(LOAD_WORD_BITS + 1)),
            "inferences": In(COUNT_WIDTH),
            "loaded": In(COUNT_WIDTH),
            "released": In(COUNT_WIDTH),
            "wake_at": In(COUNT_WIDTH),
            "seed": In(SEED_WIDTH),
            "idle_threshold": In(THRESHOLD_WIDTH),
            "backpressure_threshold": In(THRESHOLD_WIDTH),
            "start": In(1),
            "done": Out(1),
            "wake": Out(1),
            "surplus": Out(1),
            "cycle": Out(CYCLE_WIDTH),
            "total_cycles": Out(CYCLE_WIDTH),
            "held_cycles": Out(CYCLE_WIDTH),
            "completed": Out(COUNT_WIDTH),
            "sent": Out(COUNT_WIDTH),
            "max_inferences": Out(range(max_inferences + 1)),
            "timestamp_lanes": Out(range(READ_WORD_BITS + 1)),
            "timestamp_address": In(range(max(self.timestamp_words, 2))),
            "capture_lanes": Out(wiring.Signature(
                {name: Out(range(READ_WORD_BITS + 1)) for name in output_names})),
            "capture_address": In(wiring.Signature(
                {name: Out(range(max(-(-depth // self.capture_lanes_value[name]), 2)))
                 for name, depth in self.output_depths.items()})),
            "captured": Out(wiring.Signature(
                {name: Out(self.capture_lanes_value[name] * width)
                 for name, width in self.output_widths.items()})),
            "first_input_cycle": Out(self.timestamp_lanes_value * CYCLE_WIDTH),
            "last_output_cycle": Out(wiring.Signature(
                {name: Out(self.timestamp_lanes_value * CYCLE_WIDTH) for name in output_names})),
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
        m.d.comb += self.max_inferences.eq(self.max_inferences_value)
        # The run's settings are registered (at start, or every cycle for the ring bounds):
        # logic fed by a top-level input is re-evaluated by Verilator on every input change
        # (each clock edge), so the DUT's handshakes must not depend on one combinationally.
        settings = {name: Signal.like(getattr(self, name), name=f"{name}_r")
                    for name in ("inferences", "idle_threshold", "backpressure_threshold",
                                 "loaded", "released", "wake_at")}
        m.d.sync += [settings[name].eq(getattr(self, name))
                     for name in ("loaded", "released", "wake_at")]
        with m.If(self.start):
            m.d.sync += [running.eq(1), self.cycle.eq(0), self.total_cycles.eq(0),
                         self.held_cycles.eq(0),
                         *(settings[name].eq(getattr(self, name))
                           for name in ("inferences", "idle_threshold",
                                        "backpressure_threshold"))]
        with m.Elif(running):
            m.d.sync += self.cycle.eq(self.cycle + 1)

        preloaded = self._elaborate_preload(m, dut, running)

        held_source = self._elaborate_source(m, dut, running & preloaded, settings)
        complete, completed_per_stream, held_sinks = self._elaborate_sinks(m, dut, running,
                                                                           settings)
        least = completed_per_stream[0]
        for completed in completed_per_stream[1:]:
            least = Mux(completed < least, completed, least)
        m.d.comb += self.completed.eq(least)
        with m.If(running & (held_source | Cat(*held_sinks).any())):
            m.d.sync += self.held_cycles.eq(self.held_cycles + 1)

        # Registers, so that `done` and `wake` change on clock edges only.
        idle = ~self.start & ~running
        m.d.sync += [self.done.eq(idle | (~self.start & Cat(*complete).all())),
                     self.wake.eq(idle | (~self.start & (self.completed >= settings["wake_at"])))]

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

    @staticmethod
    def _packed_memory(m, name, width, depth, *, write, address, word):
        """A memory written an entry at a time (``write``: address, data, enable), read back a
        word of ``len(word) // width`` consecutive entries at a time, combinationally."""
        storage = memory.Memory(shape=unsigned(width), depth=depth, init=[])
        m.submodules[name] = storage
        port = storage.write_port()
        m.d.comb += [port.addr.eq(write[0]), port.data.eq(write[1]), port.en.eq(write[2])]
        lanes = len(word) // width
        for lane in range(lanes):
            read = storage.read_port(domain="comb")
            m.d.comb += [read.addr.eq(address * lanes + lane),
                         word[lane * width:(lane + 1) * width].eq(read.data)]

    def _ring_counter(self, m, name, size, advance):
        """A position that steps on ``advance`` and wraps to 0 after ``size - 1``; cleared at
        start."""
        position = Signal(range(max(size, 2)), name=name)
        with m.If(self.start):
            m.d.sync += position.eq(0)
        with m.Elif(advance):
            m.d.sync += position.eq(Mux(position == size - 1, 0, position + 1))
        return position

    def _elaborate_source(self, m, dut, running, settings):
        """The input ring, its load port, and the source streaming it into the DUT; returns
        whether the source waits for an inference to be loaded."""
        input_memory = memory.Memory(shape=unsigned(self.lanes_per_load * self.input_width),
                                     depth=self.input_words, init=[])
        m.submodules.input_memory = input_memory
        load_port = input_memory.write_port()
        m.d.comb += [self.load_lanes.eq(self.lanes_per_load),
                     load_port.addr.eq(self.load_address),
                     load_port.data.eq(self.load_payload),
                     load_port.en.eq(self.load_valid)]

        source_port = input_memory.read_port(domain="comb")
        lane_bits = self.lanes_per_load.bit_length() - 1
        # Counted from the run's first inference, like `loaded`.
        source_inference = Signal(COUNT_WIDTH)
        # Set while an offered beat waits for ready: valid must then stay high.
        source_holding = Signal()
        source_idle = self._stall_generator(m, "source", 0) < settings["idle_threshold"]
        pending = running & (source_inference < settings["inferences"])
        loaded = source_inference < settings["loaded"]
        source_valid = pending & loaded & (source_holding | ~source_idle)
        source_taken = source_valid & dut.i_stream.ready
        last_beat = Signal()
        source_beat = self._ring_counter(m, "source_beat", self.input_beats_per_inference,
                                         source_taken)
        m.d.comb += last_beat.eq(source_beat == self.input_beats_per_inference - 1)
        source_position = self._ring_counter(m, "source_position", self.input_depth,
                                             source_taken)
        source_slot = self._ring_counter(m, "source_slot", self.max_inferences_value,
                                         source_taken & last_beat)
        m.d.comb += [
            self.sent.eq(source_inference),
            # load_lanes is a power of two: the low position bits pick the lane.
            source_port.addr.eq(source_position >> lane_bits),
            Value.cast(dut.i_stream.payload).eq(
                source_port.data.word_select(source_position[:lane_bits], self.input_width)),
            dut.i_stream.valid.eq(source_valid),
        ]

        m.d.comb += self.timestamp_lanes.eq(self.timestamp_lanes_value)
        self._packed_memory(m, "first_input_memory", CYCLE_WIDTH,
                            self.timestamp_words * self.timestamp_lanes_value,
                            write=(source_slot, self.cycle, source_taken & (source_beat == 0)),
                            address=self.timestamp_address, word=self.first_input_cycle)
        with m.If(self.start):
            m.d.sync += [source_inference.eq(0), source_holding.eq(0)]
        with m.Elif(source_taken):
            m.d.sync += source_holding.eq(0)
            with m.If(last_beat):
                m.d.sync += source_inference.eq(source_inference + 1)
        with m.Elif(source_valid):
            m.d.sync += source_holding.eq(1)
        return pending & ~loaded

    def _elaborate_sinks(self, m, dut, running, settings):
        """A sink, a capture ring and a last-output timestamp ring per output stream; returns
        each stream's completion flag, its completed-inference count and whether the ring holds
        it back."""
        complete, completed_per_stream, held = [], [], []
        for index, name in enumerate(self.output_beats_per_inference, start=1):
            out_stream = getattr(dut, name)
            beats_per_inference = self.output_beats_per_inference[name]
            # Whole inferences captured, counted from the run's first; the one arriving is next.
            completed = Signal(COUNT_WIDTH, name=f"{name}_completed")
            completed_per_stream.append(completed)
            stream_complete = completed >= settings["inferences"]
            complete.append(stream_complete)
            # `released` never passes `completed`: software releases finished inferences only.
            room = completed < settings["released"] + self.max_inferences_value
            drop_ready = self._stall_generator(m, name, index) < settings[
                "backpressure_threshold"]
            m.d.comb += out_stream.ready.eq(running & (stream_complete | (room & ~drop_ready)))
            held.append(~stream_complete & ~room & out_stream.valid)
            taken = out_stream.valid & out_stream.ready
            capturing = taken & ~stream_complete
            beat = self._ring_counter(m, f"{name}_beat", beats_per_inference, capturing)
            last_beat = beat == beats_per_inference - 1
            position = self._ring_counter(m, f"{name}_position", self.output_depths[name],
                                          capturing)
            slot = self._ring_counter(m, f"{name}_slot", self.max_inferences_value,
                                      capturing & last_beat)

            lanes = self.capture_lanes_value[name]
            m.d.comb += getattr(self.capture_lanes, name).eq(lanes)
            self._packed_memory(
                m, f"{name}_capture_memory", self.output_widths[name],
                -(-self.output_depths[name] // lanes) * lanes,
                write=(position, Value.cast(out_stream.payload), capturing),
                address=getattr(self.capture_address, name), word=getattr(self.captured, name))
            self._packed_memory(
                m, f"{name}_last_output_memory", CYCLE_WIDTH,
                self.timestamp_words * self.timestamp_lanes_value,
                write=(slot, self.cycle, capturing & last_beat),
                address=self.timestamp_address, word=getattr(self.last_output_cycle, name))
            with m.If(self.start):
                m.d.sync += [completed.eq(0), self.surplus.eq(0)]
            with m.Elif(taken & stream_complete):
                m.d.sync += self.surplus.eq(1)
            with m.Elif(capturing):
                m.d.sync += self.total_cycles.eq(self.cycle + 1)
                with m.If(last_beat):
                    m.d.sync += completed.eq(completed + 1)
        return complete, completed_per_stream, held


def ring_capacity(dut, *, input_beats_per_inference, output_beats_per_inference, memory_bits):
    """The inferences a :class:`Harness` around ``dut`` holds in ``memory_bits`` bits of rings
    (input beats, captured output beats, timestamps): the largest power of two that fits, at
    least 1.

    It depends on the design alone, not on a batch, so one build serves every batch.
    """
    members = dut.signature.members
    bits = Shape.cast(_stream_member(dut, "i_stream", In).members["payload"].shape).width \
        * input_beats_per_inference + CYCLE_WIDTH
    for name, beats in output_beats_per_inference.items():
        bits += Shape.cast(members[name].signature.members["payload"].shape).width * beats \
            + CYCLE_WIDTH
    capacity = 1
    while 2 * capacity * bits <= memory_bits:
        capacity *= 2
    return capacity


def _lanes(width, depth, word_bits):
    """Entries of ``width`` bits per word of at most ``word_bits``: a power of two, at least 1,
    no more than ``depth`` needs."""
    lanes = 1
    while 2 * lanes * width <= word_bits and lanes < depth:
        lanes *= 2
    return lanes
