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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ir


def signed_width(low, high):
    """Bits of the smallest signed integer holding every value in [low, high]."""
    return max(int(low).bit_length() if low < 0 else 0, int(high).bit_length()) + 1 \
        if low < 0 or high > 0 else 1


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of a conv2d (or of a linear layer, as a 1x1 conv on a 1x1 image)."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    chunk: int

    @classmethod
    def of(cls, node, in_shape, chunk):
        """The geometry of ``node``; a chunk never exceeds the channels of a group (a wider
        mask would only carry constant zeros through the engine)."""
        if isinstance(node, ir.Linear):
            (features,) = in_shape
            return cls(features, 1, 1, node.weight.shape[0], (1, 1), (1, 1), (0, 0), 1,
                       min(chunk, features))
        channels, height, width = in_shape
        return cls(channels, height, width, node.weight.shape[0], node.kernel,
                   tuple(node.stride), tuple(node.padding), node.groups,
                   min(chunk, channels // node.groups))

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


@dataclass(frozen=True, eq=False)
class LanePlan:
    """What one lane stores: its filters and, in combo order, the combo list and the weights.

    Only combos with a stored weight are listed, plus one closing entry per filter (``last``)
    when its final combo would otherwise be missing, so that every filter produces its output.
    """

    filters: tuple[int, ...]
    masks: np.ndarray      # (combos,): bit i set = channel chunk*G + i has a stored weight
    taps: np.ndarray       # (combos, 3): kernel row, kernel column, chunk
    last: np.ndarray       # (combos,) bool: the filter's final entry
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

    @property
    def accumulator_width(self):
        """Signed bits for any sum of products a lane forms (bias added after, in the collector)."""
        return signed_width(*self.accumulator_bounds)

    @property
    def combo_bits(self):
        """Bits of one combo ROM word: mask, kernel row, kernel column, chunk, last flag."""
        g = self.geometry
        return g.chunk + sum(max(int(n - 1).bit_length(), 1)
                             for n in (g.kernel[0], g.kernel[1], g.chunks)) + 1

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


def plan(node, in_shape, in_act, lanes, zero_skip=True, chunk=16):
    """The :class:`SparsePlan` of a Conv2d or Linear node."""
    geometry = ConvGeometry.of(node, in_shape, chunk)
    weight4d = geometry.as_weight4d(node.weight)
    if not 1 <= lanes <= geometry.out_channels:
        raise ValueError(f"lanes must be between 1 and the {geometry.out_channels} output "
                         f"channels of {node.name!r}, got {lanes}")
    nonzeros = (weight4d != 0).reshape(geometry.out_channels, -1).sum(axis=1)
    work = nonzeros if zero_skip else np.full(geometry.out_channels, weight4d[0].size)
    lane_plans = []
    for filters in assign_lanes(work, lanes):
        masks, taps, last, weights = [], [], [], []
        for f in filters:
            entries = []
            for dy in range(geometry.kernel[0]):
                for dx in range(geometry.kernel[1]):
                    for c in range(geometry.chunks):
                        start = c * geometry.chunk
                        values = weight4d[f, start:start + geometry.chunk_channels(c), dy, dx]
                        keep = values != 0 if zero_skip else np.ones(len(values), bool)
                        if keep.any():
                            entries.append((int(sum(1 << i for i in np.flatnonzero(keep))),
                                            (dy, dx, c)))
                            weights.extend(values[keep].tolist())
            entries = entries or [(0, (0, 0, 0))]  # an all-zero filter still outputs its bias
            for position, (mask, tap) in enumerate(entries):
                masks.append(mask)
                taps.append(tap)
                last.append(position == len(entries) - 1)
        lane_plans.append(LanePlan(filters, np.array(masks, dtype=np.int64),
                                   np.array(taps, dtype=np.int64).reshape(-1, 3),
                                   np.array(last, dtype=bool), np.array(weights, dtype=np.int64)))
    return SparsePlan(geometry, tuple(lane_plans), zero_skip, node.weight_bits,
                      accumulator_bounds(weight4d, in_act))


def stored_weights(sparse_plan):
    """The dense (F, Cg, kh, kw) weight tensor the lanes' ROMs encode (decoding the plan)."""
    g = sparse_plan.geometry
    weight = np.zeros((g.out_channels, g.group_channels, *g.kernel), np.int64)
    for lane in sparse_plan.lanes:
        values = iter(lane.weights)
        filters = iter(lane.filters)
        f = next(filters)
        for mask, (dy, dx, c), last in zip(lane.masks, lane.taps, lane.last):
            for i in range(g.chunk):
                if int(mask) >> i & 1:
                    weight[f, c * g.chunk + i, dy, dx] = next(values)
            if last:
                f = next(filters, None)
    return weight


def effective_pairs(sparse_plan, x_int):
    """Pairs with weight and activation both nonzero, per output pixel and lane:
    ``(N * pixels, lanes)``. Padding counts as zero activation."""
    g = sparse_plan.geometry
    x = np.asarray(x_int).reshape(len(x_int), g.in_channels, g.height, g.width)
    nonzero = np.pad(x != 0, ((0, 0), (0, 0), (g.padding[0],) * 2, (g.padding[1],) * 2))
    weight_nonzero = stored_weights(sparse_plan) != 0
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
                        (channels & weight_nonzero[f]).reshape(len(x), -1).sum(axis=1)
    return counts.reshape(-1, len(sparse_plan.lanes))


def dense_pairs(sparse_plan):
    """Pairs of the dense loop nest per output pixel, over all lanes."""
    g = sparse_plan.geometry
    return g.out_channels * g.taps * g.group_channels


def ideal_cycles(sparse_plan, x_int):
    """The ideal the engine is measured against: effective MACs / lanes, rounded up per pixel."""
    lanes = len(sparse_plan.lanes)
    return int(np.ceil(effective_pairs(sparse_plan, x_int).sum(axis=1) / lanes).sum())
