"""Brevitas networks for the QONNX importer's tests, their export, and QONNX's own execution.

Every network is small and untrained: random weights, and BatchNorm statistics drawn at random
so that its folded thresholds are not trivial. Scales are powers of two (Brevitas's
``*FixedPoint`` quantizers, FINN's ``POWER_OF_TWO`` scaling, or FINN's constant scale 1), the
case the importer makes exact.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

# Brevitas warns on import (deprecations, optional kernels); the suite turns warnings to errors.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import Int32Bias
    from brevitas.quant.fixed_point import (Int8ActPerTensorFixedPoint,
                                            Int8WeightPerChannelFixedPoint,
                                            Int8WeightPerTensorFixedPoint,
                                            Uint8ActPerTensorFixedPoint)
    from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant


def _randomize_batch_norms(net, seed):
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            size = module.num_features
            module.weight.data = torch.randn(size, generator=generator)
            module.bias.data = torch.randn(size, generator=generator) * 3
            module.running_mean.data = torch.randn(size, generator=generator) * 4
            module.running_var.data = torch.rand(size, generator=generator) * 20 + 1


def _calibrate(net, shape, seed):
    """A few forward passes in training mode: the activation quantizers' statistics settle
    (power-of-two scales from the data), then eval mode."""
    generator = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            net(torch.randn(8, *shape[1:], generator=generator))
    return net.eval()


class Int8Cnn(nn.Module):
    """Input quantizer, two QuantConv2d (per-channel weights with int32 biases; the second
    grouped), QuantReLU, max pool, QuantLinear to int8 outputs."""

    def __init__(self, weight_bits=8, act_bits=8):
        super().__init__()
        act = {"bit_width": act_bits}
        weight = {"weight_bit_width": weight_bits}
        self.quant_in = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint,
                                          return_quant_tensor=True, **act)
        self.conv1 = qnn.QuantConv2d(2, 4, 3, padding=1, bias=True,
                                     weight_quant=Int8WeightPerChannelFixedPoint,
                                     bias_quant=Int32Bias, **weight)
        self.relu1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint,
                                   return_quant_tensor=True, **act)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = qnn.QuantConv2d(4, 4, 3, padding=1, groups=2, bias=False,
                                     weight_quant=Int8WeightPerTensorFixedPoint, **weight)
        self.relu2 = qnn.QuantReLU(act_quant=self.relu1.act_quant, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(4 * 4 * 4, 10, bias=True,
                                  weight_quant=Int8WeightPerTensorFixedPoint,
                                  bias_quant=Int32Bias, **weight)
        self.quant_out = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, **act)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(self.quant_in(x))))
        x = self.relu2(self.conv2(x))
        return self.quant_out(self.fc(torch.flatten(x, 1)))


def int8_cnn(seed=0, weight_bits=8, act_bits=8):
    torch.manual_seed(seed)
    net = Int8Cnn(weight_bits, act_bits)
    with torch.no_grad():  # output channels of different magnitudes: different scales
        net.conv1.weight *= torch.tensor([1.0, 0.5, 0.2, 0.1]).view(4, 1, 1, 1)
        net.conv1.bias.uniform_(-0.5, 0.5)
    return _calibrate(net, (1, 2, 8, 8), seed)


class BinaryCnv(nn.Module):
    """CNV in miniature, built as FINN's CNV is (brevitas_examples' quantizers): an 8-bit
    Q1.7 input, binary conv / BatchNorm / bipolar activation blocks with a max pool, binary
    linear layers, and an 8-bit power-of-two output quantizer in place of CNV's TensorNorm."""

    def __init__(self, channels=(8, 8), features=16, classes=4, in_channels=3):
        super().__init__()
        layers = [qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=8, min_val=-1.0,
                                    max_val=1.0 - 2.0**-7, narrow_range=False,
                                    restrict_scaling_type="POWER_OF_TWO")]
        for index, out_channels in enumerate(channels):
            layers += [qnn.QuantConv2d(in_channels, out_channels, 3, bias=False,
                                       weight_quant=CommonWeightQuant, weight_bit_width=1),
                       nn.BatchNorm2d(out_channels, eps=1e-4),
                       qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=1)]
            if index == 0:
                layers.append(nn.MaxPool2d(2))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            qnn.QuantLinear(in_channels * 2 * 2, features, bias=False,
                            weight_quant=CommonWeightQuant, weight_bit_width=1),
            nn.BatchNorm1d(features, eps=1e-4),
            qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=1),
            qnn.QuantLinear(features, classes, bias=False, weight_quant=CommonWeightQuant,
                            weight_bit_width=1),
            qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def binary_cnv(seed=0):
    torch.manual_seed(seed)
    net = BinaryCnv()
    for module in net.modules():
        if isinstance(module, (qnn.QuantConv2d, qnn.QuantLinear)):
            nn.init.uniform_(module.weight.data, -1, 1)
    net = _calibrate(net, (1, 3, 10, 10), seed)
    _randomize_batch_norms(net, seed)
    return net


