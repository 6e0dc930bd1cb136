"""Storage encodings counted exactly, the cheapest one chosen, totals that add up."""

import json

import numpy as np
import pytest

from zeroskip import ir
from zeroskip.analysis import (
    MAX_GAP_BITS, bitmap_bits, cheapest_encoding, dense_bits, empty_layers, relative_index_bits,
    stats,
)
from zeroskip.errors import EmptyLayerWarning

U8 = ir.Activation(bits=8, signed=False, scale=0.1)


# --- a real relative-index encoder, to count what it emits ----------------------------------------

def ref_relative_encode(row, gap_bits):
    """Deep Compression's relative index for one output channel: a list of (value, gap).

    Fillers wait in ``pending`` until a nonzero follows: trailing zeros need no entry.
    """
    entries, pending, skipped = [], [], 0
    for value in row:
        if value == 0:
            skipped += 1
            if skipped == 2**gap_bits:  # one zero too many for the gap field: store it
                pending.append((0, 2**gap_bits - 1))
                skipped = 0
        else:
            entries += pending + [(int(value), skipped)]
            pending, skipped = [], 0
    return entries


def ref_relative_decode(entries, length):
    row, position = [0] * length, -1
    for value, gap in entries:
        position += gap + 1
        row[position] = value
    return row


def ref_relative_bits(weight, bits, gap_bits):
    rows = np.asarray(weight).reshape(weight.shape[0], -1)
    total = 0
    for row in rows:
        entries = ref_relative_encode(row, gap_bits)
        assert ref_relative_decode(entries, len(row)) == row.tolist()
        assert all(0 <= gap < 2**gap_bits for _, gap in entries)
        total += len(entries) * (bits + gap_bits) + len(row).bit_length()
    return total


# --- encodings -----------------------------------------------------------------------------------

def test_all_nonzero_weights_store_densely():
    weight = np.arange(1, 17).reshape(2, 8)
    assert dense_bits(weight, 4) == 64
    assert bitmap_bits(weight, 4) == 16 + 16 * 4
    # 16 entries of a 4-bit value and a 1-bit gap, plus two 4-bit entry counts (rows of 8).
    assert relative_index_bits(weight, 4, 1) == 16 * 5 + 2 * 4
    assert cheapest_encoding(weight, 4) == (64, "dense")


def test_all_zero_weights_store_only_entry_counts():
    weight = np.zeros((2, 8), np.int8)
    assert dense_bits(weight, 4) == 64
    assert bitmap_bits(weight, 4) == 16
    assert relative_index_bits(weight, 4, 1) == 2 * 4
    assert cheapest_encoding(weight, 4) == (8, "relative1")


# Row of 40 with nonzeros at 0 and 39: a gap of 38 zeros. With b-bit gaps a filler zero goes in
# every 2**b positions: 38 // 2**b fillers. Bits: entries * (8 + b) + bit_length(40) = 6.
LONG_GAP_BITS = {1: 21 * 9 + 6, 2: 11 * 10 + 6, 3: 6 * 11 + 6, 4: 4 * 12 + 6, 5: 3 * 13 + 6,
                 6: 2 * 14 + 6, 7: 2 * 15 + 6, 8: 2 * 16 + 6}


@pytest.mark.parametrize("gap_bits", sorted(LONG_GAP_BITS))
def test_a_long_gap_needs_filler_entries(gap_bits):
    weight = np.zeros((1, 40), np.int8)
    weight[0, 0], weight[0, 39] = 5, -7
    assert relative_index_bits(weight, 8, gap_bits) == LONG_GAP_BITS[gap_bits]
    assert ref_relative_bits(weight, 8, gap_bits) == LONG_GAP_BITS[gap_bits]


def test_the_long_gap_row_fillers_by_hand():
    row = np.zeros(40, np.int8)
    row[0], row[39] = 5, -7
    # 3-bit gaps skip at most 7 zeros: fillers at 8, 16, 24, 32, then 6 zeros to 39.
    assert ref_relative_encode(row, 3) == [(5, 0), (0, 7), (0, 7), (0, 7), (0, 7), (-7, 6)]
    assert cheapest_encoding(row[None], 8) == (34, "relative6")  # dense 320, bitmap 56


@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_relative_index_counts_what_an_encoder_emits(zero_fraction):
    rng = np.random.default_rng(int(zero_fraction * 100))
    weight = rng.integers(-7, 8, (6, 3, 5, 5))
    weight[rng.random(weight.shape) < zero_fraction] = 0
    for gap_bits in range(1, MAX_GAP_BITS + 1):
        assert relative_index_bits(weight, 4, gap_bits) == ref_relative_bits(weight, 4, gap_bits)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3, 0.6, 0.9, 0.999])
