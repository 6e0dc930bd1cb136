"""Static planning for the sparse conv / linear engine: everything decided from the weights alone.

The engine (:mod:`.conv`) works through *combos*: one (filter, kernel tap, channel chunk) at a
time, a chunk being up to ``chunk`` input channels of the filter's group. Each combo has a static
weight mask (which of its channels have a nonzero weight) held in a mask ROM; the nonzero weights
themselves sit in a weight ROM in combo order. At run time the mask of nonzero activations under
the tap is ANDed with the weight mask; a priority encoder hands out the surviving pairs one per
cycle per lane, and a prefix popcount of the weight mask finds each weight. A combo with no pair
costs nothing but its scan.

Filters are assigned to lanes (one multiplier each) greedily by nonzero count, largest first, so
that lanes carry balanced work. In dense mode every weight slot is stored and every pair issued:
the same engine, for comparison.

Packed scans
------------
Where a group has fewer channels than a chunk (a depthwise layer, a first layer of 1 or 3
channels), a combo of one filter holds a pair or two, and the examiner's scan (one combo per
cycle) bounds the layer rather than its pairs. With ``pack = k``, a combo covers one tap of ``k``
consecutive filters: its mask has ``pair_channels`` bits per filter, filter-major, and its pairs
belong to different filters (the lane keeps a partial sum per filter of the pack). For a
depthwise layer the ``k`` filters read ``k`` consecutive channels, so the activation mask is one
line-buffer word (a *diagonal* pack); for a dense layer they read the same channels, so the
chunk's activation mask is repeated for every filter.

Wide streams and the output tile
--------------------------------
A stream beat may carry ``in_width`` (``out_width``) channels of a pixel. The collector then
gives ``out_width`` sums a cycle, so the lanes' output tiles are laid out for it: filters go to
lanes in *blocks* of ``block`` consecutive filters (a tile word holds a block's sums), and the
lanes are split into ``columns``: block ``b`` and lane ``l`` belong to column ``b mod columns``
and ``l mod columns``, so every beat reads one word from one lane of each column. With widths of
1 and no packing a block is one filter and there is one column: every filter goes to any lane.

Split filters
-------------
A layer may have more lanes than filters (or packs): then every filter's combo list is cut into
``split`` parts of about the same nonzero weights, each part on a lane of its own (lanes are in
``columns * split`` groups: block ``b``'s part ``q`` and lane ``l`` in group
``(b mod columns) * split + q`` and ``l mod (columns * split)``); a lane sums its part, and the
collector adds a filter's ``split`` partial sums, read from ``split`` lanes in the same cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import ir
from .blocks import rom_blocks


def signed_width(low, high):
    """Bits of the smallest signed integer holding every value in [low, high]."""
    return max(int(low).bit_length() if low < 0 else 0, int(high).bit_length()) + 1 \
        if low < 0 or high > 0 else 1


def is_power_of_two(value):
    return isinstance(value, int) and value >= 1 and value & (value - 1) == 0


def power_of_two_floor(value):
    return 1 << (int(value).bit_length() - 1)


def power_of_two_ceil(value):
    return 1 << (int(value) - 1).bit_length()


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of a conv2d (or of a linear layer, as a 1x1 conv on a 1x1 image), with the
    engine's stream widths (channels per beat in and out) and its pack (filters per combo)."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    chunk: int
    pack: int = 1
    in_beat: int = 1
    out_beat: int = 1

    @classmethod
    def of(cls, node, in_shape, chunk, *, pack=1, in_beat=1, out_beat=1):
        """The geometry of ``node``; a chunk never exceeds the channels of a group (a wider
        mask would only carry constant zeros through the engine)."""
        if isinstance(node, ir.Linear):
            (features,) = in_shape
            return cls(features, 1, 1, node.weight.shape[0], (1, 1), (1, 1), (0, 0), 1,
                       min(chunk, features), pack, in_beat, out_beat)
        channels, height, width = in_shape
        return cls(channels, height, width, node.weight.shape[0], node.kernel,
                   tuple(node.stride), tuple(node.padding), node.groups,
                   min(chunk, channels // node.groups), pack, in_beat, out_beat)

    @property
    def group_channels(self):
        return self.in_channels // self.groups

    @property
    def filters_per_group(self):
        return self.out_channels // self.groups

    @property
    def chunks(self):
        """Chunks per (filter, tap)."""
        return math.ceil(self.group_channels / self.chunk)

    @property
    def taps(self):
        return self.kernel[0] * self.kernel[1]

    @property
    def out_height(self):
        return (self.height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self):
        return (self.width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1

    @property
    def out_pixels(self):
        return self.out_height * self.out_width

    def chunk_channels(self, chunk_index):
        """Valid channels of a chunk (the last one may be short)."""
        return min(self.chunk, self.group_channels - chunk_index * self.chunk)

    def as_weight4d(self, weight):
        """(F, Cg, kh, kw) view of a conv or linear weight."""
        return weight.reshape(self.out_channels, self.group_channels, *self.kernel)

    @property
    def depthwise(self):
        """One input channel and one filter per group."""
        return self.groups > 1 and self.group_channels == 1 and self.filters_per_group == 1

    @property
    def diagonal(self):
        """A packed depthwise layer: a combo's filters read consecutive channels."""
        return self.pack > 1 and self.depthwise

    @property
    def pair_channels(self):
        """Mask bits per filter of a combo: the chunk (padded to a power of two when packed, so
        that a pair's filter is the high bits of its index); 1 in a depthwise pack."""
        if self.pack == 1:
            return self.chunk
        return 1 if self.diagonal else power_of_two_ceil(self.chunk)

    @property
    def mask_bits(self):
        """Bits of a combo's mask: pairs it can hold."""
        return self.pack * self.pair_channels

    @property
    def mask_word(self):
        """Bits of a line-buffer mask word: a chunk's channels, or, in a depthwise pack, the
        wider of a pack and an input beat."""
        return max(self.pack, self.in_beat) if self.diagonal else self.chunk

    @property
    def mask_groups(self):
        """``(groups, channels per group)`` the line buffer's mask words are cut by: the
        layer's, or one group of all channels in a depthwise pack."""
        return (1, self.in_channels) if self.diagonal else (self.groups, self.group_channels)

    @property
    def mask_words_per_pixel(self):
        if self.diagonal:
            return self.in_channels // self.mask_word
        return self.groups * self.chunks

    def check(self, name):
        """A ValueError naming the layer unless the widths and the pack fit the geometry."""
        c_in, c_out = self.in_channels, self.out_channels
        problems = []
        if not is_power_of_two(self.pack) or c_out % self.pack:
            problems.append(f"pack {self.pack} must be a power of two dividing its {c_out} "
                            "output channels")
        elif self.pack > 1 and not self.depthwise and (self.groups != 1 or self.chunks != 1):
            problems.append(f"pack {self.pack} needs a depthwise layer or one group that one "
                            f"chunk holds ({self.group_channels} channels, chunk {self.chunk})")
        elif self.mask_bits > 64:
            problems.append(f"pack {self.pack} makes combo masks of {self.mask_bits} bits, "
                            "more than 64")
        if not is_power_of_two(self.in_beat) or c_in % self.in_beat:
            problems.append(f"an input width of {self.in_beat} must be a power of two "
                            f"dividing its {c_in} input channels")
        elif not self.diagonal and (self.chunk % self.in_beat or
                                    self.group_channels % self.in_beat):
            problems.append(f"an input width of {self.in_beat} must divide its chunk "
                            f"({self.chunk}) and its channels per group "
                            f"({self.group_channels})")
        if not is_power_of_two(self.out_beat) or c_out % self.out_beat:
            problems.append(f"an output width of {self.out_beat} must be a power of two "
                            f"dividing its {c_out} output channels")
        if problems:
            raise ValueError(f"node {name!r}: " + "; ".join(problems))


