"""Sparsity-aware folding: the per-layer cycle estimate and the greedy multiplier budget."""

from dataclasses import replace

import numpy as np
import pytest

import zeroskip
from zeroskip import ir, reference
from zeroskip.errors import ZeroskipError
from zeroskip.compiler import folding
from zeroskip.hdl import sparse_plan

from test_hdl_conv import conv_graph, linear_graph, random_inputs


def small_net(rng, *, first_channels=3, first_density=0.3):
    """conv 'a' -> conv 'b' -> flatten -> linear 'fc' on 6x6 images."""
    a = conv_graph(rng, channels=first_channels, filters=8, size=6, kernel=3, padding=1,
                   weight_density=first_density).nodes[-1]
    b = conv_graph(rng, channels=8, filters=6, size=6, kernel=3, padding=1,
                   weight_density=0.3).nodes[-1]
    fc = linear_graph(rng, features=6 * 6 * 6, outputs=5).nodes[-1]
    return ir.Graph((ir.Input("x", (), (first_channels, 6, 6), ir.Activation(8, False, 0.05)),
                     replace(a, name="a", inputs=("x",)), replace(b, name="b", inputs=("a",)),
                     ir.Flatten("flat", ("b",)), replace(fc, inputs=("flat",))), "fc",
                    name="small")


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(4)
    graph = small_net(rng)
    return graph, random_inputs(rng, graph, batch=6)


def slowest(graph, x, lanes):
    return max(e.cycles for e in folding.estimate_graph(graph, x, lanes))


def test_fold_spends_at_most_the_budget_within_each_layers_channels(net):
    graph, x = net
    for budget in (3, 7, 40):
        lanes = folding.fold(graph, x, budget)
        assert list(lanes) == ["a", "b", "fc"]
        assert sum(lanes.values()) <= budget
        assert all(1 <= lanes[name] <= graph[name].out_channels for name in lanes)
    # A budget beyond every channel still stops at the channel counts (or sooner).
    assert sum(folding.fold(graph, x, 1000).values()) <= 8 + 6 + 5


def test_more_multipliers_are_never_slower(net):
    graph, x = net
    previous = None
    for budget in (3, 5, 8, 13, 19):
        lanes = folding.fold(graph, x, budget)
        estimates = folding.estimate_graph(graph, x, lanes)
        if previous is not None:
            # Greedy steps only add lanes that help, so every layer only gets faster.
            assert all(now.cycles <= before.cycles for now, before in zip(estimates, previous))
        previous = estimates


def test_fold_balances_the_slowest_layer_better_than_one_lane_each(net):
    graph, x = net
    lanes = folding.fold(graph, x, 8)
    assert sum(lanes.values()) == 8
    assert slowest(graph, x, lanes) < slowest(graph, x, dict.fromkeys(lanes, 1)) / 2


def test_fold_is_deterministic(net):
    graph, x = net
    assert folding.fold(graph, x, 9) == folding.fold(graph, x, 9)
    assert folding.estimate_graph(graph, x, {"a": 2, "b": 3, "fc": 1}) == \
        folding.estimate_graph(graph, x, {"a": 2, "b": 3, "fc": 1})


@pytest.mark.parametrize("multipliers, message", [
    (2, "has 3 conv2d/linear layers: it needs at least 3 multipliers"),
    (0, "multipliers must be a positive integer, got 0"),
    (-4, "multipliers must be a positive integer"),
    (2.5, "multipliers must be a positive integer, got 2.5"),
    (True, "multipliers must be a positive integer, got True"),
    ("8", "multipliers must be a positive integer, got '8'"),
])
def test_bad_budgets_are_refused(net, multipliers, message):
    graph, x = net
    with pytest.raises(ZeroskipError, match=message):
        folding.fold(graph, x, multipliers)


def test_bad_estimate_arguments_are_refused(net):
    graph, x = net
    with pytest.raises(ZeroskipError, match="no lanes given for 'fc'"):
        folding.estimate_graph(graph, x, {"a": 1, "b": 1})
    node = graph["a"]
    with pytest.raises(ZeroskipError, match="lanes must be between 1 and the 8 output channels"):
        folding.estimate_layer(node, (3, 6, 6), graph.input.act, 65, x)
    with pytest.raises(ZeroskipError, match=r"must be a batch of shape \(N, 3, 6, 6\)"):
        folding.estimate_layer(node, (3, 6, 6), graph.input.act, 1, x[:, :2])


