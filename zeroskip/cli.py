"""The ``zeroskip`` command.

Bad input (a malformed graph file, an unsupported model, a missing tool) ends in one line on
stderr naming what is wrong and where, and exit status 2; never a traceback. A warning (a layer
without weights, say) is one line ``zeroskip: warning: ...`` on stderr, and the command goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import warnings
from pathlib import Path

from .errors import SimulationMismatch, ZeroskipError, ZeroskipWarning

EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 1  # the RTL disagreed with the golden model
EXIT_NO_FIT = 1  # `zeroskip synth`: the design does not fit the part
EXIT_TERMINATED = 128 + 15  # SIGTERM, as a shell reports a process it ended

#: Multiplier budget of ``--lanes auto`` when ``--multipliers`` is not given.
DEFAULT_MULTIPLIERS = 16


def _write_json(data, path):
    _check_json_path(path)
    _write_output(path, (json.dumps(data, indent=2) + "\n").encode(), "--json")


def _write_output(path, data, option):
    """Write an output file the user named, aside and renamed into place."""
    from .build import write_result

    path = Path(path)
    try:
        write_result(path.parent, path.name, data)
    except ZeroskipError as error:
        raise ZeroskipError(f"{option}: {error}") from None


def _doctor(args):
    from . import toolchain

    _check_json_path(args.json)
    return toolchain.run_doctor(smoke=not args.no_smoke, json_path=args.json)


def _cache(args):
    from . import toolchain

    _check_json_path(args.json)
    usage = toolchain.clear_cache() if args.clear else toolchain.cache_usage()
    print(f"{'cleared ' if args.clear else ''}cache {usage.describe()}")
    if args.json:
        _write_json({"path": str(usage.path), "bytes": usage.bytes, "builds": usage.builds,
                     "runs": usage.runs, "cleared": args.clear}, args.json)
    return 0


def _demo(args):
    from . import binary_demo, demo

    if args.multipliers < 4:
        net = "binary digits net" if args.binary else "digits CNN"
        raise ZeroskipError(f"--multipliers must be at least 4 (one per conv/linear layer of "
                            f"the {net}), got {args.multipliers}")
    if args.binary:
        if args.sparsity is not None:
            raise ZeroskipError("--sparsity does not apply to --binary: the binary digits net "
                                "is not pruned (its weights are -1 / +1)")
        settings = binary_demo.BinaryDemoSettings(multipliers=args.multipliers,
                                                  hardware=not args.no_rtl)
        title, run = "zeroskip demo --binary", binary_demo.run_demo
        steps = "train a binary digits net (binary weights and activations, int8 pixels), export"
    else:
        sparsity = demo.DemoSettings.sparsity if args.sparsity is None else args.sparsity
        if not 0 <= sparsity < 1:
            raise ZeroskipError(f"--sparsity must be in [0, 1), got {sparsity}")
        settings = demo.DemoSettings(sparsity=sparsity, multipliers=args.multipliers,
                                     hardware=not args.no_rtl)
        title, run = "zeroskip demo", demo.run
        steps = "train a digits CNN, prune {:.0f} % of its weights, int8 QAT, export".format(
            100 * sparsity)
    _check_json_path(args.json)
    if settings.hardware:
        steps += (f", compile (zero-skip and dense, {args.multipliers} multipliers), "
                  "co-simulate under Verilator")
    print(f"{title}: {steps}", flush=True)
    from .testbench.fast import ProgressBar

    result, _ = run(settings, out_dir=args.out,
                    progress=ProgressBar(sys.stderr, label="RTL, test images"))
    print(result.format_table())
    if args.out:
        print(f"graph and builds written to {args.out}")
    if args.json:
        _write_json(result.to_dict(), args.json)
    return 0


def _check_json_path(path):
    """Refuse a --json path that cannot be written (its directory missing, or a directory
    itself) before any work, not after it."""
    from .build import check_output_path

    if path is not None:
        check_output_path(path, "--json")


def _load_array(path, option):
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise ZeroskipError(f"{option}: no such file {str(path)!r}")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ZeroskipError(f"{option}: {str(path)!r} is not a readable .npy file: "
                            f"{error}") from None
    if not isinstance(x, np.ndarray):
        raise ZeroskipError(f"{option}: {str(path)!r} must hold one array, not an archive")
    return x


def _load_inputs(path, graph, option="--inputs"):
    """Inputs from a .npy file: floats are quantized with the graph's input encoding; integers
    are taken as they are (and checked against the encoding)."""
    import numpy as np

    from . import reference

    x = _load_array(path, option)
    try:
        if np.issubdtype(x.dtype, np.floating):
            x = graph.quantize_input(x)
        return reference.validate_input(graph, x)
    except ZeroskipError as error:
        raise ZeroskipError(f"{option}: {str(path)!r}: {error}") from None


def _stats(args):
    from .ir import load
    from .analysis import stats

    _check_json_path(args.json)
    graph = load(args.graph)
    x_int = _load_inputs(args.inputs, graph) if args.inputs else None
    summary = stats(graph, x_int)
    print(summary.format_table())
    if args.json:
        _write_json(summary.to_dict(), args.json)
    return 0


def _import(args):
    from .frontend.qonnx import import_qonnx

    graph = import_qonnx(args.model, name=args.name)
    path = graph.save(args.output)
    layers = sum(1 for node in graph.nodes if node.op in ("conv2d", "linear"))
    print(f"{args.model} -> {path}: {len(graph.nodes)} nodes ({layers} conv2d / linear), "
          f"input {graph.input.shape}, output {graph.shapes[graph.output]}")
    return 0


def _lanes_argument(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got "
                                         f"{text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value}")
    return value


def _probability_argument(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _compile(args):
    from . import progress
    from .build import check_build_target
    from .ir import load

    _check_json_path(args.json)
    graph = load(args.graph)
    calibration = _load_inputs(args.calibration, graph, "--calibration") \
        if args.calibration else None
    if not args.output:
        raise ZeroskipError("-o: the build directory's path is empty")
    output = Path(args.output)
    check_build_target(output)  # before the compile's work, not after it
    with progress.step("compile"):
        design = _compiled(args, graph, calibration)
        design.write(output)
    print(design.report(), end="")
    print(f"wrote {output / (design.top + '.v')}, manifest.json, report.txt, graph.zsg, tb/")
    if args.json:
        _write_json(design.manifest(), args.json)
    return 0


def _compiled(args, graph, calibration):
    """The design ``compile``'s options ask for."""
    from .design import compile as compile_graph

    if args.target is not None and not args.sequential:
        if args.lanes != 1 or args.stream_width is not None or args.pack is not None:
            raise ZeroskipError("--target chooses the architecture, the lanes and the streams "
                                "itself: give none of --lanes, --stream-width and --pack with "
                                "it (--multipliers N caps it; --sequential with it chooses "
                                "the sequential engine's settings for the part)")
        design = compile_graph(graph, zero_skip=not args.dense,
                               multipliers=args.multipliers if args.multipliers_given else None,
                               calibration=calibration, chunk=args.chunk, argmax=args.argmax,
                               target=args.target)
    else:
        design = compile_graph(graph, args.lanes, zero_skip=not args.dense,
                               multipliers=args.multipliers if args.lanes == "auto" or
                               args.multipliers_given else None,
                               calibration=calibration, chunk=args.chunk,
                               layer_counters=not args.no_layer_counters,
                               architecture="sequential" if args.sequential else "dataflow",
                               argmax=args.argmax, stream_width=args.stream_width,
                               pack=args.pack, target=args.target)
    return design


