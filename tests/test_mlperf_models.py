"""The MLPerf Tiny reference networks of zeroskip.models, against the keras sources they follow.

The keras layer lists below are transcribed by hand from mlcommons/tiny
benchmark/training/{image_classification,keyword_spotting,anomaly_detection}/keras_model.py and
visual_wake_words/vww_model.py, and their parameter counts computed from those lists alone, as
keras's ``model.summary()`` counts them (BatchNormalization: 4 per channel, 2 trainable).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zeroskip
from zeroskip import ir, models, qat, reference
from zeroskip.errors import FrontendError, ZeroskipError
from zeroskip.frontend.graph import FloatConv2d, FloatLinear
from zeroskip.frontend.passes import prepare_float_graph
from zeroskip.frontend.trace import trace

NAMES = tuple(models.MLPERF_TINY)
SLOW = {"vww_mobilenet_v1"}  # about 10 s to make its graph


def conv(c_in, c_out, kernel, stride=1):
    return ("conv", c_in, c_out, kernel if isinstance(kernel, tuple) else (kernel, kernel),
            stride, 1)


def depthwise(channels, stride=1):
    return ("conv", channels, channels, (3, 3), stride, channels)


def bn(channels):
    return ("bn", channels)


def dense(c_in, c_out):
    return ("dense", c_in, c_out)


def _resnet8():
    layers = [conv(3, 16, 3), bn(16)]
    layers += [conv(16, 16, 3), bn(16), conv(16, 16, 3), bn(16)]
    for c_in, c_out in ((16, 32), (32, 64)):
        # keras order: the two weight layers, then the 1x1 shortcut conv
        layers += [conv(c_in, c_out, 3, 2), bn(c_out), conv(c_out, c_out, 3), bn(c_out),
                   conv(c_in, c_out, 1, 2)]
    return layers + [dense(64, 10)]


def _dscnn():
    layers = [conv(1, 64, (10, 4), 2), bn(64)]
    for _ in range(4):
        layers += [depthwise(64), bn(64), conv(64, 64, 1), bn(64)]
    return layers + [dense(64, 12)]


def _autoencoder():
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
    layers = []
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [dense(c_in, c_out), bn(c_out)]
    return layers + [dense(128, 640)]


def _mobilenet():
    layers = [conv(3, 8, 3, 2), bn(8)]
    blocks = [(8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2)] + \
        [(128, 128, 1)] * 5 + [(128, 256, 2), (256, 256, 1)]
    for c_in, c_out, stride in blocks:
        layers += [depthwise(c_in, stride), bn(c_in), conv(c_in, c_out, 1), bn(c_out)]
    return layers + [dense(256, 2)]


KERAS_LAYERS = {"ic_resnet8": _resnet8(), "kws_dscnn": _dscnn(),
                "ad_autoencoder": _autoencoder(), "vww_mobilenet_v1": _mobilenet()}

# keras model.summary() totals: "Total params" and "Trainable params".
KERAS_PARAMS = {"ic_resnet8": (78_666, 78_186), "kws_dscnn": (24_908, 23_756),
                "ad_autoencoder": (269_992, 267_928), "vww_mobilenet_v1": (221_794, 216_322)}

# MACs per inference of the keras models, as the MLPerf Tiny paper gives them (12.5 M, 2.7 M,
# 0.26 M, 7.5 M), exactly.
KERAS_MACS = {"ic_resnet8": 12_501_632, "kws_dscnn": 2_656_768, "ad_autoencoder": 264_192,
              "vww_mobilenet_v1": 7_489_664}

# (channels, height, width) out of every conv, in order: keras 'same' gives ceil(size / stride).
RESNET_MAPS = [(16, 32, 32)] * 3 + [(32, 16, 16)] * 3 + [(64, 8, 8)] * 3
DSCNN_MAPS = [(64, 25, 5)] * 9
MOBILENET_MAPS = [(8, 48, 48)] + [
    shape for dw, pw in [((8, 48, 48), (16, 48, 48)), ((16, 24, 24), (32, 24, 24)),
                         ((32, 24, 24), (32, 24, 24)), ((32, 12, 12), (64, 12, 12)),
                         ((64, 12, 12), (64, 12, 12)), ((64, 6, 6), (128, 6, 6))] +
    [((128, 6, 6), (128, 6, 6))] * 5 + [((128, 3, 3), (256, 3, 3)), ((256, 3, 3), (256, 3, 3))]
    for shape in (dw, pw)]
CONV_MAPS = {"ic_resnet8": RESNET_MAPS, "kws_dscnn": DSCNN_MAPS, "ad_autoencoder": [],
             "vww_mobilenet_v1": MOBILENET_MAPS}


def keras_parameters(layers):
    """(total, trainable) as keras counts them; every Conv2D / DepthwiseConv2D / Dense has a
    bias (the keras default, kept by every one of these models)."""
    total = trainable = 0
    for layer in layers:
        if layer[0] == "bn":
            total, trainable = total + 4 * layer[1], trainable + 2 * layer[1]
            continue
        if layer[0] == "conv":
            _, c_in, c_out, (kh, kw), _, groups = layer
            count = c_out * (c_in // groups) * kh * kw + c_out
        else:
            count = layer[1] * layer[2] + layer[2]
        total, trainable = total + count, trainable + count
    return total, trainable


def torch_layers(model):
    """The model's conv, BatchNorm and linear modules in registration order, as keras tuples."""
    layers = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert module.bias is not None
            layers.append(("conv", module.in_channels, module.out_channels,
                           tuple(module.kernel_size), module.stride[0], module.groups))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert module.eps == 1e-3  # keras's default, not torch's 1e-5
            layers.append(bn(module.num_features))
        elif isinstance(module, nn.Linear):
            assert module.bias is not None
            layers.append(dense(module.in_features, module.out_features))
    return layers


