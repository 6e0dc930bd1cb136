"""Sparsity-aware folding: how many multipliers (lanes) each conv / linear engine gets.

FINN balances a dataflow pipeline on dense work. A zero-skipping engine's time depends on the
work that remains after skipping, so here every layer is balanced on an *estimate of its real
cycles*, measured on calibration inputs: :func:`estimate_layer` models the engine of
:mod:`.conv` closely enough to predict a Verilator run within a few percent, and :func:`fold`
hands out a multiplier budget greedily to the slowest layer.

The cycle model
---------------
Per lane, the examiner scans the lane's combo list (:mod:`.sparse_plan`) at one combo per cycle
per output pixel, plus one cycle to start each pixel; combos with a surviving pair, or that end a
filter, enter a FIFO; the issuer takes one entry at a time and spends one cycle per pair (one for
an entry without pairs). The scanner stops while the FIFO is nearly full, and an entry reaches
the issuer a few cycles after it was scanned. Lanes may run two output pixels apart; the
collector waits for every lane to finish a pixel, then emits its channels one per cycle. A pixel
starts only when the input rows under its window are in the line buffer, and the line buffer
takes a row only when no lane still needs the row it replaces; input arrives one beat per cycle.

:func:`estimate_layer` replays exactly that, event by event rather than clock by clock, for
calibration images (up to :data:`SIMULATED_IMAGES` of them), each behind its predecessor in the
batch, vectorized over images and lanes. Its ``cycles`` is the mean time between two consecutive
inferences' last outputs: the steady-state throughput of a batch streamed back to back.

Binary-input layers
-------------------
A layer whose input is binary gets the XNOR-popcount engine (:mod:`.xnor`) instead: per output
pixel a lane spends one cycle per entry of its ROM (one per tap, word of :data:`XNOR_WIDTH`
channels (:data:`zeroskip.hdl.xnor.XNOR_WIDTH`) and weight bit-plane holding a nonzero weight), whatever the activations, then the
collector emits the pixel's channels one per cycle. :func:`estimate_layer` replays that schedule
(:func:`_simulate_xnor`) with the same line-buffer and output-tile gates; it needs no
calibration data beyond the pair counts it reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import ir, reference
from ..errors import ZeroskipError
from ..hdl.conv import PAIR_FIFO_DEPTH
from ..hdl.sparse_plan import ConvGeometry
from ..hdl.sparse_plan import plan as make_plan
from ..hdl.window import TILE_SLOTS, ring_rows
from ..hdl.xnor import XNOR_WIDTH

# Cycles from a combo's scan to its entry being the issuer's current one: combo ROM read and
# registered, tap located, line-buffer mask read and registered, the entry registered, FIFO
# write, and the buffered FIFO's two-cycle read latency.
SCAN_TO_ISSUE = 9
# Pushed entries the examiner may have ahead of the issuer before its FIFO counts as full
# (the examiner stops one short of the FIFO's depth, counting the entries in its pipeline
# stages).
AHEAD = PAIR_FIFO_DEPTH - 2
# Cycles from the issuer taking an entry to the examiner counting its place free.
TAKEN_SEEN = 1
# Cycles from the collector freeing a tile slot to a lane seeing it free (the count, then the
# lanes' limit, are registers).
RELEASE_SEEN = 1
# From a lane's last issued pair to the collector starting on that pixel (issue, weight count,
# RAM words' registers, operand registers, the multiplier's two and the product register,
# accumulator, the tile's registered write, pixel counter; the weight count takes two cycles).
ISSUE_TO_COLLECT = 11
# Calibration images the cycle model replays (evenly spaced through the batch): its cost grows
# with images * pixels * combos, and the mean settles long before 32. Pair counts use them all.
SIMULATED_IMAGES = 32
# Output pixels times images the model replays at most, a layer of many pixels replaying fewer
# images (at least MIN_SIMULATED_IMAGES): the mean over its pixels settles with fewer.
SIMULATED_PIXELS = 16384
MIN_SIMULATED_IMAGES = 8
# Cycles from the last input beat a pixel waits on being taken to the pixel starting its scan:
# the packer's row and pixel counts and the window's rows-ready flag are registers.
ROW_READY = 1
# Cycles from an XNOR lane issuing a pixel's last ROM entry to the collector taking the pixel:
# ROM read, line-buffer read, agreeing bits registered, popcount, sum, accumulate, the tile's
# registered write.
XNOR_ISSUE_TO_COLLECT = 7


@dataclass(frozen=True)
class LayerEstimate:
    """The estimated work and speed of one conv2d / linear engine, per inference.

    Attributes
    ----------
    name : str
        The IR node.
    lanes : int
        Multipliers.
    dense_pairs : float
        Products of the dense loop nest (out pixels * filters * taps * channels per group).
    effective_macs : float
        Mean products whose weight and activation are both nonzero (padding is zero).
    ideal_cycles : float
        Mean over inferences of the sum over output pixels of ``ceil(pairs / lanes)``, pairs being
        the pixel's effective pairs (dense pairs in dense mode), as
        :func:`zeroskip.hdl.sparse_plan.ideal_cycles` counts them.
    cycles : float
        Estimated cycles per inference of the engine in steady state.
    bound : str
        The limit closest to ``cycles``: ``"compute"`` (pairs issued by the slowest lane),
        ``"scan"`` (combos examined), ``"output"`` or ``"input"`` (one beat per cycle).
    """

    name: str
    lanes: int
    dense_pairs: float
    effective_macs: float
    ideal_cycles: float
    cycles: float
    bound: str
    pack: int = 1
    in_width: int = 1
    out_width: int = 1


def _window_nonzero(geometry, x_in):
    """``(N, pixels, taps, channels)`` bool: the nonzero activations under each pixel's taps."""
    g = geometry
    x = np.asarray(x_in).reshape(len(x_in), g.in_channels, g.height, g.width)
    nonzero = np.pad(x != 0, ((0, 0), (0, 0), (g.padding[0],) * 2, (g.padding[1],) * 2))
    taps = []
    for dy in range(g.kernel[0]):
        for dx in range(g.kernel[1]):
            window = nonzero[:, :, dy:dy + g.stride[0] * (g.out_height - 1) + 1:g.stride[0],
                             dx:dx + g.stride[1] * (g.out_width - 1) + 1:g.stride[1]]
            taps.append(window.reshape(len(x), g.in_channels, g.out_pixels))
    return np.stack(taps, axis=1).transpose(0, 3, 1, 2)


