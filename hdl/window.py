"""What the two conv engines (:mod:`.conv`, :mod:`.xnor`) share: the line buffer (a copy per
lane) and its writer, each lane's walk over output pixels and its accumulator.

The line buffer is a ring of ``rows`` input rows. Rows, and output pixels, are counted across
inferences with **wrap-around counters** compared only through their differences
(:func:`earlier`): the differences stay small (a ring of rows, a tile of pixels), so the counters
need a few bits each, not 32, and never overflow wrongly however long the engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Mux, Signal, signed
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from .arith import times
from .sparse_plan import signed_width

__all__ = ["DEEP_TILE_SLOTS", "PIXEL_COUNTER_WIDTH", "TILE_SLOTS", "LaneWindow", "PixelCursor",
           "WriteProgress", "earlier", "pixel_counter_width", "slot_bits",
           "elaborate_accumulator", "elaborate_block_accumulator", "elaborate_filter_counter",
           "elaborate_packer", "group_of", "replicated_memory",
           "ring_rows", "row_counter_width"]

TILE_SLOTS = 2  # output pixels the lanes may run ahead of the collector, plus one
#: The deeper output tile of engines with wide streams, packs or split filters: with little
#: work per lane and pixel, a lane's trip from a pixel's scan to its collection (some thirty
#: cycles) would otherwise bound the engine at half that a pixel.
DEEP_TILE_SLOTS = 4


def pixel_counter_width(slots):
    """Output-pixel counters differ by at most ``slots + 1``; this leaves a margin of two
    bits."""
    return ceil_log2(slots + 2) + 2


def slot_bits(slots):
    return max(ceil_log2(slots), 1)


PIXEL_COUNTER_WIDTH = pixel_counter_width(TILE_SLOTS)


#: A line buffer this deep (words) or deeper is block RAM, whose blocks hold a power of two.
SPARE_ROW_WORDS = 1024


def ring_rows(geometry, row_words):
    """Input rows the line buffer holds: a window's rows and a stride of rows arriving, plus
    a spare row (so the next rows may arrive while a lane still reads the oldest) unless it
    takes a ring of ``row_words`` words a row, at least :data:`SPARE_ROW_WORDS` deep, past a
    power of two: there the spare row would double the RAM blocks of every lane's copy (a
    16-channel 32-wide 3x3 layer: 2,048 words in one ECP5 block a lane, 2,560 in two)."""
    rows = geometry.kernel[0] + geometry.stride[0]
    spare = (rows + 1) * row_words
    if spare < SPARE_ROW_WORDS or ceil_log2(spare) == ceil_log2(rows * row_words):
        rows += 1
    return min(rows, 2 ** 16)


def row_counter_width(geometry, rows):
    """Bits of a wrap-around global row counter: every two compared differ by less than two
    inferences' rows plus the ring, well within half the counter's range."""
    return ceil_log2(2 * (geometry.height + rows + geometry.kernel[0]) + 1) + 1


@dataclass(frozen=True)
class ReplicatedWrite:
    """The write port of memories written together: ``addr``, ``data`` and ``en`` drive every
    copy's."""

    addr: Signal
    data: Signal
    en: Signal


@dataclass(frozen=True)
class WriteProgress:
    """How far the packer (:func:`elaborate_packer`) has written the ring: ``rows`` whole rows
    (a wrap-around global count, :func:`row_counter_width` bits) and ``columns`` pixels of the
    row being written (0 again as ``rows`` steps)."""

    rows: Signal
    columns: Signal

    @classmethod
    def create(cls, geometry, row_width):
        return cls(Signal(row_width, name="rows_written"),
                   Signal(range(geometry.width), name="columns_written"))


def replicated_memory(m, name, shape, depth, copies):
    """``copies`` RAMs of ``depth`` words of ``shape``, written together, each to be read
    through one port: ``(write port, memories)``; one copy is a plain memory (``name``), more
    are ``name_0``, ``name_1``, ...

    A line buffer read by every lane is a copy per lane rather than one memory with a read port
    per lane: block and LUT RAMs have one read port beside their write port, so Yosys makes a
    copy per read port anyway, and its ``memory_libmap`` searches the assignments of a memory's
    ports to copies in a time and memory exponential in them (one 1600 x 8 memory with 8 read
    ports: 5 s, 11: 276 s and 2.4 GB; the DS-CNN at 64 multipliers has 11-lane layers).
    """
    memories = [Memory(shape=shape, depth=depth, init=[]) for _ in range(copies)]
    for index, memory in enumerate(memories):
        m.submodules[name if copies == 1 else f"{name}_{index}"] = memory
    if copies == 1:
        return memories[0].write_port(), memories
    write = ReplicatedWrite(Signal(range(depth), name=f"{name}_addr"),
                            Signal(shape, name=f"{name}_data"), Signal(name=f"{name}_en"))
    for memory in memories:
        port = memory.write_port()
        m.d.comb += [port.addr.eq(write.addr), port.data.eq(write.data), port.en.eq(write.en)]
    return write, memories


