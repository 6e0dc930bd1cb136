"""The built-in demo: a small CNN on scikit-learn's 8x8 digits, pruned, int8-trained, exported.

Everything is local (scikit-learn ships the data set) and pinned (:func:`deterministic_torch`:
one thread, deterministic algorithms, seeds): the same run gives the same numbers whatever the
machine's thread count. The flow is float training -> global magnitude pruning (element-wise)
with a float fine-tune -> post-training calibration -> int8 quantization-aware fine-tune ->
export to the IR, then the golden integer model measures accuracy and work.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import reference
from .progress import step as show_step

TEST_IMAGES = 360
SPLIT_SEED = 0


@contextlib.contextmanager
def deterministic_torch(seed):
    """Within: PyTorch on one thread, with deterministic algorithms only, seeded with ``seed``;
    the thread count and the algorithm setting are put back after.

    A float sum's order follows the thread count (each thread sums its share), so a net
    trained on 2 threads differs from one trained on 1 in the last bits, and pruning and
    quantization turn those bits into different weights: the demo's tables then moved from
    machine to machine. This small net also trains faster on one thread than on two busy ones.
    """
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def digits_data():
    """``(x_train, y_train, x_test, y_test)`` as torch tensors; images (N, 1, 8, 8) in [0, 1].

    The split is stratified and fixed: 1437 training and 360 test images.
    """
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=TEST_IMAGES, random_state=SPLIT_SEED,
        stratify=digits.target)
    return (torch.tensor(x_train)[:, None], torch.tensor(y_train),
            torch.tensor(x_test)[:, None], torch.tensor(y_test))


def digits_cnn(width=16):
    """Three 3x3 conv-BN-ReLU blocks (width, 2*width, 4*width channels), two max pools, a
    linear classifier: 25.7k weights at the default width."""
    from torch import nn

    def block(in_channels, out_channels):
        return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU()]

    return nn.Sequential(*block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),
                         *block(2 * width, 4 * width), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width * 4, 10))


def train(model, x, y, epochs, lr, seed, batch_size=64, label="training"):
    """Adam on cross-entropy, shuffled with its own seeded generator; its progress (epochs)
    shown as ``label`` on a terminal (:mod:`zeroskip.progress`)."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with show_step(label, total=epochs, unit="epochs") as shown:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                batch = order[start:start + batch_size]
                optimizer.zero_grad()
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
            shown.advance()
    model.eval()
    return model


def accuracy(predictions, labels):
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


#: Training images the folding measures the work on (``lanes="auto"``).
CALIBRATION_IMAGES = 128

#: Test images the dense design co-simulates: its cycles per inference do not depend on the
#: data, and all 360 would take minutes of simulation.
DENSE_IMAGES = 5


@dataclass(frozen=True)
class DemoSettings:
    sparsity: float = 0.9
    width: int = 16
    float_epochs: int = 30
    prune_epochs: int = 15
    qat_epochs: int = 10
    seed: int = 0
    multipliers: int = 16
    hardware: bool = True


@dataclass(frozen=True)
class HardwareResult:
    """The demo net through the RTL: zero-skip on every test image, dense on a few."""

    multipliers: int
    lanes: dict
    dense_lanes: dict
    rtl_accuracy: float
    bit_exact: int
    interval_cycles: float
    latency_cycles: float
    ideal_interval_cycles: float
    slowest_layer: str
    dense_interval_cycles: float
    dense_latency_cycles: float
    dense_images: int
    build_seconds: float
    simulation_seconds: float
    dense_build_seconds: float
    dense_simulation_seconds: float

    @property
    def speedup(self):
        return self.dense_interval_cycles / self.interval_cycles


