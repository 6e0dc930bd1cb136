"""Quantization: post-training calibration and quantization-aware training (QAT).

:func:`prepare` turns a float model into a :class:`QuantNet`. Its forward runs, next to a float
path that carries gradients, the *integer* computation of :mod:`zeroskip.ir` exactly: integer
weights, int32 bias, integer multiplier and shift with round-half-up, clamp, epsilon. The forward
value is the integer result times its scale; gradients reach the float weights through a
straight-through estimator. Exporting a QuantNet (:mod:`.export`) writes the very integers its
forward used, so the golden model and the QAT forward agree bit for bit.

Quantization is symmetric with zero point 0 everywhere: weights per output channel, activations
per tensor, unsigned after a ReLU, so that a real zero is the integer 0 and hardware can skip it.
Integer arithmetic is done in float64, which is exact while every value stays below 2**53: int32
accumulators times 15-bit multipliers stay below 2**46.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import ir
from ..errors import FrontendError
from ..ir import (
    INT32_MAX, INT32_MIN, MAX_BITS, MAX_SHIFT, MIN_BITS, activation_range, weight_range,
)
from .graph import (
    FloatAdd, FloatAvgPool2d, FloatConv2d, FloatFlatten, FloatInput, FloatLinear, FloatMaxPool2d,
)
from .passes import prepare_float_graph
from .trace import trace

EXACT = torch.float64
# Multipliers are normalized to [2**14, 2**15): 15 significant bits, unsigned 16-bit in the IR.
MULTIPLIER_FRACTION_BITS = 15


def quantize_multiplier(ratio):
    """Real ratios -> (multiplier, shift) int32 arrays with ``multiplier / 2**shift ~ ratio``.

    Raises
    ------
    FrontendError
        for a ratio of 2**15 or more: scales that far apart mean a broken calibration.
    """
    ratio = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    multipliers = np.zeros(ratio.shape, np.int64)
    shifts = np.zeros(ratio.shape, np.int64)
    for index, value in enumerate(ratio):
        if value <= 0:
            continue
        mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, mantissa in [.5, 1)
        shift = MULTIPLIER_FRACTION_BITS - exponent
        multiplier = round(mantissa * 2**MULTIPLIER_FRACTION_BITS)
        if multiplier == 2**MULTIPLIER_FRACTION_BITS:
            multiplier, shift = multiplier // 2, shift - 1
        if shift < 0:
            raise FrontendError(f"requantization ratio {value:g} is too large (scales of input, "
                                "weight and output are inconsistent; was the model calibrated?)")
        if shift > MAX_SHIFT:  # a tiny ratio: keep what precision the largest shift allows
            multiplier, shift = round(value * 2**MAX_SHIFT), MAX_SHIFT
        multipliers[index], shifts[index] = multiplier, shift
    return multipliers.astype(np.int32), shifts.astype(np.int32)


def requantize_exact(acc, multiplier, shift, clamp_min, clamp_max, epsilon, channel_axis=1):
    """The IR's requantization on an integer-valued float64 tensor (see :mod:`zeroskip.ir`)."""
    shape = [1] * acc.dim()
    if len(multiplier) > 1:
        shape[channel_axis] = -1
    multiplier = torch.as_tensor(multiplier, dtype=EXACT).reshape(shape)
    shift = torch.as_tensor(shift, dtype=EXACT).reshape(shape)
    half = torch.where(shift > 0, torch.pow(2.0, shift - 1), torch.zeros_like(shift))
    y = torch.floor((acc * multiplier + half) / torch.pow(2.0, shift))
    y = torch.clamp(y, clamp_min, clamp_max)
    return torch.where(y.abs() <= epsilon, torch.zeros_like(y), y)


@dataclass(frozen=True)
class ActFormat:
    """Static part of an activation encoding; the scale is observed from data."""

    bits: int
    signed: bool

    @property
    def qmin(self):
        return activation_range(self.bits, self.signed)[0]

    @property
    def qmax(self):
        return activation_range(self.bits, self.signed)[1]


@dataclass
class QValue:
    """What flows between QuantNet nodes: the float value carrying gradients, and (when
    quantizing) the exact integers and their scale."""

    value: torch.Tensor
    integer: Optional[torch.Tensor] = None
    scale: Optional[float] = None


def straight_through(surrogate, integer, scale):
    exact = (integer * scale).to(surrogate.dtype)
    return surrogate + (exact - surrogate).detach()


