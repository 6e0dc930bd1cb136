"""zeroskip.compiler: the decisions between the IR and the engines.

:func:`choose` takes a graph and the user's options and returns an architecture
(:class:`~.architecture.Pipeline` or :class:`~.architecture.Sequential`): the layers as the
engines see them (:mod:`.layers`), the lanes of every conv / linear layer (given, or folded on a
calibration batch: :mod:`.folding`), and the static plans, made once. :func:`zeroskip.compile`
wraps the result in a :class:`zeroskip.design.Design`, which gives the Verilog, the build
directory and the co-simulation.
"""

from __future__ import annotations

import math
import warnings

from .. import ir, reference
from ..errors import ZeroskipError, ZeroskipWarning
from .architecture import Estimate, Pipeline, Sequential, check_count
from .folding import Calibration
from .layers import WEIGHT_LAYERS, LayerSpec, counter_names, network_layers

__all__ = ["ARCHITECTURES", "DEFAULT_CHUNK", "Estimate", "Pipeline", "Sequential", "choose"]

#: Input channels a conv engine examines at once, unless told otherwise.
DEFAULT_CHUNK = 32

#: ``dataflow``: an engine per layer, all layers at once; ``sequential``: one engine runs the
#: layers one after another, for the smallest FPGAs.
ARCHITECTURES = {Pipeline.name: Pipeline, Sequential.name: Sequential}


def _chosen_lanes(graph, lanes, weight_layers, multipliers, calibration, chunk, zero_skip):
    """Lanes per conv / linear layer from the ``lanes`` option; checked against the budget."""
    if isinstance(lanes, str):
        if lanes != "auto":
            raise ZeroskipError(f"lanes must be an integer, a dict or 'auto', got {lanes!r}")
        if multipliers is None:
            raise ZeroskipError("lanes='auto' folds a multiplier budget over the layers: give "
                                "multipliers=N (CLI: --multipliers N), and calibration inputs "
                                "to fold on the work left after skipping zeros (--calibration "
                                "X.npy)")
        check_count("multipliers", multipliers)
        if calibration is None:
            warnings.warn("lanes='auto' without calibration inputs folds on the weights alone "
                          "(every activation taken as nonzero); give calibration inputs to "
                          "fold on the work left after skipping zero activations",
                          ZeroskipWarning, stacklevel=4)
            calibration = Calibration(graph, None, chunk)
        chosen = calibration.fold(multipliers, zero_skip=zero_skip)
    elif isinstance(lanes, dict):
        names = {node.name for node in weight_layers}
        unknown = sorted(set(lanes) - names)
        missing = sorted(names - set(lanes))
        if unknown or missing:
            raise ZeroskipError(f"lanes must name every conv2d / linear layer {sorted(names)}; "
                                + (f"unknown {unknown}" if unknown else f"missing {missing}"))
        chosen = dict(lanes)
    else:
        check_count("lanes", lanes)
        chosen = {node.name: min(lanes, node.out_channels) for node in weight_layers}
    if multipliers is not None:
        check_count("multipliers", multipliers)
    for node in weight_layers:
        value = chosen[node.name]
        if not isinstance(value, int) or isinstance(value, bool) or \
                not 1 <= value <= node.out_channels:
            raise ZeroskipError(f"node {node.name!r}: lanes must be between 1 and its "
                                f"{node.out_channels} output channels, got {value!r}")
    if multipliers is not None and sum(chosen.values()) > multipliers:
        raise ZeroskipError(f"the layers' lanes add up to {sum(chosen.values())} multipliers, "
                            f"more than the budget of {multipliers}")
    return chosen


