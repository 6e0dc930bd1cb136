"""QONNX import: a quantized ONNX model (Brevitas's ``export_qonnx``, hls4ml, FINN) to the IR.

:func:`import_qonnx` reads the model with the ``onnx`` package (the ``qonnx`` extra) and walks
its nodes once, keeping for each tensor what the IR can say about it:

* a **quantized activation** (the output of a ``Quant`` or ``BipolarQuant``): an IR node and
  its :class:`~zeroskip.ir.Activation`, ``real = integer * scale``;
* **quantized weights** (a ``Quant`` / ``BipolarQuant`` of a constant, perhaps transposed): the
  integers and their scales, as QONNX computes them;
* an **accumulator**: a ``Conv``, ``Gemm`` / ``MatMul``, ``AveragePool`` or ``Add`` of
  quantized activations whose real value is ``unit[c] * acc`` exactly, perhaps with a bias, a
  ``BatchNormalization`` (``a[c] * real + b[c]``) and a ``Relu`` after it, waiting for the
  ``Quant`` that makes it an IR layer.

A ``Quant`` (rounding ``ROUND``: half to even) of an accumulator becomes a
:class:`~zeroskip.ir.Requant` with ``rounding="half_even"`` when ``a * unit / scale`` is exactly
``multiplier / 2**shift`` with a 16-bit multiplier and ``b / (a * unit)`` an integer (folded
into the bias): power-of-two scales (Brevitas's ``*FixedPoint`` quantizers, FINN's
``POWER_OF_TWO`` scaling) always are, without a BatchNormalization in between. A
``BipolarQuant`` (or a 1-bit signed ``Quant``) of an accumulator becomes a
:class:`~zeroskip.ir.Threshold`: ``a * unit * acc + b >= 0`` solved for the integer ``acc``,
exactly in rational arithmetic (QONNX evaluates it in float32, which can differ only where the
float32 rounding of ``a * unit * acc + b`` crosses zero). Anything the IR cannot say exactly
(zero points, per-channel activation scales, other rounding modes, scale ratios that are not
dyadic, float tensors between layers, unsupported ops) raises a :class:`ZeroskipError` naming
the ONNX node and the reason; nothing is approximated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .. import ir
from ..errors import ZeroskipError

__all__ = ["import_qonnx", "SUPPORTED_OPS"]

SUPPORTED_OPS = ("Quant", "BipolarQuant", "Trunc", "Conv", "Gemm", "MatMul", "Transpose", "Relu",
                 "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Flatten", "Reshape",
                 "BatchNormalization", "Identity", "Dropout", "Constant")
# QONNX's rounding mode for Brevitas's ROUND (numpy's round: half to even).
_HALF_EVEN_MODES = ("ROUND", "HALF_EVEN")


def _refuse(node, reason):
    """A ZeroskipError naming the ONNX node (``None``: the model) and the reason."""
    where = f"QONNX node {node.name or node.output[0]!r} ({node.op_type})" if node is not None \
        else "QONNX model"
    return ZeroskipError(f"{where}: {reason}")


# --- what a tensor holds -----------------------------------------------------------------------

@dataclass
class _Activation:
    """Integers of IR node ``node``, encoded as ``act``; ``shape`` without the batch."""

    node: str
    act: ir.Activation
    shape: tuple


@dataclass
class _Weights:
    """A quantized constant: ``ints`` and their scale, broadcast to the same shape."""

    ints: np.ndarray
    scale: np.ndarray
    bits: int


@dataclass
class _Accumulator:
    """``real[c] = a[c] * unit[c] * acc[c] + b[c]``, then a ReLU if ``relu``; ``acc`` includes
    ``bias`` (integer accumulator steps; None for a pool or an add).

    ``make(name, act, requant, threshold, bias)`` builds the IR node made by ``origin`` (the
    ONNX node whose name it takes), given the final bias (offsets folded in)."""

    origin: object
    unit: list
    make: object
    bias: np.ndarray | None = None
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    relu: bool = False
    channels: int = 1
    shape: tuple = ()


@dataclass
class _State:
    """The walk's tensors by name, the IR nodes made so far and the names they took."""

    values: dict = field(default_factory=dict)
    nodes: list = field(default_factory=list)
    names: set = field(default_factory=set)
    readers: dict = field(default_factory=dict)

    def name_for(self, node):
        raw = node.name or node.output[0]
        name = "".join(ch if ch.isascii() and ch.isprintable() else "_" for ch in raw)[:120]
        name = name or "node"
        base, suffix = name, 1
        while name in self.names:
            suffix += 1
            name = f"{base}_{suffix}"
        self.names.add(name)
        return name


# --- entry point ---------------------------------------------------------------------------------