def test_work_counts_match_the_golden_model_and_the_plan(net):
    graph, x = net
    work = reference.work(graph, x)
    values = reference.run_layers(graph, x)
    for estimate in folding.estimate_graph(graph, x, {"a": 3, "b": 2, "fc": 2}):
        node = graph[estimate.name]
        assert estimate.effective_macs == pytest.approx(work[node.name].effective_macs)
        assert estimate.dense_pairs == work[node.name].dense_macs
        x_in = values[node.input].reshape(len(x), *graph.shapes[node.input])
        plan = sparse_plan.plan(node, graph.shapes[node.input], graph.acts[node.input],
                                estimate.lanes, chunk=32)
        assert estimate.ideal_cycles == pytest.approx(sparse_plan.ideal_cycles(plan, x_in) / len(x))
        # The engine cannot beat its ideal, nor its one-beat-per-cycle output stream.
        assert estimate.cycles >= max(estimate.ideal_cycles, np.prod(graph.shapes[node.name]))


def test_dense_mode_issues_every_pair(net):
    graph, x = net
    values = reference.run_layers(graph, x)
    node = graph["b"]
    kwargs = {"node": node, "in_shape": (8, 6, 6), "in_act": graph.acts["a"], "lanes": 2,
              "x_in": values["a"]}
    sparse = folding.estimate_layer(**kwargs)
    dense = folding.estimate_layer(**kwargs, zero_skip=False)
    assert dense.effective_macs == sparse.effective_macs
    assert dense.ideal_cycles == 36 * np.ceil(6 * 9 * 8 / 2)
    assert dense.cycles >= dense.ideal_cycles > 3 * sparse.cycles


def test_a_single_channel_layer_is_scan_bound_and_gets_lanes_beyond_its_macs(net):
    """One input channel: at most one pair per combo, so the examiner, not the multiplier,
    sets the pace, and folding on effective MACs alone would starve the layer."""
    rng = np.random.default_rng(8)
    graph = small_net(rng, first_channels=1, first_density=0.9)
    x = random_inputs(rng, graph, batch=6)
    lanes = folding.fold(graph, x, 14)
    estimates = {e.name: e for e in folding.estimate_graph(graph, x, lanes)}
    assert estimates["a"].bound == "scan"
    assert estimates["a"].cycles > 1.5 * estimates["a"].ideal_cycles
    # Against the second conv, 'a' has fewer effective MACs yet at least as many lanes.
    assert estimates["a"].effective_macs < 0.7 * estimates["b"].effective_macs
    assert lanes["a"] >= lanes["b"]


@pytest.mark.verilator
def test_estimate_is_within_15_percent_of_verilator(verilator_build_root):
    rng = np.random.default_rng(12)
    graph = conv_graph(rng, channels=8, filters=6, size=5, kernel=3, padding=1,
                       weight_density=0.3)
    x = random_inputs(rng, graph, batch=32)  # enough inferences that filling the pipe is noise
    design = zeroskip.compile(graph, lanes=3, chunk=32)
    measured = design.simulate(x, build_root=verilator_build_root).cycles / len(x)
    node = graph.nodes[-1]
    estimate = folding.estimate_layer(node, graph.input.shape, graph.input.act, 3, x)
    assert estimate.cycles == pytest.approx(measured, rel=0.15)


# --- widths, packs and the latency model against the Amaranth simulator -------------------------


