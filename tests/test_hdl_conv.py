# amaranth: UnusedElaboratable=no
"""The sparse conv / linear engine in the Amaranth simulator: ``ref_*`` (golden) vs ``rtl_*``."""

import numpy as np
import pytest

from zeroskip import ir, reference
from zeroskip.hdl import sparse_plan
from zeroskip.hdl.common import (batch_from_beats, batch_to_beats, decode_beats, encode_beats,
                                 from_wide, to_wide)
from zeroskip.hdl.conv import SparseConvEngine

from hdl_sim import run_streams

STALLS = 0.3


def conv_graph(rng, *, channels, filters, size, kernel, stride=1, padding=0, groups=1,
               weight_density=0.3, weight_bits=8, in_signed=False, epsilon=0, relu=True):
    height, width = size if isinstance(size, tuple) else (size, size)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    limit = 2 ** (weight_bits - 1) - 1
    shape = (filters, channels // groups, kh, kw)
    weight = rng.integers(-limit, limit + 1, shape) * (rng.random(shape) < weight_density)
    in_act = ir.Activation(8, in_signed, 0.05)
    out_act = ir.Activation(8, not relu, 0.05)
    requant = ir.Requant(rng.integers(2**13, 2**15, filters).astype(np.int32),
                         rng.integers(14, 18, filters).astype(np.int32),
                         0 if relu else -128, 255 if relu else 127, epsilon)
    node = ir.Conv2d("conv", ("x",), weight.astype(np.int8),
                     rng.integers(-3000, 3000, filters).astype(np.int32), weight_bits,
                     np.ones(filters), (stride, stride), (padding, padding), groups, requant,
                     out_act)
    return ir.Graph((ir.Input("x", (), (channels, height, width), in_act), node), "conv")


def linear_graph(rng, *, features, outputs, weight_density=0.2):
    weight = rng.integers(-127, 128, (outputs, features)) * \
        (rng.random((outputs, features)) < weight_density)
    act = ir.Activation(8, False, 0.05)
    node = ir.Linear("fc", ("x",), weight.astype(np.int8),
                     rng.integers(-2000, 2000, outputs).astype(np.int32), 8, np.ones(outputs),
                     ir.Requant(np.full(1, 20000, np.int32), np.full(1, 16, np.int32), -128, 127),
                     ir.Activation(8, True, 0.05))
    return ir.Graph((ir.Input("x", (), (features,), act), node), "fc")


def random_inputs(rng, graph, batch, density=0.5):
    act = graph.input.act
    shape = (batch, *graph.input.shape)
    return rng.integers(act.qmin, act.qmax + 1, shape) * (rng.random(shape) < density)


def rtl_run(graph, x, *, lanes, zero_skip=True, chunk=8, seed=0, stalls=STALLS, pack=1,
            in_width=1, out_width=1, slots=2, timeout=1000):
    """The graph's last layer as a SparseConvEngine on ``x``: (outputs, counters, engine)."""
    node = graph.nodes[-1]
    engine = SparseConvEngine(node, graph.input.shape, graph.input.act, lanes=lanes,
                              zero_skip=zero_skip, chunk=chunk, pack=pack, in_width=in_width,
                              out_width=out_width, slots=slots)
    out_shape = graph.shapes[node.name]
    beats = to_wide(encode_beats(batch_to_beats(x), graph.input.act), in_width)
    run = run_streams(engine, [(engine.i_stream, beats)],
                      [(engine.o_stream, len(x) * int(np.prod(out_shape)) // out_width)],
                      seed=seed, idle_probability=stalls, backpressure_probability=stalls,
                      timeout=timeout)
    out = decode_beats(from_wide(np.array(run.received[0], np.int64), out_width), node.act)
    return batch_from_beats(out, out_shape), run.counters, engine


CONV_CASES = {
    "3x3_pad1": dict(channels=5, filters=6, size=5, kernel=3, padding=1),
    "3x3_stride2": dict(channels=4, filters=5, size=(7, 6), kernel=3, stride=2, padding=1),
    "5x3_rectangular": dict(channels=3, filters=4, size=(6, 5), kernel=(5, 3), padding=1),
    "depthwise": dict(channels=6, filters=6, size=5, kernel=3, padding=1, groups=6),
    "grouped_1x1_chunk_tail": dict(channels=20, filters=8, size=3, kernel=1, groups=2),
    "signed_input_no_relu": dict(channels=4, filters=4, size=4, kernel=3, in_signed=True,
                                 relu=False),
    "4bit_weights_epsilon": dict(channels=6, filters=4, size=4, kernel=3, padding=1,
                                 weight_bits=4, epsilon=3),
}


@pytest.mark.parametrize("zero_skip", [True, False], ids=["skip", "dense"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_is_bit_exact_under_stalls(case, zero_skip):
    rng = np.random.default_rng(sorted(CONV_CASES).index(case))
    graph = conv_graph(rng, **CONV_CASES[case])
    x = random_inputs(rng, graph, batch=2)
    ref_out = reference.run(graph, x)
    rtl_out, _, _ = rtl_run(graph, x, lanes=3, zero_skip=zero_skip)
    np.testing.assert_array_equal(rtl_out, ref_out)


@pytest.mark.parametrize("filters, stored", [(4, True), (32, False)])
def test_combo_bases_are_stored_where_that_takes_no_more_block_ram(filters, stored):
    # A pointwise conv of 128 channels in chunks of 32: a combo word of 35 bits. A lane of 4
    # filters has 16 combos (logic either way): its words hold their bases. One of 32 filters
    # has 128 combos, one 36-bit block RAM, two with the base: the examiner counts them.
    rng = np.random.default_rng(22)
    graph = conv_graph(rng, channels=128, filters=filters, size=2, kernel=1)
    x = random_inputs(rng, graph, batch=2)
    rtl_out, _, engine = rtl_run(graph, x, lanes=1, chunk=32, timeout=20_000)
    assert engine.plan.stores_base is stored
    assert engine.plan.combo_bits == 35 + engine.plan.base_bits
    assert (engine.plan.base_bits > 0) is stored
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))


def test_a_line_buffer_without_its_spare_row_is_bit_exact_under_stalls():
    # 128 channels a row of 4 pixels: a ring of 5 rows would be 2,560 words, past 2,048, so
    # the line buffer keeps the window's 3 rows and a row arriving, 2,048 words a lane.
    from zeroskip.hdl.window import ring_rows

    rng = np.random.default_rng(21)
    graph = conv_graph(rng, channels=128, filters=4, size=4, kernel=3, padding=1,
                       weight_density=0.1)
    x = random_inputs(rng, graph, batch=2)
    rtl_out, _, engine = rtl_run(graph, x, lanes=2, chunk=16, timeout=20_000)
    assert ring_rows(engine.geometry, 4 * 128) == 4
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))


def test_the_spare_row_stays_where_it_costs_no_ram():
    from types import SimpleNamespace

    from zeroskip.hdl.window import SPARE_ROW_WORDS, ring_rows

    geometry = SimpleNamespace(kernel=(3, 3), stride=(1, 1))  # all that ring_rows reads
    assert ring_rows(geometry, 8) == 5                          # 40 words: small, kept
    assert ring_rows(geometry, 300) == 5                        # 1,500 and 1,200: both 2,048
    assert ring_rows(geometry, 512) == 4                        # 2,560 past 2,048
    assert ring_rows(geometry, SPARE_ROW_WORDS // 5 - 1) == 5   # under the floor, kept


@pytest.mark.parametrize("lanes", [1, 4])
def test_linear_is_bit_exact_back_to_back(lanes):
    rng = np.random.default_rng(lanes)
    graph = linear_graph(rng, features=40, outputs=10)
    x = random_inputs(rng, graph, batch=3)
    rtl_out, _, _ = rtl_run(graph, x, lanes=lanes)
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))


