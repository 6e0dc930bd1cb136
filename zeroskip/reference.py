"""The golden integer model: what every zeroskip engine must compute, bit for bit.

Everything here follows the integer semantics in the :mod:`zeroskip.ir` module docstring and
nothing else. Every value is an ``int64`` numpy array; the float scales of the IR are never read.
The frontend, the Amaranth simulator and the cocotb/Verilator testbenches all compare against
:func:`run` (whole networks) or the per-op functions below (one layer at a time).

Speed without giving up exactness
---------------------------------
Convolutions are lowered to im2col + one matrix product per group. The product runs on BLAS in
floating point whenever a bound proves the result exact, and in plain ``int64`` otherwise:
every partial sum a BLAS kernel can form, in whatever order it adds (fused multiply-add
included), is a sum of a subset of the products ``w * x`` of one output, so its magnitude is at
most ``max|x| * sum|w|`` over the output's weights. When that bound is at most ``2**24``
(float32) or ``2**53`` (float64), every product and partial sum is an integer the format holds
exactly, so the float result equals the integer one. The bias is added afterwards in ``int64``.

Work counting
-------------
:func:`work` counts, per compute node, the weights, the nonzero weights, the dense MACs and,
given an input batch, the *effective* MACs: the (weight, activation) pairs in which both are
nonzero, zero padding counting as a zero activation. That is the work an ideal engine which
skips both zero weights and zero activations has to do. Binary activations (-1 / +1) are never
zero, so a binary layer's effective MACs are its nonzero weights times its unpadded taps.

Binary layers
-------------
Binary activations enter the sums as their values -1 and +1, through the same exact products;
a layer with a :class:`zeroskip.ir.Threshold` compares its accumulators (:func:`threshold`)
instead of requantizing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import ir
from .errors import ZeroskipError

__all__ = [
    "run", "run_layers", "validate_input", "conv2d", "conv2d_accumulate", "linear",
    "linear_accumulate", "maxpool2d", "avgpool2d", "add", "flatten", "requantize", "threshold",
    "LayerWork",
    "work",
]

# Largest magnitude up to which every integer is exact in each float format (mantissa + 1 bits).
FLOAT32_EXACT_LIMIT = 2**24
FLOAT64_EXACT_LIMIT = 2**53
INT64_MAX = 2**63 - 1

# im2col copies each input value kh * kw times, so it runs over the batch in chunks of at most
# this many column elements (16 MiB of float32): small enough to bound memory on big batches,
# large enough that each BLAS call amortizes its start-up (4x smaller chunks ran 2-5x slower).
_IM2COL_CHUNK_ELEMENTS = 1 << 22


# --- input checks --------------------------------------------------------------------------------

def _integer_array(value, what):
    """``value`` as an int64 array; a ZeroskipError unless it holds integers (not bools)."""
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise ZeroskipError(f"{what} must be an integer array, got dtype {array.dtype.name}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > INT64_MAX:
        raise ZeroskipError(f"{what} holds values beyond the int64 range")
    return array.astype(np.int64, copy=False)


def validate_input(graph, x_int):
    """Check an input batch against ``graph``'s input node and return it as int64.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : array_like of integers
        Shape ``(N,) + graph.input.shape`` with ``N >= 1``, every value inside the input
        activation's ``[qmin, qmax]``; -1 or +1 for a binary input.

    Raises
    ------
    ZeroskipError
        Saying whether the dtype, the shape or a value is wrong, and for a value, where (a float
        batch holding NaN or infinity says so first, see :func:`zeroskip.ir.check_finite`).
    """
    node = graph.input
    what = f"input batch for node {node.name!r}"
    array = np.asarray(x_int)
    if array.dtype.kind == "f":
        ir.check_finite(array, what)
    if array.dtype.kind not in "iu":
        raise ZeroskipError(f"{what} must be an integer array, got dtype {array.dtype.name}; "
                            "quantize real values with Graph.quantize_input first")
    expected = "(N, " + ", ".join(str(size) for size in node.shape) + ")"
    if array.shape[1:] != tuple(node.shape) or array.ndim != len(node.shape) + 1:
        raise ZeroskipError(f"{what} must have shape {expected}, got {array.shape}")
    if array.shape[0] < 1:
        raise ZeroskipError(f"{what} is empty: shape {array.shape} holds no sample")
    act = node.act
    for bad, bound in ((array < act.qmin, f"below qmin {act.qmin}"),
                       (array > act.qmax, f"above qmax {act.qmax}")):
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ZeroskipError(
                f"{what}: value {int(array[index])} at index {index} is {bound} of the "
                f"{act.bits}-bit {'signed' if act.signed else 'unsigned'} input encoding")
    if act.binary and (array == 0).any():
        index = tuple(int(i) for i in np.argwhere(array == 0)[0])
        raise ZeroskipError(f"{what}: value 0 at index {index} is not a binary activation "
                            "(-1 or +1)")
    return array.astype(np.int64, copy=False)


# --- requantization ------------------------------------------------------------------------------

def _per_channel(values, ndim, channel_axis):
    """Shape a per-channel (or single shared) parameter to broadcast along ``channel_axis``."""
    shape = [1] * ndim
    shape[channel_axis] = values.shape[0]
    return values.astype(np.int64).reshape(shape)


def requantize(acc, requant, channel_axis=1):
    """Requantize accumulators to output activations, exactly as :class:`zeroskip.ir.Requant`.

    Per channel ``c``::

        y = round_half_up(acc * multiplier[c], shift[c])  # (v + 2**(s-1)) >> s, or v if s == 0
        y = min(max(y, clamp_min), clamp_max)
        y = 0 where abs(y) <= epsilon

    ``>>`` is an arithmetic shift, so ties round towards +infinity for both signs
    (-2.5 -> -2, 2.5 -> 3); with ``requant.rounding == "half_even"`` a tie goes to the even
    neighbour instead (-2.5 -> -2, 2.5 -> 2, 3.5 -> 4).

    Parameters
    ----------
    acc : array_like of integers
        Accumulators, any shape; ``channel_axis`` indexes the channels.
    requant : zeroskip.ir.Requant
        ``multiplier`` and ``shift`` hold one entry per channel or one shared entry.
    channel_axis : int
        The axis of ``acc`` the per-channel entries run along (1 for NCHW and (N, features)).

    Returns
    -------
    numpy.ndarray
        int64, the shape of ``acc``.

    Raises
    ------
    ZeroskipError
        If ``acc`` is not an integer array, has the wrong channel count, or if ``acc *
        multiplier`` plus the rounding offset could leave int64 (the hardware's accumulator
        would then be too narrow too, so this is an error rather than a silent wrap).
    """
    return _requantize_in_place(_integer_array(acc, "accumulator").copy(), requant, channel_axis)


def _requantize_in_place(acc, requant, channel_axis):
    """:func:`requantize` on an int64 array this module owns, reusing its memory.

    Fresh memory is expensive (page faults) next to these few passes over it, so the ops
    requantize the accumulators they just computed in place.
    """
    shifts = np.asarray(requant.shift)
    if shifts.size and not 0 <= int(shifts.min()) <= int(shifts.max()) <= ir.MAX_SHIFT:
        raise ZeroskipError(f"requant.shift must lie in [0, {ir.MAX_SHIFT}], got "
                            f"{int(shifts.min())}..{int(shifts.max())}")
    if requant.clamp_min > requant.clamp_max:
        raise ZeroskipError(f"requant clamp range [{requant.clamp_min}, {requant.clamp_max}] "
                            "is empty")
    if not -acc.ndim <= channel_axis < acc.ndim:
        raise ZeroskipError(f"channel_axis {channel_axis} does not exist in an accumulator of "
                            f"shape {acc.shape}")
    channel_axis %= acc.ndim
    channels = acc.shape[channel_axis]
    for name in ("multiplier", "shift"):
        entries = getattr(requant, name).shape[0]
        if entries not in (1, channels):
            raise ZeroskipError(f"requant.{name} has {entries} entries but the accumulator has "
                                f"{channels} channels on axis {channel_axis}")
    largest_multiplier = int(requant.multiplier.max())
    largest_offset = 1 << max(int(requant.shift.max()) - 1, 0)
    if _max_abs(acc) * largest_multiplier + largest_offset > INT64_MAX:
        raise ZeroskipError(f"accumulator magnitude {_max_abs(acc)} times multiplier "
                            f"{largest_multiplier} overflows int64")
    multiplier = _per_channel(requant.multiplier, acc.ndim, channel_axis)
    shift = _per_channel(requant.shift, acc.ndim, channel_axis)
    # 2**(s-1) for s >= 1; a shift of 0 adds nothing (the value passes through unrounded).
    offset = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    acc *= multiplier
    # A tie: the bits shifted out are exactly one half (only when the shift is at least 1).
    tie = ((acc & ((np.int64(1) << shift) - 1)) == offset) & (shift > 0) \
        if requant.rounding == "half_even" else None
    acc += offset
    np.right_shift(acc, shift, out=acc)
    if tie is not None:
        # Half up took an odd tie one step above the even neighbour.
        acc -= tie & (acc & 1).astype(bool)
    np.clip(acc, requant.clamp_min, requant.clamp_max, out=acc)
    if requant.epsilon > 0:
        acc[np.abs(acc) <= requant.epsilon] = 0
    return acc


# --- thresholds ----------------------------------------------------------------------------------

def threshold(acc, threshold, channel_axis=1):
    """Threshold accumulators to binary outputs, exactly as :class:`zeroskip.ir.Threshold`.

    Per channel ``c``: ``y = +1 if signs[c] * acc >= thresholds[c] else -1`` (a tie gives +1).

    Parameters
    ----------
    acc : array_like of integers
        Accumulators, any shape; ``channel_axis`` indexes the channels.
    threshold : zeroskip.ir.Threshold
    channel_axis : int

    Returns
    -------
    numpy.ndarray
        int64 of -1 and +1, the shape of ``acc``.

    Raises
    ------
    ZeroskipError
        If ``acc`` is not an integer array or has the wrong channel count.
    """
    acc = _integer_array(acc, "accumulator")
    if not -acc.ndim <= channel_axis < acc.ndim:
        raise ZeroskipError(f"channel_axis {channel_axis} does not exist in an accumulator of "
                            f"shape {acc.shape}")
    channel_axis %= acc.ndim
    channels = acc.shape[channel_axis]
    for name in ("thresholds", "signs"):
        entries = getattr(threshold, name).shape[0]
        if entries != channels:
            raise ZeroskipError(f"threshold.{name} has {entries} entries but the accumulator "
                                f"has {channels} channels on axis {channel_axis}")
    signs = _per_channel(threshold.signs, acc.ndim, channel_axis)
    limits = _per_channel(threshold.thresholds, acc.ndim, channel_axis)
    return np.where(signs * acc >= limits, 1, -1).astype(np.int64)


def _activate(acc, node):
    """A weight layer's output stage: its threshold, else its requantizer (in place)."""
    if node.threshold is not None:
        return threshold(acc, node.threshold, channel_axis=1)
    return _requantize_in_place(acc, node.requant, channel_axis=1)


