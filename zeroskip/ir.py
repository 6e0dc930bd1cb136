"""The layer IR: the contract between the frontend and the hardware.

A :class:`Graph` is a frozen, validated set of typed nodes. Every tensor in it is an integer array;
the float scales that come along only say what the integers mean (``real = integer * scale``) and
are never used by the golden model or the hardware.

Integer semantics (the golden model in :mod:`zeroskip.reference` and every engine follow these
exactly):

* Activations are symmetric with zero point 0, so a real zero is the integer 0 and can be skipped.
  An :class:`Activation` is ``bits`` wide (2..8), signed or unsigned, or **binary**: ``bits=1``,
  signed, values -1 and +1 only (never 0).
* Weights are symmetric per output channel, in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``;
  ``weight_bits=2`` is ternary {-1, 0, +1}, and binary weights are ternary ones without zeros.
* Conv2d and Linear accumulate ``acc = bias + sum(weight * x)`` exactly (a padded tap adds
  nothing, for binary inputs too), then either requantize (:class:`Requant`) or threshold
  (:class:`Threshold`: a binary output). AvgPool2d requantizes the window sum. Add requantizes
  ``a * input_multipliers[0] + b * input_multipliers[1]``.
* Requantization (:class:`Requant`), per output channel ``c``::

      y = round_half_up(acc * multiplier[c], shift[c])       # (v + 2**(s-1)) >> s, or v if s == 0
      y = min(max(y, clamp_min), clamp_max)                   # fused ReLU / ReLU6 / saturation
      y = 0 where abs(y) <= epsilon                           # dynamic feature-map pruning

  ``>>`` is an arithmetic shift (floor division by a power of two), so the rounding rule is
  *round half up* (towards +infinity) for both signs. ``rounding="half_even"`` rounds a tie
  (``v mod 2**s == 2**(s-1)``) to the even neighbour instead, as numpy's and ONNX's round do
  (what QONNX's ``ROUND`` means). ``epsilon == 0`` turns pruning off.
* Thresholding (:class:`Threshold`), per output channel ``c``: BatchNorm followed by sign,
  folded (as FINN does)::

      y = +1 if signs[c] * acc >= thresholds[c] else -1

* MaxPool2d pads with the smallest value of its input's range (so a binary input stays binary);
  Flatten is C-major, as torch's. AvgPool2d and Add take no binary input.

File format version 2 added binary activations and thresholds, version 3 the requantizers'
rounding mode; version-1 and version-2 files still load (rounding half up).

Bounds: node and graph names are 1..128 printable ASCII characters, and every graph (loaded or
built in memory) stays within :class:`Limits` (file sizes, node count, shapes, windows,
activations and MACs per inference), which ``ZEROSKIP_LIMITS`` or a ``limits=`` argument raise.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import ClassVar, Union

import numpy as np

from .errors import GraphError, ZeroskipError

__all__ = [
    "IR_VERSION", "READABLE_VERSIONS", "FILE_FORMAT", "MIN_BITS", "MAX_BITS", "BINARY_BITS",
    "MULTIPLIER_BITS", "MAX_SHIFT", "ROUNDING_MODES", "MAX_NAME_LENGTH", "LIMITS_VARIABLE", "Limits", "check_finite",
    "Activation", "Requant", "Threshold", "Input", "WeightLayer", "Conv2d", "Linear", "MaxPool2d",
    "AvgPool2d", "Add", "Flatten", "Node", "Graph", "load", "weight_range", "activation_range",
]

IR_VERSION = 3
# Version 1 had no binary activations and no thresholds, version 2 no rounding mode: their files
# load unchanged.
READABLE_VERSIONS = (1, 2, 3)
FILE_FORMAT = "zeroskip-graph"
GRAPH_MEMBER = "graph.json"

MIN_BITS, MAX_BITS = 2, 8
BINARY_BITS = 1
# Requant multipliers are unsigned 16-bit so that acc * multiplier maps onto one 16x16 (iCE40
# SB_MAC16) or 18x18 (ECP5) multiplier input; 15 significant bits leave int8 outputs exact enough.
MULTIPLIER_BITS = 16
MAX_SHIFT = 62
# How a requantizer rounds a tie: towards +infinity, or to the even neighbour.
ROUNDING_MODES = ("half_up", "half_even")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Names end up in Verilog identifiers, file names ("zeroskip_<graph name>.v") and one-line error
# messages: printable ASCII keeps all three well formed, 128 characters keeps file names far
# below the usual 255-byte limit.
MAX_NAME_LENGTH = 128
LIMITS_VARIABLE = "ZEROSKIP_LIMITS"
# Longest message text and node name an error shows; longer ones keep their two ends.
_MESSAGE_CHARS = 300
_NODE_LABEL_CHARS = 60


@dataclass(frozen=True)
class Limits:
    """Bounds on what a graph may ask of the machine; each a positive integer.

    The defaults leave ample headroom over the MLPerf Tiny networks (MobileNetV1-0.25 on
    96x96x3: ~7.5 M MACs, ~0.5 M weights; ResNet-8: ~12.5 M MACs) while keeping a hostile file
    to seconds and a few hundred MB. :func:`load` applies the file bounds; constructing a
    :class:`Graph` applies the others, so graphs built in memory are bounded too.

    ``ZEROSKIP_LIMITS="macs=5e9,activations=2e8"`` raises (or lowers) any of them wherever no
    ``limits=`` argument is given, the command line included.

    Attributes
    ----------
    directory_bytes : int
        The zip's central directory (one entry per member).
    json_bytes : int
        ``graph.json`` inflated; also a build directory's ``manifest.json`` and ``sim.json``
        (:mod:`zeroskip.build`).
    tensor_bytes : int
        Every tensor member read, inflated, together (members the JSON never names are skipped).
    nodes : int
    dimension : int
        Each entry of the input node's shape.
    kernel, stride, padding : int
        Each entry of a conv or pool's window size, stride and padding.
    activations : int
        Output elements of all nodes together (the input included), per inference.
    macs : int
        Per inference: dense multiply-accumulates of conv2d and linear layers plus the window
        reads of pools.
    model_bytes : int
        An ONNX model file the QONNX importer reads (:mod:`zeroskip.frontend.qonnx`).
    """

    directory_bytes: int = 16 << 20
    json_bytes: int = 16 << 20
    tensor_bytes: int = 256 << 20
    nodes: int = 10_000
    dimension: int = 65_536
    kernel: int = 256
    stride: int = 256
    padding: int = 256
    activations: int = 10**8
    macs: int = 10**9
    model_bytes: int = 256 << 20

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ZeroskipError(f"limit {f.name} must be a positive integer, got {value!r}")

    @classmethod
    def from_environment(cls, environ=None):
        """The defaults, replaced by those ``ZEROSKIP_LIMITS`` sets (``name=N,...``; ``N`` may
        be written ``2e9`` or ``2_000_000_000``). A malformed one raises :class:`ZeroskipError`."""
        text = (os.environ if environ is None else environ).get(LIMITS_VARIABLE, "")
        values = {}
        names = [f.name for f in fields(cls)]
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, equals, number = (part.strip() for part in item.partition("="))
            if name not in names or not equals:
                raise ZeroskipError(f"{LIMITS_VARIABLE}: {item!r} is not NAME=N with NAME one "
                                    f"of {', '.join(names)}")
            values[name] = _limit_value(number, name)
        try:
            return cls(**values)
        except ZeroskipError as error:
            raise ZeroskipError(f"{LIMITS_VARIABLE}: {error}") from None

    def check(self, value, name, what, node=None, field=None, unit=""):
        """If ``value`` exceeds limit ``name``, raise a GraphError: "<what> <value><unit>, above
        the limit <name>=<bound> (raise it with ...)"."""
        bound = getattr(self, name)
        if value > bound:
            # Python formats integers of more than 4300 digits only on request.
            shown = f"{value:,}" if value < 10**30 else f"about 2^{value.bit_length() - 1}"
            raise GraphError(f"{what} {shown}{unit}, above the limit {name}={bound:,} (raise "
                             f"it with {LIMITS_VARIABLE}=\"{name}=N\" or ir.Limits)",
                             node=_node_label(node), field=field)