def _onnx():
    try:
        import onnx
    except ImportError:
        raise ZeroskipError("QONNX import needs the onnx package: pip install "
                            "'zeroskip[qonnx]'") from None
    return onnx


def _read_model(path_or_model, limits):
    """The ModelProto of ``path_or_model`` (a path, bytes or a ModelProto), its size bounded by
    ``limits.model_bytes``."""
    onnx = _onnx()
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if isinstance(path_or_model, (bytes, bytearray)):
        data = bytes(path_or_model)
        where = "the model bytes"
    else:
        path = Path(path_or_model)
        if not path.is_file():
            raise ZeroskipError(f"no such ONNX file: {str(path)!r}")
        limits.check(path.stat().st_size, "model_bytes", f"ONNX file {str(path)!r} holds",
                     None, "path", " bytes")
        data = path.read_bytes()
        where = repr(str(path))
    limits.check(len(data), "model_bytes", "the ONNX model holds", None, "path", " bytes")
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as error:  # protobuf's DecodeError and its kin: a damaged file
        raise ZeroskipError(f"{where} is not a readable ONNX model: "
                            f"{' '.join(str(error).split()) or type(error).__name__}") from None
    if not model.graph.node:
        raise ZeroskipError(f"{where} is not an ONNX model with a graph (no nodes)")
    return model


def import_qonnx(path_or_model, *, name=None, limits=None):
    """A QONNX model (file path, bytes or ``onnx.ModelProto``) as a :class:`zeroskip.ir.Graph`.

    The graph's golden model gives the same integers as QONNX's own execution of the file
    (``qonnx.core.onnx_exec.execute_onnx``) divided by the output scale, for inputs quantized by
    :meth:`~zeroskip.ir.Graph.quantize_input` (the first ``Quant``'s own rounding).

    Raises
    ------
    ZeroskipError
        For a file that is missing, too large (``limits.model_bytes``) or not ONNX, naming it;
        for anything the IR cannot say exactly, naming the ONNX node and the reason.
    """
    limits = ir.Limits.from_environment() if limits is None else limits
    if not isinstance(limits, ir.Limits):
        raise TypeError(f"limits must be a zeroskip.ir.Limits, got {type(limits).__name__}")
    model = _read_model(path_or_model, limits)
    graph = model.graph
    state = _State()
    for node in graph.node:
        for tensor in node.input:
            state.readers[tensor] = state.readers.get(tensor, 0) + 1
    for value in graph.output:
        state.readers[value.name] = state.readers.get(value.name, 0) + 1
    initializers = {tensor.name for tensor in graph.initializer}
    for tensor in graph.initializer:
        state.values[tensor.name] = _constant(tensor)
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise _refuse(None, f"the graph has {len(inputs)} inputs besides its initializers "
                            f"({', '.join(v.name for v in inputs) or 'none'}); one is needed")
    state.values[inputs[0].name] = ("input", inputs[0].name, _input_shape(inputs[0]))
    for node in graph.node:
        _step(state, node)
    if len(graph.output) != 1:
        raise _refuse(None, f"the graph has {len(graph.output)} outputs; one is needed")
    result = state.values.get(graph.output[0].name)
    if not isinstance(result, _Activation):
        raise _refuse(None, f"output {graph.output[0].name!r} is not a quantized activation "
                            "(end the network with a Quant, e.g. a QuantIdentity)")
    graph_name = _clean_name(name or graph.name or "qonnx")
    try:
        return ir.Graph(nodes=tuple(state.nodes), output=result.node, name=graph_name,
                        limits=limits)
    except ZeroskipError as error:
        raise ZeroskipError(f"QONNX model: the imported graph is not valid: {error}") from None


def _clean_name(text):
    cleaned = "".join(ch if ch.isascii() and ch.isprintable() else "_" for ch in text)
    return cleaned[:ir.MAX_NAME_LENGTH] or "qonnx"


def _constant(tensor):
    onnx = _onnx()
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ZeroskipError(f"QONNX model: initializer {tensor.name!r} keeps its data in an "
                            "external file; save the model with its tensors inside")
    try:
        return onnx.numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as error:  # data that does not fill its declared shape
        raise ZeroskipError(f"QONNX model: initializer {tensor.name!r} is malformed: "
                            f"{' '.join(str(error).split())}"[:300]) from None


def _input_shape(value):
    dims = value.type.tensor_type.shape.dim
    sizes = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
    if len(sizes) not in (2, 4) or any(size is None or size < 1 for size in sizes[1:]):
        raise ZeroskipError(f"QONNX model: input {value.name!r} has shape "
                            f"{[s if s is not None else '?' for s in sizes]}; the importer "
                            "takes (N, C, H, W) or (N, features) with fixed C, H, W, features")
    return tuple(sizes[1:])


