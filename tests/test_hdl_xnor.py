# amaranth: UnusedElaboratable=no
"""The XNOR-popcount engine in the Amaranth simulator: ``ref_*`` (golden) vs ``rtl_*``."""

import numpy as np
import pytest

import zeroskip
from zeroskip import ir, reference
from zeroskip.hdl.common import batch_from_beats, batch_to_beats, decode_beats, encode_beats
from zeroskip.hdl.xnor import XnorConvEngine
from zeroskip.hdl.verilog import convert
from zeroskip.testbench.verilog import lint

from hdl_sim import engine_kinds, rtl_network, run_streams

STALLS = 0.3
BINARY = ir.Activation(1, True, 1.0)
S8 = ir.Activation(8, True, 0.05)


def ternary(rng, shape, zeros):
    """Weights of -1 / +1, a fraction ``zeros`` of them 0 (0: binary weights)."""
    return (rng.choice([-1, 1], shape) * (rng.random(shape) >= zeros)).astype(np.int8)


def threshold(rng, filters, fan_in):
    """Thresholds inside the sums' range, so that both output values occur; mixed signs."""
    return ir.Threshold(rng.integers(-fan_in // 3, fan_in // 3 + 1, filters).astype(np.int64),
                        rng.choice([-1, 1], filters).astype(np.int8))


def conv_graph(rng, *, channels, filters, size, kernel, stride=1, padding=0, groups=1,
               zeros=0.0):
    height, width = size if isinstance(size, tuple) else (size, size)
    shape = (filters, channels // groups, kernel, kernel)
    node = ir.Conv2d("conv", ("x",), weight=ternary(rng, shape, zeros),
                     bias=rng.integers(-3, 4, filters).astype(np.int32), weight_bits=2,
                     weight_scale=np.ones(filters), stride=(stride, stride),
                     padding=(padding, padding), groups=groups, act=BINARY,
                     threshold=threshold(rng, filters, int(np.prod(shape[1:]))))
    return ir.Graph((ir.Input("x", (), (channels, height, width), BINARY), node), "conv")


def linear_graph(rng, *, features, outputs, zeros=0.3, logits=False):
    weight = ternary(rng, (outputs, features), zeros)
    bias = rng.integers(-20, 21, outputs).astype(np.int32)
    if logits:  # the last layer: integer outputs through a requantizer
        output = dict(requant=ir.Requant(rng.integers(2**14, 2**15, outputs).astype(np.int32),
                                         np.full(outputs, 12, np.int32), -128, 127), act=S8)
    else:
        output = dict(threshold=threshold(rng, outputs, features), act=BINARY)
    node = ir.Linear("fc", ("x",), weight=weight, bias=bias, weight_bits=2,
                     weight_scale=np.ones(outputs), **output)
    return ir.Graph((ir.Input("x", (), (features,), BINARY), node), "fc")


def binary_inputs(rng, graph, batch):
    return rng.choice([-1, 1], (batch, *graph.input.shape))


def rtl_run(graph, x, *, width=32, lanes=1, seed=0, stalls=STALLS):
    node = graph.nodes[-1]
    engine = XnorConvEngine(node, graph.input.shape, graph.input.act, width=width, lanes=lanes)
    out_shape = graph.shapes[node.name]
    run = run_streams(engine, [(engine.i_stream, encode_beats(batch_to_beats(x), BINARY))],
                      [(engine.o_stream, len(x) * int(np.prod(out_shape)))], seed=seed,
                      idle_probability=stalls, backpressure_probability=stalls)
    out = decode_beats(np.array(run.received[0], np.int64), node.act)
    return batch_from_beats(out, out_shape), run.counters, engine


CONV_CASES = {
    "3x3_pad1_binary": dict(channels=5, filters=6, size=5, kernel=3, padding=1),
    "3x3_pad1_ternary": dict(channels=5, filters=6, size=5, kernel=3, padding=1, zeros=0.5),
    "3x3_stride2": dict(channels=4, filters=5, size=(7, 6), kernel=3, stride=2, padding=1,
                        zeros=0.3),
    "depthwise": dict(channels=6, filters=6, size=5, kernel=3, padding=1, groups=6),
    "grouped_1x1": dict(channels=12, filters=4, size=3, kernel=1, groups=2, zeros=0.2),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_is_bit_exact_under_stalls(case):
    rng = np.random.default_rng(sorted(CONV_CASES).index(case))
    graph = conv_graph(rng, **CONV_CASES[case])
    x = binary_inputs(rng, graph, batch=2)
    ref_out = reference.run(graph, x)
    rtl_out, _, _ = rtl_run(graph, x)
    assert len(np.unique(ref_out)) == 2  # thresholds that split the outputs test something
    np.testing.assert_array_equal(rtl_out, ref_out)


# Sized so that a row of output pixels takes fewer cycles than the stream drivers' timeout.
@pytest.mark.parametrize("width, channels", [(1, 5), (7, 30), (32, 67), (64, 67)])
def test_popcount_widths(width, channels):
    rng = np.random.default_rng(width)
    graph = conv_graph(rng, channels=channels, filters=2, size=4, kernel=3, padding=1,
                       zeros=0.3)
    x = binary_inputs(rng, graph, batch=2)
    rtl_out, _, engine = rtl_run(graph, x, width=width)
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))
    assert engine.geometry.chunk == width  # every word but the last of a tap is full


def test_lanes_split_filters():
    rng = np.random.default_rng(9)
    graph = conv_graph(rng, channels=10, filters=7, size=4, kernel=3, padding=1, zeros=0.4)
    x = binary_inputs(rng, graph, batch=2)
    rtl_out, _, _ = rtl_run(graph, x, width=4, lanes=3)
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))