def simulated_timing(engine, beats, out_beats, batch):
    """``(first input cycles, last output cycles)`` of every inference, streamed back to back
    with no stall (a conv engine or a network top)."""
    from hdl_sim import collect, drive, simulate

    trace = []

    async def producer(ctx):
        await drive(ctx, engine.i_stream, beats, np.random.default_rng(0), timeout=100_000)

    async def sink(ctx):
        await collect(ctx, engine.o_stream, out_beats * batch, np.random.default_rng(1),
                      timeout=100_000)

    async def recorder(ctx):
        async for _, _, *values in ctx.tick().sample(engine.i_stream.valid,
                                                      engine.i_stream.ready,
                                                      engine.o_stream.valid,
                                                      engine.o_stream.ready):
            trace.append(values)

    extra = []
    if hasattr(engine, "o_stream_class"):
        async def classes(ctx):
            await collect(ctx, engine.o_stream_class, batch, np.random.default_rng(2),
                          timeout=100_000)
        extra.append(classes)
    simulate(engine, producer, sink, *extra, background=[recorder])
    trace = np.array(trace, bool)
    taken = np.flatnonzero(trace[:, 0] & trace[:, 1])
    given = np.flatnonzero(trace[:, 2] & trace[:, 3])
    return taken[::len(taken) // batch], given[out_beats - 1::out_beats]


MODEL_CASES = {
    # name: (graph arguments, engine arguments)
    "depthwise_pack8": (dict(channels=32, filters=32, size=6, kernel=3, padding=1, groups=32,
                             weight_density=1.0), dict(lanes=2, pack=8)),
    "depthwise_pack4_wide": (dict(channels=32, filters=32, size=6, kernel=3, padding=1,
                                  groups=32, weight_density=1.0),
                             dict(lanes=4, pack=4, in_width=8, out_width=8, slots=4)),
    "one_channel_pack8": (dict(channels=1, filters=16, size=6, kernel=3, padding=1,
                               weight_density=0.3), dict(lanes=2, pack=8)),
    "three_channels_pack4": (dict(channels=3, filters=16, size=6, kernel=3, padding=1,
                                  weight_density=0.2), dict(lanes=2, pack=4, out_width=2)),
    "pointwise_wide": (dict(channels=32, filters=32, size=6, kernel=1, padding=0,
                            weight_density=0.1), dict(lanes=8, in_width=4, out_width=8)),
    "columns": (dict(channels=16, filters=16, size=6, kernel=3, padding=1,
                     weight_density=0.1), dict(lanes=6, out_width=4)),
    "split_deep_tile": (dict(channels=16, filters=8, size=6, kernel=3, padding=1,
                             weight_density=0.1), dict(lanes=16, out_width=2, slots=4)),
    "deep_tile": (dict(channels=16, filters=16, size=6, kernel=3, padding=1,
                       weight_density=0.1), dict(lanes=16, slots=8)),
    # 128 channels a 4-pixel row: the line buffer drops its spare row (hdl.window.ring_rows).
    "ring_without_spare_row": (dict(channels=128, filters=8, size=4, kernel=3, padding=1,
                                    weight_density=0.1), dict(lanes=2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_estimate_of_wide_and_packed_engines_is_within_3_percent_of_the_simulator(case):
    from zeroskip.hdl.common import batch_to_beats, to_wide
    from zeroskip.hdl.conv import SparseConvEngine

    arguments, options = MODEL_CASES[case]
    rng = np.random.default_rng(5)
    graph = conv_graph(rng, **arguments)
    x = random_inputs(rng, graph, batch=4)
    node = graph.nodes[-1]
    engine = SparseConvEngine(node, graph.input.shape, graph.input.act, chunk=32, **options)
    out_beats = int(np.prod(graph.shapes[node.name])) // options.get("out_width", 1)
    beats = to_wide(batch_to_beats(x), options.get("in_width", 1))
    _, last = simulated_timing(engine, beats, out_beats, len(x))
    estimate = folding.estimate_layer(node, graph.input.shape, graph.input.act, x_in=x,
                                      chunk=32, **options)
    assert estimate.cycles == pytest.approx(np.diff(last).mean(), rel=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(lanes=2), dict(lanes=2, stream_width=4, pack=True),
                                     dict(lanes="auto", multipliers=12)],
                         ids=["narrow", "wide_packed", "auto"])
def test_latency_model_is_within_2_percent_of_the_simulator(options):
    """The first inference through an empty residual network (fork, add, depthwise, pool,
    flatten): the latency model against the Amaranth simulator."""
    from test_network import inputs, residual_graph

    from zeroskip.hdl.common import batch_to_beats, to_wide

    rng = np.random.default_rng(3)
    graph = residual_graph(rng)
    x = inputs(rng, graph, 1)
    design = zeroskip.compile(graph, calibration=x, **options)
    first, last = simulated_timing(design.engine(), to_wide(batch_to_beats(x), design.in_width),
                                   int(np.prod(design.out_shape)) // design.out_width, 1)
    assert design.architecture.latency == pytest.approx(last[0] - first[0] + 1, rel=0.02)


def test_balance_widens_a_port_bound_stream_instead_of_adding_lanes():
    """A pointwise layer with few weights is bound by its 16-channel output at one activation
    a beat; the folding makes that stream wider, not the layer's lanes more."""
    from test_network import U8
    from test_network import conv as network_conv

    rng = np.random.default_rng(6)
    nodes = (ir.Input("x", (), (4, 6, 6), U8),
             network_conv(rng, "pw", "x", 4, 16, kernel=1, padding=0, density=0.2))
    graph = ir.Graph(nodes, "pw", name="wide")
    x = random_inputs(rng, graph, batch=8)
    # At one chunk: lanes="auto" would choose the chunk of each by its latency.
    design = zeroskip.compile(graph, "auto", multipliers=8, calibration=x, chunk=32)
    narrow = zeroskip.compile(graph, "auto", multipliers=8, calibration=x, stream_width=1,
                              chunk=32)
    assert design.widths["pw"] > 1
    (estimate,) = design.estimates
    (before,) = narrow.estimates
    assert before.bound == "output" and estimate.cycles < before.cycles
    # Widening costs no multiplier: the wide design uses no more of them.
    assert design.multipliers_used <= narrow.multipliers_used


def test_balance_with_one_activation_a_beat_and_no_packs_folds_as_before(net):
    """``stream_width=1, pack=False`` gives the lanes :func:`folding.fold` gives."""
    graph, x = net
    for budget in (3, 7, 12):
        design = zeroskip.compile(graph, "auto", multipliers=budget, calibration=x,
                                  stream_width=1, pack=False)
        assert design.lanes == folding.fold(graph, x, budget)


def test_a_chain_of_linear_layers_gets_wider_streams_for_its_latency():
    """Every tensor one pixel: a layer starts once its input's last beat is in, so the folding
    also widens streams that shorten the single-stream latency, which it checks by the model."""
    from test_network import S8, linear

    rng = np.random.default_rng(9)
    nodes = [ir.Input("x", (), (64,), S8)]
    for index in range(4):
        nodes.append(linear(rng, f"fc{index}", nodes[-1].name, 64, 64, density=0.1))
    graph = ir.Graph(tuple(nodes), "fc3", name="chain")
    x = random_inputs(rng, graph, batch=8)
    design = zeroskip.compile(graph, "auto", multipliers=16, calibration=x)
    narrow = zeroskip.compile(graph, "auto", multipliers=16, calibration=x,
                              stream_width={name: 1 for name in design.widths})
    assert max(design.widths.values()) > 1
    assert design.architecture.latency < 0.9 * narrow.architecture.latency


def ref_chunk(latencies, tolerance):
    """The chunk ``lanes="auto"`` takes from the latencies at each chunk, widest first: the
    narrowest within ``tolerance`` of the shortest seen, stopping at the first beyond it."""
    best, chosen, seen = None, None, []
    for chunk, latency in latencies:
        seen.append((chunk, latency))
        best = latency if best is None else min(best, latency)
        if latency > best * (1 + tolerance):
            break
        chosen = chunk
    return chosen, seen


@pytest.mark.parametrize(("density", "budget"), [(0.1, 4), (0.1, 16), (0.5, 4)])
def test_lanes_auto_chooses_the_chunk_by_latency(density, budget):
    """Without a chunk, ``lanes="auto"`` folds at each of AUTO_CHUNKS and takes the narrowest
    within CHUNK_TOLERANCE of the shortest estimated latency; a chunk given is kept."""
    from zeroskip import compiler
    from zeroskip.compiler.latency import network_latency

    rng = np.random.default_rng(11)
    # Sparse weights: the narrower chunks scan more combos (32 is taken); dense: as fast (8).
    graph = conv_graph(rng, channels=32, filters=16, size=6, kernel=3, weight_density=density)
    x = random_inputs(rng, graph, batch=6)
    latencies = []
    for chunk in compiler.AUTO_CHUNKS:
        fixed = zeroskip.compile(graph, "auto", multipliers=budget, calibration=x, chunk=chunk)
        assert fixed.architecture.chunk_choice is None and fixed.chunk == chunk
        latencies.append((chunk, float(network_latency(fixed.architecture,
                                                       fixed.architecture.calibration).mean())))
    expected, seen = ref_chunk(latencies, compiler.CHUNK_TOLERANCE)
    design = zeroskip.compile(graph, "auto", multipliers=budget, calibration=x)
    assert design.chunk == expected
    assert [chunk for chunk, _ in design.architecture.chunk_choice] == \
        [chunk for chunk, _ in seen]
    assert [latency for _, latency in design.architecture.chunk_choice] == \
        pytest.approx([latency for _, latency in seen])
    assert f"chunk {expected} chosen by estimated latency" in design.report()
    assert [entry["chunk"] for entry in design.manifest()["chunk_choice"]] == \
        [chunk for chunk, _ in seen]


@pytest.mark.slow
def test_the_fold_widens_both_ports_of_a_depthwise_layer():
    """The DS-CNN's depthwise layers take and give 64x25x5 activations: at one activation a
    beat both ports take 8,000 cycles, so a wider output alone leaves the layer bound by its
    input. The fold widens both and spends the budget: every engine under 8,000 cycles."""
    from zeroskip import models

    made = models.mlperf_graph("kws_dscnn")
    design = zeroskip.compile(made.graph, "auto", multipliers=66,
                              calibration=made.inputs_int, chunk=8)
    beats = 64 * 25 * 5
    assert design.multipliers_used == 66
    for name in ("blocks.1.dw.conv", "blocks.2.dw.conv"):
        assert design.widths[name] >= 2 and design.architecture.layouts[name][1][0] >= 2
    assert max(estimate.cycles for estimate in design.estimates) < beats
