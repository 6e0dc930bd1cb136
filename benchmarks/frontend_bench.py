"""Frontend benchmark: export and golden-model time, accuracy and storage; writes JSON.

    python benchmarks/frontend_bench.py [--out benchmarks/results/frontend.json] [--quick]

Measures
* the digits demo at several sparsities: float and int8 accuracy, weight storage against fp32,
  dense and effective MACs, and whether the QAT forward equals the golden model on every image;
* export time and golden-model (``zeroskip.reference.run``) time for the digits model and for a
  CIFAR-sized CNN (32x32x3 input, ~300k weights, random weights pruned 90%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import zeroskip
from zeroskip import demo, reference

RESULTS = Path(__file__).parent / "results"


def cifar_sized_cnn():
    """Six 3x3 conv-BN-ReLU layers (32-32-64-64-128-128), three max pools, a linear head."""
    layers, channels = [], 3
    for width in (32, 32, "pool", 64, 64, "pool", 128, 128, "pool"):
        if width == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


def timed(function, repeats):
    """Best wall time of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure_graph(model, example, calibration, batch, repeats):
    export_seconds, graph = timed(lambda: zeroskip.export(model, example, calibration), repeats)
    x_int = graph.quantize_input(batch.numpy())
    run_seconds, _ = timed(lambda: reference.run(graph, x_int), repeats)
    summary = zeroskip.stats(graph, x_int).total
    return {
        "weights": summary.weights,
        "nonzero_weights": summary.nonzero_weights,
        "export_seconds": export_seconds,
        "reference_batch": len(batch),
        "reference_seconds": run_seconds,
        "reference_images_per_second": len(batch) / run_seconds,
        "dense_macs_per_image": summary.dense_macs,
        "effective_macs_per_image": summary.effective_macs,
    }


def cifar_benchmark(repeats):
    torch.manual_seed(0)
    model = cifar_sized_cnn().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    # Per layer: untrained layers differ in weight magnitude by their fan-in, so one global
    # threshold would empty the widest layers.
    zeroskip.prune(model, 0.9, granularity="element", criterion="magnitude", scope="layer")
    images = torch.rand(64, 3, 32, 32)
    return measure_graph(model, images[:8], images, images, repeats)


def digits_sweep(sparsities, quick):
    """The whole demo flow (training included) at each sparsity."""
    results = []
    for sparsity in sparsities:
        settings = demo.DemoSettings(sparsity=sparsity)
        if quick:
            settings = replace(settings, float_epochs=5, prune_epochs=3, qat_epochs=2)
        results.append(demo.run(settings)[0].to_dict())
    return results


def digits_timing(repeats):
    """Export (post-training) and golden-model time of the 90%-pruned digits CNN on the test set.

    Timing does not depend on the weights' values, so the model is not trained here.
    """
    torch.manual_seed(0)
    model = demo.digits_cnn().eval()
    zeroskip.prune(model, 0.9, granularity="element", criterion="magnitude", scope="global")
    x_train, _, x_test, _ = demo.digits_data()
    return measure_graph(model, x_train[:8], x_train, x_test, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "frontend.json"))
    parser.add_argument("--quick", action="store_true",
                        help="few epochs, one sparsity: a check that the benchmark runs")
    args = parser.parse_args(argv)
    sparsities = [0.9] if args.quick else [0.9, 0.92, 0.94]
    started = time.perf_counter()
    report = {
        "benchmark": "frontend",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__},
        "quick": args.quick,
        "digits_sweep": digits_sweep(sparsities, args.quick),
        "digits_timing": digits_timing(repeats=1 if args.quick else 3),
        "cifar_sized_cnn": cifar_benchmark(repeats=1 if args.quick else 3),
    }
    report["seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
