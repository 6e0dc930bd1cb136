"""Binary neural networks: binary weights, binary activations, thresholds.

:func:`binarize` turns a float model into a :class:`BinaryNet`, trainable like a
:class:`~.qat.QuantNet`:

* every Conv2d / Linear followed by a BatchNorm (or by a ReLU / ReLU6, with or without the
  BatchNorm) becomes a **binary layer**: weights ``sign(w)`` with a per-channel scale
  ``mean |w|`` (pruned weights stay 0: ternary), and its BatchNorm plus the activation become
  ``sign`` (the activation marks where the binary activation goes; it is replaced, not kept).
  In the IR, BatchNorm and sign fold into a :class:`zeroskip.ir.Threshold`, as FINN does;
* a Conv2d / Linear followed by neither (the classifier) keeps binary weights and gives integer
  logits through a requantizer (signed 8 bits);
* layers named in ``int8_layers`` stay int8 quantization-aware layers (:mod:`.qat`), so int8 and
  binary layers mix in one network;
* the input is quantized to ``input_bits`` integers (unsigned when the data is non-negative):
  the first layer takes integer pixels with binary weights.

Forward modes. In **eval** mode the forward computes the IR's integers exactly (float64), so
``forward_int`` equals :func:`zeroskip.reference.run` on the exported graph bit for bit. In
**train** mode binary layers normalize with batch statistics (as BNNs are trained), the sign
passes gradients by a straight-through estimator clipped to ``|x| <= 1``, weights by a plain
one, and the classifier returns its float accumulator. Call :meth:`BinaryNet.calibrate` after
training: it re-observes the ranges the integer encoding needs (input and logits).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import ir
from ..errors import FrontendError
from .graph import (
    FloatActivation, FloatBatchNorm, FloatConv2d, FloatFlatten, FloatInput, FloatLinear,
    FloatMaxPool2d, FloatWeightLayer,
)
from .passes import prepare_float_graph, sole_consumer
from .qat import (
    EXACT, ActFormat, IntegerNet, OutputQuantizer, QuantFlatten, QuantInput, QuantMaxPool,
    QuantWeightLayer, QValue, ir_activation, ir_requant, observe_ranges, quantize_multiplier,
    requantize_exact, straight_through,
)
from .trace import trace

LOGIT_FORMAT = ActFormat(8, signed=True)
BINARY_FORMAT = ActFormat(ir.BINARY_BITS, signed=True)


def split_binary_layers(graph, int8_layers):
    """Detach the BatchNorm and activation after every binary-output layer.

    Returns the graph without them and ``{layer name: FloatBatchNorm or None}`` for the layers
    whose output becomes a sign. Layers in ``int8_layers`` are left for the QAT passes.
    """
    signs, removed = {}, []
    for layer in graph.nodes:
        if not isinstance(layer, FloatWeightLayer) or layer.name in int8_layers:
            continue
        follower, bn = sole_consumer(graph, layer.name), None
        if isinstance(follower, FloatBatchNorm):
            bn = follower
            removed.append(bn.name)
            follower = sole_consumer(graph, bn.name)
        if isinstance(follower, FloatActivation):
            removed.append(follower.name)
        elif bn is None:
            continue  # neither BatchNorm nor activation: integer outputs (the classifier)
        signs[layer.name] = bn
    return graph.replace_nodes({}, removed), signs


def sign_ste(value):
    """``+1`` where ``value >= 0`` else ``-1``; gradient 1 inside ``|value| <= 1`` (hardtanh)."""
    surrogate = torch.clamp(value, -1.0, 1.0)
    exact = torch.where(value >= 0, 1.0, -1.0).to(value.dtype)
    return surrogate + (exact - surrogate).detach()


class BinaryWeightLayer(nn.Module):
    """Conv2d or Linear with binary (or, pruned, ternary) weights and a per-channel scale.

    With ``binary_output`` its output is ``sign(batchnorm(acc))`` (a threshold in the IR; no
    BatchNorm when ``batchnorm`` is None), otherwise integer logits through a requantizer.
    """

    def __init__(self, node, batchnorm, binary_output):
        super().__init__()
        self.is_conv = isinstance(node, FloatConv2d)
        if self.is_conv:
            self.stride, self.padding, self.groups = node.stride, node.padding, node.groups
        self.weight = nn.Parameter((node.weight * node.mask).float().clone())
        bias = node.bias if node.bias is not None else torch.zeros(node.weight.shape[0])
        self.bias = nn.Parameter(bias.float().clone())
        self.register_buffer("mask", node.mask.clone())
        self.binary_output = binary_output
        self.has_batchnorm = batchnorm is not None
        if self.has_batchnorm:
            self.bn_weight = nn.Parameter(batchnorm.weight.float().clone())
            self.bn_bias = nn.Parameter(batchnorm.bias.float().clone())
            self.register_buffer("running_mean", batchnorm.mean.float().clone())
            self.register_buffer("running_var", batchnorm.var.float().clone())
            self.eps = batchnorm.eps
        self.out = None if binary_output else OutputQuantizer(LOGIT_FORMAT)

    def _apply_op(self, x, weight, bias=None):
        if self.is_conv:
            return F.conv2d(x, weight, bias, self.stride, self.padding, 1, self.groups)
        return F.linear(x, weight, bias)

    def _broadcast(self, values, dims):
        return values.reshape((1, -1) + (1,) * (dims - 2))

    def binary_weight(self):
        """``(weight_int, scale)``: signs (0 where pruned, +1 for an exact 0) and mean |w|."""
        weight = (self.weight * self.mask).detach().to(EXACT)
        weight_int = torch.where(weight >= 0, 1.0, -1.0).to(EXACT) * self.mask
        kept = self.mask.flatten(1).sum(dim=1).to(EXACT)
        total = weight.abs().flatten(1).sum(dim=1)
        scale = torch.where(total > 0, total / kept.clamp(min=1), torch.ones_like(total))
        return weight_int, scale

    def _fake_weight(self):
        weight = self.weight * self.mask
        weight_int, scale = self.binary_weight()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        return weight + (weight_int * scale.reshape(shape) - weight).detach().to(weight.dtype)

    def _batchnorm(self, z, training):
        if not self.has_batchnorm:
            return z
        return F.batch_norm(z, self.running_mean, self.running_var, self.bn_weight, self.bn_bias,
                            training, 0.1, self.eps)

    def threshold(self, in_scale, in_bound):
        """The IR threshold equal to ``sign(batchnorm(acc * scale + bias))`` on integers ``acc``.

        ``in_bound`` is the largest input magnitude; thresholds are clipped to what an
        accumulator can reach, so that "always" and "never" stay small numbers.
        """
        weight_int, weight_scale = self.binary_weight()
        acc_scale = in_scale * weight_scale
        channels = weight_int.shape[0]
        if self.has_batchnorm:
            gain = self.bn_weight.detach().to(EXACT) / torch.sqrt(
                self.running_var.to(EXACT) + self.eps)
            mean, shift = self.running_mean.to(EXACT), self.bn_bias.detach().to(EXACT)
        else:
            gain, mean, shift = (torch.ones(channels, dtype=EXACT),
                                 torch.zeros(channels, dtype=EXACT),
                                 torch.zeros(channels, dtype=EXACT))
        # gain * (z - mean) + shift >= 0  <=>  z >= mean - shift / gain (gain > 0; <= if < 0)
        safe_gain = torch.where(gain == 0, torch.ones_like(gain), gain)
        boundary = (mean - shift / safe_gain - self.bias.detach().to(EXACT)) / acc_scale
        bound = weight_int.abs().flatten(1).sum(dim=1) * in_bound
        positive = torch.clamp(torch.ceil(boundary), -bound, bound + 1)
        negative = torch.clamp(-torch.floor(boundary), -bound, bound + 1)
        constant = torch.where(shift >= 0, -bound, bound + 1)  # gain 0: sign(shift) everywhere
        thresholds = torch.where(gain > 0, positive, torch.where(gain < 0, negative, constant))
        signs = torch.where(gain < 0, -1, 1)
        return ir.Threshold(thresholds.numpy().astype(np.int64), signs.numpy().astype(np.int8))

    def requant_parameters(self, in_scale):
        """``(bias_int, multiplier, shift, out_scale)`` of the integer-logit output."""
        _, weight_scale = self.binary_weight()
        acc_scale = in_scale * weight_scale
        bias_int = torch.clamp(torch.round(self.bias.detach().to(EXACT) / acc_scale),
                               ir.INT32_MIN, ir.INT32_MAX)
        out_scale = self.out.scale
        multiplier, shift = quantize_multiplier((acc_scale / out_scale).numpy())
        return bias_int, multiplier, shift, out_scale

    def forward(self, x, observing, in_bound):
        weight_fake = self._fake_weight()
        if observing or self.training:
            z = self._apply_op(x.value, weight_fake, self.bias)
            if not self.binary_output:
                if observing:
                    self.out.observe(z)
                return QValue(z)
            y = sign_ste(self._batchnorm(z, self.training and not observing))
            return QValue(y, y.detach().to(EXACT), 1.0)
        weight_int, _ = self.binary_weight()
        acc = self._apply_op(x.integer, weight_int)
        z = self._apply_op(x.value, weight_fake, self.bias)
        if self.binary_output:
            t = self.threshold(x.scale, in_bound)
            signs = self._broadcast(torch.from_numpy(t.signs.astype(np.float64)), acc.dim())
            limits = self._broadcast(torch.from_numpy(t.thresholds.astype(np.float64)), acc.dim())
            integer = torch.where(signs * acc >= limits, 1.0, -1.0).to(EXACT)
            surrogate = torch.clamp(self._batchnorm(z, False), -1.0, 1.0)
            return QValue(straight_through(surrogate, integer, 1.0), integer, 1.0)
        bias_int, multiplier, shift, out_scale = self.requant_parameters(x.scale)
        acc = acc + self._broadcast(bias_int, acc.dim())
        integer = requantize_exact(acc, multiplier, shift, LOGIT_FORMAT.qmin, LOGIT_FORMAT.qmax, 0)
        return QValue(straight_through(self.out.surrogate(z), integer, out_scale), integer,
                      out_scale)


class BinaryNet(IntegerNet):
    """A binary (or mixed int8 / binary) network, run node by node in topological order.

    ``forward(x)`` returns float outputs with gradients (see the module doc for the train and
    eval modes); :meth:`forward_int` the exact integer output (in eval mode), equal to
    ``zeroskip.reference.run`` on :meth:`to_graph`'s graph.
    """

    def __init__(self, float_graph, signs, input_format, int8_layers):
        super().__init__(float_graph)
        for node in float_graph.nodes:
            self.node_modules[self._key(node.name)] = self._build(
                node, signs, input_format, int8_layers)

    def _build(self, node, signs, input_format, int8_layers):
        if isinstance(node, FloatInput):
            self.formats[node.name] = input_format
            return QuantInput(input_format)
        if isinstance(node, (FloatConv2d, FloatLinear)):
            if node.name in int8_layers:
                self.formats[node.name] = ActFormat(8, signed=node.activation is None)
                return QuantWeightLayer(node, 8, self.formats[node.name], 0)
            binary_output = node.name in signs
            self.formats[node.name] = BINARY_FORMAT if binary_output else LOGIT_FORMAT
            return BinaryWeightLayer(node, signs.get(node.name), binary_output)
        self.formats[node.name] = self.formats[node.inputs[0]]
        if isinstance(node, FloatMaxPool2d):
            return QuantMaxPool(node)
        if isinstance(node, FloatFlatten):
            return QuantFlatten()
        raise FrontendError(f"binarize supports Conv2d, Linear, BatchNorm, ReLU, max pooling and "
                            f"flatten; cannot binarize {type(node).__name__} {node.source!r}")

    def _bound(self, name):
        """Largest magnitude of a node's integer outputs (for threshold clipping)."""
        fmt = self.formats[name]
        return max(-fmt.qmin, fmt.qmax)

    def _apply(self, node, module, values):
        if isinstance(module, BinaryWeightLayer):
            return module(values[node.inputs[0]], self.observing, self._bound(node.inputs[0]))
        return super()._apply(node, module, values)

    @torch.no_grad()
    def calibrate(self, batches):
        """Observe, afresh, the ranges that set the input and logit scales (eval mode)."""
        for module in self.modules():
            if isinstance(module, OutputQuantizer):
                module.amax.zero_()
                module.observed.fill_(False)
        return observe_ranges(self, batches)

    @torch.no_grad()
    def to_graph(self, name="net"):
        scales, nodes = {}, []
        for node in self.float_graph.nodes:
            module, fmt, inputs = self.module(node.name), self.formats[node.name], tuple(
                node.inputs)
            if isinstance(node, FloatInput):
                scales[node.name] = module.out.scale
                nodes.append(ir.Input(node.name, inputs, node.shape,
                                      ir_activation(fmt, scales[node.name])))
                continue
            if isinstance(node, (FloatMaxPool2d, FloatFlatten)):
                scales[node.name] = scales[inputs[0]]
                nodes.append(ir.MaxPool2d(node.name, inputs, kernel=tuple(node.kernel),
                                          stride=tuple(node.stride), padding=tuple(node.padding))
                             if isinstance(node, FloatMaxPool2d) else ir.Flatten(node.name, inputs))
                continue
            in_scale = scales[inputs[0]]
            if isinstance(module, QuantWeightLayer):
                p = module.integer_parameters(in_scale)
                fields = dict(weight=p.weight, weight_scale=p.weight_scale, bias=p.bias,
                              weight_bits=module.weight_bits, requant=ir_requant(
                                  p.multiplier, p.shift, p.clamp_min, p.clamp_max, p.epsilon))
                scales[node.name] = p.out_scale
            else:
                weight, weight_scale = module.binary_weight()
                fields = dict(weight=weight, weight_scale=weight_scale, weight_bits=2)
                if module.binary_output:
                    scales[node.name] = 1.0
                    fields.update(bias=torch.zeros(weight.shape[0]), threshold=module.threshold(
                        in_scale, self._bound(inputs[0])))
                else:
                    bias, multiplier, shift, scales[node.name] = module.requant_parameters(
                        in_scale)
                    fields.update(bias=bias, requant=ir_requant(multiplier, shift, LOGIT_FORMAT.qmin,
                                                              LOGIT_FORMAT.qmax, 0))
            fields.update(weight=fields["weight"].numpy().astype(np.int8),
                          bias=fields["bias"].numpy().astype(np.int32),
                          weight_scale=fields["weight_scale"].numpy().astype(np.float64),
                          act=ir_activation(fmt, scales[node.name]))
            if isinstance(node, FloatConv2d):
                nodes.append(ir.Conv2d(node.name, inputs, stride=tuple(node.stride),
                                       padding=tuple(node.padding), groups=node.groups, **fields))
            else:
                nodes.append(ir.Linear(node.name, inputs, **fields))
        return ir.Graph(nodes=tuple(nodes), output=self.float_graph.output, name=name)


