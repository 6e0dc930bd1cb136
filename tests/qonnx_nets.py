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


class TruncPoolNet(nn.Module):
    """QuantConv2d, QuantReLU, Brevitas's TruncAvgPool2d (exported as AveragePool + Trunc),
    QuantLinear."""

    def __init__(self):
        super().__init__()
        self.quant_in = qnn.QuantIdentity(act_quant=Uint8ActPerTensorFixedPoint,
                                          return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(2, 4, 3, padding=1, bias=False,
                                    weight_quant=Int8WeightPerTensorFixedPoint)
        self.relu = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint,
                                  return_quant_tensor=True)
        self.pool = qnn.TruncAvgPool2d(kernel_size=2, stride=2, bit_width=8,
                                       return_quant_tensor=True)
        self.fc = qnn.QuantLinear(4 * 4 * 4, 6, bias=False,
                                  weight_quant=Int8WeightPerTensorFixedPoint)
        self.quant_out = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)

    def forward(self, x):
        x = self.pool(self.relu(self.conv(self.quant_in(x))))
        return self.quant_out(self.fc(torch.flatten(x, 1)))


def trunc_pool_net(seed=0):
    torch.manual_seed(seed)
    return _calibrate(TruncPoolNet(), (1, 2, 8, 8), seed)


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


# --- hand-made QONNX graphs (ops Brevitas's small nets do not emit, and refusals) -------------

QONNX_DOMAIN = "qonnx.custom_op.general"


class GraphBuilder:
    """A QONNX graph built node by node with ``onnx.helper``: ``quant`` adds a Quant with
    constant scale, zero point and bit width; ``node`` any standard node."""

    def __init__(self, input_shape, seed=0):
        from onnx import TensorProto, helper
        self.helper, self.float = helper, TensorProto.FLOAT
        self.rng = np.random.default_rng(seed)
        self.nodes, self.initializers, self.count = [], [], 0
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))

    def constant(self, value, prefix="c"):
        from onnx import numpy_helper
        self.count += 1
        name = f"{prefix}{self.count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op, inputs, **attributes):
        self.count += 1
        output = f"{op.lower()}{self.count}"
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=f"{op}_{self.count}",
                                                **attributes))
        return output

    def quant(self, source, scale, bits, signed=True, narrow=False, zero_point=0.0,
              rounding="ROUND"):
        self.count += 1
        output = f"quant{self.count}"
        inputs = [source, self.constant(scale), self.constant(zero_point),
                  self.constant(float(bits))]
        self.nodes.append(self.helper.make_node(
            "Quant", inputs, [output], name=f"Quant_{self.count}", domain=QONNX_DOMAIN,
            signed=int(signed), narrow=int(narrow), rounding_mode=rounding))
        return output

    def weights(self, shape, scale, bits=8):
        """A float weight tensor, quantized by a narrow signed Quant."""
        limit = 2 ** (bits - 1) - 1
        ints = self.rng.integers(-limit, limit + 1, shape)
        return self.quant(self.constant(ints * np.asarray(scale), "w"), scale, bits,
                          narrow=True)

    def model(self, output):
        helper = self.helper
        graph = helper.make_graph(self.nodes, "hand", [self.input],
                                  [helper.make_tensor_value_info(output, self.float, None)],
                                  self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                        helper.make_opsetid(QONNX_DOMAIN, 1)])


def pools_and_add(builder=None):
    """Conv -> ReLU -> Quant; AveragePool 2x2 beside a strided 1x1 Conv, added; global average
    pool; Gemm with ``transB=0`` and a float bias on the accumulator's grid. Power-of-two
    scales throughout."""
    b = builder or GraphBuilder((1, 2, 4, 4))
    x = b.quant("x", 2.0**-4, 8)
    a = b.node("Conv", [x, b.weights((4, 2, 3, 3), 2.0**-6)], pads=[1, 1, 1, 1])
    a = b.quant(b.node("Relu", [a]), 2.0**-4, 8, signed=False)
    pooled = b.quant(b.node("AveragePool", [a], kernel_shape=[2, 2], strides=[2, 2]),
                     2.0**-4, 8, signed=False)
    strided = b.node("Conv", [a, b.weights((4, 4, 1, 1), 2.0**-5)], strides=[2, 2])
    strided = b.quant(b.node("Relu", [strided]), 2.0**-3, 8, signed=False)
    added = b.quant(b.node("Add", [pooled, strided]), 2.0**-3, 8, signed=False)
    gap = b.quant(b.node("GlobalAveragePool", [added]), 2.0**-5, 8, signed=False)
    flat = b.node("Flatten", [gap])
    bias = b.constant(b.rng.integers(-50, 50, 3) * 2.0**-5 * 2.0**-6)
    out = b.node("Gemm", [flat, b.weights((4, 3), 2.0**-6), bias], transB=0)
    return b.model(b.quant(out, 2.0**-4, 8))
