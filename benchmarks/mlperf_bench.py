"""MLPerf Tiny benchmark: the four reference networks through export and compile; writes JSON.

    python benchmarks/mlperf_bench.py [--out benchmarks/results/mlperf.json] [--nets NAME ...]

Each net is made by ``zeroskip.models.mlperf_graph`` (random weights, 90 % pruned per layer,
int8 post-training quantization on 64 synthetic inputs: no data set is reachable here) and
compiled with one lane per layer. Measured per net: weights and nonzero weights of the graph,
MACs per inference (dense: as published for the keras model, and as the graph counts them with
the zero taps of keras's asymmetric padding; effective: both operands nonzero, mean over the 64
inputs), the export time, the ``zeroskip.compile`` time, and the time to make the Verilog and
its size. Nothing is simulated. Prints the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import zeroskip
from zeroskip import models

RESULTS = Path(__file__).parent / "results"


def measure(name):
    made = models.mlperf_graph(name)
    summary = zeroskip.stats(made.graph, made.inputs_int).total
    example = torch.zeros(models.MLPERF_TINY[name].input_shape)
    started = time.perf_counter()
    design = zeroskip.compile(made.graph, lanes=1)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    verilog = design.verilog()
    verilog_seconds = time.perf_counter() - started
    return {
        "net": name,
        "float_weights": sum(m.weight.numel() for m in made.model.modules()
                             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))),
        "graph_weights": summary.weights,
        "nonzero_weights": summary.nonzero_weights,
        "keras_dense_macs": models.float_dense_macs(made.model, example),
        "graph_dense_macs": summary.dense_macs,
        "effective_macs": summary.effective_macs,
        "export_seconds": made.export_seconds,
        "compile_seconds": compile_seconds,
        "verilog_seconds": verilog_seconds,
        "verilog_characters": len(verilog),
    }


def markdown_table(nets):
    """The README's table of the measured nets."""
    rows = ["| net | weights: graph (float) | nonzero | dense MACs: keras (graph) | effective MACs "
            "| export | compile | Verilog |", "|---|---|---|---|---|---|---|---|"]
    for net in nets:
        weights, macs = f"{net['graph_weights']:,}", f"{net['keras_dense_macs']:,}"
        if net["graph_weights"] != net["float_weights"]:
            weights += f" ({net['float_weights']:,})"
        if net["graph_dense_macs"] != net["keras_dense_macs"]:
            macs += f" ({net['graph_dense_macs']:,})"
        fewer = net["keras_dense_macs"] / net["effective_macs"]
        rows.append(
            f"| `{net['net']}` | {weights} | {net['nonzero_weights']:,} | {macs} | "
            f"{net['effective_macs']:,.0f} ({fewer:.1f}x fewer) | {net['export_seconds']:.2f} s | "
            f"{net['compile_seconds']:.2f} s | {net['verilog_seconds']:.0f} s, "
            f"{net['verilog_characters'] / 1e6:.1f} MB |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "mlperf.json"))
    parser.add_argument("--nets", nargs="+", choices=list(models.MLPERF_TINY),
                        default=list(models.MLPERF_TINY))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = {
        "benchmark": "mlperf",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__},
        "nets": [measure(name) for name in args.nets],
    }
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report["nets"]))
    print(f"{report['seconds']:.0f} s; JSON in {out}")


if __name__ == "__main__":
    main()