def build(name):
    net = models.MLPERF_TINY[name]
    return net.build(), torch.zeros(net.input_shape)


@pytest.mark.parametrize("name", NAMES)
def test_layers_are_the_keras_layers(name):
    model, _ = build(name)
    assert torch_layers(model) == KERAS_LAYERS[name]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_equal_the_keras_models(name):
    model, _ = build(name)
    total, trainable = keras_parameters(KERAS_LAYERS[name])
    assert (total, trainable) == KERAS_PARAMS[name]
    statistics = sum(buffer.numel() for key, buffer in model.named_buffers()
                     if key.endswith(("running_mean", "running_var")))
    parameters = sum(p.numel() for p in model.parameters())
    assert (parameters + statistics, parameters) == KERAS_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_feature_maps_and_output_have_the_keras_shapes(name):
    model, example = build(name)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        out = model.eval()(example)
    for hook in hooks:
        hook.remove()
    assert shapes == CONV_MAPS[name]
    assert tuple(out.shape) == (1,) + {"ic_resnet8": (10,), "kws_dscnn": (12,),
                                       "ad_autoencoder": (640,),
                                       "vww_mobilenet_v1": (2,)}[name]


@pytest.mark.parametrize("name", NAMES)
def test_dense_macs_equal_the_published_counts(name):
    model, example = build(name)
    assert models.float_dense_macs(model, example) == KERAS_MACS[name]


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (32, 3, 1, (1, 1)), (32, 3, 2, (0, 1)), (32, 1, 2, (0, 0)), (96, 3, 2, (0, 1)),
    (6, 3, 2, (0, 1)), (49, 10, 2, (4, 5)), (10, 4, 2, (1, 1)), (25, 3, 1, (1, 1)),
    (7, 3, 2, (1, 1)),
])
def test_keras_same_padding(size, kernel, stride, expected):
    before, after = models.keras_same_padding(size, kernel, stride)
    assert (before, after) == expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


def test_asymmetric_keras_padding_is_an_explicit_zero_pad():
    resnet, dscnn = models.ic_resnet8(), models.kws_dscnn()
    assert resnet.stack2.a.pad.padding == (0, 1, 0, 1)
    assert resnet.stack2.a.conv.padding == (0, 0)
    assert isinstance(resnet.stack2.shortcut.pad, nn.Identity)  # 1x1 at stride 2: no padding
    assert isinstance(resnet.stack1.a.pad, nn.Identity)
    assert resnet.stack1.a.conv.padding == (1, 1)
    assert dscnn.stem.pad.padding == (1, 1, 4, 5)
    # keras's pool of (int(49 / 2), int(10 / 2)) on the 25x5 map: not global
    assert dscnn.pool.kernel_size == (24, 5)