# --- exact integer matrix products ---------------------------------------------------------------

def _exact_dtype(max_abs_x, max_abs_weight_row_sum, max_abs_bias=0):
    """The cheapest dtype in which a product with these bounds is exact (see the module doc).

    The bias is added in int64 after the product, so it only matters for the overflow check.
    Raises ZeroskipError when not even int64 can hold the accumulators.
    """
    bound = int(max_abs_x) * int(max_abs_weight_row_sum)
    if bound <= FLOAT32_EXACT_LIMIT:
        return np.float32
    if bound <= FLOAT64_EXACT_LIMIT:
        return np.float64
    if bound + int(max_abs_bias) > INT64_MAX:
        raise ZeroskipError(f"accumulator bound {bound} (max |x| {int(max_abs_x)} times largest "
                            f"sum |w| {int(max_abs_weight_row_sum)}) plus bias "
                            f"{int(max_abs_bias)} overflows int64")
    return np.int64


def _max_abs(array):
    """Largest magnitude in an int64 array, as a Python int (0 when empty)."""
    return max(-int(array.min()), int(array.max())) if array.size else 0


def _check_bias(bias, out_channels):
    """The bias as int64 of shape (out_channels,); zeros when there is none."""
    if bias is None:
        return np.zeros(out_channels, dtype=np.int64)
    bias = _integer_array(bias, "bias")
    if bias.shape != (out_channels,):
        raise ZeroskipError(f"bias must have shape ({out_channels},), got {bias.shape}")
    return bias


