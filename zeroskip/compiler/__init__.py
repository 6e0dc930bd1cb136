"""zeroskip.compiler: the decisions between the IR and the engines.

:func:`choose` takes a graph and the user's options and returns an architecture
(:class:`~.architecture.Pipeline` or :class:`~.architecture.Sequential`): the layers as the
engines see them (:mod:`.layers`), the lanes of every conv / linear layer (given, or folded on a
calibration batch: :mod:`.folding`), every tensor's stream width and every layer's pack
(:mod:`.streams`, chosen with the lanes by :mod:`.balance`), and the static plans, made once.
:func:`zeroskip.compile` wraps the result in a :class:`zeroskip.design.Design`, which gives the
Verilog, the build directory and the co-simulation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

from .. import ir, parts, reference
from ..errors import ZeroskipError, ZeroskipWarning
from ..hdl.sparse_plan import MAX_SPLIT
from ..hdl.window import DEEP_TILE_SLOTS, TILE_SLOTS
from .architecture import Estimate, Pipeline, Sequential, check_count
from .balance import balance, fixed_widths
from .folding import Calibration
from .layers import WEIGHT_LAYERS, LayerSpec, counter_names, network_layers
from .streams import check_widths, chosen_packs

__all__ = ["ARCHITECTURES", "AUTO_CHUNKS", "CHUNK_TOLERANCE", "DEFAULT_CHUNK", "Estimate",
           "Pipeline", "Sequential", "choose"]

#: Input channels a conv engine examines at once, unless told otherwise or chosen
#: (:data:`AUTO_CHUNKS`).
DEFAULT_CHUNK = 32

#: The chunks ``lanes="auto"`` folds the budget at when none is given, widest first, and the
#: share of the estimated single-stream latency a narrower one may add and still be taken: a
#: lane's masks, pair FIFO and priority encoder are as wide as its chunk, so a narrower chunk
#: costs less logic for the same multipliers (the digits-shaped net at 8: 1,444 cycles at
#: chunk 16, 1,450 at 32, with 12,387 LUT4 by the model rather than 17,286; ResNet-8 at 64:
#: 23,268 at 32, 30,994 at 16, where the wide chunk is worth its logic).
AUTO_CHUNKS = (32, 16, 8)
CHUNK_TOLERANCE = 0.02

#: ``dataflow``: an engine per layer, all layers at once; ``sequential``: one engine runs the
#: layers one after another, for the smallest FPGAs.
ARCHITECTURES = {Pipeline.name: Pipeline, Sequential.name: Sequential}


def _chosen_lanes(lanes, weight_layers, multipliers):
    """Lanes per conv / linear layer from the ``lanes`` option (not ``"auto"``); checked against
    the budget."""
    if isinstance(lanes, dict):
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
    return chosen


def _check_lanes(chosen, weight_layers, multipliers):
    if multipliers is not None:
        check_count("multipliers", multipliers)
    for node in weight_layers:
        value = chosen[node.name]
        if not isinstance(value, int) or isinstance(value, bool) or \
                not 1 <= value <= node.out_channels * MAX_SPLIT:
            raise ZeroskipError(f"node {node.name!r}: lanes must be between 1 and {MAX_SPLIT} "
                                f"times its {node.out_channels} output channels (beyond them "
                                f"each filter is cut over several lanes), got {value!r}")
    if multipliers is not None and sum(chosen.values()) > multipliers:
        raise ZeroskipError(f"the layers' lanes add up to {sum(chosen.values())} multipliers, "
                            f"more than the budget of {multipliers}")


def _stream_options(lanes, stream_width, pack, tile_slots, calibration):
    """``stream_width``, ``pack`` and ``tile_slots`` checked, their defaults filled in: chosen
    by the folding model with ``lanes="auto"``, one activation a beat and no packs otherwise;
    deep tiles but with one activation a beat and no packs."""
    auto = lanes == "auto"
    stream_width = ("auto" if auto else 1) if stream_width is None else stream_width
    pack = auto if pack is None else pack
    if tile_slots is None:
        tile_slots = TILE_SLOTS if stream_width == 1 and pack is False else DEEP_TILE_SLOTS
    elif not isinstance(tile_slots, int) or isinstance(tile_slots, bool) or tile_slots < 2 \
            or tile_slots & (tile_slots - 1):
        raise ZeroskipError(f"tile_slots must be a power of two from 2, got {tile_slots!r}")
    if stream_width == "auto":
        if calibration is None and not auto:  # lanes="auto" says so itself
            raise ZeroskipError("stream_width='auto' chooses the widths by the work measured "
                                "on calibration inputs: give calibration=x_int (CLI: "
                                "--calibration X.npy)")
    elif isinstance(stream_width, dict):
        for name, width in stream_width.items():
            check_count(f"the stream width of {name!r}", width)
    else:
        check_count("stream_width", stream_width)
    if isinstance(pack, dict):
        for name, value in pack.items():
            check_count(f"the pack of {name!r}", value, 64)
    elif not isinstance(pack, bool):
        raise ZeroskipError(f"pack must be True, False or a dict of layer to pack, got "
                            f"{pack!r}")
    return stream_width, pack, tile_slots


def _decide(graph, specs, lanes, multipliers, calibration, options):
    """``(lanes, widths, packs)`` of a pipeline: folded, balanced or as given."""
    stream_width, pack, zero_skip, chunk, slots = options
    weight_layers = [spec.node for spec in specs if spec.has_weights]
    input_name, in_shape = graph.input.name, graph.shapes[graph.input.name]
    if lanes == "auto":
        if multipliers is None:
            raise ZeroskipError("lanes='auto' folds a multiplier budget over the layers: give "
                                "multipliers=N (CLI: --multipliers N), and calibration inputs "
                                "to fold on the work left after skipping zeros (--calibration "
                                "X.npy)")
        check_count("multipliers", multipliers)
        if multipliers < len(weight_layers):
            raise ZeroskipError(f"graph {graph.name!r} has {len(weight_layers)} conv2d/linear "
                                f"layers: it needs at least {len(weight_layers)} multipliers "
                                f"(one each), got {multipliers}")
        if calibration is None:
            warnings.warn("lanes='auto' without calibration inputs folds on the weights alone "
                          "(every activation taken as nonzero); give calibration inputs to "
                          "fold on the work left after skipping zero activations",
                          ZeroskipWarning, stacklevel=5)
            calibration = Calibration(graph, None, chunk)
        chosen = None
    elif isinstance(lanes, (str, bytes)):
        raise ZeroskipError(f"lanes must be an integer, a dict or 'auto', got {lanes!r}")
    else:
        chosen = _chosen_lanes(lanes, weight_layers, multipliers)
        _check_lanes(chosen, weight_layers, multipliers)
    if isinstance(stream_width, dict):
        widths = {name: 1 for name in [input_name, *(spec.name for spec in specs)]}
        widths.update(stream_width)
        check_widths(specs, stream_width, input_name, in_shape)
    elif stream_width != "auto":
        widths = fixed_widths(specs, input_name, in_shape, stream_width)
    else:
        widths = "auto"
    if chosen is None or widths == "auto":
        balanced = balance(calibration, specs, input_name=input_name, in_shape=in_shape,
                           multipliers=multipliers, lanes=chosen, widths=widths, pack=pack,
                           zero_skip=zero_skip, chunk=chunk, slots=slots)
        return balanced.lanes, balanced.widths, balanced.packs
    return chosen, widths, chosen_packs(specs, chosen, widths, pack, chunk=chunk)


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

    if lanes != 1:
        raise ZeroskipError("target=PART chooses the architecture and the lanes itself: give "
                            "neither lanes nor architecture with it (multipliers=N caps it)")
    if multipliers is not None:
        check_count("multipliers", multipliers)
    if chunk is not None:
        check_count("chunk", chunk, 64)
    parts.part(target, option="target")  # an unknown part is refused before any warning
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
           chunk=None, layer_counters=True, architecture="dataflow", argmax=None, target=None,
           stream_width=None, pack=None, tile_slots=None, memory=None, depth=None):
    """The architecture of a graph with every decision made; see :func:`zeroskip.compile` for
    the parameters. A ZeroskipError names what cannot be built."""
    if not isinstance(graph, ir.Graph):
        raise ZeroskipError(f"compile takes a zeroskip.ir.Graph, got {type(graph).__name__}")
    if target is not None and architecture == Pipeline.name:
        # The search over both architectures; with architecture="sequential", target is the
        # part the sequential engine's settings are chosen for.
        if (stream_width, pack, tile_slots, memory, depth) != (None,) * 5:
            raise ZeroskipError("target=PART chooses the streams and memories itself: give "
                                "none of stream_width, pack, tile_slots, memory and depth with "
                                "it")
        return _choose_for_target(graph, target, lanes, zero_skip, multipliers, calibration,
                                  chunk, architecture, argmax)
    if chunk is None and lanes == "auto" and architecture == Pipeline.name:
        return _choose_chunk(
            graph, zero_skip, multipliers=multipliers, calibration=calibration,
            layer_counters=layer_counters, argmax=argmax, target=target,
            stream_width=stream_width, pack=pack, tile_slots=tile_slots, memory=memory,
            depth=depth)
    chunk = DEFAULT_CHUNK if chunk is None else chunk
    check_count("chunk", chunk, 64)
    kind = ARCHITECTURES.get(architecture) if isinstance(architecture, str) else None
    if kind is None:
        raise ZeroskipError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got "
                            f"{architecture!r}")
    kind.check_options(lanes=lanes, multipliers=multipliers, zero_skip=zero_skip,
                       stream_width=stream_width, pack=pack, tile_slots=tile_slots)
    zero_skip = bool(zero_skip)
    argmax = _argmax(graph, argmax)
    found = network_layers(graph)
    if kind is Sequential:
        return _sequential(graph, found, lanes, calibration=calibration, chunk=chunk,
                           memory=memory, target=target, depth=depth, argmax=argmax)
    if memory is not None or depth is not None:
        raise ZeroskipError("memory and depth are options of the sequential architecture")
    if calibration is not None:
        # Run through the golden model once, for the folding and the estimates alike.
        calibration = Calibration(graph, reference.validate_input(graph, calibration), chunk)
    stream_width, pack, tile_slots = _stream_options(lanes, stream_width, pack, tile_slots,
                                                     calibration)
    idents = counter_names([node.name for node, *_ in found])
    specs = [LayerSpec(node, sources, in_shapes, in_acts, 0, idents[node.name])
             for node, sources, in_shapes, in_acts in found]
    chosen, widths, packs = _decide(graph, specs, lanes, multipliers, calibration,
                                    (stream_width, pack, zero_skip, chunk, tile_slots))
    layers = [replace(spec, lanes=chosen.get(spec.name, 0)) for spec in specs]
    chosen_architecture = kind(
        graph, layers, chosen, zero_skip=zero_skip, chunk=chunk, multipliers=multipliers,
        layer_counters=bool(layer_counters) and kind.LAYER_COUNTERS, calibration=calibration,
        argmax=argmax, widths=widths, packs=packs, tile_slots=tile_slots)
    try:
        chosen_architecture.check()
    except ValueError as error:
        raise ZeroskipError(f"graph {graph.name!r}: {error}") from None
    return chosen_architecture


def _choose_chunk(graph, zero_skip, **options):
    """``lanes="auto"`` without a chunk: the pipeline folded at each of :data:`AUTO_CHUNKS`,
    widest first; the narrowest whose estimated single-stream latency is within
    :data:`CHUNK_TOLERANCE` of the shortest seen is taken. The walk stops at the first chunk
    beyond it (narrower chunks only scan more combos). ``chunk_choice`` on the result lists
    ``(chunk, latency)`` of those folded."""
    from .latency import network_latency

    tried, best, chosen = [], None, None
    for index, chunk in enumerate(AUTO_CHUNKS):
        # Each fold warns alike: the first fold's warnings are given once, at the caller.
        failed = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                candidate = choose(graph, "auto", zero_skip, chunk=chunk, **options)
            except ZeroskipError as error:
                failed = error
        if index == 0:
            for warning in caught:
                warnings.warn(warning.message, warning.category, stacklevel=4)
            if failed is not None:
                raise failed  # the default chunk's error: it names what cannot be built
        if failed is not None:
            continue
        calibration = candidate.calibration or Calibration(graph, None, chunk)
        latency = float(network_latency(candidate, calibration).mean())
        tried.append((chunk, latency))
        best = latency if best is None else min(best, latency)
        if latency > best * (1 + CHUNK_TOLERANCE):
            break
        chosen = candidate
    chosen.chunk_choice = tuple(tried)
    return chosen


def _sequential(graph, found, lanes, *, calibration, chunk, memory, target, depth, argmax):
    """The sequential architecture: its lanes, memory and line buffer for the part ``target``
    (:meth:`Sequential.choose_settings`) unless given. ``lanes="auto"`` is halved until the
    estimate fits the part (on iCE40 its logic cells too, :func:`~.resources.sequential_cells`),
    then while half as many take no more cycles."""
    settings = Sequential.choose_settings(graph, target)
    if lanes != "auto":
        settings["lanes"] = lanes
    if memory is not None:
        if memory not in ("bram", "spram", "spram-rom"):
            raise ZeroskipError(f"memory must be 'bram', 'spram' or 'spram-rom', got "
                                f"{memory!r}")
        settings["memory"] = memory
    idents = counter_names([node.name for node, *_ in found])
    layers = [LayerSpec(node, sources, in_shapes, in_acts, 0, idents[node.name])
              for node, sources, in_shapes, in_acts in found]
    if calibration is not None:
        calibration = reference.validate_input(graph, calibration)

    def build(simd_lanes):
        built = Sequential(graph, layers, simd_lanes, memory=settings["memory"], depth=depth,
                           lut_lanes=Sequential.logic_lanes(target, simd_lanes), zero_skip=True,
                           chunk=chunk, multipliers=None, layer_counters=False,
                           calibration=calibration, argmax=argmax, part=target)
        try:
            built.check()
        except ValueError as error:
            raise ZeroskipError(f"graph {graph.name!r}: {error}") from None
        return built

    from ..hdl.seq_model import inference_cycles
    from .resources import estimate, sequential_cells
    from .target import SEQUENTIAL_CELLS_PLACEABLE, over_budget

    chosen = build(settings["lanes"])
    part = parts.PARTS.get(target or "ice40-up5k")
    if memory is None and settings["memory"] == "spram-rom" and part is not None and \
            "brams" in over_budget(estimate(chosen, part), part):
        # The weights' ROM does not fit the block RAM: into SPRAM with the tensors.
        settings["memory"] = "spram"
        chosen = build(chosen.simd_lanes)
    if lanes != "auto":
        return chosen

    def too_big(design):
        used = estimate(design, part)
        return bool(over_budget(used, part)) or part.family == "ice40" and \
            sequential_cells(used) > SEQUENTIAL_CELLS_PLACEABLE * part.capacity["luts"]

    if part is not None:
        # The most lanes whose design the part (without one the UP5K) can place and route
        # (target.placeable(part) of its logic and RAM blocks; on iCE40 its logic cells).
        while chosen.simd_lanes > 1 and too_big(chosen):
            chosen = build(chosen.simd_lanes // 2)
    # Lanes that shorten nothing cost logic and clock: a net of flat layers (the
    # autoencoder's) has one output pixel a group, so one lane is as fast as eight.
    cycles = inference_cycles(chosen.plan)[1][0]
    while chosen.simd_lanes > 1:
        fewer = build(chosen.simd_lanes // 2)
        fewer_cycles = inference_cycles(fewer.plan)[1][0]
        if fewer_cycles > cycles:
            break
        chosen, cycles = fewer, fewer_cycles
    return chosen