def earlier(a, b, width):
    """``a < b`` for wrap-around counters of ``width`` bits whose true difference is below
    ``2 ** (width - 1)``: the sign of their difference modulo ``2 ** width``."""
    return (a - b)[width - 1]


def _coordinate_shape(geometry):
    """Window coordinates: from minus the padding to past the far edge by a kernel and a stride."""
    g = geometry
    return signed(signed_width(-max(g.padding), max(g.height, g.width) + max(g.kernel) +
                               max(g.stride)))


class PixelCursor:
    """Walks output pixels across inferences: the window origin and the ring slot of its row."""

    def __init__(self, geometry, rows, row_width, name, *, track_needed=False):
        g = self.geometry = geometry
        self.rows = rows
        coordinate = _coordinate_shape(g)
        self.out_x = Signal(range(g.out_width), name=f"{name}_out_x")
        self.out_y = Signal(range(g.out_height), name=f"{name}_out_y")
        self.left = Signal(coordinate, init=-g.padding[1], name=f"{name}_left")
        self.top = Signal(coordinate, init=-g.padding[0], name=f"{name}_top")
        self.top_slot = Signal(range(rows), init=-g.padding[0] % rows, name=f"{name}_top_slot")
        # Global row (wrap-around) of this inference's row 0.
        self.row_base = Signal(row_width, name=f"{name}_row_base")
        # Input rows (global count) that must be complete before this pixel can start, if
        # tracked: a register stepped with the cursor by a constant per output row (computed
        # from the cursor it was the longest path). Pixels of the last of those rows under the
        # window (its right edge, plus one): the pixel may start before the rest of that row is
        # in. Each with its value for the next pixel beside it, a register too (computed from
        # the cursor as the lane steps, the lookup, add and comparison into `rows_ready` were
        # the digits-shaped net's longest path).
        self.needed = self.needed_next = self.needed_columns = self.needed_columns_next = None
        if track_needed:
            first = self._rows_below(-g.padding[0])
            steps = self._needed_steps()
            last_x = g.out_width - 1
            columns_first = self._columns_left_of(0)
            self.needed = Signal(row_width, init=first, name=f"{name}_needed")
            self.needed_next = Signal(row_width, init=(first + steps[0] * (last_x == 0)) %
                                      (1 << row_width), name=f"{name}_needed_next")
            self.needed_columns = Signal(range(g.width + 1), init=columns_first,
                                         name=f"{name}_needed_columns")
            self.needed_columns_next = Signal(
                range(g.width + 1), init=columns_first if last_x == 0 else
                min(columns_first + g.stride[1], g.width), name=f"{name}_needed_columns_next")

    def oldest_row(self):
        """Global index of the first input row this pixel's window reads."""
        return self.row_base + Mux(self.top < 0, 0, self.top)

    def _rows_below(self, top):
        """Rows of an inference from its row 0 to the bottom of a window whose top is ``top``."""
        return min(top + self.geometry.kernel[0], self.geometry.height)

    def _columns_left_of(self, out_x):
        """Input pixels of a row from its first to the right edge of output pixel ``out_x``'s
        window."""
        g = self.geometry
        return min(out_x * g.stride[1] - g.padding[1] + g.kernel[1], g.width)

    def _needed_steps(self):
        """How far ``needed`` moves as the cursor leaves each output row (the last one's step
        goes on to the next inference's first)."""
        g = self.geometry
        below = [self._rows_below(-g.padding[0] + y * g.stride[0]) for y in range(g.out_height)]
        return [next_ - this for this, next_ in zip(below, below[1:])] + [
            g.height + below[0] - below[-1]]

    def _advance_needed(self, m):
        """``needed`` and ``needed_columns`` take their next values, and those the values for
        the pixel after: the cursor leaves its row at the next step when it is on the row's last
        pixel but one (on every step when a row has one pixel)."""
        g = self.geometry
        steps = self._needed_steps()
        shape = range(max(steps) + 1)
        columns_first = self._columns_left_of(0)
        if g.out_width == 1:
            # Every step ends a row: the step is the next row's.
            step = Array(Const(s, shape) for s in steps[1:] + steps[:1])[self.out_y]
            columns = Const(columns_first, range(g.width + 1))
        else:
            ends_row = self.out_x == g.out_width - 2
            step = Mux(ends_row, Array(Const(s, shape) for s in steps)[self.out_y], 0)
            columns = Mux(ends_row, columns_first,
                          Mux(self.needed_columns_next + g.stride[1] > g.width, g.width,
                              self.needed_columns_next + g.stride[1]))
        m.d.sync += [self.needed.eq(self.needed_next),
                     self.needed_next.eq(self.needed_next + step),
                     self.needed_columns.eq(self.needed_columns_next),
                     self.needed_columns_next.eq(columns)]

    def advance(self, m):
        g, rows = self.geometry, self.rows

        def wrap(value):
            return Mux(value >= rows, value - rows, value)

        if self.needed is not None:
            self._advance_needed(m)
        with m.If(self.out_x != g.out_width - 1):
            m.d.sync += [self.out_x.eq(self.out_x + 1), self.left.eq(self.left + g.stride[1])]
        with m.Else():
            m.d.sync += [self.out_x.eq(0), self.left.eq(-g.padding[1])]
            with m.If(self.out_y != g.out_height - 1):
                m.d.sync += [self.out_y.eq(self.out_y + 1), self.top.eq(self.top + g.stride[0]),
                             self.top_slot.eq(wrap(self.top_slot + g.stride[0] % rows))]
            with m.Else():
                # The next inference's row 0 follows this inference's last row in the ring.
                step = (g.height - (g.out_height - 1) * g.stride[0]) % rows
                m.d.sync += [self.out_y.eq(0), self.top.eq(-g.padding[0]),
                             self.top_slot.eq(wrap(self.top_slot + step)),
                             self.row_base.eq(self.row_base + g.height)]


