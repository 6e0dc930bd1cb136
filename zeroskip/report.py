"""``zeroskip report BUILD --html``: one self-contained HTML page of a build, with plots.

What the page shows, and where each figure comes from:

* per layer (conv / linear): weight sparsity (the manifest's weights), the input activations'
  sparsity, dense and effective MACs per inference (the golden model on the testbench's
  vectors, ``tb/inputs.npy``), the lanes;
* estimated cycles per layer (the folding model, when the compile had calibration inputs) and
  the bound that binds each, against the cycles measured in the last co-simulation
  (``sim.json``: each engine's busy cycles per inference, the initiation interval);
* the co-simulation's timeline: each inference from its first input beat to its last output
  beat, as the per-inference latencies and intervals place it;
* resources against the part's capacity and Fmax, from every ``synth-<part>.json``; and the
  compile's ``target`` section (estimated resources, capacity, the binding constraint).

Plots are PNG images drawn by matplotlib (Agg, no display) and inlined as base64 ``data:``
URLs; the page loads nothing else.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from . import ir, reference
from .build import SIM_FILE, TESTBENCH_DIR, read_json
from .errors import ZeroskipError

__all__ = ["TIMELINE_INFERENCES", "default_path", "html_report", "layer_rows"]

#: Inferences the timeline draws (the first ones: the pipeline filling, then steady state).
TIMELINE_INFERENCES = 24

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
"""


def _figure_png(figure):
    """A matplotlib figure as an ``<img>`` with its PNG inlined."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _table(header, rows):
    """An HTML table; no header row when ``header`` is None."""
    cells = "" if header is None else \
        "<tr>" + "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f"<table>{cells}{body}</table>"


def layer_rows(build):
    """Per conv / linear layer: a dict of what the page shows (see the module doc), measured
    on the testbench's inputs with the golden model."""
    graph = ir.load(build.graph_path)
    x = _testbench_inputs(build, graph)
    values = reference.run_layers(graph, x) if x is not None else None
    work = reference.work(graph, x)
    nodes = {node.name: node for node in graph.nodes}
    rows = []
    for entry in build.manifest["layers"]:
        if "weights" not in entry:
            continue
        node = nodes[entry["name"]]
        layer = work[entry["name"]]
        inputs = values[node.input] if values is not None else None
        # A sequential engine's layers list no lanes of their own: they run on the engine's.
        lanes = entry["lanes"] or build.manifest.get("lanes") or 1
        rows.append({
            "name": entry["name"], "op": entry["op"], "lanes": lanes,
            "weight_sparsity": 1 - entry["nonzero_weights"] / entry["weights"],
            "activation_sparsity": None if inputs is None or graph.acts[node.input].binary
            else float(np.mean(inputs == 0)),
            "dense_macs": layer.dense_macs,
            "effective_macs": getattr(layer, "effective_macs", None),
            "estimated_cycles": entry.get("estimated_cycles"),
            # Without the compile's estimates, the ideal on the testbench's inputs.
            "ideal_cycles": entry.get("ideal_cycles", None if x is None else
                                      layer.effective_macs / lanes),
            "bound": entry.get("bound")})
    return rows, (0 if x is None else len(x))


def _testbench_inputs(build, graph):
    name = f"{TESTBENCH_DIR}/inputs.npy"
    if name not in build.manifest["files"]:
        return None
    try:
        return reference.validate_input(graph, np.load(build.path / name, allow_pickle=False))
    except (ValueError, OSError) as error:
        raise ZeroskipError(f"{str(build.path / name)!r} is not the testbench's inputs: "
                            f"{error}") from None


