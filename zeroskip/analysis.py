"""Parameter, storage and work statistics of a graph, per layer and in total.

Storage is counted exactly, in bits, as an engine would hold it:

* **weights** in the cheapest of three encodings, chosen per layer (:func:`cheapest_encoding`).
  Each count includes everything a decoder needs to rebuild the dense weight tensor when it
  knows only the layer's shape (which the graph gives): values, position information and
  row boundaries. None is an estimate, so comparing them is fair:

  - ``dense``: every weight, ``weights * bits``; no index.
  - ``binary``: a ternary layer (2 bits) without zeros holds only -1 and +1: one bit per weight,
    no index. A ternary layer with zeros takes the cheapest of the others.
  - ``bitmap``: one bit per weight position saying nonzero or not, then the nonzero values.
  - ``relative<b>`` (Deep Compression's relative index): per output channel, in row-major
    order over ``(in/groups, kh, kw)`` (or the input features), each stored entry is a value
    and a ``b``-bit gap, the number of zeros skipped since the previous entry of the channel.
    A gap above ``2**b - 1`` costs filler entries (value 0) every ``2**b`` positions. Each
    channel also stores its entry count, in ``bit_length(row length)`` bits, so that the decoder
    knows where a channel ends (trailing zeros need no entry). ``b`` = 1..8, the best is kept.

* **bias** at the IR's int32, 32 bits per output channel.
* **requant** parameters: ``MULTIPLIER_BITS`` per multiplier entry, ``bit_length(MAX_SHIFT)``
  per shift entry, the clamp bounds and epsilon at the output activation's width, and an Add's
  two input multipliers at ``MULTIPLIER_BITS`` each. A thresholded layer's output stage counts
  here too: per channel one threshold, at the signed width of the layer's widest threshold, and
  one sign bit.

The fp32 baseline is the dense float model's weights, ``32 * weights`` bits; the storage
reduction is that baseline over the weight storage (weights against weights; bias and requant
storage are reported beside it).

MACs come from :func:`zeroskip.reference.work`: dense MACs, and with an input batch the
effective MACs (both the weight and the activation nonzero), per inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import ir, reference
from .errors import warn_empty_layers

__all__ = [
    "MAX_GAP_BITS", "dense_bits", "binary_bits", "bitmap_bits", "relative_index_bits", "cheapest_encoding",
    "LayerStats", "NetworkStats", "empty_layers", "stats",
]

MAX_GAP_BITS = 8
FP32_BITS = 32
BIAS_BITS = 32
SHIFT_BITS = ir.MAX_SHIFT.bit_length()


# --- weight encodings ----------------------------------------------------------------------------

def _rows(weight):
    """The weight as (output channels, row-major rest): one row per output channel."""
    weight = np.asarray(weight)
    return weight.reshape(weight.shape[0], -1)


def dense_bits(weight, bits):
    """Bits to store every weight at ``bits`` each, with no index."""
    return int(np.asarray(weight).size) * bits


def binary_bits(weight, bits):
    """One bit per weight for a 2-bit layer holding only -1 and +1; None for any other layer."""
    weight = np.asarray(weight)
    if bits != 2 or np.count_nonzero(weight) != weight.size:
        return None
    return int(weight.size)


def bitmap_bits(weight, bits):
    """Bits for a one-bit-per-position nonzero map plus the nonzero values at ``bits`` each."""
    weight = np.asarray(weight)
    return int(weight.size) + int(np.count_nonzero(weight)) * bits


def _gaps(weight):
    """Zeros skipped before each nonzero weight since the previous one of its output channel."""
    rows, columns = np.nonzero(_rows(weight))  # row-major order, as the encoding stores them
    previous = np.empty_like(columns)
    previous[1:] = columns[:-1]
    starts_row = np.ones(columns.shape, dtype=bool)
    starts_row[1:] = rows[1:] != rows[:-1]
    previous[starts_row] = -1
    return columns - previous - 1


def relative_index_bits(weight, bits, gap_bits):
    """Bits for Deep Compression's relative index with ``gap_bits``-bit gaps (module doc).

    Parameters
    ----------
    weight : array_like of integers, shape (out, ...)
        One row per output channel, gaps counted in row-major order within each row.
    bits : int
        Width of each stored value (the layer's weight bits).
    gap_bits : int
        Width ``b`` of each gap; a gap ``g`` above ``2**b - 1`` needs ``g // 2**b`` fillers.

    Returns
    -------
    int
        ``entries * (bits + gap_bits) + out * bit_length(row length)``, entries counting the
        nonzero weights and the fillers.
    """
    rows = _rows(weight)
    fillers = int(np.sum(_gaps(weight) >> gap_bits))
    entries = int(np.count_nonzero(rows)) + fillers
    count_bits = rows.shape[0] * int(rows.shape[1]).bit_length()
    return entries * (bits + gap_bits) + count_bits


def cheapest_encoding(weight, bits):
    """The cheapest exact weight encoding of a layer: ``(bits, name)``.

    Parameters
    ----------
    weight : array_like of integers, shape (out, ...)
    bits : int
        Width of each weight value.

    Returns
    -------
    tuple[int, str]
        Total bits and the encoding: ``"binary"`` (a 2-bit layer without zeros), ``"dense"``,
        ``"bitmap"`` or ``"relative<b>"`` with ``b`` the gap width. Ties go to the simpler
        encoding (in that order, smaller ``b`` first).
    """
    binary = binary_bits(weight, bits)
    if binary is not None:  # 1 bit per weight with no index: no other encoding comes close
        return binary, "binary"
    candidates = [(dense_bits(weight, bits), "dense"), (bitmap_bits(weight, bits), "bitmap")]
    candidates += [(relative_index_bits(weight, bits, gap), f"relative{gap}")
                   for gap in range(1, MAX_GAP_BITS + 1)]
    return min(candidates, key=lambda candidate: candidate[0])


# --- statistics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerStats:
    """Parameters, storage and work of one layer, or of the whole network (``name='total'``).

    Attributes
    ----------
    name, op : str
    weights, nonzero_weights : int
    sparsity : float or None
        Fraction of zero weights; None without weights.
    weight_bits : int or None
        Width of each weight value (None for the total and for layers without weights).
    weight_encoding : str or None
        The cheapest encoding (see :func:`cheapest_encoding`); None for the total and for
        layers without weights.
    weight_storage_bits, bias_storage_bits, requant_storage_bits : int
    fp32_storage_bits : int
        ``32 * weights``.
    storage_reduction : float or None
        ``fp32_storage_bits / weight_storage_bits``; None when no weight is stored.
    dense_macs : int
        Per inference.
    effective_macs : float or None
        Per inference, mean over the input batch; None without inputs.
    effective_macs_total : int or None
        Over the whole input batch.
    """

    name: str
    op: str
    weights: int
    nonzero_weights: int
    sparsity: float | None
    weight_bits: int | None
    weight_encoding: str | None
    weight_storage_bits: int
    bias_storage_bits: int
    requant_storage_bits: int
    fp32_storage_bits: int
    storage_reduction: float | None
    dense_macs: int
    effective_macs: float | None
    effective_macs_total: int | None


def _layer_stats(name, op, *, weights, nonzero_weights, weight_bits, weight_encoding,
                 weight_storage_bits, bias_storage_bits, requant_storage_bits, dense_macs,
                 effective_macs, effective_macs_total):
    """A LayerStats with the derived fields (sparsity, fp32 baseline, reduction) filled in."""
    fp32_storage_bits = FP32_BITS * weights
    return LayerStats(
        name=name, op=op, weights=weights, nonzero_weights=nonzero_weights,
        sparsity=1 - nonzero_weights / weights if weights else None,
        weight_bits=weight_bits, weight_encoding=weight_encoding,
        weight_storage_bits=weight_storage_bits, bias_storage_bits=bias_storage_bits,
        requant_storage_bits=requant_storage_bits, fp32_storage_bits=fp32_storage_bits,
        storage_reduction=fp32_storage_bits / weight_storage_bits if weight_storage_bits
        else None,
        dense_macs=dense_macs, effective_macs=effective_macs,
        effective_macs_total=effective_macs_total)


def _threshold_bits(threshold):
    """One threshold per channel at the signed width of the widest, and one sign bit each."""
    width = max(int(value).bit_length() for value in threshold.thresholds) + 1
    return threshold.thresholds.size * (width + 1)


def _requant_bits(requant, act):
    """Multiplier and shift entries, clamp bounds and epsilon (at the activation's width)."""
    return (requant.multiplier.size * ir.MULTIPLIER_BITS + requant.shift.size * SHIFT_BITS
            + 3 * act.bits)


@dataclass(frozen=True)
class NetworkStats:
    """Statistics of a graph: one :class:`LayerStats` per layer and their ``total``.

    Layers are the conv2d, linear, avgpool2d and add nodes, in topological order (the others
    store nothing and do no MACs). ``batch_size`` is the number of input samples the effective
    MACs were measured on, None without inputs.
    """

    name: str
    layers: tuple[LayerStats, ...]
    total: LayerStats
    batch_size: int | None

    def to_dict(self):
        """Plain ints, floats, strings and None, ready for ``json.dumps``."""
        return {"name": self.name, "batch_size": self.batch_size,
                "layers": [asdict(layer) for layer in self.layers],
                "total": asdict(self.total)}

    def format_table(self):
        """A fixed-width text table for the CLI, one row per layer and a total row."""
        header = ("layer", "op", "weights", "nonzero", "sparsity", "encoding", "weight bits",
                  "bias bits", "requant bits", "vs fp32", "dense MACs", "effective MACs")
        rows = [header]
        for layer in self.layers + (self.total,):
            rows.append((
                layer.name, layer.op, f"{layer.weights:,}", f"{layer.nonzero_weights:,}",
                "-" if layer.sparsity is None else f"{layer.sparsity:.1%}",
                layer.weight_encoding or "-", f"{layer.weight_storage_bits:,}",
                f"{layer.bias_storage_bits:,}", f"{layer.requant_storage_bits:,}",
                "-" if layer.storage_reduction is None else f"{layer.storage_reduction:.1f}x",
                f"{layer.dense_macs:,}",
                "-" if layer.effective_macs is None else f"{layer.effective_macs:,.1f}"))
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        lines = ["  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                           for column, (cell, width) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        notes = ["weight bits: the cheapest exact encoding per layer: binary, dense, bitmap, or "
                 "relative<b>",
                 "  (b-bit gaps; fillers and per-channel entry counts included)",
                 "vs fp32: 32 bits per weight over the weight bits; MACs per inference"]
        if self.batch_size is not None:
            notes.append(f"effective MACs: both operands nonzero, mean over {self.batch_size} "
                         "input(s)")
        return "\n".join(lines + notes)


def empty_layers(graph):
    """``(name, weights)`` of every conv2d and linear node of ``graph`` without a nonzero
    weight, in topological order."""
    return [(node.name, int(node.weight.size)) for node in graph.nodes
            if isinstance(node, (ir.Conv2d, ir.Linear)) and not np.any(node.weight)]


def stats(graph, x_int=None):
    """Parameters, storage and MACs of every layer of ``graph``, and their totals.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : array_like of integers, optional
        An input batch (see :func:`zeroskip.reference.validate_input`); with it the effective
        MACs are measured.

    Returns
    -------
    NetworkStats

    Warns
    -----
    zeroskip.errors.EmptyLayerWarning
        Naming every conv2d and linear layer without a nonzero weight.
    """
    work = reference.work(graph, x_int)
    warn_empty_layers(empty_layers(graph), f"graph {graph.name!r}")
    layers = []
    for name, layer_work in work.items():
        node = graph[name]
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            weight_storage, encoding = cheapest_encoding(node.weight, node.weight_bits)
            weight_bits, bias_bits = node.weight_bits, BIAS_BITS * node.out_channels
        else:
            weight_storage, encoding, weight_bits, bias_bits = 0, None, None, 0
        threshold = getattr(node, "threshold", None)
        requant_bits = _threshold_bits(threshold) if threshold is not None else \
            _requant_bits(node.requant, node.act)
        if isinstance(node, ir.Add):
            requant_bits += len(node.input_multipliers) * ir.MULTIPLIER_BITS
        layers.append(_layer_stats(
            name, node.op, weights=layer_work.weights,
            nonzero_weights=layer_work.nonzero_weights, weight_bits=weight_bits,
            weight_encoding=encoding, weight_storage_bits=weight_storage,
            bias_storage_bits=bias_bits, requant_storage_bits=requant_bits,
            dense_macs=layer_work.dense_macs, effective_macs=layer_work.effective_macs,
            effective_macs_total=layer_work.effective_macs_total))
    measured = x_int is not None
    batch_size = int(np.shape(x_int)[0]) if measured else None  # validated by work()
    effective_total = sum(layer.effective_macs_total for layer in layers) if measured else None
    total = _layer_stats(
        "total", "", weights=sum(layer.weights for layer in layers),
        nonzero_weights=sum(layer.nonzero_weights for layer in layers), weight_bits=None,
        weight_encoding=None,
        weight_storage_bits=sum(layer.weight_storage_bits for layer in layers),
        bias_storage_bits=sum(layer.bias_storage_bits for layer in layers),
        requant_storage_bits=sum(layer.requant_storage_bits for layer in layers),
        dense_macs=sum(layer.dense_macs for layer in layers),
        effective_macs=None if effective_total is None else effective_total / batch_size,
        effective_macs_total=effective_total)
    return NetworkStats(name=graph.name, layers=tuple(layers), total=total,
                        batch_size=batch_size)