class _Features(nn.Module):
    """brevitas_examples' TFC / CNV without the input's ``2 x - 1`` (the data arrive in
    [-1, 1]) and with an 8-bit power-of-two output quantizer in place of the float
    TensorNorm."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x):
        for part in self.parts:
            if isinstance(part, qnn.QuantLinear) and x.dim() > 2:
                x = torch.flatten(x, 1)
            x = part(x)
        return x


def finn_tfc(seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brevitas_examples.bnn_pynq.models.FC import FC
    torch.manual_seed(seed)
    net = FC(num_classes=10, weight_bit_width=1, act_bit_width=1, in_bit_width=1,
             in_channels=1, out_features=[64, 64, 64])
    parts = list(net.features[:-1]) + [qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)]
    model = _calibrate(_Features(parts), (1, 784), seed)
    _randomize_batch_norms(model, seed)
    return model


def finn_cnv(seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brevitas_examples.bnn_pynq.models.CNV import CNV
    torch.manual_seed(seed)
    net = CNV(num_classes=10, weight_bit_width=1, act_bit_width=1, in_bit_width=8, in_ch=3)
    parts = list(net.conv_features) + list(net.linear_features[:-1]) + [
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)]
    model = _calibrate(_Features(parts), (1, 3, 32, 32), seed)
    _randomize_batch_norms(model, seed)
    return model


def export(make, shape, path, dynamo=True):
    """``export_qonnx`` of the net ``make()`` builds, for inputs of ``shape``: the default
    (dynamo) exporter, or TorchScript's. Brevitas's warnings (unused keywords, deprecations)
    are silenced while it builds and exports."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(make(), torch.zeros(shape), str(path), dynamo=dynamo)
    return path


def grid_inputs(graph, batch, rng):
    """Float inputs on the input encoding's grid (``integer * scale``, every integer of the
    range possible), so that QONNX's float32 input quantizer and the IR's agree by
    construction."""
    act = graph.input.act
    ints = rng.integers(act.qmin, act.qmax + 1, (batch, *graph.input.shape))
    if act.binary:
        ints = np.where(ints >= 0, 1, -1)
    return (ints * act.scale).astype(np.float32)


def qonnx_integers(path, x, graph):
    """QONNX's execution of the file on ``x``, one sample at a time (the dynamo export fixes
    the batch), divided by the output scale; asserted to be integers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.util.cleanup import cleanup_model
        # Shapes inferred (QONNX executes only a graph whose shapes are known).
        model = cleanup_model(ModelWrapper(str(path)))
        initializers = {tensor.name for tensor in model.graph.initializer}
        name = next(v.name for v in model.graph.input if v.name not in initializers)
        out_name = model.graph.output[0].name
        outputs = [execute_onnx(model, {name: sample[None]})[out_name][0] for sample in x]
    scaled = np.stack(outputs).astype(np.float64) / graph.acts[graph.output].scale
    integers = np.round(scaled)
    assert np.array_equal(scaled, integers), "QONNX's outputs are not on the output grid"
    return integers.astype(np.int64)