def _limit_value(text, name):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer()):
        raise ZeroskipError(f"{LIMITS_VARIABLE}: {name}={text!r} is not a whole number")
    return int(value)


def _limits(limits):
    """``limits`` itself, or the environment's (:meth:`Limits.from_environment`) for None."""
    if limits is None:
        return Limits.from_environment()
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a zeroskip.ir.Limits, got {type(limits).__name__}")
    return limits


def _clip(text, limit=_MESSAGE_CHARS):
    """``text`` cut to about ``limit`` characters, keeping both ends (where and what)."""
    if len(text) <= limit:
        return text
    head, tail = limit * 3 // 4, limit // 4
    return f"{text[:head]} ...({len(text) - head - tail:,} characters left out)... {text[-tail:]}"


def _node_label(node):
    return _clip(node, _NODE_LABEL_CHARS) if isinstance(node, str) else node


def _check_name(name, node, field):
    """A node's or the graph's name: 1..MAX_NAME_LENGTH printable ASCII characters."""
    _check(isinstance(name, str), lambda: f"must be a string, got {name!r}", node, field)
    _check(name, "must be a non-empty string", node, field)
    _check(len(name) <= MAX_NAME_LENGTH, lambda: f"is {len(name):,} characters long; names "
           f"hold at most {MAX_NAME_LENGTH}", node, field)
    _check(name.isascii() and name.isprintable(), lambda: f"{name!r} holds a character other "
           "than printable ASCII", node, field)


def check_finite(x, what):
    """Raise :class:`ZeroskipError` at the first (C order) NaN or infinite value of the float
    batch ``x``, as "``what``: input 3 at (0, 4, 5) is NaN" (the sample, then the position)."""
    finite = np.isfinite(x)
    if finite.all():
        return
    index = tuple(int(i) for i in np.unravel_index(np.argmin(finite), x.shape))
    value = float(x[index])
    kind = "NaN" if math.isnan(value) else "+inf" if value > 0 else "-inf"
    where = "input" if not index else f"input {index[0]}" + (
        f" at {index[1:]}" if len(index) > 1 else "")
    raise ZeroskipError(f"{what}: {where} is {kind}")


def activation_range(bits, signed):
    """Smallest and largest integer of a ``bits``-wide activation, signed or not.

    A binary activation (``bits == 1``, signed) takes -1 and +1: its range is (-1, 1) although 0
    is not one of its values.
    """
    if bits == BINARY_BITS:
        return -1, 1
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def weight_range(bits):
    """Smallest and largest integer weight of a ``bits``-wide symmetric weight."""
    limit = 2 ** (bits - 1) - 1
    return -limit, limit


@cache
def _fields_of(cls):
    """``dataclasses.fields(cls)``, computed once per class (it is asked once per node)."""
    return fields(cls)


def _check(condition, message, node=None, field=None):
    """Raise a GraphError unless ``condition``. ``message`` is text, or a function making it
    (for checks run per node, where formatting it every time costs more than checking)."""
    if not condition:
        text = message() if callable(message) else message
        # Only a numpy array's repr (a tensor where a number was due) spans lines: one line.
        text = " ".join(line.strip() for line in text.splitlines())
        raise GraphError(_clip(text), node=_node_label(node), field=field)


def _check_int(value, name, node, *, low=None, high=None):
    _check(isinstance(value, int) and not isinstance(value, bool),
           f"must be an integer, got {value!r}", node, name)
    if low is not None:
        _check(value >= low, f"must be >= {low}, got {value}", node, name)
    if high is not None:
        _check(value <= high, f"must be <= {high}, got {value}", node, name)