def _layer_section(rows, count, simulation):
    plt = _pyplot()
    names = [row["name"] for row in rows]
    positions = np.arange(len(rows))
    figure, (sparsity, macs, lanes) = plt.subplots(1, 3, figsize=(13, 3.6))
    sparsity.bar(positions - 0.2, [100 * row["weight_sparsity"] for row in rows], 0.4,
                 label="weights")
    sparsity.bar(positions + 0.2, [100 * (row["activation_sparsity"] or 0) for row in rows],
                 0.4, label="input activations")
    sparsity.set(title="sparsity (% zeros)", xticks=positions, xticklabels=names, ylim=(0, 100))
    sparsity.legend(fontsize=8)
    macs.bar(positions - 0.2, [row["dense_macs"] for row in rows], 0.4, label="dense")
    macs.bar(positions + 0.2, [row["effective_macs"] or 0 for row in rows], 0.4,
             label="effective (both nonzero)")
    macs.set(title="MACs per inference", xticks=positions, xticklabels=names, yscale="log")
    macs.legend(fontsize=8)
    lanes.bar(positions, [row["lanes"] for row in rows], 0.5, color="tab:green")
    lanes.set(title="lanes (multipliers)", xticks=positions, xticklabels=names)
    measured = {layer["name"]: layer for layer in (simulation or {}).get("layers", [])}
    table = _table(
        ("layer", "op", "lanes", "weight sparsity", "activation sparsity", "dense MACs",
         "effective MACs", "est. cycles", "bound", "measured effective MACs"),
        [(row["name"], row["op"], row["lanes"], f"{100 * row['weight_sparsity']:.1f} %",
          "-" if row["activation_sparsity"] is None else
          f"{100 * row['activation_sparsity']:.1f} %", f"{row['dense_macs']:,}",
          "-" if row["effective_macs"] is None else f"{row['effective_macs']:,.0f}",
          row["estimated_cycles"] if row["estimated_cycles"] is not None else "-",
          row["bound"] or "-",
          f"{measured[row['name']]['effective_macs']:,.0f}" if row["name"] in measured
          else "-") for row in rows])
    note = (f"Activation sparsity and MACs: the golden model on the testbench's {count} inputs "
            f"({TESTBENCH_DIR}/inputs.npy); measured: the last co-simulation ({SIM_FILE}).")
    return ("<h2>Layers</h2>" + _figure_png(figure) + table + f'<p class="note">{note}</p>')


def _cycles_section(rows, simulation):
    plt = _pyplot()
    measured = {layer["name"]: layer for layer in (simulation or {}).get("layers", [])}
    inferences = (simulation or {}).get("inferences") or 1
    names = [row["name"] for row in rows]
    positions = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(9, 3.6))
    axes.bar(positions - 0.27, [row["estimated_cycles"] or 0 for row in rows], 0.27,
             label="estimated (folding model)")
    axes.bar(positions, [row["ideal_cycles"] or 0 for row in rows], 0.27,
             label="ideal (effective MACs / lanes)")
    axes.bar(positions + 0.27, [measured[name]["busy_cycles"] / inferences
                                if name in measured else 0 for name in names], 0.27,
             label="measured busy cycles (engine counter)")
    if simulation:
        axes.axhline(simulation["interval_cycles"], color="black", linestyle="--",
                     label=f"measured interval {simulation['interval_cycles']:.0f}")
    for position, row in zip(positions, rows):
        if row["bound"]:
            axes.annotate(row["bound"], (position - 0.27, row["estimated_cycles"] or 0),
                          ha="center", va="bottom", fontsize=7)
    axes.set(title="cycles per inference, per layer", xticks=positions, xticklabels=names)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    lines = []
    estimated = [row for row in rows if row["estimated_cycles"] is not None]
    if estimated:
        slowest = max(estimated, key=lambda row: row["estimated_cycles"])
        lines.append(f"estimated interval {slowest['estimated_cycles']:.0f} cycles: layer "
                     f"{slowest['name']!r}, {slowest['bound']}-bound")
    else:
        lines.append("no estimates: the compile had no calibration inputs")
    if simulation:
        lines.append(f"measured interval {simulation['interval_cycles']:.0f} cycles (median), "
                     f"latency {simulation['latency_cycles']:.0f} cycles (mean), "
                     f"{simulation['bit_exact']}/{simulation['inferences']} inferences "
                     "bit-exact")
    else:
        lines.append(f"no co-simulation recorded ({SIM_FILE}): run `zeroskip sim`")
    return ("<h2>Cycles</h2>" + _figure_png(figure) +
            "".join(f"<p>{html.escape(line)}</p>" for line in lines))


