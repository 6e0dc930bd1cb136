"""The built-in digits demo: what the README claims about it, measured on the real run."""

import numpy as np
import pytest

from zeroskip import demo, reference

pytestmark = pytest.mark.slow


def test_split_is_fixed_and_has_360_test_images():
    x_train, y_train, x_test, y_test = demo.digits_data()
    assert x_test.shape == (360, 1, 8, 8) and x_train.shape == (1437, 1, 8, 8)
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    again = demo.digits_data()
    np.testing.assert_array_equal(again[3].numpy(), y_test.numpy())


def test_qat_forward_equals_golden_model_on_every_test_image(digits_demo):
    result, _ = digits_demo
    assert result.qat_matches_golden == result.test_images == 360


def test_rtl_of_the_demo_is_bit_exact_and_skips_zeros(digits_demo):
    """The demo's co-simulation (README: 360/360, 1.06x of the slowest layer's ideal, 15.4x
    fewer cycles than dense at the same multipliers)."""
    result, _ = digits_demo
    hw = result.hardware
    assert hw.bit_exact == result.test_images == 360
    assert hw.rtl_accuracy == result.golden_accuracy
    assert sum(hw.lanes.values()) <= 16 and sum(hw.dense_lanes.values()) <= 16
    assert hw.ideal_interval_cycles <= hw.interval_cycles <= 1.25 * hw.ideal_interval_cycles
    assert hw.latency_cycles > hw.interval_cycles
    assert hw.speedup >= 10


def test_pruned_int8_model_within_one_point_of_float(digits_demo):
    result, _ = digits_demo
    assert result.float_accuracy > 0.95
    assert result.golden_accuracy >= result.float_accuracy - 0.01


def test_sparsity_and_storage(digits_demo):
    result, graph = digits_demo
    assert result.sparsity == pytest.approx(0.9, abs=0.002)
    assert result.weights == 25744
    # 10% of the weights at 8 bits is 97.5% below fp32 before any index; the index costs more.
    assert 0.95 <= result.storage_reduction < 0.975
    x_int = graph.quantize_input(demo.digits_data()[2].numpy())
    assert result.effective_macs < 0.1 * result.dense_macs
    assert reference.run(graph, x_int).shape == (360, 10)


def test_table_and_json_carry_the_same_numbers(digits_demo, tmp_path):
    result, _ = digits_demo
    table = result.format_table()
    assert f"{100 * result.golden_accuracy:.2f} %" in table
    demo.write_json(result, tmp_path / "demo.json")
    import json
    loaded = json.loads((tmp_path / "demo.json").read_text())
    assert loaded["golden_accuracy"] == result.golden_accuracy
    assert loaded["settings"]["sparsity"] == 0.9


def test_the_same_table_whatever_the_thread_count():
    """Trained at the demo's width, a net's float sums (and so its pruned, quantized weights)
    follow the thread count unless the demo pins it: on 2 threads and on 1 this setting gave
    different effective MACs before it did."""
    import torch

    settings = demo.DemoSettings(float_epochs=2, prune_epochs=1, qat_epochs=1, hardware=False)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (2, 1):
            torch.set_num_threads(count)
            result, graph = demo.run(settings)
            assert torch.get_num_threads() == count  # put back after the run
            runs.append((result, graph))
    finally:
        torch.set_num_threads(threads)
    (first, first_graph), (second, second_graph) = runs

    def table(result):
        return [line for line in result.format_table().splitlines()
                if not line.startswith("time")]

    assert table(first) == table(second)
    assert first.effective_macs == second.effective_macs
    for node, again in zip(first_graph.nodes, second_graph.nodes, strict=True):
        if hasattr(node, "weight"):
            np.testing.assert_array_equal(node.weight, again.weight)
