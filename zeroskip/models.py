"""Reference topologies beyond the demo's plain CNN, and the flows that make their graphs.

:func:`residual_dws_cnn` is the second topology of the issue: a residual block and two
depthwise-separable blocks with stride 2 ending in a global average pool. It exercises every
joint the network compiler handles besides the demo's (the fork and join of a skip connection,
grouped convolutions, strides, the global pool). :func:`train_residual_dws` trains, prunes,
quantizes and exports it on the 8x8 digits, the way :func:`zeroskip.demo.run` does the demo net.

The four MLPerf Tiny reference networks (:data:`MLPERF_TINY`: :func:`ic_resnet8`,
:func:`kws_dscnn`, :func:`ad_autoencoder`, :func:`vww_mobilenet_v1`) are torch modules layer for
layer as the keras ones; :func:`mlperf_graph` makes each an int8 graph with random, pruned
weights and synthetic inputs (no data set is reachable here).
"""

from __future__ import annotations

import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import demo, ir, reference
from .errors import FrontendError, ZeroskipError


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


# --- MLPerf Tiny reference networks --------------------------------------------------------------
#
# Layer for layer as mlcommons/tiny benchmark/training/*/keras_model.py (vww_model.py for VWW).
# Keras layers keep their defaults in torch: every Conv2D, DepthwiseConv2D and Dense has a bias,
# BatchNormalization has eps 1e-3 (torch's default is 1e-5). Keras 'same' padding pads
# ``total = max((ceil(n / s) - 1) * s + k - n, 0)`` with ``total // 2`` before and the rest after:
# with stride 2 on an even size that is asymmetric (3x3: 0 before, 1 after), which torch's
# symmetric ``padding`` cannot express. There the net pads with an explicit ``nn.ZeroPad2d`` and
# the conv pads nothing, so the torch module computes exactly what the keras one does;
# zeroskip's frontend lowers that pad into the conv (see frontend/passes.py, FoldPad).

KERAS_BN_EPS = 1e-3


def keras_same_padding(size, kernel, stride):
    """Keras / TensorFlow 'same' padding of one dimension: ``(before, after)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _bn2d(channels):
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS)


def _keras_same_conv(in_channels, out_channels, kernel, stride, in_size, groups):
    """``(pad, conv, out_size)`` of a keras conv with 'same' padding on an ``in_size`` input:
    ``pad`` is ``nn.Identity`` when the padding is symmetric (the conv pads itself) and an
    ``nn.ZeroPad2d`` holding all of it otherwise (the conv pads nothing)."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    (top, bottom), (left, right) = (keras_same_padding(n, k, stride)
                                    for n, k in zip(in_size, kernel))
    symmetric = top == bottom and left == right
    pad = nn.Identity() if symmetric else nn.ZeroPad2d((left, right, top, bottom))
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride,
                     padding=(top, left) if symmetric else 0, groups=groups)
    return pad, conv, tuple(-(-n // stride) for n in in_size)


class KerasSameConv(nn.Module):
    """A keras ``Conv2D`` / ``DepthwiseConv2D`` with ``padding='same'`` on a known input size:
    ``pad`` (``nn.Identity`` or ``nn.ZeroPad2d``), then ``conv`` (with a bias, as keras's)."""

    def __init__(self, in_channels, out_channels, kernel, stride, in_size, groups=1):
        super().__init__()
        self.pad, self.conv, self.out_size = _keras_same_conv(
            in_channels, out_channels, kernel, stride, in_size, groups)

    def forward(self, x):
        return self.conv(self.pad(x))


class _ConvBnRelu(nn.Module):
    """A keras conv with 'same' padding (``pad``, ``conv``), BatchNormalization, ReLU."""

    def __init__(self, in_channels, out_channels, kernel, stride, in_size, groups=1):
        super().__init__()
        self.pad, self.conv, self.out_size = _keras_same_conv(
            in_channels, out_channels, kernel, stride, in_size, groups)
        self.bn = _bn2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(self.pad(x))))