def _check_pair(value, name, node, *, low):
    _check(isinstance(value, tuple) and len(value) == 2,
           f"must be a pair of integers, got {value!r}", node, name)
    for item in value:
        _check_int(item, name, node, low=low)


def _check_tensor(array, name, node, dtype, shape=None):
    _check(isinstance(array, np.ndarray), f"must be a numpy array, got {type(array).__name__}",
           node, name)
    _check(array.dtype == np.dtype(dtype),
           f"tensor must have dtype {np.dtype(dtype).name} ({np.dtype(dtype).str}), got "
           f"{array.dtype.name} ({array.dtype.str})", node, name)
    if shape is not None:
        _check(array.shape == tuple(shape),
               f"tensor must have shape {tuple(shape)}, got {array.shape}", node, name)


def _check_values(array, name, node, low, high, what):
    if array.size:
        lo, hi = int(array.min()), int(array.max())
        _check(lo >= low and hi <= high,
               f"values must lie in [{low}, {high}] ({what}), found {lo}..{hi}", node, name)


def _frozen_array(array):
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class Activation:
    """How a stream of activations is encoded: ``bits`` wide, signed or not, ``real = q * scale``.

    ``bits == 1`` is a binary activation: signed, values -1 and +1 (``real = +-scale``).
    """

    bits: int
    signed: bool
    scale: float

    def __post_init__(self):
        _check_int(self.bits, "bits", None, low=BINARY_BITS, high=MAX_BITS)
        _check(isinstance(self.signed, bool), f"must be true or false, got {self.signed!r}",
               None, "signed")
        _check(self.signed or self.bits != BINARY_BITS, "a binary (1-bit) activation must be "
               "signed: its values are -1 and +1", None, "signed")
        _check(isinstance(self.scale, float) and np.isfinite(self.scale) and self.scale > 0,
               f"must be a positive finite number, got {self.scale!r}", None, "scale")

    @property
    def qmin(self):
        return activation_range(self.bits, self.signed)[0]

    @property
    def qmax(self):
        return activation_range(self.bits, self.signed)[1]

    @property
    def binary(self):
        return self.bits == BINARY_BITS


@dataclass(frozen=True, eq=False)
class Requant:
    """Integer requantization of an accumulator to an output activation (see the module doc).

    ``multiplier`` and ``shift`` hold one entry per output channel, or a single entry shared by
    all channels; ``rounding`` is one of :data:`ROUNDING_MODES`.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    clamp_min: int
    clamp_max: int
    epsilon: int = 0
    rounding: str = "half_up"

    def __post_init__(self):
        object.__setattr__(self, "multiplier", _frozen_array(self.multiplier))
        object.__setattr__(self, "shift", _frozen_array(self.shift))

    def validate(self, node, channels, act):
        """Check against the ``channels`` it scales and the output :class:`Activation`."""
        for name in ("multiplier", "shift"):
            array = getattr(self, name)
            _check_tensor(array, f"requant.{name}", node, np.int32)
            _check(array.shape in ((channels,), (1,)),
                   f"tensor must have shape ({channels},) or (1,), got {array.shape}",
                   node, f"requant.{name}")
        _check_values(self.multiplier, "requant.multiplier", node, 0, 2**MULTIPLIER_BITS - 1,
                      f"unsigned {MULTIPLIER_BITS}-bit")
        _check_values(self.shift, "requant.shift", node, 0, MAX_SHIFT, "shift amount")
        _check(not act.binary, "a requantized output cannot be binary (1-bit); a binary output "
               "comes from a threshold", node, "act")
        _check_int(self.clamp_min, "requant.clamp_min", node, low=act.qmin, high=act.qmax)
        _check_int(self.clamp_max, "requant.clamp_max", node, low=self.clamp_min, high=act.qmax)
        _check_int(self.epsilon, "requant.epsilon", node, low=0)
        _check(self.rounding in ROUNDING_MODES, lambda: f"must be one of "
               f"{', '.join(ROUNDING_MODES)}, got {self.rounding!r}", node, "requant.rounding")


@dataclass(frozen=True, eq=False)
class Threshold:
    """BatchNorm and sign folded into one comparison per output channel (see the module doc).

    ``y[c] = +1 if signs[c] * acc[c] >= thresholds[c] else -1``; ``thresholds`` is int64 and
    ``signs`` int8 of +1 / -1 (-1 where the folded BatchNorm scale is negative), one per channel.
    """

    thresholds: np.ndarray
    signs: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "thresholds", _frozen_array(self.thresholds))
        object.__setattr__(self, "signs", _frozen_array(self.signs))

    def validate(self, node, channels, act):
        """Check against the ``channels`` it compares and the output :class:`Activation`."""
        _check_tensor(self.thresholds, "threshold.thresholds", node, np.int64, (channels,))
        _check_tensor(self.signs, "threshold.signs", node, np.int8, (channels,))
        _check(bool(np.all(np.abs(self.signs) == 1)), "values must be +1 or -1",
               node, "threshold.signs")
        _check(act.binary, f"a thresholded output must be binary (bits 1), got bits {act.bits}",
               node, "act")


@dataclass(frozen=True, eq=False)
class Node:
    """Common fields: a unique ``name`` and the names of the nodes it reads, ``inputs``."""

    name: str
    inputs: tuple[str, ...]

    op: ClassVar[str]
    arity: ClassVar[int] = 1

    def __post_init__(self):
        for f in _fields_of(type(self)):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                object.__setattr__(self, f.name, _frozen_array(value))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    @property
    def input(self):
        return self.inputs[0]

    def infer(self, in_shapes, in_acts):
        """Validate against the inputs' shapes and activations; return ``(shape, activation)``."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Input(Node):
    """The network input: ``shape`` is ``(C, H, W)`` or ``(features,)``, without the batch."""

    shape: tuple[int, ...] = ()
    act: Activation = None

    op: ClassVar[str] = "input"
    arity: ClassVar[int] = 0

    def infer(self, in_shapes, in_acts):
        _check(isinstance(self.shape, tuple) and len(self.shape) in (1, 3),
               f"must be (C, H, W) or (features,), got {self.shape!r}", self.name, "shape")
        for size in self.shape:
            _check_int(size, "shape", self.name, low=1)
        _check(isinstance(self.act, Activation), "must be an Activation", self.name, "act")
        return self.shape, self.act


