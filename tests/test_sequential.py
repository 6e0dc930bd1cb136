# amaranth: UnusedElaboratable=no
"""The sequential architecture: one engine running a chain of layers in turn. Refusals, build
directories and lint without a simulator; ``ref_*`` (golden) vs ``rtl_*`` (Verilator) on small
chains, under stalls, with the cycle estimates beside the measured steady-state interval and a
single input's latency."""

import json

import numpy as np
import pytest

import seq_nets
import zeroskip
from zeroskip import ir, reference
from zeroskip.errors import ZeroskipError
from zeroskip.design import Design

U8 = ir.Activation(8, False, 0.05)
S8 = ir.Activation(8, True, 0.05)


def requant(rng, channels, act, *, epsilon=0):
    return ir.Requant(rng.integers(2**14, 2**15, channels).astype(np.int32),
                      rng.integers(15, 18, channels).astype(np.int32), act.qmin, act.qmax,
                      epsilon)


def conv(rng, name, source, channels, filters, *, kernel=3, stride=1, padding=1, act=U8,
         density=0.4, groups=1, epsilon=0):
    shape = (filters, channels // groups, kernel, kernel)
    weight = rng.integers(-127, 128, shape) * (rng.random(shape) < density)
    weight[0] = 0  # an all-zero filter still gives its bias, requantized
    return ir.Conv2d(name, (source,), weight.astype(np.int8),
                     rng.integers(-3000, 3000, filters).astype(np.int32), 8, np.ones(filters),
                     (stride, stride), (padding, padding), groups,
                     requant(rng, filters, act, epsilon=epsilon), act)


def linear(rng, name, source, features, outputs, act=S8):
    weight = rng.integers(-127, 128, (outputs, features)) * \
        (rng.random((outputs, features)) < 0.5)
    return ir.Linear(name, (source,), weight.astype(np.int8),
                     rng.integers(-3000, 3000, outputs).astype(np.int32), 8, np.ones(outputs),
                     requant(rng, 1, act), act)


def classifier(rng):
    """uint8 image -> conv (padded) -> max pool -> strided conv with pruned small outputs ->
    flatten -> linear -> int8 logits: what the digits nets are made of."""
    return ir.Graph((
        ir.Input("x", (), (3, 6, 6), U8),
        conv(rng, "c1", "x", 3, 8),
        ir.MaxPool2d("p1", ("c1",), (2, 2), (2, 2)),
        conv(rng, "c2", "p1", 8, 16, stride=2, act=S8, epsilon=2),
        ir.Flatten("f", ("c2",)),
        linear(rng, "fc", "f", 64, 10),
    ), "fc", name="classifier")


def inputs(rng, graph, batch, density=0.6):
    act = graph.input.act
    x = rng.integers(act.qmin, act.qmax + 1, (batch, *graph.input.shape))
    return x * (rng.random(x.shape) < density)


def residual(rng):
    return ir.Graph((
        ir.Input("x", (), (2, 4, 4), U8),
        conv(rng, "a", "x", 2, 2),
        ir.Add("add", ("a", "x"), (1, 1), requant(rng, 2, U8), U8),
    ), "add", name="residual")


# --- refusals, build directories, lint ------------------------------------------------------


@pytest.mark.parametrize("make, kwargs, fragment", [
    (classifier, {"lanes": 3}, "takes 1, 2, 4 or 8 lanes (or 'auto'), got 3"),
    (classifier, {"multipliers": 4}, "not a multiplier budget"),
    (classifier, {"zero_skip": False}, "it has no dense mode"),
    (classifier, {"stream_width": 2}, "it takes neither stream widths nor packs"),
    (classifier, {"memory": "dram"}, "memory must be 'bram', 'spram' or 'spram-rom', got 'dram'"),
    (classifier, {"architecture": "systolic"}, "architecture must be one of dataflow, "
                                               "sequential, got 'systolic'"),
])
def test_what_the_sequential_engine_cannot_run_is_refused_by_name(make, kwargs, fragment):
    settings = {"architecture": "sequential", "chunk": 8, **kwargs}
    with pytest.raises(ZeroskipError) as error:
        zeroskip.compile(make(np.random.default_rng(0)), **settings)
    assert fragment in str(error.value)


def test_binary_input_is_refused():
    rng = np.random.default_rng(0)
    binary = ir.Activation(1, True, 1.0)
    weight = rng.integers(-1, 2, (2, 2, 3, 3)).astype(np.int8)
    graph = ir.Graph((
        ir.Input("x", (), (2, 4, 4), binary),
        ir.Conv2d("c", ("x",), weight, np.zeros(2, np.int32), 2, np.ones(2), (1, 1), (1, 1), 1,
                  requant(rng, 2, U8), U8)), "c")
    with pytest.raises(ZeroskipError, match="input 'x' is binary"):
        zeroskip.compile(graph, architecture="sequential")


def test_a_stride_across_other_than_1_2_4_is_refused():
    rng = np.random.default_rng(0)
    graph = ir.Graph((ir.Input("x", (), (2, 9, 9), U8), conv(rng, "c", "x", 2, 4, stride=3)),
                     "c")
    with pytest.raises(ZeroskipError, match="c: stride 3 across; the sequential engine takes "
                                            "1, 2 or 4"):
        zeroskip.compile(graph, architecture="sequential")


def test_build_directory_records_the_architecture_and_loads_back(tmp_path):
    from zeroskip.testbench.verilog import lint

    design = zeroskip.compile(classifier(np.random.default_rng(1)), architecture="sequential",
                              chunk=8)
    verilog = design.write(tmp_path / "a")
    zeroskip.compile(classifier(np.random.default_rng(1)), architecture="sequential",
                     chunk=8).write(tmp_path / "b")
    assert verilog.read_bytes() == (tmp_path / "b" / verilog.name).read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["architecture"] == "sequential" and manifest["multipliers_used"] == 1
    assert manifest["layer_counters"] is False
    assert "one zero-skip engine running the layers in turn" in design.report()
    loaded = Design.load(tmp_path / "a")
    assert loaded.architecture.name == "sequential" and loaded.verilog() == design.verilog()
    lint(verilog, design.top)


# --- Verilator: ref vs rtl ------------------------------------------------------------------


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("make, options", [
    (classifier, {"chunk": 8, "lanes": 1, "memory": "bram"}),
    (seq_nets.odd_shapes, {"chunk": 4, "lanes": 2, "memory": "bram"}),
    # A stride-2 stem, depthwise, residual add, average pool and linear on 8 lanes (lane 7 of
    # logic), the weights in SPRAM blocks loaded through w_stream (the UP5K's memories).
    (seq_nets.cross_rows, {"lanes": 8, "target": "ice40-up5k"}),
    (seq_nets.row_mode, {"lanes": 4, "memory": "spram"}),
], ids=["classifier", "odd-shapes", "cross-rows-up5k", "row-mode"])
def test_rtl_sequential_engine_is_bit_exact_under_stalls(make, options, verilator_build_root):
    rng = np.random.default_rng(5)
    graph = make(rng)
    x = inputs(rng, graph, 6)
    design = zeroskip.compile(graph, architecture="sequential", **options)
    stalled = design.simulate(x, idle_probability=0.3, backpressure_probability=0.3, seed=2,
                              build_root=verilator_build_root)
    ref_outputs = reference.run(graph, x)
    assert np.array_equal(stalled.outputs, ref_outputs)  # simulate checked it too
    if len(graph.shapes[graph.output]) == 1:
        assert np.array_equal(stalled.classes, ref_outputs.argmax(axis=1))
    assert stalled.counters["network"]["inferences"] == len(x)

    # Without stalls the next input loads while one runs: the estimate's interval is the
    # engine's steady state (one output's end to the next's).
    estimate = design.architecture.estimate(x)
    free = design.simulate(x, build_root=verilator_build_root)
    assert np.all(np.abs(free.interval_cycles - estimate.per_input[1:])
                  <= 0.01 * estimate.per_input[1:]), (free.interval_cycles, estimate.per_input)
    assert estimate.interval_cycles == estimate.per_input.mean()
    # One input alone: loaded, run, emitted.
    alone = design.simulate(x[:1], build_root=verilator_build_root)
    latency = design.architecture.estimate(x[:1]).latency_cycles
    assert abs(alone.latency_cycles[0] - latency) <= 0.01 * latency, \
        (alone.latency_cycles, latency)
    print(f"{graph.name}: interval {free.interval_cycles.tolist()} measured, "
          f"{estimate.per_input[1:].tolist()} estimated; latency {alone.latency_cycles[0]} "
          f"measured, {latency:.0f} estimated")
    # The engine's own latency counter starts at the first input beat taken, the testbench's at
    # the first one offered.
    assert 0 <= alone.latency_cycles[0] - alone.counters["network"]["latency_cycles"] <= 2
    # Overlapped, the last inference started while the one before ran: its latency and the
    # interval before it, as the engine counted them.
    network = free.counters["network"]
    assert 0 <= free.latency_cycles[-1] - network["latency_cycles"] <= 2, \
        (free.latency_cycles, network)
    assert network["interval_cycles"] == free.interval_cycles[-1], (free.interval_cycles, network)


def test_the_engine_checks_its_parameters():
    from zeroskip.hdl.sequential import SequentialEngine

    architecture = zeroskip.compile(classifier(np.random.default_rng(0)), 1,
                                    architecture="sequential").architecture
    shapes = {"in_shape": architecture.in_shape, "in_act": architecture.in_act,
              "out_shape": architecture.out_shape, "out_act": architecture.out_act}
    with pytest.raises(ValueError, match="requant_dsps must be 1 or 2, got 3"):
        SequentialEngine(architecture.plan, requant_dsps=3, **shapes)
    with pytest.raises(ValueError, match="memory must be one of bram, spram, spram-rom, got "
                                         "'flash'"):
        SequentialEngine(architecture.plan, memory="flash", **shapes)
