"""MLPerf Tiny benchmark: the four reference networks through compile, co-simulation and
synthesis; writes JSON.

    python benchmarks/mlperf_bench.py [--out benchmarks/results/mlperf.json] [--nets NAME ...]
        [--configs one-lane mult-64 ...] [--no-sim] [--synth PART] [--jobs N]

Each net is made by ``zeroskip.models.mlperf_graph`` (random weights, 90 % pruned per layer,
int8 post-training quantization on 64 synthetic inputs: no data set is reachable here); the
extra net ``digits_shaped`` (the issue's conv16, pool, conv32, pool, fc10 on 8x8 digits, its
must-show at 8 multipliers) by ``zeroskip.models.digits_shaped_graph`` (random weights, 90 %
pruned per layer, quantized on 128 digits training images, which are its inputs). Measured
per net: weights and nonzero weights of the graph, MACs per inference (dense: as published for
the keras model, and as the graph counts them with the zero taps of keras's asymmetric padding;
effective: both operands nonzero, mean over the 64 inputs) and the export time. Then per
configuration (``one-lane``: one multiplier per conv / linear layer; ``mult-N``: ``lanes="auto"``
folding N multipliers on the 64 calibration inputs; ``target-PART``: ``target=PART`` on them):
the ``zeroskip.compile`` time, the time to
make the Verilog and its size; the co-simulation of 8 inputs under Verilator (the build in a
fresh cache, its time, the run's, bit-exact against the golden model, the first inference's
latency (pipeline empty: single-stream) and the interval); with ``--synth PART``, ``zeroskip
synth`` of the build (Yosys out of context, nextpnr): resources, Fmax, each tool's wall and CPU
time and the peak memory of its largest process. Results are written after every
configuration, merged into the JSON already there. Prints the README's tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import zeroskip
from zeroskip import models

RESULTS = Path(__file__).parent / "results"
SIMULATED_INPUTS = 8
CONFIGS = ("one-lane", "mult-8", "mult-64", "mult-128", "target-ecp5-85k", "target-ice40-up5k")
#: The nets, in the JSON's order: the four MLPerf Tiny ones and the digits-shaped net.
NETS = (*models.MLPERF_TINY, "digits_shaped")


def make_net(name):
    """The graph, its inputs (integers), the float model (None for the digits-shaped net, whose
    layers the graph has as they are) and the export time."""
    if name in models.MLPERF_TINY:
        return models.mlperf_graph(name)
    started = time.perf_counter()
    graph, inputs_int, _ = models.digits_shaped_graph()
    return SimpleNamespace(graph=graph, inputs_int=inputs_int, model=None,
                           export_seconds=time.perf_counter() - started)


def net_summary(name, made):
    summary = zeroskip.stats(made.graph, made.inputs_int).total
    if made.model is None:
        weights, macs = summary.weights, summary.dense_macs
    else:
        weights = sum(m.weight.numel() for m in made.model.modules()
                      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        macs = models.float_dense_macs(made.model,
                                       torch.zeros(models.MLPERF_TINY[name].input_shape))
    return {
        "net": name,
        "float_weights": weights,
        "graph_weights": summary.weights,
        "nonzero_weights": summary.nonzero_weights,
        "keras_dense_macs": macs,
        "graph_dense_macs": summary.dense_macs,
        "effective_macs": summary.effective_macs,
        "export_seconds": made.export_seconds,
        "configs": {},
    }


def compile_config(made, config):
    """``zeroskip.compile`` of one configuration, and its Verilog, timed."""
    started = time.perf_counter()
    if config == "one-lane":
        design = zeroskip.compile(made.graph, lanes=1)
    elif config.startswith("target-"):
        design = zeroskip.compile(made.graph, target=config.removeprefix("target-"),
                                  calibration=made.inputs_int)
    else:
        design = zeroskip.compile(made.graph, "auto", multipliers=int(config.split("-")[1]),
                                  calibration=made.inputs_int)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    verilog = design.verilog()
    entry = {"config": config, "architecture": design.architecture.name,
             "lanes": design.lanes,
             "multipliers": design.multipliers_used,
             "compile_seconds": compile_seconds,
             "verilog_seconds": time.perf_counter() - started,
             "verilog_characters": len(verilog),
             "verilog_sha256": hashlib.sha256(verilog.encode()).hexdigest()}
    choice = design.architecture.target_choice
    if choice is not None:
        entry["target"] = {key: value for key, value in choice.to_dict().items()
                           if key != "tried"}
    if design.estimates:
        slowest = max(design.estimates, key=lambda estimate: estimate.cycles)
        entry["estimated_interval_cycles"] = round(slowest.cycles)
    return design, entry


def simulate(design, made):
    """Co-simulate the first inputs with a fresh Verilator build."""
    x = made.inputs_int[:SIMULATED_INPUTS]
    with tempfile.TemporaryDirectory(prefix="mlperf-verilator-") as root:
        started = time.perf_counter()
        result = design.simulate(x, build_root=root)  # raises on any mismatch
        seconds = time.perf_counter() - started
    return {"inferences": len(x), "bit_exact": len(x), "build_seconds": result.build_seconds,
            "run_seconds": result.seconds, "simulate_seconds": seconds,
            "cycles": result.cycles, "held_cycles": result.held_cycles,
            "first_latency_cycles": int(result.latency_cycles[0]),
            "interval_cycles": float(np.median(result.interval_cycles))}


def synthesize(design, part, jobs):
    from zeroskip.boards import synth

    with tempfile.TemporaryDirectory(prefix="mlperf-synth-") as build:
        design.write(build)
        report = synth.run(build, part, jobs=jobs).to_dict()
    return {key: report[key] for key in (
        "target", "luts", "ffs", "dsps", "brams", "carries", "fits", "fmax_mhz", "target_mhz",
        "utilisation", "seconds", "cpu_seconds", "peak_mb", "steps", "failure", "router")}


#: Published single-stream latencies of the same networks on FPGAs (ms), as issue #14 cites
#: them: fpgaConvNet's MLPerf Tiny v1.1 submission (ZedBoard XC7Z020, 211 DSPs, 143 MHz) and
#: hls4ml's (Pynq-Z2, v0.7).
PUBLISHED_MS = {
    "ic_resnet8": ("fpgaConvNet, XC7Z020, 211 DSPs", 0.411),
    "kws_dscnn": ("fpgaConvNet, XC7Z020, 211 DSPs", 0.324),
    "ad_autoencoder": ("hls4ml AD08, Pynq-Z2", 0.0187),
    "vww_mobilenet_v1": ("fpgaConvNet, XC7Z020, 211 DSPs", 9.49),
}
#: What issue #14 asks of each, on the ECP5-85F (ms).
ASKED_MS = {"ic_resnet8": 0.20, "kws_dscnn": 0.08, "ad_autoencoder": 0.02,
            "vww_mobilenet_v1": 2.0}


def comparison_table(nets, config="target-ecp5-85k"):
    """The README's table of each MLPerf net's measured ``config`` (placed, routed and
    co-simulated) beside the published FPGA results and what the issue asks."""
    rows = ["| net | multipliers | LUT4 / DSP / BRAM (Yosys) | Fmax | single-stream latency | "
            "asked | published |", "|---|---|---|---|---|---|---|"]
    for net in nets:
        entry = net["configs"].get(config, {})
        sim, syn = entry.get("simulation"), entry.get("synthesis")
        if net["net"] not in PUBLISHED_MS or not sim or not syn or not syn.get("fmax_mhz"):
            continue
        ms = sim["first_latency_cycles"] / syn["fmax_mhz"] / 1000
        who, published = PUBLISHED_MS[net["net"]]
        rows.append(f"| `{net['net']}` | {entry['multipliers']} | {syn['luts']:,} / "
                    f"{syn['dsps']} / {syn['brams']} | {syn['fmax_mhz']:.1f} MHz | "
                    f"{sim['first_latency_cycles']:,} cycles, **{ms:.3f} ms** | "
                    f"{ASKED_MS[net['net']]} ms | {published} ms ({who}) |")
    return "\n".join(rows)


def markdown_tables(nets):
    """The README's tables of the measured nets: the graphs, then each configuration, then the
    comparison with published results."""
    rows = ["| net | weights: graph (float) | nonzero | dense MACs: keras (graph) | effective MACs "
            "| export |", "|---|---|---|---|---|---|"]
    for net in nets:
        weights, macs = f"{net['graph_weights']:,}", f"{net['keras_dense_macs']:,}"
        if net["graph_weights"] != net["float_weights"]:
            weights += f" ({net['float_weights']:,})"
        if net["graph_dense_macs"] != net["keras_dense_macs"]:
            macs += f" ({net['graph_dense_macs']:,})"
        fewer = net["keras_dense_macs"] / net["effective_macs"]
        rows.append(f"| `{net['net']}` | {weights} | {net['nonzero_weights']:,} | {macs} | "
                    f"{net['effective_macs']:,.0f} ({fewer:.1f}x fewer) | "
                    f"{net['export_seconds']:.2f} s |")
    rows += ["", "| net | config | multipliers | compile | Verilog | Verilator build / run | "
                 "bit-exact | latency (1st) / interval cycles | LUT4 / FF / DSP / BRAM | "
                 "Fmax | latency at Fmax | Yosys: wall, CPU, peak | nextpnr: wall, CPU, peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for net in nets:
        for config in net["configs"].values():
            rows.append(_config_row(net["net"], config))
    return "\n".join(rows) + "\n\n" + comparison_table(nets)


def _config_row(net, config):
    sim, syn = config.get("simulation"), config.get("synthesis")
    cells = [f"`{net}`", config["config"], str(config["multipliers"]),
             f"{config['compile_seconds']:.1f} s",
             f"{config['verilog_seconds']:.0f} s, {config['verilog_characters'] / 1e6:.1f} MB"]
    if sim:
        cells += [f"{sim['build_seconds']:.0f} s / {sim['run_seconds']:.0f} s",
                  f"{sim['bit_exact']}/{sim['inferences']}",
                  f"{sim['first_latency_cycles']:,} / {sim['interval_cycles']:,.0f}"]
    else:
        cells += ["-", "-", "-"]
    if syn:
        fmax = syn["fmax_mhz"]
        cells.append(f"{syn['luts']:,} / {syn['ffs']:,} / {syn['dsps']} / {syn['brams']}"
                     + ("" if syn["fits"] else " (does not fit)"))
        cells.append(f"{fmax:.1f} MHz" if fmax else "-")
        cells.append(f"{sim['first_latency_cycles'] / fmax / 1000:.3f} ms"
                     if fmax and sim else "-")
        for tool in ("yosys", "nextpnr"):
            if tool in syn["seconds"]:
                cells.append(f"{syn['seconds'][tool] / 60:.1f} min, "
                             f"{syn['cpu_seconds'][tool] / 60:.1f} min, "
                             f"{syn['peak_mb'][tool]:,} MB")
            else:
                cells.append("-")
    else:
        cells += ["-"] * 5
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "mlperf.json"))
    parser.add_argument("--nets", nargs="+", choices=list(NETS),
                        default=list(models.MLPERF_TINY))
    parser.add_argument("--configs", nargs="+", default=["one-lane", "mult-64"],
                        help=f"any of {', '.join(CONFIGS)} (mult-N for any N, target-PART for "
                        "any part)")
    parser.add_argument("--no-sim", action="store_true", help="skip the co-simulation")
    parser.add_argument("--synth", metavar="PART", help="also synthesize for this part")
    parser.add_argument("--jobs", type=int, default=2, help="Yosys processes at a time")
    args = parser.parse_args(argv)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.update({"benchmark": "mlperf",
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "torch": torch.__version__, "numpy": np.__version__}})
    nets = {net["net"]: net for net in report.get("nets", [])}
    for name in args.nets:
        made = make_net(name)
        net = nets[name] = {**net_summary(name, made),
                            "configs": nets.get(name, {}).get("configs", {})}
        for config in args.configs:
            design, entry = compile_config(made, config)
            before = net["configs"].get(config, {})
            if before.get("verilog_sha256") == entry["verilog_sha256"]:
                # The same design: results measured before and not measured now stay.
                entry = {**before, **entry}
            if not args.no_sim:
                entry["simulation"] = simulate(design, made)
            if args.synth:
                entry["synthesis"] = synthesize(design, args.synth, args.jobs)
            net["configs"][config] = entry
            report["nets"] = [nets[key] for key in NETS if key in nets]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
            print(f"{name} {config}: {json.dumps(entry)[:400]}", flush=True)
    print(markdown_tables(report["nets"]))
    print(f"JSON in {out}")


if __name__ == "__main__":
    main()
