"""A binary digits network: int8 pixels, binary weights and activations, integer logits.

Three binary conv blocks (the first reads the 8-bit pixels) and a binary-weight classifier,
trained from a random start with straight-through estimators, then calibrated and exported;
the golden integer model measures the accuracy. Seeded and deterministic. The default channels
(16/16/32) keep the weights at 8,336 bits, about 4x less than the 90 %-pruned int8 demo net
stores, for about 96 % accuracy. :func:`run_demo` takes
it through the RTL as :func:`zeroskip.demo.run` does the int8 net (``zeroskip demo --binary``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import reference
from .progress import step as show_step
from .demo import (CALIBRATION_IMAGES, DemoResult, accuracy, deterministic_torch, digits_data,
                   run_hardware)


@dataclass(frozen=True)
class BinaryDemoSettings:
    channels: tuple[int, int, int] = (16, 16, 32)
    epochs: int = 30
    lr: float = 0.02
    batch_size: int = 32
    seed: int = 0
    multipliers: int = 16
    hardware: bool = True


@dataclass(frozen=True)
class BinaryDemoResult:
    """Golden-model accuracy, agreement of the net's integer forward with the golden model on
    the test images, and the training time in seconds."""

    accuracy: float
    agreeing_images: int
    test_images: int
    train_seconds: float


def binary_digits_cnn(channels=BinaryDemoSettings.channels):
    """With ``channels = (a, b, c)``: conv(1 -> a)-BN-ReLU, conv(a -> b)-BN-ReLU, maxpool,
    conv(b -> c)-BN-ReLU, maxpool, flatten, linear(4c -> 10): binarize turns each ReLU into a
    sign. The weights are ``9a + 9ab + 9bc + 40c``, one bit each once binary."""
    from torch import nn

    def block(in_channels, out_channels):
        return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU()]

    first, second, third = channels
    return nn.Sequential(*block(1, first), *block(first, second), nn.MaxPool2d(2),
                         *block(second, third), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(third * 4, 10))


def train_binary(net, x, y, settings):
    """Adam on cross-entropy with a cosine learning rate, shuffled by a seeded generator."""
    import torch
    import torch.nn.functional as F

    steps_per_epoch = -(-len(x) // settings.batch_size)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, settings.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)
    net.train()
    with show_step("binary training", total=settings.epochs, unit="epochs") as shown:
        for _ in range(settings.epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                optimizer.zero_grad()
                F.cross_entropy(net(x[batch]), y[batch]).backward()
                optimizer.step()
                schedule.step()
            shown.advance()
    net.eval()
    return net


def run(settings=BinaryDemoSettings()):
    """Train, calibrate and export the binary digits net; ``(result, graph, net)``.

    Pinned as the int8 demo is (:func:`zeroskip.demo.deterministic_torch`: one thread,
    deterministic algorithms, the seed), so the net does not depend on the thread count.
    """
    from .frontend.binary import binarize

    x_train, y_train, x_test, y_test = digits_data()
    with deterministic_torch(settings.seed):
        net = binarize(binary_digits_cnn(settings.channels), x_train[:8], x_train)
        start = time.perf_counter()
        train_binary(net, x_train, y_train, settings)
        train_seconds = time.perf_counter() - start
        net.calibrate(x_train)
        graph = net.to_graph("binary-digits")
        forward = net.forward_int(x_test).numpy()
    golden = reference.run(graph, graph.quantize_input(x_test.numpy()))
    agreeing = int(np.all(forward == golden, axis=1).sum())
    result = BinaryDemoResult(accuracy=accuracy(golden.argmax(axis=1), y_test.numpy()),
                              agreeing_images=agreeing, test_images=len(x_test),
                              train_seconds=train_seconds)
    return result, graph, net


def run_demo(settings=BinaryDemoSettings(), out_dir=None, *, build_root=None, progress=None):
    """:func:`run`, then, with ``settings.hardware``, :func:`zeroskip.demo.run_hardware`: the
    same compile (zero-skip and dense, ``lanes="auto"``) and co-simulation as the int8 demo.

    Returns the :class:`zeroskip.demo.DemoResult` (``network="binary"``) and the graph; with
    ``out_dir`` the graph is saved there as ``binary-digits.zsg``, the builds as ``build`` and
    ``build-dense``.
    """
    from .analysis import stats

    started = time.perf_counter()
    trained, graph, _ = run(settings)
    _, _, x_test, y_test = digits_data()
    x_int = graph.quantize_input(x_test.numpy())
    summary = stats(graph, x_int)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        graph.save(Path(out_dir) / "binary-digits.zsg")
    hardware = None
    if settings.hardware:
        x_train = digits_data()[0]
        x_calibration = graph.quantize_input(x_train[:CALIBRATION_IMAGES].numpy())
        hardware = run_hardware(graph, x_calibration, x_int, y_test.numpy(), settings,
                                out_dir=out_dir, build_root=build_root, progress=progress)
    total = summary.total
    result = DemoResult(
        settings=settings, hardware=hardware, network="binary", float_accuracy=None,
        golden_accuracy=trained.accuracy, qat_matches_golden=trained.agreeing_images,
        test_images=trained.test_images, weights=total.weights,
        nonzero_weights=total.nonzero_weights,
        sparsity=1 - total.nonzero_weights / total.weights,
        weight_storage_bits=total.weight_storage_bits, fp32_storage_bits=total.fp32_storage_bits,
        storage_reduction=1 - total.weight_storage_bits / total.fp32_storage_bits,
        dense_macs=total.dense_macs, effective_macs=total.effective_macs,
        seconds=time.perf_counter() - started)
    return result, graph