def test_cheapest_encoding_is_the_minimum(zero_fraction):
    rng = np.random.default_rng(7)
    weight = rng.integers(-127, 128, (8, 300))
    weight[rng.random(weight.shape) < zero_fraction] = 0
    candidates = {"dense": weight.size * 8, "bitmap": weight.size + np.count_nonzero(weight) * 8}
    candidates.update({f"relative{b}": ref_relative_bits(weight, 8, b) for b in range(1, 9)})
    bits, name = cheapest_encoding(weight, 8)
    assert bits == min(candidates.values()) and candidates[name] == bits


def test_ties_go_to_the_simpler_encoding():
    weight = np.array([[1, 0, 0, 1]])  # dense 4 * 2 = 8 = bitmap 4 + 2 * 2; relative2 = 11
    assert cheapest_encoding(weight, 2) == (8, "dense")


# --- network statistics --------------------------------------------------------------------------

def requant(channels, shared=False):
    entries = 1 if shared else channels
    return ir.Requant(multiplier=np.full(entries, 1 << 10, np.int32),
                      shift=np.full(entries, 12, np.int32), clamp_min=0, clamp_max=255)


def small_graph(conv_weight, linear_weight):
    """x (1, 3, 3) -> conv (pad 1) -> add(conv, conv) -> flatten -> linear."""
    out_channels = conv_weight.shape[0]
    features = linear_weight.shape[0]
    return ir.Graph(nodes=(
        ir.Input(name="x", inputs=(), shape=(1, 3, 3), act=U8),
        ir.Conv2d(name="conv", inputs=("x",), weight=conv_weight.astype(np.int8),
                  bias=np.zeros(out_channels, np.int32), weight_bits=4,
                  weight_scale=np.ones(out_channels), stride=(1, 1), padding=(1, 1), groups=1,
                  requant=requant(out_channels), act=U8),
        ir.Add(name="add", inputs=("conv", "conv"), input_multipliers=(1, 1),
               requant=requant(out_channels, shared=True), act=U8),
        ir.Flatten(name="flat", inputs=("add",)),
        ir.Linear(name="fc", inputs=("flat",), weight=linear_weight.astype(np.int8),
                  bias=np.zeros(features, np.int32), weight_bits=8,
                  weight_scale=np.ones(features), requant=requant(features), act=U8),
    ), output="fc")


def test_effective_macs_of_a_hand_computed_conv():
    weight = np.zeros((1, 1, 3, 3))
    weight[0, 0, 0, 0], weight[0, 0, 1, 1] = 1, 5
    graph = small_graph(weight, np.ones((2, 9)))
    x = np.array([[[[0, 1, 0], [0, 0, 0], [0, 0, 2]]]])
    conv = stats(graph, x).layers[0]
    # The centre tap meets both nonzero inputs; the top-left tap meets x[0, 1] at output
    # (1, 2), while x[2, 2] would be at output (3, 3), outside: 3 pairs. Dense: 9 x 9.
    assert (conv.name, conv.dense_macs, conv.effective_macs_total) == ("conv", 81, 3)
    assert conv.effective_macs == 3.0


def test_effective_macs_of_a_hand_computed_linear():
    graph = ir.Graph(nodes=(
        ir.Input(name="x", inputs=(), shape=(3,), act=U8),
        ir.Linear(name="fc", inputs=("x",), weight=np.array([[1, 0, 2], [0, 0, 3]], np.int8),
                  bias=np.zeros(2, np.int32), weight_bits=8, weight_scale=np.ones(2),
                  requant=requant(2), act=U8)), output="fc")
    summary = stats(graph, np.array([[1, 0, 4], [0, 0, 0]]))
    # Sample 0: (1, 1), (2, 4), (3, 4); sample 1 is all zeros.
    (fc,) = summary.layers
    assert (fc.dense_macs, fc.effective_macs_total, fc.effective_macs) == (6, 3, 1.5)
    assert summary.batch_size == 2 and summary.total.effective_macs == 1.5


def test_layers_without_a_nonzero_weight_are_named_in_one_warning():
    graph = small_graph(np.zeros((2, 1, 3, 3)), np.zeros((3, 18)))
    assert empty_layers(graph) == [("conv", 18), ("fc", 54)]
    with pytest.warns(EmptyLayerWarning) as caught:
        summary = stats(graph)
    assert [str(w.message) for w in caught] == [
        "graph 'net': 2 layers 'conv' (18 weights), 'fc' (54 weights) keep no nonzero weight: "
        "the output is the bias alone"]
    assert caught[0].filename == __file__  # points at the caller
    assert summary.total.nonzero_weights == 0


def test_one_nonzero_weight_is_enough_not_to_warn():
    conv_weight = np.zeros((2, 1, 3, 3))
    conv_weight[1, 0, 2, 2] = -1
    linear_weight = np.zeros((3, 18))
    linear_weight[0, 17] = 1
    assert empty_layers(small_graph(conv_weight, linear_weight)) == []
    stats(small_graph(conv_weight, linear_weight))  # warnings are errors under pytest


