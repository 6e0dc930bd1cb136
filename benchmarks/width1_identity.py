"""Width 1 changes nothing: the Verilog of a representative set of designs, hashed.

    python benchmarks/width1_identity.py --write FILE     # record the hashes (e.g. on the base)
    python benchmarks/width1_identity.py --compare FILE   # compile again, compare, exit 1 if any
                                                          # differs

The set covers every engine and joint the pipeline builds: a residual net (fork, FIFOs, add,
depthwise, average pool, flatten, argmax) zero-skip and dense, a pooled net, a mixed binary net
(XNOR engines, thresholds), a net folded with ``lanes="auto"``, the sequential architecture,
the host link around a network, and the MLPerf Tiny DS-CNN and autoencoder. Designs folded
automatically are compiled with ``stream_width=1, pack=False`` where the compiler takes them
(streams of one activation, no packed scans): what the base branch builds.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import zeroskip  # noqa: E402
from zeroskip import models  # noqa: E402
from zeroskip.hdl.verilog import convert  # noqa: E402


def _narrow(kwargs):
    """``stream_width=1, pack=False`` for a compiler that knows them."""
    parameters = inspect.signature(zeroskip.compile).parameters
    if "stream_width" in parameters:
        kwargs.update(stream_width=1, pack=False)
    return kwargs


def designs():
    """Name -> a function giving the Verilog text."""
    from test_binary_ir import mixed_graph
    from test_folding import small_net
    from test_hdl_conv import random_inputs
    from test_network import pooled_graph, residual_graph

    def residual(**kwargs):
        return lambda: zeroskip.compile(residual_graph(np.random.default_rng(3)),
                                        **kwargs).verilog()

    def auto():
        rng = np.random.default_rng(4)
        graph = small_net(rng)
        x = random_inputs(rng, graph, batch=6)
        return zeroskip.compile(graph, **_narrow(dict(lanes="auto", multipliers=9,
                                                      calibration=x))).verilog()

    def link():
        from zeroskip.boards.link import HostLink
        design = zeroskip.compile(pooled_graph(np.random.default_rng(2)), lanes=1)
        return convert(HostLink(design, clk_freq=12_000_000), "link")

    def mlperf(name, **kwargs):
        def make():
            made = models.mlperf_graph(name)
            if kwargs.get("lanes") == "auto":
                _narrow(kwargs)
                kwargs["calibration"] = made.inputs_int[:16]
            return zeroskip.compile(made.graph, **kwargs).verilog()
        return make

    return {
        "residual_skip_lanes2": residual(lanes=2),
        "residual_dense": residual(lanes=1, zero_skip=False),
        "residual_chunk8_no_counters": residual(lanes=3, chunk=8, layer_counters=False),
        "pooled": lambda: zeroskip.compile(pooled_graph(np.random.default_rng(2)),
                                           lanes=1).verilog(),
        "pooled_sequential": lambda: zeroskip.compile(pooled_graph(np.random.default_rng(2)),
                                                      architecture="sequential",
                                                      chunk=3).verilog(),
        "binary_mixed_lanes2": lambda: zeroskip.compile(mixed_graph(0), lanes=2).verilog(),
        "auto_folded": auto,
        "host_link": link,
        "kws_dscnn_lanes1": mlperf("kws_dscnn", lanes=1),
        "kws_dscnn_auto64": mlperf("kws_dscnn", lanes="auto", multipliers=64),
        "ad_autoencoder_lanes2": mlperf("ad_autoencoder", lanes=2),
    }


def hashes(names=None):
    result = {}
    for name, make in designs().items():
        if names and name not in names:
            continue
        result[name] = hashlib.sha256(make().encode()).hexdigest()
        print(f"{name:32s} {result[name][:16]}", flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FILE")
    group.add_argument("--compare", metavar="FILE")
    parser.add_argument("--only", nargs="*", help="design names to do (default: all)")
    args = parser.parse_args(argv)
    if args.write:
        Path(args.write).write_text(json.dumps(hashes(args.only), indent=2) + "\n")
        return 0
    recorded = json.loads(Path(args.compare).read_text())
    now = hashes(args.only or list(recorded))
    differing = sorted(name for name in now if now[name] != recorded.get(name))
    print(f"{len(now) - len(differing)} of {len(now)} designs byte-identical"
          + (f"; differ: {', '.join(differing)}" if differing else ""))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
