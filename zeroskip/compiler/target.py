"""``--target PART``: the fastest design that fits a part.

:func:`choose_for_target` tries the pipeline at every chunk of :data:`CHUNKS` and every step of
the greedy fold (:meth:`~.folding.Calibration.fold_steps`), keeping for each chunk the largest
fold whose estimated resources (:mod:`.resources`) fit the part, the same lanes with wider
streams and packed scans, the fastest chunk folded again with the widths chosen as it folds,
and the sequential engine;
among those that fit it takes the shortest estimated single-stream latency in time: cycles
(:mod:`.latency` for the pipeline, the engine's own estimate for the sequential one) at the
clock each architecture reaches on the part's family. The result says what was
chosen and what bound it: a resource of the part, the multiplier cap, or a fold that no longer
shortens anything. A design fits when its estimate takes at most :func:`placeable` of each of
the part's resources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import parts as parts_
from ..errors import ZeroskipError
from .folding import Calibration
from .latency import network_latency
from .resources import Resources, estimate

__all__ = ["CHUNKS", "PLACEABLE", "PLACEABLE_BY_FAMILY", "SEQUENTIAL_CELLS_PLACEABLE",
           "TargetChoice", "choose_for_target", "over_budget", "placeable"]

#: The chunks the search tries (input channels a conv engine examines at once).
CHUNKS = (8, 16, 32)

#: The share of each of the part's resources a chosen design may take by the estimate: nextpnr
#: found no legal placement for the autoencoder at 89 % of the ECP5-85F's LUT4 sites and 96 % of
#: its block RAMs (``benchmarks/results/mlperf_sim.json``, target-ecp5-85k), which the model
#: had at 99.8 % and 91 %. DSPs and SPRAM blocks are counted exactly (a multiplier lane, a
#: memory the plan places) and need no logic around them to place: all of them may be used.
#: ResNet-8 routed with 169 of the 208 block RAMs (81 %, 50 % of the LUT4s) and did not route in
#: 22 minutes with 180 (86 %, 72 % of the LUT4s; 263k of 274k arcs left): RAM blocks sit in
#: rows, and the logic around each spreads with them. A design may take 80 % of them.
PLACEABLE = {"luts": 0.85, "ffs": 0.85, "brams": 0.80, "dsps": 1.0, "spram": 1.0}

#: :data:`PLACEABLE` per family where it differs. On the ECP5, nextpnr packs a design into more
#: LUT4 sites than it counts before packing, which the model follows (LUT RAM included): the
#: DS-CNN at 96 multipliers, 75,674 by the model (90 %), took 82,760 of the 83,640
#: TRELLIS_COMB cells after packing (9 % more), placed at 47 MHz and did not route; at 89
#: multipliers, 64,057 by the model, 73,092 (14 % more). 70 % by the model keeps the placer's
#: share near 80 % at the most seen.
PLACEABLE_BY_FAMILY = {"ecp5": {**PLACEABLE, "luts": 0.70}}


def placeable(part):
    """The share of each of ``part``'s resources a design may take by the estimate."""
    return PLACEABLE_BY_FAMILY.get(part.family, PLACEABLE)


#: The share of an iCE40's logic cells the sequential engine's lanes are chosen within, by
#: :func:`~.resources.sequential_cells` (see there): room to route. ResNet-8 at two lanes
#: (about 4,800 estimated) placed at 92 % of the UP5K's cells in one revision and did not route
#: in 20 minutes, and at 90 % in the next, where it did.
SEQUENTIAL_CELLS_PLACEABLE = 0.89


def over_budget(resources, part):
    """``{resource: used / available}`` of the resources above :func:`placeable` of the
    part's."""
    return resources.over(part.capacity, placeable(part))


@dataclass
class TargetChoice:
    """What ``--target`` chose, and why.

    ``options`` are the keyword arguments of :func:`zeroskip.compile` that build the choice;
    ``binding`` says what stopped it from being faster; ``tried`` lists every candidate
    considered (architecture, chunk, multipliers, fits, latency in cycles); ``mhz`` the clock
    the choice's latency is counted at."""

    part: object
    architecture: str
    options: dict
    resources: Resources
    latency_cycles: float
    binding: str
    tried: list = field(default_factory=list)
    mhz: float = 0.0

    def __post_init__(self):
        self.mhz = self.mhz or self.part.default_mhz

    def to_dict(self):
        """JSON-ready: the part, the estimates and what bound the choice."""
        return {"part": self.part.name, "architecture": self.architecture,
                "estimated_resources": self.resources.as_dict(),
                "capacity": dict(self.part.capacity),
                "estimated_latency_cycles": round(self.latency_cycles, 1),
                "expected_mhz": self.mhz, "binding": self.binding,
                "tried": [{"architecture": a, "chunk": c, "multipliers": m, "fits": f,
                           "estimated_latency_cycles": None if lat is None or lat == math.inf
                           else round(lat, 1)} for a, c, m, f, lat in self.tried]}

    def lines(self):
        """The report's lines about the choice."""
        capacity = self.part.capacity
        used = self.resources.as_dict()
        usage = ", ".join(f"{used[key]:,} of {capacity[key]:,} {parts_.RESOURCES[key]}"
                          for key in ("luts", "ffs", "brams", "dsps", "spram")
                          if capacity.get(key) or used[key])
        return [f"target {self.part.name}: {self.architecture}, chunk "
                f"{self.options.get('chunk')}, estimated latency {self.latency_cycles:,.0f} "
                f"cycles ({self.latency_cycles / self.mhz:,.1f} us at "
                f"{self.mhz:g} MHz)",
                f"  estimated resources: {usage}",
                f"  bound by: {self.binding}"]