def _sim(args):
    import io

    import numpy as np

    from .build import SIM_FILE, check_output_path, open_build
    from .design import Design
    from .simulation import SimulationSummary
    from .testbench.fast import ProgressBar

    _check_json_path(args.json)
    if args.outputs is not None:
        check_output_path(args.outputs, "--outputs")  # before the simulation, not after it
    build = open_build(args.build)
    design = Design.from_build(build)
    x_int = _load_inputs(args.inputs, design.graph, "--inputs")
    labels = None
    if args.labels:
        labels = _load_labels(args.labels, len(x_int))
    result = design.simulate(x_int, idle_probability=args.idle,
                             backpressure_probability=args.backpressure, seed=args.seed,
                             waves=args.waves, progress=ProgressBar(sys.stderr))
    summary = SimulationSummary.of(design, x_int, result, labels)
    print(summary.format_table())
    if result.waves is not None:
        print(f"waveform: {result.waves} (kept in the cache; `zeroskip cache --clear` "
              "removes it)")
    build.write_result(SIM_FILE, summary.to_dict())
    if args.outputs:
        saved = io.BytesIO()
        np.save(saved, result.outputs)
        _write_output(args.outputs, saved.getvalue(), "--outputs")
    if args.json:
        _write_json(summary.to_dict(), args.json)
    return 0


