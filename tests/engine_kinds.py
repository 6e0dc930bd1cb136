"""Every engine kind in a small configuration, with its golden model: for the reset tests
(test_reset.py) and the formal proofs (test_formal.py).

A :class:`Kind` makes a fresh engine (each is elaborated once), names its input and output
streams with their beats per inference, draws random inputs, and gives the golden outputs
(``zeroskip.reference``) of those inputs, all as stream values, one row per inference.
"""
# amaranth: UnusedElaboratable=no

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from amaranth.hdl import Shape

import zeroskip
from zeroskip import ir, reference
from zeroskip.hdl.add import AddEngine
from zeroskip.hdl.argmax import ArgmaxEngine
from zeroskip.hdl.common import decode_beats, encode_beats, from_beats, to_beats
from zeroskip.hdl.conv import SparseConvEngine
from zeroskip.hdl.pool import AvgPool2dEngine, MaxPool2dEngine
from zeroskip.hdl.requant import Requantizer
from zeroskip.hdl.xnor import XnorConvEngine

BINARY = ir.Activation(1, True, 1.0)
U8 = ir.Activation(8, False, 0.05)
S8 = ir.Activation(8, True, 0.05)


@dataclass(frozen=True)
class Kind:
    """One engine kind in one configuration.

    ``make()`` gives a fresh engine; ``inputs`` / ``outputs`` map its stream members to the beats
    of one inference; ``sample(rng, n, loud=False)`` gives ``n`` inferences' inputs, ``{stream:
    (n, beats)}`` stream values (dicts for a struct payload), ``loud`` ones the extremes of their
    range (see :func:`activations`); ``golden(inputs)`` the golden model's outputs
    for them, ``{stream: (n, beats)}``; ``graph`` the graph of a one-layer kind.
    """

    make: Callable
    inputs: dict
    outputs: dict
    sample: Callable
    golden: Callable
    graph: ir.Graph | None = None


# --- nodes ---------------------------------------------------------------------------------------


def requant(rng, channels, act, shift=(8, 11)):
    return ir.Requant(rng.integers(2**6, 2**9, channels).astype(np.int32),
                      rng.integers(*shift, channels).astype(np.int32), act.qmin, act.qmax)


def activations(rng, shape, act, density=0.6, loud=False):
    """Random values of ``act``, a fraction ``1 - density`` of them 0 (binary: -1 / +1); or,
    ``loud``, only its extremes, none 0: what leaves the most behind in an engine."""
    if act.binary:
        return rng.choice([-1, 1], shape)
    if loud:
        return rng.choice([act.qmin or act.qmax, act.qmax], shape)
    return rng.integers(act.qmin, act.qmax + 1, shape) * (rng.random(shape) < density)


def weights(rng, shape, bits, density=0.5):
    """Random weights of ``bits`` bits, a fraction ``1 - density`` of them 0, and every filter's
    first one the largest (no filter empty by chance: every lane has work)."""
    limit = 2 ** (bits - 1) - 1
    weight = rng.integers(-limit, limit + 1, shape) * (rng.random(shape) < density)
    weight.reshape(shape[0], -1)[:, 0] = limit
    return weight.astype(np.int8)