def test_layer_storage_by_hand():
    conv_weight = np.zeros((4, 1, 3, 3))
    conv_weight[:, 0, 1, 1] = [1, -2, 3, 0]
    linear_weight = np.ones((5, 36))
    summary = stats(small_graph(conv_weight, linear_weight))
    conv, add, fc = summary.layers
    assert [layer.name for layer in summary.layers] == ["conv", "add", "fc"]
    # conv: 36 weights, 3 nonzero at 4 bits. relative3: each row's centre tap sits behind a
    # gap of 4 (no filler), 3 entries of 4 + 3 bits, four 4-bit entry counts (rows of 9).
    assert (conv.weights, conv.nonzero_weights, conv.weight_bits) == (36, 3, 4)
    assert conv.sparsity == pytest.approx(33 / 36)
    assert (conv.weight_storage_bits, conv.weight_encoding) == (3 * 7 + 4 * 4, "relative3")
    assert conv.bias_storage_bits == 4 * 32
    assert conv.requant_storage_bits == 4 * 16 + 4 * 6 + 3 * 8  # multipliers, shifts, clamps+eps
    assert conv.fp32_storage_bits == 36 * 32
    assert conv.storage_reduction == pytest.approx(36 * 32 / 37)
    # add: no weights; one shared multiplier and shift, clamps + epsilon, 2 input multipliers.
    assert (add.weights, add.weight_storage_bits, add.bias_storage_bits) == (0, 0, 0)
    assert add.requant_storage_bits == 16 + 6 + 3 * 8 + 2 * 16
    assert add.sparsity is None and add.storage_reduction is None and add.weight_encoding is None
    assert (fc.weight_storage_bits, fc.weight_encoding) == (5 * 36 * 8, "dense")
    assert fc.dense_macs == 180 and conv.dense_macs == 4 * 9 * 9


def test_totals_add_up():
    rng = np.random.default_rng(3)
    conv_weight = rng.integers(-7, 8, (4, 1, 3, 3)) * (rng.random((4, 1, 3, 3)) < 0.3)
    linear_weight = rng.integers(-127, 128, (5, 36)) * (rng.random((5, 36)) < 0.2)
    x = rng.integers(0, 256, (6, 1, 3, 3)) * (rng.random((6, 1, 3, 3)) < 0.5)
    summary = stats(small_graph(conv_weight, linear_weight), x)
    total = summary.total
    for field in ("weights", "nonzero_weights", "weight_storage_bits", "bias_storage_bits",
                  "requant_storage_bits", "fp32_storage_bits", "dense_macs",
                  "effective_macs_total"):
        assert getattr(total, field) == sum(getattr(layer, field) for layer in summary.layers)
    assert total.fp32_storage_bits == 32 * total.weights
    assert total.storage_reduction == total.fp32_storage_bits / total.weight_storage_bits
    assert total.sparsity == 1 - total.nonzero_weights / total.weights
    assert total.effective_macs == pytest.approx(
        sum(layer.effective_macs for layer in summary.layers))
    assert total.effective_macs == total.effective_macs_total / 6
    assert total.name == "total" and total.weight_encoding is None


def test_without_inputs_there_are_no_effective_macs():
    summary = stats(small_graph(np.ones((2, 1, 3, 3)), np.ones((3, 18))))
    assert summary.batch_size is None
    assert all(layer.effective_macs is None and layer.effective_macs_total is None
               for layer in summary.layers + (summary.total,))
    assert "effective MACs: both operands" not in summary.format_table()


def test_dict_and_table():
    x = np.ones((2, 1, 3, 3), np.int64)
    summary = stats(small_graph(np.ones((2, 1, 3, 3)), np.ones((3, 18))), x)
    data = json.loads(json.dumps(summary.to_dict()))
    assert [layer["name"] for layer in data["layers"]] == ["conv", "add", "fc"]
    assert data["total"]["weights"] == 2 * 9 + 3 * 18 and data["batch_size"] == 2
    assert data["layers"][0]["weight_encoding"] == "dense"
    table = summary.format_table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["layer", "op", "weights"]
    for name in ("conv", "add", "fc", "total"):
        assert any(line.startswith(name) for line in lines)
    assert "mean over 2 input(s)" in table


def test_summary_is_frozen():
    summary = stats(small_graph(np.ones((2, 1, 3, 3)), np.ones((3, 18))))
    with pytest.raises(AttributeError):
        summary.total = None


def test_public_stats_is_the_function_whatever_was_imported_first():
    import zeroskip
    import zeroskip.analysis  # noqa: F401  (a submodule import must not shadow the function)

    assert callable(zeroskip.stats) and zeroskip.stats is zeroskip.analysis.stats