def _report(args):
    from .build import REPORT_FILE, SIM_FILE, open_build
    from .design import Design

    _check_json_path(args.json)
    if args.html:
        from .build import check_output_path

        check_output_path(args.html, "--html")
    build = open_build(args.build)
    Design.from_build(build)  # the Verilog is what the graph and the options compile to
    report = {"design": build.manifest}
    # The report written at compile time carries the folding's estimates (they need the
    # calibration inputs, which the build does not keep).
    text = build.read_text(REPORT_FILE)
    measured = build.read_result(SIM_FILE)
    if measured is not None:
        from .simulation import SimulationSummary

        try:
            summary = SimulationSummary.from_dict(measured)
            table = summary.format_table()
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise ZeroskipError(f"{SIM_FILE} in {str(build.path)!r} is not what `zeroskip sim` "
                                f"writes: {' '.join(str(error).split())}") from None
        report["simulation"] = summary.to_dict()
        text += f"\nlast co-simulation ({SIM_FILE}):\n" + table + "\n"
    print(text, end="")
    if args.html is not None:
        from . import report as html_report

        path = Path(args.html) if args.html else html_report.default_path(build)
        _write_output(path, html_report.html_report(build, measured).encode(), "--html")
        print(f"wrote {path}")
    if args.json:
        _write_json(report, args.json)
    return 0


def _synth(args):
    from .boards import synth

    _check_json_path(args.json)
    synth.target(args.target)  # an unknown part is refused before the build is even read
    report = synth.run(args.build, args.target, freq_mhz=args.freq, jobs=args.jobs)
    print(report.format_table(), end="")
    print(f"wrote {synth.report_path(args.build, args.target)}, logs in "
          f"{Path(args.build, 'synth-' + args.target)}")
    if args.json:
        _write_json(report.to_dict(), args.json)
    if not report.fits:
        print(f"zeroskip: {report.failure_message()}", file=sys.stderr)
        return EXIT_NO_FIT
    return 0


EXIT_BOARD_FAILED = 1  # `zeroskip build-board`: no fit, or timing missed at the clock


def _build_board(args):
    from .boards.board import BoardBuildError, build_board, check_board_options
    from .compiler.resources import estimate
    from .design import Design
    from .parts import PARTS

    spec, _ = check_board_options(args.board, args.clock, args.baud)  # before the build is read
    design = Design.load(args.build)
    # The design's estimated LUT4 sites on the board's part choose nextpnr's router.
    luts = estimate(design.architecture, PARTS[spec.part]).luts if spec.part else None
    try:
        result = build_board(design, args.build, args.board, clock_mhz=args.clock,
                             baud=args.baud, luts=luts, log=lambda line: print(line, flush=True))
    except BoardBuildError as error:
        print(f"zeroskip: build failed: {error}", file=sys.stderr)
        return EXIT_BOARD_FAILED
    print(result.summary())
    return 0

