"""Export: a PyTorch model to the layer IR.

A :class:`~.qat.QuantNet` or a :class:`~.binary.BinaryNet` exports the integers its forward
computes with; any other model is first quantized post-training (:func:`~.qat.prepare` with the
calibration data).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ir
from ..analysis import empty_layers
from ..errors import FrontendError, warn_empty_layers
from .graph import (
    FloatAdd, FloatAvgPool2d, FloatConv2d, FloatFlatten, FloatInput, FloatLinear, FloatMaxPool2d,
)
from .qat import QuantNet, prepare


def export(model, example_input, calibration=None, *, weight_bits=8, act_bits=8, epsilon=0,
           name=None):
    """Quantize ``model`` and return its :class:`zeroskip.ir.Graph`.

    Parameters
    ----------
    model : torch.nn.Module, QuantNet or BinaryNet
        A QuantNet (from :func:`zeroskip.qat.prepare`) or a BinaryNet (from
        :func:`zeroskip.binarize`), perhaps trained, exports its learned parameters as they are;
        a float model is quantized post-training.
    example_input : torch.Tensor
        A batch; fixes the input shape.
    calibration : torch.Tensor or iterable of batches, optional
        For post-training quantization: data whose ranges set the activation scales
        (``example_input`` when omitted). Ignored for a QuantNet or BinaryNet, which is
        calibrated already.
    weight_bits, act_bits, epsilon
        As for :func:`zeroskip.qat.prepare`; ignored for a QuantNet.

    Warns
    -----
    zeroskip.errors.EmptyLayerWarning
        Naming every conv2d and linear layer of the graph without a nonzero integer weight.
    """
    from .binary import BinaryNet  # binary builds on this module's helpers

    if isinstance(model, BinaryNet):
        graph = model.to_graph(name or "net")
    else:
        if not isinstance(model, QuantNet):
            model = prepare(model, example_input, calibration, weight_bits=weight_bits,
                            act_bits=act_bits, epsilon=epsilon)
        graph = to_graph(model, name or "net")
    warn_empty_layers(empty_layers(graph), f"export of graph {graph.name!r}")
    return graph


def _requant(multiplier, shift, low, high, epsilon):
    return ir.Requant(np.asarray(multiplier, np.int32), np.asarray(shift, np.int32),
                      int(low), int(high), int(epsilon))


def _activation(fmt, scale):
    return ir.Activation(fmt.bits, fmt.signed, float(scale))


@torch.no_grad()
def to_graph(net, name="net"):
    """The IR graph of a calibrated :class:`QuantNet`."""
    scales, nodes = {}, []
    for node in net.float_graph.nodes:
        module, fmt = net.module(node.name), net.formats[node.name]
        inputs = tuple(node.inputs)
        if isinstance(node, FloatInput):
            scales[node.name] = module.out.scale
            nodes.append(ir.Input(node.name, inputs, node.shape,
                                  _activation(fmt, scales[node.name])))
        elif isinstance(node, (FloatConv2d, FloatLinear)):
            p = module.integer_parameters(scales[inputs[0]])
            scales[node.name] = p.out_scale
            common = dict(
                weight=p.weight.numpy().astype(np.int8), bias=p.bias.numpy().astype(np.int32),
                weight_bits=module.weight_bits, weight_scale=p.weight_scale.numpy(),
                requant=_requant(p.multiplier, p.shift, p.clamp_min, p.clamp_max, p.epsilon),
                act=_activation(fmt, p.out_scale))
            if isinstance(node, FloatConv2d):
                nodes.append(ir.Conv2d(node.name, inputs, stride=tuple(node.stride),
                                       padding=tuple(node.padding), groups=node.groups, **common))
            else:
                nodes.append(ir.Linear(node.name, inputs, **common))
        elif isinstance(node, FloatAdd):
            (m_a, m_b), shift, low, high, out_scale = module.integer_parameters(
                scales[inputs[0]], scales[inputs[1]])
            scales[node.name] = out_scale
            nodes.append(ir.Add(node.name, inputs, input_multipliers=(m_a, m_b),
                                requant=_requant([1], [shift], low, high, module.out.epsilon),
                                act=_activation(fmt, out_scale)))
        elif isinstance(node, FloatAvgPool2d):
            scales[node.name] = scales[inputs[0]]
            multiplier, shift, low, high = module.requant()
            nodes.append(ir.AvgPool2d(node.name, inputs, kernel=tuple(node.kernel),
                                      stride=tuple(node.stride),
                                      requant=_requant(multiplier, shift, low, high,
                                                       module.epsilon),
                                      act=_activation(fmt, scales[node.name])))
        elif isinstance(node, FloatMaxPool2d):
            scales[node.name] = scales[inputs[0]]
            nodes.append(ir.MaxPool2d(node.name, inputs, kernel=tuple(node.kernel),
                                      stride=tuple(node.stride), padding=tuple(node.padding)))
        elif isinstance(node, FloatFlatten):
            scales[node.name] = scales[inputs[0]]
            nodes.append(ir.Flatten(node.name, inputs))
        else:
            raise FrontendError(f"cannot export {type(node).__name__} {node.source!r}")
    return ir.Graph(nodes=tuple(nodes), output=net.float_graph.output, name=name)