# --- the walk ------------------------------------------------------------------------------------

def _attributes(node):
    onnx = _onnx()
    return {attribute.name: onnx.helper.get_attribute_value(attribute)
            for attribute in node.attribute}


def _step(state, node):
    handler = _HANDLERS.get(node.op_type)
    if handler is None:
        raise _refuse(node, f"op {node.op_type} is not supported by the QONNX importer "
                            f"(supported: {', '.join(SUPPORTED_OPS)})")
    missing = [name for name in node.input if name and name not in state.values]
    if missing:
        raise _refuse(node, f"reads {missing[0]!r}, which no earlier node or initializer makes")
    low, high = _ARITY[node.op_type]
    # The required inputs present and named (an empty name is an omitted optional input).
    if not low <= len(node.input) <= high or not all(node.input[:low]):
        raise _refuse(node, f"{len(node.input)} inputs; {node.op_type} takes "
                            f"{low if low == high else f'{low} to {high}'}")
    inputs = [state.values[name] if name else None for name in node.input]
    for name, value in zip(node.input, inputs):
        if isinstance(value, _Accumulator) and state.readers[name] > 1:
            raise _refuse(node, f"the unquantized tensor {name!r} has {state.readers[name]} "
                                "readers; the IR holds only quantized tensors between layers")
    try:
        outputs = handler(state, node, inputs, _attributes(node))
    except (ValueError, TypeError, IndexError, OverflowError) as error:
        # Attributes or constants of the wrong type or shape (a well-formed protobuf can hold
        # any); the IR's own refusals are ZeroskipErrors and pass through.
        raise _refuse(node, f"malformed: {type(error).__name__}: "
                            f"{' '.join(str(error).split())[:200]}") from None
    for name, value in zip(node.output, outputs if isinstance(outputs, tuple) else (outputs,)):
        state.values[name] = value


def _constant_of(node, value, what):
    if not isinstance(value, np.ndarray):
        raise _refuse(node, f"{what} must be a constant (an initializer or Constant node)")
    return value


