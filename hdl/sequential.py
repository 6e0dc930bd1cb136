"""One engine for a whole network, layer after layer: for FPGAs too small for a pipeline.

::

    i_stream -> Loader --> memory blocks (tensors) --> Filler --> line buffer
                                  ^                                  |
                                  |        GroupWalker -> EntryWalker -> Gather
                                  |             (weight memory)          |
                                Writer <- Requant <- Scanner <- Lanes <---+
                                  |
                               Emitter -> argmax -> o_stream

The dataflow top (:mod:`.network`) gives every layer its own engine. Here one datapath runs the
steps of a :class:`~zeroskip.hdl.seq_plan.Program` in turn, on whole tensors held in memory
blocks (an iCE40UP5K's SPRAMs, or block RAM). A conv, linear, add or pool step runs 8 lanes on 8
consecutive output pixels at once (:mod:`.seq_plan` says how), a filter at a time: the filler
copies the input rows into the line buffer, the entry walker replays the step's weight stream
for every group of 8 pixels (one entry, one weight for all lanes, a cycle), the gather reads
the 8 activations, the lanes multiply and add, the scanner, requantizer and writer put the
outputs back. A fused average pool only requantizes the sums its producer's writer made.

Weights: on SPRAM (``memory="spram"``), which has no initial contents, the weight memory is
written through ``w_stream`` (16-bit words, from address 0, while no inference runs) before
the first inference, and ``weights_loaded`` says when it has been; elsewhere it is a ROM. A
reset restarts a load at address 0 and keeps whole weights loaded (the SPRAM keeps its
contents); the first word of a load unloads them until its last word. The next input loads
while the steps after the last one reading the input run.

Cycles: :mod:`.seq_model` (``inference_cycles``), checked against Verilator.
"""

from __future__ import annotations

import math

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .argmax import ArgmaxEngine
from .common import activation_shape, activation_stream
from .counters import NetworkCounters, network_counters_signature
from .seq_entries import EntryWalker, entry_walker_layout, entry_walker_settings
from .seq_fill import Filler, filler_layout, filler_settings
from .seq_gather import Gather
from .seq_io import Emitter, Loader, PoolSumReader, slot_layout, slot_settings
from .seq_lanes import Lanes
from .seq_memory import LineBuffer, MemoryBlock, ram
from .seq_plan import SPRAM_WORDS, ConvStep, PoolSumStep, Program, Widths
from .seq_post import Requant, Scanner, post_layout, post_settings, requant_widths
from .seq_walk import GroupWalker, group_walker_layout, group_walker_settings
from .seq_write import Writer, writer_layout, writer_settings

__all__ = ["MEMORIES", "SequentialEngine"]

#: Where the memory blocks live: block RAM; SPRAM (no initial contents: weights are loaded);
#: the tensors in SPRAM and the weights in a ROM.
MEMORIES = ("bram", "spram", "spram-rom")


def _step_layout(w):
    return data.StructLayout({
        "conv": 1, "pool_sum": 1, "max_mode": 1, "reads_input": 1, "channels": w.filter_bits,
        "filler": filler_layout(w), "groups": group_walker_layout(w),
        "entries": entry_walker_layout(w), "post": post_layout(w), "writer": writer_layout(w),
    })


def _step_settings(step, program):
    conv = isinstance(step, ConvStep)
    return {
        "conv": conv, "pool_sum": isinstance(step, PoolSumStep),
        "max_mode": conv and step.kind == "maxpool",
        "reads_input": conv and any(s.name == program.input.name for s in step.sources),
        "channels": step.filters,
        "filler": filler_settings(step) if conv else {},
        "groups": group_walker_settings(step) if conv else {},
        "entries": entry_walker_settings(step, program), "post": post_settings(step),
        "writer": writer_settings(step, program.filter_cache),
    }


