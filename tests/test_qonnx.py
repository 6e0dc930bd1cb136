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
from zeroskip.errors import ZeroskipError

from qonnx_nets import (binary_cnv, export, finn_cnv, finn_tfc, grid_inputs, int8_cnn,
                        qonnx_integers)

NETS = {
    # name: (make the net, input shape, exporter)
    "int8-dynamo": (int8_cnn, (1, 2, 8, 8), True),
    "int8-torchscript": (int8_cnn, (1, 2, 8, 8), False),
    "w4a4": (lambda: int8_cnn(1, weight_bits=4, act_bits=4), (1, 2, 8, 8), True),
    "w2a3-torchscript": (lambda: int8_cnn(2, weight_bits=2, act_bits=3), (1, 2, 8, 8), False),
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


@pytest.mark.parametrize("name", NETS)
def test_golden_model_equals_qonnx_execution(exported, name):
    graph, _, _, _ = check_against_qonnx(exported(name))
    ops = {node.op for node in graph.nodes}
    assert {"conv2d", "maxpool2d", "flatten", "linear"} <= ops
    if name.startswith("binary"):
        assert graph.input.act.bits == 8 and any(
            getattr(node, "threshold", None) is not None for node in graph.nodes)
    else:
        assert {node.requant.rounding for node in graph.nodes
                if getattr(node, "requant", None)} == {"half_even"}


def test_half_even_matters(exported):
    """With power-of-two scales ties are common: rounding them half up would differ from
    QONNX."""
    graph, x_int, ref, _ = check_against_qonnx(exported("int8-dynamo"), batch=48, seed=1)
    nodes = [dataclasses.replace(node, requant=dataclasses.replace(node.requant,
                                                                   rounding="half_up"))
             if getattr(node, "requant", None) else node for node in graph.nodes]
    half_up = ir.Graph(nodes=tuple(nodes), output=graph.output, name=graph.name)
    assert not np.array_equal(reference.run(half_up, x_int), ref)


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
@pytest.mark.parametrize("name, lanes", [("int8-dynamo", 2), ("binary-cnv-dynamo", 1)])
def test_cosimulation_is_bit_exact_against_qonnx(exported, verilator_build_root, name, lanes):
    """Export -> import -> compile -> Verilator, under random stalls: the design's outputs are
    QONNX's execution of the same file."""
    path = exported(name)
    graph, x_int, ref, qonnx_out = check_against_qonnx(path, batch=8, seed=5)
    design = zeroskip.compile(graph, lanes=lanes)
    result = design.simulate(x_int, idle_probability=0.3, backpressure_probability=0.3, seed=2,
                             build_root=verilator_build_root)
    rtl = result.outputs
    np.testing.assert_array_equal(rtl, ref)
    np.testing.assert_array_equal(rtl, qonnx_out)
