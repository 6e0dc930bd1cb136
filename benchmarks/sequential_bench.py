"""The sequential engine on a part: resources, Fmax and single-stream latency; writes JSON.

    python benchmarks/sequential_bench.py [--out benchmarks/results/sequential.json]
        [--nets digits_shaped ic_resnet8 ...] [--parts ice40-up5k ecp5-85k]
        [--bitstreams [--keep DIR]] [--lanes N ... [--no-default] [--timeout S]]

Per net and part: ``zeroskip.compile(graph, "auto", architecture="sequential", target=PART)``
(the engine's lanes and memories for the part), its cycle model on 8 calibration inputs
(:mod:`zeroskip.hdl.seq_model`: one inference alone, and the steady-state interval), then
``zeroskip synth`` of the build with the host link (Yosys, and nextpnr where the design fits):
resources, Fmax, the latency in ms at that Fmax. The nets are untrained (random weights,
pruned, int8: :func:`zeroskip.models.mlperf_graph`, :func:`~zeroskip.models.
digits_shaped_graph`): hardware, not accuracy. The Fmax of the digits-shaped net is the clock
``target=PART`` counts the engine's latency at (``Sequential.MEASURED_MHZ``).

``--bitstreams``: for each net on the UP5K also the iCEBreaker bitstream, host link and PLL
included (:func:`zeroskip.boards.board.build_board`), at the fastest clock the PLL makes at or
below the accelerator's Fmax, then just under the Fmax the last try reached (and at least 2 %
lower) until timing is met, with half the lanes where the link beside the accelerator does not
fit (at one lane, 8 % lower: the clock moves the packing by tens of cells; at most six builds;
each try is recorded): the
lanes, the clock, the board's Fmax, its logic cells, the bitstream's size and SHA-256, the
weight words the host loads over the link first (``'W'``) and the seconds that takes at 115200
baud. ``--keep`` copies each bitstream there.

``--lanes N ...``: each net also at those lanes (``lane_runs``, beside the resource model's
LUTs, flip-flops and logic cells, :func:`zeroskip.compiler.resources.sequential_cells`); a
design nextpnr places but cannot route within ``--timeout`` seconds is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import zeroskip
from zeroskip import models, parts
from zeroskip.boards import pll, synth
from zeroskip.compiler import resources
from zeroskip.boards.board import BoardBuildError, build_board
from zeroskip.errors import ToolchainError, ZeroskipError

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


def measure(name, graph, x, part, lanes="auto", timeout=None):
    started = time.perf_counter()
    design = zeroskip.compile(graph, lanes, architecture="sequential", target=part)
    architecture = design.architecture
    estimate = architecture.estimate(x)
    used = resources.estimate(architecture, parts.PARTS[part])
    entry = {"net": name, "part": part, "lanes": architecture.simd_lanes,
             "logic_lanes": list(architecture.lut_lanes), "memory": architecture.memory,
             "latency_cycles": estimate.latency_cycles,
             "interval_cycles": estimate.interval_cycles,
             "model": {"luts": used.luts, "ffs": used.ffs,
                       "cells": resources.sequential_cells(used)},
             "compile_seconds": round(time.perf_counter() - started, 1)}
    with tempfile.TemporaryDirectory(prefix="sequential-bench-") as build:
        design.write(Path(build) / "b")
        try:
            report = synth.run(Path(build) / "b", part, jobs=1, timeout=timeout).to_dict()
        except ToolchainError as error:
            # A design nextpnr cannot place is a result (its message says by how much).
            report = {"fits": False, "failure": str(error).split("; log:")[0]}
    entry["synthesis"] = {key: report.get(key) for key in KEEP}
    fmax = report.get("fmax_mhz")
    entry["latency_ms_at_fmax"] = estimate.latency_cycles / fmax / 1000 if fmax else None
    return entry


def pll_clocks():
    """The iCEBreaker PLL's outputs from its 12 MHz oscillator, in MHz, ascending."""
    return sorted({float(f) for f, _ in pll._ice40_settings(12.0)
                   if pll._within(f, pll._ICE40_OUT)})