@dataclass(frozen=True)
class DemoResult:
    """What a demo measured. ``network`` is ``"int8"`` (this module) or ``"binary"``
    (:mod:`zeroskip.binary_demo`, trained binary from the start: no ``float_accuracy``);
    ``golden_accuracy`` is the exported net's golden-model accuracy for either network."""

    settings: DemoSettings
    float_accuracy: float | None
    golden_accuracy: float
    qat_matches_golden: int
    test_images: int
    weights: int
    nonzero_weights: int
    sparsity: float
    weight_storage_bits: int
    fp32_storage_bits: int
    storage_reduction: float
    dense_macs: int
    effective_macs: float
    seconds: float
    hardware: HardwareResult | None = None
    network: str = "int8"

    def to_dict(self):
        data = asdict(self)
        if self.hardware is not None:
            data["hardware"]["speedup"] = self.hardware.speedup
        return data

    def format_table(self):
        rows = [
            ("data", f"digits 8x8, {self.test_images} test images"),
            ("float accuracy", "-" if self.float_accuracy is None
             else f"{100 * self.float_accuracy:.2f} %"),
            (f"{self.network} accuracy (golden model)", f"{100 * self.golden_accuracy:.2f} %"),
            ("QAT forward == golden", f"{self.qat_matches_golden}/{self.test_images} images "
                                      "bit-identical"),
            ("weight sparsity", f"{100 * self.sparsity:.1f} % ({self.nonzero_weights} of "
                                f"{self.weights} nonzero)"),
            ("weight storage", f"{self.weight_storage_bits / 8192:.2f} KiB vs "
                               f"{self.fp32_storage_bits / 8192:.2f} KiB fp32 dense "
                               f"({100 * self.storage_reduction:.1f} % smaller)"),
            ("dense MACs / image", f"{self.dense_macs}"),
            ("effective MACs / image", f"{self.effective_macs:.0f} (both operands nonzero, "
                                       f"{self.dense_macs / self.effective_macs:.1f}x fewer)"),
        ]
        hw = self.hardware
        if hw is not None:
            rows[3:3] = [("RTL accuracy (Verilator)", f"{100 * hw.rtl_accuracy:.2f} % "
                                                      f"({hw.bit_exact}/{self.test_images} "
                                                      "images bit-identical to golden)")]
            rows += [
                ("multipliers", f"{hw.multipliers}; lanes zero-skip "
                                f"{_lanes_text(hw.lanes)}, dense {_lanes_text(hw.dense_lanes)}"
                 + ("" if self.network == "int8" else
                    " (a binary-input layer's lane is a 32-bit XNOR-popcount unit; those "
                    "layers are built the same in both designs, only the first layer skips "
                    "zero pixels or not)")),
                ("initiation interval", f"{hw.interval_cycles:.0f} cycles zero-skip vs "
                                        f"{hw.dense_interval_cycles:.0f} dense "
                                        f"({hw.speedup:.1f}x fewer)"),
                ("  vs slowest layer ideal", f"{hw.interval_cycles / hw.ideal_interval_cycles:.2f}"
                                             f"x of {hw.ideal_interval_cycles:.0f} (layer "
                                             f"{hw.slowest_layer!r}: effective MACs / lanes)"),
                ("latency", f"{hw.latency_cycles:.0f} cycles zero-skip vs "
                            f"{hw.dense_latency_cycles:.0f} dense"),
                ("RTL time", f"zero-skip: build {hw.build_seconds:.0f} s + "
                             f"{self.test_images} images {hw.simulation_seconds:.0f} s; dense: "
                             f"build {hw.dense_build_seconds:.0f} s + {hw.dense_images} images "
                             f"{hw.dense_simulation_seconds:.0f} s"),
            ]
        rows.append(("time", f"{self.seconds:.1f} s"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _lanes_text(lanes):
    return "/".join(str(count) for count in lanes.values())


#: The demo's build directories under ``--out``, zero-skip and dense.
BUILD_NAMES = {True: "build", False: "build-dense"}

#: Test images in each build's testbench (``tb/inputs.npy``).
TESTBENCH_IMAGES = 8


def _record_simulations(out_dir, designs, x_test, y_test, results):
    """Each build's co-simulation as ``zeroskip sim`` records it (``sim.json``), for
    ``zeroskip report``."""
    from .build import SIM_FILE, open_build
    from .simulation import SimulationSummary

    for zero_skip, result in results.items():
        count = len(result.outputs)
        summary = SimulationSummary.of(designs[zero_skip], x_test[:count], result,
                                       y_test[:count])
        open_build(Path(out_dir) / BUILD_NAMES[zero_skip]).write_result(SIM_FILE,
                                                                         summary.to_dict())


def run_hardware(graph, x_calibration, x_test, y_test, settings, *, out_dir=None,
                 build_root=None, progress=None):
    """Compile the net twice at the same multiplier budget, zero-skip and dense, each folded on
    its own work (``lanes="auto"``); co-simulate the zero-skip one on every test image and the
    dense one on :data:`DENSE_IMAGES`. Every output is checked against the golden model."""
    from .design import compile as compile_graph
    from .compiler.folding import estimate_graph

    designs = {}
    for zero_skip in (True, False):
        with show_step(f"compile ({'zero-skip' if zero_skip else 'dense'})"):
            designs[zero_skip] = compile_graph(graph, "auto", zero_skip=zero_skip,
                                               multipliers=settings.multipliers,
                                               calibration=x_calibration)
            designs[zero_skip].verilog()  # the conversion, timed with the compile
        if out_dir is not None:
            # The testbench's golden vectors: the first test images.
            designs[zero_skip].write(Path(out_dir) / BUILD_NAMES[zero_skip],
                                     testbench_inputs=x_test[:TESTBENCH_IMAGES])
    sparse = designs[True].simulate(x_test, build_root=build_root, progress=progress)
    dense = designs[False].simulate(x_test[:DENSE_IMAGES], build_root=build_root)
    if out_dir is not None:
        _record_simulations(out_dir, designs, x_test, y_test, {True: sparse, False: dense})
    golden = reference.run(graph, x_test)
    # The ideal is measured on the test images themselves, not on the calibration images.
    slowest = max(estimate_graph(graph, x_test, designs[True].lanes),
                  key=lambda estimate: estimate.ideal_cycles)
    return HardwareResult(
        multipliers=settings.multipliers, lanes=designs[True].lanes,
        dense_lanes=designs[False].lanes,
        rtl_accuracy=accuracy(sparse.classes, y_test),
        bit_exact=int(np.sum(np.all(sparse.outputs == golden, axis=1))),
        interval_cycles=float(np.median(sparse.interval_cycles)),
        latency_cycles=float(np.mean(sparse.latency_cycles)),
        ideal_interval_cycles=float(slowest.ideal_cycles), slowest_layer=slowest.name,
        dense_interval_cycles=float(np.median(dense.interval_cycles)),
        dense_latency_cycles=float(np.mean(dense.latency_cycles)),
        dense_images=DENSE_IMAGES,
        build_seconds=sparse.build_seconds, simulation_seconds=sparse.seconds,
        dense_build_seconds=dense.build_seconds, dense_simulation_seconds=dense.seconds)


def run(settings=DemoSettings(), out_dir=None, *, build_root=None, progress=None):
    """Train, prune, quantize and export the digits CNN; measure it with the golden model;
    with ``settings.hardware``, compile it and co-simulate it (:func:`run_hardware`).

    Returns the :class:`DemoResult` and the exported :class:`zeroskip.ir.Graph`; with
    ``out_dir`` the graph is also saved there as ``digits.zsg``, and the build directories as
    ``build`` and ``build-dense``.
    """
    import torch

    from .frontend.export import export
    from .frontend.prune import prune, remove_reparametrization
    from .frontend.qat import prepare
    from .analysis import stats

    started = time.perf_counter()
    x_train, y_train, x_test, y_test = digits_data()
    with deterministic_torch(settings.seed):
        model = train(digits_cnn(settings.width), x_train, y_train, settings.float_epochs, 3e-3,
                      settings.seed + 1, label="float training")
        with torch.no_grad():
            float_accuracy = accuracy(model(x_test).argmax(1), y_test)
        prune(model, settings.sparsity, granularity="element", criterion="magnitude",
              scope="global")
        train(model, x_train, y_train, settings.prune_epochs, 1e-3, settings.seed + 2,
              label="pruned fine-tune")
        remove_reparametrization(model)
        net = prepare(model, x_train[:8], calibration=x_train)
        train(net, x_train, y_train, settings.qat_epochs, 3e-4, settings.seed + 3,
              label="int8 QAT")
        graph = export(net, x_train[:8], name="digits")
        qat_forward = net.forward_int(x_test).numpy()

    x_int = graph.quantize_input(x_test.numpy())
    golden = reference.run(graph, x_int)
    qat_matches = int(np.sum(np.all(qat_forward == golden, axis=1)))
    summary = stats(graph, x_int)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        graph.save(Path(out_dir) / "digits.zsg")
    hardware = None
    if settings.hardware:
        x_calibration = graph.quantize_input(x_train[:CALIBRATION_IMAGES].numpy())
        hardware = run_hardware(graph, x_calibration, x_int, y_test.numpy(), settings,
                                out_dir=out_dir, build_root=build_root, progress=progress)
    result = DemoResult(
        settings=settings, hardware=hardware, float_accuracy=float_accuracy,
        golden_accuracy=accuracy(golden.argmax(1), y_test.numpy()),
        qat_matches_golden=qat_matches, test_images=len(x_test),
        weights=summary.total.weights, nonzero_weights=summary.total.nonzero_weights,
        sparsity=1 - summary.total.nonzero_weights / summary.total.weights,
        weight_storage_bits=summary.total.weight_storage_bits,
        fp32_storage_bits=summary.total.fp32_storage_bits,
        storage_reduction=1 - summary.total.weight_storage_bits /
        summary.total.fp32_storage_bits,
        dense_macs=summary.total.dense_macs, effective_macs=summary.total.effective_macs,
        seconds=time.perf_counter() - started)
    return result, graph


def write_json(result, path):
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