class OutputQuantizer(nn.Module):
    """Observes the range of a node's output and derives its scale and clamp bounds."""

    def __init__(self, fmt, activation=None, epsilon=0):
        super().__init__()
        self.fmt = fmt
        self.activation = activation
        self.epsilon = epsilon
        self.register_buffer("amax", torch.zeros((), dtype=EXACT))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def observe(self, value):
        self.amax = torch.maximum(self.amax, value.detach().abs().max().to(EXACT))
        self.observed.fill_(True)

    @property
    def scale(self):
        if not self.observed:
            raise FrontendError("an activation range was never observed: calibrate the QuantNet "
                                "on data (prepare(..., calibration=...) or QuantNet.calibrate)")
        amax = float(self.amax)
        if self.activation == "relu6":
            amax = min(amax, 6.0)
        # A layer whose output is always zero (pruned dead) may take any scale: its integers are 0.
        return (amax if amax > 0 else 1.0) / self.fmt.qmax

    @property
    def clamp(self):
        low = 0 if self.activation is not None else self.fmt.qmin
        high = self.fmt.qmax
        if self.activation == "relu6":
            high = min(high, round(6.0 / self.scale))
        return low, high

    def float_activation(self, value):
        if self.activation == "relu":
            return F.relu(value)
        if self.activation == "relu6":
            return F.relu6(value)
        return value

    def surrogate(self, value):
        """The float stand-in whose gradient the straight-through estimator uses."""
        low, high = self.clamp
        return torch.clamp(value, low * self.scale, high * self.scale)


class QuantInput(nn.Module):
    def __init__(self, fmt):
        super().__init__()
        self.out = OutputQuantizer(fmt)

    def forward(self, x, observing):
        if observing:
            self.out.observe(x)
            return QValue(x)
        scale = self.out.scale
        integer = torch.clamp(torch.round(x.detach().to(EXACT) / scale),
                              self.out.fmt.qmin, self.out.fmt.qmax)
        return QValue(straight_through(x, integer, scale), integer, scale)


@dataclass(frozen=True)
class IntegerLayer:
    """The integer parameters a weight layer exports, as float64 tensors / int32 arrays."""

    weight: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor
    multiplier: np.ndarray
    shift: np.ndarray
    clamp_min: int
    clamp_max: int
    epsilon: int
    out_scale: float


class QuantWeightLayer(nn.Module):
    """Conv2d or Linear (BatchNorm folded, activation fused) with fake-quantized weights."""

    def __init__(self, node, weight_bits, fmt, epsilon):
        super().__init__()
        self.is_conv = isinstance(node, FloatConv2d)
        if self.is_conv:
            self.stride, self.padding, self.groups = node.stride, node.padding, node.groups
        self.weight_bits = weight_bits
        self.weight = nn.Parameter((node.weight * node.mask).float().clone())
        bias = node.bias if node.bias is not None else torch.zeros(node.weight.shape[0])
        self.bias = nn.Parameter(bias.float().clone())
        self.register_buffer("mask", node.mask.clone())
        self.out = OutputQuantizer(fmt, node.activation, epsilon)

    def _apply_op(self, x, weight, bias=None):
        if self.is_conv:
            return F.conv2d(x, weight, bias, self.stride, self.padding, 1, self.groups)
        return F.linear(x, weight, bias)

    def integer_parameters(self, in_scale):
        """Integer weights, bias and requantization for an input of scale ``in_scale``."""
        weight = (self.weight * self.mask).detach().to(EXACT)
        _, limit = weight_range(self.weight_bits)
        amax = weight.abs().flatten(1).max(dim=1).values
        weight_scale = torch.where(amax > 0, amax / limit, torch.ones_like(amax))
        shape = (-1,) + (1,) * (weight.dim() - 1)
        weight_int = torch.clamp(torch.round(weight / weight_scale.reshape(shape)), -limit, limit)
        acc_scale = in_scale * weight_scale
        bias_int = torch.clamp(torch.round(self.bias.detach().to(EXACT) / acc_scale),
                               INT32_MIN, INT32_MAX)
        out_scale = self.out.scale
        multiplier, shift = quantize_multiplier((acc_scale / out_scale).numpy())
        low, high = self.out.clamp
        return IntegerLayer(weight_int, weight_scale, bias_int, multiplier, shift, low, high,
                            self.out.epsilon, out_scale)

    def forward(self, x, observing):
        if observing:
            y = self.out.float_activation(self._apply_op(x.value, self.weight * self.mask,
                                                         self.bias))
            self.out.observe(y)
            return QValue(y)
        p = self.integer_parameters(x.scale)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        weight = self.weight * self.mask
        weight_fake = weight + (p.weight * p.weight_scale.reshape(shape)
                                - weight).detach().to(weight.dtype)
        surrogate = self.out.surrogate(self._apply_op(x.value, weight_fake, self.bias))
        acc = self._apply_op(x.integer, p.weight) + p.bias.reshape((1, -1) + (1,) * (
            x.integer.dim() - 2))
        integer = requantize_exact(acc, p.multiplier, p.shift, p.clamp_min, p.clamp_max,
                                   p.epsilon)
        return QValue(straight_through(surrogate, integer, p.out_scale), integer, p.out_scale)