def _quant_parameters(node, inputs, attributes, bipolar):
    """``(scale, bits, signed, narrow)`` of a Quant or BipolarQuant; zero points refused."""
    scale = _constant_of(node, inputs[1], "the scale").astype(np.float64)
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise _refuse(node, "the scale must be positive and finite")
    if bipolar:
        return scale, 1, True, False
    zero_point = _constant_of(node, inputs[2], "the zero point")
    if np.any(zero_point != 0):
        raise _refuse(node, "a nonzero zero point; the IR's encodings are symmetric (zero "
                            "point 0)")
    bits = _constant_of(node, inputs[3], "the bit width")
    if bits.size != 1 or float(bits.flat[0]) != int(bits.flat[0]) or \
            not 1 <= int(bits.flat[0]) <= 32:
        raise _refuse(node, f"bit width {bits.ravel().tolist()}; the importer takes 1 to 32 "
                            f"bits (constants) and 1 to {ir.MAX_BITS} bits (activations)")
    bits = int(bits.flat[0])
    signed, narrow = bool(attributes.get("signed", 1)), bool(attributes.get("narrow", 0))
    mode = attributes.get("rounding_mode", b"ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if bits > 1 and mode.upper() not in _HALF_EVEN_MODES:
        raise _refuse(node, f"rounding mode {mode}; the importer takes ROUND (half to even)")
    if bits == 1 and not signed:
        raise _refuse(node, "a 1-bit unsigned Quant; binary activations are bipolar (-1, +1)")
    return scale, bits, signed, narrow


def _quant_range(bits, signed, narrow):
    if signed:
        return -(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - narrow


def _quant(state, node, inputs, attributes):
    bipolar = node.op_type == "BipolarQuant"
    scale, bits, signed, narrow = _quant_parameters(node, inputs, attributes, bipolar)
    source = inputs[0]
    if isinstance(source, np.ndarray):
        return _quantize_constant(node, source, scale, bits, signed, narrow, inputs[1])
    if isinstance(source, tuple) and source[0] == "input":
        return _quantize_input(state, node, source, scale, bits, signed, narrow)
    per_tensor = _scalar(node, scale, "activation scale")
    if bits > ir.MAX_BITS:
        raise _refuse(node, f"a {bits}-bit activation; the IR's activations take 1 to "
                            f"{ir.MAX_BITS} bits")
    if isinstance(source, _Accumulator):
        return _quantize_accumulator(state, node, source, per_tensor, bits, signed, narrow)
    if isinstance(source, _Activation):
        return _requantize_activation(node, source, per_tensor, bits, signed, narrow)
    raise _refuse(node, "quantizes a float tensor the importer cannot follow")


def _trunc(state, node, inputs, attributes):
    """QONNX's Trunc (version 2, as Brevitas's TruncAvgPool2d exports it): ``round(x / scale)``,
    divided by ``2**round(log2(output_scale / scale))``, clamped and rounded, in units of
    ``output_scale``. Exact when ``x`` is a whole number of ``scale`` steps."""
    if len(inputs) != 6:
        raise _refuse(node, f"Trunc with {len(inputs)} inputs; the importer takes version 2 "
                            "(x, scale, zero point, input bit width, output scale, output bit "
                            "width)")
    acc = inputs[0]
    if not isinstance(acc, _Accumulator) or acc.a is not None or acc.relu:
        raise _refuse(node, "a Trunc of something other than an average pool's or a layer's "
                            "accumulator")
    scale = _scalar(node, _constant_of(node, inputs[1], "the scale"), "scale")
    out_scale = _scalar(node, _constant_of(node, inputs[4], "the output scale"), "scale")
    if np.any(_constant_of(node, inputs[2], "the zero point") != 0):
        raise _refuse(node, "a nonzero zero point; the IR's encodings are symmetric")
    bits = _constant_of(node, inputs[5], "the output bit width")
    bits = int(bits.flat[0]) if bits.size == 1 and float(bits.flat[0]).is_integer() else 0
    if not ir.MIN_BITS <= bits <= ir.MAX_BITS:
        raise _refuse(node, f"output bit width {inputs[5].ravel().tolist()}; the IR takes "
                            f"{ir.MIN_BITS} to {ir.MAX_BITS} bits")
    mode = attributes.get("rounding_mode", b"FLOOR")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode.upper() not in _HALF_EVEN_MODES:
        raise _refuse(node, f"rounding mode {mode}; the importer takes ROUND (half to even)")
    steps = [u / Fraction(scale) for u in acc.unit]
    if any(step.denominator != 1 for step in steps):
        raise _refuse(node, "the input is not a whole number of scale steps (the first rounding "
                            "would not be exact)")
    # As QONNX computes it: a power of two, in the scales' float32.
    trunc_scale = float(2 ** np.round(np.log2(np.float32(out_scale) / np.float32(scale))))
    return _quantize_accumulator(state, node, acc, scale * trunc_scale, bits,
                                 bool(attributes.get("signed", 1)),
                                 bool(attributes.get("narrow", 0)), act_scale=out_scale)


def _scalar(node, scale, what):
    if np.unique(scale).size != 1:
        raise _refuse(node, f"a per-channel {what}; the IR's activations have one scale")
    return float(scale.flat[0])


def _quantize_constant(node, values, scale, bits, signed, narrow, scale_input):
    """QONNX's integers for a constant: ``round(clip(w / scale))`` in the tensors' own dtypes
    (as ``qonnx.custom_op.general.quant`` computes them), or the sign for 1 bit."""
    divided = values / scale_input.astype(values.dtype) if values.dtype.kind == "f" else \
        values / scale
    if bits == 1:
        ints = np.where(values >= 0, 1, -1)
    else:
        low, high = _quant_range(bits, signed, narrow)
        ints = np.round(np.clip(divided, low, high))
    return _Weights(ints=ints.astype(np.int64), scale=np.broadcast_to(scale, ints.shape).copy(),
                    bits=max(bits, ir.MIN_BITS))


def _quantize_input(state, node, source, scale, bits, signed, narrow):
    _, input_name, shape = source
    per_tensor = _scalar(node, scale, "input scale")
    if bits > ir.MAX_BITS:
        raise _refuse(node, f"a {bits}-bit input; the IR's activations take 1 to "
                            f"{ir.MAX_BITS} bits")
    if bits > 1 and narrow:
        raise _refuse(node, "a narrow-range input Quant; the IR's input encoding takes the "
                            "full range")
    act = ir.Activation(bits=bits, signed=signed, scale=per_tensor)
    name = _clean_name(input_name)
    state.names.add(name)
    state.nodes.append(ir.Input(name=name, inputs=(), shape=shape, act=act))
    return _Activation(name, act, shape)


def _requantize_activation(node, source, scale, bits, signed, narrow):
    """A Quant of a quantized activation: only one that changes nothing."""
    low, high = _quant_range(bits, signed, narrow)
    same = (source.act.binary and bits == 1) or (
        not source.act.binary and bits > 1 and scale == source.act.scale
        and low <= source.act.qmin and source.act.qmax <= high)
    if not same:
        raise _refuse(node, f"quantizes an already quantized activation to another encoding "
                            f"({bits} bits, scale {scale!r} after {source.act.bits} bits, scale "
                            f"{source.act.scale!r}); the IR requantizes only after a layer")
    return source


def _quantize_accumulator(state, node, acc, scale, bits, signed, narrow, act_scale=None):
    """The IR layer ``acc`` waits for: integers ``round(real / scale)``, clamped, encoded with
    ``act_scale`` (``scale`` unless given)."""
    name = state.name_for(acc.origin)
    act = ir.Activation(bits=bits, signed=signed, scale=act_scale or scale)
    if bits == 1:
        if acc.relu:
            raise _refuse(node, "a ReLU before a bipolar quantizer (every output +1)")
        threshold = _threshold(node, acc)
        made = acc.make(name, act, None, threshold,
                        _add_bias(node, acc.bias, [0] * acc.channels))
    else:
        requant, bias = _requant(node, acc, scale, bits, signed, narrow)
        made = acc.make(name, act, requant, None, bias)
    state.nodes.append(made)
    return _Activation(name, act, acc.shape)


def _affine(acc):
    """Per channel ``(a * unit, b)`` as exact fractions of the float values."""
    a = acc.a if acc.a is not None else np.ones(acc.channels)
    b = acc.b if acc.b is not None else np.zeros(acc.channels)
    unit = np.broadcast_to(np.asarray(acc.unit, dtype=object), (acc.channels,))
    return ([Fraction(float(x)) * u for x, u in zip(a, unit)],
            [Fraction(float(x)) for x in b])


def _requant(node, acc, scale, bits, signed, narrow):
    """The exact Requant (half even) and the bias with ``b / (a * unit)`` folded in."""
    slopes, offsets = _affine(acc)
    multipliers, shifts, folded = [], [], []
    for channel, (slope, offset) in enumerate(zip(slopes, offsets)):
        ratio = slope / Fraction(scale)
        if ratio <= 0:
            raise _refuse(node, f"channel {channel} scales the accumulator by {float(ratio)!r}; "
                                "the IR's requantizer multiplies by a positive number")
        denominator = ratio.denominator
        shift = denominator.bit_length() - 1
        if denominator != 1 << shift or ratio.numerator >= 2**ir.MULTIPLIER_BITS or \
                shift > ir.MAX_SHIFT:
            raise _refuse(node, f"channel {channel}: the accumulator's step over the output "
                                f"scale is {float(ratio)!r}, not m / 2**s with a "
                                f"{ir.MULTIPLIER_BITS}-bit m (use power-of-two scales, and no "
                                "BatchNormalization before a multi-bit Quant)")
        step = offset / slope
        if step.denominator != 1:
            raise _refuse(node, f"channel {channel}: an offset of {float(step)!r} accumulator "
                                "steps (bias or BatchNormalization shift) is not a whole number")
        multipliers.append(ratio.numerator)
        shifts.append(shift)
        folded.append(int(step))
    bias = _add_bias(node, acc.bias, folded)
    low, high = _quant_range(bits, signed, narrow)
    requant = ir.Requant(multiplier=_shared(multipliers), shift=_shared(shifts),
                         clamp_min=max(low, 0) if acc.relu else low, clamp_max=high,
                         rounding="half_even")
    return requant, bias


def _shared(values):
    return np.asarray(values[:1] if len(set(values)) == 1 else values, dtype=np.int32)


def _add_bias(node, bias, folded):
    if bias is None:
        return None
    total = bias.astype(object) + np.asarray(folded, dtype=object)
    if any(not ir.INT32_MIN <= int(v) <= ir.INT32_MAX for v in total):
        raise _refuse(node, "the bias (with the folded offsets) does not fit int32")
    return np.asarray(total, dtype=np.int32)


def _threshold(node, acc):
    """``+1 if a * unit * acc + b >= 0``: per channel, the sign and the least ``sign * acc``."""
    slopes, offsets = _affine(acc)
    thresholds, signs = [], []
    for channel, (slope, offset) in enumerate(zip(slopes, offsets)):
        if slope == 0:
            raise _refuse(node, f"channel {channel} scales the accumulator by 0")
        # slope * acc + offset >= 0  <=>  sign * acc >= sign * (-offset / slope), for integers
        # sign * acc >= ceil(sign * (-offset / slope)).
        sign = 1 if slope > 0 else -1
        thresholds.append(math.ceil(sign * (-offset / slope)))
        signs.append(sign)
    thresholds = np.asarray(thresholds, dtype=object)
    if any(abs(int(t)) >= 2**62 for t in thresholds):
        raise _refuse(node, "a threshold beyond int64")
    return ir.Threshold(thresholds=np.asarray(thresholds, dtype=np.int64),
                        signs=np.asarray(signs, dtype=np.int8))


# --- layers --------------------------------------------------------------------------------------

def _activation_input(node, value, what="the input"):
    if not isinstance(value, _Activation):
        raise _refuse(node, f"{what} is not a quantized activation (put a Quant before it)")
    return value


def _weights_input(node, value):
    if not isinstance(value, _Weights):
        raise _refuse(node, "the weights are not a Quant or BipolarQuant of a constant")
    return value


def _channel_scale(node, weights, axis=0):
    """The weights' scale per output channel (``axis``): constant along every other axis."""
    moved = np.moveaxis(weights.scale, axis, 0).reshape(weights.scale.shape[axis], -1)
    if not np.all(moved == moved[:, :1]):
        raise _refuse(node, "the weight scale varies within an output channel; the IR takes "
                            "per-channel or per-tensor weight scales")
    return moved[:, 0].astype(np.float64)


def _weight_ints(node, weights):
    if weights.bits > ir.MAX_BITS:
        raise _refuse(node, f"{weights.bits}-bit weights; the IR takes {ir.MIN_BITS} to "
                            f"{ir.MAX_BITS} bits (1-bit ones as bipolar)")
    low, high = ir.weight_range(weights.bits)
    if weights.ints.size and (weights.ints.min() < low or weights.ints.max() > high):
        raise _refuse(node, f"weights reach {int(weights.ints.min())}; the IR's "
                            f"{weights.bits}-bit weights are symmetric in [{low}, {high}] "
                            "(quantize them with narrow range)")
    return weights.ints.astype(np.int8)


def _bias_input(node, value, units):
    """The bias in accumulator steps (``units`` per channel): exact integers or refused."""
    if value is None:
        return np.zeros(len(units), dtype=np.int64)
    if isinstance(value, _Weights):
        real = [Fraction(float(i)) * Fraction(float(s)) for i, s in
                zip(value.ints.ravel(), value.scale.ravel())]
    elif isinstance(value, np.ndarray):
        real = [Fraction(float(x)) for x in value.ravel()]
    else:
        raise _refuse(node, "the bias must be a constant or a Quant of one")
    if len(real) == 1:
        real = real * len(units)
    if len(real) != len(units):
        raise _refuse(node, f"the bias has {len(real)} entries for {len(units)} channels")
    steps = [r / u for r, u in zip(real, units)]
    if any(step.denominator != 1 for step in steps):
        raise _refuse(node, "the bias is not a whole number of accumulator steps (input scale "
                            "times weight scale); quantize it with that scale")
    return np.asarray([int(step) for step in steps], dtype=object)


def _units(activation, weight_scale):
    return [Fraction(activation.act.scale) * Fraction(float(s)) for s in weight_scale]


def _weight_layer(cls, weights, weight_scale, bits, source, **geometry):
    def make(name, act, requant, threshold, bias):
        return cls(name=name, inputs=(source,), weight=weights,
                   bias=np.asarray(bias, dtype=np.int32), weight_bits=bits,
                   weight_scale=weight_scale, requant=requant, act=act, threshold=threshold,
                   **geometry)
    return make


def _pair(node, values, what, default):
    values = list(values) if values is not None else default
    if len(values) != 2:
        raise _refuse(node, f"{what} {values}: the IR takes 2-D windows")
    return tuple(int(v) for v in values)


def _window(node, attributes, kernel=None):
    """``(kernel, stride, padding)`` of a Conv or pool; asymmetric padding, dilations,
    auto_pad and ceil_mode refused."""
    kernel = _pair(node, attributes.get("kernel_shape", kernel), "kernel_shape", kernel)
    stride = _pair(node, attributes.get("strides"), "strides", [1, 1])
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise _refuse(node, f"pads {pads}: the IR pads both sides of an axis alike")
    if any(d != 1 for d in attributes.get("dilations", [1, 1])):
        raise _refuse(node, "dilation; the IR's windows are dense")
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise _refuse(node, f"auto_pad {auto_pad!r}; give explicit pads")
    if attributes.get("ceil_mode", 0):
        raise _refuse(node, "ceil_mode; the IR's windows end inside the input")
    return kernel, stride, tuple(pads[:2])


def _conv(state, node, inputs, attributes):
    source = _activation_input(node, inputs[0])
    weights = _weights_input(node, inputs[1])
    if weights.ints.ndim != 4 or len(source.shape) != 3:
        raise _refuse(node, "the IR's convolutions are 2-D, (N, C, H, W)")
    kernel, stride, padding = _window(node, attributes, list(weights.ints.shape[2:]))
    groups = int(attributes.get("group", 1))
    weight_scale = _channel_scale(node, weights)
    units = _units(source, weight_scale)
    bias = _bias_input(node, inputs[2] if len(inputs) > 2 else None, units)
    channels, height, width = source.shape
    out_h = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
    make = _weight_layer(ir.Conv2d, _weight_ints(node, weights), weight_scale, weights.bits,
                         source=source.node, stride=stride, padding=padding, groups=groups)
    return _Accumulator(origin=node, unit=units, make=make, bias=bias,
                        channels=weights.ints.shape[0],
                        shape=(weights.ints.shape[0], out_h, out_w))


def _linear(node, source, weights, bias_value):
    """A Linear accumulator from weights already (out, in)."""
    if len(source.shape) != 1:
        raise _refuse(node, f"the input has shape {source.shape}; flatten it first")
    weight_scale = _channel_scale(node, weights)
    units = _units(source, weight_scale)
    bias = _bias_input(node, bias_value, units)
    make = _weight_layer(ir.Linear, _weight_ints(node, weights), weight_scale, weights.bits,
                         source=source.node)
    return _Accumulator(origin=node, unit=units, make=make, bias=bias,
                        channels=weights.ints.shape[0], shape=(weights.ints.shape[0],))


def _transposed(weights):
    return _Weights(ints=weights.ints.T, scale=weights.scale.T, bits=weights.bits)


def _gemm(state, node, inputs, attributes):
    source = _activation_input(node, inputs[0])
    weights = _weights_input(node, inputs[1])
    if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or \
            attributes.get("beta", 1.0) != 1.0:
        raise _refuse(node, "transA, alpha or beta other than 0, 1, 1")
    if weights.ints.ndim != 2:
        raise _refuse(node, "the weights must be 2-D")
    if not attributes.get("transB", 0):
        weights = _transposed(weights)
    return _linear(node, source, weights, inputs[2] if len(inputs) > 2 else None)


def _matmul(state, node, inputs, attributes):
    source = _activation_input(node, inputs[0])
    weights = _weights_input(node, inputs[1])
    if weights.ints.ndim != 2:
        raise _refuse(node, "the weights must be 2-D")
    return _linear(node, source, _transposed(weights), None)


def _transpose(state, node, inputs, attributes):
    value = inputs[0]
    perm = attributes.get("perm")
    if isinstance(value, np.ndarray):
        return np.transpose(value, perm)
    if isinstance(value, _Weights):
        return _Weights(ints=np.transpose(value.ints, perm),
                        scale=np.transpose(value.scale, perm), bits=value.bits)
    raise _refuse(node, "transposes a tensor other than constant weights")


def _relu(state, node, inputs, attributes):
    value = inputs[0]
    if isinstance(value, _Accumulator):
        value.relu = True
        return value
    if isinstance(value, _Activation) and value.act.qmin >= 0:
        return value
    raise _refuse(node, "a ReLU of a signed quantized activation; put it before the Quant")


def _batch_norm(state, node, inputs, attributes):
    value = inputs[0]
    if not isinstance(value, _Accumulator) or value.relu or value.a is not None:
        raise _refuse(node, "a BatchNormalization not right after a Conv, Gemm or MatMul")
    gamma, beta, mean, var = (_constant_of(node, v, "a parameter").astype(np.float64)
                              for v in inputs[1:5])
    epsilon = float(attributes.get("epsilon", 1e-5))
    if gamma.size != value.channels:
        raise _refuse(node, f"{gamma.size} channels for an accumulator of {value.channels}")
    value.a = gamma / np.sqrt(var + epsilon)
    value.b = beta - mean * value.a
    return value


def _maxpool(state, node, inputs, attributes):
    source = _activation_input(node, inputs[0])
    if len(node.output) > 1 and node.output[1]:
        raise _refuse(node, "the indices output")
    if attributes.get("storage_order", 0):
        raise _refuse(node, "storage_order 1")
    kernel, stride, padding = _window(node, attributes)
    name = state.name_for(node)
    pooled = ir.MaxPool2d(name=name, inputs=(source.node,), kernel=kernel, stride=stride,
                          padding=padding)
    state.nodes.append(pooled)
    return _Activation(name, source.act, _pool_shape(source.shape, kernel, stride, padding))


def _pool_shape(shape, kernel, stride, padding):
    channels, height, width = shape
    return (channels, (height + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (width + 2 * padding[1] - kernel[1]) // stride[1] + 1)


def _avgpool(state, node, inputs, attributes):
    source = _activation_input(node, inputs[0])
    if len(source.shape) != 3:
        raise _refuse(node, "the input must be (N, C, H, W)")
    if node.op_type == "GlobalAveragePool":
        kernel, stride, padding = tuple(source.shape[1:]), tuple(source.shape[1:]), (0, 0)
    else:
        kernel, stride, padding = _window(node, attributes)
    if padding != (0, 0):
        raise _refuse(node, "a padded average pool; the IR's average pool takes no padding")

    def make(name, act, requant, threshold, bias):
        if threshold is not None:
            raise _refuse(node, "a bipolar quantizer after an average pool")
        return ir.AvgPool2d(name=name, inputs=(source.node,), kernel=kernel, stride=stride,
                            requant=requant, act=act)
    unit = Fraction(source.act.scale) / (kernel[0] * kernel[1])
    return _Accumulator(origin=node, unit=[unit], make=make, channels=source.shape[0],
                        shape=_pool_shape(source.shape, kernel, stride, (0, 0)))


def _add(state, node, inputs, attributes):
    first, second = inputs[:2]
    if isinstance(first, np.ndarray) and isinstance(second, _Accumulator):
        first, second = second, first
    if isinstance(first, _Accumulator) and isinstance(second, np.ndarray):
        return _add_constant(node, first, second)
    a = _activation_input(node, first, "the first input")
    b = _activation_input(node, second, "the second input")
    if a.shape != b.shape or a.act.binary or b.act.binary:
        raise _refuse(node, "adds quantized activations of different shapes or binary ones")
    ratio = Fraction(a.act.scale) / Fraction(b.act.scale)
    multipliers = (ratio.numerator, ratio.denominator)
    if max(multipliers) >= 2**ir.MULTIPLIER_BITS:
        raise _refuse(node, f"the inputs' scales differ by {float(ratio)!r}, not a ratio of "
                            f"{ir.MULTIPLIER_BITS}-bit integers")
    unit = Fraction(a.act.scale) / multipliers[0]

    def make(name, act, requant, threshold, bias):
        if threshold is not None:
            raise _refuse(node, "a bipolar quantizer after an Add")
        return ir.Add(name=name, inputs=(a.node, b.node), input_multipliers=multipliers,
                      requant=requant, act=act)
    return _Accumulator(origin=node, unit=[unit], make=make, channels=a.shape[0], shape=a.shape)


def _add_constant(node, acc, constant):
    """A bias added after the layer: into ``b`` (real units)."""
    if acc.relu or acc.bias is None:
        raise _refuse(node, "adds a constant after a ReLU or to an accumulator without a bias")
    values = np.broadcast_to(constant.astype(np.float64).reshape(-1), (acc.channels,)) \
        if constant.size in (1, acc.channels) else None
    if values is None:
        raise _refuse(node, f"adds a constant of {constant.size} entries to "
                            f"{acc.channels} channels")
    a = acc.a if acc.a is not None else np.ones(acc.channels)
    acc.a = a
    acc.b = (acc.b if acc.b is not None else np.zeros(acc.channels)) + values
    return acc


def _flatten(state, node, inputs, attributes):
    source = _activation_input(node, inputs[0])
    if node.op_type == "Flatten":
        if attributes.get("axis", 1) != 1:
            raise _refuse(node, "axis other than 1")
    else:
        target = [int(v) for v in _constant_of(node, inputs[1], "the shape").ravel()]
        size = math.prod(source.shape)
        if len(target) != 2 or target[0] not in (-1, 0, 1) or target[1] not in (-1, size) or \
                target == [-1, -1]:
            raise _refuse(node, f"reshapes {source.shape} to {target}; the importer takes a "
                                "flatten to (N, C*H*W) only")
    if len(source.shape) == 1:
        return source
    name = state.name_for(node)
    state.nodes.append(ir.Flatten(name=name, inputs=(source.node,)))
    return _Activation(name, source.act, (math.prod(source.shape),))


def _identity(state, node, inputs, attributes):
    value = inputs[0]
    if isinstance(value, _Accumulator):
        return value


def _constant_node(state, node, inputs, attributes):
    if "value" not in attributes:
        raise _refuse(node, "a Constant without a tensor value")
    return _onnx().numpy_helper.to_array(attributes["value"])


# (fewest, most) inputs of each op.
_ARITY = {
    "Quant": (4, 4), "BipolarQuant": (2, 2), "Trunc": (5, 6), "Conv": (2, 3), "Gemm": (2, 3),
    "MatMul": (2, 2), "Transpose": (1, 1), "Relu": (1, 1), "MaxPool": (1, 1),
    "AveragePool": (1, 1), "GlobalAveragePool": (1, 1), "Add": (2, 2), "Flatten": (1, 1),
    "Reshape": (2, 2), "BatchNormalization": (5, 5), "Identity": (1, 1), "Dropout": (1, 3),
    "Constant": (0, 0),
}
_HANDLERS = {
    "Quant": _quant, "BipolarQuant": _quant, "Trunc": _trunc, "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "Transpose": _transpose, "Relu": _relu, "MaxPool": _maxpool, "AveragePool": _avgpool,
    "GlobalAveragePool": _avgpool, "Add": _add, "Flatten": _flatten, "Reshape": _flatten,
    "BatchNormalization": _batch_norm, "Identity": _identity, "Dropout": _identity,
    "Constant": _constant_node,
}
