"""Binary layers in the IR and the golden model: binary activations, thresholds, ternary weights,
mixed int8 / binary graphs, the file format (version 2, reading version 1), storage, and the
popcount identity the XNOR engine computes with."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from amaranth.hdl import unsigned

from zeroskip import analysis, ir, reference
from zeroskip.errors import GraphError, ZeroskipError
from zeroskip.hdl.common import activation_shape, decode_beats, encode_beats

from test_ir import good_graph, read_members, rewrite, setter

U8 = ir.Activation(bits=8, signed=False, scale=1 / 255)
S8 = ir.Activation(bits=8, signed=True, scale=0.05)
BIN = ir.Activation(bits=1, signed=True, scale=1.0)


def random_threshold(rng, channels, spread):
    return ir.Threshold(thresholds=rng.integers(-spread, spread + 1, channels).astype(np.int64),
                        signs=rng.choice(np.array([-1, 1], np.int8), channels))


def requant(channels, act):
    return ir.Requant(multiplier=np.full(channels, 20000, np.int32),
                      shift=np.full(channels, 16, np.int32), clamp_min=act.qmin,
                      clamp_max=act.qmax)


def mixed_graph(seed=0, input_act=U8):
    """int8 conv -> threshold -> maxpool -> ternary conv -> threshold -> flatten -> linear."""
    rng = np.random.default_rng(seed)
    ternary = rng.integers(-1, 2, (6, 4, 3, 3)).astype(np.int8)
    binary = rng.choice(np.array([-1, 1], np.int8), (5, 6 * 2 * 2))
    return ir.Graph(nodes=(
        ir.Input(name="x", inputs=(), shape=(2, 6, 6), act=input_act),
        ir.Conv2d(name="c1", inputs=("x",), weight=rng.integers(-1, 2, (4, 2, 3, 3)).astype(
            np.int8), bias=rng.integers(-50, 50, 4).astype(np.int32), weight_bits=2,
            weight_scale=np.full(4, 0.5), padding=(1, 1), act=BIN,
            threshold=random_threshold(rng, 4, 200)),
        ir.MaxPool2d(name="p", inputs=("c1",), kernel=(2, 2), stride=(2, 2)),
        ir.Conv2d(name="c2", inputs=("p",), weight=ternary, bias=np.zeros(6, np.int32),
                  weight_bits=2, weight_scale=np.full(6, 0.1), padding=(1, 1), act=BIN,
                  threshold=random_threshold(rng, 6, 4), stride=(2, 2)),
        ir.Flatten(name="f", inputs=("c2",)),
        ir.Linear(name="fc", inputs=("f",), weight=binary, bias=rng.integers(
            -3, 4, 5).astype(np.int32), weight_bits=2, weight_scale=np.full(5, 0.2),
            requant=requant(5, S8), act=S8),
    ), output="fc", name="mixed")


# --- the slow reference: torch in float64 (exact at these sizes) ---------------------------------

def torch_threshold(acc, node):
    signs = torch.tensor(node.threshold.signs, dtype=torch.float64).reshape(1, -1, 1, 1)
    limits = torch.tensor(node.threshold.thresholds, dtype=torch.float64).reshape(1, -1, 1, 1)
    return torch.where(signs * acc >= limits, 1.0, -1.0).to(torch.float64)


def torch_mixed(graph, x):
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    c1, c2, fc = graph["c1"], graph["c2"], graph["fc"]
    h = F.conv2d(t(x), t(c1.weight), t(c1.bias), padding=1)
    h = F.max_pool2d(torch_threshold(h, c1), 2)
    h = torch_threshold(F.conv2d(h, t(c2.weight), t(c2.bias), stride=2, padding=1), c2)
    acc = h.flatten(1) @ t(fc.weight).T + t(fc.bias)
    y = torch.floor((acc * 20000 + 2**15) / 2**16)
    return torch.clamp(y, -128, 127).numpy().astype(np.int64)


# --- activations and thresholds ------------------------------------------------------------------

def test_binary_activation_range_and_encoding():
    assert ir.activation_range(1, True) == (-1, 1)
    assert (BIN.qmin, BIN.qmax, BIN.binary, U8.binary) == (-1, 1, True, False)
    with pytest.raises(GraphError, match="must be signed") as error:
        ir.Activation(bits=1, signed=False, scale=1.0)
    assert error.value.field == "signed"


def test_threshold_semantics_with_negative_signs_and_ties():
    node = ir.Threshold(thresholds=np.array([5, 5, -3, 0], np.int64),
                        signs=np.array([1, -1, -1, 1], np.int8))
    acc = np.array([[5, -5, 3, 0],     # every comparison a tie: +1
                    [4, -4, 2, -1],    # one past the tie, on the -1 side
                    [6, -6, 4, 1]])
    expected = np.array([[1, 1, 1, 1], [-1, -1, 1, -1], [1, 1, -1, 1]])
    np.testing.assert_array_equal(reference.threshold(acc, node), expected)


def test_threshold_matches_a_loop_on_random_nchw():
    rng = np.random.default_rng(3)
    node = random_threshold(rng, 7, 30)
    acc = rng.integers(-40, 41, (3, 7, 4, 5))
    expected = np.empty_like(acc)
    for n, c, i, j in np.ndindex(*acc.shape):
        expected[n, c, i, j] = 1 if node.signs[c] * acc[n, c, i, j] >= node.thresholds[c] else -1
    np.testing.assert_array_equal(reference.threshold(acc, node), expected)


def test_threshold_rejects_a_wrong_channel_count():
    node = ir.Threshold(np.zeros(3, np.int64), np.ones(3, np.int8))
    with pytest.raises(ZeroskipError, match="threshold.thresholds has 3 entries"):
        reference.threshold(np.zeros((2, 4), np.int64), node)
    with pytest.raises(ZeroskipError, match="integer array"):
        reference.threshold(np.zeros((2, 3)), node)


def test_padding_contributes_nothing_for_binary_inputs():
    # All-(+1) input, all-(+1) 3x3 kernel: a corner sees 4 real taps, an edge 6, the middle 9.
    graph = ir.Graph(nodes=(
        ir.Input(name="x", inputs=(), shape=(1, 3, 3), act=BIN),
        ir.Conv2d(name="c", inputs=("x",), weight=np.ones((1, 1, 3, 3), np.int8),
                  bias=np.zeros(1, np.int32), weight_bits=2, weight_scale=np.ones(1),
                  padding=(1, 1), act=S8, requant=ir.Requant(np.ones(1, np.int32),
                                                             np.zeros(1, np.int32), -128, 127)),
    ), output="c")
    np.testing.assert_array_equal(reference.run(graph, np.ones((1, 1, 3, 3), np.int64))[0, 0],
                                  [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


@pytest.mark.parametrize("seed", range(4))
def test_mixed_graph_matches_torch(seed):
    graph = mixed_graph(seed)
    x = np.random.default_rng(seed + 10).integers(0, 256, (5, 2, 6, 6))
    layers = reference.run_layers(graph, x)
    for name in ("c1", "p", "c2"):
        assert set(np.unique(layers[name])) <= {-1, 1}
    assert graph.acts["p"] == BIN  # max pooling keeps a binary input binary
    np.testing.assert_array_equal(reference.run(graph, x), torch_mixed(graph, x))


def test_binary_input_is_validated_and_quantized_by_sign():
    graph = mixed_graph(0, input_act=BIN)
    x = np.random.default_rng(1).choice([-1, 1], (2, 2, 6, 6))
    reference.run(graph, x)
    x[1, 0, 2, 3] = 0
    with pytest.raises(ZeroskipError, match=r"value 0 at index \(1, 0, 2, 3\) is not a binary"):
        reference.run(graph, x)
    np.testing.assert_array_equal(graph.quantize_input(np.array([-0.3, 0.0, 2.0])), [-1, 1, 1])


def test_effective_macs_of_a_binary_layer_count_nonzero_weights_and_unpadded_taps():
    graph = mixed_graph(0, input_act=BIN)
    x = np.random.default_rng(2).choice([-1, 1], (3, 2, 6, 6))
    weight = graph["c1"].weight
    # Per output pixel, the taps inside the 6x6 image; binary inputs are never zero.
    inside = np.zeros((3, 3))
    for i, j in np.ndindex(6, 6):
        for a, b in np.ndindex(3, 3):
            inside[a, b] += 0 <= i + a - 1 < 6 and 0 <= j + b - 1 < 6
    expected = 3 * int(((weight != 0) * inside).sum())
    assert reference.work(graph, x)["c1"].effective_macs_total == expected


# --- validation ----------------------------------------------------------------------------------

def layer_with(**overrides):
    fields = dict(name="c", inputs=("x",), weight=np.ones((2, 1, 1, 1), np.int8),
                  bias=np.zeros(2, np.int32), weight_bits=2, weight_scale=np.ones(2), act=BIN,
                  threshold=ir.Threshold(np.zeros(2, np.int64), np.ones(2, np.int8)))
    fields.update(overrides)
    return ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=(1, 2, 2), act=BIN),
                           ir.Conv2d(**fields)), output="c")


@pytest.mark.parametrize("overrides, field, message", [
    (dict(requant=requant(2, S8)), "requant", "exactly one of requant and threshold, got both"),
    (dict(threshold=None), "requant", "exactly one of requant and threshold, got neither"),
    (dict(act=S8), "act", "a thresholded output must be binary (bits 1), got bits 8"),
    (dict(threshold=None, requant=requant(2, S8), act=BIN), "act",
     "a requantized output cannot be binary"),
    (dict(threshold=ir.Threshold(np.zeros(2, np.int64), np.array([1, 0], np.int8))),
     "threshold.signs", "values must be +1 or -1"),
    (dict(threshold=ir.Threshold(np.zeros(2, np.int32), np.ones(2, np.int8))),
     "threshold.thresholds", "dtype int64"),
    (dict(threshold=ir.Threshold(np.zeros(3, np.int64), np.ones(3, np.int8))),
     "threshold.thresholds", "shape (2,)"),
    (dict(threshold=5), "threshold", "must be a Threshold or null"),
], ids=["both", "neither", "threshold to int8", "requant to binary", "zero sign",
        "threshold dtype", "threshold shape", "threshold junk"])
def test_bad_binary_layers_name_node_and_field(overrides, field, message):
    with pytest.raises(GraphError) as error:
        layer_with(**overrides)
    assert (error.value.node, error.value.field) == ("c", field)
    assert message in str(error.value)


@pytest.mark.parametrize("make", [
    lambda: ir.AvgPool2d(name="q", inputs=("x",), kernel=(2, 2), stride=(2, 2),
                         requant=requant(1, S8), act=S8),
    lambda: ir.Add(name="q", inputs=("x", "x"), requant=requant(1, S8), act=S8),
], ids=["avgpool2d", "add"])
def test_avgpool_and_add_refuse_binary_inputs(make):
    with pytest.raises(GraphError, match="input 'x' is binary") as error:
        ir.Graph(nodes=(ir.Input(name="x", inputs=(), shape=(1, 2, 2), act=BIN), make()),
                 output="q")
    assert (error.value.node, error.value.field) == ("q", "inputs")


# --- the file format -----------------------------------------------------------------------------

@pytest.fixture
def saved_mixed(tmp_path):
    return mixed_graph(0).save(tmp_path / "mixed.zsg")


def test_round_trip_keeps_thresholds(saved_mixed, tmp_path):
    original, loaded = mixed_graph(0), ir.load(saved_mixed)
    assert loaded.version == ir.IR_VERSION == 3
    for name in ("c1", "c2"):
        for part in ("thresholds", "signs"):
            before = getattr(original[name].threshold, part)
            after = getattr(loaded[name].threshold, part)
            assert before.dtype == after.dtype and np.array_equal(before, after)
        assert loaded[name].requant is None and loaded[name].act == BIN
    assert loaded.acts == original.acts
    assert loaded.save(tmp_path / "again.zsg").read_bytes() == saved_mixed.read_bytes()
    assert {"c1.threshold.thresholds.npy", "c1.threshold.signs.npy"} <= set(
        read_members(saved_mixed))
    x = np.random.default_rng(0).integers(0, 256, (3, 2, 6, 6))
    np.testing.assert_array_equal(reference.run(loaded, x), reference.run(original, x))


def test_version_1_files_still_load(tmp_path):
    path = good_graph().save(tmp_path / "v2.zsg")

    def as_version_1(document):
        document["version"] = 1
        for entry in document["nodes"]:
            entry.pop("threshold", None)
            if entry.get("requant"):
                entry["requant"].pop("rounding")

    loaded = ir.load(rewrite(path, tmp_path / "v1.zsg", edit=as_version_1))
    assert loaded.version == ir.IR_VERSION and loaded["c1"].threshold is None
    document = json.loads(read_members(path)[ir.GRAPH_MEMBER])
    assert document["version"] == 3 and node_threshold(document, "c1") is None


def test_version_2_files_load_rounding_half_up(tmp_path):
    path = good_graph().save(tmp_path / "v3.zsg")

    def as_version_2(document):
        document["version"] = 2
        for entry in document["nodes"]:
            if entry.get("requant"):
                assert entry["requant"].pop("rounding") == "half_up"

    loaded = ir.load(rewrite(path, tmp_path / "v2.zsg", edit=as_version_2))
    requants = [node.requant for node in loaded.nodes if getattr(node, "requant", None)]
    assert requants and all(r.rounding == "half_up" for r in requants)
    with pytest.raises(GraphError, match="must be an object with fields") as error:
        ir.load(rewrite(path, tmp_path / "v3-missing.zsg", edit=lambda d: [
            e["requant"].pop("rounding") for e in d["nodes"] if e.get("requant")]))
    assert error.value.field == "requant"


def test_half_even_round_trips_and_bad_mode_is_named(tmp_path):
    graph = good_graph()
    nodes = [dataclasses.replace(node, requant=dataclasses.replace(
        node.requant, rounding="half_even")) if getattr(node, "requant", None) else node
        for node in graph.nodes]
    even = ir.Graph(nodes=tuple(nodes), output=graph.output, name=graph.name)
    loaded = ir.load(even.save(tmp_path / "even.zsg"))
    assert {n.requant.rounding for n in loaded.nodes if getattr(n, "requant", None)} == {
        "half_even"}
    with pytest.raises(GraphError, match="must be one of half_up, half_even") as error:
        ir.load(rewrite(tmp_path / "even.zsg", tmp_path / "bad.zsg", edit=lambda d: [
            e["requant"].update(rounding="half_down") for e in d["nodes"] if e.get("requant")]))
    assert error.value.field == "requant.rounding"


def node_threshold(document, name):
    return next(entry for entry in document["nodes"] if entry["name"] == name)["threshold"]


@pytest.mark.parametrize("edit, node, field, message", [
    (lambda d: [e.pop("threshold", None) for e in d["nodes"]], "c1", "threshold", "missing"),
    (setter("c1", "threshold", {"thresholds": 1}), "c1", "threshold",
     "must be null or an object with fields ['signs', 'thresholds']"),
    (setter("c1", "threshold.signs", {"tensor": "nope"}), "c1", "threshold.signs",
     "tensor 'nope' is missing"),
    (setter("c1", "act.signed", False), "c1", "act", "signed: a binary (1-bit) activation"),
    (setter("c2", "act.bits", 4), "c2", "act", "a thresholded output must be binary"),
    (setter(None, "version", 4), None, "version", "reads versions 1, 2, 3"),
], ids=["v2 without threshold", "threshold not an object", "signs missing", "unsigned binary",
        "threshold to 4 bits", "version 4"])
def test_bad_binary_files_name_node_and_field(saved_mixed, tmp_path, edit, node, field,
                                              message):
    with pytest.raises(GraphError) as error:
        ir.load(rewrite(saved_mixed, tmp_path / "bad.zsg", edit=edit))
    assert (error.value.node, error.value.field) == (node, field)
    assert message in str(error.value)


def test_bad_threshold_tensors(saved_mixed, tmp_path):
    path = rewrite(saved_mixed, tmp_path / "bad.zsg",
                   replace={"c2.threshold.signs.npy": np.full(6, 2, np.int8)})
    with pytest.raises(GraphError, match="values must be \\+1 or -1") as error:
        ir.load(path)
    assert (error.value.node, error.value.field) == ("c2", "threshold.signs")


# --- storage -------------------------------------------------------------------------------------

def test_binary_layers_store_one_bit_per_weight():
    graph = mixed_graph(0)
    fc = graph["fc"]
    assert analysis.cheapest_encoding(fc.weight, 2) == (fc.weight.size, "binary")
    # With zeros it is a ternary layer: 2-bit values and the best index, as any other layer.
    assert analysis.cheapest_encoding(graph["c2"].weight, 2)[1] != "binary"
    assert analysis.binary_bits(fc.weight, 8) is None
    layers = {layer.name: layer for layer in analysis.stats(graph).layers}
    assert layers["fc"].weight_storage_bits == fc.weight.size
    assert layers["fc"].storage_reduction == 32.0
    thresholds = graph["c1"].threshold.thresholds
    width = max(int(t).bit_length() for t in thresholds) + 1
    assert layers["c1"].requant_storage_bits == 4 * (width + 1)


# --- the popcount identity of the XNOR engine ----------------------------------------------------

def pack(bits):
    """Rows of 0/1 -> one uint64 word per row, element k at bit k."""
    return (bits.astype(np.uint64) << np.arange(bits.shape[1], dtype=np.uint64)).sum(
        axis=1, dtype=np.uint64)


@pytest.mark.parametrize("width", range(1, 65))
def test_popcount_identity(width):
    """For binary x and ternary w: sum(w * x) == 2 * popcount(m & ~(s ^ xb)) - popcount(m)
    with m = w != 0, s = w > 0, xb = x > 0, on packed words."""
    rng = np.random.default_rng(width)
    w = rng.integers(-1, 2, (200, width))
    x = rng.choice([-1, 1], (200, width))
    m, s, xb = pack(w != 0), pack(w > 0), pack(x > 0)
    agree = m & ~(s ^ xb)
    lhs = (w * x).sum(axis=1)
    rhs = 2 * np.bitwise_count(agree).astype(np.int64) - np.bitwise_count(m).astype(np.int64)
    np.testing.assert_array_equal(lhs, rhs)


# --- the hardware encoding -----------------------------------------------------------------------

def test_binary_beats_carry_one_bit():
    assert activation_shape(BIN) == unsigned(1)
    values = np.array([-1, 1, 1, -1])
    np.testing.assert_array_equal(encode_beats(values, BIN), [0, 1, 1, 0])
    np.testing.assert_array_equal(decode_beats(encode_beats(values, BIN), BIN), values)
    np.testing.assert_array_equal(encode_beats(np.array([-3, 0, 7]), S8), [-3, 0, 7])
    np.testing.assert_array_equal(decode_beats(np.array([-3, 0, 7]), S8), [-3, 0, 7])
    with pytest.raises(ValueError, match="must be -1 or \\+1, found \\[0\\]"):
        encode_beats(np.array([1, 0, -1]), BIN)