def _pair_counts(geometry, weight4d, x_in):
    """``(N, pixels, filters, taps, chunks)``: pairs with both operands nonzero per combo."""
    g = geometry
    window = _window_nonzero(g, x_in).astype(np.float32)  # float: BLAS, exact for these sums
    weight_nonzero = (weight4d != 0).reshape(g.out_channels, g.group_channels, g.taps)
    counts = np.zeros((len(x_in), g.out_pixels, g.out_channels, g.taps, g.chunks), np.int32)
    for group in range(g.groups):
        filters = slice(group * g.filters_per_group, (group + 1) * g.filters_per_group)
        for c in range(g.chunks):
            start = c * g.chunk
            channels = slice(start, start + g.chunk_channels(c))
            acts = window[:, :, :, group * g.group_channels:][:, :, :, channels]
            weights = weight_nonzero[filters, channels].astype(np.float32)
            counts[:, :, filters, :, c] = np.einsum("nptc,fct->npft", acts, weights)
    return counts


def _issue_work(sparse_plan, pairs):
    """Per lane, the issuer's cycles of every combo: ``(N, pixels, lanes, longest list)``.

    -1 marks a combo the examiner drops (no pair and not a unit's last) and list padding. A
    packed combo's pairs are those of its filters (the units are aligned packs of filters).
    """
    g = sparse_plan.geometry
    if g.pack > 1:
        pairs = pairs.reshape(*pairs.shape[:2], -1, g.pack, *pairs.shape[3:]).sum(axis=3)
    longest = max(lane.combos for lane in sparse_plan.lanes)
    work = np.full((*pairs.shape[:2], len(sparse_plan.lanes), longest), -1, np.int32)
    for lane_index, lane in enumerate(sparse_plan.lanes):
        units = np.array(lane.filters[::g.pack]) // g.pack
        filter_of_combo = units[np.cumsum(lane.last) - lane.last]
        tap = lane.taps[:, 0] * g.kernel[1] + lane.taps[:, 1]
        if sparse_plan.zero_skip:
            # A closing entry (mask 0) of an all-zero filter counts no pair.
            found = pairs[:, :, filter_of_combo, tap, lane.taps[:, 2]] * (lane.masks != 0)
        else:
            found = np.broadcast_to([int(mask).bit_count() for mask in lane.masks],
                                    (*pairs.shape[:2], lane.combos))
        kept = (found > 0) | lane.last
        work[:, :, lane_index, :lane.combos] = np.where(kept, np.maximum(found, 1), -1)
    return work


