"""Balancing a pipeline: lanes, stream widths and packs, on the folding model.

:func:`balance` spreads a multiplier budget over the conv / linear layers as
:meth:`zeroskip.compiler.folding.Calibration.fold` does (the slowest layer gets a lane while that
helps), and chooses every tensor's stream width as it goes: when the slowest engine is bound by
a port (its input or output stream, one beat a cycle), that stream is made twice as wide
instead, so widths stay the smallest that leave no layer port-bound while multipliers remain.
Engines without weights (pools, adds) count with the cycles their ports take
(:func:`port_estimate`). Packs (:mod:`.streams`) follow the lanes and widths: the largest that
fits, where asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import ir
from ..errors import ZeroskipError
from ..hdl.sparse_plan import MAX_SPLIT
from ..hdl.window import TILE_SLOTS
from .folding import LayerEstimate
from .layers import WEIGHT_LAYERS
from .streams import MAX_WIDTH, chosen_packs, layouts, packable, width_choices

__all__ = ["Balanced", "HEAD_START", "LOOK_AHEAD", "balance", "fixed_widths", "port_estimate"]

#: More lanes tried at once for a layer with a wide output or a pack, when one more does not
#: make it faster.
LOOK_AHEAD = 4
#: The share of the budget given out at once, in proportion to the layers' cycles at one
#: lane, before the folding adds lanes one step at a time.
HEAD_START = 0.5
#: A network of one-pixel tensors gets a stream twice as wide when that shortens its latency by
#: this share at least, up to this width.
LATENCY_GAIN = 0.005
LATENCY_WIDTH = 16


@dataclass(frozen=True)
class Balanced:
    """What :func:`balance` chose: lanes per conv / linear layer, stream width per tensor, pack
    per conv / linear layer, and the estimate of every engine (weights or not)."""

    lanes: dict
    widths: dict
    packs: dict
    estimates: tuple


def _axis_positions(size, kernel, stride, padding):
    """Scan positions of a pool along one axis (as :mod:`zeroskip.hdl.pool` walks them)."""
    out = (size + 2 * padding - kernel) // stride + 1
    return max(size, (out - 1) * stride - padding + kernel)


def port_estimate(spec, in_width, out_width):
    """The cycles per inference of an engine without weights at these widths: a pool scans one
    position a cycle (a beat of ``in_width`` channels; windows ending in the padding add
    positions), an add takes a pair of beats a cycle; either gives a beat a cycle."""
    node = spec.node
    in_shape, out_shape = spec.in_shapes[0], spec.out_shape
    if isinstance(node, (ir.MaxPool2d, ir.AvgPool2d)):
        padding = getattr(node, "padding", (0, 0))
        scan = _axis_positions(in_shape[1], node.kernel[0], node.stride[0], padding[0]) * \
            _axis_positions(in_shape[2], node.kernel[1], node.stride[1], padding[1]) * \
            in_shape[0] // in_width
    else:
        scan = math.prod(in_shape) // in_width
    given = math.prod(out_shape) // out_width
    return LayerEstimate(name=spec.name, lanes=0, dense_pairs=0.0, effective_macs=0.0,
                         ideal_cycles=0.0, cycles=float(max(scan, given)),
                         bound="input" if scan >= given else "output",
                         in_width=in_width, out_width=out_width)


def fixed_widths(layers, input_name, in_shape, limit):
    """Every tensor at the widest width up to ``limit`` its channels allow (1 where an XNOR
    engine produces it)."""
    widths = {input_name: width_choices(in_shape, limit)[-1]}
    for spec in layers:
        binary_engine = isinstance(spec.node, WEIGHT_LAYERS) and spec.in_acts[0].binary
        widths[spec.name] = 1 if binary_engine else width_choices(spec.out_shape, limit)[-1]
    return widths


class _Model:
    """The estimates of a pipeline's engines for given lanes, widths and packs, cached."""

    def __init__(self, calibration, layers, *, zero_skip, chunk, pack, slots):
        self.calibration, self.layers = calibration, layers
        self.zero_skip, self.chunk, self.pack, self.slots = zero_skip, chunk, pack, slots
        self.cache = {}

    def packs(self, lanes, widths):
        return chosen_packs(self.layers, lanes, widths, self.pack, chunk=self.chunk)

    def estimate(self, spec, lanes, layout):
        """One engine's estimate: a ZeroskipError if its plan does not fit."""
        pack, in_widths, out_width = layout
        key = (spec.name, lanes, pack, in_widths[0], out_width)
        if key not in self.cache:
            if isinstance(spec.node, WEIGHT_LAYERS):
                self.cache[key] = self.calibration.by_name[spec.name].estimate(
                    lanes, self.zero_skip, pack=pack, in_width=in_widths[0],
                    out_width=out_width, slots=self.slots)
            else:
                self.cache[key] = port_estimate(spec, in_widths[0], out_width)
        return self.cache[key]

    def all(self, lanes, widths):
        """Every engine's estimate, in layer order (a ZeroskipError if a plan does not fit)."""
        packs = self.packs(lanes, widths)
        shapes = layouts(self.layers, widths, packs, chunk=self.chunk)
        return [self.estimate(spec, lanes.get(spec.name, 0), shapes[spec.name])
                for spec in self.layers]


