"""zeroskip.compiler: the decisions between the IR and the engines.

:func:`choose` takes a graph and the user's options and returns an architecture
(:class:`~.architecture.Pipeline` or :class:`~.architecture.Sequential`): the layers as the
engines see them (:mod:`.layers`), the lanes of every conv / linear layer (given, or folded on a
calibration batch: :mod:`.folding`), and the static plans, made once. :func:`zeroskip.compile`
wraps the result in a :class:`zeroskip.design.Design`, which gives the Verilog, the build
directory and the co-simulation.
"""

from __future__ import annotations

from .. import ir, reference
from ..errors import ZeroskipError
from .architecture import Estimate, Pipeline, Sequential, check_count
from .folding import Calibration
from .layers import WEIGHT_LAYERS, LayerSpec, counter_names, network_layers

__all__ = ["ARCHITECTURES", "DEFAULT_CHUNK", "Estimate", "Pipeline", "Sequential", "choose"]

#: Input channels a conv engine examines at once, unless told otherwise.
DEFAULT_CHUNK = 32

#: ``dataflow``: an engine per layer, all layers at once; ``sequential``: one engine runs the
#: layers one after another, for the smallest FPGAs.
ARCHITECTURES = {Pipeline.name: Pipeline, Sequential.name: Sequential}


def _chosen_lanes(lanes, weight_layers, multipliers, calibration, zero_skip):
    """Lanes per conv / linear layer from the ``lanes`` option; checked against the budget."""
    if isinstance(lanes, str):
        if lanes != "auto":
            raise ZeroskipError(f"lanes must be an integer, a dict or 'auto', got {lanes!r}")
        if multipliers is None or calibration is None:
            raise ZeroskipError("lanes='auto' folds a multiplier budget over the layers by the "
                                "work measured on calibration inputs: give multipliers=N and "
                                "calibration=x_int (CLI: --multipliers N --calibration X.npy)")
        check_count("multipliers", multipliers)
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


def choose(graph, lanes=1, zero_skip=True, *, multipliers=None, calibration=None,
           chunk=DEFAULT_CHUNK, layer_counters=True, architecture="dataflow", memory=None,
           target=None, depth=None):
    """The architecture of a graph with every decision made; see :func:`zeroskip.compile` for
    the parameters. A ZeroskipError names what cannot be built."""
    if not isinstance(graph, ir.Graph):
        raise ZeroskipError(f"compile takes a zeroskip.ir.Graph, got {type(graph).__name__}")
    check_count("chunk", chunk, 64)
    kind = ARCHITECTURES.get(architecture) if isinstance(architecture, str) else None
    if kind is None:
        raise ZeroskipError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got "
                            f"{architecture!r}")
    kind.check_options(lanes=lanes, multipliers=multipliers, zero_skip=zero_skip)
    zero_skip = bool(zero_skip)
    found = network_layers(graph)
    if kind is Sequential:
        return _sequential(graph, found, lanes, calibration=calibration, chunk=chunk,
                           memory=memory, target=target, depth=depth)
    if memory is not None or depth is not None:
        raise ZeroskipError("memory and depth are options of the sequential architecture")
    weight_layers = [node for node, *_ in found if isinstance(node, WEIGHT_LAYERS)]
    if calibration is not None:
        # Run through the golden model once, for the folding and the estimates alike.
        calibration = Calibration(graph, reference.validate_input(graph, calibration), chunk)
    chosen = _chosen_lanes(lanes, weight_layers, multipliers, calibration, zero_skip)
    idents = counter_names([node.name for node, *_ in found])
    layers = [LayerSpec(node, sources, in_shapes, in_acts, chosen.get(node.name, 0),
                        idents[node.name])
              for node, sources, in_shapes, in_acts in found]
    chosen_architecture = kind(
        graph, layers, chosen, zero_skip=zero_skip, chunk=chunk, multipliers=multipliers,
        layer_counters=bool(layer_counters) and kind.LAYER_COUNTERS, calibration=calibration)
    try:
        chosen_architecture.check()
    except ValueError as error:
        raise ZeroskipError(f"graph {graph.name!r}: {error}") from None
    return chosen_architecture


def _sequential(graph, found, lanes, *, calibration, chunk, memory, target, depth):
    settings = Sequential.choose_settings(graph, target)
    if lanes != "auto":
        settings.update(lanes=lanes, lut_lanes=Sequential.logic_lanes(target, lanes))
    if memory is not None:
        if memory not in ("bram", "spram"):
            raise ZeroskipError(f"memory must be 'bram' or 'spram', got {memory!r}")
        settings["memory"] = memory
    idents = counter_names([node.name for node, *_ in found])
    layers = [LayerSpec(node, sources, in_shapes, in_acts, 0, idents[node.name])
              for node, sources, in_shapes, in_acts in found]
    if calibration is not None:
        calibration = reference.validate_input(graph, calibration)
    chosen = Sequential(graph, layers, settings["lanes"], memory=settings["memory"],
                        depth=depth, lut_lanes=settings["lut_lanes"], zero_skip=True,
                        chunk=chunk, multipliers=None, layer_counters=False,
                        calibration=calibration)
    try:
        chosen.check()
    except ValueError as error:
        raise ZeroskipError(f"graph {graph.name!r}: {error}") from None
    return chosen