class QuantAvgPool(nn.Module):
    """Average pool: window sum, then requantize by ~1/window into the input's own scale."""

    def __init__(self, node, fmt, epsilon):
        super().__init__()
        self.kernel, self.stride = node.kernel, node.stride
        self.activation, self.fmt, self.epsilon = node.activation, fmt, epsilon

    def requant(self):
        multiplier, shift = quantize_multiplier(1.0 / (self.kernel[0] * self.kernel[1]))
        low = 0 if self.activation is not None else self.fmt.qmin
        return multiplier, shift, low, self.fmt.qmax

    def forward(self, x, observing):
        surrogate = F.avg_pool2d(x.value, self.kernel, self.stride)
        if self.activation is not None:
            surrogate = F.relu(surrogate)
        if observing:
            return QValue(surrogate)
        window_sum = F.avg_pool2d(x.integer, self.kernel, self.stride, divisor_override=1)
        multiplier, shift, low, high = self.requant()
        integer = requantize_exact(window_sum, multiplier, shift, low, high, self.epsilon)
        return QValue(straight_through(surrogate, integer, x.scale), integer, x.scale)


class QuantAdd(nn.Module):
    """Residual add: both inputs scaled to a common shift, summed, requantized."""

    def __init__(self, node, fmt, epsilon):
        super().__init__()
        self.out = OutputQuantizer(fmt, node.activation, epsilon)

    def integer_parameters(self, scale_a, scale_b):
        out_scale = self.out.scale
        ratios = np.array([scale_a / out_scale, scale_b / out_scale])
        multipliers, shifts = quantize_multiplier(ratios)
        shift = int(shifts.min())  # the larger ratio sets the shift; the other shares it
        input_multipliers = tuple(int(round(r * 2**shift)) for r in ratios)
        low, high = self.out.clamp
        return input_multipliers, shift, low, high, out_scale

    def forward(self, a, b, observing):
        y = self.out.float_activation(a.value + b.value)
        if observing:
            self.out.observe(y)
            return QValue(y)
        (m_a, m_b), shift, low, high, out_scale = self.integer_parameters(a.scale, b.scale)
        acc = a.integer * m_a + b.integer * m_b
        integer = requantize_exact(acc, [1], [shift], low, high, self.out.epsilon)
        return QValue(straight_through(self.out.surrogate(y), integer, out_scale), integer,
                      out_scale)


class QuantMaxPool(nn.Module):
    """Max pooling commutes with a positive scale: exact on the integers and on the floats."""

    def __init__(self, node):
        super().__init__()
        self.kernel, self.stride, self.padding = node.kernel, node.stride, node.padding

    def forward(self, x, observing):
        pool = lambda t: F.max_pool2d(t, self.kernel, self.stride, self.padding)  # noqa: E731
        if observing:
            return QValue(pool(x.value))
        return QValue(pool(x.value), pool(x.integer), x.scale)


class QuantFlatten(nn.Module):
    def forward(self, x, observing):
        if observing:
            return QValue(x.value.flatten(1))
        return QValue(x.value.flatten(1), x.integer.flatten(1), x.scale)


def _per_layer(setting, name, what, default_low=MIN_BITS, default_high=MAX_BITS):
    value = setting.get(name, setting.get("*")) if isinstance(setting, dict) else setting
    if not isinstance(value, int) or isinstance(value, bool) or not \
            default_low <= value <= default_high:
        raise FrontendError(f"{what} for layer {name!r} must be an integer in "
                            f"[{default_low}, {default_high}], got {value!r}")
    return value