class LaneWindow:
    """One lane's walk over output pixels and the line-buffer rows it holds on to.

    ``cursor`` is the pixel the lane examines next; ``retired`` counts the pixels whose
    products are all done (wrap-around): the oldest of those not done must keep its rows in
    the ring (pairs of pixels examined may still wait to read it), which :func:`oldest_of`
    works out for all lanes at once. ``pixel_index`` counts pixels started; a pixel starts
    once its rows are written, the last of them up to the window's right edge
    (``rows_ready``), and the collector has freed its tile slot (``can_start``).

    Both conditions are registers, computed for the cursor as it will be after this cycle: a
    start is then decided by two flip-flops, not by two counter comparisons. The counters they
    are compared with (``written``, ``collector_released``) only grow, so seeing them a
    cycle late (``collector_released`` two) can only delay a start, never allow one early.
    The output tile holds ``slots`` pixels: a lane runs up to ``slots`` pixels ahead of the
    collector.
    """

    def __init__(self, m, geometry, rows, row_width, written, collector_released, name,
                 slots=TILE_SLOTS):
        g = self.geometry = geometry
        self.rows, self.row_width, self.slots = rows, row_width, slots
        width = pixel_counter_width(slots)
        self.pixel_index = Signal(width, name=f"{name}_pixel_index")
        self.cursor = PixelCursor(g, rows, row_width, f"{name}_scan", track_needed=True)
        self.retired = Signal(width, name=f"{name}_retired")
        self._stepping = Signal(name=f"{name}_stepping")  # next_pixel() this cycle
        self.rows_ready = Signal(name=f"{name}_rows_ready")
        tile_free = Signal(name=f"{name}_tile_free")
        cursor = self.cursor
        next_row = Signal(row_width, name=f"{name}_next_row")  # the row being written
        m.d.comb += next_row.eq(written.rows + 1)

        def ready(needed, columns):
            """Every row below ``needed`` written, or all but the last and that one up to
            ``columns``."""
            return ~earlier(written.rows, needed, row_width) | \
                ((next_row == needed) & (written.columns >= columns))

        # The first pixel whose slot the collector has not freed, a register: the collector's
        # count into every lane's sum and comparison was the DS-CNN's longest path on the
        # ECP5-85F (10.9 ns, 7.3 of it route). A register of the count plus a constant is the
        # same in every lane, and Yosys keeps one.
        limit = Signal(width, name=f"{name}_tile_limit")
        m.d.sync += [
            limit.eq(collector_released + slots),
            self.rows_ready.eq(Mux(self._stepping,
                                   ready(cursor.needed_next, cursor.needed_columns_next),
                                   ready(cursor.needed, cursor.needed_columns))),
            tile_free.eq(earlier(Mux(self._stepping, self.pixel_index + 1, self.pixel_index),
                                 limit, width)),
        ]
        self.can_start = self.rows_ready & tile_free

    def origin_layout(self):
        """Fields of the pixel being examined that travel with its combos down the pipeline."""
        coordinate = _coordinate_shape(self.geometry)
        return {"slot": slot_bits(self.slots), "top": coordinate, "left": coordinate,
                "top_slot": range(self.rows)}

    def origin(self, stage):
        """Assignments latching the current pixel's origin into ``stage``."""
        slot = self.pixel_index[0] if self.slots == 2 else \
            self.pixel_index[:slot_bits(self.slots)]
        return [stage.slot.eq(slot), stage.top.eq(self.cursor.top),
                stage.left.eq(self.cursor.left), stage.top_slot.eq(self.cursor.top_slot)]

    def next_pixel(self, m):
        m.d.comb += self._stepping.eq(1)
        m.d.sync += self.pixel_index.eq(self.pixel_index + 1)
        self.cursor.advance(m)

    def locate(self, m, stage, tap_y, tap_x):
        """``(pad, ring_pixel)`` of a tap of the pixel latched in ``stage``: whether it falls in
        the padding, and its pixel's index in the line buffer ring."""
        g, rows = self.geometry, self.rows
        row = stage.top + tap_y
        column = stage.left + tap_x
        pad = (row < 0) | (row >= g.height) | (column < 0) | (column >= g.width)
        slot_of_row = Signal(range(rows))
        m.d.comb += slot_of_row.eq(Mux(stage.top_slot + tap_y >= rows,
                                       stage.top_slot + tap_y - rows, stage.top_slot + tap_y))
        return pad, times(slot_of_row, g.width) + column[:max(ceil_log2(g.width), 1)]