def _argmax(graph, argmax):
    """Whether the design gives the class of its output: ``argmax`` checked, or the default
    (a flat output, unless it has as many values as the input)."""
    out_shape = graph.shapes[graph.output]
    flat = len(out_shape) == 1
    if argmax is None:
        return flat and math.prod(out_shape) != math.prod(graph.shapes[graph.input.name])
    if not isinstance(argmax, bool):
        raise ZeroskipError(f"argmax must be True, False or None, got {argmax!r}")
    if argmax and not flat:
        raise ZeroskipError(f"argmax needs a flat output; graph {graph.name!r} outputs "
                            f"{tuple(out_shape)} from node {graph.output!r}")
    return argmax


def _choose_for_target(graph, target, lanes, zero_skip, multipliers, calibration, chunk,
                       architecture, argmax):
    """``choose`` with ``target``: the search of :mod:`.target` makes the decisions."""
    from .target import choose_for_target

    if lanes != 1 or architecture != Pipeline.name:
        raise ZeroskipError("target=PART chooses the architecture and the lanes itself: give "
                            "neither lanes nor architecture with it (multipliers=N caps it)")
    if multipliers is not None:
        check_count("multipliers", multipliers)
    if chunk is not None:
        check_count("chunk", chunk, 64)
    if calibration is None:
        warnings.warn("target=PART without calibration inputs folds on the weights alone "
                      "(every activation taken as nonzero); give calibration inputs to fold "
                      "on the work left after skipping zero activations", ZeroskipWarning,
                      stacklevel=4)
    else:
        calibration = reference.validate_input(graph, calibration)
    choice = choose_for_target(
        graph, target, Calibration(graph, calibration, chunk or DEFAULT_CHUNK)
        if calibration is not None else None, multipliers=multipliers, chunk=chunk,
        zero_skip=zero_skip, choose=choose)
    chosen = choose(graph, **choice.options, calibration=calibration, argmax=argmax)
    chosen.target_choice = choice
    return chosen


def choose(graph, lanes=1, zero_skip=True, *, multipliers=None, calibration=None,
           chunk=None, layer_counters=True, architecture="dataflow", argmax=None, target=None):
    """The architecture of a graph with every decision made; see :func:`zeroskip.compile` for
    the parameters. A ZeroskipError names what cannot be built."""
    if not isinstance(graph, ir.Graph):
        raise ZeroskipError(f"compile takes a zeroskip.ir.Graph, got {type(graph).__name__}")
    if target is not None:
        return _choose_for_target(graph, target, lanes, zero_skip, multipliers, calibration,
                                  chunk, architecture, argmax)
    chunk = DEFAULT_CHUNK if chunk is None else chunk
    check_count("chunk", chunk, 64)
    kind = ARCHITECTURES.get(architecture) if isinstance(architecture, str) else None
    if kind is None:
        raise ZeroskipError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got "
                            f"{architecture!r}")
    kind.check_options(lanes=lanes, multipliers=multipliers, zero_skip=zero_skip)
    zero_skip = bool(zero_skip)
    argmax = _argmax(graph, argmax)
    found = network_layers(graph)
    weight_layers = [node for node, *_ in found if isinstance(node, WEIGHT_LAYERS)]
    if calibration is not None:
        # Run through the golden model once, for the folding and the estimates alike.
        calibration = Calibration(graph, reference.validate_input(graph, calibration), chunk)
    chosen = _chosen_lanes(graph, lanes, weight_layers, multipliers, calibration, chunk,
                           zero_skip)
    idents = counter_names([node.name for node, *_ in found])
    layers = [LayerSpec(node, sources, in_shapes, in_acts, chosen.get(node.name, 0),
                        idents[node.name])
              for node, sources, in_shapes, in_acts in found]
    chosen_architecture = kind(
        graph, layers, chosen, zero_skip=zero_skip, chunk=chunk, multipliers=multipliers,
        layer_counters=bool(layer_counters) and kind.LAYER_COUNTERS, calibration=calibration,
        argmax=argmax)
    try:
        chosen_architecture.check()
    except ValueError as error:
        raise ZeroskipError(f"graph {graph.name!r}: {error}") from None
    return chosen_architecture