@pytest.mark.parametrize("zero_skip", [True, False], ids=["skip", "dense"])
def test_counters_match_the_golden_work_counts(zero_skip):
    rng = np.random.default_rng(7)
    graph = conv_graph(rng, channels=6, filters=5, size=4, kernel=3, padding=1)
    x = random_inputs(rng, graph, batch=2)
    # One filter per lane keeps the dense engine's input waits short of the driver's timeout.
    _, counters, engine = rtl_run(graph, x, lanes=5, zero_skip=zero_skip, stalls=0.0)
    work = reference.work(graph, x)["conv"]
    assert counters["effective_macs"] == work.effective_macs_total
    dense_total = work.dense_macs * len(x)
    if zero_skip:  # only both-nonzero pairs reach a multiplier
        assert counters["skipped_pairs"] == dense_total - work.effective_macs_total
    else:
        assert counters["skipped_pairs"] == 0
    assert counters["busy_cycles"] > 0


def test_zero_skipping_saves_cycles_against_dense():
    rng = np.random.default_rng(3)
    graph = conv_graph(rng, channels=16, filters=8, size=5, kernel=3, padding=1,
                       weight_density=0.1)
    x = random_inputs(rng, graph, batch=1)
    _, sparse, _ = rtl_run(graph, x, lanes=2, chunk=16, stalls=0.0)
    _, dense, _ = rtl_run(graph, x, lanes=2, chunk=16, zero_skip=False, stalls=0.0)
    assert dense["busy_cycles"] > 4 * sparse["busy_cycles"]