def _check_weight_layer(node, out_channels):
    """Fields shared by Conv2d and Linear: weight, bias, weight_bits, weight_scale, act, and
    exactly one of requant and threshold. Any input encoding is allowed."""
    _check_int(node.weight_bits, "weight_bits", node.name, low=MIN_BITS, high=MAX_BITS)
    _check_tensor(node.weight, "weight", node.name, np.int8)
    low, high = weight_range(node.weight_bits)
    _check_values(node.weight, "weight", node.name, low, high,
                  f"symmetric {node.weight_bits}-bit")
    _check_tensor(node.bias, "bias", node.name, np.int32, (out_channels,))
    _check_tensor(node.weight_scale, "weight_scale", node.name, np.float64, (out_channels,))
    _check(bool(np.all(np.isfinite(node.weight_scale)) and np.all(node.weight_scale > 0)),
           "values must be positive and finite", node.name, "weight_scale")
    _check(isinstance(node.act, Activation), "must be an Activation", node.name, "act")
    _check(node.threshold is None or isinstance(node.threshold, Threshold),
           "must be a Threshold or null", node.name, "threshold")
    _check(node.requant is None or isinstance(node.requant, Requant), "must be a Requant or null",
           node.name, "requant")
    _check((node.requant is None) != (node.threshold is None),
           "a weight layer needs exactly one of requant and threshold, got "
           f"{'both' if node.requant is not None else 'neither'}", node.name, "requant")
    if node.threshold is not None:
        node.threshold.validate(node.name, out_channels, node.act)
    else:
        node.requant.validate(node.name, out_channels, node.act)


def _check_not_binary(node, in_acts):
    for source, act in zip(node.inputs, in_acts):
        _check(not act.binary, f"input {source!r} is binary; {node.op} takes only 2..8-bit "
               "inputs", node.name, "inputs")


@dataclass(frozen=True, eq=False)
class WeightLayer(Node):
    """Fields shared by Conv2d and Linear: int8 ``weight`` (output channels first), int32
    ``bias``, the weight width and the per-channel weight scale."""

    weight: np.ndarray = None
    bias: np.ndarray = None
    weight_bits: int = 8
    weight_scale: np.ndarray = None

    @property
    def out_channels(self):
        return self.weight.shape[0]


@dataclass(frozen=True, eq=False)
class Conv2d(WeightLayer):
    """2-D convolution; ``weight`` is ``(out, in / groups, kh, kw)`` int8."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    requant: Requant | None = None
    act: Activation = None
    threshold: Threshold | None = None

    op: ClassVar[str] = "conv2d"

    @property
    def kernel(self):
        return self.weight.shape[2], self.weight.shape[3]

    def infer(self, in_shapes, in_acts):
        (shape,) = in_shapes
        _check(len(shape) == 3, f"input {self.input!r} must be (C, H, W), got {shape}",
               self.name, "inputs")
        _check_tensor(self.weight, "weight", self.name, np.int8)
        _check(self.weight.ndim == 4, f"tensor must be 4-D (out, in/groups, kh, kw), "
               f"got shape {self.weight.shape}", self.name, "weight")
        _check(min(self.weight.shape) >= 1, f"tensor shape {self.weight.shape} has an empty "
               "dimension", self.name, "weight")
        _check_pair(self.stride, "stride", self.name, low=1)
        _check_pair(self.padding, "padding", self.name, low=0)
        _check_int(self.groups, "groups", self.name, low=1)
        channels, height, width = shape
        out_channels, group_channels, kh, kw = self.weight.shape
        _check(channels % self.groups == 0 and out_channels % self.groups == 0,
               f"{self.groups} groups must divide both {channels} input and {out_channels} "
               "output channels", self.name, "groups")
        _check(group_channels * self.groups == channels,
               f"weight expects {group_channels * self.groups} input channels but input "
               f"{self.input!r} has {channels}", self.name, "weight")
        out_h = (height + 2 * self.padding[0] - kh) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - kw) // self.stride[1] + 1
        _check(out_h >= 1 and out_w >= 1,
               f"kernel {kh}x{kw} does not fit the padded {height}x{width} input",
               self.name, "weight")
        _check_weight_layer(self, out_channels)
        return (out_channels, out_h, out_w), self.act


@dataclass(frozen=True, eq=False)
class Linear(WeightLayer):
    """Fully connected layer on a flat input; ``weight`` is ``(out, in)`` int8."""

    requant: Requant | None = None
    act: Activation = None
    threshold: Threshold | None = None

    op: ClassVar[str] = "linear"

    def infer(self, in_shapes, in_acts):
        (shape,) = in_shapes
        _check(len(shape) == 1, f"input {self.input!r} must be flat (features,), got {shape}; "
               "add a flatten node", self.name, "inputs")
        _check_tensor(self.weight, "weight", self.name, np.int8)
        _check(self.weight.ndim == 2,
               f"tensor must be 2-D (out, in), got shape {self.weight.shape}", self.name, "weight")
        _check(self.weight.shape[0] >= 1, "tensor has no output features (shape "
               f"{self.weight.shape})", self.name, "weight")
        _check(self.weight.shape[1] == shape[0],
               f"weight expects {self.weight.shape[1]} input features but input "
               f"{self.input!r} has {shape[0]}", self.name, "weight")
        _check_weight_layer(self, self.weight.shape[0])
        return (self.weight.shape[0],), self.act


def _pool_output(node, shape, padding):
    _check(len(shape) == 3, f"input {node.input!r} must be (C, H, W), got {shape}",
           node.name, "inputs")
    _check_pair(node.kernel, "kernel", node.name, low=1)
    _check_pair(node.stride, "stride", node.name, low=1)
    channels, height, width = shape
    out_h = (height + 2 * padding[0] - node.kernel[0]) // node.stride[0] + 1
    out_w = (width + 2 * padding[1] - node.kernel[1]) // node.stride[1] + 1
    _check(out_h >= 1 and out_w >= 1, f"window {node.kernel} does not fit the {height}x{width} "
           "input", node.name, "kernel")
    return channels, out_h, out_w


@dataclass(frozen=True, eq=False)
class MaxPool2d(Node):
    """Max pooling; keeps its input's activation encoding."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)

    op: ClassVar[str] = "maxpool2d"

    def infer(self, in_shapes, in_acts):
        _check_pair(self.kernel, "kernel", self.name, low=1)
        _check_pair(self.padding, "padding", self.name, low=0)
        _check(all(2 * p <= k for p, k in zip(self.padding, self.kernel)),
               f"padding {self.padding} must be at most half the window {self.kernel}",
               self.name, "padding")
        return _pool_output(self, in_shapes[0], self.padding), in_acts[0]