def _pixel_rows(geometry):
    """Per output pixel of one inference: the input rows (local) its window needs, and the
    first row it reads (what it keeps in the line buffer)."""
    g = geometry
    top = np.repeat(np.arange(g.out_height) * g.stride[0] - g.padding[0], g.out_width)
    return np.minimum(top + g.kernel[0], g.height), np.maximum(top, 0)


def _pixel_columns(geometry):
    """Per output pixel of one inference: the pixels of the last input row its window needs
    (from the row's first to the window's right edge): the pixel starts once they are in."""
    g = geometry
    right = np.arange(g.out_width) * g.stride[1] - g.padding[1] + g.kernel[1]
    return np.tile(np.minimum(right, g.width), g.out_height)


class _Queues:
    """What the examiner queues for every pixel of one inference per image, computed once for
    all pixels: ``cost`` ``(images, pixels, lanes, combos)`` are issue cycles (<= 0 where no
    entry is queued); for each combo the issue cycles and the entries queued ahead of it, the
    queued combos' positions in order; and index grids for gathering along the combos."""

    def __init__(self, cost, listed):
        self.cost = cost
        self.queued = cost > 0
        work = np.where(self.queued, cost, 0)
        self.before = work.cumsum(axis=3) - work  # issue cycles queued ahead of each combo
        self.rank = self.queued.cumsum(axis=3) - self.queued  # entries queued ahead of each
        # The queued combos' positions, in order (the stable sort keeps them first).
        self.order = np.argsort(~self.queued, axis=3, kind="stable")
        self.total = self.queued.sum(axis=3)
        images, _, lanes, combos = cost.shape
        self.listed = listed
        self.images = np.arange(images)[:, None, None]
        self.lanes = np.arange(lanes)[None, :, None]
        self.step = np.arange(combos)
        self.last_listed = listed.sum(axis=1) - 1