def binarize(model, example_input, calibration=None, *, input_bits=8, int8_layers=()):
    """A :class:`BinaryNet` for ``model``, ready for training with straight-through estimators.

    Parameters
    ----------
    model : torch.nn.Module
        A float model of Conv2d / Linear, BatchNorm, ReLU / ReLU6, max pooling and flatten.
        ``torch.nn.utils.prune`` masks are honored: pruned weights stay 0 (ternary weights).
    example_input : torch.Tensor
        A batch, for tracing and shapes.
    calibration : torch.Tensor or iterable of batches, optional
        Float data whose ranges set the input and logit scales; ``example_input`` if omitted.
    input_bits : int
        Width of the integer input (the first layer's pixels), 2 to 8.
    int8_layers : iterable of str
        Conv2d / Linear layers (by qualified name, ``features.0``) kept as int8 QAT layers, with
        their BatchNorm folded and ReLU fused: a mixed int8 / binary network.

    Raises
    ------
    FrontendError
        for a module binarize cannot translate, an unknown layer name in ``int8_layers``, or a
        bad ``input_bits``.
    """
    if not isinstance(input_bits, int) or isinstance(input_bits, bool) or not \
            ir.MIN_BITS <= input_bits <= ir.MAX_BITS:
        raise FrontendError(f"input_bits must be an integer in [{ir.MIN_BITS}, {ir.MAX_BITS}], "
                            f"got {input_bits!r}")
    int8_layers = frozenset(int8_layers)
    traced = trace(model, example_input)
    layer_names = {node.name for node in traced.nodes if isinstance(node, FloatWeightLayer)}
    unknown = sorted(int8_layers - layer_names)
    if unknown:
        raise FrontendError(f"int8_layers names no Conv2d or Linear: {unknown}; layers are "
                            f"{sorted(layer_names)}")
    graph, signs = split_binary_layers(traced, int8_layers)
    float_graph = prepare_float_graph(graph)
    data = example_input if calibration is None else calibration
    first = data if isinstance(data, torch.Tensor) else next(iter(data))
    first = first[0] if isinstance(first, (tuple, list)) else first
    input_format = ActFormat(input_bits, signed=bool(first.min() < 0))
    net = BinaryNet(float_graph, signs, input_format, int8_layers)
    return net.calibrate(data)