@dataclass(frozen=True, eq=False)
class AvgPool2d(Node):
    """Average pooling without padding: the window sum is requantized (``multiplier ~ 2**shift /
    window``). A window the size of the input is a global average pool."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    requant: Requant = None
    act: Activation = None

    op: ClassVar[str] = "avgpool2d"

    def is_global(self, in_shape):
        return tuple(self.kernel) == tuple(in_shape[1:])

    def infer(self, in_shapes, in_acts):
        _check_not_binary(self, in_acts)
        shape = _pool_output(self, in_shapes[0], (0, 0))
        _check(isinstance(self.act, Activation), "must be an Activation", self.name, "act")
        _check(isinstance(self.requant, Requant), "must be a Requant", self.name, "requant")
        self.requant.validate(self.name, shape[0], self.act)
        return shape, self.act


@dataclass(frozen=True, eq=False)
class Add(Node):
    """Residual add of two same-shaped inputs, each scaled by an integer multiplier first."""

    input_multipliers: tuple[int, int] = (1, 1)
    requant: Requant = None
    act: Activation = None

    op: ClassVar[str] = "add"
    arity: ClassVar[int] = 2

    def infer(self, in_shapes, in_acts):
        _check(in_shapes[0] == in_shapes[1], f"inputs {self.inputs[0]!r} {in_shapes[0]} and "
               f"{self.inputs[1]!r} {in_shapes[1]} differ in shape", self.name, "inputs")
        _check(isinstance(self.input_multipliers, tuple) and len(self.input_multipliers) == 2,
               f"must be a pair of integers, got {self.input_multipliers!r}",
               self.name, "input_multipliers")
        _check_not_binary(self, in_acts)
        for value in self.input_multipliers:
            _check_int(value, "input_multipliers", self.name, low=0,
                       high=2**MULTIPLIER_BITS - 1)
        _check(isinstance(self.act, Activation), "must be an Activation", self.name, "act")
        _check(isinstance(self.requant, Requant), "must be a Requant", self.name, "requant")
        self.requant.validate(self.name, in_shapes[0][0], self.act)
        return in_shapes[0], self.act


@dataclass(frozen=True, eq=False)
class Flatten(Node):
    """``(C, H, W)`` to ``(C * H * W,)`` in C-major order."""

    op: ClassVar[str] = "flatten"

    def infer(self, in_shapes, in_acts):
        return (math.prod(in_shapes[0]),), in_acts[0]


def _check_node_limits(node, shape, limits, totals):
    """Hold ``node`` (validated, output ``shape``) to ``limits``; ``totals`` carries the
    activations and MACs of the nodes before it, and gains this node's."""
    if isinstance(node, Input):
        for size in shape:
            limits.check(size, "dimension", "input shape entry", node.name, "shape")
    if isinstance(node, (Conv2d, MaxPool2d, AvgPool2d)):
        limits.check(max(node.kernel), "kernel", "kernel side", node.name,
                     "weight" if isinstance(node, Conv2d) else "kernel")
    for name in ("stride", "padding"):
        if hasattr(node, name):
            limits.check(max(getattr(node, name)), name, f"{name} entry", node.name, name)
    elements = math.prod(shape)
    totals["activations"] += elements
    limits.check(totals["activations"], "activations", "activations per inference up to this "
                 "node", node.name, "shape" if isinstance(node, Input) else None)
    if isinstance(node, (Conv2d, Linear)):
        macs, field_name = elements * math.prod(node.weight.shape[1:]), "weight"
    elif isinstance(node, (MaxPool2d, AvgPool2d)):
        macs, field_name = elements * math.prod(node.kernel), "kernel"
    else:
        return
    totals["macs"] += macs
    limits.check(totals["macs"], "macs", "MACs and pool window reads per inference up to this "
                 "node", node.name, field_name)


NODE_TYPES = {cls.op: cls for cls in (Input, Conv2d, Linear, MaxPool2d, AvgPool2d, Add, Flatten)}
_NODE_CLASSES = tuple(NODE_TYPES.values())
AnyNode = Union[Input, Conv2d, Linear, MaxPool2d, AvgPool2d, Add, Flatten]


