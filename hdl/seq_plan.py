"""The static program of the sequential engine: every table and address decided from the graph.

The engine (:mod:`.sequential`) runs a network one layer at a time on whole tensors. This module
decides, from the layers alone, where every tensor lives, what each step reads and writes, and
the contents of every ROM; the hardware only follows it.

Tensors
    A tensor of ``C`` channels and ``P = H * W`` pixels is stored in blocks of 8 consecutive
    pixels (raster order) per channel: byte ``((p >> 3) * C + c) * 8 + (p & 7)`` of its region
    (:func:`byte_address`), two bytes to a 16-bit memory word. A flat tensor of ``F`` features is
    one channel of ``F`` pixels. Regions sit in *memory blocks* (single-port RAMs of 16-bit
    words: an iCE40UP5K's SPRAMs, block RAM elsewhere); a step never writes the block it reads.

Conv steps (conv2d of any groups, linear, add)
    The lanes take 8 consecutive output pixels (a *group*) and one filter at a time; every lane
    multiplies the same weight by its own pixel's activation. A filter's nonzero weights are
    *entries* of a weight stream, replayed for every group; an entry names a *position* ``j`` in
    the filter's receptive field (``tap * C_pad + channel``, or the feature in *flat* mode).
    The rows a group needs are first copied into a *line buffer* of 8 banks, so that the 8
    lanes read 8 banks in one cycle: bank ``v % 8``, where ``v`` is the pixel's index in the
    *reduced* grid (the input split into stride phases, :class:`ConvStep`). An add is a conv of
    two sources whose weights are its input multipliers, split into 8-bit digits.

Pool steps
    A max or average pool is a depthwise conv of unit weights on the lanes (which keep the
    largest value instead of the sum for a max pool); an average pool over whole rows right
    after a conv step is summed by that step's writer instead and only requantized
    (:class:`PoolSumStep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .. import ir
from .requant import saturation_bounds
from .sparse_plan import signed_width

__all__ = ["BANKS", "ConvStep", "PoolSumStep", "Program", "Tap", "TensorSlot",
           "byte_address", "encode_entries"]

#: Lanes, and banks of the line buffer.
BANKS = 8
#: Bits of one weight-stream entry: weight, position delta, last-of-filter flag.
ENTRY_BITS = 16
DELTA_BITS = 7
MAX_DELTA = (1 << DELTA_BITS) - 1
#: Widest weight an entry holds (signed).
ENTRY_WEIGHT_MIN, ENTRY_WEIGHT_MAX = -128, 127
#: Words of one memory block (an SPRAM: 16384 x 16 bits).
SPRAM_WORDS = 16384


def _pow2_at_least(n):
    return 1 << max(int(n) - 1, 0).bit_length()


def _is_pow2(n):
    return n >= 1 and n & (n - 1) == 0


def byte_address(p, c, channels):
    """Byte of pixel ``p``, channel ``c`` in a region of ``channels`` channels."""
    return ((p >> 3) * channels + c) * 8 + (p & 7)


@dataclass(frozen=True)
class TensorSlot:
    """A tensor as the memories hold it: ``channels`` x ``height`` x ``width`` (a flat tensor
    is 1 x 1 x features), its encoding, and its region: ``block`` and first 16-bit ``word``."""

    name: str
    channels: int
    height: int
    width: int
    act: ir.Activation
    block: int = -1
    word: int = 0

    @property
    def pixels(self):
        return self.height * self.width

    @property
    def words(self):
        """16-bit words of the region (whole blocks of 8 pixels per channel)."""
        return math.ceil(self.pixels / 8) * self.channels * 4

    def word_of(self, p, c):
        return self.word + (byte_address(p, c, self.channels) >> 1)


@dataclass(frozen=True)
class Tap:
    """One kernel tap of a conv step as the gather stage sees it: its kernel offsets (for the
    bounds), the source, whether the weight counts 256 times (an add's high digit), and where
    it lands in the reduced grid: ``offset`` in ``v`` and the ``phase`` region."""

    dy: int
    dx: int
    source: int
    shift8: bool
    offset: int
    phase: int


@dataclass(frozen=True)
class ConvStep:
    """A conv2d, linear or add layer run on the lanes.

    Geometry: the output grid is ``out_height`` x ``out_width`` (1 x 1 for a linear layer), a
    group is ``group_lanes`` consecutive output pixels, in ``row_mode`` never crossing an output
    row. The input is read in the reduced grid: ``v = (y // split_y) * reduced_width +
    x // split_x + x % split_x`` in phase region ``(y % split_y) * split_x + x % split_x``;
    a tap lands at ``v = base + offset`` for the group's lane 0.

    Line buffer: bank ``v % 8``, address ``((source * phases + phase) * slots + (v // 8) %
    slots) * c_pad + channel``; the fill keeps at most ``rows_cap`` input rows from the oldest
    one the current group needs.
    """

    node: object
    kind: str                       # "conv" | "linear" | "add"
    sources: tuple
    target: TensorSlot
    flat: bool                      # linear on a flat tensor: position = feature, no taps
    out_flat: bool                  # output is flat: filter f -> pixel f
    kernel: tuple
    stride: tuple
    padding: tuple
    out_height: int
    out_width: int
    filters: int
    group_channels: int             # input channels a filter reads (one group)
    filters_per_group: int
    group_lanes: int
    row_mode: bool
    split_y: int
    split_x: int
    reduced_width: int
    c_pad: int                      # channels of the line buffer's address (power of two)
    cg_pad: int                     # group channels in a position (power of two)
    sources_pad: int
    phases: int
    slots: int
    rows_cap: int
    taps: tuple
    entries: np.ndarray             # uint16, the weight stream of one group
    entry_filters: np.ndarray       # filter index of every entry
    bias: np.ndarray                # int64 per filter
    multiplier: np.ndarray          # per filter
    shift: np.ndarray               # per filter
    requant: ir.Requant
    accumulator_bounds: tuple
    signed_inputs: tuple            # per source
    tap_columns: int = 1            # taps are numbered dy * tap_columns + dx (a power of two)
    pool_window: int = 0            # >0: the writer sums pixels [0, pool_window) per channel
    weight_start: int = 0
    tap_start: int = 0
    chunks: tuple = ()              # (first filter, filters, preamble word, entries) per chunk
    colmask_start: int = 0
    rowsel_start: int = 0

    # --- sizes ----------------------------------------------------------------------------------
    @property
    def source(self):
        return self.sources[0]

    @property
    def out_pixels(self):
        return self.out_height * self.out_width

    @property
    def groups(self):
        if self.row_mode:
            return self.out_height * math.ceil(self.out_width / self.group_lanes)
        return math.ceil(self.out_pixels / self.group_lanes)

    @property
    def entries_per_group(self):
        return len(self.entries)

    @property
    def accumulator_width(self):
        return signed_width(*self.accumulator_bounds)

    @property
    def storage_bits(self):
        return len(self.entries) * ENTRY_BITS

    @property
    def saturation(self):
        return saturation_bounds(self.requant, self.filters)

    # --- groups ---------------------------------------------------------------------------------
    def group_pixels(self, g):
        """(out_y, out_x) of the valid lanes of group ``g``, lane 0 first."""
        if self.row_mode:
            per_row = math.ceil(self.out_width / self.group_lanes)
            oy, first = divmod(g, per_row)
            x0 = first * self.group_lanes
            return [(oy, x) for x in range(x0, min(x0 + self.group_lanes, self.out_width))]
        p0 = g * self.group_lanes
        return [divmod(p, self.out_width)
                for p in range(p0, min(p0 + self.group_lanes, self.out_pixels))]

    def group_base(self, g):
        """``v`` of lane 0 at offset 0: its output pixel in the reduced grid."""
        oy, ox = self.group_pixels(g)[0]
        return oy * (self.stride[0] // self.split_y) * self.reduced_width + ox

    def group_rows(self, g):
        """(oldest, newest) input row the group reads, clipped to the input."""
        pixels = self.group_pixels(g)
        height = 1 if self.flat else self.source.height
        top = pixels[0][0] * self.stride[0] - self.padding[0]
        bottom = pixels[-1][0] * self.stride[0] - self.padding[0] + self.kernel[0] - 1
        return max(top, 0), min(bottom, height - 1)

    def ring_start(self, oldest):
        """First input row the ring holds while the oldest needed row is ``oldest``."""
        return oldest - oldest % self.split_y

    def lane_inside(self, g, tap):
        """Valid lanes of group ``g`` whose input under ``tap`` lies inside the source."""
        if self.flat:
            return [True] * len(self.group_pixels(g))
        height, width = self.source.height, self.source.width
        result = []
        for oy, ox in self.group_pixels(g):
            y = oy * self.stride[0] + tap.dy - self.padding[0]
            x = ox * self.stride[1] + tap.dx - self.padding[1]
            result.append(0 <= y < height and 0 <= x < width)
        return result

    def out_pixel(self, g, lane, f):
        """(pixel, channel) of the target written by ``lane`` of group ``g`` for filter ``f``."""
        oy, ox = self.group_pixels(g)[lane]
        if self.out_flat:
            return f, 0
        return oy * self.out_width + ox, f

    def line_address(self, source, phase, v, c):
        """(bank, address) of the line buffer for a reduced index ``v``."""
        region = source * self.phases + phase
        return v % BANKS, ((region * self.slots + (v // BANKS) % self.slots) * self.c_pad + c)

    def reduced_index(self, y, x):
        """(phase, v) of input pixel (y, x)."""
        phase = (y % self.split_y) * self.split_x + x % self.split_x
        v = (y // self.split_y) * self.reduced_width + x // self.split_x + x % self.split_x
        return phase, v

    # --- bounds tables ----------------------------------------------------------------------------
    @property
    def bounded(self):
        """Whether lanes check their input against the source's edges (not flat)."""
        return not self.flat

    @property
    def class_shift(self):
        """A group's column class is its first output column shifted right by this."""
        return (self.group_lanes.bit_length() - 1) if self.row_mode else 0

    @property
    def classes(self):
        return math.ceil(self.out_width / (1 << self.class_shift))

    @property
    def kw_pad(self):
        return self.tap_columns

    def group_class(self, g):
        return self.group_pixels(g)[0][1] >> self.class_shift

    def lane_columns(self, klass):
        """(row offset, column) of each lane of a group whose first column is class ``klass``'s;
        None past the row's end in row mode."""
        x0 = klass << self.class_shift
        lanes = []
        for i in range(self.group_lanes):
            if self.row_mode:
                lanes.append((0, x0 + i) if x0 + i < self.out_width else None)
            else:
                lanes.append(divmod(x0 + i, self.out_width))
        return lanes

    def colmask(self, klass, dx):
        """Lanes of a class-``klass`` group whose column is inside the source under ``dx``."""
        mask = 0
        for i, lane in enumerate(self.lane_columns(klass)):
            if lane is None:
                continue
            x = lane[1] * self.stride[1] + dx - self.padding[1]
            if 0 <= x < self.source.width:
                mask |= 1 << i
        return mask

    def rowsel(self, klass):
        """Row offset of each lane (2 bits a lane) of a class-``klass`` group."""
        word = 0
        for i, lane in enumerate(self.lane_columns(klass)):
            if lane is not None:
                word |= min(lane[0], 3) << (2 * i)
        return word

    def tap_rows(self, tap):
        """Output rows [low, high] whose input row under ``tap`` is inside the source."""
        sy, py = self.stride[0], self.padding[0]
        return -((tap.dy - py) // sy), (self.source.height - 1 + py - tap.dy) // sy

    def position(self, j):
        """(tap index, channel within the group) of position ``j``; flat: (j, 0)."""
        if self.flat:
            return j, 0
        return j // self.cg_pad, j % self.cg_pad


@dataclass(frozen=True)
class PoolSumStep:
    """An average pool whose window sums the conv step before it accumulated: only its
    ``channels`` sums are requantized, into pixel 0 of ``target``."""

    node: object
    target: TensorSlot
    window: int
    requant: ir.Requant
    multiplier: np.ndarray
    shift: np.ndarray
    signed_input: bool
    input_bounds: tuple
    chunks: tuple = ()
    weight_start: int = 0

    @property
    def filters(self):
        return self.target.channels

    @property
    def accumulator_bounds(self):
        low, high = self.input_bounds
        return min(low * self.window, 0), high * self.window


def _per_channel(values, channels):
    return np.broadcast_to(np.asarray(values, dtype=np.int64), (channels,)).copy()


# --- entries -------------------------------------------------------------------------------------

def encode_entries(filters):
    """The weight stream of one group: ``filters`` is a list (one per filter) of (position,
    weight) pairs, positions ascending. Returns (uint16 entries, filter index per entry).

    An entry is ``weight << 8 | delta << 1 | last``, the position advancing by ``delta`` from
    0 at each filter's start; a gap wider than :data:`MAX_DELTA` takes filler entries (weight
    0), a filter without weights one empty entry.
    """
    words, owners = [], []
    for index, pairs in enumerate(filters):
        pairs = list(pairs) or [(0, 0)]
        position = 0
        for number, (j, weight) in enumerate(pairs):
            if j < position:
                raise ValueError(f"filter {index}: positions must ascend, got {j} after "
                                 f"{position}")
            if not ENTRY_WEIGHT_MIN <= weight <= ENTRY_WEIGHT_MAX:
                raise ValueError(f"filter {index}: weight {weight} does not fit an entry")
            while j - position > MAX_DELTA:
                words.append(MAX_DELTA << 1)
                owners.append(index)
                position += MAX_DELTA
            last = number == len(pairs) - 1
            words.append(((weight & 0xFF) << 8) | ((j - position) << 1) | int(last))
            owners.append(index)
            position = j
    return np.array(words, dtype=np.uint16), np.array(owners, dtype=np.int64)


def decode_entries(entries):
    """(weight, position, last) per entry of one group's stream; the inverse of
    :func:`encode_entries` (fillers included, weight 0)."""
    entries = np.asarray(entries, dtype=np.int64)
    weights = ((entries >> 8) ^ 0x80) - 0x80
    deltas = (entries >> 1) & MAX_DELTA
    last = (entries & 1).astype(bool)
    positions = np.empty(len(entries), dtype=np.int64)
    position = 0
    for index, (delta, closes) in enumerate(zip(deltas, last)):
        position += int(delta)
        positions[index] = position
        if closes:
            position = 0
    return weights, positions, last


def add_digits(multiplier):
    """An add's input multiplier as entry weights: ``[(shift8, weight), ...]`` summing to it,
    ``weight * (256 if shift8 else 1)``, each weight in -128..127."""
    low = ((multiplier + 128) & 0xFF) - 128
    high = (multiplier - low) >> 8
    digits = [(False, low)] if low else []
    while high:
        part = min(high, ENTRY_WEIGHT_MAX)
        digits.append((True, part))
        high -= part
    return digits


# --- building the steps ---------------------------------------------------------------------------

def _slot_of(shape, act, name):
    """A tensor's (channels, height, width): a flat tensor is one channel of features."""
    if len(shape) == 1:
        return TensorSlot(name, 1, 1, shape[0], act)
    return TensorSlot(name, *shape, act)


def _layout(kind, flat, source, kernel, stride, padding, out_height, out_width, lanes):
    """Grouping and reduced grid of a conv step: (group_lanes, row_mode, split_y, split_x,
    reduced_width)."""
    if flat:
        return 1, True, 1, 1, source.width
    sy, sx = stride
    if not _is_pow2(sx):
        return 1, True, 1, 1, source.width
    reduced_width = math.ceil(source.width / sx)
    if out_width % lanes == 0 or out_height == 1:
        return lanes, True, 1, sx, reduced_width
    # Crossing rows: consecutive lanes stay consecutive in v only when the reduced width is the
    # output's; a group spans at most 4 rows (the lanes' row offsets are 2 bits).
    if reduced_width == out_width and _is_pow2(sy) and 3 * out_width >= lanes - 1:
        return lanes, False, sy, sx, reduced_width
    return lanes, True, 1, sx, reduced_width


def _taps(kind, kernel, padding, split_y, split_x, reduced_width, columns):
    """Tap ``dy * columns + dx`` of a conv step (a column past the kernel is never used); an
    add's four: each source, low and high digit."""
    if kind == "add":
        return tuple(Tap(0, 0, source, shift8, 0, 0)
                     for source in (0, 1) for shift8 in (False, True))
    taps = []
    for dy in range(kernel[0]):
        for dx in range(columns):
            rows, cols = dy - padding[0], dx - padding[1]
            offset = (rows // split_y) * reduced_width + cols // split_x + cols % split_x
            taps.append(Tap(dy, dx, 0, False, offset, (rows % split_y) * split_x +
                            cols % split_x))
    return tuple(taps)


def _conv_positions(kind, node, flat, group_channels, cg_pad, source_shape, columns):
    """Per filter: ascending (position, weight) pairs; position ``tap * cg_pad + channel``, tap
    ``dy * columns + dx``."""
    if kind in ("maxpool", "avgpool"):
        kh, kw = node.kernel
        return [[((dy * columns + dx) * cg_pad, 1) for dy in range(kh) for dx in range(kw)]
                for _ in range(source_shape[0])]
    if kind == "add":
        channels = source_shape[0]
        filters = []
        for c in range(channels):
            pairs = []
            for source, multiplier in enumerate(node.input_multipliers):
                for shift8, weight in add_digits(int(multiplier)):
                    pairs.append(((2 * source + int(shift8)) * cg_pad, weight))
            filters.append(sorted(pairs, key=lambda pair: pair[0]))
        return filters
    weight = np.asarray(node.weight, dtype=np.int64)
    if flat:
        return [[(int(j), int(weight[f, j])) for j in np.flatnonzero(weight[f])]
                for f in range(weight.shape[0])]
    if isinstance(node, ir.Linear):
        # Columns in HWC order (the compiler permutes them after a flatten): p * C + c.
        channels, _, width = source_shape
        weight = weight.reshape(weight.shape[0], -1, width, channels)  # (F, kh, kw, C)
    else:
        weight = weight.transpose(0, 2, 3, 1)                          # (F, kh, kw, Cg)
    kh, kw = weight.shape[1:3]
    weight = np.pad(weight, ((0, 0), (0, 0), (0, columns - kw), (0, 0)))
    weight = weight.reshape(weight.shape[0], kh * columns, -1)       # (F, taps, Cg)
    filters = []
    for f in range(weight.shape[0]):
        taps, channels = np.nonzero(weight[f])
        positions = taps * cg_pad + channels
        order = np.argsort(positions, kind="stable")
        filters.append([(int(positions[i]), int(weight[f, taps[i], channels[i]]))
                        for i in order])
    return filters


def _rows_cap(step_slots, split_y, split_x, reduced_width):
    reduced_rows = (BANKS * (step_slots - 1) - split_x + 1) // reduced_width
    return max(reduced_rows, 0) * split_y


def conv_step(node, sources, target, *, depth, lanes):
    """The :class:`ConvStep` of a conv2d, linear or add ``node`` reading the ``sources`` slots
    into ``target``, with a line buffer of ``depth`` entries per bank; a ValueError names what
    does not fit."""
    source = sources[0]
    if isinstance(node, (ir.MaxPool2d, ir.AvgPool2d)):
        # A pool is a depthwise conv of unit weights: the lanes sum its windows, or keep
        # their largest value.
        kind = "maxpool" if isinstance(node, ir.MaxPool2d) else "avgpool"
        flat = False
        kernel, stride = tuple(node.kernel), tuple(node.stride)
        padding = tuple(node.padding) if kind == "maxpool" else (0, 0)
        out_height, out_width, filters = target.height, target.width, target.channels
        group_channels, filters_per_group = 1, 1
    elif isinstance(node, ir.Add):
        kind, flat = "add", False
        kernel, stride, padding = (1, 1), (1, 1), (0, 0)
        out_height, out_width, filters = source.height, source.width, source.channels
        group_channels, filters_per_group = 1, 1
    elif isinstance(node, ir.Linear):
        kind = "linear"
        flat = source.channels == 1 and source.height == 1
        kernel = (1, 1) if flat else (source.height, source.width)
        stride, padding = (1, 1), (0, 0)
        out_height = out_width = 1
        filters = node.weight.shape[0]
        group_channels, filters_per_group = (1 if flat else source.channels), filters
    else:
        kind, flat = "conv", False
        kernel, stride, padding = node.kernel, tuple(node.stride), tuple(node.padding)
        out_height, out_width = target.height, target.width
        filters = node.weight.shape[0]
        group_channels = source.channels // node.groups
        filters_per_group = filters // node.groups
    if stride[1] not in (1, 2, 4) and out_width > 1:
        # Lanes step through the input by whole reduced-grid columns: a stride across splits
        # into phases only when it is a power of two.
        raise ValueError(f"{node.name}: stride {stride[1]} across; the sequential engine takes "
                         f"1, 2 or 4 (or one output column)")
    group_lanes, row_mode, split_y, split_x, reduced_width = _layout(
        kind, flat, source, kernel, stride, padding, out_height, out_width, lanes)
    c_pad = 1 if flat else _pow2_at_least(source.channels)
    cg_pad = 1 if flat else _pow2_at_least(group_channels)
    sources_pad = _pow2_at_least(len(sources))
    phases = split_y * split_x
    slots = depth // (sources_pad * phases * c_pad)
    columns = 1 if flat else 4 if kind == "add" else _pow2_at_least(kernel[1])
    taps = () if flat else _taps(kind, kernel, padding, split_y, split_x, reduced_width,
                                 columns)
    positions = _conv_positions(kind, node, flat, group_channels, cg_pad,
                                (source.channels, source.height, source.width), columns)
    entries, owners = encode_entries(positions)
    if kind == "add":
        bias = np.zeros(filters, dtype=np.int64)
        bounds = _add_bounds(node, sources)
    elif kind == "maxpool":
        # In the lanes a signed input is offset by 128: every value, and 0 for a lane outside
        # the source, is then at least 0.
        bias = np.zeros(filters, dtype=np.int64)
        bounds = (0, 255)
    elif kind == "avgpool":
        bias = np.zeros(filters, dtype=np.int64)
        bounds = _weight_bounds(positions, source.act)
    else:
        bias = np.asarray(node.bias, dtype=np.int64)
        bounds = _weight_bounds(positions, source.act)
    requant = getattr(node, "requant", None)
    step = ConvStep(
        node=node, kind=kind, sources=tuple(sources), target=target, flat=flat,
        out_flat=kind == "linear", kernel=tuple(kernel), stride=tuple(stride),
        padding=tuple(padding), out_height=out_height, out_width=out_width, filters=filters,
        group_channels=group_channels, filters_per_group=filters_per_group,
        group_lanes=group_lanes, row_mode=row_mode, split_y=split_y, split_x=split_x,
        reduced_width=reduced_width, c_pad=c_pad, cg_pad=cg_pad, sources_pad=sources_pad,
        phases=phases, slots=slots,
        rows_cap=_rows_cap(slots, split_y, split_x, reduced_width) if slots >= 2 else 0,
        taps=taps, entries=entries, entry_filters=owners, bias=bias,
        multiplier=_per_channel(requant.multiplier if requant else 0, filters),
        shift=_per_channel(requant.shift if requant else 0, filters), requant=requant,
        accumulator_bounds=(bounds[0] + min(int(bias.min()), 0),
                            bounds[1] + max(int(bias.max()), 0)),
        signed_inputs=tuple(s.act.signed for s in sources), tap_columns=columns)
    _check_ring(step, depth)
    return step


def _weight_bounds(positions, act):
    low = high = 0
    for pairs in positions:
        weights = np.array([w for _, w in pairs] or [0], dtype=np.int64)
        at_max, at_min = weights * act.qmax, weights * act.qmin
        low = min(low, int(np.minimum(at_max, at_min).sum()))
        high = max(high, int(np.maximum(at_max, at_min).sum()))
    return low, high


def _add_bounds(node, sources):
    low = high = 0
    for multiplier, source in zip(node.input_multipliers, sources):
        low += multiplier * source.act.qmin
        high += multiplier * source.act.qmax
    return low, high


def _check_ring(step, depth):
    name = f"node {step.node.name!r} ({step.node.op})"
    if step.slots < 2:
        needed = 2 * step.sources_pad * step.phases * step.c_pad
        raise ValueError(f"{name}: its line buffer needs {needed} entries per bank, more than "
                         f"the {depth} given")
    worst = 0
    for g in range(step.groups):
        oldest, newest = step.group_rows(g)
        worst = max(worst, newest - step.ring_start(oldest) + 1)
    if worst > step.rows_cap:
        raise ValueError(f"{name}: a group reads {worst} input rows, its line buffer of {depth} "
                         f"entries per bank holds {step.rows_cap}")


def fused_window(node, source):
    """Pixels [0, n) an average pool sums when it is one window over whole rows from the top
    (then the step producing its input sums them as it writes), else 0."""
    if not isinstance(node, ir.AvgPool2d):
        return 0
    kh, kw = node.kernel
    out_h = (source.height - kh) // node.stride[0] + 1
    out_w = (source.width - kw) // node.stride[1] + 1
    if out_h != 1 or out_w != 1 or kw != source.width:
        return 0
    return kh * kw


def pool_sum_step(node, source, target):
    window = fused_window(node, source)
    return PoolSumStep(node, target, window, node.requant,
                       _per_channel(node.requant.multiplier, target.channels),
                       _per_channel(node.requant.shift, target.channels),
                       source.act.signed, (source.act.qmin, source.act.qmax))


# --- the program --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Program:
    """Everything the sequential engine runs: ``steps`` in order, the tensor ``slots`` (input
    first, then each step's output; ``output`` the one emitted), the memory blocks' sizes
    (``act_blocks`` words each; ``weight_words``), the line buffer ``depth``, the tables."""

    steps: tuple
    slots: dict
    input: TensorSlot
    output: TensorSlot
    output_flat_order: bool         # emit a flatten's C-major order instead of HWC
    act_blocks: tuple
    weight_words: int
    depth: int
    lanes: int
    weights: np.ndarray             # uint16: parameter words and weight streams
    taps: tuple                     # every conv step's taps
    colmasks: tuple                 # per (step, class, dx): the lanes inside the columns
    rowsels: tuple                  # per (step, class): each lane's row offset
    filter_cache: int

    @property
    def conv_steps(self):
        return [s for s in self.steps if isinstance(s, ConvStep)]

    def has(self, kind):
        """Whether a step of ``kind`` ("maxpool", "add", "pool_sum") is run: the engine builds
        only the hardware its program uses."""
        if kind == "pool_sum":
            return any(isinstance(s, PoolSumStep) for s in self.steps)
        return any(s.kind == kind for s in self.conv_steps)

    @classmethod
    def of(cls, layers, *, input_name, in_shape, in_act, depth=512, lanes=BANKS,
           act_blocks=3, block_words=None, weight_block_words=None, filter_cache=256):
        """The program of ``layers`` (:class:`zeroskip.compiler.layers.LayerSpec`: ``node``,
        ``sources``, ``in_shapes``, ``in_acts``, in graph order). ``act_blocks`` memory blocks of
        ``block_words`` words hold the tensors (None: as large as needed); the weight memory
        holds ``weight_block_words`` words per block (None: one block as large as needed). A
        ValueError names the layer that cannot be run and why."""
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes not in (1, 2, 4, 8):
            raise ValueError(f"lanes must be 1, 2, 4 or {BANKS}, got {lanes!r}")
        if not _is_pow2(depth) or depth < 16:
            raise ValueError(f"the line buffer depth must be a power of two of at least 16, "
                             f"got {depth!r}")
        layers = tuple(layers)
        if not layers:
            raise ValueError("the graph has no layer to run")
        if in_act.binary:
            raise ValueError(f"input {input_name!r} is binary; the sequential engine runs 2..8-bit "
                             "activations (compile binary nets as a pipeline)")
        slots = {input_name: _slot_of(tuple(in_shape), in_act, input_name)}
        steps = []
        for index, spec in enumerate(layers):
            steps.append(_step(spec, slots, steps, layers, depth=depth, lanes=lanes))
        output = slots[layers[-1].node.name]
        slots, act_sizes = _allocate(steps, slots, input_name, output.name, act_blocks,
                                     block_words)
        steps = [_placed(step, slots) for step in steps]
        steps, weights, taps, colmasks, rowsels = _tables(steps, filter_cache)
        weight_words = max(len(weights), 1)
        if weight_block_words is not None:
            weight_words = math.ceil(weight_words / weight_block_words) * weight_block_words
        return cls(tuple(steps), slots, slots[input_name], slots[output.name], False,
                   tuple(act_sizes), weight_words, depth, lanes, weights, tuple(taps),
                   tuple(colmasks), tuple(rowsels), filter_cache)


def _check_node(spec):
    node = spec.node
    if any(act.binary for act in spec.in_acts):
        raise ValueError(f"node {node.name!r} ({node.op}) reads a binary tensor; the sequential "
                         "engine runs 2..8-bit activations (compile binary nets as a pipeline)")
    if isinstance(node, (ir.Conv2d, ir.Linear)) and (node.threshold is not None or
                                                     node.act.binary):
        raise ValueError(f"node {node.name!r} ({node.op}) has a binary output; the sequential "
                         "engine runs requantized layers only")
    if not isinstance(node, (ir.Conv2d, ir.Linear, ir.Add, ir.MaxPool2d, ir.AvgPool2d)):
        raise ValueError(f"node {node.name!r} ({node.op}): the sequential engine has no step "
                         "for it")


def _step(spec, slots, steps, layers, *, depth, lanes):
    _check_node(spec)
    node = spec.node
    sources = [slots[name] for name in spec.sources]
    shape, _ = node.infer(spec.in_shapes, spec.in_acts)
    act = node.act if hasattr(node, "act") else spec.in_acts[0]
    target = _slot_of(tuple(shape), act, node.name)
    slots[node.name] = target
    previous = steps[-1] if steps else None
    if (fused_window(node, sources[0]) and isinstance(previous, ConvStep)
            and previous.target.name == sources[0].name):
        steps[-1] = replace(previous, pool_window=fused_window(node, sources[0]))
        return pool_sum_step(node, sources[0], target)
    return conv_step(node, sources, target, depth=depth, lanes=lanes)


def _reads(step):
    if isinstance(step, ConvStep):
        return [s.name for s in step.sources]
    return []


def _allocate(steps, slots, input_name, output_name, blocks, block_words):
    """Regions for every tensor: first fit, a step never writing a block it reads; the input
    keeps its region (the next input loads while the layers run), the output lives to the end."""
    last = {name: 0 for name in slots}
    for index, step in enumerate(steps):
        for name in _reads(step):
            last[name] = max(last[name], index)
    last[input_name] = last[output_name] = len(steps)
    placed = {}                        # name -> (block, start, end)
    capacity = block_words if block_words is not None else 1 << 30

    def fit(name, words, forbidden, when):
        for block in range(blocks):
            if block in forbidden:
                continue
            busy = sorted((start, end) for other, (b, start, end) in placed.items()
                          if b == block and last[other] >= when)
            start = 0
            for low, high in busy:
                if start + words <= low:
                    break
                start = max(start, high)
            if start + words <= capacity:
                placed[name] = (block, start, start + words)
                return
        raise ValueError(f"tensor {name!r} ({words} words) does not fit {blocks} memory blocks "
                         f"of {capacity} words beside the tensors it must not overwrite")

    fit(input_name, slots[input_name].words, (), 0)
    for index, step in enumerate(steps):
        forbidden = {placed[name][0] for name in _reads(step)}
        fit(step.target.name, step.target.words, forbidden, index)
    sizes = [0] * blocks
    for block, start, end in placed.values():
        sizes[block] = max(sizes[block], end)
    if block_words is not None:
        sizes = [block_words if size else 0 for size in sizes]
    new_slots = {name: replace(slot, block=placed[name][0], word=placed[name][1])
                 for name, slot in slots.items()}
    return new_slots, sizes


def _placed(step, slots):
    if isinstance(step, ConvStep):
        return replace(step, sources=tuple(slots[s.name] for s in step.sources),
                       target=slots[step.target.name])
    return replace(step, target=slots[step.target.name])


#: Bits of a filter's bias in its parameter words.
BIAS_BITS = 24


def preamble_words(bias, multiplier, shift):
    """The three parameter words of one filter: bias low 16 bits; bias bits 16..23 and the
    shift above them; the multiplier."""
    if not -(1 << (BIAS_BITS - 1)) <= bias < 1 << (BIAS_BITS - 1):
        raise ValueError(f"a bias of {bias} does not fit {BIAS_BITS} bits")
    unsigned_bias = bias & ((1 << BIAS_BITS) - 1)
    return [unsigned_bias & 0xFFFF, (unsigned_bias >> 16) | (int(shift) << 8), int(multiplier)]


#: Words ahead of a chunk's parameter words: its entries, and where its first filter's group
#: of input channels starts (its channel, and the group's filters after the first filter, less
#: one: a count down to -1, two's complement).
HEADER_WORDS = 3


def chunk_header(step, first, entries):
    if entries >= 1 << 16:
        raise ValueError(f"node {step.node.name!r}: {entries} weight entries in one chunk, "
                         "more than 65535")
    if isinstance(step, ConvStep):
        group, within = divmod(first, step.filters_per_group)
        return [entries, group * step.group_channels,
                (step.filters_per_group - 2 - within) & 0xFFFF]
    return [entries, 0, 0]


def _chunks(step, cache):
    filters = step.filters
    spans = [(start, min(cache, filters - start)) for start in range(0, filters, cache)]
    if isinstance(step, ConvStep) and len(spans) > 1 and step.groups > 1 and \
            step.rows_cap < (1 if step.flat else step.source.height):
        raise ValueError(f"node {step.node.name!r} ({step.node.op}) has {filters} filters, more "
                         f"than the {cache} the parameter cache holds, and its input does not "
                         "fit the line buffer whole")
    return spans


def _tables(steps, cache):
    """Lay out the weight memory (per chunk of filters: their parameter words, then their
    entries), the taps and the bounds tables; record each step's starts."""
    weights, taps, colmasks, rowsels, placed = [], [], [], [], []
    for step in steps:
        bias = step.bias if isinstance(step, ConvStep) else np.zeros(step.filters, np.int64)
        chunks = []
        for first, count in _chunks(step, cache):
            preamble = len(weights)
            mine = np.zeros(0, dtype=bool)
            if isinstance(step, ConvStep):
                mine = (step.entry_filters >= first) & (step.entry_filters < first + count)
            weights.extend(chunk_header(step, first, int(mine.sum())))
            for f in range(first, first + count):
                weights.extend(preamble_words(int(bias[f]), step.multiplier[f], step.shift[f]))
            entries = len(weights)
            if isinstance(step, ConvStep):
                weights.extend(int(e) for e in step.entries[mine])
            chunks.append((first, count, preamble, entries))
        if isinstance(step, ConvStep):
            step = replace(step, tap_start=len(taps), colmask_start=len(colmasks),
                           rowsel_start=len(rowsels), chunks=tuple(chunks),
                           weight_start=chunks[0][2])
            taps.extend(step.taps)
            if step.bounded:
                for klass in range(step.classes):
                    rowsels.append(step.rowsel(klass))
                    # An add's four taps are one pixel (column 0) read twice per source.
                    colmasks.extend(step.colmask(klass, 0 if step.kind == "add" else dx)
                                    for dx in range(step.kw_pad))
        else:
            step = replace(step, chunks=tuple(chunks), weight_start=chunks[0][2])
        placed.append(step)
    return placed, np.array(weights, dtype=np.uint16), taps, colmasks, rowsels


@dataclass(frozen=True)
class Widths:
    """Bit widths of the engine's counters and addresses, sized to one program."""

    block_bits: int         # memory block index
    word_bits: int          # word address within a block
    channel_bits: int       # a channel index
    coord_bits: int         # a row, a column, a count of rows
    lb_bits: int            # line-buffer address
    v_bits: int             # a reduced-grid index
    pixel_bits: int         # a pixel index of a tensor
    table_bits: int         # an index into the taps, column masks or row offsets
    weight_bits: int        # a weight-memory address
    cache_bits: int         # a filter within a chunk
    filter_bits: int        # a count of filters of a step
    acc_bits: int           # a lane's sum
    sum_bits: int           # a fused average pool's window sum
    position_bits: int      # a position within a filter

    @classmethod
    def of(cls, program):
        slots = list(program.slots.values())
        largest_side = max(max(s.height, s.width) for s in slots)
        blocks = max(len(program.act_blocks), 1)
        words = max(max(program.act_blocks), 1)
        v = max((s.reduced_width * (s.source.height + 2) + 16 for s in program.conv_steps),
                default=16)
        tables = max(len(program.taps), len(program.colmasks), len(program.rowsels), 2)
        positions = [len(s.taps) * s.cg_pad if not s.flat else s.source.width
                     for s in program.conv_steps] or [1]
        filters = max((s.filters for s in program.steps), default=1)
        acc = max((signed_width(*s.accumulator_bounds) for s in program.steps), default=2)
        pool = max((signed_width(*s.accumulator_bounds) for s in program.steps
                    if isinstance(s, PoolSumStep)), default=2)
        return cls(filter_bits=filters.bit_length() + 1, acc_bits=max(acc, pool), sum_bits=pool,
                   cache_bits=max((program.filter_cache - 1).bit_length(), 1),
                   position_bits=max(positions).bit_length() + 1,
                   pixel_bits=max(s.pixels for s in slots).bit_length() + 1,
                   table_bits=(tables - 1).bit_length(),
                   weight_bits=max((program.weight_words - 1).bit_length(), 1),
                   block_bits=max((blocks - 1).bit_length(), 1),
                   word_bits=max((words - 1).bit_length(), 1) + 1,
                   channel_bits=max(max(s.channels for s in slots).bit_length(), 1),
                   coord_bits=largest_side.bit_length() + 1,
                   lb_bits=(program.depth - 1).bit_length(),
                   v_bits=v.bit_length() + 1)
