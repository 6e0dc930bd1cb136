"""Reference topologies beyond the demo's plain CNN, and the flow that makes their graphs.

:func:`residual_dws_cnn` is the second topology of the issue: a residual block and two
depthwise-separable blocks with stride 2 ending in a global average pool. It exercises every
joint the network compiler handles besides the demo's (the fork and join of a skip connection,
grouped convolutions, strides, the global pool). :func:`train_residual_dws` trains, prunes,
quantizes and exports it on the 8x8 digits, the way :func:`zeroskip.demo.run` does the demo net.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import demo, reference


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, plus the block's input, ReLU; channels and size kept.

    Parameters
    ----------
    channels : int
        Input and output channels of both convolutions.
    """

    def __init__(self, channels):
        super().__init__()
        self.conv_a = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(channels)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.bn_b(self.conv_b(self.relu_a(self.bn_a(self.conv_a(x)))))
        return self.relu(out + x)


def depthwise_separable(in_channels, out_channels, stride=2):
    """Depthwise conv3x3 (``groups == in_channels``) -BN-ReLU, then pointwise 1x1 -BN-ReLU.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels into the depthwise and out of the pointwise convolution.
    stride : int
        Stride of the depthwise convolution (padding 1, so 8x8 -> 4x4 at stride 2).

    Returns
    -------
    torch.nn.Sequential
        Modules ``0`` to ``5``: depthwise conv, BN, ReLU, pointwise conv, BN, ReLU.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels,
                  bias=False),
        nn.BatchNorm2d(in_channels), nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU())


class ResidualDwsCnn(nn.Module):
    """The network :func:`residual_dws_cnn` builds; see there."""

    def __init__(self, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block = ResidualBlock(width)
        self.dws1 = depthwise_separable(width, 2 * width)
        self.dws2 = depthwise_separable(2 * width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.dws2(self.dws1(self.block(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def residual_dws_cnn(width=16):
    """A residual, depthwise-separable CNN for 1x8x8 images and 10 classes.

    Layers (at ``width`` w): a conv3x3 (1 -> w)-BN-ReLU stem at 8x8; a residual block (two
    conv3x3-BN with a ReLU between them, the identity added, ReLU); a depthwise-separable block
    with stride 2 (8x8 -> 4x4, w -> 2w channels); a second one (4x4 -> 2x2, 2w -> 2w); a global
    average pool (``nn.AdaptiveAvgPool2d(1)``); flatten; linear 2w -> 10.

    Parameters
    ----------
    width : int
        Channels of the stem and the residual block; the separable blocks have twice as many.

    Returns
    -------
    ResidualDwsCnn
        A float module; 7.0k weights at width 16, 26.4k at width 32. Exported layer names are the
        modules' qualified names (``stem.0``, ``block.conv_a``, ``dws1.0``, ``fc``); the
        residual sum is the node ``add``.
    """
    return ResidualDwsCnn(width)


def prunable_layers(model):
    """Qualified names of ``model``'s conv and linear layers, depthwise convolutions excepted.

    A depthwise filter has only its 9 taps; global magnitude pruning empties whole channels of
    it and the net does not recover (and its weights are under 4% of the total).
    """
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) or isinstance(module, nn.Conv2d) and
            module.groups == 1]


@dataclass(frozen=True)
class ResidualDwsSettings:
    """The training recipe of :func:`train_residual_dws`.

    Attributes
    ----------
    sparsity : float
        Global element-wise magnitude pruning over the conv and linear weights except the
        depthwise ones (:func:`prunable_layers`).
    width : int
        See :func:`residual_dws_cnn`. 32, not 16: at width 16 the net has 7k weights, and 85%
        pruning costs it about 10 points of accuracy.
    float_epochs, prune_epochs, qat_epochs : int
        Adam epochs of float training, float fine-tuning after pruning, and int8 QAT.
    seed : int
        Seeds the initialization and each phase's shuffling.
    """

    sparsity: float = 0.85
    width: int = 32
    float_epochs: int = 8
    prune_epochs: int = 4
    qat_epochs: int = 3
    seed: int = 0


@dataclass(frozen=True)
class ResidualDwsResult:
    """What :func:`train_residual_dws` measured; accuracies on the 360 digits test images."""

    settings: ResidualDwsSettings
    float_accuracy: float
    pruned_accuracy: float
    int8_accuracy: float
    qat_matches_golden: int
    test_images: int
    seconds: float


def train_residual_dws(settings=ResidualDwsSettings()):
    """Train, prune, quantize (int8 QAT) and export :func:`residual_dws_cnn` on the digits.

    The flow is :func:`zeroskip.demo.run`'s: float training, global magnitude pruning with a
    float fine-tune, calibration, int8 quantization-aware fine-tune, export. Seeded: the same
    settings give the same graph.

    Parameters
    ----------
    settings : ResidualDwsSettings

    Returns
    -------
    (ResidualDwsResult, zeroskip.ir.Graph)
        The measurements and the exported graph (named ``residual_dws``).
    """
    from .frontend.export import export
    from .frontend.prune import prune, remove_reparametrization
    from .frontend.qat import prepare

    started = time.perf_counter()
    with _one_torch_thread():
        torch.manual_seed(settings.seed)
        x_train, y_train, x_test, y_test = demo.digits_data()

        def test_accuracy(model):
            with torch.no_grad():
                return demo.accuracy(model(x_test).argmax(1), y_test)

        model = demo.train(residual_dws_cnn(settings.width), x_train, y_train,
                           settings.float_epochs, 3e-3, settings.seed + 1)
        float_accuracy = test_accuracy(model)
        prune(model, settings.sparsity, granularity="element", criterion="magnitude",
              scope="global", layers=prunable_layers(model))
        demo.train(model, x_train, y_train, settings.prune_epochs, 1e-3, settings.seed + 2)
        pruned_accuracy = test_accuracy(model)
        remove_reparametrization(model)
        net = prepare(model, x_train[:8], calibration=x_train)
        demo.train(net, x_train, y_train, settings.qat_epochs, 3e-4, settings.seed + 3)
        graph = export(net, x_train[:8], name="residual_dws")

        golden = reference.run(graph, graph.quantize_input(x_test.numpy()))
        qat_matches = int(np.sum(np.all(net.forward_int(x_test).numpy() == golden, axis=1)))
    result = ResidualDwsResult(
        settings=settings, float_accuracy=float_accuracy, pruned_accuracy=pruned_accuracy,
        int8_accuracy=demo.accuracy(golden.argmax(1), y_test.numpy()),
        qat_matches_golden=qat_matches, test_images=len(x_test),
        seconds=time.perf_counter() - started)
    return result, graph


@contextmanager
def _one_torch_thread():
    """Batches of 64 tiny images train faster on one thread than on several (more so on a
    shared machine), and the result then does not depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