def linear_accumulate(x, weight, bias=None):
    """``bias + x @ weight.T``, exactly, in int64: the accumulators of a Linear layer.

    Parameters
    ----------
    x : array_like of integers, shape (N, in_features)
    weight : array_like of integers, shape (out_features, in_features)
    bias : array_like of integers, shape (out_features,), optional

    Returns
    -------
    numpy.ndarray
        int64, shape (N, out_features).
    """
    x = _integer_array(x, "linear input")
    weight = _integer_array(weight, "linear weight")
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ZeroskipError(f"linear input {x.shape} does not match weight {weight.shape}: "
                            "expected (N, in_features) and (out_features, in_features)")
    bias = _check_bias(bias, weight.shape[0])
    row_sums = np.abs(weight).sum(axis=1)
    dtype = _exact_dtype(_max_abs(x), _max_abs(row_sums), _max_abs(bias))
    acc = (x.astype(dtype) @ weight.T.astype(dtype)).astype(np.int64)
    acc += bias
    return acc


def _conv_geometry(x_shape, weight_shape, stride, padding, groups):
    """Validate a convolution's shapes; return ``(out_h, out_w)``."""
    if len(x_shape) != 4 or len(weight_shape) != 4:
        raise ZeroskipError(f"conv2d needs an (N, C, H, W) input and an (out, in/groups, kh, kw) "
                            f"weight, got {x_shape} and {weight_shape}")
    _, channels, height, width = x_shape
    out_channels, group_channels, kh, kw = weight_shape
    if groups < 1 or out_channels % groups or group_channels * groups != channels:
        raise ZeroskipError(f"conv2d weight {weight_shape} with {groups} groups does not fit an "
                            f"input with {channels} channels")
    out_h = (height + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kw) // stride[1] + 1
    if out_h < 1 or out_w < 1 or min(stride) < 1 or min(padding) < 0:
        raise ZeroskipError(f"conv2d kernel {kh}x{kw} with stride {stride} and padding {padding} "
                            f"does not fit a {height}x{width} input")
    return out_h, out_w