class ResNetStack(nn.Module):
    """One stack of the MLPerf Tiny ResNet-8: ``relu(shortcut(x) + bn(conv(relu(bn(conv(x))))))``.

    The shortcut is the identity at stride 1 and a 1x1 conv with the stack's stride otherwise
    (keras pads a 1x1 stride-2 conv on an even size by nothing).
    """

    def __init__(self, in_channels, out_channels, stride, in_size):
        super().__init__()
        self.a = _ConvBnRelu(in_channels, out_channels, 3, stride, in_size)
        self.conv_b = KerasSameConv(out_channels, out_channels, 3, 1, self.a.out_size)
        self.bn_b = _bn2d(out_channels)
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out_channels else \
            KerasSameConv(in_channels, out_channels, 1, stride, in_size)
        self.relu = nn.ReLU()
        self.out_size = self.a.out_size

    def forward(self, x):
        return self.relu(self.shortcut(x) + self.bn_b(self.conv_b(self.a(x))))


class ResNet8(nn.Module):
    """The network :func:`ic_resnet8` builds; see there."""

    def __init__(self, filters=16, in_size=(32, 32), classes=10):
        super().__init__()
        self.stem = _ConvBnRelu(3, filters, 3, 1, in_size)
        self.stack1 = ResNetStack(filters, filters, 1, self.stem.out_size)
        self.stack2 = ResNetStack(filters, 2 * filters, 2, self.stack1.out_size)
        self.stack3 = ResNetStack(2 * filters, 4 * filters, 2, self.stack2.out_size)
        # keras: AveragePooling2D(pool_size=min(h, w)) on the 8x8 map, i.e. global.
        self.pool = nn.AvgPool2d(min(self.stack3.out_size))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * filters, classes)

    def forward(self, x):
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def ic_resnet8(filters=16):
    """MLPerf Tiny image classification: ResNet-8 for CIFAR-10 (input 3x32x32, 10 classes).

    ``resnet_v1_eembc`` of benchmark/training/image_classification/keras_model.py: conv3x3-BN-
    ReLU stem, three residual stacks of ``filters``, ``2 * filters``, ``4 * filters`` channels
    (each conv3x3-BN-ReLU, conv3x3-BN, shortcut added, ReLU; stacks 2 and 3 have stride 2 and a
    1x1 conv shortcut), an 8x8 (global) average pool, flatten, dense 10 (the softmax is left out:
    it does not change the argmax). ``filters=16`` is the reference model of MLPerf Tiny v0.5 to
    v1.3 (78,666 parameters with the BatchNorm statistics); the upstream default became 26 in
    2026 (``resnet_v1_eembc(conv_filters=26)``).

    Returns
    -------
    ResNet8
        Layers ``stem.conv``, ``stack<i>.a.conv``, ``stack<i>.conv_b.conv``,
        ``stack<i>.shortcut.conv``, ``fc``; the stride-2 3x3 convs pad with a ZeroPad2d
        (``stack<i>.a.pad``: keras pads 0 above / left and 1 below / right there).
    """
    return ResNet8(filters)