def ir_requant(multiplier, shift, low, high, epsilon):
    """An :class:`zeroskip.ir.Requant` from a layer's integer parameters."""
    return ir.Requant(np.asarray(multiplier, np.int32), np.asarray(shift, np.int32),
                      int(low), int(high), int(epsilon))


def ir_activation(fmt, scale):
    """The :class:`zeroskip.ir.Activation` of an :class:`ActFormat` at ``scale``."""
    return ir.Activation(fmt.bits, fmt.signed, float(scale))


class IntegerNet(nn.Module):
    """A float graph's nodes as modules computing the IR's integers, run in topological order.

    ``forward(x)`` returns the dequantized output (a float tensor with gradients);
    :meth:`forward_int` the exact integer output, which equals ``zeroskip.reference.run`` on
    :meth:`to_graph`'s graph. Subclasses build the modules (``_build``) and the graph.
    """

    def __init__(self, float_graph):
        super().__init__()
        self.float_graph = float_graph
        self.formats = {}
        self.node_modules = nn.ModuleDict()
        self.observing = False

    @staticmethod
    def _key(name):
        return name.replace(".", "_")

    def module(self, name):
        return self.node_modules[self._key(name)]

    def _apply(self, node, module, values):
        """One node's :class:`QValue` from its inputs' ``values``."""
        return module(*(values[i] for i in node.inputs), self.observing)

    def run(self, x):
        """Every node's :class:`QValue` for the float batch ``x``."""
        values = {}
        for node in self.float_graph.nodes:
            module = self.module(node.name)
            if isinstance(node, FloatInput):
                values[node.name] = module(x, self.observing)
            else:
                values[node.name] = self._apply(node, module, values)
        return values

    def forward(self, x):
        return self.run(x)[self.float_graph.output].value

    @torch.no_grad()
    def forward_int(self, x):
        """The exact integer output for the float batch ``x`` (int64), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self.run(x)[self.float_graph.output].integer.to(torch.int64)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def calibrate(self, batches):
        """Observe activation ranges on float data (one tensor or an iterable of batches)."""
        return observe_ranges(self, batches)

    def to_graph(self, name="net"):
        """The IR graph of the calibrated net: exactly the integers of its eval forward."""
        raise NotImplementedError


class QuantNet(IntegerNet):
    """A quantized network (int2..int8 weights and activations), trainable with
    quantization-aware training. Call :meth:`calibrate` before the first quantized forward."""

    def __init__(self, float_graph, weight_bits=8, act_bits=8, epsilon=0, input_signed=False):
        super().__init__(float_graph)
        for node in float_graph.nodes:
            self.node_modules[self._key(node.name)] = self._build(
                node, weight_bits, act_bits, epsilon, input_signed)

    def _build(self, node, weight_bits, act_bits, epsilon, input_signed):
        def output_format(activation):
            return ActFormat(_per_layer(act_bits, node.name, "activation bits"),
                             signed=activation is None)

        eps = _per_layer(epsilon, node.name, "epsilon", 0, 2**MAX_BITS)
        if isinstance(node, FloatInput):
            self.formats[node.name] = ActFormat(_per_layer(act_bits, node.name,
                                                           "activation bits"), input_signed)
            return QuantInput(self.formats[node.name])
        if isinstance(node, (FloatConv2d, FloatLinear)):
            self.formats[node.name] = output_format(node.activation)
            return QuantWeightLayer(node, _per_layer(weight_bits, node.name, "weight bits"),
                                    self.formats[node.name], eps)
        if isinstance(node, FloatAdd):
            self.formats[node.name] = output_format(node.activation)
            return QuantAdd(node, self.formats[node.name], eps)
        in_format = self.formats[node.inputs[0]]
        if isinstance(node, FloatAvgPool2d):
            signed = in_format.signed and node.activation is None
            self.formats[node.name] = ActFormat(in_format.bits, signed)
            return QuantAvgPool(node, self.formats[node.name], eps)
        self.formats[node.name] = in_format
        if isinstance(node, FloatMaxPool2d):
            return QuantMaxPool(node)
        if isinstance(node, FloatFlatten):
            return QuantFlatten()
        raise FrontendError(f"cannot quantize {type(node).__name__} {node.source!r}")

    @torch.no_grad()
    def to_graph(self, name="net"):
        scales, nodes = {}, []
        for node in self.float_graph.nodes:
            module, fmt = self.module(node.name), self.formats[node.name]
            inputs = tuple(node.inputs)
            if isinstance(node, FloatInput):
                scales[node.name] = module.out.scale
                nodes.append(ir.Input(node.name, inputs, node.shape,
                                      ir_activation(fmt, scales[node.name])))
            elif isinstance(node, (FloatConv2d, FloatLinear)):
                p = module.integer_parameters(scales[inputs[0]])
                scales[node.name] = p.out_scale
                common = dict(
                    weight=p.weight.numpy().astype(np.int8), bias=p.bias.numpy().astype(np.int32),
                    weight_bits=module.weight_bits, weight_scale=p.weight_scale.numpy(),
                    requant=ir_requant(p.multiplier, p.shift, p.clamp_min, p.clamp_max,
                                       p.epsilon),
                    act=ir_activation(fmt, p.out_scale))
                if isinstance(node, FloatConv2d):
                    nodes.append(ir.Conv2d(node.name, inputs, stride=tuple(node.stride),
                                           padding=tuple(node.padding), groups=node.groups,
                                           **common))
                else:
                    nodes.append(ir.Linear(node.name, inputs, **common))
            elif isinstance(node, FloatAdd):
                (m_a, m_b), shift, low, high, out_scale = module.integer_parameters(
                    scales[inputs[0]], scales[inputs[1]])
                scales[node.name] = out_scale
                nodes.append(ir.Add(node.name, inputs, input_multipliers=(m_a, m_b),
                                    requant=ir_requant([1], [shift], low, high,
                                                       module.out.epsilon),
                                    act=ir_activation(fmt, out_scale)))
            elif isinstance(node, FloatAvgPool2d):
                scales[node.name] = scales[inputs[0]]
                multiplier, shift, low, high = module.requant()
                nodes.append(ir.AvgPool2d(node.name, inputs, kernel=tuple(node.kernel),
                                          stride=tuple(node.stride),
                                          requant=ir_requant(multiplier, shift, low, high,
                                                             module.epsilon),
                                          act=ir_activation(fmt, scales[node.name])))
            elif isinstance(node, FloatMaxPool2d):
                scales[node.name] = scales[inputs[0]]
                nodes.append(ir.MaxPool2d(node.name, inputs, kernel=tuple(node.kernel),
                                          stride=tuple(node.stride),
                                          padding=tuple(node.padding)))
            elif isinstance(node, FloatFlatten):
                scales[node.name] = scales[inputs[0]]
                nodes.append(ir.Flatten(node.name, inputs))
            else:
                raise FrontendError(f"cannot export {type(node).__name__} {node.source!r}")
        return ir.Graph(nodes=tuple(nodes), output=self.float_graph.output, name=name)


@torch.no_grad()
def observe_ranges(net, batches):
    """Run ``net`` (a :class:`QuantNet` or a binary net) in eval mode with its quantizers
    observing, on one tensor or an iterable of batches (a batch may be an ``(x, y)`` pair)."""
    was_training = net.training
    net.eval()
    net.observing = True
    try:
        for batch in [batches] if isinstance(batches, torch.Tensor) else batches:
            net.run(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        net.observing = False
        net.train(was_training)
    return net


def prepare(model, example_input, calibration=None, weight_bits=8, act_bits=8, epsilon=0):
    """A :class:`QuantNet` for ``model``, ready for quantization-aware training.

    Parameters
    ----------
    model : torch.nn.Module
        A float model; ``torch.nn.utils.prune`` masks are honored and pruned weights stay zero.
    example_input : torch.Tensor
        A batch, for tracing and shapes.
    calibration : torch.Tensor or iterable of batches, optional
        Float data whose activation ranges set the scales; ``example_input`` when omitted.
    weight_bits, act_bits : int or dict
        2 to 8; a dict maps layer names (the names of the exported graph) to bits, with ``"*"``
        for the rest. ``act_bits`` sets each node's output width.
    epsilon : int or dict
        Outputs whose integer magnitude is at most this become 0 (dynamic feature-map pruning).
    """
    float_graph = prepare_float_graph(trace(model, example_input))
    data = example_input if calibration is None else calibration
    first = data if isinstance(data, torch.Tensor) else next(iter(data))
    first = first[0] if isinstance(first, (tuple, list)) else first
    net = QuantNet(float_graph, weight_bits, act_bits, epsilon,
                   input_signed=bool(first.min() < 0))
    return net.calibrate(data)