def _load_labels(path, count):
    import numpy as np

    labels = _load_array(path, "--labels")
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ZeroskipError(f"--labels: {str(path)!r} must hold {count} integer class labels "
                            f"(one per input), got {labels.dtype} of shape {labels.shape}")
    return labels


def _run_on_board(args):
    import numpy as np

    from . import host, reference
    from .design import Design

    _check_json_path(args.json)
    design = Design.load(args.build) if args.build else None
    if design is not None:
        x_int = _load_inputs(args.inputs, design.graph, "--inputs")
    else:
        x_int = _load_array(args.inputs, "--inputs")
        if not np.issubdtype(x_int.dtype, np.integer):
            raise ZeroskipError(f"--inputs: {args.inputs!r} holds {x_int.dtype} values; float "
                                "inputs need --build (the graph's input scale quantizes them)")
    if not len(x_int):
        raise ZeroskipError(f"--inputs: {args.inputs!r} holds no images")
    labels = _load_labels(args.labels, len(x_int)) if args.labels else None

    def show(index, result, description):
        label = "" if labels is None else f" (label {labels[index]})"
        micros = result.latency_cycles / description.clk_freq * 1e6
        print(f"image {index}: class {result.label}{label}, {result.latency_cycles} cycles = "
              f"{micros:.1f} us", flush=True)

    try:
        run = host.run(args.port, x_int, design=design, baud=args.baud, on_result=show)
    except host.WeightsNeeded as error:
        raise ZeroskipError(f"--port {args.port}: {error} (--build names the build directory "
                            "the weights come from)") from None
    except host.LinkError as error:
        raise ZeroskipError(f"--port {args.port}: {error}") from None
    except host.InputMismatch as error:
        raise ZeroskipError(f"--inputs: {args.inputs!r}: {error}") from None
    clk = run.description.clk_freq
    summary = {"port": args.port, "baud": args.baud, "clk_freq": clk,
               "design_id": f"{run.description.design_id:08x}", "images": len(x_int),
               "classes": run.labels.tolist(),
               "weight_words": run.weight_words, "latency_cycles": run.latency_cycles.tolist(),
               "latency_us_mean": float(np.mean(run.latency_seconds) * 1e6),
               "link_ms_per_image": float(np.mean(run.wall_seconds) * 1e3)}
    lines = [f"board: design {summary['design_id']} at {clk / 1e6:g} MHz, {args.baud} baud, "
             f"{len(x_int)} images" + (f", {run.weight_words} weight words loaded first"
                                       if run.weight_words else ""),
             f"latency, mean: {np.mean(run.latency_cycles):.0f} cycles = "
             f"{summary['latency_us_mean']:.1f} us (includes the UART's pacing)",
             f"link round trip, mean: {summary['link_ms_per_image']:.2f} ms per image"]
    if labels is not None:
        summary["accuracy"] = float(np.mean(run.labels == labels))
        lines.append(f"accuracy: {100 * summary['accuracy']:.2f} %")
    mismatch = None
    if design is not None:
        expected = reference.run(design.graph, x_int)
        wrong = np.flatnonzero((run.logits != expected).any(axis=1)
                               | (run.labels != expected.argmax(axis=1)))
        summary["golden_identical"] = len(x_int) - len(wrong)
        lines.append(f"board == golden model: {len(x_int) - len(wrong)}/{len(x_int)} images "
                     "bit-identical")
        if len(wrong):
            mismatch = (f"the board's output of image {wrong[0]} differs from the golden model "
                        f"({len(wrong)} of {len(x_int)} images differ)")
    print("\n".join(lines))
    if args.json:
        _write_json(summary, args.json)
    if mismatch:
        raise SimulationMismatch(mismatch)
    return 0