@dataclass(frozen=True, eq=False)
class Graph:
    """A validated network: nodes in topological order, one input, one output.

    Constructing a Graph validates it (raising :class:`GraphError` naming the node and field), so
    every Graph in memory is well formed and within ``limits`` (:class:`Limits`; None: the
    environment's, see :meth:`Limits.from_environment`). ``shapes`` and ``acts`` give each
    node's output shape (without batch) and activation encoding.
    """

    nodes: tuple[AnyNode, ...]
    output: str
    name: str = "net"
    version: int = IR_VERSION
    shapes: dict = field(init=False, repr=False)
    acts: dict = field(init=False, repr=False)
    limits: InitVar[Limits | None] = None

    def __post_init__(self, limits):
        limits = _limits(limits)
        _check(self.version == IR_VERSION,
               f"unknown IR version {self.version!r}; this zeroskip reads version {IR_VERSION}",
               None, "version")
        _check_name(self.name, None, "name")
        nodes = tuple(self.nodes)
        limits.check(len(nodes), "nodes", "node count", None, "nodes")
        object.__setattr__(self, "nodes", self._topological(nodes))
        shapes, acts, totals = {}, {}, {"activations": 0, "macs": 0}
        for node in self.nodes:
            in_shapes = tuple(shapes[name] for name in node.inputs)
            in_acts = tuple(acts[name] for name in node.inputs)
            shapes[node.name], acts[node.name] = node.infer(in_shapes, in_acts)
            _check_node_limits(node, shapes[node.name], limits, totals)
        _check(isinstance(self.output, str) and self.output in shapes,
               lambda: f"{self.output!r} names no node; nodes are {sorted(shapes)}", None,
               "output")
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "acts", acts)
        # Lookups by name in constant time: stats and compile look up every layer.
        consumers = {name: [] for name in shapes}
        for node in self.nodes:
            for source in dict.fromkeys(node.inputs):
                consumers[source].append(node)
        object.__setattr__(self, "_by_name", {node.name: node for node in self.nodes})
        object.__setattr__(self, "_consumers", consumers)

    @staticmethod
    def _topological(nodes):
        """``nodes`` ordered so that each follows its inputs; linear in nodes and edges."""
        by_name = {}
        for node in nodes:
            _check(isinstance(node, _NODE_CLASSES),
                   lambda: f"is not an IR node: {type(node).__name__}", None, "nodes")
            _check_name(node.name, node.name if isinstance(node.name, str) else None, "name")
            _check(node.name not in by_name, "duplicate node name", node.name, "name")
            _check(isinstance(node.inputs, tuple) and len(node.inputs) == node.arity,
                   lambda: f"{node.op} takes {node.arity} input(s), got {node.inputs!r}",
                   node.name, "inputs")
            _check(all(isinstance(source, str) for source in node.inputs),
                   lambda: f"must be node names, got {node.inputs!r}", node.name, "inputs")
            by_name[node.name] = node
        inputs = [node for node in nodes if isinstance(node, Input)]
        _check(len(inputs) == 1, f"a graph has exactly one input node, found {len(inputs)}",
               None, "nodes")
        for node in nodes:
            for source in node.inputs:
                _check(source in by_name, lambda: f"reads unknown node {source!r}", node.name,
                       "inputs")
        # Depth-first with an explicit stack: a recursive walk would overflow Python's stack on a
        # long chain listed outputs-first. ``path`` holds the open nodes, for the cycle message
        # (built only when a cycle is found: building it per edge would make long chains
        # quadratic).
        ordered, state = [], {}
        for root in nodes:
            if state.get(root.name) == "done":
                continue
            path, stack = [root.name], [(root, iter(root.inputs))]
            state[root.name] = "open"
            while stack:
                node, sources = stack[-1]
                source = next(sources, None)
                if source is None:
                    stack.pop()
                    path.pop()
                    state[node.name] = "done"
                    ordered.append(node)
                elif state.get(source) != "done":
                    if state.get(source) == "open":
                        cycle = path[path.index(source):] + [source]
                        raise GraphError(_clip("is part of a cycle: " + " -> ".join(cycle)),
                                         node=_node_label(source), field="inputs")
                    state[source] = "open"
                    path.append(source)
                    stack.append((by_name[source], iter(by_name[source].inputs)))
        return tuple(ordered)

    def __getitem__(self, name):
        return self._by_name[name]

    @property
    def input(self):
        return self.nodes[0] if isinstance(self.nodes[0], Input) else next(
            node for node in self.nodes if isinstance(node, Input))

    def consumers(self, name):
        """The nodes reading ``name``, in topological order (each once)."""
        return list(self._consumers.get(name, ()))

    def quantize_input(self, x_float):
        """Real-valued input batch -> integers of the input encoding (round half to even).

        A binary input takes the sign, 0 counting as +1 (as a threshold's tie does). Values
        beyond the encoding saturate; a NaN or infinite one raises :class:`ZeroskipError`
        naming the input and the position (:func:`check_finite`).
        """
        act = self.input.act
        x = np.asarray(x_float, dtype=np.float64)
        check_finite(x, f"input batch for node {self.input.name!r}")
        if act.binary:
            return np.where(x >= 0, 1, -1).astype(np.int64)
        return np.clip(np.round(x / act.scale), act.qmin, act.qmax).astype(np.int64)

    def dequantize_output(self, y_int):
        """Integer outputs of the output node -> real values."""
        return np.asarray(y_int, dtype=np.float64) * self.acts[self.output].scale

    def save(self, path):
        """Write one file: a zip holding ``graph.json`` and one ``.npy`` per tensor.

        The bytes depend only on the graph (fixed member order and timestamps).
        """
        tensors = {}
        document = {"format": FILE_FORMAT, "version": self.version, "name": self.name,
                    "output": self.output, "nodes": [_node_to_json(n, tensors) for n in self.nodes]}
        path = Path(path)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            _write_member(archive, GRAPH_MEMBER,
                          json.dumps(document, indent=1, sort_keys=True).encode())
            for key in sorted(tensors):
                npy = io.BytesIO()
                np.save(npy, tensors[key], allow_pickle=False)
                _write_member(archive, f"{key}.npy", npy.getvalue())
        path.write_bytes(buffer.getvalue())
        return path


