"""Binary networks through ``Design.simulate`` (Verilator) and the binary digits demo."""
# amaranth: UnusedElaboratable=no

import numpy as np
import pytest

import zeroskip
from zeroskip import reference

from test_hdl_xnor import binary_inputs, conv_graph, mixed_graph


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
