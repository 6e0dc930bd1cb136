"""zeroskip.compile of single layers: each engine kind through Verilator, under stalls."""
# amaranth: UnusedElaboratable=no

import numpy as np
import pytest

import zeroskip
from zeroskip import ir, reference
from zeroskip.errors import ZeroskipError
from zeroskip.hdl.common import batch_from_beats, batch_to_beats
from zeroskip.design import Design

from hdl_sim import run_streams
from test_hdl_conv import conv_graph, linear_graph, random_inputs


def flatten_linear_graph(rng):
    """An image flattened into a linear layer: the flatten costs a weight permutation."""
    act = ir.Activation(8, False, 0.1)
    graph = linear_graph(rng, features=3 * 2 * 4, outputs=5, weight_density=0.5)
    fc = graph["fc"]
    return ir.Graph((ir.Input("x", (), (3, 2, 4), act), ir.Flatten("flat", ("x",)),
                     ir.Linear("fc", ("flat",), fc.weight, fc.bias, 8, fc.weight_scale,
                               fc.requant, fc.act)), "fc", name="flat_fc")


def test_flatten_before_linear_reads_the_hwc_stream():
    rng = np.random.default_rng(2)
    graph = flatten_linear_graph(rng)
    x = random_inputs(rng, graph, batch=3)
    design = zeroskip.compile(graph, lanes=2)
    (fc,) = design.layers
    assert fc.sources == ("x",)  # the flatten has no engine of its own
    engine = design.architecture.layer_engine(fc)
    run = run_streams(engine, [(engine.i_stream, batch_to_beats(x))],
                      [(engine.o_stream, 15)], seed=1, idle_probability=0.3,
                      backpressure_probability=0.3)
    np.testing.assert_array_equal(batch_from_beats(run.received[0], (5,)),
                                  reference.run(graph, x))


def test_bad_lanes_name_the_node():
    rng = np.random.default_rng(0)
    graph = conv_graph(rng, channels=2, filters=4, size=4, kernel=3)
    with pytest.raises(ZeroskipError, match=r"node 'conv': lanes must be between 1 and 8 times "
                                            r"its 4 output channels"):
        zeroskip.compile(graph, lanes={"conv": 33})
    with pytest.raises(ZeroskipError, match="chunk must be an integer from 1 to 64"):
        zeroskip.compile(graph, chunk=65)


def pool_graph(rng, node):
    act = ir.Activation(8, True, 0.1)
    return ir.Graph((ir.Input("x", (), (3, 6, 6), act), node), node.name, name=node.op)


def global_avgpool(rng):
    requant = ir.Requant(np.full(1, 2**15 // 36 * 4, np.int32), np.full(1, 17, np.int32),
                         -128, 127)
    return pool_graph(rng, ir.AvgPool2d("gap", ("x",), (6, 6), (6, 6), requant,
                                        ir.Activation(8, True, 0.1)))


@pytest.mark.verilator
@pytest.mark.parametrize("make, lanes", [
    (lambda rng: pool_graph(rng, ir.MaxPool2d("pool", ("x",), (3, 3), (2, 2), (1, 1))), 1),
    (global_avgpool, 1),
    (lambda rng: conv_graph(rng, channels=8, filters=6, size=5, kernel=3, padding=1,
                            weight_density=0.2), 3),
    (flatten_linear_graph, 2),
], ids=["maxpool_padding", "global_avgpool", "conv", "flatten_linear"])
def test_verilator_cosimulation_is_bit_exact_under_stalls(make, lanes, tmp_path_factory,
                                                          verilator_build_root):
    rng = np.random.default_rng(9)
    graph = make(rng)
    x = random_inputs(rng, graph, batch=3)
    design = zeroskip.compile(graph, lanes=lanes)
    from zeroskip.testbench.verilog import lint
    lint(design.write(tmp_path_factory.mktemp("v")), design.top)
    result = design.simulate(x, idle_probability=0.3, backpressure_probability=0.3, seed=3,
                             build_root=verilator_build_root)
    np.testing.assert_array_equal(result.outputs, reference.run(graph, x))
    layer = graph.nodes[-1].name
    work = reference.work(graph, x).get(layer)
    assert result.counters[layer]["effective_macs"] == (work.effective_macs_total if work else 0)
    assert result.cycles > 0 and result.counters[layer]["stall_cycles"] > 0


@pytest.mark.verilator
def test_without_layer_counters_only_the_network_counts(tmp_path, verilator_build_root):
    """layer_counters=False: the engines' counters leave the ports (synthesis drops their
    logic), the build directory records it, and the design still runs bit-exact."""
    rng = np.random.default_rng(4)
    graph = conv_graph(rng, channels=4, filters=5, size=5, kernel=3, padding=1,
                       weight_density=0.3)
    x = random_inputs(rng, graph, batch=3)
    design = zeroskip.compile(graph, lanes=2, layer_counters=False)
    top = design.verilog().split(f"module {design.top}(")[1].split(");")[0]
    assert "counters__network__latency_cycles" in top and "busy_cycles" not in top
    design.write(tmp_path)
    assert Design.load(tmp_path).layer_counters is False
    result = design.simulate(x, idle_probability=0.2, seed=1, build_root=verilator_build_root)
    np.testing.assert_array_equal(result.outputs, reference.run(graph, x))
    assert set(result.counters) == {"network"} and result.counters["network"]["inferences"] == 3


def test_class_port_by_default_for_class_scores_and_not_for_a_reconstruction(tmp_path):
    rng = np.random.default_rng(5)
    scores = linear_graph(rng, features=12, outputs=4)
    reconstruction = linear_graph(rng, features=6, outputs=6)
    assert zeroskip.compile(scores).has_class
    design = zeroskip.compile(reconstruction)
    assert not design.has_class and "o_stream_class" not in design.signature.members
    assert "o_stream_class__valid" not in design.verilog()
    assert zeroskip.compile(reconstruction, argmax=True).has_class
    dropped = zeroskip.compile(scores, argmax=False)
    assert "o_stream_class" not in dropped.signature.members
    dropped.write(tmp_path / "b")
    loaded = Design.load(tmp_path / "b")
    assert not loaded.has_class and loaded.verilog() == dropped.verilog()
    assert loaded.manifest()["argmax"] is False and "o_stream_class" not in \
        loaded.manifest()["ports"]


def test_argmax_of_an_image_output_is_refused():
    rng = np.random.default_rng(6)
    graph = conv_graph(rng, channels=2, filters=3, size=4, kernel=3)
    with pytest.raises(ZeroskipError, match=r"argmax needs a flat output; graph .* outputs "
                                            r"\(3, 2, 2\)"):
        zeroskip.compile(graph, argmax=True)
    with pytest.raises(ZeroskipError, match="argmax must be True, False or None"):
        zeroskip.compile(graph, argmax="yes")