def _lane_pixel(queues, pixel, first_scan, issue_free, pops):
    """One output pixel through every lane's examiner and issuer.

    Parameters
    ----------
    queues : _Queues
        The examiner's entries of every pixel (``listed``: ``(lanes, combos)`` bool, the combo
        exists in the lane's list; the rest is padding).
    pixel : int
        The pixel.
    first_scan : numpy.ndarray
        ``(images, lanes)``: the cycle the first combo may be scanned.
    issue_free : numpy.ndarray
        ``(images, lanes)``: the cycle the issuer can take its next entry.
    pops : numpy.ndarray
        ``(images, lanes, AHEAD)``: when the latest AHEAD queued entries reached the issuer.

    Returns
    -------
    tuple
        The cycle the examiner is free, the cycle the issuer is free, and the new ``pops``.

    Notes
    -----
    An entry starts at max(its arrival, the previous entry's end) and ends ``cost`` later: a
    max-plus recurrence whose solution is a prefix maximum. The examiner may not scan while
    AHEAD entries wait, so scans depend on starts and starts on scans; iterating from the
    unblocked scans rises to the fixed point (the exact schedule) in a few rounds.
    """
    q = queues
    cost, queued = q.cost[:, pixel], q.queued[:, pixel]
    before, rank, order = q.before[:, pixel], q.rank[:, pixel], q.order[:, pixel]
    images, lanes = q.images, q.lanes
    step = q.step
    scan = first_scan[..., None] + step
    while True:
        arrival = np.where(queued, scan + SCAN_TO_ISSUE - before, 0)
        start = before + np.maximum(np.maximum.accumulate(arrival, axis=2), issue_free[..., None])
        history = np.concatenate([pops, start[images, lanes, order]], axis=2)
        # The examiner sees an entry taken a cycle after the issuer takes it.
        blocked = history[images, lanes, rank] + TAKEN_SEEN
        rescan = step + np.maximum.accumulate(np.maximum(blocked - step,
                                                         first_scan[..., None]), axis=2)
        rescan = np.where(q.listed, rescan, scan)
        if (rescan == scan).all():
            break
        scan = rescan
    last = np.where(queued, start + cost, issue_free[..., None]).max(axis=2)
    recent = history[images, lanes, q.total[:, pixel][..., None] + np.arange(pops.shape[2])]
    final_scan = scan[:, np.arange(scan.shape[1]), q.last_listed]
    return final_scan + 1, np.maximum(issue_free, last), recent


def _simulate(sparse_plan, work):
    """Cycles between the last outputs of consecutive inferences, per calibration image.

    Each image runs as the second of a two-inference stream behind its predecessor in the batch
    (the last image for the first), so the pipeline is full when it starts.
    """
    images = len(work)
    first, second = _timeline(sparse_plan, work, [np.roll(np.arange(images), 1),
                                                  np.arange(images)])
    return second[:, -1] - first[:, -1]


def _timeline(sparse_plan, work, streams, arrivals=None):
    """Replays inferences back to back through an empty engine: per inference of ``streams``
    (a list of calibration image indices, one per image of the batch), ``(images, pixels)``:
    the cycle the collector has given each output pixel's last beat.

    ``arrivals`` (``(images, rows, columns)``, or None for an input always ready) is the cycle
    each input pixel's last beat can reach the line buffer at the earliest.
    """
    g = sparse_plan.geometry
    images = len(streams[0])
    lane_count = len(sparse_plan.lanes)
    combos = np.array([lane.combos for lane in sparse_plan.lanes])
    needed, oldest = _pixel_rows(g)
    columns = _pixel_columns(g)
    pixel_beats = g.in_channels // g.in_beat
    row_beats = g.width * pixel_beats
    rows = ring_rows(g, row_beats)
    out_beats = g.out_channels // g.out_beat
    pixel_oldest = np.concatenate([oldest + m * g.height for m in range(len(streams))])

    scan_free = np.zeros((images, lane_count), np.int64)
    issue_free = np.zeros((images, lane_count), np.int64)
    pops = np.zeros((images, lane_count, AHEAD), np.int64)
    listed = np.arange(work.shape[-1]) < combos[:, None]
    lane_done, releases, row_start, row_done, outputs = [], [], [], [], []
    collector_free = np.zeros(images, np.int64)

    def row_complete(row):
        """When the line buffer holds input row ``row`` (global), computing earlier rows first."""
        while len(row_done) <= row:
            r = len(row_done)
            start = row_done[-1] if row_done else np.zeros(images, np.int64)
            # The row replaces one that every lane must have retired (all pixels reading it).
            blocking = np.searchsorted(pixel_oldest, r - rows, side="right") - 1
            if blocking >= 0:
                start = np.maximum(start, lane_done[blocking].max(axis=1) + 1)
            row_start.append(start)
            done = start + row_beats
            row_done.append(done if arrivals is None else np.maximum(done, arrivals[:, r, -1]))
        return row_done[row]

    def pixels_complete(row, count):
        """When the line buffer holds the first ``count`` pixels of input row ``row``."""
        done = row_complete(row)
        if count == g.width:
            return done
        done = row_start[row] + count * pixel_beats
        return done if arrivals is None else np.maximum(done, arrivals[:, row, count - 1])

    for image, ids in enumerate(streams):
        queues = _Queues(work[ids], listed)
        given = []
        for pixel in range(g.out_pixels):
            index = image * g.out_pixels + pixel
            rows_in = image * g.height + needed[pixel]  # a window all in padding needs none
            gate = pixels_complete(rows_in - 1, columns[pixel]) if rows_in else \
                np.zeros(images, np.int64)
            if index >= sparse_plan.slots:
                gate = np.maximum(gate, releases[index - sparse_plan.slots] + RELEASE_SEEN)
            first_scan = np.maximum(scan_free, gate[:, None] + ROW_READY) + 1
            scan_free, issue_free, pops = _lane_pixel(queues, pixel, first_scan, issue_free,
                                                      pops)
            lane_done.append(issue_free)
            collect = np.maximum(collector_free, issue_free.max(axis=1) + ISSUE_TO_COLLECT)
            collector_free = collect + out_beats
            releases.append(collector_free)
            given.append(collector_free)
        outputs.append(np.stack(given, axis=1))
    return outputs


