"""The sequential engine on a part: resources, Fmax and single-stream latency; writes JSON.

    python benchmarks/sequential_bench.py [--out benchmarks/results/sequential.json]
        [--nets digits_shaped ic_resnet8 ...] [--parts ice40-up5k ecp5-85k]

Per net and part: ``zeroskip.compile(graph, "auto", architecture="sequential", target=PART)``
(the engine's lanes and memories for the part), its cycle model on 8 calibration inputs
(:mod:`zeroskip.hdl.seq_model`: one inference alone, and the steady-state interval), then
``zeroskip synth`` of the build with the host link (Yosys, and nextpnr where the design fits):
resources, Fmax, the latency in ms at that Fmax. The nets are untrained (random weights,
pruned, int8: :func:`zeroskip.models.mlperf_graph`, :func:`~zeroskip.models.
digits_shaped_graph`): hardware, not accuracy. The Fmax of the digits-shaped net is the clock
``target=PART`` counts the engine's latency at (``Sequential.MEASURED_MHZ``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import zeroskip
from zeroskip import models
from zeroskip.boards import synth
from zeroskip.errors import ToolchainError

RESULTS = Path(__file__).resolve().parent / "results"
NETS = ("digits_shaped", "ic_resnet8", "kws_dscnn", "ad_autoencoder")
KEEP = ("luts", "ffs", "dsps", "brams", "spram", "fits", "over_budget", "fmax_mhz",
        "target_mhz", "placed", "seconds", "peak_mb", "failure")


def net_inputs(name):
    """(graph, 8 calibration inputs) of a net."""
    if name == "digits_shaped":
        graph, calibration, _ = models.digits_shaped_graph()
        return graph, calibration[:8]
    made = models.mlperf_graph(name)
    return made.graph, made.inputs_int[:8]


def measure(name, graph, x, part):
    started = time.perf_counter()
    design = zeroskip.compile(graph, "auto", architecture="sequential", target=part)
    architecture = design.architecture
    estimate = architecture.estimate(x)
    entry = {"net": name, "part": part, "lanes": architecture.simd_lanes,
             "logic_lanes": list(architecture.lut_lanes), "memory": architecture.memory,
             "latency_cycles": estimate.latency_cycles,
             "interval_cycles": estimate.interval_cycles,
             "compile_seconds": round(time.perf_counter() - started, 1)}
    with tempfile.TemporaryDirectory(prefix="sequential-bench-") as build:
        design.write(Path(build) / "b")
        try:
            report = synth.run(Path(build) / "b", part, jobs=1).to_dict()
        except ToolchainError as error:
            # A design nextpnr cannot place is a result (its message says by how much).
            report = {"fits": False, "failure": str(error).split("; log:")[0]}
    entry["synthesis"] = {key: report.get(key) for key in KEEP}
    fmax = report.get("fmax_mhz")
    entry["latency_ms_at_fmax"] = estimate.latency_cycles / fmax / 1000 if fmax else None
    return entry


def table(entries):
    lines = ["| net | part | lanes | LUTs | FFs | DSPs | BRAM | SPRAM | fits | Fmax | "
             "latency (cycles) | latency at Fmax |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        s = e["synthesis"]
        fmax = f"{s['fmax_mhz']:.1f} MHz" if s.get("fmax_mhz") else "-"
        ms = f"{e['latency_ms_at_fmax']:.2f} ms" if e.get("latency_ms_at_fmax") else "-"
        fits = "yes" if s["fits"] else f"no: {s['failure']}" if s.get("failure") else "no"
        count = [f"{s[key]:,}" if s.get(key) is not None else "-"
                 for key in ("luts", "ffs", "dsps", "brams", "spram")]
        lines.append(f"| {e['net']} | {e['part']} | {e['lanes']} | {' | '.join(count)} | "
                     f"{fits} | {fmax} | "
                     f"{e['latency_cycles']:,.0f} | {ms} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "sequential.json"))
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    parser.add_argument("--parts", nargs="+", default=["ice40-up5k", "ecp5-85k"])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # untrained nets: no empty-layer warnings wanted here
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.update({"benchmark": "sequential",
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}})
    entries = {(e["net"], e["part"]): e for e in report.get("runs", [])}
    for name in args.nets:
        graph, x = net_inputs(name)
        for part in args.parts:
            entry = measure(name, graph, x, part)
            entries[(name, part)] = entry
            report["runs"] = sorted(entries.values(), key=lambda e: (NETS.index(e["net"]),
                                                                     e["part"]))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(entry)[:600], flush=True)
    print(table(report["runs"]))
    print(f"JSON in {out}")


if __name__ == "__main__":
    main()
