"""The layers an architecture builds: a graph's nodes as the engines see them.

:func:`network_layers` walks the graph once: it keeps the nodes the output needs, looks through
flattens (a flatten costs no hardware: the linear layer after it reads the HWC stream with its
columns permuted) and refuses what cannot be built. Every layer becomes a :class:`LayerSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import ir
from ..errors import ZeroskipError
from ..hdl.common import hwc_permutation, identifier

__all__ = ["LayerSpec", "WEIGHT_LAYERS", "counter_names", "network_layers", "producer"]

#: The ops with weights: the ones that get lanes, plans and multipliers.
WEIGHT_LAYERS = (ir.Conv2d, ir.Linear)


@dataclass(frozen=True)
class LayerSpec:
    """One layer as its engine computes it, and what the compiler decided for it.

    ``node`` is the layer as the engine computes it (a linear layer after a flatten has its
    columns permuted to the HWC stream); ``sources`` are the producers of its inputs after
    flattens are looked through; ``lanes`` its multipliers (0 for a layer without weights);
    ``counter_name`` its key in the ``counters`` port (an identifier made from the node name).
    """

    node: object
    sources: tuple
    in_shapes: tuple
    in_acts: tuple
    lanes: int
    counter_name: str

    @property
    def name(self):
        return self.node.name

    @property
    def has_weights(self):
        return isinstance(self.node, WEIGHT_LAYERS)

    @property
    def out_shape(self):
        shape, _ = self.node.infer(self.in_shapes, self.in_acts)
        return tuple(shape)

    @property
    def out_act(self):
        """The output encoding: the layer's own, or its input's for a max pool."""
        return self.node.act if hasattr(self.node, "act") else self.in_acts[0]

    @property
    def ports(self):
        """The engine's input stream members, in the order of ``sources``."""
        return ("i_stream_a", "i_stream_b") if isinstance(self.node, ir.Add) else ("i_stream",)


def producer(graph, name):
    """The node whose engine produces ``name``'s stream: flattens are looked through."""
    while isinstance(graph[name], ir.Flatten):
        name = graph[name].input
    return name


def _flatten_reorders(graph, flatten):
    """Whether a flatten's C-major order differs from the HWC stream it reads."""
    channels, height, width = graph.shapes[flatten.input]
    return channels > 1 and height * width > 1


def _needed(graph):
    """The names of the nodes the graph's output depends on."""
    needed, frontier = set(), [graph.output]
    while frontier:
        name = frontier.pop()
        if name not in needed:
            needed.add(name)
            frontier.extend(graph[name].inputs)
    return needed


def _check_flatten(graph, node, needed):
    readers = [c for c in graph.consumers(node.name) if c.name in needed]
    if _flatten_reorders(graph, node) and (
            node.name == graph.output or any(not isinstance(c, ir.Linear) for c in readers)):
        what = "is the graph output" if node.name == graph.output else \
            "feeds " + ", ".join(f"{c.name!r} ({c.op})" for c in readers
                                 if not isinstance(c, ir.Linear))
        raise ZeroskipError(
            f"node {node.name!r} (flatten) {what}: a flatten is built only before linear "
            "layers (their columns absorb it), or where it does not reorder")


def network_layers(graph):
    """``(node, sources, in_shapes, in_acts)`` of every engine, in graph order, looking
    through flattens; a ZeroskipError names what cannot be built."""
    needed = _needed(graph)
    layers = []
    for node in graph.nodes:
        if node.name not in needed or isinstance(node, ir.Input):
            continue
        if isinstance(node, ir.Flatten):
            _check_flatten(graph, node, needed)
            continue
        sources = tuple(producer(graph, source) for source in node.inputs)
        in_shapes = tuple(graph.shapes[source] for source in node.inputs)
        in_acts = tuple(graph.acts[source] for source in node.inputs)
        if isinstance(node, ir.Linear) and isinstance(graph[node.inputs[0]], ir.Flatten) \
                and _flatten_reorders(graph, graph[node.inputs[0]]):
            image_shape = graph.shapes[graph[node.inputs[0]].input]
            node = replace(node, weight=node.weight[:, hwc_permutation(image_shape)])
        layers.append((node, sources, in_shapes, in_acts))
    return layers


def counter_names(names):
    """Node names -> unique identifiers usable as signature members (``"0"`` -> ``"n0"``)."""
    result, used = {}, set()
    for name in names:
        base = candidate = identifier(name, "n")
        suffix = 1
        while candidate in used or candidate == "network":
            suffix += 1
            candidate = f"{base}_{suffix}"
        used.add(candidate)
        result[name] = candidate
    return result