def xnor_entries(sparse_plan, weight_bits):
    """Per lane, the ROM entries of an XNOR engine built from ``sparse_plan``.

    Every combo (tap and word with a nonzero weight) takes one entry per magnitude bit-plane
    in which one of its weights has a set bit; an all-zero filter's empty combo takes one.
    This is :attr:`zeroskip.hdl.xnor.XnorConvEngine.cycles_per_pixel` lane by lane, counted
    without building the engine.
    """
    planes = weight_bits - 1
    counts = []
    for lane in sparse_plan.lanes:
        sizes = [int(mask).bit_count() for mask in lane.masks]
        magnitudes = np.abs(np.asarray(lane.weights, np.int64))
        per_combo = [max(1, sum(bool(np.any(values >> plane & 1)) for plane in range(planes)))
                     for values in np.split(magnitudes, np.cumsum(sizes)[:-1])]
        counts.append(sum(per_combo))
    return counts


def _simulate_xnor(geometry, entries):
    """Cycles between the last outputs of two consecutive inferences of an XNOR engine.

    Its work does not depend on the data, so one two-inference stream settles it: every lane
    starts a pixel when it has finished the previous one, the pixel's input rows are in, and the
    collector has released the pixel :data:`TILE_SLOTS` back.
    """
    g = geometry
    entries = np.asarray(entries, np.int64)
    needed, oldest = _pixel_rows(g)
    columns = _pixel_columns(g)
    row_beats = g.width * g.in_channels
    rows = ring_rows(g, g.width * g.groups * g.chunks)
    pixel_oldest = np.concatenate([oldest, oldest + g.height])
    lane_free = np.zeros(len(entries), np.int64)
    retired, releases, row_start, last_outputs = [], [], [], []
    collector_free = 0

    def pixels_complete(row, count):
        """When the first ``count`` pixels of input row ``row`` are in, earlier rows first."""
        while len(row_start) <= row:
            r = len(row_start)
            start = row_start[-1] + row_beats if row_start else 0
            # The row replaces one that every lane must have retired.
            blocking = np.searchsorted(pixel_oldest, r - rows, side="right") - 1
            if blocking >= 0:
                start = max(start, retired[blocking] + 1)
            row_start.append(start)
        return row_start[row] + count * g.in_channels

    for image in range(2):
        for pixel in range(g.out_pixels):
            index = image * g.out_pixels + pixel
            gate = pixels_complete(image * g.height + needed[pixel] - 1, columns[pixel]) + 1
            if index >= TILE_SLOTS:
                gate = max(gate, releases[index - TILE_SLOTS] + RELEASE_SEEN)
            lane_free = np.maximum(lane_free, gate) + entries
            done = int(lane_free.max()) + XNOR_ISSUE_TO_COLLECT - 1
            retired.append(done)
            collect = max(collector_free, done)
            collector_free = collect + g.out_channels
            releases.append(collector_free + 1)
        last_outputs.append(collector_free)
    return last_outputs[1] - last_outputs[0]


