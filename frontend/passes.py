"""Rewrites of the float graph, each a pass with one contract: ``apply(graph) -> graph``.

They bring a traced model to the form :mod:`.qat` quantizes: zero padding folded into the conv
after it, BatchNorm folded into the conv or linear before it, every ReLU / ReLU6 fused into the
op that produces its input.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .graph import (
    FUSABLE, FloatActivation, FloatBatchNorm, FloatConv2d, FloatFlatten, FloatMaxPool2d,
    FloatPad, FloatWeightLayer,
)


def sole_consumer(graph, name):
    consumers = graph.consumers(name)
    return consumers[0] if len(consumers) == 1 and graph.output != name else None


class FoldPad:
    """``conv(pad(x))`` -> ``conv'(x)``: zero padding moved into the conv it alone feeds.

    The IR pads symmetrically. Padding ``p_before, p_after`` on top of the conv's own ``q`` per
    side becomes ``q + max(p_before, p_after)`` per side, and the kernel grows by
    ``max - p_before`` zero taps before and ``max - p_after`` after, which puts every window
    back where it was: exactly the same outputs, and the same output size. Keras's 'same'
    padding at stride 2 on an even size (0 before, 1 after) turns a 3x3 kernel into 4x4. The
    added taps are masked: they stay zero through QAT and export, zero-skip engines never issue
    them, but they count as weights and dense MACs of the graph.
    """

    def apply(self, graph):
        replacements, removed = {}, []
        for pad in graph.nodes:
            if not isinstance(pad, FloatPad):
                continue
            conv = sole_consumer(graph, pad.name)
            if not isinstance(conv, FloatConv2d) or conv.inputs != (pad.name,):
                continue
            left, right, top, bottom = pad.padding
            height = self._fold(top, bottom, conv.padding[0])
            width = self._fold(left, right, conv.padding[1])
            # F.pad lists the last dimension first: (left, right, top, bottom) of the kernel.
            taps = (width[1], width[2], height[1], height[2])
            replacements[conv.name] = replace(
                conv, padding=(height[0], width[0]), weight=F.pad(conv.weight, taps),
                mask=F.pad(conv.mask, taps))
            removed.append(pad.name)
        return graph.replace_nodes(replacements, removed)

    @staticmethod
    def _fold(before, after, own):
        """Symmetric padding and the zero taps to add before and after, for one dimension."""
        wider = max(before, after)
        return own + wider, wider - before, wider - after


class FoldBatchNorm:
    """``bn(conv(x))`` -> ``conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` per output channel.

    Pruned weights stay zero (scaling keeps zeros) and the mask is unchanged.
    """

    def apply(self, graph):
        replacements, removed = {}, []
        for bn in graph.nodes:
            if not isinstance(bn, FloatBatchNorm):
                continue
            layer = graph.node(bn.inputs[0])
            if not isinstance(layer, FloatWeightLayer) or layer.activation is not None \
                    or sole_consumer(graph, layer.name) is not bn:
                continue
            layer = replacements.get(layer.name, layer)
            factor = bn.weight / torch.sqrt(bn.var + bn.eps)
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.mean)
            replacements[layer.name] = replace(
                layer, weight=layer.weight * factor.reshape(shape),
                bias=(bias - bn.mean) * factor + bn.bias)
            removed.append(bn.name)
        return graph.replace_nodes(replacements, removed)


class HoistActivation:
    """``relu(maxpool(x))`` -> ``maxpool(relu(x))``, likewise through flatten.

    ReLU and ReLU6 are monotonic and elementwise, so they commute with max pooling and
    flattening; hoisting them lets :class:`FuseActivation` fold them into the conv before.
    """

    def apply(self, graph):
        while True:
            for act in graph.nodes:
                if not isinstance(act, FloatActivation):
                    continue
                middle = graph.node(act.inputs[0])
                if isinstance(middle, (FloatMaxPool2d, FloatFlatten)) \
                        and sole_consumer(graph, middle.name) is act \
                        and sole_consumer(graph, middle.inputs[0]) is middle:
                    graph = self._swap(graph, act, middle)
                    break
            else:
                return graph

    @staticmethod
    def _swap(graph, act, middle):
        nodes = []
        for node in graph.nodes:
            if node is middle:
                nodes.append(act.with_inputs(middle.inputs))
                nodes.append(middle.with_inputs((act.name,)))
            elif node is act:
                continue
            else:
                nodes.append(node.with_inputs(
                    middle.name if i == act.name else i for i in node.inputs))
        shapes = dict(graph.shapes)
        shapes[act.name] = graph.shapes[middle.inputs[0]]
        shapes[middle.name] = graph.shapes[act.name]
        # Consumers of the activation now read the pool/flatten, which keeps its name.
        output = middle.name if graph.output == act.name else graph.output
        return type(graph)(tuple(nodes), output, shapes)


class FuseActivation:
    """``relu(op(x))`` -> ``op(x)`` with ``activation="relu"`` (same for relu6), where ``op`` is
    a conv, linear, add or average pool feeding only the activation."""

    def apply(self, graph):
        replacements, removed = {}, []
        for act in graph.nodes:
            if not isinstance(act, FloatActivation):
                continue
            producer = graph.node(act.inputs[0])
            producer = replacements.get(producer.name, producer)
            if not isinstance(producer, FUSABLE) or sole_consumer(graph, producer.name) is not act:
                continue
            # relu after relu6 is still relu6; relu6 after relu is relu6.
            kind = "relu6" if "relu6" in (act.kind, producer.activation) else "relu"
            replacements[producer.name] = replace(producer, activation=kind)
            removed.append(act.name)
        return graph.replace_nodes(replacements, removed)


DEFAULT_PASSES = (FoldPad(), FoldBatchNorm(), HoistActivation(), FuseActivation())


def prepare_float_graph(graph, passes=DEFAULT_PASSES):
    """Run ``passes`` in order, then check the result can be quantized."""
    for transform in passes:
        graph = transform.apply(graph)
    graph.check_quantizable()
    return graph
