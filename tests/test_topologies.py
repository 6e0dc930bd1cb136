"""The second topology, from PyTorch to bit-exact RTL: a residual block and two depthwise-separable
blocks with stride 2 ending in a global average pool (``zeroskip.models``), trained on the digits,
pruned, int8-trained, exported, compiled whole and co-simulated under Verilator."""

import numpy as np
import pytest

import zeroskip
from zeroskip import demo, ir, models, reference

pytestmark = pytest.mark.slow

STALLS = 0.3
MULTIPLIERS = 12
SIMULATED_IMAGES = 40


@pytest.fixture(scope="module")
def trained():
    """The net trained once per module at the default settings: result and graph."""
    return models.train_residual_dws()


@pytest.fixture(scope="module")
def digits_int(trained):
    """``(calibration, x_test, y_test)``: training images for folding, the test set, as integers
    of the graph's input encoding."""
    _, graph = trained
    x_train, _, x_test, y_test = demo.digits_data()
    return (graph.quantize_input(x_train[:demo.CALIBRATION_IMAGES].numpy()),
            graph.quantize_input(x_test.numpy()), y_test.numpy())


def test_export_has_the_residual_add_strided_depthwise_convs_and_a_global_pool(trained):
    _, graph = trained
    adds = [node for node in graph.nodes if isinstance(node, ir.Add)]
    assert [node.inputs for node in adds] == [("block.conv_b", "stem.0")]
    depthwise = [node for node in graph.nodes if isinstance(node, ir.Conv2d) and
                 node.groups == node.out_channels == graph.shapes[node.input][0]]
    assert [(node.name, node.stride) for node in depthwise] == [
        ("dws1.0", (2, 2)), ("dws2.0", (2, 2))]
    assert graph.shapes["dws2.0"] == (64, 2, 2)
    pools = [node for node in graph.nodes if isinstance(node, ir.AvgPool2d)]
    assert len(pools) == 1 and graph.shapes[pools[0].name] == (64, 1, 1)
    assert pools[0].is_global(graph.shapes[pools[0].input])
    assert graph.shapes[graph.output] == (10,)


def test_pruned_int8_net_is_accurate_and_qat_equals_golden(trained, digits_int):
    result, graph = trained
    _, x_test, y_test = digits_int
    assert result.qat_matches_golden == result.test_images == 360
    # Measured: 98.6% float, 97.8% int8 after 85% pruning (of all but the depthwise weights).
    assert result.float_accuracy >= 0.96
    assert result.int8_accuracy >= 0.95
    assert result.int8_accuracy == demo.accuracy(reference.run(graph, x_test).argmax(1), y_test)
    summary = zeroskip.stats(graph, x_test)
    assert summary.total.nonzero_weights < 0.2 * summary.total.weights


@pytest.mark.verilator
def test_verilator_whole_net_is_bit_exact_under_stalls(trained, digits_int,
                                                       verilator_build_root):
    _, graph = trained
    calibration, x_test, _ = digits_int
    x = x_test[:SIMULATED_IMAGES]
    design = zeroskip.compile(graph, "auto", multipliers=MULTIPLIERS, calibration=calibration)
    assert set(design.lanes) == {"stem.0", "block.conv_a", "block.conv_b", "dws1.0", "dws1.3",
                                 "dws2.0", "dws2.3", "fc"}
    assert design.multipliers_used <= MULTIPLIERS
    result = design.simulate(x, idle_probability=STALLS, backpressure_probability=STALLS,
                             seed=3, build_root=verilator_build_root)
    expected = reference.run(graph, x)
    np.testing.assert_array_equal(result.outputs, expected)
    np.testing.assert_array_equal(result.classes, expected.argmax(axis=1))
    work = reference.work(graph, x)
    for name in design.lanes:
        assert result.counters[name]["effective_macs"] == work[name].effective_macs_total, name
    assert result.counters["network"]["inferences"] == SIMULATED_IMAGES
    assert np.all(result.interval_cycles > 0)
