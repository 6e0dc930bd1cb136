"""Stream widths and packs: what each tensor's stream carries a beat, what each engine takes.

A tensor's stream carries ``W`` activations a beat, ``W`` a power of two dividing its channels
(the features of a flat tensor), its producer's output width. Every consumer takes the widest
width that divides ``W`` and that its engine can read (:func:`input_width`); the network puts a
width converter where that is narrower than the stream. A conv / linear engine reads at most its
chunk (and its channels per group) a beat, unless it is a depthwise pack; the XNOR engine reads
one bit a beat; an add takes both inputs at the narrower of their widths.

A pack (filters per combo, :mod:`zeroskip.hdl.sparse_plan`) is possible for a depthwise layer
and for a layer of one group that one chunk holds (a first layer of 1 or 3 channels):
:func:`pack_choices` lists the packs that fit a layer's lanes and output width.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import ZeroskipError
from ..hdl.sparse_plan import ConvGeometry, power_of_two_floor, tile_layout
from .layers import WEIGHT_LAYERS

__all__ = ["MAX_WIDTH", "check_widths", "chosen_packs", "input_width", "layouts",
           "pack_choices", "packable", "stage_widths", "width_choices"]

#: The widest stream the compiler chooses by itself: 64 activations a beat.
MAX_WIDTH = 64


def width_choices(shape, limit=MAX_WIDTH):
    """The widths a tensor of ``shape`` can stream at: powers of two dividing its channels."""
    channels = shape[0]
    widths, width = [], 1
    while width <= min(channels, limit) and channels % width == 0:
        widths.append(width)
        width *= 2
    return widths


def _geometry(spec, chunk, pack=1, in_width=1, out_width=1):
    return ConvGeometry.of(spec.node, spec.in_shapes[0], chunk, pack=pack, in_beat=in_width,
                           out_beat=out_width)


def input_width(spec, width, *, chunk, pack=1):
    """The widest width dividing ``width`` that the engine of ``spec`` reads on one input."""
    if not isinstance(spec.node, WEIGHT_LAYERS):
        return width
    if spec.in_acts[0].binary:
        return 1  # the XNOR engine reads one bit a beat
    while width > 1:
        try:
            _geometry(spec, chunk, pack, width).check(spec.name)
            return width
        except ValueError:
            width //= 2
    return 1


def stage_widths(spec, widths, *, chunk, pack=1):
    """``(input widths in port order, output width)`` of the engine of ``spec`` when the
    tensors stream at ``widths`` (tensor name -> width)."""
    sources = [widths.get(source, 1) for source in spec.sources]
    if isinstance(spec.node, ir.Add):
        sources = [min(sources)] * len(sources)
    return (tuple(input_width(spec, width, chunk=chunk, pack=pack) for width in sources),
            widths.get(spec.name, 1))


def packable(spec, chunk):
    """Whether a pack above 1 can fit the layer: an integer-input depthwise layer, or one group
    narrower than the chunk."""
    if not isinstance(spec.node, WEIGHT_LAYERS) or spec.in_acts[0].binary:
        return False
    g = _geometry(spec, chunk)
    return g.depthwise or (g.groups == 1 and g.chunks == 1 and g.group_channels < chunk)


def pack_choices(spec, lanes, *, chunk, in_width=1, out_width=1):
    """The packs above 1 that fit a layer with ``lanes`` and these widths, largest first: a
    combo mask of at most ``chunk`` bits, and an output tile the lanes fit (with more lanes
    than packs, each pack's combos are cut over several lanes)."""
    if not packable(spec, chunk):
        return []
    node = spec.node
    choices = []
    pack = power_of_two_floor(node.out_channels)
    while pack > 1:
        g = _geometry(spec, chunk, pack, in_width, out_width)
        if g.mask_bits <= chunk:
            try:
                g.check(spec.name)
                units = node.out_channels // pack
                tile_layout(g, lambda split: np.ones((units, split), np.int64), lanes,
                            spec.name)
                choices.append(pack)
            except ValueError:
                pass
        pack //= 2
    return choices


def check_widths(layers, widths, input_name, in_shape):
    """A ZeroskipError unless every tensor's width is a power of two dividing its channels and
    no binary tensor is wider than 1 where an XNOR engine produces it."""
    shapes = {input_name: in_shape}
    shapes.update({spec.name: spec.out_shape for spec in layers})
    unknown = sorted(set(widths) - set(shapes))
    if unknown:
        raise ZeroskipError(f"stream widths name no tensor of the graph: {unknown}; the "
                            f"tensors are {sorted(shapes)}")
    for name, width in widths.items():
        if width not in width_choices(shapes[name], limit=1 << 16):
            raise ZeroskipError(f"tensor {name!r}: a stream width must be a power of two "
                                f"dividing its {shapes[name][0]} channels, got {width!r}")
    for spec in layers:
        if isinstance(spec.node, WEIGHT_LAYERS) and spec.in_acts[0].binary and \
                widths.get(spec.name, 1) != 1:
            raise ZeroskipError(f"node {spec.name!r}: its XNOR engine gives one activation a "
                                f"beat, got a stream width of {widths[spec.name]}")


def chosen_packs(layers, lanes, widths, pack, *, chunk):
    """Layer name -> pack: ``pack`` a dict (missing layers 1), True (the largest pack that fits
    every packable layer with its lanes and widths) or False (1 everywhere)."""
    packs = {}
    for spec in layers:
        if not isinstance(spec.node, WEIGHT_LAYERS):
            continue
        if isinstance(pack, dict):
            packs[spec.name] = pack.get(spec.name, 1)
            continue
        choices = []
        if pack:
            in_widths, out_width = stage_widths(spec, widths, chunk=chunk)
            choices = pack_choices(spec, lanes[spec.name], chunk=chunk, out_width=out_width,
                                   in_width=in_widths[0])
        packs[spec.name] = choices[0] if choices else 1
    return packs


def layouts(layers, widths, packs, *, chunk):
    """Layer name -> ``(pack, input widths in port order, output width)`` of every engine."""
    result = {}
    for spec in layers:
        pack = packs.get(spec.name, 1)
        in_widths, out_width = stage_widths(spec, widths, chunk=chunk, pack=pack)
        result[spec.name] = (pack, in_widths, out_width)
    return result