def test_mobilenet_alpha_scales_every_width():
    model = models.vww_mobilenet_v1(alpha=0.5)
    assert model.stem.conv.out_channels == 16 and model.fc.in_features == 512
    with pytest.raises(ValueError, match="alpha 0.01"):
        models.vww_mobilenet_v1(alpha=0.01)


# --- benchmark graphs ----------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in NAMES])
def tiny(request):
    return request.param, models.mlperf_graph(request.param)


def _weight_nodes(graph):
    return [node for node in graph.nodes if isinstance(node, (ir.Conv2d, ir.Linear))]


def test_ptq_export_is_the_qat_forward_and_the_golden_model(tiny):
    name, made = tiny
    net = qat.prepare(made.model, made.inputs[:1], calibration=made.inputs)
    again = zeroskip.export(net, made.inputs[:1], name=name)
    for node, same in zip(made.graph.nodes, again.nodes, strict=True):
        assert node.name == same.name
        for field in ("weight", "bias"):
            if hasattr(node, field):
                np.testing.assert_array_equal(getattr(node, field), getattr(same, field))
    golden = reference.run(made.graph, made.inputs_int)
    np.testing.assert_array_equal(net.forward_int(made.inputs).numpy(), golden)
    assert golden.shape == (len(made.inputs),) + made.graph.shapes[made.graph.output]


def test_the_lowered_float_graph_computes_the_float_model(tiny):
    """Folded padding, BatchNorm and ReLU: the float path of the quantized net is the model."""
    _, made = tiny
    net = qat.QuantNet(prepare_float_graph(trace(made.model, made.inputs[:1])))
    net.observing = True  # the float path only
    with torch.no_grad():
        expected = made.model(made.inputs)
        actual = net.run(made.inputs)[net.float_graph.output].value
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_every_layer_of_the_golden_model_tracks_its_float_layer(tiny):
    """Each conv / linear of the golden model against its float layer on the same (dequantized
    integer) input: int8 rounding alone, at most a few percent."""
    _, made = tiny
    float_graph = prepare_float_graph(trace(made.model, made.inputs[:1]))
    values = reference.run_layers(made.graph, made.inputs_int)
    for node in float_graph.nodes:
        if not isinstance(node, (FloatConv2d, FloatLinear)):
            continue
        (source,) = node.inputs
        x = torch.from_numpy(values[source] * made.graph.acts[source].scale).float()
        weight = node.weight * node.mask
        with torch.no_grad():
            y = F.conv2d(x, weight, node.bias, node.stride, node.padding, 1, node.groups) \
                if isinstance(node, FloatConv2d) else F.linear(x, weight, node.bias)
        y = F.relu(y) if node.activation == "relu" else y
        actual = values[node.name] * made.graph.acts[node.name].scale
        error = np.abs(actual - y.numpy()).mean() / np.abs(y.numpy()).mean()
        assert error < 0.05, (node.name, error)


# The float MobileNet is left out: random and 27 layers deep, its logits move by about half their
# spread over the inputs when the input moves by 0.2 %, as far as int8 moves them (each of its
# layers is checked above).
@pytest.mark.parametrize("name", [name for name in NAMES if name != "vww_mobilenet_v1"])
def test_golden_model_tracks_the_float_model_end_to_end(name):
    made = models.mlperf_graph(name)
    with torch.no_grad():
        expected = made.model(made.inputs).numpy()
    actual = made.graph.dequantize_output(reference.run(made.graph, made.inputs_int))
    correlation = np.corrcoef(actual.ravel(), expected.ravel())[0, 1]
    assert correlation > 0.98, correlation


def test_pruning_empties_no_layer_and_keeps_depthwise_filters(tiny):
    name, made = tiny
    masks = {layer: module.weight_mask for layer, module in made.model.named_modules()
             if hasattr(module, "weight_mask")}
    assert set(masks) == set(models.prunable_layers(made.model))
    for layer, mask in masks.items():
        top = mask.numel() - round(0.9 * mask.numel())
        assert top <= int(mask.sum()) <= top + mask.shape[0], layer
        assert mask.flatten(1).sum(1).min() >= 1, layer  # every filter keeps a weight
    for node in _weight_nodes(made.graph):
        kept = np.count_nonzero(node.weight)
        assert kept >= 1, node.name
        if isinstance(node, ir.Conv2d) and node.groups > 1:
            # depthwise 3x3: dense but for weights int8 rounds to zero
            assert 0.9 * node.out_channels * 9 <= kept <= node.out_channels * 9
        else:
            # int8 rounds a few of the smallest surviving weights of a channel to zero
            assert 0.9 * int(masks[node.name].sum()) <= kept <= int(masks[node.name].sum())