@dataclass(frozen=True, eq=False)
class LanePlan:
    """What one lane stores: its filters and, in combo order, the combo list and the weights.

    Only combos with a stored weight are listed, plus one closing entry per *unit* (a filter,
    or a pack of filters) (``last``) when its final combo would otherwise be missing, so that
    every filter produces its output.
    """

    filters: tuple[int, ...]
    part: int              # the part of every unit's combos the lane holds (split filters)
    masks: np.ndarray      # (combos,): bit i * pair_channels + j set = filter i of the unit
    #                        has a stored weight at channel chunk * chunk_size + j
    taps: np.ndarray       # (combos, 3): kernel row, kernel column, chunk
    last: np.ndarray       # (combos,) bool: the unit's final entry
    weights: np.ndarray    # stored weights in combo order (nonzeros only, or all in dense mode)

    @property
    def combos(self):
        return len(self.masks)


@dataclass(frozen=True, eq=False)
class SparsePlan:
    geometry: ConvGeometry
    lanes: tuple[LanePlan, ...]
    zero_skip: bool
    weight_bits: int
    accumulator_bounds: tuple[int, int]
    block: int = 1    # consecutive filters per tile word, one lane's
    columns: int = 1  # lane columns: block b and lane l in column b mod columns, l mod columns
    split: int = 1    # lanes each unit's combos are cut over (their partial sums added)
    slots: int = 2    # output pixels in a lane's tile: how far lanes run ahead of the collector

    @property
    def groups(self):
        """Lane groups: ``columns * split``; lane ``l`` is in group ``l mod groups``."""
        return self.columns * self.split

    @property
    def accumulator_width(self):
        """Signed bits for any sum of products a lane forms (bias added after, in the collector)."""
        return signed_width(*self.accumulator_bounds)

    @cached_property
    def stores_base(self):
        """Whether a combo ROM word holds its combo's base (its first weight's place in its
        lane's weight ROM: the weights of the combos before it in the walk), so that the
        examiner does not count the masks as it walks (a count and an add in one cycle, the
        digits-shaped net's longest path on the ECP5): where that takes no more block RAM on
        the ECP5 in any lane (a pointwise conv's 35-bit combo words would take twice as many)."""
        fields, base = self._combo_field_bits, self._base_bits
        return all(rom_blocks(fields + base, lane.combos, "ecp5") <=
                   rom_blocks(fields, lane.combos, "ecp5") for lane in self.lanes)

    @property
    def _base_bits(self):
        return max(max(len(lane.weights), 1).bit_length() for lane in self.lanes)

    @property
    def base_bits(self):
        """Bits of a combo ROM word's base: none unless :attr:`stores_base`."""
        return self._base_bits if self.stores_base else 0

    @property
    def _combo_field_bits(self):
        g = self.geometry
        return g.mask_bits + sum(int(n - 1).bit_length()
                                 for n in (g.kernel[0], g.kernel[1], g.chunks)) + 1

    @property
    def combo_bits(self):
        """Bits of one combo ROM word: mask, kernel row, kernel column, chunk, last flag, base
        (a field of one value takes none)."""
        return self._combo_field_bits + self.base_bits

    @property
    def storage_bits(self):
        """Weight ROM bits plus combo ROM bits, over all lanes."""
        return sum(lane.combos * self.combo_bits + len(lane.weights) * self.weight_bits
                   for lane in self.lanes)

    def lane_of_filter(self):
        """``(lane, index within lane)`` for every output channel."""
        where = {}
        for lane_index, lane in enumerate(self.lanes):
            for position, filter_index in enumerate(lane.filters):
                where[filter_index] = (lane_index, position)
        return [where[f] for f in range(self.geometry.out_channels)]

    def collector_routes(self):
        """Per output beat of a pixel, per lane group (column-major, part-minor): ``(lane
        within the group, the block's position in the lane, the beat's first element in the
        block)``."""
        g = self.geometry
        where = {}
        for lane_index, lane in enumerate(self.lanes):
            for position, first in enumerate(lane.filters[::self.block]):
                where[first // self.block, lane.part] = (lane_index // self.groups, position)
        routes = []
        for beat in range(g.out_channels // g.out_beat):
            if self.columns == 1:
                first = beat * g.out_beat
                routes.append([(*where[first // self.block, part], first % self.block)
                               for part in range(self.split)])
            else:
                routes.append([(*where[beat * self.columns + column, part], 0)
                               for column in range(self.columns)
                               for part in range(self.split)])
        return routes


def assign_lanes(nonzeros, lanes):
    """Filters to lanes, largest nonzero count first onto the least loaded lane (LPT).

    Ties go to the lane with fewer filters, then the lower lane, so every lane gets a filter and
    the plan is deterministic. Within a lane, filters keep ascending order.
    """
    loads = [0] * lanes
    members = [[] for _ in range(lanes)]
    for filter_index in sorted(range(len(nonzeros)), key=lambda f: (-nonzeros[f], f)):
        lane = min(range(lanes), key=lambda i: (loads[i], len(members[i]), i))
        members[lane].append(filter_index)
        loads[lane] += int(nonzeros[filter_index])
    return [tuple(sorted(m)) for m in members]


def accumulator_bounds(weight4d, in_act):
    """Smallest and largest sum of products any input in range can produce, over all filters."""
    flat = weight4d.reshape(weight4d.shape[0], -1).astype(np.int64)
    at_max, at_min = flat * in_act.qmax, flat * in_act.qmin
    high = np.maximum(at_max, at_min).sum(axis=1)
    low = np.minimum(at_max, at_min).sum(axis=1)
    return int(min(low.min(), 0)), int(max(high.max(), 0))


#: The most lanes a filter's combos are cut over.
MAX_SPLIT = 8


def _assign_blocks(unit_work, lanes, units_per_block, columns, split):
    """Units to lanes by whole blocks, group by group: block ``b``'s part ``q`` goes to group
    ``(b mod columns) * split + q`` (:func:`assign_lanes` within each). Returns every lane's
    blocks and part."""
    blocks = len(unit_work) // units_per_block
    block_work = unit_work.reshape(blocks, units_per_block, split).sum(axis=1)
    groups = columns * split
    members = [((), 0)] * lanes
    for column in range(columns):
        block_ids = np.arange(column, blocks, columns)
        for part in range(split):
            lane_ids = range(column * split + part, lanes, groups)
            for lane, chosen in zip(lane_ids, assign_lanes(block_work[block_ids, part],
                                                           len(lane_ids))):
                members[lane] = (tuple(int(block_ids[index]) for index in chosen), part)
    return members


def tile_layout(geometry, unit_work, lanes, name):
    """``(block, columns, split, (filters, part) of every lane)`` of the output tile (see the
    module doc); ``unit_work`` is ``(units, split)``-shaped work, as :func:`_unit_parts` cuts it
    for each split tried (a function of the split).

    The smallest split that lets the lanes fit is taken; for it, every power of two of columns
    up to the output width is tried, each block the output width over the columns (at least the
    pack), and the one whose busiest lane has the least work taken (fewer columns on a tie). A
    ValueError names the layer if none fits (a lane group with more lanes than blocks).
    """
    g = geometry
    if g.out_beat == 1 and g.pack == 1 and lanes <= g.out_channels:
        work = unit_work(1)[:, 0]
        return 1, 1, 1, [(filters, 0) for filters in assign_lanes(work, lanes)]
    split = 1
    while split <= MAX_SPLIT:
        work = unit_work(split)
        best, columns = None, 1
        while columns * split <= lanes and columns <= g.out_beat:
            block = max(g.pack, g.out_beat // columns)
            blocks = g.out_channels // block
            if g.out_channels % block == 0 and blocks >= columns and \
                    -(-lanes // (columns * split)) <= blocks // columns:
                members = _assign_blocks(work, lanes, block // g.pack, columns, split)
                per_block = work.reshape(blocks, block // g.pack, split).sum(axis=1)
                busiest = max(int(per_block[list(chosen), part].sum())
                              for chosen, part in members)
                if best is None or busiest < best[0]:
                    best = (busiest, block, columns, split,
                            [(tuple(f for b in chosen for f in range(b * block, (b + 1) * block)),
                              part) for chosen, part in members])
            columns *= 2
        if best is not None:
            return best[1:]
        split *= 2
    raise ValueError(f"node {name!r}: {lanes} lanes do not fit an output tile of "
                     f"{g.out_channels} channels for an output width of {g.out_beat} and pack "
                     f"{g.pack}: every lane needs a block of "
                     f"{max(g.pack, g.out_beat // power_of_two_floor(min(lanes, g.out_beat)))}"
                     f" filters of its own, and a filter is cut over at most {MAX_SPLIT} lanes")


def _unit_entries(geometry, weight4d, first, zero_skip):
    """The combos of one unit (a filter, or a pack of filters from ``first``): ``(mask, tap,
    weights)`` entries, the weights in mask-bit order."""
    g = geometry
    entries = []
    for dy in range(g.kernel[0]):
        for dx in range(g.kernel[1]):
            for c in range(g.chunks):
                start = c * g.chunk
                mask, weights = 0, []
                for i in range(g.pack):
                    values = weight4d[first + i, start:start + g.chunk_channels(c), dy, dx]
                    keep = values != 0 if zero_skip else np.ones(len(values), bool)
                    mask |= int(sum(1 << (i * g.pair_channels + int(j))
                                    for j in np.flatnonzero(keep)))
                    weights.extend(values[keep].tolist())
                if mask:
                    entries.append((mask, (dy, dx, c), weights))
    return entries


def _unit_parts(entries, split):
    """A unit's combos cut into ``split`` parts of about the same stored weights, in order; a
    part without a combo gets an empty closing one (the unit still outputs its biases)."""
    counts = np.array([len(weights) for _, _, weights in entries], np.int64)
    total = max(int(counts.sum()), 1)
    before = np.cumsum(counts) - counts
    part_of = np.minimum(before * split // total, split - 1)
    return [[entry for entry, part in zip(entries, part_of) if part == q] or
            [(0, (0, 0, 0), [])] for q in range(split)]


def plan(node, in_shape, in_act, lanes, zero_skip=True, chunk=16, *, pack=1, in_width=1,
         out_width=1, slots=2):
    """The :class:`SparsePlan` of a Conv2d or Linear node.

    ``pack`` filters share a combo (see the module doc); ``in_width`` and ``out_width`` are the
    channels per beat of the engine's streams. More lanes than units (filters, or packs) split
    every unit's combos over several lanes. ``slots`` (a power of two from 2) output pixels fit
    a lane's tile. A ValueError names what does not fit.
    """
    if not is_power_of_two(slots) or slots < 2:
        raise ValueError(f"slots must be a power of two from 2, got {slots!r}")
    geometry = ConvGeometry.of(node, in_shape, chunk, pack=pack, in_beat=in_width,
                               out_beat=out_width)
    weight4d = geometry.as_weight4d(node.weight)
    units = geometry.out_channels // max(geometry.pack, 1)
    if not isinstance(lanes, int) or not 1 <= lanes <= geometry.out_channels * MAX_SPLIT:
        raise ValueError(f"lanes must be between 1 and the {geometry.out_channels} output "
                         f"channels of {node.name!r} (times {MAX_SPLIT}, cutting each filter "
                         f"over several lanes), got {lanes}")
    geometry.check(node.name)
    entries = [_unit_entries(geometry, weight4d, unit * geometry.pack, zero_skip)
               for unit in range(units)]
    parts = {}

    def unit_work(split):
        parts[split] = [_unit_parts(unit, split) for unit in entries]
        return np.array([[sum(len(weights) for _, _, weights in part) for part in unit]
                         for unit in parts[split]], np.int64).reshape(units, split)

    block, columns, split, assignment = tile_layout(geometry, unit_work, lanes, node.name)
    lane_plans = []
    for filters, part in assignment:
        masks, taps, last, weights = [], [], [], []
        for first in filters[::geometry.pack]:
            chosen = parts[split][first // geometry.pack][part]
            for position, (mask, tap, values) in enumerate(chosen):
                masks.append(mask)
                taps.append(tap)
                last.append(position == len(chosen) - 1)
                weights.extend(values)
        lane_plans.append(LanePlan(filters, part, np.array(masks, dtype=np.uint64),
                                   np.array(taps, dtype=np.int64).reshape(-1, 3),
                                   np.array(last, dtype=bool), np.array(weights, dtype=np.int64)))
    return SparsePlan(geometry, tuple(lane_plans), zero_skip, node.weight_bits,
                      accumulator_bounds(weight4d, in_act), block, columns, split, slots)


def lane_weights(sparse_plan, lane):
    """The dense (F, Cg, kh, kw) weight tensor one lane's ROMs encode (its part of them)."""
    g = sparse_plan.geometry
    weight = np.zeros((g.out_channels, g.group_channels, *g.kernel), np.int64)
    values = iter(lane.weights)
    units = iter(lane.filters[::g.pack])
    first = next(units)
    for mask, (dy, dx, c), last in zip(lane.masks, lane.taps, lane.last):
        for bit in range(g.mask_bits):
            if int(mask) >> bit & 1:
                i, j = divmod(bit, g.pair_channels)
                weight[first + i, c * g.chunk + j, dy, dx] = next(values)
        if last:
            first = next(units, None)
    return weight


def stored_weights(sparse_plan):
    """The dense (F, Cg, kh, kw) weight tensor the lanes' ROMs encode (decoding the plan)."""
    return sum(lane_weights(sparse_plan, lane) for lane in sparse_plan.lanes)


def effective_pairs(sparse_plan, x_int):
    """Pairs with weight and activation both nonzero, per output pixel and lane:
    ``(N * pixels, lanes)``. Padding counts as zero activation."""
    g = sparse_plan.geometry
    x = np.asarray(x_int).reshape(len(x_int), g.in_channels, g.height, g.width)
    nonzero = np.pad(x != 0, ((0, 0), (0, 0), (g.padding[0],) * 2, (g.padding[1],) * 2))
    weight_nonzero = [lane_weights(sparse_plan, lane) != 0 for lane in sparse_plan.lanes]
    counts = np.zeros((len(x), g.out_pixels, len(sparse_plan.lanes)), np.int64)
    for oy in range(g.out_height):
        for ox in range(g.out_width):
            iy, ix = oy * g.stride[0], ox * g.stride[1]
            window = nonzero[:, :, iy:iy + g.kernel[0], ix:ix + g.kernel[1]]
            for lane_index, lane in enumerate(sparse_plan.lanes):
                for f in lane.filters:
                    group = f // g.filters_per_group
                    channels = window[:, group * g.group_channels:(group + 1) * g.group_channels]
                    counts[:, oy * g.out_width + ox, lane_index] += \
                        (channels & weight_nonzero[lane_index][f]).reshape(len(x), -1).sum(axis=1)
    return counts.reshape(-1, len(sparse_plan.lanes))


def dense_pairs(sparse_plan):
    """Pairs of the dense loop nest per output pixel, over all lanes."""
    g = sparse_plan.geometry
    return g.out_channels * g.taps * g.group_channels


def ideal_cycles(sparse_plan, x_int):
    """The ideal the engine is measured against: effective MACs / lanes, rounded up per pixel."""
    lanes = len(sparse_plan.lanes)
    return int(np.ceil(effective_pairs(sparse_plan, x_int).sum(axis=1) / lanes).sum())
