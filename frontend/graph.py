"""The float graph: what the tracer reads out of a PyTorch model, before quantization.

One typed node per op the frontend understands. Passes in :mod:`.passes` rewrite it (fold
BatchNorm, fuse activations) until only ops with an integer counterpart in :mod:`zeroskip.ir`
remain; :mod:`.qat` then quantizes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..errors import FrontendError


@dataclass(frozen=True, eq=False)
class FloatNode:
    """``name`` is unique in the graph; ``source`` is the module or function it came from, so
    that messages can name it the way the user wrote it."""

    name: str
    inputs: tuple[str, ...]
    source: str

    def with_inputs(self, inputs):
        return replace(self, inputs=tuple(inputs))


@dataclass(frozen=True, eq=False)
class FloatInput(FloatNode):
    shape: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class FloatWeightLayer(FloatNode):
    """Conv2d or Linear with its (possibly pruned) weights.

    ``mask`` marks the weights that may be nonzero: pruned positions stay exactly zero through
    BatchNorm folding, quantization-aware training and export. ``activation`` is the fused
    output function: None, ``"relu"`` or ``"relu6"``.
    """

    weight: torch.Tensor = None
    bias: Optional[torch.Tensor] = None
    mask: torch.Tensor = None
    activation: Optional[str] = None


@dataclass(frozen=True, eq=False)
class FloatConv2d(FloatWeightLayer):
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1


@dataclass(frozen=True, eq=False)
class FloatLinear(FloatWeightLayer):
    pass


@dataclass(frozen=True, eq=False)
class FloatBatchNorm(FloatNode):
    mean: torch.Tensor = None
    var: torch.Tensor = None
    weight: torch.Tensor = None
    bias: torch.Tensor = None
    eps: float = 1e-5


@dataclass(frozen=True, eq=False)
class FloatActivation(FloatNode):
    """A standalone ReLU / ReLU6, to be fused into the op before it."""

    kind: str = "relu"


@dataclass(frozen=True, eq=False)
class FloatMaxPool2d(FloatNode):
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)


@dataclass(frozen=True, eq=False)
class FloatAvgPool2d(FloatNode):
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    activation: Optional[str] = None


@dataclass(frozen=True, eq=False)
class FloatPad(FloatNode):
    """Zero padding ``(left, right, top, bottom)``, to be folded into the Conv2d it feeds."""

    padding: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True, eq=False)
class FloatAdd(FloatNode):
    activation: Optional[str] = None


@dataclass(frozen=True, eq=False)
class FloatFlatten(FloatNode):
    pass


@dataclass(frozen=True, eq=False)
class FloatIdentity(FloatNode):
    """Dropout, Identity: nothing at inference."""


FUSABLE = (FloatWeightLayer, FloatAvgPool2d, FloatAdd)


@dataclass(frozen=True, eq=False)
class FloatGraph:
    """Nodes in topological order; ``shapes`` maps each node to its output shape without batch."""

    nodes: tuple[FloatNode, ...]
    output: str
    shapes: dict = field(default_factory=dict)

    def node(self, name):
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self, name):
        return [node for node in self.nodes if name in node.inputs]

    def replace_nodes(self, replacements, removed=()):
        """A new graph with nodes swapped by name and ``removed`` nodes bypassed.

        A removed node must have a single input; its consumers read that input instead.
        """
        bypass = {}
        for name in removed:
            (source,) = self.node(name).inputs
            bypass[name] = source

        def resolve(name):
            while name in bypass:
                name = bypass[name]
            return name

        nodes = []
        for node in self.nodes:
            if node.name in bypass:
                continue
            node = replacements.get(node.name, node)
            nodes.append(node.with_inputs(resolve(i) for i in node.inputs))
        return FloatGraph(tuple(nodes), resolve(self.output), self.shapes)

    def check_quantizable(self):
        """Raise unless every node has an integer counterpart (all BN folded, all ReLU fused)."""
        for node in self.nodes:
            if isinstance(node, FloatBatchNorm):
                raise FrontendError(
                    f"BatchNorm {node.source!r} does not directly follow a Conv2d or Linear whose "
                    "output it alone reads, so it cannot be folded")
            if isinstance(node, FloatPad):
                consumers = ", ".join(repr(c.source) for c in self.consumers(node.name)) or \
                    "the model output"
                raise FrontendError(
                    f"zero padding {node.source!r} feeds {consumers}; zeroskip folds zero padding "
                    "only into the one Conv2d it alone feeds")
            if isinstance(node, FloatActivation):
                producer = self.node(node.inputs[0])
                raise FrontendError(
                    f"{node.kind} {node.source!r} follows {producer.source!r}; zeroskip fuses "
                    "ReLU/ReLU6 into the Conv2d, Linear, add or average pool before it (through "
                    "max pools and flattens), and that op must feed nothing else")
