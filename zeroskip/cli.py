"""The ``zeroskip`` command.

Bad input (a malformed graph file, an unsupported model, a missing tool) ends in one line on
stderr naming what is wrong and where, and exit status 2; never a traceback. A warning (a layer
without weights, say) is one line ``zeroskip: warning: ...`` on stderr, and the command goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

from .errors import SimulationMismatch, ZeroskipError, ZeroskipWarning

EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 1  # the RTL disagreed with the golden model
EXIT_NO_FIT = 1  # `zeroskip synth`: the design does not fit the part (or nextpnr failed)

#: Multiplier budget of ``--lanes auto`` when ``--multipliers`` is not given.
DEFAULT_MULTIPLIERS = 16


def _write_json(data, path):
    _check_json_path(path)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _doctor(args):
    from . import toolchain

    _check_json_path(args.json)
    return toolchain.run_doctor(smoke=not args.no_smoke, json_path=args.json)


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
    if path and not Path(path).parent.is_dir():
        raise ZeroskipError(f"--json: directory {str(Path(path).parent)!r} does not exist")
    if path and Path(path).is_dir():
        raise ZeroskipError(f"--json: {str(path)!r} is a directory, not a file path")


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
    from .design import compile as compile_graph
    from .ir import load

    _check_json_path(args.json)
    graph = load(args.graph)
    calibration = _load_inputs(args.calibration, graph, "--calibration") \
        if args.calibration else None
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ZeroskipError(f"-o: {str(output)!r} exists and is not a directory")
    design = compile_graph(graph, args.lanes, zero_skip=not args.dense,
                           multipliers=args.multipliers if args.lanes == "auto" or
                           args.multipliers_given else None,
                           calibration=calibration, chunk=args.chunk,
                           layer_counters=not args.no_layer_counters,
                           architecture="sequential" if args.sequential else "dataflow")
    design.write(output)
    print(design.report(), end="")
    print(f"wrote {output / (design.top + '.v')}, manifest.json, report.txt, graph.zsg")
    if args.json:
        _write_json(design.manifest(), args.json)
    return 0


def _sim(args):
    import numpy as np

    _check_json_path(args.json)
    from .design import Design
    from .simulation import SimulationSummary
    from .testbench.fast import ProgressBar

    design = Design.load(args.build)
    x_int = _load_inputs(args.inputs, design.graph, "--inputs")
    labels = None
    if args.labels:
        labels = _load_labels(args.labels, len(x_int))
    result = design.simulate(x_int, idle_probability=args.idle,
                             backpressure_probability=args.backpressure, seed=args.seed,
                             waves=args.waves, progress=ProgressBar(sys.stderr))
    summary = SimulationSummary.of(design, x_int, result, labels)
    print(summary.format_table())
    Path(args.build, "sim.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if args.outputs:
        np.save(args.outputs, result.outputs)
    if args.json:
        _write_json(summary.to_dict(), args.json)
    return 0


def _report(args):
    from .design import Design

    _check_json_path(args.json)
    design = Design.load(args.build)  # checks the build is whole and consistent
    report = {"design": json.loads(Path(args.build, "manifest.json").read_text())}
    # The report written at compile time carries the folding's estimates (they need the
    # calibration inputs, which the build does not keep).
    saved = Path(args.build, "report.txt")
    text = saved.read_text() if saved.is_file() else design.report()
    measured = Path(args.build, "sim.json")
    if measured.is_file():
        from .simulation import SimulationSummary

        summary = SimulationSummary.from_dict(json.loads(measured.read_text()))
        report["simulation"] = summary.to_dict()
        text += "\nlast co-simulation (sim.json):\n" + summary.format_table() + "\n"
    print(text, end="")
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
    from .design import Design

    check_board_options(args.board, args.clock, args.baud)  # before the build is even read
    design = Design.load(args.build)
    try:
        result = build_board(design, args.build, args.board, clock_mhz=args.clock,
                             baud=args.baud, log=lambda line: print(line, flush=True))
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
    except host.LinkError as error:
        raise ZeroskipError(f"--port {args.port}: {error}") from None
    except host.InputMismatch as error:
        raise ZeroskipError(f"--inputs: {args.inputs!r}: {error}") from None
    clk = run.description.clk_freq
    summary = {"port": args.port, "baud": args.baud, "clk_freq": clk,
               "design_id": f"{run.description.design_id:08x}", "images": len(x_int),
               "classes": run.labels.tolist(),
               "latency_cycles": run.latency_cycles.tolist(),
               "latency_us_mean": float(np.mean(run.latency_seconds) * 1e6),
               "link_ms_per_image": float(np.mean(run.wall_seconds) * 1e3)}
    lines = [f"board: design {summary['design_id']} at {clk / 1e6:g} MHz, {args.baud} baud, "
             f"{len(x_int)} images",
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


def build_parser():
    from .boards.synth import TARGETS

    parser = argparse.ArgumentParser(
        prog="zeroskip", description="Pruned, quantized PyTorch networks to Verilog engines "
        "that skip zero weights and zero activations at run time.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = commands.add_parser("doctor", help="list each tool, its version and a smoke test")
    doctor.add_argument("--no-smoke", action="store_true", help="versions only, no smoke tests")
    doctor.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    doctor.set_defaults(run=_doctor)

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
    compile_.add_argument("--chunk", type=int, default=32, metavar="N",
                          help="input channels a conv engine examines at once (default 32)")
    compile_.add_argument("--no-layer-counters", action="store_true",
                          help="keep only the network's counters (latency, interval): saves "
                               "each engine's on small FPGAs")
    compile_.add_argument("--sequential", action="store_true",
                          help="one engine that runs the layers one after another (conv2d, "
                               "linear, maxpool2d chains): fits the smallest FPGAs, one "
                               "multiplier, no per-layer counters")
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
    report.set_defaults(run=_report)

    run = commands.add_parser(
        "run", help="run inputs on a board through its UART link, checked against the golden "
        "model", description="Send each input image to a board built with `zeroskip "
        "build-board` and print its class and latency. Inputs in X.npy are floats (quantized "
        "with the graph's input scale, which needs --build) or integers of the input encoding. "
        "With --build, checks that the board runs that build and that every output equals the "
        "golden model's (exit 1 if not).")
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
        "timing at the clock.")
    board.add_argument("build", help="a build directory written by `zeroskip compile`")
    board.add_argument("--board", required=True, metavar="BOARD",
                       help="icebreaker (iCE40UP5K) or ulx3s (ECP5 LFE5U-85F)")
    board.add_argument("--clock", type=float, default=None, metavar="MHZ",
                       help="the design clock made by the PLL (default 16.5 on the iCEBreaker, "
                            "50 on the ULX3S)")
    board.add_argument("--baud", type=int, default=115200, metavar="N",
                       help="UART bit rate (default 115200)")
    board.set_defaults(run=_build_board)
    return parser


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


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "compile":
        args.multipliers_given = args.multipliers is not None
        if args.multipliers is None:
            args.multipliers = DEFAULT_MULTIPLIERS
    try:
        with _warnings_as_lines():
            return args.run(args)
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