def test_accumulator_width_survives_the_worst_case_input():
    """Weights and inputs at the extremes drive the sum to its bound; one bit less would wrap."""
    rng = np.random.default_rng(11)
    graph = conv_graph(rng, channels=16, filters=2, size=3, kernel=3, weight_density=1.0,
                       in_signed=True, relu=False)
    node = graph.nodes[-1]
    weight = np.full(node.weight.shape, 127, np.int8)
    weight[1] = -127
    requant = ir.Requant(np.ones(2, np.int32), np.full(2, 12, np.int32), -128, 127)
    node = ir.Conv2d("conv", ("x",), weight, np.zeros(2, np.int32), 8, np.ones(2), (1, 1),
                     (0, 0), 1, requant, node.act)
    graph = ir.Graph((graph.input, node), "conv")
    x = np.stack([np.full(graph.input.shape, 127), np.full(graph.input.shape, -128)])
    plan = sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=2)
    low, high = plan.accumulator_bounds
    assert (low, high) == (-127 * 128 * 144, 127 * 128 * 144)
    assert high >= 2 ** (plan.accumulator_width - 2)  # the width is tight
    rtl_out, _, _ = rtl_run(graph, x, lanes=2, chunk=16, stalls=0.0)
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))
    assert rtl_out.min() == -128 and rtl_out.max() == 127


def test_lanes_balance_nonzero_counts():
    rng = np.random.default_rng(5)
    graph = conv_graph(rng, channels=8, filters=16, size=3, kernel=3, weight_density=0.2)
    node = graph.nodes[-1]
    plan = sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=4)
    loads = [len(lane.weights) for lane in plan.lanes]
    largest_filter = max(int((w != 0).sum()) for w in node.weight)
    assert max(loads) - min(loads) <= largest_filter
    assert sorted(f for lane in plan.lanes for f in lane.filters) == list(range(16))
    np.testing.assert_array_equal(sparse_plan.stored_weights(plan),
                                  node.weight.astype(np.int64))


def test_storage_counts_only_nonzeros_when_skipping():
    rng = np.random.default_rng(6)
    graph = conv_graph(rng, channels=8, filters=4, size=3, kernel=3, weight_density=0.1)
    node = graph.nodes[-1]
    sparse = sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=2, chunk=8)
    dense = sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=2, chunk=8,
                             zero_skip=False)
    assert sum(len(lane.weights) for lane in sparse.lanes) == int((node.weight != 0).sum())
    assert sum(len(lane.weights) for lane in dense.lanes) == node.weight.size
    assert sparse.storage_bits < dense.storage_bits / 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(lanes=0), "lanes must be between 1 and the 4 output channels"),
    (dict(lanes=33), r"lanes must be between 1 and the 4 output channels of 'conv' \(times 8"),
    (dict(chunk=0), "chunk must be an integer from 1 to 64"),
])
def test_bad_parameters_are_refused(kwargs, message):
    rng = np.random.default_rng(0)
    graph = conv_graph(rng, channels=2, filters=4, size=3, kernel=3)
    with pytest.raises(ValueError, match=message):
        SparseConvEngine(graph.nodes[-1], graph.input.shape, graph.input.act, **kwargs)


def test_only_conv_and_linear_nodes():
    with pytest.raises(TypeError, match="takes a Conv2d or Linear node, not MaxPool2d"):
        SparseConvEngine(ir.MaxPool2d("p", ("x",)), (1, 4, 4), ir.Activation(8, False, 1.0))


# --- wide streams and packed scans --------------------------------------------------------------

