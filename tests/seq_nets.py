"""Small graphs that exercise every kind of step of the sequential engine, for its tests."""

from __future__ import annotations

import numpy as np

from zeroskip import ir
from zeroskip.compiler.layers import LayerSpec, network_layers
from zeroskip.hdl.seq_plan import Program

U8 = ir.Activation(8, False, 0.05)
S8 = ir.Activation(8, True, 0.05)
U6 = ir.Activation(6, False, 0.05)


def requant(rng, channels, act, *, epsilon=0, low=15, high=18):
    return ir.Requant(rng.integers(2**14, 2**15, channels).astype(np.int32),
                      rng.integers(low, high, channels).astype(np.int32), act.qmin, act.qmax,
                      epsilon)


def conv(rng, name, source, channels, filters, *, kernel=3, stride=1, padding=1, act=U8,
         density=0.4, groups=1, epsilon=0):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    stride = (stride, stride) if isinstance(stride, int) else stride
    padding = (padding, padding) if isinstance(padding, int) else padding
    shape = (filters, channels // groups, *kernel)
    weight = rng.integers(-127, 128, shape) * (rng.random(shape) < density)
    weight[0] = 0  # an all-zero filter still gives its bias, requantized
    return ir.Conv2d(name, (source,), weight.astype(np.int8),
                     rng.integers(-3000, 3000, filters).astype(np.int32), 8, np.ones(filters),
                     stride, padding, groups, requant(rng, filters, act, epsilon=epsilon), act)


def linear(rng, name, source, features, outputs, act=S8, density=0.5):
    weight = rng.integers(-127, 128, (outputs, features)) * \
        (rng.random((outputs, features)) < density)
    return ir.Linear(name, (source,), weight.astype(np.int8),
                     rng.integers(-3000, 3000, outputs).astype(np.int32), 8, np.ones(outputs),
                     requant(rng, outputs, act), act)


def add(rng, name, a, b, channels, act=U8, multipliers=(9000, 26000)):
    return ir.Add(name, (a, b), multipliers, requant(rng, channels, act, low=14, high=16), act)


def cross_rows(rng):
    """A 5-wide map (groups cross rows), a stride-2 padded conv with a tall kernel (phases in
    both directions), a depthwise conv, a residual add, a fused average pool and a linear."""
    return ir.Graph((
        ir.Input("x", (), (1, 11, 10), S8),
        conv(rng, "stem", "x", 1, 16, kernel=(5, 4), stride=2, padding=(2, 1), density=0.8),
        conv(rng, "dw", "stem", 16, 16, groups=16, density=1.0),
        conv(rng, "pw", "dw", 16, 16, kernel=1, padding=0, act=S8, density=0.5),
        add(rng, "add", "stem", "pw", 16),
        ir.AvgPool2d("pool", ("add",), (5, 5), (5, 5),
                     ir.Requant(np.array([20972], np.int32), np.array([19], np.int32), 0, 255),
                     U8),
        ir.Flatten("flat", ("pool",)),
        linear(rng, "fc", "flat", 16, 10),
    ), "fc", name="cross_rows")


def row_mode(rng):
    """Rows of 8 (groups never cross), a stride-2 conv with 1x1 shortcut, max pools (one
    padded), a walked average pool, a linear on a 2x2 image, 6-bit activations."""
    return ir.Graph((
        ir.Input("x", (), (3, 8, 8), U8),
        conv(rng, "c1", "x", 3, 8, act=U6),
        ir.MaxPool2d("p1", ("c1",), (3, 3), (1, 1), (1, 1)),
        conv(rng, "c2", "p1", 8, 16, kernel=4, stride=2, padding=1, act=S8, epsilon=2),
        ir.AvgPool2d("p2", ("c2",), (2, 2), (2, 2),
                     ir.Requant(np.array([16384], np.int32), np.array([16], np.int32),
                                -128, 127), S8),
        ir.Flatten("f", ("p2",)),
        linear(rng, "fc", "f", 64, 12),
    ), "fc", name="row_mode")


def flat_chain(rng):
    """Linear layers on flat tensors (position = feature), wide enough to need filler entries."""
    return ir.Graph((
        ir.Input("x", (), (300,), S8),
        linear(rng, "l1", "x", 300, 24, act=U8, density=0.05),
        linear(rng, "l2", "l1", 24, 20, act=U8),
        linear(rng, "l3", "l2", 20, 7, act=S8),
    ), "l3", name="flat_chain")


def odd_shapes(rng):
    """Signed input narrower than a block, a 2x2 kernel without padding (rows of 4 in a 5-wide
    input: groups of one row), an overlapping max pool, a 1x1 conv, a feature-map output."""
    return ir.Graph((
        ir.Input("x", (), (2, 5, 5), S8),
        conv(rng, "c1", "x", 2, 4, kernel=2, padding=0, act=U6, density=0.7),
        ir.MaxPool2d("p1", ("c1",), (2, 2), (1, 1)),
        conv(rng, "c2", "p1", 4, 8, kernel=3, padding=1, act=S8, density=0.5),
        conv(rng, "c3", "c2", 8, 5, kernel=1, padding=0, act=S8, density=0.6),
    ), "c3", name="odd")


NETS = {"cross_rows": cross_rows, "row_mode": row_mode, "flat_chain": flat_chain,
        "odd": odd_shapes}


def inputs(rng, graph, batch, density=0.6):
    act = graph.input.act
    x = rng.integers(act.qmin, act.qmax + 1, (batch, *graph.input.shape))
    return x * (rng.random(x.shape) < density)


def layer_specs(graph):
    return [LayerSpec(node, sources, in_shapes, in_acts, 0, node.name)
            for node, sources, in_shapes, in_acts in network_layers(graph)]


def program(graph, **options):
    return Program.of(layer_specs(graph), input_name=graph.input.name,
                      in_shape=graph.input.shape, in_act=graph.input.act, **options)
