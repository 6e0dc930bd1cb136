"""QONNX import: Brevitas networks exported with ``export_qonnx``, imported, their golden model
equal to QONNX's own execution of the file, integer for integer; two co-simulated in Verilator;
what the IR cannot say exactly refused by node and reason.

``ref_*`` is the golden model of the imported graph, ``qonnx_*`` QONNX's execution of the same
file divided by the output scale, ``rtl_*`` the co-simulated design.
"""

import dataclasses
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import zeroskip
from zeroskip import ir, reference
from zeroskip.design import Design
from zeroskip.errors import ZeroskipError

from qonnx_nets import (GraphBuilder, binary_cnv, export, finn_cnv, finn_tfc, grid_inputs,
                        int8_cnn, pools_and_add, qonnx_integers, trunc_pool_net)

NETS = {
    # name: (make the net, input shape, exporter)
    "int8-dynamo": (int8_cnn, (1, 2, 8, 8), True),
    "int8-torchscript": (int8_cnn, (1, 2, 8, 8), False),
    "w4a4": (lambda: int8_cnn(1, weight_bits=4, act_bits=4), (1, 2, 8, 8), True),
    "w2a3-torchscript": (lambda: int8_cnn(2, weight_bits=2, act_bits=3), (1, 2, 8, 8), False),
    "trunc-avgpool-dynamo": (trunc_pool_net, (1, 2, 8, 8), True),
    "trunc-avgpool-torchscript": (trunc_pool_net, (1, 2, 8, 8), False),
    "binary-cnv-dynamo": (binary_cnv, (1, 3, 10, 10), True),
    "binary-cnv-torchscript": (binary_cnv, (1, 3, 10, 10), False),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each net of NETS exported once: name -> path."""
    folder = tmp_path_factory.mktemp("qonnx")
    cache = {}

    def get(name):
        if name not in cache:
            make, shape, dynamo = NETS[name]
            cache[name] = export(make, shape, folder / f"{name}.onnx", dynamo=dynamo)
        return cache[name]
    return get


def check_against_qonnx(path, batch=12, seed=0):
    graph = zeroskip.import_qonnx(path)
    x = grid_inputs(graph, batch, np.random.default_rng(seed))
    x_int = graph.quantize_input(x)
    ref = reference.run(graph, x_int)
    qonnx_out = qonnx_integers(path, x, graph)
    np.testing.assert_array_equal(ref, qonnx_out)
    assert len(np.unique(ref)) > 2, "the outputs should not be constant"
    return graph, x_int, ref, qonnx_out


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_golden_model_equals_qonnx_execution(exported, name):
    graph, _, _, _ = check_against_qonnx(exported(name))
    ops = {node.op for node in graph.nodes}
    pool = "avgpool2d" if name.startswith("trunc") else "maxpool2d"
    assert {"conv2d", pool, "flatten", "linear"} <= ops
    if name.startswith("binary"):
        assert graph.input.act.bits == 8 and any(
            getattr(node, "threshold", None) is not None for node in graph.nodes)
    else:
        assert {node.requant.rounding for node in graph.nodes
                if getattr(node, "requant", None)} == {"half_even"}


@pytest.mark.slow
def test_half_even_matters(exported):
    """With power-of-two scales ties are common: rounding them half up would differ from
    QONNX."""
    graph, x_int, ref, _ = check_against_qonnx(exported("int8-dynamo"), batch=48, seed=1)
    nodes = [dataclasses.replace(node, requant=dataclasses.replace(node.requant,
                                                                   rounding="half_up"))
             if getattr(node, "requant", None) else node for node in graph.nodes]
    half_up = ir.Graph(nodes=tuple(nodes), output=graph.output, name=graph.name)
    assert not np.array_equal(reference.run(half_up, x_int), ref)


@pytest.mark.slow
def test_grouped_conv_and_per_channel_scales(exported):
    graph = zeroskip.import_qonnx(exported("int8-dynamo"))
    convs = [node for node in graph.nodes if node.op == "conv2d"]
    assert [conv.groups for conv in convs] == [1, 2]
    assert len(set(convs[0].weight_scale)) > 1 and len(set(convs[1].weight_scale)) == 1
    assert np.any(convs[0].bias != 0)


@pytest.mark.slow
@pytest.mark.parametrize("make, shape", [(finn_tfc, (1, 784)), (finn_cnv, (1, 3, 32, 32))],
                         ids=["tfc-w1a1", "cnv-w1a1"])
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_finn_topologies(tmp_path, make, shape, dynamo):
    """brevitas_examples' TFC and CNV (1-bit weights and activations, random weights and
    BatchNorm statistics), their float TensorNorm tail replaced by an 8-bit quantizer."""
    path = export(make, shape, tmp_path / "finn.onnx", dynamo=dynamo)
    graph, _, _, _ = check_against_qonnx(path, batch=6)
    assert sum(node.op in ("conv2d", "linear") for node in graph.nodes) == (
        4 if len(shape) == 2 else 9)


# --- co-simulation -----------------------------------------------------------------------------

@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("name, lanes", [("int8-dynamo", 2), ("binary-cnv-dynamo", 1)])
def test_cosimulation_is_bit_exact_against_qonnx(exported, verilator_build_root,
                                                  tmp_path_factory, name, lanes):
    """Export -> import -> compile -> Verilator, under random stalls: the design's outputs are
    QONNX's execution of the same file. The Verilog (half-even requantizers included) is
    deterministic and lint-clean."""
    from zeroskip.testbench.verilog import lint
    path = exported(name)
    graph, x_int, ref, qonnx_out = check_against_qonnx(path, batch=8, seed=5)
    design = zeroskip.compile(graph, lanes=lanes)
    assert design.verilog() == zeroskip.compile(zeroskip.import_qonnx(path),
                                                lanes=lanes).verilog()
    build = tmp_path_factory.mktemp("build")
    lint(design.write(build), design.top)
    # The build's graph file keeps the rounding mode: compiled again, the same Verilog.
    assert Design.load(build).verilog() == design.verilog()
    result = design.simulate(x_int, idle_probability=0.3, backpressure_probability=0.3, seed=2,
                             build_root=verilator_build_root)
    rtl = result.outputs
    np.testing.assert_array_equal(rtl, ref)
    np.testing.assert_array_equal(rtl, qonnx_out)


# --- hand-made graphs: the ops Brevitas's small nets do not emit ---------------------------------

def test_average_pools_add_and_gemm_equal_qonnx(tmp_path):
    path = tmp_path / "pools.onnx"
    onnx.save(pools_and_add(), path)
    graph, _, _, _ = check_against_qonnx(path, batch=16)
    assert [node.op for node in graph.nodes] == ["input", "conv2d", "avgpool2d", "conv2d",
                                                  "add", "avgpool2d", "flatten", "linear"]
    add = next(node for node in graph.nodes if node.op == "add")
    assert add.input_multipliers == (1, 2)


# --- refusals: by node and reason, nothing approximated ------------------------------------------

def small_model(out_scale=2.0**-4, zero_point=0.0, rounding="ROUND", tail=None, weight_bits=8,
                narrow_weights=True, out_bits=8, batch_norm=False):
    """Quant -> Conv -> [BatchNormalization] -> [tail op] -> Quant, one knob per refusal."""
    b = GraphBuilder((1, 2, 4, 4), seed=3)
    x = b.quant("x", 2.0**-4, 8)
    limit = 2 ** (weight_bits - 1)
    ints = b.rng.integers(-limit, limit, (3, 2, 3, 3))
    ints[0, 0, 0, 0] = -limit
    weights = b.quant(b.constant(ints * 2.0**-6, "w"), 2.0**-6, weight_bits,
                      narrow=narrow_weights)
    acc = b.node("Conv", [x, weights], pads=[1, 1, 1, 1])
    if batch_norm:
        acc = b.node("BatchNormalization", [acc] + [b.constant(v) for v in (
            [1.3, 0.7, 2.1], [0.1, -0.2, 0.3], [0.0, 1.0, -1.0], [1.0, 2.0, 0.5])])
    if tail:
        acc = b.node(tail, [acc])
    return b.model(b.quant(acc, out_scale, out_bits, zero_point=zero_point, rounding=rounding))


@pytest.mark.parametrize("model, message", [
    (lambda: small_model(), None),
    (lambda: small_model(zero_point=1.0), "'Quant_14' (Quant): a nonzero zero point"),
    (lambda: small_model(out_scale=0.3), "'Quant_14' (Quant): channel 0: the accumulator's "
                                         "step over the output scale is 0.003255208203982981, "
                                         "not m / 2**s"),
    (lambda: small_model(rounding="FLOOR"), "'Quant_14' (Quant): rounding mode FLOOR"),
    (lambda: small_model(out_scale=[[[[2.0**-4]], [[2.0**-3]], [[2.0**-4]]]]),
     "a per-channel activation scale"),
    (lambda: small_model(tail="Sigmoid"), "'Sigmoid_11' (Sigmoid): op Sigmoid is not supported"),
    (lambda: small_model(narrow_weights=False), "'Conv_10' (Conv): weights reach -128; the IR's "
                                                "8-bit weights are symmetric"),
    (lambda: small_model(batch_norm=True), "(use power-of-two scales, and no "
                                           "BatchNormalization before a multi-bit Quant)"),
    (lambda: small_model(out_bits=12), "a 12-bit activation"),
], ids=["accepted", "zero point", "scale ratio", "rounding", "per-channel act scale",
        "unsupported op", "wide-range weights", "batch norm before int8", "12-bit activation"])
def test_refusals_name_node_and_reason(model, message):
    made = model()
    if message is None:  # the knobs' defaults import
        assert zeroskip.import_qonnx(made).nodes[1].op == "conv2d"
        return
    with pytest.raises(ZeroskipError) as error:
        zeroskip.import_qonnx(made)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_trunc_version_1_and_floor_are_refused():
    b = GraphBuilder((1, 2, 4, 4))
    x = b.quant("x", 2.0**-4, 8, signed=False)
    pooled = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    common = [b.constant(2.0**-6), b.constant(0.0), b.constant(10.0)]
    version_1 = b.helper.make_node("Trunc", [pooled, *common, b.constant(8.0)], ["t1"],
                                   name="Trunc_v1", domain="qonnx.custom_op.general")
    b.nodes.append(version_1)
    with pytest.raises(ZeroskipError, match="'Trunc_v1' \\(Trunc\\): Trunc with 5 inputs"):
        zeroskip.import_qonnx(b.model("t1"))
    b.nodes[-1] = b.helper.make_node(
        "Trunc", [pooled, *common, b.constant(2.0**-4), b.constant(8.0)], ["t2"],
        name="Trunc_floor", domain="qonnx.custom_op.general", rounding_mode="FLOOR", signed=0)
    with pytest.raises(ZeroskipError, match="'Trunc_floor' \\(Trunc\\): rounding mode FLOOR"):
        zeroskip.import_qonnx(b.model("t2"))


def test_unquantized_output_and_float_fan_out_are_refused():
    b = GraphBuilder((1, 2, 4, 4))
    acc = b.node("Conv", [b.quant("x", 2.0**-4, 8), b.weights((3, 2, 3, 3), 2.0**-6)])
    with pytest.raises(ZeroskipError, match=r"output 'conv\d+' is not a quantized activation"):
        zeroskip.import_qonnx(b.model(acc))
    b.quant(acc, 2.0**-4, 8)
    with pytest.raises(ZeroskipError, match=r"the unquantized tensor 'conv\d+' has 2 readers"):
        zeroskip.import_qonnx(b.model(b.quant(acc, 2.0**-3, 8)))


def test_bad_files_are_refused_in_one_line(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07\x12\xff\xff\xff\xff\x0fnot a model")
    with pytest.raises(ZeroskipError, match="is not a readable ONNX model"):
        zeroskip.import_qonnx(garbage)
    with pytest.raises(ZeroskipError, match="no such ONNX file"):
        zeroskip.import_qonnx(tmp_path / "absent.onnx")
    good = tmp_path / "good.onnx"
    onnx.save(small_model(), good)
    with pytest.raises(ZeroskipError, match="above the limit model_bytes=100 "):
        zeroskip.import_qonnx(good, limits=ir.Limits(model_bytes=100))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ZeroskipError, match=r"needs the onnx package: pip install "
                                            r"'zeroskip\[qonnx\]'"):
        zeroskip.import_qonnx(good)


def test_cli_import(tmp_path, capsys):
    from zeroskip.cli import main
    model, out = tmp_path / "pools.onnx", tmp_path / "net.zsg"
    onnx.save(pools_and_add(), model)
    assert main(["import", str(model), "-o", str(out), "--name", "pools"]) == 0
    assert "8 nodes (3 conv2d / linear)" in capsys.readouterr().out
    loaded, direct = ir.load(out), zeroskip.import_qonnx(model)
    x = grid_inputs(direct, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(reference.run(loaded, direct.quantize_input(x)),
                                  reference.run(direct, direct.quantize_input(x)))
    assert loaded.name == "pools"
    onnx.save(small_model(zero_point=1.0), model)
    assert main(["import", str(model), "-o", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "a nonzero zero point" in error


def test_mutated_models_import_or_are_refused_in_one_line():
    """Random damage to a valid model (inputs dropped, attributes and constants replaced by
    values of other types and shapes): each imports or raises one ZeroskipError line."""
    rng = np.random.default_rng(0)
    odd_values = [helper.make_attribute("x", v) for v in (
        [1, 2, 3], 0, -5, 2.5, "SAME_UPPER", b"", [0.5], [10**12, 1], [1, 1, 1, 1, 1, 1])]
    outcomes = {"imported": 0, "refused": 0}
    for trial in range(150):
        model = pools_and_add() if trial % 2 else small_model(batch_norm=trial % 4 == 1)
        for _ in range(rng.integers(1, 4)):
            node = model.graph.node[rng.integers(len(model.graph.node))]
            kind = rng.integers(4)
            if kind == 0 and node.input:
                del node.input[rng.integers(len(node.input))]
            elif kind == 1 and node.attribute:
                attribute = node.attribute[rng.integers(len(node.attribute))]
                replacement = odd_values[rng.integers(len(odd_values))]
                name = attribute.name
                attribute.CopyFrom(replacement)
                attribute.name = name
            elif kind == 2:
                tensor = model.graph.initializer[rng.integers(len(model.graph.initializer))]
                shape = [int(s) for s in rng.integers(0, 4, rng.integers(0, 4))]
                tensor.CopyFrom(numpy_helper.from_array(
                    rng.normal(size=shape).astype(np.float32), tensor.name))
            else:
                node.op_type = ["Relu", "Quant", "Conv", "Flatten", "Add"][rng.integers(5)]
        try:
            zeroskip.import_qonnx(model)
            outcomes["imported"] += 1
        except ZeroskipError as error:
            assert "\n" not in str(error) and str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50