WIDE_CASES = {
    # name: (graph arguments, engine arguments)
    "in2_out2": (dict(channels=8, filters=8, size=4, kernel=3, padding=1),
                 dict(lanes=3, in_width=2, out_width=2, slots=4)),
    "in4_out1": (dict(channels=8, filters=6, size=4, kernel=3, stride=2, padding=1),
                 dict(lanes=2, in_width=4)),
    "in1_out4_columns": (dict(channels=8, filters=8, size=4, kernel=3, padding=1),
                         dict(lanes=6, out_width=4)),
    "in2_out4_blocks": (dict(channels=4, filters=8, size=4, kernel=3, padding=1),
                        dict(lanes=2, in_width=2, out_width=4)),
    "linear_in4_out2": (dict(linear=True), dict(lanes=3, in_width=4, out_width=2)),
    # More lanes than filters: every filter cut over 2 or 4 lanes, the parts added.
    "split2": (dict(channels=8, filters=4, size=4, kernel=3, padding=1), dict(lanes=8)),
    "split2_out2": (dict(channels=8, filters=4, size=4, kernel=3, padding=1),
                    dict(lanes=6, out_width=2)),
    "split4_in2_out4": (dict(channels=8, filters=4, size=4, kernel=3, padding=1),
                        dict(lanes=16, in_width=2, out_width=4, slots=8)),
    "linear_split2": (dict(linear=True), dict(lanes=16)),
}

PACK_CASES = {
    # Depthwise: a pack reads one mask word of consecutive channels.
    "depthwise_pack4": (dict(channels=8, filters=8, size=5, kernel=3, padding=1, groups=8,
                             weight_density=0.9), dict(lanes=2, pack=4, slots=4)),
    "depthwise_pack2_in4_out4": (dict(channels=8, filters=8, size=5, kernel=3, stride=2,
                                      padding=1, groups=8, weight_density=0.9),
                                 dict(lanes=2, pack=2, in_width=4, out_width=4)),
    "depthwise_pack2_in8": (dict(channels=8, filters=8, size=4, kernel=3, padding=1, groups=8,
                                 weight_density=0.9), dict(lanes=2, pack=2, in_width=8)),
    "depthwise_pack4_split2": (dict(channels=8, filters=8, size=4, kernel=3, padding=1,
                                    groups=8, weight_density=0.9), dict(lanes=4, pack=4)),
    # First layers: one or three channels, the chunk's mask repeated for every filter.
    "one_channel_pack8": (dict(channels=1, filters=8, size=5, kernel=3, padding=1),
                          dict(lanes=1, pack=8, slots=4)),
    "one_channel_pack4_out2": (dict(channels=1, filters=8, size=(6, 4), kernel=(4, 2),
                                    stride=2, padding=1), dict(lanes=2, pack=4, out_width=2)),
    "three_channels_pack4": (dict(channels=3, filters=8, size=5, kernel=3, padding=1),
                             dict(lanes=2, pack=4)),
    "three_channels_pack2_out4": (dict(channels=3, filters=8, size=4, kernel=3, stride=2,
                                       padding=1, in_signed=True, relu=False),
                                  dict(lanes=2, pack=2, out_width=4)),
}


def wide_case_graph(rng, arguments):
    if arguments.get("linear"):
        return linear_graph(rng, features=16, outputs=8)
    return conv_graph(rng, **arguments)


@pytest.mark.parametrize("zero_skip", [True, False], ids=["skip", "dense"])
@pytest.mark.parametrize("case", sorted(WIDE_CASES) + sorted(PACK_CASES))
def test_wide_and_packed_conv_is_bit_exact_under_stalls(case, zero_skip):
    """ref vs rtl for input and output widths 1, 2, 4, 8 (mixed in and out) and packs of 2 to 8
    filters on depthwise, one-channel and three-channel layers, with random stalls."""
    arguments, engine = {**WIDE_CASES, **PACK_CASES}[case]
    rng = np.random.default_rng(sorted(WIDE_CASES).index(case) if case in WIDE_CASES else
                                10 + sorted(PACK_CASES).index(case))
    graph = wide_case_graph(rng, arguments)
    x = random_inputs(rng, graph, batch=2)
    rtl_out, counters, dut = rtl_run(graph, x, zero_skip=zero_skip, chunk=8, timeout=20_000,
                                     **engine)
    np.testing.assert_array_equal(rtl_out, reference.run(graph, x))
    assert counters["effective_macs"] == reference.work(graph, x)[graph.output] \
        .effective_macs_total
    assert dut.plan.geometry.pack == engine.get("pack", 1)


