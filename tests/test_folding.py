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
        folding.estimate_layer(node, (3, 6, 6), graph.input.act, 9, x)
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