def _pipeline_candidates(graph, part, calibration, multipliers, chunk, zero_skip, choose,
                         counts):
    """The largest fold at ``chunk`` that fits: a galloping search over the fold's steps
    (indices 0, 1, 3, 7, ... until one does not fit, then bisection), so the fold is walked
    at most about twice as far as the design it finds, not to its end."""
    fold = Calibration(graph, calibration.x_int if calibration else None,
                       chunk).fold_steps(zero_skip=zero_skip)
    steps = []

    def step(index):
        """Whether the fold (within the cap) has a step ``index``, walking it that far."""
        while len(steps) <= index:
            lanes = next(fold, None)
            if lanes is None or (multipliers is not None and
                                 sum(lanes.values()) > multipliers):
                return False
            steps.append(lanes)
        return True

    cache = {}

    def build(index):
        if index not in cache:
            architecture = choose(graph, steps[index], zero_skip, chunk=chunk,
                                  layer_counters=False)
            cache[index] = (architecture, estimate(architecture, part, counts))
        return cache[index]

    def fits(index):
        return not over_budget(build(index)[1], part)

    if not step(0):
        return None, None
    if not fits(0):
        return None, build(0)
    low, high, probe = 0, None, 1      # steps[low] fits; none after steps[high] does
    while high is None:
        if not step(probe):
            high = len(steps) - 1          # the fold ends before probe: bisect up to its end
        elif fits(probe):
            low, probe = probe, 2 * probe + 1
        else:
            high = probe - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    architecture, resources = build(low)
    if step(low + 1):
        over = over_budget(build(low + 1)[1], part)
        binding = ", ".join(f"{parts_.RESOURCES[key]} ({share:.0%} at the fold's next step)"
                            for key, share in sorted(over.items(), key=lambda kv: -kv[1]))
    elif multipliers is not None and sum(steps[-1].values()) == multipliers:
        binding = f"the multiplier cap of {multipliers}"
    else:
        binding = "the fold: no more multipliers make the slowest layer faster"
    return (architecture, resources, binding), None


def _widened(graph, part, architecture, calibration, zero_skip, choose, counts):
    """``architecture``'s lanes with the streams the folding model widens and the scans it
    packs (:func:`~.balance.balance`), with its resources, if that still fits ``part``."""
    try:
        wide = choose(graph, dict(architecture.lanes), zero_skip, chunk=architecture.chunk,
                      layer_counters=False, stream_width="auto", pack=True,
                      calibration=calibration.x_int)
    except ZeroskipError:
        return None
    if wide.widths == architecture.widths and wide.packs == architecture.packs:
        return None
    resources = estimate(wide, part, counts)
    return None if over_budget(resources, part) else (wide, resources)


def _refolded(graph, part, architecture, calibration, zero_skip, choose, counts):
    """The folding model's own lanes with the stream widths it chooses as it folds (no packs),
    within ``architecture``'s multipliers or, while that does not fit ``part``, a tenth fewer
    (three tries): ``(architecture, resources, binding)``, or None if none fits. Wide streams
    cost logic a lane, so the fold at one activation a beat may fill a part whose every layer
    is then bound by its ports (the DS-CNN: 74 multipliers, 11,468 cycles estimated), where
    fewer lanes with wider streams are faster in the same logic (66, 10,604)."""
    budget = architecture.multipliers_used
    binding = None
    for _ in range(3):
        try:
            wide = choose(graph, "auto", zero_skip, multipliers=budget, chunk=architecture.chunk,
                          layer_counters=False, stream_width="auto", pack=False,
                          calibration=calibration.x_int)
        except ZeroskipError:
            return None
        resources = estimate(wide, part, counts)
        over = over_budget(resources, part)
        if not over:
            if binding is None:
                binding = ("the fold with wide streams: no more multipliers or wider streams "
                           "make the slowest layer faster" if wide.multipliers_used < budget
                           else f"the multipliers of the fold at one activation a beat "
                                f"({budget})")
            return wide, resources, binding
        binding = ", ".join(f"{parts_.RESOURCES[key]} ({share:.0%} with wide streams at "
                            f"{wide.multipliers_used} multipliers)"
                            for key, share in sorted(over.items(), key=lambda kv: -kv[1]))
        budget = wide.multipliers_used * 9 // 10
    return None


