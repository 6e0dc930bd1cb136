"""The ``zeroskip`` command.

Bad input (a malformed graph file, an unsupported model, a missing tool) ends in one line on
stderr naming what is wrong and where, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ZeroskipError

EXIT_BAD_INPUT = 2


def _write_json(data, path):
    path = Path(path)
    if not path.parent.is_dir():
        raise ZeroskipError(f"--json: directory {str(path.parent)!r} does not exist")
    path.write_text(json.dumps(data, indent=2) + "\n")


def _doctor(args):
    from . import toolchain

    if args.json and not Path(args.json).parent.is_dir():
        raise ZeroskipError(f"--json: directory {str(Path(args.json).parent)!r} does not exist")
    return toolchain.run_doctor(smoke=not args.no_smoke, json_path=args.json)


def _demo(args):
    from . import demo

    if not 0 <= args.sparsity < 1:
        raise ZeroskipError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    settings = demo.DemoSettings(sparsity=args.sparsity)
    print(f"zeroskip demo: train a digits CNN, prune {100 * args.sparsity:.0f} % of its "
          "weights, int8 QAT, export", flush=True)
    result, _ = demo.run(settings, out_dir=args.out)
    print(result.format_table())
    if args.out:
        print(f"graph written to {Path(args.out) / 'digits.zsg'}")
    if args.json:
        _write_json(result.to_dict(), args.json)
    return 0


def _load_inputs(path, graph):
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise ZeroskipError(f"--inputs: no such file {str(path)!r}")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ZeroskipError(f"--inputs: {str(path)!r} is not a readable .npy file: "
                            f"{error}") from None
    if not isinstance(x, np.ndarray):
        raise ZeroskipError(f"--inputs: {str(path)!r} must hold one array, not an archive")
    if np.issubdtype(x.dtype, np.floating):
        return graph.quantize_input(x)
    return x


def _stats(args):
    from .ir import load
    from .analysis import stats

    graph = load(args.graph)
    x_int = _load_inputs(args.inputs, graph) if args.inputs else None
    summary = stats(graph, x_int)
    print(summary.format_table())
    if args.json:
        _write_json(summary.to_dict(), args.json)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="zeroskip", description="Pruned, quantized PyTorch networks to Verilog engines "
        "that skip zero weights and zero activations at run time.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = commands.add_parser("doctor", help="list each tool, its version and a smoke test")
    doctor.add_argument("--no-smoke", action="store_true", help="versions only, no smoke tests")
    doctor.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    doctor.set_defaults(run=_doctor)

    demo = commands.add_parser("demo", help="the built-in digits flow, end to end")
    demo.add_argument("--sparsity", type=float, default=0.9,
                      help="fraction of weights pruned (default 0.9)")
    demo.add_argument("--out", metavar="DIR", help="write the exported graph here")
    demo.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    demo.set_defaults(run=_demo)

    stats = commands.add_parser("stats", help="parameters, storage and MACs of a graph file")
    stats.add_argument("graph", help="a graph file written by Graph.save")
    stats.add_argument("--inputs", metavar="X.npy",
                       help="inputs (float, or integers of the input encoding) for effective "
                            "MACs")
    stats.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    stats.set_defaults(run=_stats)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ZeroskipError as error:
        print(f"zeroskip: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