def weight_layer(rng, op, in_shape, filters, act, *, kernel=1, padding=0, stride=1,
                 weight_bits=8, binary_out=False):
    """A conv2d (``op == "conv2d"``, on ``in_shape`` (C, H, W)) or linear layer (on
    ``(features,)``) ending in a requantizer to ``act``, or in a threshold (``binary_out``)."""
    fan_in = int(np.prod(in_shape)) if op == "linear" else in_shape[0] * kernel * kernel
    if binary_out:
        output = dict(threshold=ir.Threshold(
            rng.integers(-fan_in // 2, fan_in // 2 + 1, filters).astype(np.int64),
            rng.choice([-1, 1], filters).astype(np.int8)), act=BINARY)
    else:
        output = dict(requant=requant(rng, filters, act), act=act)
    bias = rng.integers(-20, 21, filters).astype(np.int32)
    if op == "linear":
        return ir.Linear("layer", ("x",), weights(rng, (filters, fan_in), weight_bits), bias,
                         weight_bits, np.ones(filters), **output)
    return ir.Conv2d("layer", ("x",),
                     weights(rng, (filters, in_shape[0], kernel, kernel), weight_bits), bias,
                     weight_bits, np.ones(filters), (stride, stride), (padding, padding), 1,
                     **output)


# --- kinds ---------------------------------------------------------------------------------------


def _rows(tensors, act):
    """A batch of tensors -> their stream values, one row per inference."""
    return np.stack([encode_beats(to_beats(item), act) for item in tensors])


def tensors(rows, shape, act):
    """Rows of stream values -> the batch of tensors of ``shape`` they carry."""
    return np.stack([from_beats(decode_beats(row, act), shape) for row in rows])


def layer_kind(node, in_shape, in_act, make):
    """One layer: ``make(node, in_shape, in_act)`` builds its engine; the golden model runs the
    one-layer graph."""
    in_shape = tuple(in_shape)
    graph = ir.Graph((ir.Input("x", (), in_shape, in_act), node), node.name)
    out_shape, out_act = graph.shapes[node.name], graph.acts[node.name]
    return Kind(
        make=lambda: make(node, in_shape, in_act),
        inputs={"i_stream": int(np.prod(in_shape))},
        outputs={"o_stream": int(np.prod(out_shape))},
        sample=lambda rng, n, loud=False: {"i_stream": _rows(
            activations(rng, (n, *in_shape), in_act, loud=loud), in_act)},
        golden=lambda inputs: {"o_stream": _rows(reference.run(
            graph, tensors(inputs["i_stream"], in_shape, in_act)), out_act)},
        graph=graph)


def conv_kind(rng, op, in_shape, filters, *, act=U8, lanes=1, chunk=4, zero_skip=True,
              **layer):
    """:class:`SparseConvEngine` on an integer input (``in_act`` = ``act``)."""
    node = weight_layer(rng, op, in_shape, filters, act, **layer)
    return layer_kind(node, in_shape, act, lambda node, shape, in_act: SparseConvEngine(
        node, shape, in_act, lanes=lanes, zero_skip=zero_skip, chunk=chunk))


def xnor_kind(rng, op, in_shape, filters, *, act=S8, lanes=1, width=8, **layer):
    """:class:`XnorConvEngine` on a binary input."""
    node = weight_layer(rng, op, in_shape, filters, act, weight_bits=2, **layer)
    return layer_kind(node, in_shape, BINARY, lambda node, shape, in_act: XnorConvEngine(
        node, shape, in_act, width=width, lanes=lanes))


def pool_kind(rng, op, in_shape, kernel, stride, *, act=S8, padding=0):
    """:class:`MaxPool2dEngine` (``op == "max"``) or :class:`AvgPool2dEngine`."""
    if op == "max":
        node = ir.MaxPool2d("pool", ("x",), (kernel, kernel), (stride, stride),
                            (padding, padding))
        return layer_kind(node, in_shape, act, MaxPool2dEngine)
    window = kernel * kernel
    node = ir.AvgPool2d("pool", ("x",), (kernel, kernel), (stride, stride),
                        ir.Requant(np.full(1, round(2**10 / window), np.int32),
                                   np.full(1, 10, np.int32), act.qmin, act.qmax), act)
    return layer_kind(node, in_shape, act, AvgPool2dEngine)


def add_kind(rng, shape, *, act=S8, multipliers=(3, 1)):
    """:class:`AddEngine`: two input streams."""
    node = ir.Add("add", ("a", "b"), multipliers, requant(rng, shape[0], act, shift=(1, 3)),
                  act)

    def golden(inputs):
        a, b = (tensors(inputs[name], shape, act) for name in ("i_stream_a", "i_stream_b"))
        return {"o_stream": _rows(reference.add(node, a, b), act)}

    def sample(rng, n, loud=False):
        return {name: _rows(activations(rng, (n, *shape), act, loud=loud), act)
                for name in ("i_stream_a", "i_stream_b")}

    beats = int(np.prod(shape))
    return Kind(lambda: AddEngine(node, shape, act, act),
                {"i_stream_a": beats, "i_stream_b": beats}, {"o_stream": beats}, sample, golden)


def requantizer_kind(rng, channels, acc_bits, *, act=S8):
    """:class:`Requantizer`: an inference is one accumulator per channel."""
    node_requant = requant(rng, channels, act, shift=(2, 6))
    acc_shape = Shape(acc_bits, signed=True)

    def sample(rng, n, loud=False):
        low, high = -(1 << acc_bits - 1), (1 << acc_bits - 1) - 1
        acc = rng.choice([low, high], (n, channels)) if loud else \
            rng.integers(low, high + 1, (n, channels))
        return {"i_stream": np.array([[{"acc": int(value), "channel": channel}
                                       for channel, value in enumerate(row)] for row in acc])}

    def golden(inputs):
        acc = np.array([[beat["acc"] for beat in row] for row in inputs["i_stream"]])
        return {"o_stream": reference.requantize(acc, node_requant)}

    return Kind(lambda: Requantizer(node_requant, acc_shape, channels, act),
                {"i_stream": channels}, {"o_stream": channels}, sample, golden)


def argmax_kind(features, *, act=S8):
    """:class:`ArgmaxEngine`: the logits pass through, the class follows."""
    def sample(rng, n, loud=False):
        # Few values, so that ties occur: the first of equal logits wins.
        return {"i_stream": np.full((n, features), 2) if loud else
                rng.integers(-2, 3, (n, features))}

    def golden(inputs):
        logits = inputs["i_stream"]
        return {"o_stream": logits, "o_stream_class": logits.argmax(axis=1)[:, None]}

    return Kind(lambda: ArgmaxEngine(features, act), {"i_stream": features},
                {"o_stream": features, "o_stream_class": 1}, sample, golden)


def stream_kind(make, beats, width, outputs=("o_stream",)):
    """A stream part (register slice, FIFO, fork): every output gives back the input."""
    return Kind(make, {"i_stream": beats}, {name: beats for name in outputs},
                lambda rng, n, loud=False: {"i_stream": np.full((n, beats), (1 << width) - 1)
                                            if loud else rng.integers(0, 1 << width, (n, beats))},
                lambda inputs: {name: inputs["i_stream"] for name in outputs})


def network_kind(graph, **options):
    """A whole graph's top, ``zeroskip.compile(graph, **options).engine()``: the logits and,
    for a flat output, the class."""
    in_shape, in_act = graph.input.shape, graph.input.act
    out_shape, out_act = graph.shapes[graph.output], graph.acts[graph.output]
    outputs = {"o_stream": int(np.prod(out_shape))}
    if len(out_shape) == 1:
        outputs["o_stream_class"] = 1

    def golden(inputs):
        y = reference.run(graph, tensors(inputs["i_stream"], in_shape, in_act))
        result = {"o_stream": _rows(y, out_act)}
        if "o_stream_class" in outputs:
            result["o_stream_class"] = y.reshape(len(y), -1).argmax(axis=1)[:, None]
        return result

    return Kind(lambda: zeroskip.compile(graph, **options).engine(),
                {"i_stream": int(np.prod(in_shape))}, outputs,
                lambda rng, n, loud=False: {"i_stream": _rows(
                    activations(rng, (n, *in_shape), in_act, loud=loud), in_act)},
                golden)


def classifier_graph(rng, in_shape=(2, 4, 4), act=U8):
    """conv (padded) -> max pool -> flatten -> linear: a small classifier."""
    channels, height, width = in_shape
    conv = weight_layer(rng, "conv2d", in_shape, 4, act, kernel=3, padding=1)
    conv = _renamed(conv, "conv", "x")
    features = 4 * (height // 2) * (width // 2)
    fc = _renamed(weight_layer(rng, "linear", (features,), 4, S8), "fc", "flat")
    return ir.Graph((ir.Input("x", (), in_shape, act), conv,
                     ir.MaxPool2d("pool", ("conv",), (2, 2), (2, 2)),
                     ir.Flatten("flat", ("pool",)), fc), "fc", name="classifier")


def residual_graph(rng, in_shape=(2, 4, 4), act=U8):
    """A stem, a residual block (a conv and an identity skip: a fork, whole-tensor FIFOs, an
    add), a global average pool and a linear classifier."""
    channels, height, width = in_shape
    stem = _renamed(weight_layer(rng, "conv2d", in_shape, 2, act, kernel=3, padding=1),
                    "stem", "x")
    block = _renamed(weight_layer(rng, "conv2d", (2, height, width), 2, act, kernel=3,
                                  padding=1), "block", "stem")
    add = ir.Add("add", ("block", "stem"), (1, 1), requant(rng, 2, act, shift=(1, 2)), act)
    gap = ir.AvgPool2d("gap", ("add",), (height, width), (height, width),
                       ir.Requant(np.full(1, round(2**10 / (height * width)), np.int32),
                                  np.full(1, 10, np.int32), act.qmin, act.qmax), act)
    fc = _renamed(weight_layer(rng, "linear", (2,), 3, S8), "fc", "flat")
    return ir.Graph((ir.Input("x", (), in_shape, act), stem, block, add, gap,
                     ir.Flatten("flat", ("gap",)), fc), "fc", name="residual")


def _renamed(node, name, source):
    from dataclasses import replace

    return replace(node, name=name, inputs=(source,))