class SequentialEngine(wiring.Component):
    """A :class:`~zeroskip.hdl.seq_plan.Program` run one step at a time.

    Parameters
    ----------
    program : Program
    in_shape, in_act, out_shape, out_act :
        The network's input and output shapes and encodings (2..8-bit activations).
    argmax : bool, optional
        Give ``o_stream_class``; needs a flat output; by default, for every flat output.
    memory : "bram", "spram" or "spram-rom"
        Where the memory blocks are: block RAM; SPRAM, the weights loaded through ``w_stream``;
        or the tensors in SPRAM and the weights in a ROM (block RAM).
    lut_lanes : iterable of int
        Lanes whose multiplier is logic (the part has too few DSP blocks).
    requant_dsps : 1 or 2
        DSP blocks of the requantizer: with 2, the saturated sum's bits below a DSP operand
        multiply in the second rather than as shifted multipliers summed in logic.

    Members
    -------
    i_stream : In(stream.Signature(input activation))
        Input pixels, HWC.
    o_stream : Out(stream.Signature(output activation))
        The output tensor, HWC or feature order.
    o_stream_class : Out(stream.Signature(range(features)))
        Only with ``argmax``: the output's argmax, one beat per inference after its last logit.
    w_stream : In(stream.Signature(16))
        Only with SPRAM: the weight memory's words, in order (:attr:`Program.weights`).
    weights_loaded : Out(1)
        Only with SPRAM: high from the last word of a load to the first word of the next (no
        inference starts while it is low); a reset leaves it as it is.
    counters : Out(Signature)
        ``network`` (:data:`zeroskip.hdl.network.NETWORK_COUNTER_NAMES`).
    """

    def __init__(self, program, *, in_shape, in_act, out_shape, out_act, memory="bram",
                 lut_lanes=(), requant_dsps=1, argmax=None):
        if not isinstance(program, Program):
            raise TypeError(f"SequentialEngine takes a Program, not {type(program).__name__}")
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {', '.join(MEMORIES)}, got {memory!r}")
        if requant_dsps not in (1, 2) or isinstance(requant_dsps, bool):
            raise ValueError(f"requant_dsps must be 1 or 2, got {requant_dsps!r}")
        self.requant_dsps = requant_dsps
        self.program, self.memory = program, memory
        self.lut_lanes = tuple(lut_lanes)
        self.in_shape, self.in_act = tuple(in_shape), in_act
        self.out_shape, self.out_act = tuple(out_shape), out_act
        if program.output.pixels * program.output.channels != math.prod(self.out_shape):
            raise ValueError(f"the last step gives {program.output.pixels * program.output.channels}"
                             f" activations, the output {self.out_shape} needs "
                             f"{math.prod(self.out_shape)}")
        self.w = Widths.of(program)
        self.has_class = len(self.out_shape) == 1 if argmax is None else bool(argmax)
        if self.has_class and len(self.out_shape) != 1:
            raise ValueError(f"argmax needs a flat output, got shape {self.out_shape}")
        members = {"i_stream": In(activation_stream(in_act)),
                   "o_stream": Out(activation_stream(out_act)),
                   "counters": Out(wiring.Signature(
                       {"network": Out(network_counters_signature())}))}
        if self.has_class:
            members["o_stream_class"] = Out(stream.Signature(range(max(self.out_shape[0], 2))))
        if memory == "spram":
            members["w_stream"] = In(stream.Signature(16))
            members["weights_loaded"] = Out(1)
        super().__init__(members)

    # --- hardware ----------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        self.units = units = self._units(m)
        cfg = self._settings(m)
        self._connect(m, units, cfg)
        self._sequencer(m, units, cfg)
        self._tensor_memory(m, units)
        self._weight_memory(m, units)
        self._outputs(m, units)
        return m

    def _units(self, m):
        w, program = self.w, self.program
        sums = max([s.target.channels for s in program.conv_steps if s.pool_window] or [2])
        max_pool = program.has("maxpool")
        units = {
            "filler": Filler(w), "groups": GroupWalker(w, program.rowsels),
            "entries": EntryWalker(w, program), "gather": Gather(w, max_pool=max_pool),
            "lanes": Lanes(w, self.lut_lanes, lanes=program.lanes, max_pool=max_pool,
                           shift8=program.has("add")),
            "scanner": Scanner(w), "requant": Requant(w, requant_widths(program),
                                                       low_dsp=self.requant_dsps == 2),
            "writer": Writer(w, program.filter_cache, sums,
                             pool_sums=program.has("pool_sum")),
            "loader": Loader(w),
            "emitter": Emitter(w), "pool_sums": PoolSumReader(w, program.filter_cache),
            "line": LineBuffer(program.depth),
        }
        for name, unit in units.items():
            m.submodules[name] = unit
        return units

    def _settings(self, m):
        """Every unit's settings for the current step: a constant table of the step index,
        registered (the sequencer settles a cycle after the step changes), so that no unit's
        logic starts at the table's decoder."""
        program = self.program
        steps = program.steps
        self.step = step = Signal(range(max(len(steps), 2)))
        cfg = Signal(_step_layout(self.w))
        with m.Switch(step):
            for index, s in enumerate(steps):
                with m.Case(index):
                    m.d.sync += cfg.eq(_step_layout(self.w).const(_step_settings(s, program)))
        return cfg

    def _connect(self, m, u, cfg):
        filler, groups, entries = u["filler"], u["groups"], u["entries"]
        gather, lanes, scanner, requant = u["gather"], u["lanes"], u["scanner"], u["requant"]
        writer, pool_sums = u["writer"], u["pool_sums"]
        m.d.comb += [filler.settings.eq(cfg.filler), filler.ring_start.eq(groups.ring_start),
                     groups.settings.eq(cfg.groups), groups.rows_done.eq(filler.rows_done),
                     groups.group_done.eq(gather.group_done),
                     entries.settings.eq(cfg.entries), gather.max_mode.eq(cfg.max_mode),
                     lanes.max_mode.eq(cfg.max_mode), lanes.skip.eq(cfg.post.skip),
                     lanes.flat_out.eq(cfg.post.flat_out), scanner.settings.eq(cfg.post),
                     requant.settings.eq(cfg.post), writer.settings.eq(cfg.writer),
                     pool_sums.channels.eq(cfg.channels),
                     writer.results.eq(requant.results),
                     writer.sum_addr.eq(pool_sums.sum_addr), writer.sum_en.eq(pool_sums.sum_en),
                     pool_sums.sum_data.eq(writer.sum_data)]
        wiring.connect(m, filler.lb, u["line"].write)
        wiring.connect(m, gather.lb, u["line"].read)
        wiring.connect(m, groups.o_stream, entries.i_stream)
        wiring.connect(m, entries.o_stream, gather.i_stream)
        wiring.connect(m, gather.o_stream, lanes.i_stream)
        wiring.connect(m, lanes.o_stream, scanner.i_stream)
        # The parameter writes go to both caches, which always take them.
        for cache in (lanes.params, requant.params):
            m.d.comb += [cache.valid.eq(entries.params.valid),
                         cache.payload.eq(entries.params.payload)]
        m.d.comb += entries.params.ready.eq(1)
        # Only one of them makes beats in a step.
        m.d.comb += requant.beats.eq(Mux(pool_sums.beats.valid, pool_sums.beats,
                                         scanner.beats))
        # Registered: the units' idles are many, and a step's end or a chunk's restart waits
        # on them (a cycle late is safe: every hand-over between them is registered, so an item
        # on its way always shows in one of them).
        self.drained = Signal()
        m.d.sync += self.drained.eq(~entries.o_stream.valid & gather.idle & lanes.idle &
                                    ~scanner.beats.valid & requant.idle & writer.idle &
                                    pool_sums.done)
        m.d.comb += entries.drained.eq(self.drained)

    def _sequencer(self, m, u, cfg):
        """Wait for an input, run the steps, emit the output; the next input loads once the
        last step reading the input is done."""
        program, step = self.program, self.step
        filler, groups, entries = u["filler"], u["groups"], u["entries"]
        writer, pool_sums, loader, emitter = u["writer"], u["pool_sums"], u["loader"], \
            u["emitter"]
        readers = [i for i, s in enumerate(program.steps) if isinstance(s, ConvStep) and
                   any(src.name == program.input.name for src in s.sources)]
        last_reader = max(readers, default=0)
        input_ready = Signal()
        input_free = Signal(init=1)
        m.d.comb += loader.enable.eq(input_free)
        with m.If(loader.loaded):
            m.d.sync += [input_ready.eq(1), input_free.eq(0)]
        self.weights_ready = Signal()
        summing = Signal()            # the pool sums are being read
        # The reader starts a cycle after it is decided (from a register: the decision waits
        # on the entry walker's pipeline), and shows in ``drained`` a cycle after that.
        start_sums, summing_late, summing_seen = Signal(), Signal(), Signal()
        finished = Signal()           # the step was done last cycle (only set in RUN)
        m.d.sync += [summing_late.eq(summing), summing_seen.eq(summing_late), finished.eq(0),
                     start_sums.eq(0)]
        m.d.comb += pool_sums.start.eq(start_sums)
        # High in SETUP, from a register set in SETTLE (the only way in), so that the units'
        # starts do not wait on the decoding of the sequencer's state.
        setup = Signal()
        m.d.sync += setup.eq(0)
        # Out of IDLE: a register set and cleared with the state's moves (the weights' loader
        # waits on it).
        self.running = Signal()
        with m.FSM(name="sequencer"):
            with m.State("IDLE"):
                with m.If(input_ready & self.weights_ready):
                    m.d.sync += [input_ready.eq(0), step.eq(0), self.running.eq(1)]
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                # The step's settings reach their register.
                m.d.sync += setup.eq(1)
                m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += [summing.eq(0), summing_late.eq(0), summing_seen.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(cfg.pool_sum & entries.done & ~summing):
                    m.d.sync += [summing.eq(1), start_sums.eq(1)]
                # The pool sums' reader counts in ``drained`` once it has started: two cycles
                # after ``summing`` is. The step's end acts a cycle later, from a register.
                m.d.sync += finished.eq(entries.done & self.drained &
                                        Mux(cfg.conv, filler.done, summing_seen))
                with m.If(finished):
                    with m.If(step == last_reader):
                        m.d.sync += input_free.eq(1)
                    with m.If(step == len(program.steps) - 1):
                        m.d.comb += emitter.start.eq(1)
                        m.next = "EMIT"
                    with m.Else():
                        m.d.sync += step.eq(step + 1)
                        m.next = "SETTLE"
            with m.State("EMIT"):
                with m.If(emitter.done):
                    m.d.sync += self.running.eq(0)
                    m.next = "IDLE"
        # The groups start over with each chunk of filters: a cycle after the entry walker
        # starts the chunk (it reads the chunk's header and parameters first), from a register
        # rather than from the pipeline's drain.
        restart = Signal()
        m.d.sync += restart.eq(entries.restart_groups)
        m.d.comb += [entries.start.eq(setup), writer.start.eq(setup),
                     filler.start.eq(cfg.conv & setup),
                     groups.start.eq(cfg.conv & (setup | restart))]

    def _tensor_memory(self, m, u):
        """The memory blocks; per block one access a cycle: the writer's, else the reader's
        (filler or emitter), else the loader's (the steps never write a block they read)."""
        w, program = self.w, self.program
        writer, filler, emitter, loader = u["writer"], u["filler"], u["emitter"], u["loader"]
        reader_re = filler.mem_re | emitter.mem_re
        reader_block = Mux(filler.mem_re, filler.mem_block, emitter.mem_block)
        reader_addr = Mux(filler.mem_re, filler.mem_addr, emitter.mem_addr)
        granted = Signal()
        reader_from = Signal(w.block_bits)
        m.d.sync += reader_from.eq(reader_block)
        rdata = []
        for index, words in enumerate(program.act_blocks):
            if not words:
                # A block the plan leaves empty is not built (nothing reads or writes it).
                rdata.append(0)
                continue
            words = SPRAM_WORDS if self.memory.startswith("spram") else max(words, 2)
            block = MemoryBlock(1 << ceil_log2(words))
            m.submodules[f"block_{index}"] = block
            port = block.port
            writing = writer.mem_we & (writer.mem_block == index)
            reading = reader_re & (reader_block == index)
            loading = loader.mem_we & (loader.mem_block == index) & ~writing & ~reading
            m.d.comb += [port.we.eq(writing | loading), port.re.eq(reading),
                         port.addr.eq(Mux(writing, writer.mem_addr,
                                          Mux(reading, reader_addr, loader.mem_addr))),
                         port.wdata.eq(Mux(writing, writer.mem_data, loader.mem_data)),
                         port.mask.eq(Mux(writing, writer.mem_mask, loader.mem_mask))]
            with m.If(loading):
                m.d.comb += granted.eq(1)
            rdata.append(port.rdata)
        data_in = Signal(16)
        with m.Switch(reader_from):
            for index, value in enumerate(rdata):
                with m.Case(index):
                    m.d.comb += data_in.eq(value)
        m.d.comb += [loader.granted.eq(granted), filler.mem_data.eq(data_in),
                     emitter.mem_data.eq(data_in),
                     loader.settings.eq(slot_layout(w).const(slot_settings(program.input))),
                     emitter.settings.eq(slot_layout(w).const(slot_settings(program.output)))]
        m.d.comb += [loader.i_stream.valid.eq(self.i_stream.valid),
                     loader.i_stream.payload.eq(self.i_stream.payload),
                     self.i_stream.ready.eq(loader.i_stream.ready)]

    def _weight_memory(self, m, u):
        """The weight memory: a ROM, or (SPRAM) blocks written through ``w_stream``."""
        program, entries = self.program, u["entries"]
        words = program.weight_words
        if self.memory != "spram":
            m.submodules.weights = rom = ram(unsigned(16), max(words, 2), [int(v) for v in program.weights])
            read = rom.read_port()
            m.d.comb += [read.addr.eq(entries.mem_addr), read.en.eq(entries.mem_re),
                         entries.mem_data.eq(read.data), self.weights_ready.eq(1)]
            return
        blocks = math.ceil(words / SPRAM_WORDS)
        words = len(program.weights)          # the words w_stream brings
        address = Signal(range(max(words, 2)))
        # Kept through a reset (a reset of the link's network keeps the SPRAM's contents).
        loaded = Signal(reset_less=True)
        load = self.w_stream
        m.d.comb += [load.ready.eq(~self.running), self.weights_ready.eq(loaded),
                     self.weights_loaded.eq(loaded)]
        storing = load.valid & load.ready
        with m.If(storing):
            m.d.sync += address.eq(Mux(address == words - 1, 0, address + 1))
            # In this order: a load of one word ends loaded.
            with m.If(address == 0):
                m.d.sync += loaded.eq(0)
            with m.If(address == words - 1):
                m.d.sync += loaded.eq(1)
        read_from = Signal(range(max(blocks, 2)))
        m.d.sync += read_from.eq(entries.mem_addr >> 14)
        rdata = []
        for index in range(blocks):
            block = MemoryBlock(SPRAM_WORDS)
            m.submodules[f"weights_{index}"] = block
            port = block.port
            writing = storing & (address >> 14 == index)
            m.d.comb += [port.we.eq(writing), port.mask.eq(0b11),
                         port.re.eq(entries.mem_re & (entries.mem_addr >> 14 == index)),
                         port.addr.eq(Mux(writing, address, entries.mem_addr)),
                         port.wdata.eq(load.payload)]
            rdata.append(port.rdata)
        with m.Switch(read_from):
            for index, value in enumerate(rdata):
                with m.Case(index):
                    m.d.comb += entries.mem_data.eq(value)

    def _outputs(self, m, u):
        emitter = u["emitter"]
        out_raw = emitter.o_stream
        m.submodules.out_register = out = _Narrow(self.out_act)
        m.d.comb += [out.i_stream.valid.eq(out_raw.valid),
                     out.i_stream.payload.eq(out_raw.payload[:self.out_act.bits]),
                     out_raw.ready.eq(out.i_stream.ready)]
        if self.has_class:
            m.submodules.argmax = argmax = ArgmaxEngine(self.out_shape[0], self.out_act)
            wiring.connect(m, out.o_stream, argmax.i_stream)
            wiring.connect(m, argmax.o_stream, wiring.flipped(self.o_stream))
            wiring.connect(m, argmax.o_stream_class, wiring.flipped(self.o_stream_class))
        else:
            wiring.connect(m, out.o_stream, wiring.flipped(self.o_stream))
        # Two in flight: one computing, the next loading. Streamed back to back, the first
        # beats of a third wait in the input writer: then the ring has lost the start of the
        # one computing, whose latency is counted short. The last of a stream, and every one
        # sent alone (the host link's way), are counted right.
        m.submodules.network_counters = watch = NetworkCounters(
            math.prod(self.in_shape), math.prod(self.out_shape), inflight=2)
        # The handshakes reach the counters a cycle late, both: the differences are the same,
        # and the output handshake does not drive the counters' enables combinationally.
        m.d.sync += [watch.input_taken.eq(self.i_stream.valid & self.i_stream.ready),
                     watch.output_taken.eq(self.o_stream.valid & self.o_stream.ready)]
        wiring.connect(m, wiring.flipped(self.counters.network), watch.counters)


class _Narrow(wiring.Component):
    """A register slice from the emitter's bytes to the output's activation shape."""

    def __init__(self, act):
        self.act = act
        super().__init__({"i_stream": In(stream.Signature(activation_shape(act))),
                          "o_stream": Out(stream.Signature(activation_shape(act)))})

    def elaborate(self, platform):
        from .stream import StreamRegister
        m = Module()
        m.submodules.register = register = StreamRegister(activation_shape(self.act))
        wiring.connect(m, wiring.flipped(self.i_stream), register.i_stream)
        wiring.connect(m, register.o_stream, wiring.flipped(self.o_stream))
        return m
