"""What a co-simulation measured, as one table (and JSON) for ``zeroskip sim`` and the demo."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import reference


@dataclass(frozen=True)
class LayerActivity:
    """One conv / linear engine over a batch, per inference where it says so."""

    name: str
    lanes: int
    effective_macs: float      # per inference, counted by the engine
    skipped_pairs: float       # per inference: dense products never issued
    busy_cycles: int           # whole batch
    stall_cycles: int          # whole batch
    utilization: float         # effective MACs / (lanes * batch cycles)


@dataclass(frozen=True)
class SimulationSummary:
    """A co-simulated batch, checked against the golden model.

    ``interval_cycles`` is the median cycles between the last output beats of consecutive
    inferences (the initiation interval in steady state); ``latency_cycles`` the mean cycles
    from an inference's first input beat to its last output beat. ``held_cycles`` counts the
    cycles the harness held the design back while it served a batch longer than its memories:
    0 unless the cycles above are not the design's alone.
    ``latencies`` and ``intervals`` are the same per inference, in order (the report's timeline).
    """

    top: str
    zero_skip: bool
    multipliers: int
    inferences: int
    bit_exact: int
    cycles: int
    latency_cycles: float
    latency_min: int
    latency_max: int
    interval_cycles: float
    interval_mean: float
    rtl_accuracy: float | None
    golden_accuracy: float | None
    simulation_seconds: float
    build_seconds: float
    layers: list = field(default_factory=list)
    held_cycles: int = 0
    latencies: list = field(default_factory=list)
    intervals: list = field(default_factory=list)

    @classmethod
    def of(cls, design, x_int, result, labels=None):
        golden = reference.run(design.graph, x_int)
        same = np.all(result.outputs.reshape(len(x_int), -1) ==
                      golden.reshape(len(x_int), -1), axis=1)
        rtl_accuracy = golden_accuracy = None
        if labels is not None and result.classes is not None:
            rtl_accuracy = float(np.mean(result.classes == labels))
            golden_accuracy = float(np.mean(golden.argmax(axis=1) == labels))
        intervals = result.interval_cycles
        layers = []
        for name, lanes in design.lanes.items():
            if name not in result.counters:  # compiled without layer counters
                continue
            counters = result.counters[name]
            layers.append(LayerActivity(
                name=name, lanes=lanes,
                effective_macs=counters["effective_macs"] / len(x_int),
                skipped_pairs=counters["skipped_pairs"] / len(x_int),
                busy_cycles=counters["busy_cycles"], stall_cycles=counters["stall_cycles"],
                utilization=counters["effective_macs"] / (lanes * max(result.cycles, 1))))
        return cls(
            top=design.top, zero_skip=design.zero_skip, multipliers=design.multipliers_used,
            inferences=len(x_int), bit_exact=int(same.sum()), cycles=int(result.cycles),
            latency_cycles=float(np.mean(result.latency_cycles)),
            latency_min=int(np.min(result.latency_cycles)),
            latency_max=int(np.max(result.latency_cycles)),
            interval_cycles=float(np.median(intervals)) if len(intervals) else float("nan"),
            interval_mean=float(np.mean(intervals)) if len(intervals) else float("nan"),
            rtl_accuracy=rtl_accuracy, golden_accuracy=golden_accuracy,
            simulation_seconds=round(result.seconds, 2),
            build_seconds=round(result.build_seconds, 2), layers=layers,
            held_cycles=int(result.held_cycles),
            latencies=[int(v) for v in result.latency_cycles],
            intervals=[int(v) for v in intervals])

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        data["layers"] = [LayerActivity(**layer) for layer in data.get("layers", [])]
        return cls(**data)

    def format_table(self):
        mode = "zero-skip" if self.zero_skip else "dense"
        rows = [
            ("design", f"{self.top} ({mode}, {self.multipliers} multipliers)"),
            ("inferences", f"{self.inferences}, back to back"),
            ("bit-exact vs golden model", f"{self.bit_exact}/{self.inferences}"),
        ]
        if self.rtl_accuracy is not None:
            rows.append(("accuracy RTL / golden", f"{100 * self.rtl_accuracy:.2f} % / "
                                                   f"{100 * self.golden_accuracy:.2f} %"))
        held = f" ({self.held_cycles} held by the harness: the timing is not the design's " \
            "alone)" if self.held_cycles else ""
        rows += [
            ("cycles, whole batch", f"{self.cycles}{held}"),
            ("initiation interval", f"{self.interval_cycles:.0f} cycles (median; mean "
                                    f"{self.interval_mean:.0f})"),
            ("latency", f"{self.latency_cycles:.0f} cycles (mean; {self.latency_min} to "
                        f"{self.latency_max})"),
            ("time", f"simulation {self.simulation_seconds:.1f} s, Verilator build "
                     f"{self.build_seconds:.1f} s"),
        ]
        for layer in self.layers:
            rows.append((f"layer {layer.name!r}",
                         f"{layer.lanes} lanes, {layer.effective_macs:.0f} effective MACs / "
                         f"inference, multipliers {100 * layer.utilization:.0f} % busy"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
