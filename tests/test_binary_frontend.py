"""binarize: binary / ternary / mixed networks whose integer forward equals the golden model on
the exported graph, bit for bit; BatchNorm + sign folded exactly into thresholds."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zeroskip
from zeroskip import ir, reference
from zeroskip.errors import FrontendError
from zeroskip.frontend.binary import BinaryNet, binarize


def randomize_batchnorms(model, generator, negative=True):
    """Random running statistics and affine parameters; about half the gains negative."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator))
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            gain = torch.rand(channels, generator=generator) + 0.5
            if negative:
                gain *= torch.where(torch.rand(channels, generator=generator) < 0.5, -1.0, 1.0)
            module.weight.data.copy_(gain)
            module.bias.data.copy_(torch.randn(channels, generator=generator))
    return model.eval()


def small_net(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(12, 12, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(12 * 2 * 2, 16), nn.BatchNorm1d(16), nn.ReLU6(),
        nn.Linear(16, 5))
    return randomize_batchnorms(model, torch.Generator().manual_seed(seed))


def check_exact(net, x):
    """Export ``net``; assert its integer forward == the golden model. Returns the graph."""
    graph = zeroskip.export(net, x)
    golden = reference.run(graph, graph.quantize_input(x.numpy()))
    np.testing.assert_array_equal(net.forward_int(x).numpy(), golden)
    return graph


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("signed_input", [False, True], ids=["unsigned", "signed"])
def test_binary_net_matches_golden_model(seed, signed_input):
    x = torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(seed + 100))
    if signed_input:
        x = 2 * x - 1
    net = binarize(small_net(seed), x[:4], x)
    graph = check_exact(net, x)
    kinds = [(node.name, node.threshold is not None) for node in graph.nodes
             if isinstance(node, (ir.Conv2d, ir.Linear))]
    assert kinds == [("0", True), ("3", True), ("7", True), ("10", True), ("13", False)]
    assert graph.input.act.bits == 8 and graph.input.act.signed == signed_input
    for node in graph.nodes:
        if isinstance(node, (ir.Conv2d, ir.Linear)):
            assert node.weight_bits == 2 and set(np.unique(node.weight)) <= {-1, 1}
    assert graph.acts["13"] == ir.Activation(8, True, graph.acts["13"].scale)
    assert any(
        (node.threshold.signs == -1).any() for node in graph.nodes
        if getattr(node, "threshold", None) is not None)


def test_export_survives_a_file_round_trip(tmp_path):
    x = torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    graph = check_exact(binarize(small_net(), x[:4], x), x)
    loaded = ir.load(graph.save(tmp_path / "binary.zsg"))
    x_int = graph.quantize_input(x.numpy())
    np.testing.assert_array_equal(reference.run(loaded, x_int), reference.run(graph, x_int))


def test_thresholds_fold_batchnorm_exactly():
    """sign(BN(acc * scale + bias)) in float64 == the IR threshold on the integer acc, for
    positive, negative and zero BatchNorm gains."""
    generator = torch.Generator().manual_seed(7)
    model = randomize_batchnorms(nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9), nn.ReLU()),
                                 generator)
    model[1].weight.data[0] = 0.0                 # gain 0: the sign of the BN bias everywhere
    model[1].bias.data[0] = -0.25
    x = torch.rand(8, 6, generator=generator)
    net = binarize(model, x, x)
    layer, in_scale = net.module("0"), net.module("input").out.scale
    weight_int, weight_scale = layer.binary_weight()
    threshold = layer.threshold(in_scale, 255)
    assert (threshold.signs == np.where(model[1].weight.detach().numpy() < 0, -1, 1)).all()
    acc = torch.arange(-6 * 255, 6 * 255 + 1, dtype=torch.float64)[:, None].expand(-1, 9)
    z = acc * in_scale * weight_scale + layer.bias.detach().double()
    bn = model[1]
    y = (z - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps) \
        * bn.weight.detach().double() + bn.bias.detach().double()
    expected = torch.where(y >= 0, 1, -1).numpy()
    np.testing.assert_array_equal(reference.threshold(acc.numpy().astype(np.int64), threshold),
                                  expected)


def test_pruned_net_exports_ternary_weights_that_stay_zero_through_training():
    x = torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    model = small_net(1)
    zeroskip.prune(model, 0.5)
    net = binarize(model, x[:4], x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(net(x), torch.arange(32) % 5).backward()
        optimizer.step()
    net.calibrate(x)
    graph = check_exact(net, x)
    weight, mask = graph["3"].weight, model[3].weight_mask.numpy()
    assert set(np.unique(weight)) == {-1, 0, 1}
    np.testing.assert_array_equal(weight != 0, mask != 0)
    layers = {layer.name: layer for layer in zeroskip.stats(graph).layers}
    assert layers["3"].weight_encoding != "binary"


def test_mixed_int8_and_binary_layers():
    x = torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    net = binarize(small_net(2), x[:4], x, int8_layers=["0"])
    graph = check_exact(net, x)
    first, second = graph["0"], graph["3"]
    assert first.weight_bits == 8 and first.requant is not None and first.act.bits == 8
    assert second.weight_bits == 2 and second.threshold is not None
    assert graph.acts["0"].signed is False  # the ReLU of an int8 layer is fused, as in QAT


def test_training_mode_passes_gradients_to_every_parameter():
    x = torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    net = binarize(small_net(), x[:4], x).train()
    F.cross_entropy(net(x), torch.arange(16) % 5).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_public_api():
    assert zeroskip.binarize is binarize
    x = torch.rand(4, 3)
    assert isinstance(zeroskip.binarize(nn.Sequential(nn.Linear(3, 2)), x), BinaryNet)


@pytest.mark.parametrize("make, message", [
    (lambda x: binarize(small_net(), x, input_bits=1), "input_bits must be an integer in"),
    (lambda x: binarize(small_net(), x, int8_layers=["nope"]), "int8_layers names no Conv2d"),
    (lambda x: binarize(nn.Sequential(nn.Conv2d(2, 4, 3), nn.AvgPool2d(2)), x),
     "cannot binarize FloatAvgPool2d"),
], ids=["input bits", "unknown int8 layer", "avgpool"])
def test_bad_requests(make, message):
    with pytest.raises(FrontendError, match=message):
        make(torch.rand(4, 2, 8, 8))


@pytest.mark.slow
def test_binary_digits_demo():
    from zeroskip import binary_demo

    threads = torch.get_num_threads()
    result, _, _ = binary_demo.run()
    assert torch.get_num_threads() == threads  # trained on one thread, then restored
    assert result.accuracy >= 0.93  # 96.4 % measured
    assert result.agreeing_images == result.test_images == 360
    assert result.train_seconds < 60