def estimate_layer(node, in_shape, in_act, lanes, x_in, *, zero_skip=True, chunk=32, pack=1,
                   in_width=1, out_width=1, slots=TILE_SLOTS):
    """Estimate one conv2d / linear engine's work and steady-state cycles on calibration inputs.

    Parameters
    ----------
    node : zeroskip.ir.Conv2d or zeroskip.ir.Linear
    in_shape : tuple
        ``(C, H, W)``, or ``(features,)`` for a linear layer (after a flatten: the flattened,
        C-major features with the node's own weights; pair counts ignore the permutation).
    in_act : zeroskip.ir.Activation
        The input encoding.
    lanes : int
        Multipliers, 1 to the node's output channels.
    x_in : numpy.ndarray
        The layer's integer input batch ``(N, *in_shape)``, N >= 1.
    zero_skip : bool
        False estimates the dense engine of the same design.
    chunk : int
        Input channels the engine examines together.
    pack, in_width, out_width : int
        Filters per combo and the streams' activations a beat (:mod:`.streams`).
    slots : int
        Output pixels a lane's tile holds.

    Returns
    -------
    LayerEstimate

    Raises
    ------
    ZeroskipError
        If ``lanes`` is out of range, the pack or the widths do not fit, or ``x_in`` is not a
        batch of ``in_shape``.
    """
    return _Calibration.of(node, in_shape, in_act, x_in, chunk).estimate(
        lanes, zero_skip, pack=pack, in_width=in_width, out_width=out_width, slots=slots)