def _add_tool_commands(commands):
    """``doctor`` and ``cache``: the machine's tools and zeroskip's cache."""
    doctor = commands.add_parser("doctor", help="list each tool, its version and a smoke test")
    doctor.add_argument("--no-smoke", action="store_true", help="versions only, no smoke tests")
    doctor.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    doctor.set_defaults(run=_doctor)

    cache = commands.add_parser(
        "cache", help="where the Verilator models are cached, and how much they take",
        description="Show zeroskip's cache ($XDG_CACHE_HOME/zeroskip, or ~/.cache/zeroskip): "
        "the Verilator models, built once per design and reused, and the run directories kept "
        "(of failed runs, and of runs that dumped a waveform).")
    cache.add_argument("--clear", action="store_true",
                       help="empty it (models are built again when next needed)")
    cache.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    cache.set_defaults(run=_cache)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="zeroskip", description="Pruned, quantized PyTorch networks to Verilog engines "
        "that skip zero weights and zero activations at run time.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_tool_commands(commands)

    demo = commands.add_parser("demo", help="the built-in digits flow, end to end")
    demo.add_argument("--binary", action="store_true",
                      help="the binary digits net (XNOR-popcount engines) instead of int8")
    demo.add_argument("--sparsity", type=float,
                      help="fraction of weights pruned (int8 only; default 0.9)")
    demo.add_argument("--multipliers", type=int, default=DEFAULT_MULTIPLIERS, metavar="N",
                      help=f"multiplier budget of both designs (default {DEFAULT_MULTIPLIERS})")
    demo.add_argument("--no-rtl", action="store_true",
                      help="stop after the golden model: no compile, no co-simulation")
    demo.add_argument("--out", metavar="DIR",
                      help="write the exported graph and the build directories here")
    demo.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    demo.set_defaults(run=_demo)

    stats = commands.add_parser("stats", help="parameters, storage and MACs of a graph file")
    stats.add_argument("graph", help="a graph file written by Graph.save")
    stats.add_argument("--inputs", metavar="X.npy",
                       help="inputs (float, or integers of the input encoding) for effective "
                            "MACs")
    stats.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    stats.set_defaults(run=_stats)
    import_ = commands.add_parser(
        "import", help="a QONNX model (Brevitas's export_qonnx) to a graph file, exactly",
        description="Import a QONNX model: Quant / BipolarQuant, Conv, Gemm / MatMul, Relu, "
        "MaxPool, AveragePool, Add, Flatten / Reshape, BatchNormalization folded. What the IR "
        "cannot say exactly is refused, naming the ONNX node and the reason.")
    import_.add_argument("model", help="an ONNX file")
    import_.add_argument("-o", "--output", required=True, metavar="NET.zsg",
                         help="the graph file to write")
    import_.add_argument("--name", help="the graph's name (default: the ONNX graph's)")
    import_.set_defaults(run=_import)
    compile_ = commands.add_parser(
        "compile", help="a graph file to Verilog: one engine per layer, one top",
        description="Compile a graph file (written by Graph.save or zeroskip.export) into a "
        "build directory: the Verilog top, manifest.json, report.txt and the graph.")
    compile_.add_argument("graph", help="a graph file (.zsg)")
    compile_.add_argument("-o", "--output", required=True, metavar="BUILD",
                          help="the build directory to write")
    compile_.add_argument("--lanes", type=_lanes_argument, default=1, metavar="N|auto",
                          help="multipliers per conv/linear layer, or 'auto' to fold "
                               "--multipliers over the layers by their work after zero "
                               "skipping, measured on --calibration (default 1)")
    compile_.add_argument("--multipliers", type=int, default=None, metavar="N",
                          help=f"multiplier budget for --lanes auto (default "
                               f"{DEFAULT_MULTIPLIERS})")
    compile_.add_argument("--calibration", metavar="X.npy",
                          help="inputs (float, or integers of the input encoding) to measure "
                               "the work on; needed by --lanes auto")
    compile_.add_argument("--dense", action="store_true",
                          help="dense engines (no zero skipping), for comparison")
    compile_.add_argument("--chunk", type=int, default=None, metavar="N",
                          help="input channels a conv engine examines at once (default 32; "
                               "--lanes auto and --target choose it unless given)")
    compile_.add_argument("--target", metavar="PART", default=None,
                          help="choose the architecture, chunk and lanes so that the design "
                               "fits this FPGA part with the shortest estimated latency "
                               "(ice40-up5k, ice40-hx8k, ecp5-25k, ecp5-85k); --multipliers "
                               "caps it, --calibration inputs measure the work")
    compile_.add_argument("--no-layer-counters", action="store_true",
                          help="keep only the network's counters (latency, interval): saves "
                               "each engine's on small FPGAs")
    compile_.add_argument("--stream-width", type=_lanes_argument, default=None,
                          metavar="N|auto",
                          help="activations per beat of the streams between the engines: at "
                               "most N for every tensor, or 'auto' to widen the streams that "
                               "bind an engine, measured on --calibration (default auto with "
                               "--lanes auto, else 1)")
    compile_.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                          help="packed scans: several filters per combo in depthwise layers "
                               "and layers of few channels (default on with --lanes auto)")
    compile_.add_argument("--sequential", action="store_true",
                          help="one engine that runs the layers one after another: fits the "
                               "smallest FPGAs; --lanes 1, 2, 4, 8 or auto (SIMD lanes; auto: "
                               "chosen for --target, by default the iCE40UP5K); no per-layer "
                               "counters")
    compile_.add_argument("--argmax", action=argparse.BooleanOptionalAction, default=None,
                          help="give the class (the argmax of a flat output) on a port of its "
                               "own; by default yes for a flat output unless it has as many "
                               "values as the input (an autoencoder's reconstruction)")
    compile_.add_argument("--json", metavar="PATH", help="also write the manifest as JSON")
    compile_.set_defaults(run=_compile)

    sim = commands.add_parser(
        "sim", help="co-simulate a build under Verilator, checked against the golden model")
    sim.add_argument("build", help="a build directory written by `zeroskip compile`")
    sim.add_argument("--inputs", required=True, metavar="X.npy",
                     help="input batch (float, or integers of the input encoding)")
    sim.add_argument("--labels", metavar="Y.npy", help="class labels, for accuracy")
    sim.add_argument("--waves", action="store_true",
                     help="dump a waveform (FST, or VCD where FST cannot be built)")
    sim.add_argument("--idle", type=_probability_argument, default=0.0, metavar="P",
                     help="probability of an idle cycle on the input stream (default 0)")
    sim.add_argument("--backpressure", type=_probability_argument, default=0.0, metavar="P",
                     help="probability the output is not ready in a cycle (default 0)")
    sim.add_argument("--seed", type=int, default=0, help="seed of the random stalls")
    sim.add_argument("--outputs", metavar="OUT.npy", help="save the RTL outputs")
    sim.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    sim.set_defaults(run=_sim)

    report = commands.add_parser("report", help="a build's layers, lanes and measured cycles")
    report.add_argument("build", help="a build directory written by `zeroskip compile`")
    report.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    report.add_argument("--html", nargs="?", const="", default=None, metavar="OUT.html",
                        help="also write one self-contained HTML page with plots (default "
                             "BUILD/report.html)")
    report.set_defaults(run=_report)

    run = commands.add_parser(
        "run", help="run inputs on a board through its UART link, checked against the golden "
        "model", description="Send each input image to a board built with `zeroskip "
        "build-board` and print its class and latency. Inputs in X.npy are floats (quantized "
        "with the graph's input scale, which needs --build) or integers of the input encoding. "
        "With --build, checks that the board runs that build and that every output equals the "
        "golden model's (exit 1 if not). A board whose weights are in SPRAM gets them from "
        "--build first.")
    run.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB1")
    run.add_argument("--inputs", required=True, metavar="X.npy",
                     help="input batch (N, C, H, W) or (N, F)")
    run.add_argument("--build", metavar="BUILD",
                     help="the build directory the board was built from, to check against")
    run.add_argument("--baud", type=int, default=115200, metavar="N",
                     help="UART bit rate (default 115200)")
    run.add_argument("--labels", metavar="Y.npy", help="class labels, for accuracy")
    run.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    run.set_defaults(run=_run_on_board)

    _add_fpga_commands(commands)
    for command in commands.choices.values():
        command.add_argument("--quiet", action="store_true",
                             help="no progress output (shown on a terminal otherwise)")
    return parser