@pytest.mark.parametrize("logits", [False, True], ids=["threshold", "requant"])
def test_linear_is_bit_exact_back_to_back(logits):
    rng = np.random.default_rng(20 + logits)
    graph = linear_graph(rng, features=100, outputs=10, logits=logits)
    x = binary_inputs(rng, graph, batch=3)
    ref_out = reference.run(graph, x)
    rtl_out, _, _ = rtl_run(graph, x, width=16)
    np.testing.assert_array_equal(rtl_out, ref_out)
    if logits:
        assert ref_out.min() < 0 < ref_out.max()


@pytest.mark.parametrize("weight_bits", [4, 8])
def test_wider_weights_go_one_bit_plane_at_a_time(weight_bits):
    """A binary input with multi-bit weights: one pass per magnitude bit-plane."""
    rng = np.random.default_rng(30 + weight_bits)
    limit = 2 ** (weight_bits - 1) - 1
    shape = (5, 9, 3, 3)
    weight = rng.integers(-limit, limit + 1, shape) * (rng.random(shape) < 0.6)
    weight[0, :, :, :] = 0  # an all-zero filter outputs its bias
    weight[1, 0, 0, 0] = -limit
    node = ir.Conv2d("conv", ("x",), weight=weight.astype(np.int8),
                     bias=rng.integers(-50, 51, 5).astype(np.int32), weight_bits=weight_bits,
                     weight_scale=np.ones(5), padding=(1, 1),
                     requant=ir.Requant(rng.integers(2**14, 2**15, 5).astype(np.int32),
                                        np.full(5, 8 + weight_bits, np.int32), -128, 127),
                     act=S8)
    graph = ir.Graph((ir.Input("x", (), (9, 4, 4), BINARY), node), "conv")
    x = binary_inputs(rng, graph, batch=2)
    rtl_out, counters, engine = rtl_run(graph, x, width=16, lanes=3)
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))
    assert counters["effective_macs"] == reference.work(graph, x)["conv"].effective_macs_total
    planes_used = sum(len(entries) for entries in engine.entries)
    assert len(np.unique(np.abs(weight))) > 2 and planes_used > sum(
        lane.combos for lane in engine.plan.lanes)


def test_thresholds_beyond_the_sums_range():
    """Thresholds the sums can never reach give constant outputs (the ROM's limits clamp)."""
    rng = np.random.default_rng(4)
    graph = conv_graph(rng, channels=3, filters=4, size=3, kernel=3, padding=1)
    node = graph.nodes[-1]
    extreme = ir.Threshold(np.array([10**12, -10**12, 10**12, -10**12], np.int64),
                           np.array([1, 1, -1, -1], np.int8))
    node = ir.Conv2d("conv", ("x",), weight=node.weight, bias=node.bias, weight_bits=2,
                     weight_scale=node.weight_scale, padding=(1, 1), act=BINARY,
                     threshold=extreme)
    graph = ir.Graph((graph.input, node), "conv")
    x = binary_inputs(rng, graph, batch=1)
    ref_out = reference.run(graph, x)
    np.testing.assert_array_equal(ref_out[0, :, 0, 0], [-1, 1, -1, 1])
    np.testing.assert_array_equal(rtl_run(graph, x, stalls=0.0)[0], ref_out)


def test_counters_match_the_golden_work_counts():
    rng = np.random.default_rng(7)
    graph = conv_graph(rng, channels=6, filters=5, size=4, kernel=3, padding=1, zeros=0.4)
    x = binary_inputs(rng, graph, batch=2)
    _, counters, _ = rtl_run(graph, x, width=4, lanes=2)
    work = reference.work(graph, x)["conv"]
    assert counters["effective_macs"] == work.effective_macs_total
    assert counters["skipped_pairs"] == work.dense_macs * len(x) - work.effective_macs_total
    assert counters["busy_cycles"] > 0