def test_a_pack_cuts_the_scan_of_a_depthwise_layer():
    """Nine combos a pixel for a pack of 8 depthwise filters against one per weight: fewer
    busy cycles, the same outputs."""
    rng = np.random.default_rng(21)
    graph = conv_graph(rng, channels=8, filters=8, size=5, kernel=3, padding=1, groups=8,
                       weight_density=1.0)
    x = random_inputs(rng, graph, batch=1, density=0.9)
    packed, fast, plan = rtl_run(graph, x, lanes=1, pack=8, stalls=0.0)
    unpacked, slow, _ = rtl_run(graph, x, lanes=1, stalls=0.0)
    np.testing.assert_array_equal(packed, unpacked)
    assert [lane.combos for lane in plan.plan.lanes] == [9]
    assert fast["busy_cycles"] < 0.75 * slow["busy_cycles"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_width=3), "an input width of 3 must be a power of two dividing its 8 input"),
    (dict(in_width=16), "an input width of 16 must be a power of two dividing its 8 input"),
    (dict(out_width=8), "an output width of 8 must be a power of two dividing its 4 output"),
    (dict(pack=3), "pack 3 must be a power of two dividing its 4 output channels"),
    (dict(pack=2), "pack 2 needs a depthwise layer or one group that one chunk holds"),
    (dict(lanes=3, out_width=4), "3 lanes do not fit an output tile of 4 channels"),
])
def test_bad_widths_and_packs_are_refused(kwargs, message):
    rng = np.random.default_rng(0)
    graph = conv_graph(rng, channels=8, filters=4, size=3, kernel=3)
    with pytest.raises(ValueError, match=message):
        SparseConvEngine(graph.nodes[-1], graph.input.shape, graph.input.act, chunk=4,
                         **kwargs)


def test_packed_plans_store_every_weight_once():
    rng = np.random.default_rng(8)
    for arguments, pack in [(dict(channels=16, filters=16, size=3, kernel=3, groups=16,
                                  weight_density=0.7), 8),
                            (dict(channels=3, filters=16, size=3, kernel=3), 4)]:
        graph = conv_graph(rng, **arguments)
        node = graph.nodes[-1]
        plan = sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=2, pack=pack,
                                out_width=4)
        np.testing.assert_array_equal(sparse_plan.stored_weights(plan),
                                      node.weight.astype(np.int64))
        # Lanes hold whole packs of consecutive filters, and every combo mask fits the pack.
        for lane in plan.lanes:
            assert all(first % pack == 0 for first in lane.filters[::pack])
            assert all(int(mask) < 1 << plan.geometry.mask_bits for mask in lane.masks)


def test_split_filters_put_their_parts_on_distinct_lanes():
    """Twice as many lanes as filters: every filter's combos in two parts of about the same
    weights, each on a lane of its own; together they store every weight once."""
    rng = np.random.default_rng(10)
    graph = conv_graph(rng, channels=16, filters=4, size=3, kernel=3, weight_density=0.5)
    node = graph.nodes[-1]
    plan = sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=8)
    assert (plan.split, plan.groups) == (2, 2)
    np.testing.assert_array_equal(sparse_plan.stored_weights(plan),
                                  node.weight.astype(np.int64))
    for f in range(4):
        holders = [lane for lane in plan.lanes if f in lane.filters]
        assert sorted(lane.part for lane in holders) == [0, 1]
        loads = [int((sparse_plan.lane_weights(plan, lane)[f] != 0).sum()) for lane in holders]
        assert abs(loads[0] - loads[1]) <= 16  # at most a chunk's weights apart
    with pytest.raises(ValueError, match="lanes must be between 1 and the 4 output channels"):
        sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=33)


def test_tile_columns_put_every_beat_on_distinct_lanes():
    """An output of 4 channels a beat from 6 lanes: every beat reads one tile word of a lane of
    each column, and every channel is read once."""
    rng = np.random.default_rng(9)
    graph = conv_graph(rng, channels=4, filters=16, size=3, kernel=3)
    node = graph.nodes[-1]
    plan = sparse_plan.plan(node, graph.input.shape, graph.input.act, lanes=6, out_width=4)
    assert plan.block * plan.columns == 4
    seen = []
    for beat, route in enumerate(plan.collector_routes()):
        assert len(route) == plan.columns
        for column, (lane_in_column, position, offset) in enumerate(route):
            lane = plan.lanes[lane_in_column * plan.columns + column]
            first = lane.filters[position * plan.block] + offset
            seen.extend(range(first, first + 4 // plan.columns))
    assert seen == list(range(16))