def _add_fpga_commands(commands):
    """``synth`` and ``build-board``."""
    from .boards.synth import TARGETS

    synth = commands.add_parser(
        "synth", help="synthesize, place and route a build for an FPGA part: resources, fmax",
        description="Synthesize (Yosys) and place and route (nextpnr) a build's accelerator "
        "alone, inside a three-pin wrapper, for one part; writes BUILD/synth-<target>.json and "
        "keeps the logs in BUILD/synth-<target>/. Exits 1 when the design does not fit, 2 when "
        "a tool fails (the step and its log in one line).")
    synth.add_argument("build", help="a build directory written by `zeroskip compile`")
    synth.add_argument("--target", required=True, metavar="PART",
                       help=f"the FPGA part: {', '.join(TARGETS)}")
    synth.add_argument("--freq", type=float, default=None, metavar="MHZ",
                       help="the clock frequency nextpnr aims for (default 40 on iCE40, 120 "
                            "on ECP5)")
    synth.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="Yosys processes at a time: each layer's engine is synthesized "
                            "alone (default 1)")
    synth.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    synth.set_defaults(run=_synth)

    board = commands.add_parser(
        "build-board", help="a bitstream for a board: the network behind the board's UART",
        description="Build a bitstream for an FPGA board (Yosys, nextpnr, icepack / ecppack "
        "from PyPI): the build's network behind the board's FTDI UART, clocked by the FPGA's "
        "PLL. Writes BUILD/board-<board>/ (bitstream, logs, nextpnr's timing report, "
        "board.json). Exits 1, leaving no bitstream, when the design does not fit or misses "
        "timing at the clock; a tool that fails is one line and exit 2. Either way the logs "
        "are in BUILD/board-<board>.failed/.")
    board.add_argument("build", help="a build directory written by `zeroskip compile`")
    board.add_argument("--board", required=True, metavar="BOARD",
                       help="icebreaker (iCE40UP5K) or ulx3s (ECP5 LFE5U-85F)")
    board.add_argument("--clock", type=float, default=None, metavar="MHZ",
                       help="the design clock made by the PLL (default 16.5 on the iCEBreaker, "
                            "50 on the ULX3S)")
    board.add_argument("--baud", type=int, default=115200, metavar="N",
                       help="UART bit rate (default 115200)")
    board.set_defaults(run=_build_board)


