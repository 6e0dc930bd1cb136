"""Network benchmark: the digits CNN (90% pruned, int8) through the RTL; writes JSON.

    python benchmarks/network_bench.py [--out benchmarks/results/network.json] [--multipliers 16]

The net is trained, pruned and exported exactly as ``zeroskip demo`` does. Two designs get the
same multiplier budget, each folded on its own work (``lanes="auto"``, calibration on 128
training images): zero-skip on the work left after skipping, dense on the dense work. The
zero-skip design co-simulates all 360 test images back to back under Verilator, from a cold
build directory (Amaranth's Verilog conversion, the Verilator build and the run all timed); the
dense one co-simulates a few images (its cycles do not depend on the data). Every output is
checked against the golden model.

Measured against the issue's targets:
- RTL outputs bit-identical to the golden model on all 360 test images;
- initiation interval <= 1.2 x the ideal of the slowest layer (its effective MACs on the test
  images / its lanes, rounded up per output pixel);
- >= 6x fewer cycles per inference than the dense design at the same budget;
- co-simulating the test set, Verilator build included, <= 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

import zeroskip
from zeroskip import demo, reference
from zeroskip.compiler.folding import estimate_graph

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "network.json"))
    parser.add_argument("--multipliers", type=int, default=demo.DemoSettings().multipliers)
    parser.add_argument("--dense-images", type=int, default=demo.DENSE_IMAGES)
    args = parser.parse_args(argv)

    settings = replace(demo.DemoSettings(), multipliers=args.multipliers, hardware=False)
    started = time.perf_counter()
    result, graph = demo.run(settings)
    x_train, _, x_test, y_test = demo.digits_data()
    x_int = graph.quantize_input(x_test.numpy())
    labels = y_test.numpy()
    calibration = graph.quantize_input(x_train[:demo.CALIBRATION_IMAGES].numpy())
    golden = reference.run(graph, x_int)

    with tempfile.TemporaryDirectory() as cold_build_root:
        timer = time.perf_counter()
        design = zeroskip.compile(graph, "auto", multipliers=args.multipliers,
                                  calibration=calibration)
        design.verilog()
        convert_seconds = time.perf_counter() - timer
        sparse = design.simulate(x_int, build_root=cold_build_root)
        cosim_seconds = time.perf_counter() - timer

        dense_design = zeroskip.compile(graph, "auto", zero_skip=False,
                                        multipliers=args.multipliers, calibration=calibration)
        dense = dense_design.simulate(x_int[:args.dense_images], build_root=cold_build_root)

    on_test = estimate_graph(graph, x_int, design.lanes)
    slowest = max(on_test, key=lambda estimate: estimate.ideal_cycles)
    interval = float(np.median(sparse.interval_cycles))
    dense_interval = float(np.median(dense.interval_cycles))
    bit_exact = int(np.sum(np.all(sparse.outputs == golden, axis=1)))
    report = {
        "benchmark": "network",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "net": {"name": graph.name, "weights": result.weights,
                "nonzero_weights": result.nonzero_weights, "sparsity": result.sparsity,
                "dense_macs_per_image": result.dense_macs,
                "effective_macs_per_image": result.effective_macs,
                "weight_storage_bits": result.weight_storage_bits,
                "fp32_storage_bits": result.fp32_storage_bits},
        "accuracy": {"float": result.float_accuracy, "int8_golden": result.golden_accuracy,
                     "rtl": float(np.mean(sparse.classes == labels))},
        "test_images": len(x_int), "bit_exact_images": bit_exact,
        "multipliers": args.multipliers,
        "zero_skip": {
            "lanes": design.lanes,
            "interval_cycles_median": interval,
            "interval_cycles_mean": float(np.mean(sparse.interval_cycles)),
            "latency_cycles_mean": float(np.mean(sparse.latency_cycles)),
            "batch_cycles": sparse.cycles,
            "estimates_on_test_images": [asdict(estimate) for estimate in on_test],
            "counters": sparse.counters,
        },
        "dense": {
            "lanes": dense_design.lanes, "images": args.dense_images,
            "interval_cycles_median": dense_interval,
            "latency_cycles_mean": float(np.mean(dense.latency_cycles)),
        },
        "slowest_layer": slowest.name,
        "slowest_layer_ideal_cycles": slowest.ideal_cycles,
        "interval_over_ideal": interval / slowest.ideal_cycles,
        "dense_over_zero_skip_interval": dense_interval / interval,
        "cosimulation_seconds": {"total_with_build": cosim_seconds,
                                 "verilog_conversion": convert_seconds,
                                 "verilator_build": sparse.build_seconds,
                                 "simulation_run": sparse.seconds},
        "targets": {
            "bit_exact_all_images": bit_exact == len(x_int),
            "interval_within_1.2x_ideal": interval <= 1.2 * slowest.ideal_cycles,
            "at_least_6x_fewer_cycles_than_dense": dense_interval >= 6 * interval,
            "cosimulation_within_60s": cosim_seconds <= 60,
        },
        "seconds": time.perf_counter() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in (
        "accuracy", "bit_exact_images", "interval_over_ideal", "dense_over_zero_skip_interval",
        "cosimulation_seconds", "targets")}, indent=2))


if __name__ == "__main__":
    main()