def _pad(x, padding, value):
    """An NCHW int64 batch with ``padding`` rows and columns of ``value`` on each side."""
    n, c, h, w = x.shape
    ph, pw = padding
    padded = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=np.int64)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    return padded


def _window_offsets(padded, kernel, stride, out_shape):
    """For each kernel offset ``(a, b)``: the strided view of what it sees at every output.

    Yields ``(a, b, view)`` with ``view[n, c, i, j] = padded[n, c, i*sh + a, j*sw + b]``.
    """
    (sh, sw), (out_h, out_w) = stride, out_shape
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            yield a, b, padded[:, :, a:a + sh * (out_h - 1) + 1:sh, b:b + sw * (out_w - 1) + 1:sw]


def _window_reduce(padded, kernel, stride, ufunc):
    """Reduce every pooling window of a padded NCHW batch with ``ufunc`` (np.maximum, np.add)."""
    out_shape = ((padded.shape[2] - kernel[0]) // stride[0] + 1,
                 (padded.shape[3] - kernel[1]) // stride[1] + 1)
    result = None
    for _, _, view in _window_offsets(padded, kernel, stride, out_shape):
        result = view.copy() if result is None else ufunc(result, view, out=result)
    return result


def conv2d_accumulate(x, weight, bias=None, *, stride=(1, 1), padding=(0, 0), groups=1):
    """The accumulators of a 2-D convolution, exactly, in int64.

    ``acc[n, o, i, j] = bias[o] + sum_{c,a,b} weight[o, c, a, b] * x_pad[n, g*Cg + c, i*sh + a,
    j*sw + b]`` with zero padding, ``g`` the group of ``o`` and ``Cg = C / groups``: what
    ``torch.nn.functional.conv2d`` computes, on integers.

    Parameters
    ----------
    x : array_like of integers, shape (N, C, H, W)
    weight : array_like of integers, shape (out, C / groups, kh, kw)
    bias : array_like of integers, shape (out,), optional
    stride, padding : pair of int
    groups : int
        ``groups == C`` with one weight channel each is a depthwise convolution.

    Returns
    -------
    numpy.ndarray
        int64, shape (N, out, out_h, out_w).
    """
    x = _integer_array(x, "conv2d input")
    weight = _integer_array(weight, "conv2d weight")
    out_h, out_w = _conv_geometry(x.shape, weight.shape, stride, padding, groups)
    bias = _check_bias(bias, weight.shape[0])
    n, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    group_out = out_channels // groups
    depth = kh * kw * group_channels
    # im2col works channels-last: each window row is then kh*kw runs of contiguous channels,
    # which copies about twice as fast as gathering NCHW windows. Weights follow: (a, b, c).
    weight_rows = weight.reshape(groups, group_out, group_channels, kh, kw)
    weight_rows = weight_rows.transpose(0, 1, 3, 4, 2).reshape(groups, group_out, depth)
    dtype = _exact_dtype(_max_abs(x), _max_abs(np.abs(weight_rows).sum(axis=2)), _max_abs(bias))
    weight_t = weight_rows.transpose(0, 2, 1).astype(dtype)  # (groups, depth, group_out)

    acc = np.empty((n, out_channels, out_h, out_w), dtype=np.int64)
    chunk = max(1, _IM2COL_CHUNK_ELEMENTS // (out_h * out_w * channels * kh * kw))
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        size = part.shape[0]
        padded = np.zeros((size, height + 2 * ph, width + 2 * pw, channels), dtype=dtype)
        padded[:, ph:ph + height, pw:pw + width] = part.transpose(0, 2, 3, 1)
        windows = sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
        windows = windows.reshape(size, out_h, out_w, groups, group_channels, kh, kw)
        columns = windows.transpose(3, 0, 1, 2, 5, 6, 4).reshape(groups, -1, depth)
        products = columns @ weight_t  # (groups, size * out_h * out_w, group_out), exact
        products = products.reshape(groups, size, out_h, out_w, group_out)
        acc[start:start + size] = products.transpose(1, 0, 4, 2, 3).reshape(
            size, out_channels, out_h, out_w)
    acc += bias[:, None, None]
    return acc


# --- the ops -------------------------------------------------------------------------------------

def conv2d(node, x):
    """Golden Conv2d: accumulate with zero padding, then threshold or requantize per channel.

    Parameters
    ----------
    node : zeroskip.ir.Conv2d
    x : array_like of integers, shape (N, C, H, W)

    Returns
    -------
    numpy.ndarray
        int64, shape (N, out, out_h, out_w), inside ``node.act``'s range.
    """
    acc = conv2d_accumulate(x, node.weight, node.bias, stride=node.stride,
                            padding=node.padding, groups=node.groups)
    return _activate(acc, node)


def linear(node, x):
    """Golden Linear: ``bias + x @ weight.T``, then threshold or requantize per feature.

    Parameters
    ----------
    node : zeroskip.ir.Linear
    x : array_like of integers, shape (N, in_features)

    Returns
    -------
    numpy.ndarray
        int64, shape (N, out_features).
    """
    return _activate(linear_accumulate(x, node.weight, node.bias), node)


def _check_pool_input(x, what):
    x = _integer_array(x, what)
    if x.ndim != 4:
        raise ZeroskipError(f"{what} must be (N, C, H, W), got shape {x.shape}")
    return x


def maxpool2d(node, x, in_act):
    """Golden MaxPool2d: window maxima, padding with ``in_act.qmin``.

    Padding with the smallest value of the input's range (rather than 0) makes padding never win
    for signed inputs, as torch's ``-inf`` padding.

    Parameters
    ----------
    node : zeroskip.ir.MaxPool2d
    x : array_like of integers, shape (N, C, H, W)
    in_act : zeroskip.ir.Activation
        The encoding of ``x`` (the producing node's ``act``).

    Returns
    -------
    numpy.ndarray
        int64, shape (N, C, out_h, out_w).
    """
    x = _check_pool_input(x, "maxpool2d input")
    return _window_reduce(_pad(x, node.padding, in_act.qmin), node.kernel, node.stride,
                          np.maximum)


def avgpool2d(node, x):
    """Golden AvgPool2d (no padding): the window sum, requantized per channel.

    The requantizer's ``multiplier / 2**shift`` carries the ``1 / window`` factor. A kernel the
    size of the input is a global average pool.

    Parameters
    ----------
    node : zeroskip.ir.AvgPool2d
    x : array_like of integers, shape (N, C, H, W)

    Returns
    -------
    numpy.ndarray
        int64, shape (N, C, out_h, out_w).
    """
    x = _check_pool_input(x, "avgpool2d input")
    window_sums = _window_reduce(x, node.kernel, node.stride, np.add)
    return _requantize_in_place(window_sums, node.requant, channel_axis=1)


def add(node, a, b):
    """Golden Add: ``a * input_multipliers[0] + b * input_multipliers[1]``, requantized.

    Parameters
    ----------
    node : zeroskip.ir.Add
    a, b : array_like of integers, the same shape (N, C, H, W) or (N, features)

    Returns
    -------
    numpy.ndarray
        int64, the shape of ``a``; channels (axis 1) take the per-channel requant entries.
    """
    a = _integer_array(a, "add input a")
    b = _integer_array(b, "add input b")
    if a.shape != b.shape:
        raise ZeroskipError(f"add inputs differ in shape: {a.shape} and {b.shape}")
    scale_a, scale_b = node.input_multipliers
    return _requantize_in_place(a * scale_a + b * scale_b, node.requant, channel_axis=1)


def flatten(x):
    """Golden Flatten: ``(N, C, H, W)`` to ``(N, C*H*W)`` in C-major order, as ``torch.flatten``.

    Parameters
    ----------
    x : array_like of integers, shape (N, ...)

    Returns
    -------
    numpy.ndarray
        int64, shape (N, prod(...)).
    """
    x = _integer_array(x, "flatten input")
    return x.reshape(x.shape[0], -1)


# --- whole graphs --------------------------------------------------------------------------------

def _execute(graph, node, values):
    """Run one node on the already computed ``values`` of its inputs."""
    inputs = [values[name] for name in node.inputs]
    if isinstance(node, ir.Conv2d):
        return conv2d(node, inputs[0])
    if isinstance(node, ir.Linear):
        return linear(node, inputs[0])
    if isinstance(node, ir.MaxPool2d):
        return maxpool2d(node, inputs[0], graph.acts[node.input])
    if isinstance(node, ir.AvgPool2d):
        return avgpool2d(node, inputs[0])
    if isinstance(node, ir.Add):
        return add(node, inputs[0], inputs[1])
    if isinstance(node, ir.Flatten):
        return flatten(inputs[0])
    raise ZeroskipError(f"node {node.name!r}: the reference model has no op {node.op!r}")


def run_layers(graph, x_int):
    """Every node's output on an input batch, for debugging and layer-by-layer comparison.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : array_like of integers, shape (N,) + graph.input.shape

    Returns
    -------
    dict[str, numpy.ndarray]
        Node name to its int64 output batch, in the graph's topological order (the input node
        maps to the validated input).
    """
    values = {}
    for node in graph.nodes:
        if isinstance(node, ir.Input):
            values[node.name] = validate_input(graph, x_int)
        else:
            values[node.name] = _execute(graph, node, values)
    return values


def run(graph, x_int):
    """Run the network on an input batch; the output node's batch, int64.

    Only the output's ancestors are computed, and each intermediate result is released once
    its last consumer has run, so large batches need little more memory than one layer's.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : array_like of integers
        Shape ``(N,) + graph.input.shape``, values inside the input activation's range
        (see :func:`validate_input`).

    Returns
    -------
    numpy.ndarray
        int64, shape ``(N,) + graph.shapes[graph.output]``.

    Raises
    ------
    ZeroskipError
        If ``x_int`` has the wrong dtype, shape or values.
    """
    needed = {graph.output}
    for node in reversed(graph.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    pending_reads = {name: 0 for name in needed}
    for node in graph.nodes:
        if node.name in needed:
            for source in node.inputs:
                pending_reads[source] += 1
    values = {}
    for node in graph.nodes:
        if node.name not in needed:
            continue
        if isinstance(node, ir.Input):
            values[node.name] = validate_input(graph, x_int)
            continue
        values[node.name] = _execute(graph, node, values)
        for source in node.inputs:
            pending_reads[source] -= 1
            if pending_reads[source] == 0 and source != graph.output:
                del values[source]
    return values[graph.output]


# --- work counting -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerWork:
    """The arithmetic one compute node does per inference.

    Attributes
    ----------
    name, op : str
        The node.
    weights : int
        Number of weight parameters (0 for avgpool2d and add, which store none).
    nonzero_weights : int
    dense_macs : int
        Multiply-accumulates per inference of a dense engine, padded positions included
        (``out_elements * in_channels/groups * kh * kw`` for conv2d, ``out * in`` for linear).
    effective_macs : float or None
        Mean over the batch of the pairs in which both the weight and the activation are
        nonzero (padding counts as a zero activation); None without an input batch.
    effective_macs_total : int or None
        The same, summed over the batch (exact).
    batch_size : int or None
        Samples the effective counts were taken over.

    Notes
    -----
    AvgPool2d and Add are listed with 0 weights and 0 MACs: their window sums and
    input-multiplier scalings are additions and per-element constant scalings done beside the
    requantizer (like the requant multiply every layer has), not weight-activation products, so
    they would only blur the figure engines are measured by: effective MACs per multiplier.
    """

    name: str
    op: str
    weights: int
    nonzero_weights: int
    dense_macs: int
    effective_macs: float | None = None
    effective_macs_total: int | None = None
    batch_size: int | None = None


def _conv_effective_macs(node, x):
    """Pairs with nonzero weight and nonzero (unpadded) activation, summed over the batch.

    The pair count factorizes: output ``o`` at position ``p`` pairs weight ``(o, c, a, b)`` with
    input ``(c', p + (a, b))``, so summing over outputs and positions gives
    ``sum_{o,c,a,b} [w != 0] * S[g(o)*C/G + c, a, b]`` where ``S[c, a, b]`` counts the nonzero
    inputs of channel ``c`` that kernel offset ``(a, b)`` visits over every output position and
    sample. That is exactly the dense count of the convolution run on the nonzero masks, with
    no matrix product.
    """
    out_channels, group_channels, kh, kw = node.weight.shape
    groups = node.groups
    out_h, out_w = _conv_geometry(x.shape, node.weight.shape, node.stride, node.padding, groups)
    nonzero = _pad(x != 0, node.padding, 0)
    visits = np.empty((x.shape[1], kh, kw), dtype=np.int64)
    for a, b, view in _window_offsets(nonzero, (kh, kw), node.stride, (out_h, out_w)):
        visits[:, a, b] = view.sum(axis=(0, 2, 3))
    weight_nonzero = (node.weight != 0).reshape(groups, out_channels // groups, -1)
    visits = visits.reshape(groups, group_channels * kh * kw)
    return int(np.einsum("gok,gk->", weight_nonzero.astype(np.int64), visits))


def _linear_effective_macs(node, x):
    """``sum_{o,k} [w[o,k] != 0] * #{n : x[n,k] != 0}``, exactly (see _conv_effective_macs)."""
    weight_nonzero = (node.weight != 0).sum(axis=0, dtype=np.int64)
    return int(weight_nonzero @ (x != 0).sum(axis=0, dtype=np.int64))


def work(graph, x_int=None):
    """Weights, dense MACs and (given inputs) effective MACs of every compute node.

    Parameters
    ----------
    graph : zeroskip.ir.Graph
    x_int : array_like of integers, optional
        An input batch (see :func:`validate_input`); the effective MACs are measured on it.

    Returns
    -------
    dict[str, LayerWork]
        One entry per conv2d, linear, avgpool2d and add node, in topological order.
    """
    values = run_layers(graph, x_int) if x_int is not None else None
    batch_size = None if values is None else int(values[graph.input.name].shape[0])
    result = {}
    for node in graph.nodes:
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            weights = int(node.weight.size)
            nonzero_weights = int(np.count_nonzero(node.weight))
            out_elements = int(np.prod(graph.shapes[node.name]))
            dense_macs = out_elements * (weights // node.out_channels)
        elif isinstance(node, (ir.AvgPool2d, ir.Add)):
            weights = nonzero_weights = dense_macs = 0
        else:
            continue
        effective = {}
        if values is not None:
            x = values[node.input]
            if isinstance(node, ir.Conv2d):
                total = _conv_effective_macs(node, x)
            elif isinstance(node, ir.Linear):
                total = _linear_effective_macs(node, x)
            else:
                total = 0
            effective = {"effective_macs": total / batch_size, "effective_macs_total": total,
                         "batch_size": batch_size}
        result[node.name] = LayerWork(name=node.name, op=node.op, weights=weights,
                                      nonzero_weights=nonzero_weights, dense_macs=dense_macs,
                                      **effective)
    return result