def bitstream(name, graph, x, fmax, keep=None):
    """The iCEBreaker bitstream of a net's UP5K design: the fastest PLL clock at or below
    ``fmax`` whose timing is met, each try just under the last one's Fmax; where the link and
    PLL beside the accelerator do not fit, half the lanes, or at one lane 8 % slower (six
    builds at most)."""
    lanes, limit, tries, entry = "auto", fmax, [], None
    for _ in range(6):
        design = zeroskip.compile(graph, lanes, architecture="sequential",
                                  target="ice40-up5k")
        architecture = design.architecture
        clock = max((f for f in pll_clocks() if f <= limit), default=pll_clocks()[0])
        with tempfile.TemporaryDirectory(prefix="sequential-board-") as build:
            build = Path(build) / "b"
            design.write(build)
            try:
                made = build_board(design, build, "icebreaker", clock_mhz=clock)
            except BoardBuildError as error:
                failure = str(error).split(" (logs")[0]
                tries.append({"lanes": architecture.simd_lanes, "clock_mhz": clock,
                              "failure": failure})
                if "does not fit" in failure and architecture.simd_lanes > 1:
                    lanes = architecture.simd_lanes // 2
                elif "timing" in failure:
                    # nextpnr places for the clock asked and lands a few per cent either side
                    # of it: the next try just under what this one reached.
                    reached = re.search(r"fmax ([0-9.]+) MHz", failure)
                    limit = min(float(reached[1]) * 0.99, clock * 0.98) if reached else \
                        clock * 0.92
                elif "does not fit" in failure:
                    # At one lane a slower clock is still worth a try: the link's counters and
                    # description change with it, and the packing by tens of cells.
                    limit = clock * 0.92
                else:
                    break
                continue
            except ZeroskipError as error:  # a design the host link cannot carry
                tries.append({"lanes": architecture.simd_lanes, "clock_mhz": clock,
                              "failure": str(error)})
                break
            record = made.to_dict()
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(made.bitstream, Path(keep) / f"{name}-icebreaker.bin")
        words = len(design.preload_words() or ())
        entry = {key: record[key] for key in ("clock_mhz", "fmax_mhz", "resources",
                                               "bitstream_bytes", "sha256", "seconds")}
        entry["latency_ms_at_clock"] = \
            architecture.estimate(x).latency_cycles / made.clock_mhz / 1000
        entry.update({"lanes": architecture.simd_lanes, "memory": architecture.memory,
                      "weight_words": words,
                      "weight_load_seconds": round(words * 2 * 10 / 115200, 2)})
        break
    return {"net": name, "board": "icebreaker", **(entry or {}), "tries": tries}


def board_table(entries):
    lines = ["| net | lanes | memory | clock | board Fmax | logic cells | RAM blocks | "
             "latency at the clock | weight words (load at 115200 baud) | bitstream |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        if "clock_mhz" not in e:
            failure = e["tries"][-1]["failure"] if e["tries"] else "-"
            lines.append(f"| {e['net']} | | | not built: {failure} | | | | | | |")
            continue
        r = e["resources"]
        cells, rams = r.get("ICESTORM_LC", {}), r.get("ICESTORM_RAM", {})
        lines.append(f"| {e['net']} | {e['lanes']} | {e['memory']} | {e['clock_mhz']:.3f} MHz | "
                     f"{e['fmax_mhz']:.1f} MHz | {cells.get('used', 0):,} / "
                     f"{cells.get('available', 0):,} | {rams.get('used', 0)} | "
                     f"{e['latency_ms_at_clock']:.2f} ms | {e['weight_words']:,} "
                     f"({e['weight_load_seconds']} s) | {e['bitstream_bytes']:,} bytes, "
                     f"sha256 {e['sha256'][:12]} |")
    return "\n".join(lines)


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
    parser.add_argument("--bitstreams", action="store_true",
                        help="also build each net's iCEBreaker bitstream (UP5K)")
    parser.add_argument("--keep", help="with --bitstreams: copy the bitstreams here")
    parser.add_argument("--lanes", nargs="+", type=int, default=[], choices=(1, 2, 4, 8),
                        help="also each net at these lanes (lane_runs; each tool stopped "
                             "after --timeout seconds)")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--no-default", action="store_true",
                        help="only the --lanes runs, not the part's own choice")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # untrained nets: no empty-layer warnings wanted here
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.update({"benchmark": "sequential",
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}})
    entries = {(e["net"], e["part"]): e for e in report.get("runs", [])}
    boards = {e["net"]: e for e in report.get("bitstreams", [])}
    lane_runs = {(e["net"], e["part"], e["lanes"]): e for e in report.get("lane_runs", [])}
    for name in args.nets:
        graph, x = net_inputs(name)
        for part in args.parts:
            for lanes in args.lanes:
                entry = measure(name, graph, x, part, lanes, args.timeout)
                lane_runs[(name, part, lanes)] = entry
                report["lane_runs"] = sorted(lane_runs.values(), key=lambda e: (
                    NETS.index(e["net"]), e["part"], e["lanes"]))
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=2) + "\n")
                print(json.dumps(entry)[:600], flush=True)
            if args.no_default:
                continue
            entry = measure(name, graph, x, part)
            entries[(name, part)] = entry
            report["runs"] = sorted(entries.values(), key=lambda e: (NETS.index(e["net"]),
                                                                     e["part"]))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(entry)[:600], flush=True)
            fmax = entry["synthesis"].get("fmax_mhz")
            if args.bitstreams and part == "ice40-up5k" and fmax:
                boards[name] = bitstream(name, graph, x, fmax, args.keep)
                report["bitstreams"] = sorted(boards.values(),
                                              key=lambda e: NETS.index(e["net"]))
                out.write_text(json.dumps(report, indent=2) + "\n")
                print(json.dumps(boards[name])[:600], flush=True)
    print(table(report.get("runs", [])))
    if report.get("bitstreams"):
        print(board_table(report["bitstreams"]))
    print(f"JSON in {out}")


if __name__ == "__main__":
    main()
