"""Boards benchmark: the int8 and the binary digits nets placed and routed on each FPGA part.

    python benchmarks/boards_bench.py [--out benchmarks/results/boards.json]
        [--graphs INT8.zsg BINARY.zsg] [--configs ice40-up5k ecp5-85k ...] [--images 20]

The nets are trained and exported as ``zeroskip demo`` and ``zeroskip demo --binary`` do (no
RTL), unless ``--graphs`` gives them. Each net is compiled for each configuration of
:data:`CONFIGURATIONS` (a part and the compile settings for it), then taken through
``zeroskip synth`` for the part
(:func:`zeroskip.boards.synth.run`: Yosys and nextpnr on the accelerator alone, in a three-pin
wrapper) and co-simulated under Verilator on the first ``--images`` test images (every output
checked against the golden model). Reported per net and part: the resources against the part's
capacity, whether it fits (with the resources over budget when not: a design that does not fit is
a result, not a failure), Fmax, the cycles per inference (median interval between consecutive
inferences' last outputs, in steady state) and inferences per second = Fmax / cycles.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import zeroskip
from zeroskip import binary_demo, demo
from zeroskip.boards import synth

RESULTS = Path(__file__).parent / "results"

# The smallest engines: one multiplier per layer, 8-channel masks, no per-layer counters (as on
# a board: the host link reads the network's own counters only).
SMALLEST = {"lanes": 1, "chunk": 8, "layer_counters": False}

#: Configuration name -> (part, keyword arguments of :func:`zeroskip.compile`). Every design is
#: compiled with the demo's calibration images, which ``lanes="auto"`` folds on.
CONFIGURATIONS = {
    "ice40-up5k": ("ice40-up5k", SMALLEST),
    "ecp5-85k": ("ecp5-85k", SMALLEST),
    # The demo's folding: more inferences per second, at a lower clock.
    "ecp5-85k-16": ("ecp5-85k", {"lanes": "auto", "multipliers": 16, "layer_counters": False}),
    # One engine running the layers in turn: what fits the UP5K's 30 RAM blocks, the most
    # lanes the part can place; its weights in block RAM, which the host link can run.
    "ice40-up5k-seq": ("ice40-up5k", {"architecture": "sequential", "lanes": "auto"}),
}

#: Configurations only some nets can take: the sequential engine runs no binary layer.
ONLY_FOR = {"ice40-up5k-seq": ("int8",)}


def trained_graphs():
    """``{"int8": graph, "binary": graph}`` trained as the demos train them, without RTL."""
    _, int8 = demo.run(replace(demo.DemoSettings(), hardware=False))
    _, binary = binary_demo.run_demo(replace(binary_demo.BinaryDemoSettings(), hardware=False))
    return {"int8": int8, "binary": binary}


def measure(graph, config, x_calibration, x_test, work, build_root):
    """One net in one configuration: compile, ``zeroskip synth``, co-simulate; a JSON-ready
    dict."""
    part, settings = CONFIGURATIONS[config]
    started = time.perf_counter()
    design = zeroskip.compile(graph, **settings, calibration=x_calibration)
    build = work / f"{graph.name}-{config}"
    design.write(build)
    compile_seconds = time.perf_counter() - started
    report = synth.run(build, part)
    sim = design.simulate(x_test, build_root=build_root)
    interval = statistics.median(int(c) for c in sim.interval_cycles)
    latency = statistics.median(int(c) for c in sim.latency_cycles)
    board = report.to_dict()
    return {
        "part": part, "settings": settings, "lanes": design.lanes,
        "multipliers_used": design.multipliers_used,
        "fits": report.fits,
        "failure": report.failure_message() if not report.fits else "",
        "luts": report.luts, "ffs": report.ffs, "brams": report.brams, "dsps": report.dsps,
        "spram": report.spram, "capacity": report.capacity, "utilisation": board["utilisation"],
        "over_budget": report.over_budget, "wrapper": report.wrapper, "placed": report.placed,
        "fmax_mhz": report.fmax_mhz, "target_mhz": report.target_mhz,
        "meets_target": board["meets_target"],
        "interval_cycles": interval, "latency_cycles": latency, "images": len(x_test),
        "inferences_per_second": (round(report.fmax_mhz * 1e6 / interval, 1)
                                  if report.fmax_mhz else None),
        "seconds": {"compile": round(compile_seconds, 1), **report.seconds,
                    "simulation": round(sim.build_seconds + sim.seconds, 1)},
        "cpu_seconds": report.cpu_seconds,
    }


def row(net, config, entry):
    fmax = f"{entry['fmax_mhz']:.1f}" if entry["fmax_mhz"] else "-"
    rate = f"{entry['inferences_per_second']:.0f}" if entry["inferences_per_second"] else "-"
    return (f"{net:7} {config:14} {'yes' if entry['fits'] else 'NO':4} {entry['luts']:6} "
            f"{entry['ffs']:6} {entry['brams']:5} {entry['dsps']:5} {fmax:>7} "
            f"{entry['interval_cycles']:8} {rate:>9}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "boards.json"))
    parser.add_argument("--graphs", nargs=2, metavar=("INT8", "BINARY"),
                        help="the int8 and binary graph files, instead of training them")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGURATIONS),
                        choices=list(CONFIGURATIONS))
    parser.add_argument("--images", type=int, default=20,
                        help="test images co-simulated per design (default 20)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    graphs = ({"int8": zeroskip.load(args.graphs[0]), "binary": zeroskip.load(args.graphs[1])}
              if args.graphs else trained_graphs())
    x_train, _, x_test, _ = demo.digits_data()
    # Configurations not measured now keep their results from before.
    before = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    results = before.get("results", {})
    print("net     config         fits   LUTs    FFs  BRAM   DSP    fmax   cycles  inf/s")
    with tempfile.TemporaryDirectory(prefix="zeroskip-boards-") as work:
        work = Path(work)
        for net, graph in graphs.items():
            x_calibration = graph.quantize_input(x_train[:demo.CALIBRATION_IMAGES].numpy())
            x_int = graph.quantize_input(x_test[:args.images].numpy())
            for config in args.configs:
                if net not in ONLY_FOR.get(config, (net,)):
                    continue
                entry = measure(graph, config, x_calibration, x_int, work, work / "verilator")
                results.setdefault(net, {})[config] = entry
                print(row(net, config, entry), flush=True)
    report = {
        "benchmark": "boards",
        "configurations": {config: {"part": CONFIGURATIONS[config][0],
                                    "settings": CONFIGURATIONS[config][1]}
                           for config in CONFIGURATIONS},
        "images": args.images, "results": results,
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