class DSCNN(nn.Module):
    """The network :func:`kws_dscnn` builds; see there."""

    def __init__(self, filters=64, in_size=(49, 10), classes=12, blocks=4):
        super().__init__()
        self.stem = _ConvBnRelu(1, filters, (10, 4), 2, in_size)
        self.dropout = nn.Dropout(0.2)
        size, layers = self.stem.out_size, []
        for _ in range(blocks):
            layers.append(DepthwiseSeparable(filters, filters, 1, size))
        self.blocks = nn.Sequential(*layers)
        self.dropout_final = nn.Dropout(0.4)
        # keras: AveragePooling2D(pool_size=(int(49 / 2), int(10 / 2))) = (24, 5) on the 25x5
        # map: one window that leaves out the last row, not a global pool.
        self.pool = nn.AvgPool2d((in_size[0] // 2, in_size[1] // 2))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(filters, classes)

    def forward(self, x):
        x = self.dropout_final(self.blocks(self.dropout(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class DepthwiseSeparable(nn.Module):
    """Keras DepthwiseConv2D 3x3 'same' -BN-ReLU, then Conv2D 1x1 -BN-ReLU, both with biases."""

    def __init__(self, in_channels, out_channels, stride, in_size):
        super().__init__()
        self.dw = _ConvBnRelu(in_channels, in_channels, 3, stride, in_size, groups=in_channels)
        self.pw = _ConvBnRelu(in_channels, out_channels, 1, 1, self.dw.out_size)
        self.out_size = self.pw.out_size

    def forward(self, x):
        return self.pw(self.dw(x))


def kws_dscnn():
    """MLPerf Tiny keyword spotting: DS-CNN (input 1x49x10 MFCC frames, 12 classes).

    ``get_model`` with ``model_architecture='ds_cnn'`` of
    benchmark/training/keyword_spotting/keras_model.py: conv 64 of (10, 4) with stride 2 and
    'same' padding (49x10 -> 25x5; keras pads 4 rows above and 5 below, 1 column each side:
    here a ZeroPad2d and an unpadded conv), BN, ReLU, dropout; four blocks of depthwise 3x3-BN-
    ReLU and pointwise 64-BN-ReLU; dropout; average pool (24, 5), which covers the 25x5 map but
    its last row (keras sizes it ``int(49 / 2), int(10 / 2)``); flatten; dense 12.

    Returns
    -------
    DSCNN
        Layers ``stem.conv``, ``blocks.<i>.dw.conv`` (depthwise), ``blocks.<i>.pw.conv``,
        ``fc``.
    """
    return DSCNN()


class Autoencoder(nn.Module):
    """The network :func:`ad_autoencoder` builds; see there."""

    def __init__(self, features=640, hidden=128, bottleneck=8):
        super().__init__()
        widths = [hidden] * 4 + [bottleneck] + [hidden] * 4
        layers, previous = [], features
        for width in widths:
            layers += [nn.Linear(previous, width), nn.BatchNorm1d(width, eps=KERAS_BN_EPS),
                       nn.ReLU()]
            previous = width
        layers.append(nn.Linear(previous, features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def ad_autoencoder():
    """MLPerf Tiny anomaly detection: the fully connected autoencoder (640 features in and out).

    ``get_model(640)`` of benchmark/training/anomaly_detection/keras_model.py: four dense 128
    -BN-ReLU, dense 8-BN-ReLU, four dense 128-BN-ReLU, dense 640 (linear output).

    Returns
    -------
    Autoencoder
        ``layers`` is an ``nn.Sequential``: dense layers at ``layers.0``, ``layers.3``, ...,
        ``layers.27``.
    """
    return Autoencoder()


class MobileNetV1(nn.Module):
    """The network :func:`vww_mobilenet_v1` builds; see there."""

    # (output channels as a multiple of the first conv's, stride) of the 13 separable blocks.
    BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2), (16, 1), (16, 1), (16, 1),
              (16, 1), (16, 1), (32, 2), (32, 1))

    def __init__(self, alpha=0.25, in_size=(96, 96), classes=2):
        super().__init__()
        first = int(32 * alpha)
        if first < 1:
            raise ValueError(f"alpha {alpha} leaves no channel in the first conv (32 * alpha < 1)")
        self.stem = _ConvBnRelu(3, first, 3, 2, in_size)
        size, channels, layers = self.stem.out_size, first, []
        for multiple, stride in self.BLOCKS:
            block = DepthwiseSeparable(channels, multiple * first, stride, size)
            layers.append(block)
            size, channels = block.out_size, multiple * first
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(size)  # keras: AveragePooling2D(pool_size=x.shape[1:3])
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


def vww_mobilenet_v1(alpha=0.25):
    """MLPerf Tiny visual wake words: MobileNetV1 (input 3x96x96, 2 classes).

    ``mobilenet_v1`` of benchmark/training/visual_wake_words/vww_model.py, which fixes alpha at
    0.25 (8 filters in the first conv); other ``alpha`` scale every width alike
    (``int(32 * alpha)`` times 1, 2, 4, ..., 32). Conv 3x3 stride 2 -BN-ReLU, thirteen
    depthwise-separable blocks (depthwise 3x3-BN-ReLU, pointwise 1x1-BN-ReLU; stride 2 in
    blocks 2, 4, 6 and 12: 48 -> 24 -> 12 -> 6 -> 3), a 3x3 (global) average pool, flatten,
    dense 2. Every stride-2 conv has keras's asymmetric padding (0 before, 1 after), kept exactly
    with a ZeroPad2d.

    Returns
    -------
    MobileNetV1
        Layers ``stem.conv``, ``blocks.<i>.dw.conv`` (depthwise), ``blocks.<i>.pw.conv``,
        ``fc``.
    """
    return MobileNetV1(alpha)


@dataclass(frozen=True)
class TinyNet:
    """An MLPerf Tiny network: its constructor, example input shape (a batch of one: NCHW, or
    ``(1, features)`` for the autoencoder) and the kind of input it reads (see
    :func:`mlperf_inputs`)."""

    build: object
    input_shape: tuple[int, ...]
    input_kind: str


MLPERF_TINY = {
    "ic_resnet8": TinyNet(ic_resnet8, (1, 3, 32, 32), "image"),
    "kws_dscnn": TinyNet(kws_dscnn, (1, 1, 49, 10), "mfcc"),
    "ad_autoencoder": TinyNet(ad_autoencoder, (1, 640), "log_mel"),
    "vww_mobilenet_v1": TinyNet(vww_mobilenet_v1, (1, 3, 96, 96), "image"),
}


def _tiny_net(name):
    if name not in MLPERF_TINY:
        raise ZeroskipError(f"unknown MLPerf Tiny network {name!r}; known: "
                            f"{', '.join(MLPERF_TINY)}")
    return MLPERF_TINY[name]


def _smooth(noise, size):
    """Bilinear upsampling of an (N, C, h, w) noise field to ``size``: a smooth random field."""
    return nn.functional.interpolate(noise, size=size, mode="bilinear", align_corners=False)


def _images(count, size, generator):
    """Natural-looking images in [0, 1]: smooth brightness and colour fields, fine texture."""
    brightness = _smooth(torch.randn(count, 1, 4, 4, generator=generator), size)
    colour = _smooth(torch.randn(count, 3, 8, 8, generator=generator), size)
    texture = torch.randn(count, 3, *size, generator=generator)
    level = 0.2 + 0.6 * torch.rand(count, 1, 1, 1, generator=generator)
    return torch.clamp(level + 0.2 * brightness + 0.1 * colour + 0.04 * texture, 0.0, 1.0)


def _mel_filters(bins, mels, rate, low_hz, high_hz):
    """Triangular mel filters over ``bins`` linear-frequency bins (TensorFlow's mel scale)."""
    def mel(hz):
        return 1127.0 * np.log1p(np.asarray(hz) / 700.0)
    frequencies = mel(np.linspace(0, rate / 2, bins))
    edges = np.linspace(mel(low_hz), mel(high_hz), mels + 2)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (frequencies - lower) / (center - lower)
    falling = (upper - frequencies) / (upper - center)
    return torch.tensor(np.maximum(0.0, np.minimum(rising, falling)).T, dtype=torch.float32)


def _mfcc(count, generator, frames=49, coefficients=10):
    """MFCCs of synthetic one-second clips, computed as the KWS benchmark computes its features.

    As benchmark/training/keyword_spotting/get_dataset.py mixes its clips: a foreground scaled
    to peak 1 (here a voiced "word": harmonics of a 90-300 Hz pitch under three formant-like
    bumps, on for 0.25-0.7 s; silent in 15 % of the clips, as the data set's silence class),
    plus, in 80 % of the clips, background noise at a volume up to 0.1, clipped to [-1, 1].
    Features as there: 16 kHz, |STFT| with a 30 ms Hann window every 20 ms (49 frames), 40 mel
    bins over 20-4000 Hz, log(+1e-6), orthonormal DCT-II, the first 10 coefficients.
    """
    rate, window, step, mels = 16000, 480, 320, 40
    t = torch.arange(rate) / rate
    clips = torch.zeros(count, rate)
    for clip in clips:
        if torch.rand(1, generator=generator) < 0.15:
            continue
        pitch = 90 + 210 * torch.rand(1, generator=generator)
        formants = 300 + 2500 * torch.rand(3, generator=generator)
        frequencies = pitch * torch.arange(1, int(3800 / pitch) + 1)
        gain = sum(torch.exp(-((frequencies - f) / 250.0) ** 2) for f in formants)
        phase = 2 * np.pi * torch.rand(len(frequencies), generator=generator)
        voiced = (gain[:, None] * torch.sin(2 * np.pi * frequencies[:, None] * t
                                            + phase[:, None])).sum(0)
        start = 0.05 + 0.3 * float(torch.rand(1, generator=generator))
        length = 0.25 + 0.45 * float(torch.rand(1, generator=generator))
        voiced *= torch.clamp(torch.minimum(t - start, start + length - t) / 0.05, 0, 1)
        clip += voiced / voiced.abs().max()
    volume = 0.1 * torch.rand(count, 1, generator=generator) * \
        (torch.rand(count, 1, generator=generator) < 0.8)
    clips = torch.clamp(clips + volume * torch.randn(count, rate, generator=generator), -1, 1)
    spectrum = torch.stft(clips, n_fft=512, hop_length=step, win_length=window,
                          window=torch.hann_window(window), center=False,
                          return_complex=True).abs()[:, :, :frames]  # (N, bins, frames)
    log_mel = torch.log(torch.einsum("nbf,bm->nfm", spectrum,
                                     _mel_filters(spectrum.shape[1], mels, rate, 20, 4000))
                        + 1e-6)
    k = torch.arange(mels, dtype=torch.float32)
    dct = torch.cos(np.pi / mels * (k[:, None] + 0.5) * k[None, :coefficients])
    dct *= torch.where(k[:coefficients] == 0, np.sqrt(1 / mels), np.sqrt(2 / mels))
    return (log_mel @ dct).unsqueeze(1)  # (N, 1, frames, coefficients)


def _log_mel_frames(count, generator, mels=128, frames=5):
    """Standardised log-mel frames like the AD benchmark's (5 frames of 128 mel bins, 640
    features): a smooth spectral envelope shared by the frames, drifting slowly, plus noise;
    each feature about zero mean and unit variance over the batch."""
    envelope = nn.functional.interpolate(torch.randn(count, 1, 16, generator=generator),
                                         size=mels, mode="linear", align_corners=False)
    drift = nn.functional.interpolate(torch.randn(count, frames, 8, generator=generator),
                                      size=mels, mode="linear", align_corners=False)
    noise = torch.randn(count, frames, mels, generator=generator)
    features = (envelope + 0.3 * drift + 0.3 * noise).reshape(count, frames * mels)
    return (features - features.mean(0)) / features.std(0)


def mlperf_inputs(name, count, seed=0):
    """``count`` random float inputs shaped and distributed like the real inputs of ``name``.

    No data set is reachable here, so the inputs are synthetic: images in [0, 1] with smooth
    brightness and colour (IC, VWW), MFCCs of synthetic voiced clips over noise computed as the
    KWS benchmark computes them (KWS), standardised log-mel frames (AD). Seeded.
    """
    kind, shape = _tiny_net(name).input_kind, _tiny_net(name).input_shape
    generator = torch.Generator().manual_seed(seed)
    if kind == "image":
        return _images(count, shape[2:], generator)
    if kind == "mfcc":
        return _mfcc(count, generator, *shape[2:])
    return _log_mel_frames(count, generator)


@torch.no_grad()
def float_dense_macs(model, example_input):
    """Multiply-accumulates per inference of ``model``'s Conv2d and Linear layers, as published
    for the keras models: every weight times every output position, padding included."""
    macs = []

    def count(module, inputs, output):
        per_output = module.weight[0].numel() if isinstance(module, nn.Conv2d) else \
            module.in_features
        macs.append(output[0].numel() * per_output)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(example_input[:1])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return sum(macs)


@dataclass(frozen=True)
class MlperfGraph:
    """What :func:`mlperf_graph` makes.

    Attributes
    ----------
    graph : zeroskip.ir.Graph
        int8, post-training quantized on ``inputs``.
    model : torch.nn.Module
        The pruned float model (eval mode, pruning masks in place) the graph was exported from.
    inputs : torch.Tensor
        The float calibration inputs.
    inputs_int : numpy.ndarray
        ``graph.quantize_input(inputs)``.
    export_seconds : float
        Wall time of ``zeroskip.export``.
    """

    graph: ir.Graph
    model: nn.Module
    inputs: torch.Tensor
    inputs_int: np.ndarray
    export_seconds: float


def init_keras_like(model, generator):
    """He-normal conv / dense kernels and zero biases (the keras reference's initialisers), and
    BatchNorm scales in [0.5, 1.5] and shifts from N(0, 0.25^2) (as a trained net's vary)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * np.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.25 * torch.randn(module.bias.shape, generator=generator))
    return model


@torch.no_grad()
def set_batchnorm_statistics(model, inputs, batch_size=32):
    """Set every BatchNorm's running mean and variance to the statistics of ``inputs``.

    Forward passes with the BatchNorms alone in train mode (dropout stays off, so the result is
    deterministic), averaging cumulatively (``momentum=None``), so that each BatchNorm folds to
    the realistic scale and shift of a net whose statistics match its data.
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        for batch in inputs.split(batch_size):
            model(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return model


def prune_layerwise(model, sparsity, layers):
    """Element-wise magnitude pruning of each of ``layers`` to ``sparsity`` on its own, every
    output filter keeping at least its largest weight.

    A layer of n weights keeps its ``n - round(sparsity * n)`` largest, plus the largest weight
    of each filter left without any: a filter without weights outputs a constant, which the
    BatchNorm after it (variance 0) scales by ``1 / sqrt(eps)``, and so a net of such filters
    amplifies quantization noise a hundredfold. The masks are standard
    :mod:`torch.nn.utils.prune` masks, as :func:`zeroskip.prune` installs.

    Raises
    ------
    FrontendError
        for a ``sparsity`` outside [0, 1).
    """
    from torch.nn.utils import prune as torch_prune

    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or \
            not 0 <= sparsity < 1:
        raise FrontendError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    modules = dict(model.named_modules())
    for name in layers:
        module = modules[name]
        magnitude = module.weight.detach().abs().flatten(1)
        mask = torch.zeros_like(magnitude)
        kept = magnitude.numel() - round(sparsity * magnitude.numel())
        mask.view(-1)[torch.topk(magnitude.view(-1), kept).indices] = 1
        rows = torch.arange(len(mask))
        mask[rows, magnitude.argmax(1)] = torch.maximum(mask[rows, magnitude.argmax(1)],
                                                        torch.ones(len(mask)))
        torch_prune.custom_from_mask(module, "weight", mask.view_as(module.weight))
    return model


def mlperf_graph(name, *, sparsity=0.9, seed=0, calibration_images=64):
    """An MLPerf Tiny benchmark network as an int8 graph: random, pruned, quantized.

    No data set is reachable here, so nothing is trained: the weights are random (seeded,
    :func:`init_keras_like`). Every conv and linear layer but the depthwise ones is pruned
    element-wise by magnitude to ``sparsity`` on its own, each filter keeping at least its
    largest weight (:func:`prune_layerwise`; narrow layers end a little less sparse). Not
    globally: initial weights scale with ``1 / sqrt(fan_in)``, so global magnitude pruning takes
    the wide-fan-in layers almost whole (at 90 % the autoencoder's input layer keeps 86 of its
    81,920 He-normal weights, and none at torch's default initialisation). Depthwise 3x3
    filters are kept dense: pruned to 90 %, most of their 9-weight filters would be empty, and
    they are 10 % of the DS-CNN's weights, 5 % of the MobileNet's. Then the BatchNorm
    statistics are set to the pruned net's on ``calibration_images`` synthetic inputs
    (:func:`mlperf_inputs`, :func:`set_batchnorm_statistics`), so that about half of each
    ReLU's outputs are zero, as in a trained net, and the net is quantized post-training to
    int8 with ``zeroskip.export(model, example, calibration=inputs)``.

    Parameters
    ----------
    name : str
        A key of :data:`MLPERF_TINY`.
    sparsity : float
        Fraction of the pruned layers' weights set to zero, in [0, 1).
    seed : int
        Seeds the weights and the calibration inputs.
    calibration_images : int
        How many synthetic inputs set the BatchNorm statistics and the activation scales.

    Returns
    -------
    MlperfGraph

    Raises
    ------
    ZeroskipError
        for an unknown ``name``; FrontendError for a ``sparsity`` outside [0, 1).
    """
    from .frontend.export import export

    net = _tiny_net(name)
    generator = torch.Generator().manual_seed(seed)
    model = init_keras_like(net.build(), generator)
    inputs = mlperf_inputs(name, calibration_images, seed)
    prune_layerwise(model, sparsity, prunable_layers(model))
    set_batchnorm_statistics(model, inputs)  # of the pruned net, as fine-tuning would leave them
    started = time.perf_counter()
    graph = export(model, inputs[:1], calibration=inputs, name=name)
    export_seconds = time.perf_counter() - started
    return MlperfGraph(graph=graph, model=model, inputs=inputs,
                       inputs_int=graph.quantize_input(inputs.numpy()),
                       export_seconds=export_seconds)


def digits_shaped_cnn():
    """conv 1->16 3x3, max pool, conv 16->32 3x3, max pool, linear 128->10 on 8x8x1: the shape
    NNgen's published example and outside reports measure (not the demo's net, which has three
    convs), for comparisons on nets the project did not tune for."""
    def block(in_channels, out_channels):
        return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU()]

    return nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 2 * 2, 10))


def digits_shaped_graph(*, sparsity=0.9, seed=0, calibration_images=256):
    """:func:`digits_shaped_cnn` as an int8 graph: random (keras-like) weights, pruned
    layer-wise to ``sparsity`` (:func:`prune_layerwise`), BatchNorm statistics and activation
    scales from digits training images, post-training quantized. Untrained: for hardware
    measurements, not accuracy. Returns ``(graph, calibration inputs, test inputs)``, the inputs
    as integers of the graph's input encoding (128 training and 8 test images)."""
    from .frontend.export import export

    x_train, _, x_test, _ = demo.digits_data()
    model = init_keras_like(digits_shaped_cnn(), torch.Generator().manual_seed(seed))
    prune_layerwise(model, sparsity, prunable_layers(model))
    set_batchnorm_statistics(model, x_train[:calibration_images])
    graph = export(model, x_train[:1], calibration=x_train[:calibration_images],
                   name="digits_shaped")
    return (graph, graph.quantize_input(x_train[:128].numpy()),
            graph.quantize_input(x_test[:8].numpy()))
