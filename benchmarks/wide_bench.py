"""Wide streams and packed scans on the MLPerf Tiny nets: before and after; writes JSON.

    python benchmarks/wide_bench.py [--out benchmarks/results/wide.json] [--nets NAME ...]
                                    [--multipliers 64 128] [--simulate NAME ...] [--images 4]

Each net is ``zeroskip.models.mlperf_graph(name)`` (random weights, 90 % pruned, int8; no data
set is reachable here), folded with ``lanes="auto"`` on its 64 calibration inputs at each
budget, twice: *before*, one activation a beat and no packs (``stream_width=1, pack=False``:
the engines and the folding of the base branch), and *after*, widths and packs chosen by the
folding model. Per design: every engine's lanes, pack, widths, estimated cycles and bound, the
estimated throughput (cycles between inferences, the slowest engine) and single-stream latency
(first inference, pipeline empty: :mod:`zeroskip.compiler.latency`). For the nets named by
``--simulate``, both designs also run under Verilator on ``--images`` calibration inputs back to
back: the first inference's latency, the mean interval, outputs checked bit-exact against the
golden model. Prints the README's tables.
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
from zeroskip import models

RESULTS = Path(__file__).parent / "results"


def layer_rows(design):
    return [{"name": e.name, "lanes": e.lanes, "pack": e.pack, "in_width": e.in_width,
             "out_width": e.out_width, "effective_macs": round(e.effective_macs, 1),
             "ideal_cycles": round(e.ideal_cycles, 1), "cycles": round(e.cycles, 1),
             "bound": e.bound} for e in design.estimates]


def measure_design(made, multipliers, wide, simulate, images):
    options = {} if wide else {"stream_width": 1, "pack": False}
    started = time.perf_counter()
    design = zeroskip.compile(made.graph, "auto", multipliers=multipliers,
                              calibration=made.inputs_int, **options)
    row = {"multipliers": multipliers, "multipliers_used": design.multipliers_used,
           "compile_seconds": round(time.perf_counter() - started, 2),
           "in_width": design.in_width, "out_width": design.out_width,
           "interval_estimate": round(max(e.cycles for e in design.estimates), 1),
           "latency_estimate": round(design.architecture.latency, 1),
           "requantizers": sum(e.out_width for e in design.estimates if e.lanes),
           "layers": layer_rows(design)}
    if simulate:
        x = made.inputs_int[:images]
        estimate = design.architecture.estimate(x)
        started = time.perf_counter()
        verilog = design.verilog()
        row["verilog_seconds"] = round(time.perf_counter() - started, 1)
        row["verilog_characters"] = len(verilog)
        result = design.simulate(x)  # raises unless every output is bit-exact
        row["simulated"] = {
            "images": len(x), "bit_exact": len(x),
            "latency_cycles": int(result.latency_cycles[0]),
            "interval_cycles": round(float(result.interval_cycles.mean()), 1),
            "latency_estimate": round(estimate.latency_cycles, 1),
            "interval_estimate": round(estimate.interval_cycles, 1),
            "build_seconds": round(result.build_seconds, 1),
            "run_seconds": round(result.seconds, 1)}
    return row


def measure(name, budgets, simulate, images):
    made = models.mlperf_graph(name)
    return {"net": name, "designs": {
        f"{kind}_{multipliers}": measure_design(made, multipliers, kind == "after", simulate,
                                                images)
        for multipliers in budgets for kind in ("before", "after")}}


def markdown_tables(nets, clock_mhz=100):
    """The README's tables: one row per net and budget, and the per-layer detail."""
    rows = ["| net | multipliers | throughput before -> after (cycles) | latency before -> "
            f"after (cycles) | latency after at {clock_mhz} MHz | Verilator latency / "
            "interval after |", "|---|---|---|---|---|---|"]
    for net in nets:
        for key, after in net["designs"].items():
            if not key.startswith("after"):
                continue
            before = net["designs"][key.replace("after", "before")]
            simulated = after.get("simulated")
            measured = f"{simulated['latency_cycles']:,} / {simulated['interval_cycles']:,.0f}" \
                if simulated else "-"
            rows.append(
                f"| `{net['net']}` | {after['multipliers']} | "
                f"{before['interval_estimate']:,.0f} -> **{after['interval_estimate']:,.0f}** | "
                f"{before['latency_estimate']:,.0f} -> **{after['latency_estimate']:,.0f}** | "
                f"{after['latency_estimate'] / clock_mhz / 1000:.3f} ms | {measured} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "wide.json"))
    parser.add_argument("--nets", nargs="+", choices=list(models.MLPERF_TINY),
                        default=list(models.MLPERF_TINY))
    parser.add_argument("--multipliers", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--simulate", nargs="*", choices=list(models.MLPERF_TINY),
                        default=["kws_dscnn", "ad_autoencoder"])
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args(argv)
    nets = []
    for name in args.nets:
        nets.append(measure(name, args.multipliers, name in args.simulate, args.images))
        print(json.dumps(nets[-1]["designs"], indent=1)[:2000], flush=True)
    document = {"benchmark": "wide streams and packed scans", "machine": platform.machine(),
                "cpus": os.cpu_count(), "nets": nets}
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(markdown_tables(nets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