@dataclass(frozen=True, eq=False)
class _Calibration:
    """A layer with its calibration pair counts, which do not depend on the lanes."""

    node: ir.WeightLayer
    in_shape: tuple
    in_act: ir.Activation
    chunk: int
    pairs: np.ndarray  # (N, pixels, filters, taps, chunks), see _pair_counts

    @classmethod
    def of(cls, node, in_shape, in_act, x_in, chunk):
        x_in = np.asarray(x_in)
        if x_in.ndim == 0 or len(x_in) == 0 or x_in.shape[1:] != tuple(in_shape):
            raise ZeroskipError(f"node {node.name!r}: calibration inputs must be a batch of "
                                f"shape (N, {', '.join(map(str, in_shape))}) with N >= 1, got "
                                f"{x_in.shape}")
        geometry = ConvGeometry.of(node, in_shape, chunk)
        return cls(node, tuple(in_shape), in_act, chunk,
                   _pair_counts(geometry, geometry.as_weight4d(node.weight), x_in))

    def estimate(self, lanes, zero_skip, *, pack=1, in_width=1, out_width=1,
                 slots=TILE_SLOTS):
        if self.in_act.binary:
            return self._estimate_xnor(lanes)
        try:
            sparse_plan = make_plan(self.node, self.in_shape, self.in_act, lanes, zero_skip,
                                    self.chunk, pack=pack, in_width=in_width,
                                    out_width=out_width, slots=slots)
        except ValueError as error:
            raise ZeroskipError(str(error)) from None
        g = sparse_plan.geometry
        pixel_pairs = self.pairs.reshape(*self.pairs.shape[:2], -1).sum(axis=2)
        dense_pixel_pairs = g.out_channels * g.taps * g.group_channels
        if zero_skip:
            ideal = np.ceil(pixel_pairs / lanes).sum(axis=1).mean()
        else:
            ideal = g.out_pixels * np.ceil(dense_pixel_pairs / lanes)
        images = max(MIN_SIMULATED_IMAGES, min(SIMULATED_IMAGES,
                                               SIMULATED_PIXELS // g.out_pixels))
        sample = np.unique(np.linspace(0, len(self.pairs) - 1, images).round().astype(int))
        work = _issue_work(sparse_plan, self.pairs[sample])
        # Lanes balance over pixels (they may run apart): each floor is the busiest lane's total.
        floors = {
            "compute": np.where(work > 0, work, 0).sum(axis=(1, 3)).max(axis=1).mean(),
            "scan": g.out_pixels * (max(lane.combos for lane in sparse_plan.lanes) + 1),
            "output": g.out_pixels * g.out_channels // out_width,
            "input": g.in_channels * g.height * g.width // in_width,
        }
        return LayerEstimate(
            name=self.node.name, lanes=lanes,
            dense_pairs=float(g.out_pixels * dense_pixel_pairs),
            effective_macs=float(pixel_pairs.sum(axis=1).mean()), ideal_cycles=float(ideal),
            cycles=float(_simulate(sparse_plan, work).mean()), bound=max(floors, key=floors.get),
            pack=pack, in_width=in_width, out_width=out_width)

    def _estimate_xnor(self, lanes):
        """The XNOR engine skips zero weights in either mode: ``zero_skip`` does not apply."""
        try:
            sparse_plan = make_plan(self.node, self.in_shape, self.in_act, lanes, True,
                                    XNOR_WIDTH)
        except ValueError as error:
            raise ZeroskipError(str(error)) from None
        g = sparse_plan.geometry
        entries = xnor_entries(sparse_plan, self.node.weight_bits)
        floors = {"compute": g.out_pixels * max(entries),
                  "output": g.out_pixels * g.out_channels,
                  "input": g.in_channels * g.height * g.width}
        return LayerEstimate(
            name=self.node.name, lanes=lanes,
            dense_pairs=float(g.out_pixels * g.out_channels * g.taps * g.group_channels),
            effective_macs=float(self.pairs.reshape(len(self.pairs), -1).sum(axis=1).mean()),
            ideal_cycles=float(g.out_pixels * -(-sum(entries) // lanes)),
            cycles=float(_simulate_xnor(g, entries)), bound=max(floors, key=floors.get))


class Calibration:
    """A calibration batch run once through the golden model, and every conv2d / linear
    layer's pair counts on it (which do not depend on the lanes): what :meth:`fold` and
    :meth:`estimates` share.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : numpy.ndarray or None
        Integer calibration batch for the graph's input; None takes every activation of every
        layer's input as nonzero (padding aside): the work of the weights alone.
    chunk : int
        Input channels the engines examine together.
    """

    def __init__(self, graph, x_int, chunk):
        self.graph, self.x_int, self.chunk = graph, x_int, chunk

    @cached_property
    def layers(self):
        """A :class:`_Calibration` of every conv2d / linear node, in graph order."""
        values = None if self.x_int is None else reference.run_layers(self.graph, self.x_int)
        layers = []
        for node in self.graph.nodes:
            if isinstance(node, (ir.Conv2d, ir.Linear)):
                x = np.ones((1, *self.graph.shapes[node.input]), np.int64) if values is None \
                    else values[node.input]
                # A linear layer reads features; after a flatten those are the C-major ones.
                x = x.reshape(len(x), -1) if isinstance(node, ir.Linear) else x
                layers.append(_Calibration.of(node, x.shape[1:], self.graph.acts[node.input], x,
                                              self.chunk))
        return layers

    @cached_property
    def by_name(self):
        return {layer.node.name: layer for layer in self.layers}

    def estimates(self, lanes, *, zero_skip=True, layouts=None, slots=TILE_SLOTS):
        """:func:`estimate_layer` of every conv2d / linear node with ``lanes[name]`` lanes and
        ``layouts[name]`` = ``(pack, input width, output width)`` (1, 1, 1 if not given),
        ``slots`` pixels a tile."""
        missing = [layer.node.name for layer in self.layers if layer.node.name not in lanes]
        if missing:
            raise ZeroskipError(f"graph {self.graph.name!r}: no lanes given for "
                                f"{', '.join(map(repr, missing))}")
        layouts = layouts or {}
        return [layer.estimate(lanes[layer.node.name], zero_skip, slots=slots,
                               **dict(zip(("pack", "in_width", "out_width"),
                                          layouts.get(layer.node.name, (1, 1, 1)))))
                for layer in self.layers]

    def fold(self, multipliers, *, zero_skip=True):
        """:func:`fold` on this batch."""
        if not isinstance(multipliers, (int, np.integer)) or isinstance(multipliers, bool) \
                or multipliers < 1:
            raise ZeroskipError(f"multipliers must be a positive integer, got {multipliers!r}")
        if multipliers < len(self.layers):
            raise ZeroskipError(f"graph {self.graph.name!r} has {len(self.layers)} conv2d/linear "
                                f"layers: it needs at least {len(self.layers)} multipliers (one "
                                f"each), got {multipliers}")
        lanes = None
        for step in self.fold_steps(zero_skip=zero_skip):
            if sum(step.values()) > multipliers:
                break
            lanes = step
        return lanes

    def fold_steps(self, *, zero_skip=True):
        """The greedy fold: lanes per layer (a dict) with one lane each, then after every
        step that speeds up the slowest layer, until none does. A step gives the slowest layer
        the fewest more lanes that make it faster: usually one, more where its filters split
        evenly only further on (16 filters take 2 a lane from 8 lanes to 15, 1 at 16).
        :meth:`fold` at a budget is the last step within it."""
        layers = self.layers
        lanes = [1] * len(layers)
        cycles = [layer.estimate(1, zero_skip).cycles for layer in layers]
        while True:
            yield {layer.node.name: count for layer, count in zip(layers, lanes)}
            slowest = max(range(len(layers)), key=lambda i: (cycles[i], -i))
            layer = layers[slowest]
            for more in range(lanes[slowest] + 1, layer.node.out_channels + 1):
                faster = layer.estimate(more, zero_skip).cycles
                if faster < cycles[slowest]:
                    lanes[slowest], cycles[slowest] = more, faster
                    break
            else:
                return


def estimate_graph(graph, x_int, lanes, *, zero_skip=True, chunk=32):
    """:func:`estimate_layer` for every conv2d / linear node of ``graph``, in graph order.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : numpy.ndarray
        Integer calibration batch for the graph's input.
    lanes : dict of str to int
        Lanes per conv2d / linear node name.
    zero_skip, chunk
        As for :func:`estimate_layer`.

    Returns
    -------
    list of LayerEstimate
    """
    return Calibration(graph, x_int, chunk).estimates(lanes, zero_skip=zero_skip)


def fold(graph, x_int, multipliers, *, zero_skip=True, chunk=32):
    """Spread ``multipliers`` over the conv2d / linear layers so the slowest one is fastest.

    Greedy: every layer starts with one lane; the layer with the most estimated cycles (the
    earlier one on a tie) gets the fewest more lanes that lower its estimate, while some do and
    the budget lasts.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : numpy.ndarray
        Integer calibration batch for the graph's input.
    multipliers : int
        The budget, at least one per conv2d / linear layer.
    zero_skip, chunk
        As for :func:`estimate_layer`.

    Returns
    -------
    dict of str to int
        Lanes per conv2d / linear node name, in graph order; at most ``multipliers`` in total.

    Raises
    ------
    ZeroskipError
        If ``multipliers`` is not a positive integer or is fewer than the weight layers.
    """
    return Calibration(graph, x_int, chunk).fold(multipliers, zero_skip=zero_skip)