def test_stats_count_the_keras_macs_plus_the_zero_taps(tiny):
    """The IR pads symmetrically: keras's asymmetric 'same' padding adds masked zero taps."""
    name, made = tiny
    modules = dict(made.model.named_modules())
    summary = zeroskip.stats(made.graph, made.inputs_int)
    zero_tap_macs = 0
    for node in _weight_nodes(made.graph):
        layer = next(layer for layer in summary.layers if layer.name == node.name)
        added = node.weight.size - modules[node.name].weight.numel()
        if added:
            assert isinstance(node, ir.Conv2d) and node.weight.shape[2:] != \
                modules[node.name].kernel_size
        out_pixels = layer.dense_macs // node.weight.size
        zero_tap_macs += out_pixels * added
    assert summary.total.dense_macs == KERAS_MACS[name] + zero_tap_macs
    assert (zero_tap_macs == 0) == (name == "ad_autoencoder")
    assert 0 < summary.total.effective_macs < 0.1 * KERAS_MACS[name]


def test_about_half_of_every_relu_output_is_zero(tiny):
    _, made = tiny
    values = reference.run_layers(made.graph, made.inputs_int)
    fractions = {node.name: float(np.mean(values[node.name] == 0))
                 for node in _weight_nodes(made.graph) if node.requant.clamp_min == 0}
    assert fractions
    assert all(0.25 <= fraction <= 0.75 for fraction in fractions.values()), fractions
    assert 0.4 <= np.mean(list(fractions.values())) <= 0.6, fractions


def test_inputs_look_like_the_real_ones(tiny):
    name, made = tiny
    x = made.inputs
    assert tuple(x.shape[1:]) == models.MLPERF_TINY[name].input_shape[1:]
    kind = models.MLPERF_TINY[name].input_kind
    if kind == "image":
        assert x.min() >= 0 and x.max() <= 1 and 0.3 < float(x.mean()) < 0.7
        assert float(x.std()) > 0.1
    elif kind == "mfcc":
        coefficients = x.std(dim=(0, 1, 2))
        assert coefficients[0] == coefficients.max()  # c0 (energy) varies the most
        assert float(x.max()) > 0 > float(x.min())
    else:
        assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 0.05
    assert made.inputs_int.min() >= made.graph.input.act.qmin
    np.testing.assert_array_equal(made.inputs_int, made.graph.quantize_input(x.numpy()))


def test_compiles_at_one_lane(tiny):
    """zeroskip.compile builds every engine's static plan (the Verilog is not made here)."""
    _, made = tiny
    design = zeroskip.compile(made.graph, lanes=1)
    assert design.lanes == {node.name: 1 for node in _weight_nodes(made.graph)}
    assert design.in_shape == made.graph.input.shape


def test_same_seed_same_graph_other_seed_other_weights():
    first = models.mlperf_graph("ad_autoencoder", calibration_images=16)
    second = models.mlperf_graph("ad_autoencoder", calibration_images=16)
    other = models.mlperf_graph("ad_autoencoder", calibration_images=16, seed=1)
    for a, b, c in zip(_weight_nodes(first.graph), _weight_nodes(second.graph),
                       _weight_nodes(other.graph)):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.requant.multiplier, b.requant.multiplier)
        assert not np.array_equal(a.weight, c.weight)


def test_sparsity_keeps_a_weight_in_every_filter_however_high():
    made = models.mlperf_graph("ad_autoencoder", sparsity=0.99995, calibration_images=8)
    kept = [int(np.count_nonzero(node.weight)) for node in _weight_nodes(made.graph)]
    # the largest weight of every filter
    assert kept == [128, 128, 128, 128, 8, 128, 128, 128, 128, 640]


def test_bad_names_and_sparsities_are_refused():
    with pytest.raises(ZeroskipError, match=r"unknown MLPerf Tiny network 'resnet8'; known: "
                                            r"ic_resnet8, kws_dscnn"):
        models.mlperf_graph("resnet8")
    with pytest.raises(FrontendError, match=r"sparsity must be a number in \[0, 1\), got 1.0"):
        models.mlperf_graph("ad_autoencoder", sparsity=1.0)
