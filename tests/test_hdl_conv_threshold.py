# amaranth: UnusedElaboratable=no
"""The sparse engine with binary outputs: integer pixels in, thresholds out (a binary network's
first layer), in the Amaranth simulator: ``ref_*`` (golden) vs ``rtl_*``."""

import numpy as np
import pytest

import zeroskip
from zeroskip import ir, reference
from zeroskip.hdl.conv import SparseConvEngine
from zeroskip.hdl.verilog import convert
from zeroskip.testbench.verilog import lint

from hdl_sim import engine_kinds, rtl_network
from test_hdl_conv import random_inputs, rtl_run

STALLS = 0.3
BINARY = ir.Activation(1, True, 1.0)
U8 = ir.Activation(8, False, 1 / 255)
S8 = ir.Activation(8, True, 0.05)


def weights(rng, shape, weight_bits, zeros):
    """Symmetric ``weight_bits`` weights (2: ternary -1 / 0 / +1), a fraction ``zeros`` of
    them 0."""
    limit = 2 ** (weight_bits - 1) - 1
    values = rng.integers(1, limit + 1, shape) * rng.choice([-1, 1], shape)
    return (values * (rng.random(shape) >= zeros)).astype(np.int8)


def threshold(rng, filters, spread):
    """Thresholds within about a typical sum's spread, so that both outputs occur; mixed
    signs."""
    return ir.Threshold(rng.integers(-spread, spread + 1, filters).astype(np.int64),
                        np.resize(np.array([1, -1], np.int8), filters))


def conv_graph(rng, *, channels, filters, size, kernel=3, stride=1, padding=1, weight_bits=2,
               zeros=0.3, in_act=U8):
    height, width = size if isinstance(size, tuple) else (size, size)
    shape = (filters, channels, kernel, kernel)
    w = weights(rng, shape, weight_bits, zeros)
    spread = int(np.abs(w).sum(axis=(1, 2, 3)).mean() * in_act.qmax / 8)
    node = ir.Conv2d("conv", ("x",), weight=w,
                     bias=rng.integers(-spread, spread + 1, filters).astype(np.int32),
                     weight_bits=weight_bits, weight_scale=np.ones(filters),
                     stride=(stride, stride), padding=(padding, padding), act=BINARY,
                     threshold=threshold(rng, filters, spread))
    return ir.Graph((ir.Input("x", (), (channels, height, width), in_act), node), "conv")


def linear_graph(rng, *, features, outputs, zeros=0.4):
    w = weights(rng, (outputs, features), 2, zeros)
    spread = int(np.abs(w).sum(axis=1).mean() * U8.qmax / 8)
    node = ir.Linear("fc", ("x",), weight=w,
                     bias=rng.integers(-spread, spread + 1, outputs).astype(np.int32),
                     weight_bits=2, weight_scale=np.ones(outputs), act=BINARY,
                     threshold=threshold(rng, outputs, spread))
    return ir.Graph((ir.Input("x", (), (features,), U8), node), "fc")