def test_ternary_zeros_save_cycles():
    """Words whose weights are all zero are never visited: a sparse filter bank costs fewer
    cycles per pixel, and a pixel costs about its ROM entries."""
    rng = np.random.default_rng(3)
    dense = conv_graph(rng, channels=16, filters=8, size=5, kernel=3, padding=1)
    sparse = conv_graph(rng, channels=16, filters=8, size=5, kernel=3, padding=1, zeros=0.9)
    x = binary_inputs(rng, dense, batch=1)
    cycles = {}
    for name, graph in (("dense", dense), ("sparse", sparse)):
        _, counters, engine = rtl_run(graph, x, width=4, stalls=0.0)
        cycles[name] = counters["busy_cycles"]
        assert cycles[name] < 1.2 * engine.cycles_per_pixel * 25 + 200
    assert cycles["dense"] == pytest.approx(8 * 9 * 4 * 25, rel=0.2)
    assert cycles["sparse"] < cycles["dense"] / 3


def mixed_graph(rng):
    """Binary conv (thresholds) -> max pool (stays binary) -> flatten -> binary-input linear
    with integer logits."""
    conv = ir.Conv2d("conv", ("x",), weight=ternary(rng, (6, 3, 3, 3), 0.3),
                     bias=rng.integers(-2, 3, 6).astype(np.int32), weight_bits=2,
                     weight_scale=np.ones(6), padding=(1, 1), act=BINARY,
                     threshold=threshold(rng, 6, 27))
    pool = ir.MaxPool2d("pool", ("conv",), (2, 2), (2, 2))
    flat = ir.Flatten("flat", ("pool",))
    fc = ir.Linear("fc", ("flat",), weight=ternary(rng, (4, 54), 0.3),
                   bias=rng.integers(-20, 21, 4).astype(np.int32), weight_bits=2,
                   weight_scale=np.ones(4),
                   requant=ir.Requant(np.full(4, 2**14, np.int32), np.full(4, 11, np.int32),
                                      -128, 127), act=S8)
    return ir.Graph((ir.Input("x", (), (3, 6, 6), BINARY), conv, pool, flat, fc), "fc")


def test_mixed_graph_through_the_network_top():
    """The compiler gives binary-input layers the XNOR engine; the whole top is bit-exact."""
    rng = np.random.default_rng(12)
    graph = mixed_graph(rng)
    x = binary_inputs(rng, graph, batch=3)
    ref_out = reference.run(graph, x)
    design = zeroskip.compile(graph, lanes=2)
    assert engine_kinds(design) == {
        "conv": "XnorConvEngine", "pool": "MaxPool2dEngine", "fc": "XnorConvEngine"}
    logits, classes = rtl_network(design, x, STALLS)
    np.testing.assert_array_equal(logits, ref_out)
    assert classes == list(ref_out.argmax(axis=1))


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=0), "width must be an integer from 1 to 64"),
    (dict(width=65), "width must be an integer from 1 to 64"),
    (dict(lanes=5), "lanes must be between 1 and the 4 output channels"),
])
def test_bad_parameters_are_refused(kwargs, message):
    graph = conv_graph(np.random.default_rng(0), channels=2, filters=4, size=3, kernel=3)
    with pytest.raises(ValueError, match=message):
        XnorConvEngine(graph.nodes[-1], graph.input.shape, BINARY, **kwargs)


def test_only_binary_inputs():
    graph = linear_graph(np.random.default_rng(0), features=8, outputs=2, logits=True)
    with pytest.raises(ValueError, match="needs a binary input, got 8-bit"):
        XnorConvEngine(graph.nodes[-1], (8,), S8)
    with pytest.raises(TypeError, match="takes a Conv2d or Linear node, not MaxPool2d"):
        XnorConvEngine(ir.MaxPool2d("p", ("x",)), (1, 4, 4), BINARY)


def test_verilog_is_lint_clean(tmp_path):
    rng = np.random.default_rng(5)
    graph = conv_graph(rng, channels=40, filters=6, size=5, kernel=3, stride=2, padding=1,
                       zeros=0.3)
    node = graph.nodes[-1]
    path = tmp_path / "xnor.v"
    path.write_text(convert(XnorConvEngine(node, graph.input.shape, BINARY, width=16, lanes=2),
                            "xnor"))
    lint(path, "xnor")
    # Integer logits from 4-bit weights: the requantizer and the bit-plane shift.
    fc = linear_graph(rng, features=70, outputs=10, logits=True).nodes[-1]
    fc = ir.Linear("fc", ("x",), weight=(fc.weight * rng.integers(1, 8, fc.weight.shape))
                   .astype(np.int8), bias=fc.bias, weight_bits=4, weight_scale=fc.weight_scale,
                   requant=fc.requant, act=S8)
    path = tmp_path / "xnor_fc.v"
    path.write_text(convert(XnorConvEngine(fc, (70,), BINARY), "xnor_fc"))
    lint(path, "xnor_fc")