def _write_member(archive, name, data):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


# --- the file format -----------------------------------------------------------------------------

def _node_to_json(node, tensors):
    entry = {"op": node.op, "name": node.name, "inputs": list(node.inputs)}
    for f in fields(node):
        if f.name in ("name", "inputs"):
            continue
        entry[f.name] = _value_to_json(getattr(node, f.name), f"{node.name}.{f.name}", tensors)
    return entry


def _value_to_json(value, key, tensors):
    if isinstance(value, np.ndarray):
        tensors[key] = value
        return {"tensor": key}
    if isinstance(value, Activation):
        return {"bits": value.bits, "signed": value.signed, "scale": value.scale}
    if isinstance(value, (Requant, Threshold)):
        return {f.name: _value_to_json(getattr(value, f.name), f"{key}.{f.name}", tensors)
                for f in fields(value)}
    if isinstance(value, tuple):
        return list(value)
    return value


def load(path, limits=None):
    """Read a graph file written by :meth:`Graph.save`, validating everything in it.

    Only ``graph.json`` and the tensors it names are inflated, each checked against ``limits``
    (:class:`Limits`; None: the environment's) by its zip header before and by its bytes while
    it inflates, so a file costs memory in proportion to the limits whatever it holds.

    Raises
    ------
    GraphError
        naming the node and field at fault, for any malformed, truncated, inconsistent or
        over-limit file.
    """
    limits = _limits(limits)
    path = Path(path)
    _check(path.is_file(), f"no such file: {str(path)!r}", None, "path")
    with _unreadable_as_graph_error(path):
        handle = open(path, "rb")
    with handle, _open_archive(handle, path, limits) as archive:
        _check(GRAPH_MEMBER in archive.NameToInfo, f"{str(path)!r} has no {GRAPH_MEMBER}", None,
               "path")
        document = _parse_document(_inflate(archive, path, GRAPH_MEMBER, limits, "json_bytes"),
                                   limits)
        tensors = _TensorReader(archive, path, limits)
        nodes = [_node_from_json(entry, index, tensors, document["version"]) for index, entry in
                 enumerate(document["nodes"])]
    _check(isinstance(document["output"], str), "must be a node name", None, "output")
    return Graph(nodes=tuple(nodes), output=document["output"],
                 name=document.get("name", "net"), limits=limits)


# What reading a damaged zip can raise: zlib.error, a damaged deflate stream; NotImplementedError
# / RuntimeError, members zipfile cannot decode (unknown compression, encryption); the others,
# damaged headers and directories.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
               ValueError, NotImplementedError, RuntimeError)


@contextmanager
def _unreadable_as_graph_error(path):
    try:
        yield
    except _ZIP_ERRORS as error:
        raise GraphError(f"{str(path)!r} is not a readable zeroskip graph file (corrupted or "
                         f"truncated: {_clip(' '.join(str(error).split()))})") from None


def _open_archive(handle, path, limits):
    """The zip in ``handle``, its central directory within ``limits.directory_bytes``."""
    with _unreadable_as_graph_error(path):
        # zipfile reads the whole central directory at once: bound it first, by the same end
        # record (found the same way) zipfile takes its size from.
        end_record = zipfile._EndRecData(handle)
        if end_record is not None:
            limits.check(end_record[zipfile._ECD_SIZE], "directory_bytes", "the zip directory "
                         "takes", None, "path", " bytes")
        return zipfile.ZipFile(handle)


_INFLATE_CHUNK = 1 << 20
# Graph.save deflates every member; stored members cost nothing to allow. Other methods are
# refused: zipfile inflates bzip2 and lzma without an output bound per read.
_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


def _inflate(archive, path, name, limits, limit_name, used=0):
    """Member ``name``'s bytes. With the ``used`` bytes read before under the same limit, they
    stay within limit ``limit_name``: by the size the member's header declares, before
    inflating, and by what it inflates to, in bounded chunks, in case the header lies."""
    info = archive.getinfo(name)
    _check(info.compress_type in _COMPRESSION, f"member {name!r} uses compression method "
           f"{info.compress_type}; graph files are deflated (8) or stored (0)", None, "path")
    what = f"the tensors up to member {name!r} inflate to" if used else \
        f"member {name!r} inflates to"
    limits.check(used + info.file_size, limit_name, what, None, "path", " bytes (by its header)")
    room = getattr(limits, limit_name) - used
    chunks, size = [], 0
    with _unreadable_as_graph_error(path), archive.open(info) as stream:
        while chunk := stream.read(min(_INFLATE_CHUNK, room + 1 - size)):
            size += len(chunk)
            limits.check(used + size, limit_name, what, None, "path", " bytes or more")
            chunks.append(chunk)
    return b"".join(chunks)


def _parse_document(text, limits):
    """graph.json's document, its format, version, node list and output checked."""
    try:
        document = json.loads(text)
    # ValueError: json refuses integers of more than 4300 digits that way.
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise GraphError(f"{GRAPH_MEMBER} is not valid JSON: {_clip(str(error))}") from None
    _check(isinstance(document, dict) and document.get("format") == FILE_FORMAT,
           f"not a {FILE_FORMAT} document", None, "format")
    version = document.get("version")
    _check(type(version) is int and version in READABLE_VERSIONS, f"unknown IR version "
           f"{version!r}; this zeroskip reads versions "
           f"{', '.join(map(str, READABLE_VERSIONS))}", None, "version")
    for key in ("nodes", "output"):
        _check(key in document, "missing", None, key)
    _check(isinstance(document["nodes"], list), "must be a list", None, "nodes")
    # Before any node is built (Graph checks it again, for graphs built in memory).
    limits.check(len(document["nodes"]), "nodes", "node count", None, "nodes")
    return document