CONV_CASES = {
    "1ch_stride1_lanes1": (dict(channels=1, filters=4, size=6), 1),
    "1ch_stride2_lanes3": (dict(channels=1, filters=5, size=(7, 6), stride=2), 3),
    "3ch_stride1_lanes3": (dict(channels=3, filters=6, size=5), 3),
    "3ch_stride2_lanes1": (dict(channels=3, filters=4, size=(7, 6), stride=2), 1),
    "3ch_4bit_pixels": (dict(channels=3, filters=4, size=5,
                             in_act=ir.Activation(4, False, 1 / 15)), 3),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_first_layer_conv_is_bit_exact_under_stalls(case):
    kwargs, lanes = CONV_CASES[case]
    rng = np.random.default_rng(sorted(CONV_CASES).index(case))
    graph = conv_graph(rng, **kwargs)
    x = random_inputs(rng, graph, batch=2, density=0.4)
    ref_out = reference.run(graph, x)
    rtl_out, _, engine = rtl_run(graph, x, lanes=lanes)
    assert len(np.unique(ref_out)) == 2  # thresholds that split the outputs test something
    assert engine.o_stream.payload.shape().width == 1
    np.testing.assert_array_equal(rtl_out, ref_out)


@pytest.mark.parametrize("lanes", [1, 3])
def test_linear_with_threshold_is_bit_exact_back_to_back(lanes):
    rng = np.random.default_rng(10 + lanes)
    graph = linear_graph(rng, features=40, outputs=7)
    x = random_inputs(rng, graph, batch=3, density=0.4)
    ref_out = reference.run(graph, x)
    rtl_out, _, _ = rtl_run(graph, x, lanes=lanes)
    assert len(np.unique(ref_out)) == 2
    np.testing.assert_array_equal(rtl_out, ref_out)


@pytest.mark.parametrize("zero_skip", [True, False], ids=["skip", "dense"])
def test_int8_weights_with_threshold(zero_skip):
    """A mixed graph's int8-weight layer ending in a threshold: the same output stage."""
    rng = np.random.default_rng(20)
    graph = conv_graph(rng, channels=4, filters=5, size=5, weight_bits=8, zeros=0.6)
    x = random_inputs(rng, graph, batch=2, density=0.4)
    ref_out = reference.run(graph, x)
    # One filter per lane keeps the dense engine's input waits short of the driver's timeout.
    rtl_out, _, _ = rtl_run(graph, x, lanes=5, zero_skip=zero_skip)
    assert len(np.unique(ref_out)) == 2
    np.testing.assert_array_equal(rtl_out, ref_out)


def test_thresholds_beyond_the_sums_range():
    """Thresholds the sums can never reach give constant outputs, for either sign."""
    rng = np.random.default_rng(4)
    graph = conv_graph(rng, channels=3, filters=4, size=3)
    node = graph.nodes[-1]
    extreme = ir.Threshold(np.array([10**12, -10**12, 10**12, -10**12], np.int64),
                           np.array([1, 1, -1, -1], np.int8))
    node = ir.Conv2d("conv", ("x",), weight=node.weight, bias=node.bias, weight_bits=2,
                     weight_scale=node.weight_scale, padding=(1, 1), act=BINARY,
                     threshold=extreme)
    graph = ir.Graph((graph.input, node), "conv")
    x = random_inputs(rng, graph, batch=1, density=0.4)
    ref_out = reference.run(graph, x)
    np.testing.assert_array_equal(ref_out[0, :, 0, 0], [-1, 1, -1, 1])
    np.testing.assert_array_equal(rtl_run(graph, x, lanes=2, stalls=0.0)[0], ref_out)


def test_counters_match_the_golden_work_counts():
    rng = np.random.default_rng(7)
    graph = conv_graph(rng, channels=3, filters=5, size=5, stride=2, zeros=0.4)
    x = random_inputs(rng, graph, batch=2, density=0.4)
    _, counters, _ = rtl_run(graph, x, lanes=3)
    work = reference.work(graph, x)["conv"]
    assert counters["effective_macs"] == work.effective_macs_total
    assert counters["skipped_pairs"] == work.dense_macs * len(x) - work.effective_macs_total
    assert counters["busy_cycles"] > 0


def test_binary_inputs_are_refused():
    graph = linear_graph(np.random.default_rng(0), features=8, outputs=2)
    with pytest.raises(ValueError, match="needs an integer input, got binary activations"):
        SparseConvEngine(graph.nodes[-1], (8,), BINARY)


def test_verilog_is_lint_clean(tmp_path):
    rng = np.random.default_rng(5)
    graph = conv_graph(rng, channels=3, filters=6, size=6, stride=2)
    path = tmp_path / "conv_threshold.v"
    path.write_text(convert(SparseConvEngine(graph.nodes[-1], graph.input.shape, U8, lanes=2),
                            "conv_threshold"))
    lint(path, "conv_threshold")


def mixed_graph(rng):
    """uint8 pixels -> ternary conv (thresholds) -> binary conv (thresholds) -> max pool ->
    flatten -> binary-input linear with integer logits."""
    first = conv_graph(rng, channels=1, filters=4, size=6).nodes[-1]
    second = ir.Conv2d("conv2", ("conv",), weight=weights(rng, (4, 4, 3, 3), 2, 0.3),
                       bias=rng.integers(-2, 3, 4).astype(np.int32), weight_bits=2,
                       weight_scale=np.ones(4), padding=(1, 1), act=BINARY,
                       threshold=threshold(rng, 4, 4))
    pool = ir.MaxPool2d("pool", ("conv2",), (2, 2), (2, 2))
    flat = ir.Flatten("flat", ("pool",))
    fc = ir.Linear("fc", ("flat",), weight=weights(rng, (3, 36), 2, 0.3),
                   bias=rng.integers(-10, 11, 3).astype(np.int32), weight_bits=2,
                   weight_scale=np.ones(3),
                   requant=ir.Requant(np.full(3, 2**14, np.int32), np.full(3, 13, np.int32),
                                      -128, 127), act=S8)
    return ir.Graph((ir.Input("x", (), (1, 6, 6), U8), first, second, pool, flat, fc), "fc")


def test_mixed_network_through_the_network_top():
    """Integer-input layers get the sparse engine, binary-input ones the XNOR engine; the
    whole top is bit-exact under stalls, class output included."""
    rng = np.random.default_rng(12)
    graph = mixed_graph(rng)
    x = random_inputs(rng, graph, batch=3, density=0.6)
    ref_out = reference.run(graph, x)
    design = zeroskip.compile(graph, lanes=2)
    assert engine_kinds(design) == {
        "conv": "SparseConvEngine", "conv2": "XnorConvEngine", "pool": "MaxPool2dEngine",
        "fc": "XnorConvEngine"}
    logits, classes = rtl_network(design, x, STALLS)
    np.testing.assert_array_equal(logits, ref_out)
    assert classes == list(ref_out.argmax(axis=1))
