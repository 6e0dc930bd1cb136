"""Topology benchmark: the residual / depthwise-separable net through the RTL; writes JSON.

    python benchmarks/topology_bench.py [--out benchmarks/results/topology.json]
        [--multipliers 12] [--build-root DIR]

The net is ``zeroskip.models.residual_dws_cnn`` (a residual block, two depthwise-separable
blocks with stride 2, a global average pool), trained, pruned, int8-trained and exported by
``zeroskip.models.train_residual_dws``. Two designs get the same multiplier budget, each folded
on its own work (``lanes="auto"``, calibration on 128 training images): zero-skip and dense.
The zero-skip design co-simulates all 360 test images back to back under Verilator, the dense one
a few (its cycles do not depend on the data); every output is checked against the golden model.
Without ``--build-root`` the Verilator builds start cold and are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

import zeroskip
from zeroskip import demo, models, reference

RESULTS = Path(__file__).parent / "results"
ESTIMATE_FIELDS = ("name", "lanes", "ideal_cycles", "cycles", "bound")


def run_design(graph, calibration, x_int, multipliers, zero_skip, build_root):
    """Compile (lanes auto), co-simulate ``x_int``; the design, its result and timings."""
    timer = time.perf_counter()
    design = zeroskip.compile(graph, "auto", zero_skip=zero_skip, multipliers=multipliers,
                              calibration=calibration)
    design.verilog()
    convert_seconds = time.perf_counter() - timer
    result = design.simulate(x_int, build_root=build_root)
    summary = {
        "lanes": design.lanes,
        "multipliers_used": design.multipliers_used,
        "estimates_on_calibration": [{field: asdict(estimate)[field]
                                      for field in ESTIMATE_FIELDS}
                                     for estimate in design.estimates],
        "images": len(x_int),
        "interval_cycles_median": float(np.median(result.interval_cycles)),
        "latency_cycles_mean": float(np.mean(result.latency_cycles)),
        "batch_cycles": result.cycles,
        "seconds": {"compile_and_verilog": convert_seconds,
                    "verilator_build": result.build_seconds,
                    "simulation_run": result.seconds},
    }
    return design, result, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "topology.json"))
    parser.add_argument("--multipliers", type=int, default=12)
    parser.add_argument("--dense-images", type=int, default=demo.DENSE_IMAGES)
    parser.add_argument("--build-root", default=None,
                        help="Verilator model cache (default: a fresh temporary directory)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    trained, graph = models.train_residual_dws()
    x_train, _, x_test, y_test = demo.digits_data()
    x_int = graph.quantize_input(x_test.numpy())
    labels = y_test.numpy()
    calibration = graph.quantize_input(x_train[:demo.CALIBRATION_IMAGES].numpy())
    golden = reference.run(graph, x_int)
    summary = zeroskip.stats(graph, x_int).total

    with tempfile.TemporaryDirectory() as scratch:
        build_root = args.build_root or scratch
        _, sparse, zero_skip = run_design(graph, calibration, x_int, args.multipliers, True,
                                          build_root)
        _, _, dense = run_design(graph, calibration, x_int[:args.dense_images],
                                 args.multipliers, False, build_root)

    bit_exact = int(np.sum(np.all(sparse.outputs == golden, axis=1)))
    report = {
        "benchmark": "topology",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "net": {"name": graph.name, "layers": [node.name for node in graph.nodes],
                "settings": asdict(trained.settings), "weights": summary.weights,
                "nonzero_weights": summary.nonzero_weights,
                "sparsity": 1 - summary.nonzero_weights / summary.weights,
                "dense_macs_per_image": summary.dense_macs,
                "effective_macs_per_image": summary.effective_macs},
        "accuracy": {"float": trained.float_accuracy, "float_pruned": trained.pruned_accuracy,
                     "int8_golden": trained.int8_accuracy,
                     "rtl": demo.accuracy(sparse.classes, labels)},
        "qat_matches_golden": trained.qat_matches_golden,
        "test_images": len(x_int), "bit_exact_images": bit_exact,
        "multipliers": args.multipliers,
        "zero_skip": zero_skip,
        "dense": dense,
        "dense_over_zero_skip_interval":
            dense["interval_cycles_median"] / zero_skip["interval_cycles_median"],
        "training_seconds": trained.seconds,
        "seconds": time.perf_counter() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in (
        "accuracy", "bit_exact_images", "dense_over_zero_skip_interval", "training_seconds",
        "seconds")}, indent=2))


if __name__ == "__main__":
    main()