def oldest_of(m, windows):
    """The oldest row any of the lanes' windows still needs, a register: the first row of the
    oldest pixel some lane has not retired. The rows a pixel reads only grow with it, so one
    cursor walks the pixels every lane has retired (each lane counts its own, and the cursor
    steps when every count is past it), and the lanes keep no cursor of this kind, nor is
    there a tree comparing their rows. Its row is registered once per doubling of the lanes
    (once at least): the lanes spread over the part with their number, and the way from the
    last of them to the writer's room check gets a register each time. Seen late, it only
    holds a row back.

    The first of those registers is the decision to step, made for the count as it will be
    after this cycle (the count and the cursor then step a cycle later, their row a register
    less behind): the lanes' comparisons and the cursor's enables across the part in one
    cycle were the DS-CNN's longest path on the ECP5-85F (11.9 ns, 10.0 of it route)."""
    first = windows[0]
    g, width = first.geometry, len(first.retired)
    cursor = PixelCursor(g, first.rows, first.row_width, "retired")
    count = Signal(width, name="retired_count")
    count_1 = Signal(width, name="retired_count_1", init=1)   # count + 1
    step = Signal(name="retired_step")
    following = Mux(step, count_1, count)                     # the count after this cycle
    m.d.sync += step.eq(Cat(earlier(following, window.retired, width)
                            for window in windows).all())
    with m.If(step):
        m.d.sync += [count.eq(count_1), count_1.eq(count_1 + 1)]
        cursor.advance(m)
    row = cursor.oldest_row()
    for _ in range(max(ceil_log2(len(windows)), 1) - 1):
        level = Signal(first.row_width)
        m.d.sync += level.eq(row)
        row = level
    return row


