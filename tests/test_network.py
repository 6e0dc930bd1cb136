"""Whole networks: the fork, the argmax, the network top in the Amaranth simulator, the compiler's
decisions and refusals, build directories, and Verilator co-simulation of whole graphs."""
# amaranth: UnusedElaboratable=no

import hashlib
import json

import numpy as np
import pytest

import zeroskip
from zeroskip import ir, reference
from zeroskip.compiler import folding
from zeroskip.errors import ZeroskipError, ZeroskipWarning
from zeroskip.hdl.common import batch_from_beats, batch_to_beats
from zeroskip.design import Design
from zeroskip.hdl.argmax import ArgmaxEngine
from zeroskip.hdl.stream import StreamFork, StreamRegister

from hdl_sim import collect, drive, simulate

STALLS = 0.3
U8 = ir.Activation(8, False, 0.05)
S8 = ir.Activation(8, True, 0.05)


def requant(rng, channels, act, shift=(17, 20)):
    low, high = (act.qmin, act.qmax)
    return ir.Requant(rng.integers(2**14, 2**15, channels).astype(np.int32),
                      rng.integers(*shift, channels).astype(np.int32), low, high)


def conv(rng, name, source, channels, filters, *, kernel=3, stride=1, padding=1, groups=1,
         density=0.4, act=U8):
    shape = (filters, channels // groups, kernel, kernel)
    weight = rng.integers(-127, 128, shape) * (rng.random(shape) < density)
    return ir.Conv2d(name, (source,), weight.astype(np.int8),
                     rng.integers(-2000, 2000, filters).astype(np.int32), 8,
                     np.ones(filters), (stride, stride), (padding, padding), groups,
                     requant(rng, filters, act), act)


def linear(rng, name, source, features, outputs, density=0.5):
    weight = rng.integers(-127, 128, (outputs, features)) * \
        (rng.random((outputs, features)) < density)
    return ir.Linear(name, (source,), weight.astype(np.int8),
                     rng.integers(-2000, 2000, outputs).astype(np.int32), 8, np.ones(outputs),
                     requant(rng, 1, S8, shift=(15, 16)), S8)


def residual_graph(rng, size=6):
    """A stem, a residual block (two convs and an identity skip), a depthwise-separable block
    with stride 2, a global average pool and a classifier: every joint the compiler handles."""
    nodes = [
        ir.Input("x", (), (2, size, size), U8),
        conv(rng, "stem", "x", 2, 4),
        conv(rng, "block.a", "stem", 4, 4),
        conv(rng, "block.b", "block.a", 4, 4),
        ir.Add("block.add", ("block.b", "stem"), (1, 1), requant(rng, 4, U8, shift=(15, 16)),
               U8),
        conv(rng, "dw", "block.add", 4, 4, stride=2, groups=4, density=0.8),
        conv(rng, "pw", "dw", 4, 6, kernel=1, padding=0),
        ir.AvgPool2d("gap", ("pw",), (size // 2, size // 2), (size // 2, size // 2),
                     ir.Requant(np.full(1, 2**15 // 9 * 2, np.int32), np.full(1, 16, np.int32),
                                0, 255), U8),
        ir.Flatten("flat", ("gap",)),
        linear(rng, "fc", "flat", 6, 5),
    ]
    return ir.Graph(tuple(nodes), "fc", name="residual")


def pooled_graph(rng):
    """conv -> maxpool -> flatten -> linear: the flatten reorders, the linear absorbs it."""
    nodes = [ir.Input("x", (), (1, 6, 6), U8), conv(rng, "c1", "x", 1, 3, density=0.7),
             ir.MaxPool2d("pool", ("c1",)), ir.Flatten("flat", ("pool",)),
             linear(rng, "fc", "flat", 27, 4)]
    return ir.Graph(tuple(nodes), "fc", name="pooled")


def inputs(rng, graph, batch, density=0.6):
    act = graph.input.act
    shape = (batch, *graph.input.shape)
    return rng.integers(act.qmin, act.qmax + 1, shape) * (rng.random(shape) < density)


# --- building blocks, Amaranth simulator --------------------------------------------------------


def test_fork_gives_every_beat_to_every_consumer_under_independent_stalls():
    fork = StreamFork(8, 3)
    beats = list(range(1, 41))
    received = {}
    rngs = [np.random.default_rng(seed) for seed in range(4)]

    async def producer(ctx):
        await drive(ctx, fork.i_stream, beats, rngs[0], STALLS)

    def consumer(index):
        async def testbench(ctx):
            received[index] = await collect(ctx, fork.output(index), len(beats),
                                            rngs[index + 1], 0.5)
        return testbench

    simulate(fork, producer, *(consumer(index) for index in range(3)))
    assert all(received[index] == beats for index in range(3))


def test_register_slice_passes_every_beat_in_order_under_stalls():
    link = StreamRegister(8)
    beats = [int(v) for v in np.random.default_rng(7).integers(0, 256, 60)]
    received = []

    async def producer(ctx):
        await drive(ctx, link.i_stream, beats, np.random.default_rng(1), STALLS)

    async def consumer(ctx):
        received.extend(await collect(ctx, link.o_stream, len(beats),
                                      np.random.default_rng(2), 0.5))

    simulate(link, producer, consumer)
    assert received == beats


def test_register_slice_gives_a_beat_every_cycle_one_cycle_later():
    link = StreamRegister(8)
    given = []

    async def testbench(ctx):
        ctx.set(link.o_stream.ready, 1)
        ctx.set(link.i_stream.valid, 1)
        for cycle in range(20):
            ctx.set(link.i_stream.payload, cycle)
            if ctx.get(link.o_stream.valid):
                given.append(ctx.get(link.o_stream.payload))
            await ctx.tick()

    simulate(link, testbench)
    assert given == list(range(19))


def test_register_slice_ready_does_not_follow_the_output_ready_combinationally():
    link = StreamRegister(8)
    observed = []

    async def testbench(ctx):
        rng = np.random.default_rng(3)
        for _ in range(200):
            ctx.set(link.i_stream.valid, int(rng.random() < 0.7))
            ctx.set(link.i_stream.payload, int(rng.integers(0, 256)))
            ctx.set(link.o_stream.ready, 0)
            held = ctx.get(link.i_stream.ready)
            ctx.set(link.o_stream.ready, 1)
            observed.append((held, ctx.get(link.i_stream.ready)))
            ctx.set(link.o_stream.ready, int(rng.random() < 0.5))
            await ctx.tick()

    simulate(link, testbench)
    assert all(held == free for held, free in observed)
    assert {held for held, _ in observed} == {0, 1}  # the skid register did fill and drain


@pytest.mark.parametrize("logits", [
    [3, -7, 9, 9, 1],          # ties: the first largest wins, as numpy's argmax
    [-128, -128, -128, -128, -128],
    [0, 5, -3, 127, 126],
])
def test_argmax_passes_logits_and_gives_numpys_class(logits):
    rng = np.random.default_rng(1)
    batch = [logits, list(rng.integers(-128, 128, 5)), logits[::-1]]
    dut = ArgmaxEngine(5, S8)
    received = {}

    async def producer(ctx):
        await drive(ctx, dut.i_stream, [v for row in batch for v in row], rng, STALLS)

    async def logits_sink(ctx):
        received["logits"] = await collect(ctx, dut.o_stream, 15, np.random.default_rng(2),
                                           STALLS)

    async def class_sink(ctx):
        received["class"] = await collect(ctx, dut.o_stream_class, 3,
                                          np.random.default_rng(3), 0.6)

    simulate(dut, producer, logits_sink, class_sink)
    assert received["logits"] == [v for row in batch for v in row]
    assert received["class"] == [int(np.argmax(row)) for row in batch]


@pytest.mark.parametrize("features", [1, 2])
def test_argmax_loses_no_class_when_every_logit_or_every_other_is_a_last_one(features):
    rng = np.random.default_rng(features)
    batch = rng.integers(-128, 128, (12, features))
    dut = ArgmaxEngine(features, S8)
    received = {}

    async def producer(ctx):
        await drive(ctx, dut.i_stream, [int(v) for v in batch.flat], rng, 0.1)

    async def logits_sink(ctx):
        received["logits"] = await collect(ctx, dut.o_stream, batch.size,
                                           np.random.default_rng(2), 0.1)

    async def class_sink(ctx):  # slow to take classes: the last logits must wait, not overwrite
        received["class"] = await collect(ctx, dut.o_stream_class, len(batch),
                                          np.random.default_rng(3), 0.7)

    simulate(dut, producer, logits_sink, class_sink)
    assert received["logits"] == [int(v) for v in batch.flat]
    assert received["class"] == [int(np.argmax(row)) for row in batch]


@pytest.mark.slow
@pytest.mark.parametrize("make", [residual_graph, pooled_graph], ids=["residual", "pooled"])
def test_ref_vs_rtl_network_in_the_amaranth_simulator(make):
    rng = np.random.default_rng(5)
    graph = make(rng)
    x = inputs(rng, graph, batch=3)
    ref_outputs = reference.run(graph, x)
    dut = zeroskip.compile(graph, lanes=2, chunk=4).engine()
    out_beats = ref_outputs[0].size
    received = {}

    async def producer(ctx):
        await drive(ctx, dut.i_stream, batch_to_beats(x), np.random.default_rng(6), STALLS,
                    timeout=20_000)

    async def logits_sink(ctx):
        received["logits"] = await collect(ctx, dut.o_stream, 3 * out_beats,
                                           np.random.default_rng(7), STALLS, timeout=20_000)

    async def class_sink(ctx):
        received["class"] = await collect(ctx, dut.o_stream_class, 3,
                                          np.random.default_rng(8), STALLS, timeout=20_000)

    simulate(dut, producer, logits_sink, class_sink)
    rtl_outputs = batch_from_beats(received["logits"], ref_outputs.shape[1:])
    np.testing.assert_array_equal(rtl_outputs, ref_outputs)
    assert received["class"] == list(ref_outputs.argmax(axis=1))


# --- the compiler ----------------------------------------------------------------------------


def test_every_layer_gets_an_engine_and_flatten_costs_none():
    graph = residual_graph(np.random.default_rng(0))
    design = zeroskip.compile(graph, lanes=3)
    assert [spec.node.name for spec in design.layers] == [
        "stem", "block.a", "block.b", "block.add", "dw", "pw", "gap", "fc"]
    assert design.lanes == {"stem": 3, "block.a": 3, "block.b": 3, "dw": 3, "pw": 3, "fc": 3}
    fc = next(spec for spec in design.layers if spec.node.name == "fc")
    assert fc.sources == ("gap",)
    add = next(spec for spec in design.layers if spec.node.name == "block.add")
    assert add.sources == ("block.b", "stem")
    assert len({spec.counter_name for spec in design.layers}) == len(design.layers)


def test_lanes_are_capped_by_output_channels_and_checked_by_name():
    graph = pooled_graph(np.random.default_rng(0))
    assert zeroskip.compile(graph, lanes=8).lanes == {"c1": 3, "fc": 4}
    assert zeroskip.compile(graph, lanes={"c1": 2, "fc": 1}).lanes == {"c1": 2, "fc": 1}
    with pytest.raises(ZeroskipError, match=r"node 'c1': lanes must be between 1 and 8 times its "
                                            r"3 output channels"):
        zeroskip.compile(graph, lanes={"c1": 25, "fc": 1})
    with pytest.raises(ZeroskipError, match=r"missing \['fc'\]"):
        zeroskip.compile(graph, lanes={"c1": 1})
    with pytest.raises(ZeroskipError, match=r"unknown \['c9'\]"):
        zeroskip.compile(graph, lanes={"c1": 1, "fc": 1, "c9": 1})
    with pytest.raises(ZeroskipError, match="lanes must be an integer of at least 1"):
        zeroskip.compile(graph, lanes=0)
    with pytest.raises(ZeroskipError, match="lanes must be an integer, a dict or 'auto'"):
        zeroskip.compile(graph, lanes="many")
    with pytest.raises(ZeroskipError, match="more than the budget of 2"):
        zeroskip.compile(graph, lanes=2, multipliers=2)
    with pytest.raises(ZeroskipError, match="takes a zeroskip.ir.Graph"):
        zeroskip.compile("net.zsg")


def test_auto_lanes_need_a_budget_and_fold_on_calibration_inputs_or_the_weights():
    rng = np.random.default_rng(0)
    graph = pooled_graph(rng)
    with pytest.raises(ZeroskipError, match="lanes='auto' folds a multiplier budget over the "
                                            "layers: give multipliers=N"):
        zeroskip.compile(graph, "auto", calibration=inputs(rng, graph, 4))
    design = zeroskip.compile(graph, "auto", multipliers=5, calibration=inputs(rng, graph, 4))
    assert 2 <= sum(design.lanes.values()) <= 5
    # Every engine is estimated: the conv / linear ones with their lanes, the pool by its ports.
    assert {e.name: e.lanes > 0 for e in design.estimates} == {"c1": True, "pool": False,
                                                               "fc": True}
    # Without inputs, every activation counts as nonzero: the fold sees the weights alone.
    with pytest.warns(ZeroskipWarning, match="folds on the weights alone"):
        blind = zeroskip.compile(graph, "auto", multipliers=5)
    assert 2 <= sum(blind.lanes.values()) <= 5 and blind.estimates is None
    weights_alone = folding.Calibration(graph, None, 32).estimates(design.lanes)
    measured = folding.Calibration(graph, inputs(rng, graph, 4), 32).estimates(design.lanes)
    assert all(w.effective_macs >= m.effective_macs for w, m in zip(weights_alone, measured))
    assert weights_alone[-1].effective_macs == np.count_nonzero(graph["fc"].weight)


def test_a_flatten_that_reorders_is_built_only_before_a_linear_layer():
    rng = np.random.default_rng(0)
    nodes = (ir.Input("x", (), (1, 6, 6), U8), conv(rng, "c1", "x", 1, 3),
             ir.Flatten("flat", ("c1",)))
    with pytest.raises(ZeroskipError, match=r"node 'flat' \(flatten\) is the graph output"):
        zeroskip.compile(ir.Graph(nodes, "flat"))


def test_build_directory_is_deterministic_complete_and_loads_back(tmp_path):
    graph = residual_graph(np.random.default_rng(4))
    first = zeroskip.compile(graph, lanes=2).write(tmp_path / "a")
    second = zeroskip.compile(graph, lanes=2).write(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        ["graph.zsg", "manifest.json", "report.txt", "tb", first.name])
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["lanes"]["stem"] == 2 and manifest["stream_order"] == "HWC"
    assert manifest["ports"]["o_stream_class"] == {"classes": 5}
    stem = next(layer for layer in manifest["layers"] if layer["name"] == "stem")
    assert stem["weight_storage_bits"] > 0 and stem["accumulator_bits"] > 8
    assert "block.add" in (tmp_path / "a" / "report.txt").read_text()

    loaded = Design.load(tmp_path / "a")
    assert loaded.verilog() == first.read_text() and loaded.lanes == manifest["lanes"]
    first.write_text(first.read_text().replace("module", "module ", 1))
    with pytest.raises(ZeroskipError, match="differs from the one manifest.json was written"):
        Design.load(tmp_path / "a")
    # With its hash updated too, the edit is found by compiling the graph again.
    manifest["files"][first.name] = hashlib.sha256(first.read_bytes()).hexdigest()
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZeroskipError, match="differs from what graph.zsg and manifest.json"):
        Design.load(tmp_path / "a")
    with pytest.raises(ZeroskipError, match="is not a zeroskip build directory"):
        Design.load(tmp_path)


def test_verilog_is_lint_clean(tmp_path):
    from zeroskip.testbench.verilog import lint

    design = zeroskip.compile(residual_graph(np.random.default_rng(4)), lanes=2)
    lint(design.write(tmp_path), design.top)


# --- Verilator -----------------------------------------------------------------------------


@pytest.mark.verilator
@pytest.mark.slow
def test_verilator_residual_network_is_bit_exact_under_stalls(verilator_build_root):
    rng = np.random.default_rng(11)
    graph = residual_graph(rng)
    x = inputs(rng, graph, batch=12)
    design = zeroskip.compile(graph, lanes=2)
    result = design.simulate(x, idle_probability=STALLS, backpressure_probability=STALLS,
                             seed=5, build_root=verilator_build_root)
    expected = reference.run(graph, x)
    np.testing.assert_array_equal(result.outputs, expected)
    np.testing.assert_array_equal(result.classes, expected.argmax(axis=1))
    assert len(result.latency_cycles) == 12 and len(result.interval_cycles) == 11
    assert np.all(result.latency_cycles > 0) and np.all(result.interval_cycles > 0)
    work = reference.work(graph, x)
    for name in design.lanes:
        assert result.counters[name]["effective_macs"] == work[name].effective_macs_total
    network = result.counters["network"]
    assert network["inferences"] == 12
    # The harness also waits for the class beat, which follows the last logit by a cycle or,
    # under backpressure, more.
    assert 0 < network["latency_cycles"] <= result.latency_cycles[-1]
    assert network["interval_cycles"] > 0


@pytest.mark.verilator
@pytest.mark.slow
def test_verilator_waves_and_progress_of_a_small_network(verilator_build_root):
    rng = np.random.default_rng(12)
    graph = pooled_graph(rng)
    x = inputs(rng, graph, batch=4)
    calls = []
    result = zeroskip.compile(graph, lanes=1).simulate(
        x, waves=True, build_root=verilator_build_root,
        progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(result.outputs, reference.run(graph, x))
    assert result.waves is not None and result.waves.stat().st_size > 0
    assert result.waves.suffix in (".fst", ".vcd")
    assert calls[-1] == (4, 4) and all(total == 4 for _, total in calls)