def _timeline_section(simulation):
    latencies = (simulation or {}).get("latencies") or []
    if not latencies:
        return ""
    plt = _pyplot()
    intervals = list(simulation.get("intervals") or [])
    count = min(len(latencies), TIMELINE_INFERENCES)
    # The last output of inference 0 is its latency after the first input; each next one
    # leaves an interval after the one before.
    ends = np.concatenate([[latencies[0]], latencies[0] + np.cumsum(intervals)])[:count]
    starts = ends - np.asarray(latencies[:count])
    figure, axes = plt.subplots(figsize=(9, 0.25 * count + 1.2))
    axes.barh(np.arange(count), ends - starts, left=starts, height=0.6, color="tab:blue")
    axes.set(title=f"co-simulation timeline: the first {count} of {len(latencies)} "
                   "inferences (first input beat to last output beat)",
             xlabel="cycle", ylabel="inference", ylim=(count, -1))
    return "<h2>Timeline</h2>" + _figure_png(figure)


def _resources_section(build):
    plt = _pyplot()
    reports = []
    for path in sorted(build.path.glob("synth-*.json")):
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("capacity"), dict):
            reports.append(data)
    target = build.manifest.get("target")
    parts = []
    for title, used, capacity, extra in (
            [(f"{r['target']} (Yosys, nextpnr)", r, r["capacity"],
              f"Fmax {r['fmax_mhz']:.1f} MHz (target {r['target_mhz']:g} MHz)"
              if r.get("fmax_mhz") else "Fmax: nextpnr did not finish") for r in reports] +
            ([(f"{target['part']} (the compile's resource model, --target)",
               target["estimated_resources"], target["capacity"],
               f"binding: {target.get('binding')}")] if target else [])):
        names = [name for name, available in capacity.items() if available]
        share = [100 * used.get(name, 0) / capacity[name] for name in names]
        figure, axes = plt.subplots(figsize=(7, 2.8))
        axes.bar(names, share, color=["tab:red" if s > 100 else "tab:blue" for s in share])
        axes.axhline(100, color="black", linestyle="--")
        axes.set(title=title, ylabel="% of the part")
        rows = [(name, used.get(name, 0), capacity[name], f"{s:.1f} %")
                for name, s in zip(names, share)]
        parts.append(f"<h3>{html.escape(title)}</h3>{_figure_png(figure)}"
                     f"{_table(('resource', 'used', 'available', 'share'), rows)}"
                     f"<p>{html.escape(extra)}</p>")
    if not reports:
        parts.insert(0, "<p>no synthesis recorded: run `zeroskip synth BUILD --target "
                        "PART`</p>")
    return "<h2>Resources</h2>" + "".join(parts)


def html_report(build, simulation=None):
    """The page of a checked :class:`zeroskip.build.Build`, as text; ``simulation`` is its
    recorded co-simulation (``sim.json`` as :meth:`~zeroskip.build.Build.read_result` gives
    it), if any."""
    manifest = build.manifest
    rows, count = layer_rows(build)
    summary = [("top", manifest["top"]), ("graph", manifest["graph"]),
               ("architecture", manifest.get("architecture", "dataflow")),
               ("zero skipping", "yes" if manifest.get("zero_skip", True) else "no (dense)"),
               ("input", f"{manifest['in_shape']}"), ("output", f"{manifest['out_shape']}")]
    body = [f"<h1>zeroskip report: {html.escape(manifest['top'])}</h1>",
            _table(None, summary)]
    if rows:
        body += [_layer_section(rows, count, simulation), _cycles_section(rows, simulation)]
    body += [_timeline_section(simulation), _resources_section(build)]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>zeroskip report: {html.escape(manifest['top'])}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def default_path(build):
    """Where ``--html`` without a path writes: ``BUILD/report.html``."""
    return Path(build.path) / "report.html"