def elaborate_packer(m, engine, i_stream, rows, written, windows, bits_of_beat, word_write):
    """Input beats -> words of one bit per channel (``bits_of_beat``: one per activation of a
    beat), one word per (pixel, group, chunk), or per pixel and word of channels
    (:attr:`~zeroskip.hdl.sparse_plan.ConvGeometry.mask_groups`), written through
    ``word_write`` into the ring; counts rows and pixels in ``written`` (a
    :class:`WriteProgress`), a pixel once its last beat is written.

    The beats come from ``i_stream`` (the engine's input or a register slice behind it), ready
    while the ring has a row slot no lane needs any more. Returns the ``taken`` handshake, for
    an engine that stores more per beat.
    """
    g = engine.geometry
    width = len(bits_of_beat)  # a beat never crosses a word or a group (ConvGeometry.check)
    groups, group_channels = g.mask_groups
    words = rows * g.width * g.mask_words_per_pixel
    address = Signal(range(words))
    channel_in_group = Signal(range(group_channels // width))
    bit = Signal(range(g.mask_word // width))
    rows_written, column = written.rows, written.columns
    channel = Signal(range(g.in_channels // width))
    bits = Signal(g.mask_word)

    # Whether the ring has room for the row being written: a register, computed for the row
    # count after this cycle (the oldest row needed only grows, so seeing it a cycle late can
    # only hold a beat back). Computed each cycle, it was the engine's longest path.
    row_width = windows[0].row_width
    oldest = oldest_of(m, windows)
    limit = oldest + rows
    room = Signal(init=1)
    m.d.comb += i_stream.ready.eq(room)
    taken = i_stream.valid & i_stream.ready
    row_done = taken & (channel == g.in_channels // width - 1) & (column == g.width - 1)
    m.d.sync += room.eq(Mux(row_done, earlier(rows_written + 1, limit, row_width),
                            earlier(rows_written, limit, row_width)))

    word_done = (bit == g.mask_word // width - 1) | \
        (channel_in_group == group_channels // width - 1)
    # A beat's nonzero bits, its place in the word and whether it ends the word are registered
    # before they are merged into the word, and the word is written the cycle after that, from
    # registers: the beat's nonzero test, its merge into the word and the route to every lane's
    # copy in one cycle were the DS-CNN's longest path on the ECP5-85F (12.4 ns, 10.9 of it
    # route), the nonzero test and the merge with a route between the MobileNet's (12.9 ns,
    # 7.7 of it one route). No lane reads a word so soon: a window's readiness is a register of
    # ``written``, counted as the beat is taken, and the examiner addresses a mask three
    # stages after it starts a pixel.
    nonzero, place = Signal(width), Signal.like(bit)
    merging, closing, closing_address = Signal(), Signal(), Signal.like(address)
    m.d.sync += [nonzero.eq(bits_of_beat), place.eq(bit), merging.eq(taken),
                 closing.eq(taken & word_done), closing_address.eq(address)]
    word = bits | (nonzero << place) if width == 1 else \
        bits | (nonzero << Cat(Const(0, width.bit_length() - 1), place))
    m.d.sync += [word_write.addr.eq(closing_address), word_write.data.eq(word),
                 word_write.en.eq(closing)]
    with m.If(merging):
        m.d.sync += bits.eq(Mux(closing, 0, word))
    with m.If(taken):
        with m.If(word_done):
            m.d.sync += [bit.eq(0), address.eq(Mux(address == words - 1, 0, address + 1))]
        with m.Else():
            m.d.sync += bit.eq(bit + 1)
        with m.If(channel_in_group == group_channels // width - 1):
            m.d.sync += channel_in_group.eq(0)
        with m.Else():
            m.d.sync += channel_in_group.eq(channel_in_group + 1)
        with m.If(channel == g.in_channels // width - 1):
            m.d.sync += channel.eq(0)
            with m.If(column == g.width - 1):
                m.d.sync += [column.eq(0), rows_written.eq(rows_written + 1)]
            with m.Else():
                m.d.sync += column.eq(column + 1)
        with m.Else():
            m.d.sync += channel.eq(channel + 1)
    return taken


def elaborate_filter_counter(m, filters, advance):
    """Which of the lane's ``filters`` a pipeline stage is on, advanced by ``advance`` (the
    filter's last entry passing)."""
    filter_index = Signal(range(max(filters, 2)))
    with m.If(advance):
        m.d.sync += filter_index.eq(Mux(filter_index == filters - 1, 0, filter_index + 1))
    return filter_index


def group_of(geometry, lane_filters, filter_index):
    """The input-channel group of the lane's ``filter_index``-th filter."""
    g = geometry
    return Array(Const(f // g.filters_per_group, range(max(g.groups, 2)))
                 for f in lane_filters)[filter_index]


def _registered_write(m, window, tile_write, *, addr, data, en, done):
    """Give the output tile a sum's write the cycle after the sum is made, and count the pixel
    done (``done``: its last sum is written) with that write, so that the collector reads no
    sum before it lands: the adder and the tile's write port in one cycle were the digits-shaped
    net's longest path on the ECP5. The pixel retires from ``window`` a cycle after that: the
    lane's accumulator sits by its DSPs and its retired cursor by the line buffer, which may be
    across the part (the accumulator's last-sum logic fanned out to the cursor's registers was
    the DS-CNN's longest path on the ECP5-85F); retiring late only holds rows a cycle longer.
    Returns the count of pixels done (wrap-around)."""
    addr_r, data_r, en_r = (Signal.like(tile_write.addr, name="tile_addr"),
                            Signal.like(tile_write.data, name="tile_data"),
                            Signal.like(tile_write.en, name="tile_en"))
    done_r, retire = Signal(name="pixel_written"), Signal(name="pixel_retired")
    pixels_done = Signal(pixel_counter_width(window.slots))
    m.d.sync += [addr_r.eq(addr), data_r.eq(data), en_r.eq(en), done_r.eq(done),
                 retire.eq(done_r)]
    m.d.comb += [tile_write.addr.eq(addr_r), tile_write.data.eq(data_r),
                 tile_write.en.eq(en_r)]
    with m.If(done_r):
        m.d.sync += pixels_done.eq(pixels_done + 1)
    with m.If(retire):
        m.d.sync += window.retired.eq(window.retired + 1)
    return pixels_done


def elaborate_accumulator(m, window, *, valid, last, value, filter_index, slot, filters,
                          sum_shape, tile_write):
    """Sum a filter's values; its last one writes the sum to the output tile (a cycle later),
    and a pixel's last filter retires the pixel. Returns the count of pixels done (wrap-around),
    counted as their last sum is written."""
    accumulator = Signal(sum_shape)
    total = Signal(sum_shape)
    closes = valid & last
    m.d.comb += total.eq(accumulator + value)
    with m.If(valid):
        with m.If(last):
            m.d.sync += accumulator.eq(0)
        with m.Else():
            m.d.sync += accumulator.eq(total)
    return _registered_write(m, window, tile_write, addr=times(slot, filters) + filter_index,
                             data=total, en=closes, done=closes & (filter_index == filters - 1))


def elaborate_block_accumulator(m, window, *, valid, last, value, unit, sub, slot, units, pack,
                                block, sum_shape, tile_write):
    """:func:`elaborate_accumulator` for a tile in blocks (words of ``block`` filters' sums,
    written with a granularity of one sum) and for packs: a unit (a filter, or a pack of
    ``pack`` consecutive filters, ``sub`` naming a value's filter in it) keeps a partial sum
    per filter; its last value writes them into the unit's place in its block's word (a cycle
    later), and a pixel's last unit retires the pixel. Returns the count of pixels done
    (wrap-around), counted as their last sums are written."""
    per_word = block // pack  # units per tile word; both are powers of two
    shift = per_word.bit_length() - 1
    partials = [Signal(sum_shape, name=f"partial_{index}") for index in range(pack)]
    # Every partial sum adds the value where it is its filter's and zero elsewhere: no
    # multiplexer picks a partial sum before the adder (a pack of 8 put three levels of one
    # before the carry chain, the digits-shaped net's longest path on the ECP5).
    sums = [Signal(sum_shape, name=f"sum_{index}") for index in range(pack)]
    m.d.comb += [total.eq(partial + (value if pack == 1 else Mux(sub == index, value, 0)))
                 for index, (partial, total) in enumerate(zip(partials, sums))]
    place = unit[:shift] if shift else 0
    closes = valid & last
    with m.If(valid):
        with m.If(last):
            m.d.sync += [partial.eq(0) for partial in partials]
        with m.Else():
            m.d.sync += [partial.eq(total) for partial, total in zip(partials, sums)]
    enable = Const((1 << pack) - 1, block) << (place * pack)
    return _registered_write(m, window, tile_write,
                             addr=times(slot, units // per_word) + (unit >> shift),
                             data=Cat(*sums * per_word), en=Mux(closes, enable, 0),
                             done=closes & (unit == units - 1))