@contextlib.contextmanager
def _warnings_as_lines():
    """Print every ZeroskipWarning as one ``zeroskip: warning:`` line on stderr (each time it
    is given); other warnings as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", ZeroskipWarning)
        show = warnings.showwarning

        def show_line(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ZeroskipWarning):
                print(f"zeroskip: warning: {message}", file=sys.stderr)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_line
        yield


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every ``finally`` and ``with`` on the
    way out runs (temporary directories go, tools started are stopped)."""


def _terminate(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _terminated_as_exception():
    """While the command runs, SIGTERM raises :class:`Terminated` (in the main thread only:
    elsewhere signal handlers cannot be set, and the default stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    from . import progress

    args = build_parser().parse_args(argv)
    progress.set_quiet(args.quiet)
    if args.command == "compile":
        args.multipliers_given = args.multipliers is not None
        if args.multipliers is None:
            args.multipliers = DEFAULT_MULTIPLIERS
    try:
        with _terminated_as_exception(), _warnings_as_lines():
            return args.run(args)
    except Terminated:
        print("zeroskip: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except SimulationMismatch as error:
        print(f"zeroskip: mismatch: {error}", file=sys.stderr)
        return EXIT_MISMATCH
    except ZeroskipError as error:
        print(f"zeroskip: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as error:
        detail = " ".join(str(error).split())
        print(f"zeroskip: error: out of memory{': ' + detail if detail else ''} (the input is "
              "too large for this machine)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
