"""The entry walker: a step's weight memory, read in order.

For each chunk of filters (:func:`~zeroskip.hdl.seq_plan.chunk_header`): the header (entries,
first channel, the filters of its group left), the filters' parameter words into the parameter
caches, then, for every group descriptor of the :class:`~zeroskip.hdl.seq_walk.GroupWalker`, the
chunk's entries once more, one a cycle. Each entry becomes a request for the gather: the two line
buffer addresses its 8 lanes read (bank ``b`` reads ``addr1`` below the rotation ``k0``,
``addr0`` from it on), the rotation, the lanes whose input is inside the source, the weight.

Pipeline (every stage moves when the output is free or taken): issue (address) | memory | R
(the word registered) | D (decode: position, channel) | E (the tables read at the position) |
T (the reduced-grid index, the rows inside) | U (addresses, lanes) = output. 7 cycles from a
read's issue to its request.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .seq_memory import ram
from .seq_plan import HEADER_WORDS, ConvStep, Program
from .seq_walk import descriptor_layout

__all__ = ["EntryWalker", "entry_walker_layout", "entry_walker_settings", "param_write_layout",
           "request_layout", "tap_layout", "tap_words"]

LATENCY = 7


def entry_walker_layout(w):
    return data.StructLayout({
        "weight_start": unsigned(w.weight_bits), "filters": unsigned(w.filter_bits),
        "params_only": 1, "flat": 1,
        "channel_shift": unsigned(4), "group_shift": unsigned(4), "column_shift": unsigned(3),
        "tap_start": unsigned(w.table_bits), "colmask_start": unsigned(w.table_bits),
        "slot_mask": unsigned(w.lb_bits),
        "c_pad": unsigned(w.lb_bits), "ring_mask": unsigned(w.lb_bits),  # C_pad, S * C_pad - 1
        "wrap_left": signed(w.filter_bits + 1),   # filters per group, less two
        "group_channels": unsigned(w.filter_bits),
        "signed": data.ArrayLayout(1, 2),
        "odd_pixels": 1,                 # groups may start at odd pixels (not a flat output)
    })


def entry_walker_settings(step, program: Program):
    """The :func:`entry_walker_layout` values of a step (a pool step only loads parameters)."""
    if not isinstance(step, ConvStep):
        return {"weight_start": step.weight_start, "filters": step.filters, "params_only": 1,
                "flat": 0, "channel_shift": 0, "group_shift": 0, "column_shift": 0,
                "tap_start": 0, "colmask_start": 0, "slot_mask": 0, "c_pad": 0, "ring_mask": 0,
                "wrap_left": -1,
                "group_channels": 1, "signed": [0, 0], "odd_pixels": 0}
    signed_inputs = list(step.signed_inputs) + [False] * (2 - len(step.signed_inputs))
    return {
        "weight_start": step.weight_start, "filters": step.filters, "params_only": 0,
        "flat": step.flat, "channel_shift": step.c_pad.bit_length() - 1,
        "group_shift": step.cg_pad.bit_length() - 1,
        "column_shift": step.tap_columns.bit_length() - 1,
        "tap_start": step.tap_start, "colmask_start": step.colmask_start,
        "slot_mask": step.slots - 1, "c_pad": step.c_pad,
        "ring_mask": step.slots * step.c_pad - 1, "wrap_left": step.filters_per_group - 2,
        "group_channels": step.group_channels, "signed": signed_inputs,
        "odd_pixels": not step.out_flat,
    }


def tap_layout(w):
    return data.StructLayout({
        "offset": signed(w.v_bits), "region": unsigned(w.lb_bits), "source": 1, "shift8": 1,
        "rows_low": signed(w.coord_bits + 2), "rows_high": signed(w.coord_bits + 2),
    })


def tap_words(program):
    """The tap table: per conv step and tap, where it lands and the output rows it is inside
    for (:func:`tap_layout` fields)."""
    words = []
    for step in program.conv_steps:
        for tap in step.taps:
            low, high = step.tap_rows(tap) if step.bounded else (0, 0)
            # The region's first line-buffer address: (source, phase) times its slots.
            region = (tap.source * step.phases + tap.phase) * step.slots * step.c_pad
            words.append({"offset": tap.offset, "source": tap.source, "shift8": tap.shift8,
                          "region": region, "rows_low": low, "rows_high": high})
    return words


def request_layout(w):
    """What the gather needs of one entry."""
    return data.StructLayout({
        "addr0": unsigned(w.lb_bits), "addr1": unsigned(w.lb_bits), "rotate": unsigned(3),
        "inside": unsigned(8), "out_valid": unsigned(8), "weight": signed(8), "shift8": 1,
        "signed": 1, "first": 1, "last": 1, "filter": unsigned(w.cache_bits),
        "group_last": 1, "odd": 1,
    })


def param_write_layout(w):
    return data.StructLayout({
        "index": unsigned(w.cache_bits), "bias": signed(24), "multiplier": unsigned(16),
        "shift": unsigned(5),
    })


class EntryWalker(wiring.Component):
    """The weight memory's reader for one step at a time.

    Members
    -------
    settings : In(entry_walker_layout(w)); start : In(1)
    i_stream : In(stream.Signature(descriptor_layout(w)))
        Group descriptors, in order.
    o_stream : Out(stream.Signature(request_layout(w)))
        One request per entry, for each group in turn.
    params : Out(stream.Signature(param_write_layout(w)))
        Parameter-cache writes (always ready: the caches are written, not flow-controlled).
    restart_groups : Out(1)
        One cycle before the next chunk's groups: the group walker starts over.
    drained : In(1)
        Nothing of the step is left downstream (the next chunk's parameters may be written).
    done : Out(1)
        Every chunk's requests are out (until the next ``start``).
    mem_addr, mem_re : Out; mem_data : In(16)
        The weight memory's read port (data the cycle after ``mem_re``).
    """

    def __init__(self, w, program):
        self.w = w
        self.cache = program.filter_cache
        self.taps = tap_words(program) or [{}]
        self.colmasks = [int(mask) for mask in program.colmasks] or [0]
        super().__init__({
            "settings": In(entry_walker_layout(w)), "start": In(1),
            "i_stream": In(stream.Signature(descriptor_layout(w))),
            "o_stream": Out(stream.Signature(request_layout(w))),
            "params": Out(stream.Signature(param_write_layout(w))),
            "restart_groups": Out(1), "drained": In(1), "done": Out(1),
            "mem_addr": Out(w.weight_bits), "mem_re": Out(1), "mem_data": In(16),
        })

    def elaborate(self, platform):
        m = Module()
        w, cfg = self.w, self.settings
        out = self.o_stream
        advance = Signal()
        m.d.comb += advance.eq(~out.valid | out.ready)
        self._entries_count = Signal(16)
        self._finished = Signal()
        self._pipe_empty = Signal()     # no entry in any stage of the pipeline
        issue = self._issue(m, advance)
        decoded = self._decode(m, advance, issue)
        self._lanes(m, advance, decoded)
        return m

    # --- issue: header, parameter words, then the entries of each group --------------------
    def _issue(self, m, advance):
        w, cfg = self.w, self.settings
        tag_layout = data.StructLayout({"valid": 1, "kind": unsigned(2), "sub": unsigned(2),
                                        "group_first": 1, "group_last": 1, "slot": 1})
        HEADER, PARAM, ENTRY = 1, 2, 3
        addr = Signal(w.weight_bits)
        chunk_filters = Signal(w.cache_bits + 1)
        filter_base = Signal(w.filter_bits)
        first = Signal()       # the next entry is its group's first
        left = Signal(16)      # reads left in the phase, this one included (a count down
                               # from the header's count, so that the phase's end is an
                               # equality, not a sum compared)
        sub = Signal(2)
        entries = self._entries_count       # the chunk's entries (from its header)
        entries_start = Signal(w.weight_bits)
        last_group = Signal()
        more = Signal()        # chunks of filters after this one
        write_slot = Signal()
        issued = Signal(tag_layout)
        m.d.comb += [self.mem_addr.eq(addr), issued.slot.eq(write_slot)]

        def begin():
            with m.If(self.start):
                m.d.sync += [addr.eq(cfg.weight_start), filter_base.eq(0), write_slot.eq(0)]
                m.next = "CHUNK"

        with m.FSM(name="walk"):
            with m.State("IDLE"):
                begin()
            with m.State("HEADER"):
                m.d.comb += [issued.valid.eq(1), issued.kind.eq(HEADER), issued.sub.eq(sub)]
                with m.If(advance):
                    m.d.sync += [addr.eq(addr + 1), sub.eq(sub + 1)]
                    with m.If(sub == HEADER_WORDS - 1):
                        m.d.sync += [sub.eq(0), left.eq(chunk_filters)]
                        m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.comb += [issued.valid.eq(1), issued.kind.eq(PARAM), issued.sub.eq(sub)]
                with m.If(advance):
                    m.d.sync += [addr.eq(addr + 1), sub.eq(Mux(sub == 2, 0, sub + 1))]
                    with m.If(sub == 2):
                        m.d.sync += left.eq(left - 1)
                        with m.If(left == 1):
                            m.d.sync += entries_start.eq(addr + 1)
                            with m.If(cfg.params_only):
                                m.next = "NEXT"
                            with m.Else():
                                m.next = "GROUP"
            with m.State("GROUP"):
                # Nothing is issued in this state, so the descriptor is taken whether or not the
                # pipeline moves: the group walker's handshake does not wait on the lanes.
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(self.i_stream.valid):
                    m.d.sync += [addr.eq(entries_start), first.eq(1), left.eq(entries),
                                 write_slot.eq(~write_slot),
                                 last_group.eq(self.i_stream.payload.last)]
                    m.next = "ENTRIES"
            with m.State("ENTRIES"):
                m.d.comb += [issued.valid.eq(1), issued.kind.eq(ENTRY),
                             issued.group_first.eq(first),
                             issued.group_last.eq(left == 1)]
                with m.If(advance):
                    m.d.sync += [addr.eq(addr + 1), first.eq(0), left.eq(left - 1)]
                    with m.If((left == 1) & last_group):
                        m.next = "NEXT"
                    with m.Elif(left == 1):
                        m.next = "GROUP"
            with m.State("NEXT"):
                # The chunk is out; the next one once the step's pipeline is empty.
                with m.If(~more):
                    m.next = "DONE"
                with m.Elif(self.drained & self._pipe_empty):
                    m.d.sync += filter_base.eq(filter_base + chunk_filters)
                    m.d.comb += self.restart_groups.eq(1)
                    m.next = "CHUNK"
            with m.State("CHUNK"):
                left = cfg.filters - filter_base
                m.d.sync += [chunk_filters.eq(Mux(left < self.cache, left, self.cache)),
                             more.eq(left > self.cache), sub.eq(0)]
                m.next = "HEADER"
            with m.State("DONE"):
                m.d.comb += self._finished.eq(1)
                begin()
        m.d.comb += self.mem_re.eq(issued.valid & advance)
        # The descriptors of the (at most two) groups in flight, by slot.
        self.descriptors = [Signal(descriptor_layout(w), name=f"descriptor_{i}")
                            for i in range(2)]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            for i in range(2):
                with m.If(write_slot == i ^ 1):
                    m.d.sync += self.descriptors[i].eq(self.i_stream.payload)
        return issued

    # --- R: the word; D: header, parameters, or an entry decoded ----------------------------
    def _decode(self, m, advance, issued):
        w, cfg = self.w, self.settings
        HEADER, PARAM, ENTRY = 1, 2, 3
        tag = issued.shape()
        m_tag, r_tag = Signal(tag), Signal(tag)
        r_word = Signal(16)
        with m.If(advance):
            m.d.sync += [m_tag.eq(issued), r_tag.eq(m_tag), r_word.eq(self.mem_data)]
        with m.If(self.start):
            m.d.sync += [m_tag.valid.eq(0), r_tag.valid.eq(0)]

        # Header and parameter words.
        channel_base0 = Signal(w.channel_bits + 1)
        within_left0 = Signal(signed(w.filter_bits + 1))
        bias_low = Signal(16)
        bias_high, shift = Signal(8), Signal(5)
        param_index = Signal(w.cache_bits)
        param = self.params
        with m.If(advance & r_tag.valid & (r_tag.kind == HEADER)):
            with m.Switch(r_tag.sub):
                with m.Case(0):
                    m.d.sync += [self._entries_count.eq(r_word), param_index.eq(0)]
                with m.Case(1):
                    m.d.sync += channel_base0.eq(r_word)
                with m.Case(2):
                    m.d.sync += within_left0.eq(r_word)
        with m.If(advance & r_tag.valid & (r_tag.kind == PARAM)):
            with m.Switch(r_tag.sub):
                with m.Case(0):
                    m.d.sync += bias_low.eq(r_word)
                with m.Case(1):
                    m.d.sync += [bias_high.eq(r_word[:8]), shift.eq(r_word[8:13])]
                with m.Case(2):
                    m.d.sync += param_index.eq(param_index + 1)
        # The write, as the last parameter word is read: from the registers holding the
        # others (no register of its own: the caches' write ports register it).
        m.d.comb += [param.valid.eq(advance & r_tag.valid & (r_tag.kind == PARAM) &
                                    (r_tag.sub == 2)),
                     param.payload.index.eq(param_index),
                     param.payload.bias.eq(bias_high.as_signed() << 16 | bias_low),
                     param.payload.multiplier.eq(r_word), param.payload.shift.eq(shift)]

        # Entries: position, filter, channel.
        entry = r_tag.valid & (r_tag.kind == ENTRY)
        weight, delta, last = r_word[8:].as_signed(), r_word[1:8], r_word[0]
        d_layout = data.StructLayout({
            "valid": 1, "weight": signed(8), "first": 1, "last": 1, "group_last": 1,
            "slot": 1, "filter": unsigned(w.cache_bits), "channel": unsigned(w.channel_bits + 1),
            "position": unsigned(w.position_bits)})
        d = Signal(d_layout)
        # The last entry's position and filter are D's: D holds an entry whenever the next
        # is not its group's first (a group's entries are read back to back).
        position, filt = d.position, d.filter
        # The filters of the group of channels after this one, less one (-1: the last).
        within_left = Signal(signed(w.filter_bits + 1))
        channel_base = Signal(w.channel_bits + 1)
        previous_last = Signal()
        new_filter = r_tag.group_first | previous_last
        cur_position = Mux(new_filter, 0, position) + delta
        cur_filter = Mux(r_tag.group_first, 0, Mux(previous_last, filt + 1, filt))
        wrap = previous_last & within_left[-1]
        cur_within_left = Mux(r_tag.group_first, within_left0,
                              Mux(previous_last, Mux(wrap, cfg.wrap_left, within_left - 1),
                                  within_left))
        cur_base = Mux(r_tag.group_first, channel_base0,
                       Mux(wrap, channel_base + cfg.group_channels, channel_base))
        with m.If(advance & entry):
            m.d.sync += [within_left.eq(cur_within_left), channel_base.eq(cur_base),
                         previous_last.eq(last)]
        local = cur_position & ((1 << cfg.group_shift) - 1)
        slot = r_tag.slot

        with m.If(advance):
            m.d.sync += [d.valid.eq(entry), d.weight.eq(weight), d.first.eq(new_filter),
                         d.last.eq(last), d.group_last.eq(r_tag.group_last), d.slot.eq(slot),
                         d.filter.eq(cur_filter), d.channel.eq(cur_base + local),
                         d.position.eq(cur_position)]

        # E: the tables read at the position (from D's register: the position's sum is a
        # recurrence, and the tables' addresses a shift and a sum further).
        tap = Signal(w.position_bits)
        m.d.comb += tap.eq(d.position >> cfg.group_shift)
        column = tap & ((1 << cfg.column_shift) - 1)
        klass = Mux(d.slot, self.descriptors[1].klass, self.descriptors[0].klass)
        m.submodules.taps = taps = ram(tap_layout(w), len(self.taps), self.taps)
        m.submodules.colmasks = colmasks = ram(unsigned(8), len(self.colmasks), self.colmasks,
                                                  block=True)
        tap_read, colmask_read = taps.read_port(), colmasks.read_port()
        m.d.comb += [tap_read.addr.eq(cfg.tap_start + tap), tap_read.en.eq(advance),
                     colmask_read.addr.eq(cfg.colmask_start + (klass << cfg.column_shift)
                                          + column),
                     colmask_read.en.eq(advance)]
        e = Signal(d_layout)
        with m.If(advance):
            m.d.sync += e.eq(d)
        with m.If(self.start):
            m.d.sync += [d.valid.eq(0), e.valid.eq(0)]
        self._stage_valids = [m_tag.valid, r_tag.valid, d.valid, e.valid]
        return e, tap_read.data, colmask_read.data

    # --- T: reduced-grid index, rows inside; U: addresses, lanes -----------------------------
    def _lanes(self, m, advance, decoded):
        w, cfg = self.w, self.settings
        d, tap, colmask = decoded
        descriptor = Signal(descriptor_layout(w))
        m.d.comb += descriptor.eq(Mux(d.slot, self.descriptors[1], self.descriptors[0]))
        offset = Mux(cfg.flat, d.position, tap.offset)
        t_layout = data.StructLayout({
            "valid": 1, "v": signed(w.v_bits + 2), "rows": unsigned(4), "colmask": unsigned(8),
            "slot": 1, "region": unsigned(w.lb_bits),
            "channel": unsigned(w.channel_bits + 1), "weight": signed(8), "shift8": 1,
            "signed": 1, "first": 1, "last": 1, "filter": unsigned(w.cache_bits),
            "group_last": 1, "odd": 1})
        t = Signal(t_layout)
        rows = Signal(4)
        for r in range(4):
            row = descriptor.out_y + r
            m.d.comb += rows[r].eq(cfg.flat | ((row >= tap.rows_low) & (row <= tap.rows_high)))
        with m.If(advance):
            m.d.sync += [t.valid.eq(d.valid), t.v.eq(descriptor.base_v + offset),
                         t.rows.eq(rows), t.colmask.eq(Mux(cfg.flat, 0xFF, colmask)),
                         t.slot.eq(d.slot),
                         t.region.eq(Mux(cfg.flat, 0, tap.region)),
                         t.channel.eq(Mux(cfg.flat, 0, d.channel)), t.weight.eq(d.weight),
                         t.shift8.eq(~cfg.flat & tap.shift8),
                         t.signed.eq(cfg.signed[Mux(cfg.flat, 0, tap.source)]),
                         t.first.eq(d.first), t.last.eq(d.last), t.filter.eq(d.filter),
                         t.group_last.eq(d.group_last),
                         t.odd.eq(cfg.odd_pixels & descriptor.odd)]
        with m.If(self.start):
            m.d.sync += t.valid.eq(0)

        out = self.o_stream
        # The ring slot of lane 0 and of the next block, as line-buffer offsets.
        slot0 = Signal(w.lb_bits)
        slot1 = Signal(w.lb_bits)
        m.d.comb += [slot0.eq(((t.v >> 3) & cfg.slot_mask) << cfg.channel_shift),
                     slot1.eq((slot0 + cfg.c_pad) & cfg.ring_mask)]
        rowsel = Mux(t.slot, self.descriptors[1].rowsel, self.descriptors[0].rowsel)
        out_valid = Mux(t.slot, self.descriptors[1].out_valid, self.descriptors[0].out_valid)
        inside = Signal(8)
        for lane in range(8):
            m.d.comb += inside[lane].eq(t.colmask[lane] &
                                        t.rows.bit_select(rowsel[2 * lane:2 * lane + 2], 1))
        with m.If(advance):
            p = out.payload
            m.d.sync += [out.valid.eq(t.valid),
                         p.addr0.eq(t.region + slot0 + t.channel),
                         p.addr1.eq(t.region + slot1 + t.channel),
                         p.rotate.eq(t.v[:3]), p.inside.eq(inside & out_valid),
                         p.out_valid.eq(out_valid), p.weight.eq(t.weight),
                         p.shift8.eq(t.shift8), p.signed.eq(t.signed), p.first.eq(t.first),
                         p.last.eq(t.last), p.filter.eq(t.filter),
                         p.group_last.eq(t.group_last), p.odd.eq(t.odd)]
        with m.If(self.start):
            m.d.sync += out.valid.eq(0)
        m.d.comb += [self._pipe_empty.eq(~Cat(*self._stage_valids, t.valid, out.valid).any()),
                     self.done.eq(self._finished & self._pipe_empty)]
