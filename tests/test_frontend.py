"""Frontend: torch.fx tracing, folding, quantization and export, checked against the golden model.

For every op, the QAT forward (``rtl``-free here: ``qat_*``) and the golden integer model on the
exported graph (``ref_*``) must agree bit for bit, and the dequantized result must track the float
model it came from.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn

import zeroskip
from zeroskip import ir, reference
from zeroskip.errors import EmptyLayerWarning, FrontendError
from zeroskip.frontend.passes import prepare_float_graph
from zeroskip.frontend.qat import prepare, quantize_multiplier
from zeroskip.frontend.trace import trace


def _randomize_batchnorms(model, generator):
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(channels, generator=generator) - 0.5)
    return model.eval()


def check_exact(model, x, **quant):
    """Export ``model``; assert QAT forward == golden model, bit for bit. Returns both."""
    net = prepare(model, x, **quant)
    graph = zeroskip.export(net, x)
    ref_out = reference.run(graph, graph.quantize_input(x.numpy()))
    qat_out = net.forward_int(x).numpy()
    np.testing.assert_array_equal(qat_out, ref_out)
    return graph, net, ref_out


def check_close_to_float(model, graph, ref_out, x, tolerance):
    with torch.no_grad():
        expected = model(x).numpy()
    error = np.abs(graph.dequantize_output(ref_out) - expected.reshape(ref_out.shape))
    assert error.max() <= tolerance * max(np.abs(expected).max(), 1e-6), error.max()


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class Functional(nn.Module):
    """Functions and tensor methods instead of modules."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class PadFunction(nn.Module):
    """F.pad with a different amount on every side, before a conv that pads too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(F.pad(x, (1, 0, 2, 0))))


OP_MODELS = {
    "conv2d_stride_padding": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1)),
    "conv2d_5x5_rectangular": lambda: nn.Sequential(nn.Conv2d(3, 4, (5, 3), padding=(2, 1))),
    "conv2d_grouped": lambda: nn.Sequential(nn.Conv2d(3, 4, 1),
                                            nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU()),
    "conv2d_depthwise": lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3),
                                              nn.ReLU6()),
    "conv_bn_relu": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8),
                                          nn.ReLU()),
    "linear_bn": lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16),
                                       nn.ReLU(), nn.Linear(16, 10)),
    "maxpool_padding": lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.MaxPool2d(3, 2, padding=1)),
    "avgpool": lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AvgPool2d(2)),
    "global_avgpool": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(),
                                            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                            nn.Linear(4, 3)),
    "residual_add": lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), Residual()),
    "functional": Functional,
    "relu_after_maxpool": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.ReLU(),
                                                nn.Flatten(), nn.Linear(4, 2)),
    "zero_pad_keras_same_stride_2": lambda: nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)),
                                                          nn.Conv2d(3, 8, 3, stride=2)),
    "pad_function": PadFunction,
    "dropout_identity": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5),
                                              nn.Identity(), nn.ReLU()),
}


@pytest.mark.parametrize("name", sorted(OP_MODELS))
def test_every_op_is_bit_exact_and_tracks_float(name):
    generator = torch.Generator().manual_seed(hash(name) % 2**31)
    torch.manual_seed(1)
    model = _randomize_batchnorms(OP_MODELS[name](), generator)
    x = torch.rand(32, 3, 4, 4, generator=generator) - (0.0 if "avgpool" in name else 0.3)
    graph, _, ref_out = check_exact(model, x)
    check_close_to_float(model, graph, ref_out, x, tolerance=0.1)


def test_op_kinds_in_exported_graphs():
    """Each IR op is produced by some model above, so the sweep really covers every op."""
    seen = set()
    for make in OP_MODELS.values():
        torch.manual_seed(0)
        x = torch.rand(4, 3, 4, 4)
        seen |= {node.op for node in zeroskip.export(make().eval(), x).nodes}
    assert seen == set(ir.NODE_TYPES)


def test_batchnorm_folding_preserves_the_float_function():
    generator = torch.Generator().manual_seed(3)
    model = _randomize_batchnorms(OP_MODELS["conv_bn_relu"](), generator)
    x = torch.randn(8, 3, 4, 4, generator=generator)
    folded = prepare_float_graph(trace(model, x))
    (conv,) = [n for n in folded.nodes if n.name != "input"]
    with torch.no_grad():
        expected = model(x)
    actual = F.relu(F.conv2d(x, conv.weight, conv.bias))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert conv.activation == "relu"


@pytest.mark.parametrize("padding, conv_padding, kernel, expected_padding, zero_taps", [
    # keras 'same', stride 2, even size: one row below and one column right only
    ((0, 1, 0, 1), 0, (3, 3), (1, 1), {"top": 1, "left": 1}),
    # keras 'same' of the KWS DS-CNN's (10, 4) stride-2 conv on 49x10: 4 above, 5 below
    ((1, 1, 4, 5), 0, (10, 4), (5, 1), {"top": 1}),
    # symmetric: merged into the conv's own padding, no tap added
    ((1, 1, 1, 1), 1, (3, 3), (2, 2), {}),
    # more before than after, on top of the conv's own padding
    ((2, 0, 0, 1), 1, (3, 3), (2, 3), {"right": 2, "top": 1}),
])
def test_zero_padding_folds_into_the_conv_exactly(padding, conv_padding, kernel,
                                                  expected_padding, zero_taps):
    generator = torch.Generator().manual_seed(sum(padding))
    torch.manual_seed(2)
    model = nn.Sequential(nn.ZeroPad2d(padding),
                          nn.Conv2d(2, 3, kernel, stride=2, padding=conv_padding)).eval()
    x = torch.randn(4, 2, 12, 10, generator=generator)
    folded = prepare_float_graph(trace(model, x))
    (conv,) = [n for n in folded.nodes if n.name != "input"]
    assert conv.padding == expected_padding
    grown = {"top": 0, "bottom": 0, "left": 0, "right": 0} | zero_taps
    assert conv.weight.shape[2:] == (kernel[0] + grown["top"] + grown["bottom"],
                                     kernel[1] + grown["left"] + grown["right"])
    inner = (slice(None), slice(None), slice(grown["top"], conv.weight.shape[2] - grown["bottom"]),
             slice(grown["left"], conv.weight.shape[3] - grown["right"]))
    torch.testing.assert_close(conv.weight[inner], model[1].weight.detach())
    added_taps = conv.weight.clone()
    added_taps[inner] = 0
    assert not added_taps.any()
    assert conv.mask[inner].all() and int(conv.mask.sum()) == model[1].weight.numel()
    with torch.no_grad():
        expected = model(x)
    actual = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=conv.padding)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    check_exact(model, x)


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_bit_width(bits):
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(96, 4)).eval()
    x = torch.rand(16, 3, 4, 4)
    graph, _, ref_out = check_exact(model, x, weight_bits=bits, act_bits=bits)
    for node in graph.nodes:
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            assert node.weight_bits == bits
            assert np.abs(node.weight).max() == 2 ** (bits - 1) - 1
        assert graph.acts[node.name].bits == bits
    assert ref_out.max() <= 2 ** (bits - 1) - 1 and ref_out.min() >= -(2 ** (bits - 1))


def test_per_layer_bits_by_name():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 4)).eval()
    x = torch.rand(8, 3, 4, 4)
    graph, _, _ = check_exact(model, x, weight_bits={"0": 4, "*": 8}, act_bits={"0": 3, "*": 8})
    assert graph["0"].weight_bits == 4 and graph.acts["0"].bits == 3
    assert graph["3"].weight_bits == 8


def test_epsilon_zeroes_small_activations():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    x = torch.rand(16, 3, 4, 4)
    _, _, plain = check_exact(model, x)
    graph, _, pruned = check_exact(model, x, epsilon=6)
    assert graph["0"].requant.epsilon == 6
    small = (plain > 0) & (plain <= 6)
    assert small.any() and not pruned[small].any()
    np.testing.assert_array_equal(pruned[~small], plain[~small])


def test_pruning_masks_are_honored_and_kept_through_qat():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(128, 4))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.7)
    mask = model[0].weight_mask.bool().clone()
    # Training after pruning moves weight_orig; the mask must still win.
    with torch.no_grad():
        model[0].weight_orig.add_(1.0)
    x = torch.rand(16, 3, 4, 4)
    net = prepare(model.eval(), x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        net(x).square().sum().backward()
        optimizer.step()
    graph = zeroskip.export(net, x)
    weight = graph["0"].weight
    assert not weight[~mask.numpy()].any()
    assert (weight[mask.numpy()] != 0).mean() > 0.9
    np.testing.assert_array_equal(net.forward_int(x).numpy(),
                                  reference.run(graph, graph.quantize_input(x.numpy())))


def test_qat_training_changes_integers_and_stays_exact():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    x, target = torch.rand(32, 3, 4, 4), torch.randint(0, 3, (32,))
    net = prepare(model, x)
    before = zeroskip.export(net, x)["3"].weight.copy()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    net.train()
    for _ in range(10):
        optimizer.zero_grad()
        F.cross_entropy(net(x), target).backward()
        optimizer.step()
    net.eval()
    graph = zeroskip.export(net, x)
    assert (graph["3"].weight != before).any()
    np.testing.assert_array_equal(net.forward_int(x).numpy(),
                                  reference.run(graph, graph.quantize_input(x.numpy())))


def test_post_training_export_uses_calibration_data():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()).eval()
    example = torch.rand(2, 1, 2, 2)
    calibration = [torch.rand(4, 1, 2, 2) * 10 for _ in range(3)]
    wide = zeroskip.export(model, example, calibration)
    narrow = zeroskip.export(model, example)
    assert wide.input.act.scale > 5 * narrow.input.act.scale
    assert not wide.input.act.signed


def test_a_dead_layer_exports_zeros_and_stays_exact():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1, bias=False),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    torch_prune.l1_unstructured(model[2], "weight", amount=1.0)  # nothing reaches layer 4
    x = torch.rand(8, 3, 4, 4)
    with pytest.warns(EmptyLayerWarning, match=r"^export of graph 'net': layer '2' \(16 "
                                                r"weights\) keeps no nonzero weight: the output "
                                                r"is the bias alone$"):
        graph, _, _ = check_exact(model, x)
    assert not reference.run_layers(graph, graph.quantize_input(x.numpy()))["2"].any()


def test_uncalibrated_net_is_refused():
    from zeroskip.frontend.qat import QuantNet
    from zeroskip.frontend.passes import prepare_float_graph as fold
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    net = QuantNet(fold(trace(model, torch.rand(2, 3, 4, 4))))
    with pytest.raises(FrontendError, match="never observed: calibrate"):
        net.forward_int(torch.rand(2, 3, 4, 4))


def test_quantize_multiplier_is_normalized_and_accurate():
    ratios = np.array([1e-6, 3.3e-4, 0.0123, 0.5, 0.99999, 1.0, 7.25, 1000.0])
    multiplier, shift = quantize_multiplier(ratios)
    assert multiplier.dtype == np.int32 and shift.dtype == np.int32
    assert np.all((multiplier >= 2**14) & (multiplier < 2**15))
    np.testing.assert_allclose(multiplier / 2.0**shift, ratios, rtol=2**-14)
    with pytest.raises(FrontendError, match="too large"):
        quantize_multiplier(2.0**16)


def test_exported_graph_round_trips_through_a_file(tmp_path):
    torch.manual_seed(4)
    model = OP_MODELS["residual_add"]().eval()
    x = torch.rand(8, 3, 4, 4)
    graph, _, ref_out = check_exact(model, x)
    loaded = zeroskip.load(graph.save(tmp_path / "net.zsg"))
    np.testing.assert_array_equal(reference.run(loaded, graph.quantize_input(x.numpy())),
                                  ref_out)


# --- what the frontend refuses -------------------------------------------------------------------

class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a + b


class Multiply(nn.Module):
    def forward(self, x):
        return x * x


class ReflectPad(nn.Module):
    def forward(self, x):
        return F.pad(x, (1, 1, 1, 1), mode="reflect")


class MeanMethod(nn.Module):
    def forward(self, x):
        return x.mean(1)


REFUSED = {
    "sigmoid module": (lambda: nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sigmoid()),
                       r"unsupported module '1' of type Sigmoid; supported: modules .*Conv2d"),
    "multiply function": (Multiply, r"unsupported function 'mul'.*supported:"),
    "mean method": (MeanMethod, r"unsupported tensor method 'mean'.*supported:"),
    "two inputs": (TwoInputs, r"takes 2 inputs"),
    "dilation": (lambda: nn.Sequential(nn.Conv2d(3, 3, 2, dilation=2)),
                 r"Conv2d '0': dilation \(2, 2\) is not supported"),
    "reflect padding": (lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding=1,
                                                        padding_mode="reflect")),
                        r"Conv2d '0': padding_mode 'reflect'"),
    "relu on the input": (lambda: nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 1)),
                          r"relu '0' follows 'the input'"),
    "batchnorm first": (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)),
                        r"BatchNorm '0' does not directly follow"),
    "adaptive pool to 2": (lambda: nn.Sequential(nn.AdaptiveAvgPool2d(2)),
                           r"output size 1 \(global"),
    "padding before a pool": (lambda: nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(2)),
                              r"zero padding '0' feeds '1'; zeroskip folds zero padding only "
                              r"into the one Conv2d it alone feeds"),
    "padding read twice": (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.ZeroPad2d(1),
                                                 Residual()),
                           r"zero padding '1' feeds '2.conv1', 'add'"),
    "nonzero constant padding": (lambda: nn.Sequential(nn.ConstantPad2d(1, 0.5),
                                                       nn.Conv2d(3, 3, 3)),
                                 r"ConstantPad2d '0': only zero padding .* value 0.5"),
    "cropping": (lambda: nn.Sequential(nn.ZeroPad2d((0, 0, -1, 1)), nn.Conv2d(3, 3, 3)),
                 r"ZeroPad2d '0': only zero padding of height and width by non-negative "
                 r"amounts"),
    "reflect padding function": (lambda: ReflectPad(),
                                 r"pad 'pad': mode 'reflect' is not supported"),
    "avgpool padding": (lambda: nn.Sequential(nn.AvgPool2d(3, padding=1)),
                        r"AvgPool2d '0': average pooling with padding"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_input_gets_one_clear_error(case):
    make, message = REFUSED[case]
    with pytest.raises(FrontendError, match=message):
        zeroskip.export(make().eval(), torch.rand(2, 3, 4, 4))


def test_untraceable_model_gets_one_line():
    model = nn.Sequential(nn.Conv2d(3, 3, 5))  # a 5x5 kernel on a 4x4 image
    with pytest.raises(FrontendError, match=r"torch.fx cannot trace Sequential on an input of "
                                            r"shape \(2, 3, 4, 4\): RuntimeError: ") as caught:
        zeroskip.export(model, torch.rand(2, 3, 4, 4))
    assert "\n" not in str(caught.value)


def test_not_a_module_or_bad_example():
    with pytest.raises(FrontendError, match="expected a torch.nn.Module"):
        zeroskip.export(lambda x: x, torch.rand(2, 3, 4, 4))
    with pytest.raises(FrontendError, match="example_input must be"):
        zeroskip.export(nn.Conv2d(3, 3, 1), torch.rand(3, 4, 4))


def test_bad_bits_named_with_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    with pytest.raises(FrontendError, match=r"weight bits for layer '0' must be an integer in "
                                            r"\[2, 8\], got 9"):
        prepare(model, torch.rand(2, 3, 4, 4), weight_bits=9)
