# amaranth: UnusedElaboratable=no
"""Binary networks: ``Design.simulate`` (Verilator), the XNOR folding model, the binary demo."""

import numpy as np
import pytest
from amaranth.hdl import Fragment

import zeroskip
from zeroskip import reference
from zeroskip.hdl.common import batch_to_beats, encode_beats
from zeroskip.compiler.folding import estimate_layer, xnor_entries
from zeroskip.hdl.xnor import XnorConvEngine

from hdl_sim import run_streams
from test_cli import assert_one_clear_error, zeroskip_command
from test_hdl_xnor import BINARY, binary_inputs, conv_graph, linear_graph, mixed_graph


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("make, lanes", [
    (mixed_graph, 2),
    (lambda rng: conv_graph(rng, channels=5, filters=6, size=5, kernel=3, padding=1), 3),
], ids=["binary_in_logits_out", "binary_in_binary_out"])
def test_binary_graphs_cosimulate_bit_exact_under_stalls(make, lanes, verilator_build_root):
    """Binary input beats go in as bits, binary outputs come back as -1 / +1."""
    rng = np.random.default_rng(21)
    graph = make(rng)
    x = binary_inputs(rng, graph, batch=4)
    design = zeroskip.compile(graph, lanes=lanes)
    result = design.simulate(x, idle_probability=0.3, backpressure_probability=0.3, seed=5,
                             build_root=verilator_build_root)
    expected = reference.run(graph, x)
    np.testing.assert_array_equal(result.outputs, expected)
    if design.has_class:
        np.testing.assert_array_equal(result.classes, expected.argmax(axis=1))
    layer = graph.nodes[-1].name
    assert result.counters[layer]["effective_macs"] == \
        reference.work(graph, x)[layer].effective_macs_total


def measured_interval(graph, lanes, batch=3):
    """Cycles between consecutive inferences' last outputs of the graph's XNOR engine, in the
    Amaranth simulator with no stalls (the engine's work does not depend on the data)."""
    node = graph.nodes[-1]
    x = binary_inputs(np.random.default_rng(0), graph, batch)
    engine = XnorConvEngine(node, graph.input.shape, graph.input.act, lanes=lanes)
    outputs = int(np.prod(graph.shapes[node.name]))
    given = engine.o_stream.valid & engine.o_stream.ready
    run = run_streams(engine, [(engine.i_stream, encode_beats(batch_to_beats(x), BINARY))],
                      [(engine.o_stream, batch * outputs)], seed=0, record=[given])
    last_outputs = np.flatnonzero(run.trace[:, 0])[outputs - 1::outputs]
    return set(np.diff(last_outputs).tolist()), engine, x


@pytest.mark.parametrize("make, lanes", [
    (lambda rng: conv_graph(rng, channels=40, filters=3, size=5, kernel=3, stride=2), 1),
    (lambda rng: conv_graph(rng, channels=4, filters=16, size=6, kernel=1), 3),
    (lambda rng: linear_graph(rng, features=256, outputs=10, logits=True), 4),
], ids=["strided_compute_bound", "pointwise_output_bound", "linear_input_bound"])
def test_folding_models_the_xnor_engine_cycle_exactly(make, lanes):
    graph = make(np.random.default_rng(4))
    (interval,), engine, x = measured_interval(graph, lanes)
    node = graph.nodes[-1]
    estimate = estimate_layer(node, graph.input.shape, graph.input.act, lanes, x)
    assert estimate.cycles == interval
    assert max(xnor_entries(engine.plan, node.weight_bits)) == engine.cycles_per_pixel
    # zero_skip is a mode of the int8 engine: the XNOR engine skips zero weights in both.
    assert estimate_layer(node, graph.input.shape, graph.input.act, lanes, x,
                          zero_skip=False) == estimate


def test_auto_lanes_balance_a_binary_graph_on_its_xnor_engines():
    rng = np.random.default_rng(12)
    graph = mixed_graph(rng)
    x = binary_inputs(rng, graph, batch=4)
    design = zeroskip.compile(graph, "auto", multipliers=6, calibration=x)
    by_name = {e.name: e for e in design.estimates}
    assert design.multipliers_used <= 6
    # The conv does 36 pixels x its filters' words, the linear layer a few words once.
    assert design.lanes["conv"] > design.lanes["fc"]
    engines = {spec.name: design.architecture.layer_engine(spec) for spec in design.layers}
    for engine in engines.values():
        Fragment.get(engine, None)  # elaborated, as the network top would
    for name in ("conv", "fc"):
        assert by_name[name].ideal_cycles <= by_name[name].cycles
        assert max(xnor_entries(design.plans[name], 2)) == engines[name].cycles_per_pixel


@pytest.mark.verilator
@pytest.mark.slow
def test_binary_demo_through_the_rtl(verilator_build_root, tmp_path):
    """``zeroskip demo --binary``'s flow: every test image bit-exact, >= 90 % accurate."""
    import json

    from zeroskip import binary_demo
    from zeroskip.demo import write_json

    result, _ = binary_demo.run_demo(build_root=verilator_build_root)
    hw = result.hardware
    assert hw.bit_exact == result.test_images == 360
    assert result.golden_accuracy >= 0.90 and hw.rtl_accuracy == result.golden_accuracy
    assert sum(hw.lanes.values()) <= 16 and sum(hw.dense_lanes.values()) <= 16
    assert result.weight_storage_bits == result.weights  # one bit per binary weight
    # 16/16/32 channels: 4.1x less than the 34,216 bits of the 90 %-pruned int8 demo net.
    assert result.weights == 8336
    table = result.format_table()
    assert "binary accuracy (golden model)" in table and "360/360 images bit-identical" in table
    path = tmp_path / "binary.json"
    write_json(result, path)
    loaded = json.loads(path.read_text())
    assert loaded["network"] == "binary" and loaded["golden_accuracy"] == result.golden_accuracy


def test_binary_demo_refuses_sparsity():
    assert_one_clear_error(zeroskip_command("demo", "--binary", "--sparsity", "0.5"),
                           "--sparsity does not apply to --binary")