def _wider(widths, tensors, shapes, narrow):
    """``widths`` with each of ``tensors`` twice as wide, or None if one cannot be (``narrow``:
    the tensors XNOR engines give, one activation a beat)."""
    wider = dict(widths)
    for tensor in tensors:
        width = widths.get(tensor, 1) * 2
        if tensor in narrow or width > MAX_WIDTH or width not in width_choices(shapes[tensor]):
            return None
        wider[tensor] = width
    return wider


def balance(calibration, layers, *, input_name, in_shape, multipliers=None, lanes=None,
            widths="auto", pack=True, zero_skip=True, chunk=32, slots=TILE_SLOTS):
    """Lanes (unless given), stream widths (when ``"auto"``) and packs of a pipeline.

    Parameters
    ----------
    calibration : zeroskip.compiler.folding.Calibration
    layers : sequence of zeroskip.compiler.layers.LayerSpec
    input_name, in_shape :
        The graph input's tensor.
    multipliers : int, optional
        The budget, when ``lanes`` is None.
    lanes : dict, optional
        Fixed lanes per conv / linear layer.
    widths : "auto" or dict
        ``"auto"`` chooses them; a dict (tensor -> width) keeps them.
    pack : bool or dict
        As :func:`zeroskip.compiler.streams.chosen_packs` takes it.
    slots : int
        Output pixels a conv engine's tile holds.

    Returns
    -------
    Balanced
    """
    weight_layers = [spec for spec in layers if isinstance(spec.node, WEIGHT_LAYERS)]
    model = _Model(calibration, layers, zero_skip=zero_skip, chunk=chunk, pack=pack,
                   slots=slots)
    shapes = {input_name: in_shape, **{spec.name: spec.out_shape for spec in layers}}
    narrow = {spec.name for spec in weight_layers if spec.in_acts[0].binary}
    auto_widths = widths == "auto"
    widths = {name: 1 for name in shapes} if auto_widths else dict(widths)
    fold_lanes = lanes is None
    # One activation a beat and no packs: the folding of the engines without either, which
    # never cuts a filter over several lanes and starts from one lane each.
    legacy = not auto_widths and pack is False and set(widths.values()) == {1}
    if not fold_lanes:
        lanes = dict(lanes)
    elif legacy:
        lanes = {spec.name: 1 for spec in weight_layers}
    else:
        lanes = _first_lanes(model, layers, widths, multipliers)
    # With fixed widths only the lanes can change, and only a conv / linear engine's cycles
    # with them: the slowest of those gets the next lane.
    candidates = range(len(layers)) if auto_widths else \
        [index for index, spec in enumerate(layers) if isinstance(spec.node, WEIGHT_LAYERS)]
    while candidates:
        estimates = model.all(lanes, widths)
        current = max(e.cycles for e in estimates)
        slowest = max(candidates, key=lambda i: (estimates[i].cycles, -i))
        spec, estimate = layers[slowest], estimates[slowest]

        def helps(new_lanes, new_widths):
            # The slowest engine gets faster, and no other becomes the slower for it.
            try:
                after = {e.name: e.cycles for e in model.all(new_lanes, new_widths)}
            except ZeroskipError:
                return False
            return after[spec.name] < estimate.cycles and max(after.values()) <= current

        changed = False
        wider_options = []
        if auto_widths and estimate.bound in ("input", "output"):
            # The binding port twice as wide; else both (an engine that takes and gives as many
            # beats, a depthwise conv or a pool, is bound by the other port once one is wider).
            bound = spec.sources if estimate.bound == "input" else (spec.name,)
            for tensors in (bound, (*spec.sources, spec.name)):
                wider = _wider(widths, tensors, shapes, narrow)
                if wider is not None and wider not in wider_options:
                    wider_options.append(wider)
            for wider in wider_options:
                if helps(lanes, wider):
                    widths, changed = wider, True
                    break
        if not changed and fold_lanes and isinstance(spec.node, WEIGHT_LAYERS):
            # More lanes; else more lanes behind a wider port (a port-bound layer whose wider
            # port leaves it bound by its lanes at the same cycles).
            for option in (widths, *wider_options):
                more = _add_lanes(spec, lanes, option, multipliers, helps,
                                  packed=pack is not False and packable(spec, chunk),
                                  split=not legacy and not spec.in_acts[0].binary)
                if more is not None:
                    lanes, widths, changed = more, option, True
                    break
        if not changed:
            break
    if auto_widths and all(_one_pixel(shape) for shape in shapes.values()):
        widths = _widen_for_latency(model, lanes, widths, shapes, narrow, input_name, in_shape)
    packs = model.packs(lanes, widths)
    return Balanced(lanes, widths, packs, tuple(model.all(lanes, widths)))