_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK"


class _TensorReader:
    """Reads the tensors nodes name from the open archive, all together within
    ``limits.tensor_bytes``."""

    def __init__(self, archive, path, limits):
        self._archive, self._path, self._limits = archive, path, limits
        self._used = 0

    def __call__(self, ref, node, field_name):
        _check(isinstance(ref, dict) and isinstance(ref.get("tensor"), str),
               f"must be a tensor reference {{\"tensor\": KEY}}, got {ref!r}", node, field_name)
        member = ref["tensor"] + ".npy"
        _check(member in self._archive.NameToInfo, f"tensor {ref['tensor']!r} is missing from "
               "the file", node, field_name)
        data = _inflate(self._archive, self._path, member, self._limits, "tensor_bytes",
                        self._used)
        self._used += len(data)
        if data.startswith(_ZIP_MAGIC):  # a zip member that is itself an .npz archive
            raise GraphError(f"tensor {ref['tensor']!r} is an archive, not one .npy array",
                             node=_node_label(node), field=field_name)
        # np.load parses the .npy header with Python's tokenizer, so a damaged header can raise
        # almost anything (SyntaxError, TokenError, TypeError, ...); with pickles refused it runs
        # no code from the file, so every failure here means a damaged member.
        try:
            return _npy_array(data)
        except Exception as error:
            raise GraphError(_clip(f"tensor {ref['tensor']!r} is unreadable: "
                                   f"{type(error).__name__}: {' '.join(str(error).split())}"),
                             node=_node_label(node), field=field_name) from None


def _npy_array(data):
    """The array in ``data``, one .npy file. np.load allocates what the header declares before
    it reads the data, so the header must first agree with the bytes that follow it."""
    if not data.startswith(_NPY_MAGIC):
        raise ValueError(f"not a .npy file: it starts with {data[:8]!r}")
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version} (tensors are written as 1.0)")
    shape, _, dtype = getattr(np.lib.format, f"read_array_header_{version[0]}_0")(stream)
    declared, held = math.prod(shape) * dtype.itemsize, len(data) - stream.tell()
    if dtype.hasobject or dtype.itemsize == 0 or declared != held:
        raise ValueError(f"the header declares {dtype} of shape {shape} ({declared:,} bytes), "
                         f"the member holds {held:,}")
    stream.seek(0)
    return np.load(stream, allow_pickle=False)


# Fields a version-1 file lacks; they take their defaults.
_ADDED_IN_VERSION_2 = {"threshold"}
# Requant fields a version-1 or version-2 file lacks; they take their defaults.
_REQUANT_ADDED_IN_VERSION_3 = {"rounding"}


def _node_from_json(entry, index, tensors, version):
    _check(isinstance(entry, dict), "must be an object", f"#{index}", None)
    name = entry.get("name")
    _check_name(name, f"#{index}", "name")
    op = entry.get("op")
    _check(isinstance(op, str) and op in NODE_TYPES,
           lambda: f"unknown op {op!r}; known ops: {', '.join(sorted(NODE_TYPES))}", name, "op")
    cls = NODE_TYPES[op]
    inputs = entry.get("inputs")
    _check(isinstance(inputs, list) and all(isinstance(i, str) for i in inputs),
           "must be a list of node names", name, "inputs")
    kwargs = {"name": name, "inputs": tuple(inputs)}
    for f in _fields_of(cls):
        if f.name in ("name", "inputs") or (
                version == 1 and f.name in _ADDED_IN_VERSION_2 and f.name not in entry):
            continue
        _check(f.name in entry, "missing", name, f.name)
        kwargs[f.name] = _value_from_json(entry[f.name], f.name, name, tensors, version)
    unknown = sorted(set(entry) - set(kwargs) - {"op"})
    _check(not unknown, lambda: f"unknown field(s) {unknown} for op {op!r}", name, unknown[0] if
           unknown else None)
    return cls(**kwargs)


def _value_from_json(value, field_name, node, tensors, version):
    if field_name == "act":
        _check(isinstance(value, dict) and set(value) == {"bits", "signed", "scale"},
               "must be {bits, signed, scale}", node, field_name)
        scale = value["scale"]
        if isinstance(scale, int) and not isinstance(scale, bool):
            try:
                scale = float(scale)
            except OverflowError:  # beyond the float range: infinite, which Activation refuses
                scale = math.inf if scale > 0 else -math.inf
        try:
            return Activation(bits=value["bits"], signed=value["signed"], scale=scale)
        except GraphError as error:
            raise GraphError(f"{error.field}: {str(error).split(': ', 1)[-1]}",
                             node=node, field=field_name) from None
    if field_name in ("requant", "threshold") and value is None:
        return None
    if field_name == "threshold":
        keys = {f.name for f in fields(Threshold)}
        _check(isinstance(value, dict) and set(value) == keys,
               f"must be null or an object with fields {sorted(keys)}", node, field_name)
        return Threshold(thresholds=tensors(value["thresholds"], node, "threshold.thresholds"),
                         signs=tensors(value["signs"], node, "threshold.signs"))
    if field_name == "requant":
        keys = {f.name for f in fields(Requant)}
        if version < 3:
            keys -= _REQUANT_ADDED_IN_VERSION_3
        _check(isinstance(value, dict) and set(value) == keys,
               f"must be an object with fields {sorted(keys)}", node, field_name)
        return Requant(multiplier=tensors(value["multiplier"], node, "requant.multiplier"),
                       shift=tensors(value["shift"], node, "requant.shift"),
                       clamp_min=value["clamp_min"], clamp_max=value["clamp_max"],
                       epsilon=value["epsilon"],
                       **{name: value[name] for name in keys & _REQUANT_ADDED_IN_VERSION_3})
    if isinstance(value, dict):
        return tensors(value, node, field_name)
    if isinstance(value, list):
        return tuple(value)
    return value