def _shares(over):
    """``over``'s resources as shares of the part, for a message."""
    return ", ".join(f"{parts_.RESOURCES[key]} {share:.0%} of the part"
                     for key, share in over.items())


def choose_for_target(graph, part_name, calibration=None, *, multipliers=None, chunk=None,
                      zero_skip=True, choose):
    """The fastest design of ``graph`` that fits ``part_name`` (see the module doc).

    ``calibration`` is a :class:`~.folding.Calibration` or None (then the folds see the
    weights alone); ``choose`` is :func:`zeroskip.compiler.choose` (passed in: it calls this).
    """
    part = parts_.part(part_name, option="target")
    chunks = (chunk,) if chunk is not None else CHUNKS
    fitting, smallest = [], None
    tried = []
    counts = {}  # the engines' resource counts, shared by the candidates
    for candidate_chunk in chunks:
        found, failed = _pipeline_candidates(graph, part, calibration, multipliers,
                                             candidate_chunk, zero_skip, choose, counts)
        if found is None:
            if failed is not None:
                tried.append(("dataflow", candidate_chunk, failed[0].multipliers_used, False,
                              None))
                if smallest is None or failed[1].luts < smallest[1].luts:
                    smallest = failed
            continue
        architecture, resources, binding = found
        batch = Calibration(graph, calibration.x_int if calibration is not None else None,
                            candidate_chunk)
        latency = float(network_latency(architecture, batch).mean())
        tried.append(("dataflow", candidate_chunk, architecture.multipliers_used, True, latency))
        fitting.append((latency, architecture, resources, binding))
        if calibration is not None:
            wide = _widened(graph, part, architecture, calibration, zero_skip, choose, counts)
            if wide is not None:
                wide_latency = float(network_latency(wide[0], batch).mean())
                tried.append(("dataflow (wide streams)", candidate_chunk,
                              wide[0].multipliers_used, True, wide_latency))
                fitting.append((wide_latency, *wide, binding))
    if calibration is not None and fitting:
        # The fastest pipeline's chunk, folded again with the widths chosen as it folds.
        best = min(fitting, key=lambda entry: entry[0])
        refolded = _refolded(graph, part, best[1], calibration, zero_skip, choose, counts)
        if refolded is not None:
            batch = Calibration(graph, calibration.x_int, best[1].chunk)
            latency = float(network_latency(refolded[0], batch).mean())
            tried.append(("dataflow (folded with wide streams)", best[1].chunk,
                          refolded[0].multipliers_used, True, latency))
            fitting.append((latency, *refolded))
    sequential = ""           # why the sequential engine does not fit, if it does not
    architecture, over = None, True
    try:
        # The sequential engine's lanes (the most it can place) and memories for this part.
        architecture = choose(graph, "auto", True, architecture="sequential", target=part.name)
    except ZeroskipError as error:
        sequential = f"the sequential engine: {error}"
    if architecture is not None:
        resources = estimate(architecture, part)
        over = over_budget(resources, part)
        if over:
            sequential = (f"the sequential engine ({architecture.simd_lanes} lanes, "
                          f"{architecture.memory}): {_shares(over)}")
        elif multipliers is not None and architecture.multipliers_used > multipliers:
            over = {"multipliers": architecture.multipliers_used / multipliers}
            sequential = (f"the sequential engine: {architecture.simd_lanes} lanes, more than "
                          f"the multiplier cap of {multipliers}")
    if not over:
        latency = math.inf
        if calibration is not None:
            # Single-stream, as the pipelines' latencies beside it.
            latency = architecture.estimate(calibration.x_int).latency_cycles
        tried.append(("sequential", architecture.chunk, architecture.multipliers_used,
                      True, latency))
        fitting.append((latency, architecture, resources,
                        f"{architecture.multipliers_used} lanes (sequential)"))
    elif architecture is not None:
        tried.append(("sequential", architecture.chunk, architecture.multipliers_used,
                      False, None))
    if not fitting:
        sequential = f"; {sequential}" if sequential else ""
        if smallest is None:
            raise ZeroskipError(f"graph {graph.name!r}: no design fits {part.name}{sequential}")
        raise ZeroskipError(
            f"graph {graph.name!r} does not fit {part.name} with one lane per layer: "
            + _shares(over_budget(smallest[1], part))
            + f" (a design may take {placeable(part)['luts']:.0%} of the logic and "
              f"{placeable(part)['brams']:.0%} of the RAM blocks, what nextpnr can place)"
            + sequential)
    # The shortest in time: each architecture's cycles at the clock it reaches on the part.
    latency, architecture, resources, binding = min(
        fitting, key=lambda entry: entry[0] / entry[1].expected_mhz(part))
    options = architecture.compile_options()
    options.pop("multipliers", None)
    options.pop("argmax", None)
    return TargetChoice(part, architecture.name, options, resources, latency, binding, tried,
                        architecture.expected_mhz(part))