def _one_pixel(shape):
    return len(shape) == 1 or shape[1] * shape[2] == 1


def _widen_for_latency(model, lanes, widths, shapes, narrow, input_name, in_shape):
    """Wider streams of a network whose every tensor is one pixel (a chain of linear layers):
    each layer starts only once its input's last beat is in, so along the chain the beats add
    up in the single-stream latency. The stream whose doubling shortens the latency model's
    estimate most, by at least :data:`LATENCY_GAIN`, is doubled, until none does (up to
    :data:`LATENCY_WIDTH`)."""
    current = _latency(model, lanes, widths, input_name, in_shape)
    while True:
        best = None
        for tensor in shapes:
            if widths.get(tensor, 1) >= LATENCY_WIDTH:
                continue
            wider = _wider(widths, (tensor,), shapes, narrow)
            if wider is None:
                continue
            try:
                latency = _latency(model, lanes, wider, input_name, in_shape)
            except (ZeroskipError, ValueError):
                continue
            if best is None or latency < best[0]:
                best = (latency, wider)
        if best is None or best[0] > current * (1 - LATENCY_GAIN):
            return widths
        current, widths = best


def _latency(model, lanes, widths, input_name, in_shape):
    """The latency model's mean estimate for these lanes and widths."""
    from types import SimpleNamespace

    from ..hdl.sparse_plan import plan as make_plan
    from .latency import network_latency

    packs = model.packs(lanes, widths)
    shapes = layouts(model.layers, widths, packs, chunk=model.chunk)
    plans = {}
    for spec in model.layers:
        if isinstance(spec.node, WEIGHT_LAYERS):
            pack, in_widths, out_width = shapes[spec.name]
            plans[spec.name] = make_plan(spec.node, spec.in_shapes[0], spec.in_acts[0],
                                         lanes[spec.name], model.zero_skip, model.chunk,
                                         pack=pack, in_width=in_widths[0], out_width=out_width,
                                         slots=model.slots)
    pipeline = SimpleNamespace(graph=model.calibration.graph, in_shape=in_shape,
                               in_width=widths[input_name], layers=model.layers, widths=widths,
                               layouts=shapes, plans=plans)
    return float(network_latency(pipeline, model.calibration).mean())


def _add_lanes(spec, lanes, widths, multipliers, helps, packed, split):
    """``lanes`` with the fewest more lanes for ``spec`` that ``helps``, or None. One more lane
    may not help a wide output (its lanes come in columns, :data:`LOOK_AHEAD` or the width
    more are tried), a packed layer (whose pack halves as its lanes double) nor one with a lane
    per filter (``split``: beyond, its filters are cut in two): up to as many more as it has
    are tried there."""
    spare = multipliers - sum(lanes.values())
    width, count = widths.get(spec.name, 1), lanes[spec.name]
    most = spec.node.out_channels * (MAX_SPLIT if split else 1)
    ahead = 1
    if width > 1 or packed or (split and count >= spec.node.out_channels):
        ahead = max(width, LOOK_AHEAD, count if packed or split else 1)
    # Every count up to LOOK_AHEAD more, then a quarter, a half and all the lanes more (each
    # try is an estimate of the layer).
    extras = sorted({extra for extra in (*range(1, LOOK_AHEAD + 1), ahead // 4, ahead // 2,
                                         ahead)
                     if 1 <= extra <= min(spare, most - count, ahead)})
    for extra in extras:
        more = {**lanes, spec.name: lanes[spec.name] + extra}
        if helps(more, widths):
            return more
    return None


def _first_lanes(model, layers, widths, multipliers):
    """Lanes to start the folding from: a share of :data:`HEAD_START` of the budget, in
    proportion to each conv / linear layer's cycles at one lane (at least one each)."""
    weight_layers = [spec for spec in layers if isinstance(spec.node, WEIGHT_LAYERS)]
    ones = {spec.name: 1 for spec in weight_layers}
    cycles = {e.name: e.cycles for e in model.all(ones, widths) if e.name in ones}
    total = sum(cycles.values())
    spare = multipliers - len(weight_layers)
    lanes = {}
    for spec in weight_layers:
        share = int(HEAD_START * spare * cycles[spec.name] / total)
        lanes[spec.name] = 1 + min(share, spec.node.out_channels - 1)
    try:
        model.all(lanes, widths)
    except ZeroskipError:  # a share that no tile fits: start from one lane each
        return ones
    return lanes
