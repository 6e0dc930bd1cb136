"""Prune a PyTorch network before zeroskip turns it into hardware.

Two kinds of pruning, both in place:

* **element** (unstructured): single weights are zeroed through :mod:`torch.nn.utils.prune`, so the
  model carries the standard ``weight_orig`` / ``weight_mask`` reparametrization. The sparse
  engines skip those zeros at run time; the frontend reads the masks at export.
* **filter** and **channel** (structured): whole output filters or input channels are removed and
  the layers physically shrink, together with everything that carries those channels (BatchNorm
  entries, depthwise convolutions, the input columns of the layer that consumes them). The result
  is an ordinary, smaller model. Connectivity comes from :func:`torch.fx.symbolic_trace`.

Weights are ranked by magnitude or by the first-order Taylor score ``|w * dL/dw|`` of Klopp et al.,
"Joint Pruning & Quantization for Extremely Sparse Neural Networks".
"""

from __future__ import annotations

import builtins
import math
import numbers
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node, symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import prune as torch_prune

from zeroskip.errors import FrontendError, warn_empty_layers

__all__ = ["prune", "sparsity", "remove_reparametrization"]

GRANULARITIES = ("element", "filter", "channel")
CRITERIA = ("magnitude", "taylor")
SCOPES = ("global", "layer")

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)

# Set on a layer the first time structured pruning shrinks its output, so that ``amount`` keeps
# meaning "fraction removed from the original layer" across repeated calls.
UNPRUNED_CHANNELS_ATTR = "zeroskip_unpruned_out_channels"

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Identity)
_SPATIAL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.ZeroPad2d)
_ELEMENTWISE_FUNCTIONS = (torch.relu, F.relu)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_RESHAPE_METHODS = ("flatten", "view", "reshape")

_TRACEABLE_OPS = (
    "BatchNorm1d/2d, ReLU, ReLU6, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, ZeroPad2d, Dropout, "
    "Identity, "
    "depthwise Conv2d, torch.relu / F.relu, and flatten / view / reshape to (N, -1)"
)


def prune(
    model: nn.Module,
    amount: float,
    granularity: str = "element",
    criterion: str = "magnitude",
    scope: str = "global",
    example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    data: Iterable[tuple[object, object]] | None = None,
    loss_fn: Callable[[object, object], torch.Tensor] | None = None,
    layers: Iterable[str] | None = None,
) -> nn.Module:
    """Prune ``model`` in place so that a fraction ``amount`` of its weights is gone.

    Parameters
    ----------
    model : torch.nn.Module
        The network. Its Conv2d and Linear layers are the prunable layers.
    amount : float
        Final fraction in [0, 1) pruned afterwards (not "a fraction of what is left"): calling
        again with a higher amount prunes further, and what is already pruned stays pruned.
        For ``"element"`` it is the fraction of the selected layers' weights that are zero
        (masked, or zero already), rounded to a whole count. For ``"filter"`` and ``"channel"``
        it is the fraction of filters or channels removed, counted against each layer's size
        before its first structured pruning; every layer keeps at least one.
    granularity : {"element", "filter", "channel"}
        ``"element"`` zeroes single weights with a :mod:`torch.nn.utils.prune` mask.
        ``"filter"`` removes output filters (rows) of the selected layers; ``"channel"`` removes
        input channels of the selected layers, scored on their weights ``W[:, c]``. Both
        structured modes shrink the layer producing the channels, the BatchNorms and depthwise
        convolutions in between, and every layer consuming them.
    criterion : {"magnitude", "taylor"}
        ``"magnitude"`` scores a weight by ``|w|`` (a filter or channel by its L1 norm).
        ``"taylor"`` scores by ``|w * dL/dw|`` with gradients summed over all batches of
        ``data`` (a filter or channel by the sum over its weights).
    scope : {"global", "layer"}
        ``"global"`` ranks all candidates of all selected layers together (structured scores are
        divided by the number of weights in the filter or channel so layers of different shapes
        compare fairly); ``"layer"`` prunes every selected layer to ``amount`` on its own.
    example_input : torch.Tensor or tuple of torch.Tensor, optional
        A batched input the model accepts. Required for structured pruning, which runs it through
        the model to learn the spatial size behind every flatten.
    data : iterable of (inputs, targets), optional
        Batches for the Taylor criterion. Required when ``criterion="taylor"``.
    loss_fn : callable, optional
        ``loss_fn(model(inputs), targets)`` returning a scalar tensor. Required for Taylor.
    layers : iterable of str, optional
        Qualified names (as in ``model.named_modules()``) of the Conv2d / Linear layers to prune.
        Default: every Conv2d and Linear layer. For structured pruning, layers whose channels
        cannot be removed (they feed a residual add, the model output or an operation that
        cannot be traced through, come from the model input, or belong to a depthwise or
        grouped convolution) are skipped by default and raise if named here.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    zeroskip.errors.FrontendError
        For an invalid argument, a model without prunable layers, a named layer that cannot be
        pruned, a structured pruning where no selected layer can lose channels, or a model that
        structured pruning cannot trace or run on ``example_input``.

    Warns
    -----
    zeroskip.errors.EmptyLayerWarning
        Naming every Conv2d and Linear layer of the model left without a nonzero weight (global
        pruning can empty a layer whose weights are all small).

    Notes
    -----
    Structured pruning replaces parameters with smaller ones, so optimizers built before the
    call must be rebuilt. It records each shrunk layer's original filter count in the attribute
    ``zeroskip_unpruned_out_channels`` so that later calls measure ``amount`` against it. Scoring and tracing run the model in eval mode, leaving BatchNorm
    statistics untouched, and restore its training flag afterwards.
    """
    _check_arguments(model, amount, granularity, criterion, scope)
    amount = float(amount)
    targets, named_explicitly = _target_layers(model, layers)
    if criterion == "taylor" and (data is None or loss_fn is None):
        missing = " and ".join(
            name for name, value in (("data", data), ("loss_fn", loss_fn)) if value is None
        )
        raise FrontendError(
            f"criterion='taylor' needs gradients: pass data= (an iterable of (inputs, targets) batches) "
            f"and loss_fn= (called as loss_fn(model(inputs), targets)); missing: {missing}"
        )
    if granularity == "element":
        scores = _weight_scores(model, targets, criterion, data, loss_fn)
        _prune_elements(targets, scores, amount, scope)
        _warn_empty_layers(model)
        return model

    if example_input is None:
        raise FrontendError(
            f"granularity={granularity!r} shrinks layers and needs example_input= (a batched input "
            f"tensor the model accepts) to find the spatial size behind each flatten"
        )
    channel_map = _ChannelMap(model, example_input)
    groups = _select_groups(channel_map, targets, granularity, named_explicitly)
    if granularity == "filter":
        scored = {group.producer_name: group.producer for group in groups}
    else:
        scored = {consumer.name: consumer.module for group in groups for consumer in group.consumers}
    scores = _weight_scores(model, scored, criterion, data, loss_fn)
    channel_scores = [_channel_scores(group, scores, granularity) for group in groups]
    if scope == "layer":
        removals = _layer_removals(groups, channel_scores, amount)
    else:
        removals = _global_removals(groups, channel_scores, amount)
    for group, removed in zip(groups, removals):
        if removed:
            _shrink(group, removed)
    _warn_empty_layers(model)
    return model


def _warn_empty_layers(model):
    """An EmptyLayerWarning naming every Conv2d / Linear left without a nonzero weight."""
    empty = [(name, module.weight.numel()) for name, module in model.named_modules()
             if isinstance(module, PRUNABLE_TYPES) and not _effective_weight(module).any()]
    warn_empty_layers(empty, "prune", stacklevel=4)


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Conv2d and Linear layers, with pruning masks applied.

    Parameters
    ----------
    model : torch.nn.Module
        The network.

    Returns
    -------
    float
        Zero weights divided by all weights of the Conv2d and Linear layers (biases excluded).

    Raises
    ------
    zeroskip.errors.FrontendError
        If the model has no Conv2d or Linear layer.
    """
    weights = [_effective_weight(module) for module in model.modules() if isinstance(module, PRUNABLE_TYPES)]
    if not weights:
        raise FrontendError("sparsity: the model has no Conv2d or Linear layers")
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    return zeros / sum(weight.numel() for weight in weights)


def remove_reparametrization(model: nn.Module) -> nn.Module:
    """Make every :mod:`torch.nn.utils.prune` mask in ``model`` permanent, in place.

    Each ``<name>_orig`` / ``<name>_mask`` pair becomes a plain parameter ``<name>`` holding the
    masked values, via :func:`torch.nn.utils.prune.remove`.

    Parameters
    ----------
    model : torch.nn.Module
        The network.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.
    """
    for module in model.modules():
        reparametrized = [
            name[: -len("_orig")]
            for name, _ in module.named_parameters(recurse=False)
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask")
        ]
        for name in reparametrized:
            torch_prune.remove(module, name)
    return model


# ---------------------------------------------------------------------------------------------
# Arguments


def _check_arguments(model, amount, granularity, criterion, scope):
    if not isinstance(model, nn.Module):
        raise FrontendError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not 0 <= amount < 1:
        raise FrontendError(
            f"amount must be a number in [0, 1) (the final fraction of weights pruned), got {amount!r}"
        )
    for argument, value, choices in (
        ("granularity", granularity, GRANULARITIES),
        ("criterion", criterion, CRITERIA),
        ("scope", scope, SCOPES),
    ):
        if value not in choices:
            raise FrontendError(f"unknown {argument} {value!r}; supported: {', '.join(map(repr, choices))}")


def _target_layers(model, layers):
    """The layers to prune by qualified name, and whether the user named them."""
    modules = dict(model.named_modules())
    prunable = [name for name, module in modules.items() if isinstance(module, PRUNABLE_TYPES)]
    if layers is None:
        if not prunable:
            raise FrontendError(
                "the model has no prunable layers: pruning applies to nn.Conv2d and nn.Linear, "
                "and the model contains neither"
            )
        return {name: modules[name] for name in prunable}, False
    if isinstance(layers, str):
        raise FrontendError(
            f"layers must be an iterable of qualified module names, not a single string; "
            f"did you mean layers=[{layers!r}]?"
        )
    try:
        names = list(layers)
    except TypeError:
        raise FrontendError(
            f"layers must be an iterable of qualified module names, got {type(layers).__name__}"
        ) from None
    if not names:
        raise FrontendError(
            "layers is empty; pass the names of the layers to prune, or None for every Conv2d and Linear"
        )
    for name in names:
        if name not in modules:
            raise FrontendError(
                f"layers: the model has no module named {name!r}; its prunable layers are {_quoted(prunable)}"
            )
        if not isinstance(modules[name], PRUNABLE_TYPES):
            raise FrontendError(
                f"layers: {name!r} is a {type(modules[name]).__name__}; only nn.Conv2d and nn.Linear "
                f"can be pruned (prunable layers: {_quoted(prunable)})"
            )
    return {name: modules[name] for name in names}, True


def _quoted(names, limit=12):
    if not names:
        return "none"
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------
# Scores


def _effective_weight(module):
    """The weight the layer computes with: ``weight_orig * weight_mask`` when it carries a mask."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def _weight_scores(model, layers, criterion, data, loss_fn):
    """Per-weight importance for each named layer, same shape as its weight."""
    weights = {name: _effective_weight(module) for name, module in layers.items()}
    if criterion == "magnitude":
        return {name: weight.abs() for name, weight in weights.items()}
    gradients = _accumulated_gradients(model, layers, data, loss_fn)
    return {name: (weights[name] * gradients[name]).abs() for name in layers}


def _accumulated_gradients(model, layers, data, loss_fn):
    """Sum of dL/dw over all batches of ``data`` for each named layer's weight."""
    # Under a pruning mask the trainable tensor is weight_orig; its gradient is dL/dw * mask,
    # which differs from dL/dw only where the weight is already zero.
    parameters = [getattr(module, "weight_orig", module.weight) for module in layers.values()]
    sums = [torch.zeros_like(parameter) for parameter in parameters]
    requires_grad = [parameter.requires_grad for parameter in parameters]
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for parameter in parameters:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            for batch in data:
                # A tensor batch would unpack along its first dimension, which is never meant.
                if isinstance(batch, torch.Tensor) or not _is_pair(batch):
                    raise FrontendError(
                        f"data must yield (inputs, targets) pairs; "
                        f"batch {batches} is a {type(batch).__name__}"
                    )
                inputs, targets = batch
                loss = loss_fn(model(inputs), targets)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                    raise FrontendError(
                        f"loss_fn must return a scalar tensor, got {shape} for batch {batches}"
                    )
                gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
                for total, gradient in zip(sums, gradients):
                    if gradient is not None:
                        total += gradient
                batches += 1
    finally:
        model.train(was_training)
        for parameter, flag in zip(parameters, requires_grad):
            parameter.requires_grad_(flag)
    if batches == 0:
        raise FrontendError(
            "data yielded no batches; criterion='taylor' needs at least one (inputs, targets) batch"
        )
    return dict(zip(layers, sums))


def _is_pair(batch):
    try:
        return len(batch) == 2
    except TypeError:
        return False


# ---------------------------------------------------------------------------------------------
# Element-wise pruning


def _prune_elements(layers, scores, amount, scope):
    pools = [list(layers)] if scope == "global" else [[name] for name in layers]
    for names in pools:
        masks = [_current_mask(layers[name]) for name in names]
        # Already-masked weights rank lowest, so they count towards the amount and stay pruned.
        ranked = torch.cat(
            [scores[name].masked_fill(mask == 0, -1.0).flatten() for name, mask in zip(names, masks)]
        )
        doomed = torch.zeros(ranked.numel(), dtype=torch.bool, device=ranked.device)
        doomed[torch.topk(ranked, round(amount * ranked.numel()), largest=False).indices] = True
        for name, mask, doomed_here in zip(names, masks, doomed.split([mask.numel() for mask in masks])):
            new_mask = mask * ~doomed_here.view_as(mask)
            torch_prune.custom_from_mask(layers[name], "weight", new_mask)


def _current_mask(module):
    if hasattr(module, "weight_mask"):
        return module.weight_mask.detach().clone()
    return torch.ones_like(module.weight, memory_format=torch.contiguous_format).detach()


# ---------------------------------------------------------------------------------------------
# Connectivity for structured pruning


@dataclass
class _Consumer:
    """A layer that reads the channels as input: Conv2d columns or blocks of Linear features."""

    name: str
    module: nn.Module
    # Input features per channel: 1 for a Conv2d, H*W for a Linear behind a flatten.
    features_per_channel: int


@dataclass
class _ChannelGroup:
    """Everything that must shrink together when output channels of one layer are removed."""

    producer_name: str
    producer: nn.Module
    # BatchNorms and depthwise convolutions the channels pass through.
    channel_wise: list[nn.Module] = field(default_factory=list)
    consumers: list[_Consumer] = field(default_factory=list)


class _ChannelMap:
    """The channel groups of a traced model, or for each layer why it has none."""

    def __init__(self, model, example_input):
        try:
            graph_module = symbolic_trace(model)
        except Exception as error:
            raise FrontendError(
                f"structured pruning traces the model with torch.fx.symbolic_trace, which failed: "
                f"{type(error).__name__}: {error}; make forward traceable or use granularity='element'"
            ) from error
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(graph_module).propagate(*inputs)
        except Exception as error:
            raise FrontendError(
                f"example_input does not run through the model: {type(error).__name__}: {error}"
            ) from error
        finally:
            model.train(was_training)

        self.modules = dict(model.named_modules())
        call_sites = defaultdict(list)
        for node in graph_module.graph.nodes:
            if node.op == "call_module":
                call_sites[node.target].append(node)
        self.call_sites = dict(call_sites)
        self.by_producer = {
            name: self._trace_group(name, self.modules[name])
            for name in self.call_sites
            if isinstance(self.modules[name], PRUNABLE_TYPES)
        }
        self.by_consumer = {
            consumer.name: group
            for group in self.by_producer.values()
            if isinstance(group, _ChannelGroup)
            for consumer in group.consumers
        }

    def filter_group(self, name):
        """The group whose channels are the output filters of layer ``name``, or why there is none."""
        if name not in self.call_sites:
            return "forward never calls it"
        return self.by_producer[name]

    def channel_group(self, name):
        """The group whose channels are the inputs of layer ``name``, or why there is none."""
        if name in self.by_consumer:
            return self.by_consumer[name]
        if problem := self._stateful_problem(name):
            return problem
        if _is_depthwise(module := self.modules[name]):
            return "it is a depthwise convolution, whose input channels shrink with the layer that feeds it"
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            return (
                f"it is a grouped convolution (groups={module.groups}), "
                f"whose input channels cannot shrink one by one"
            )
        source = self._channel_source(self.call_sites[name][0])
        if not isinstance(source, Node):
            return "its input is not a traced tensor"
        if source.op == "placeholder":
            return "its input channels come straight from the model input"
        if _is_add(source):
            return f"its input channels come from the residual add {source.name!r}"
        if source.op == "call_module" and isinstance(self.by_producer.get(source.target), str):
            problem = self.by_producer[source.target]
            return f"the layer feeding it, {source.target!r}, cannot lose filters: {problem}"
        return (
            f"its input comes from {source.name!r} ({_describe(source)}), "
            f"which channel pruning cannot trace through"
        )

    def _stateful_problem(self, name):
        calls = len(self.call_sites.get(name, ()))
        if calls == 0:
            return "forward never calls it"
        if calls > 1:
            return f"forward calls {name!r} {calls} times, and its channels cannot shrink for one call alone"
        return None

    def _trace_group(self, name, producer):
        """Follow the output channels of ``producer`` to the layers that consume them."""
        if problem := self._stateful_problem(name):
            return problem
        if _is_depthwise(producer):
            return (
                "it is a depthwise convolution, whose filters are tied to its input channels; "
                "prune the layer feeding it"
            )
        if isinstance(producer, nn.Conv2d) and producer.groups > 1:
            return (
                f"it is a grouped convolution (groups={producer.groups}), "
                f"whose filters cannot be removed one by one"
            )
        producer_node = self.call_sites[name][0]
        expected_rank = 4 if isinstance(producer, nn.Conv2d) else 2
        if len(_shape(producer_node)) != expected_rank:
            return (
                f"its output has shape {_shape(producer_node)}; "
                f"only batched outputs of rank {expected_rank} are supported"
            )

        group = _ChannelGroup(name, producer)
        # Each entry: a node whose dimension 1 holds the channels, and how many consecutive
        # features of that dimension belong to one channel (more than 1 after a flatten).
        pending = [(producer_node, 1)]
        while pending:
            carrier, features_per_channel = pending.pop()
            for user in carrier.users:
                outcome = self._follow(user, carrier, features_per_channel, group)
                if isinstance(outcome, str):
                    return outcome
                if outcome is not None:
                    pending.append((user, outcome))
        return group

    def _follow(self, user, carrier, features_per_channel, group):
        """Record what ``user`` does with the channels of ``carrier``.

        Returns the features per channel of ``user``'s output if the channels pass through it,
        None if they end there (a consumer) or it only reads the batch size, and a string
        explaining why when the channels cannot be followed.
        """
        if user.op == "output":
            return "its output channels are a model output"
        if _is_add(user):
            return f"its output channels feed the residual add {user.name!r}"
        if _is_batch_size_query(user, carrier):
            return None
        cannot_follow = (
            f"its output channels reach {user.name!r} ({_describe(user)}), which channel pruning "
            f"cannot trace through; supported in between: {_TRACEABLE_OPS}"
        )
        if user.args[:1] != (carrier,) or carrier in user.args[1:] or carrier in user.kwargs.values():
            return cannot_follow
        is_reshape = (
            (user.op == "call_module" and isinstance(self.modules[user.target], nn.Flatten))
            or (user.op == "call_function" and user.target is torch.flatten)
            or (user.op == "call_method" and user.target in _RESHAPE_METHODS)
        )
        if is_reshape:
            return _flattened_features(carrier, user, features_per_channel) or cannot_follow
        if user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS:
            return features_per_channel
        if user.op == "call_method" and user.target == "relu":
            return features_per_channel
        if user.op != "call_module":
            return cannot_follow

        module = self.modules[user.target]
        if isinstance(module, _ELEMENTWISE_MODULES):
            return features_per_channel
        if isinstance(module, _SPATIAL_MODULES) and features_per_channel == 1:
            return features_per_channel
        stateful = isinstance(module, (*_BATCHNORMS, nn.Conv2d, nn.Linear))
        if stateful and (problem := self._stateful_problem(user.target)):
            return f"its output channels reach {user.target!r}, but {problem}"
        if (isinstance(module, _BATCHNORMS) or _is_depthwise(module)) and features_per_channel == 1:
            group.channel_wise.append(module)
            return features_per_channel
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            group.consumers.append(_Consumer(user.target, module, 1))
            return None
        if isinstance(module, nn.Linear) and len(_shape(carrier)) == 2:
            group.consumers.append(_Consumer(user.target, module, features_per_channel))
            return None
        return cannot_follow

    def _channel_source(self, node):
        """Walk back from a layer's call to the node that creates its input channels."""
        source = node.args[0] if node.args else None
        while isinstance(source, Node) and self._passes_channels(source):
            source = source.args[0] if source.args else None
        return source

    def _passes_channels(self, node):
        if node.op == "call_module":
            module = self.modules[node.target]
            passing = (*_BATCHNORMS, *_ELEMENTWISE_MODULES, *_SPATIAL_MODULES, nn.Flatten)
            return isinstance(module, passing) or _is_depthwise(module)
        if node.op == "call_function":
            return node.target in _ELEMENTWISE_FUNCTIONS or node.target is torch.flatten
        return node.op == "call_method" and node.target in ("relu", *_RESHAPE_METHODS)


def _is_depthwise(module):
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels


def _is_add(node):
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def _is_batch_size_query(node, carrier):
    """``carrier.size(0)`` or ``carrier.shape[0]``: reads only the batch size, which never changes."""
    if node.op == "call_method" and node.target == "size":
        return node.args == (carrier, 0)
    if node.op == "call_function" and node.target is builtins.getattr and node.args == (carrier, "shape"):
        return all(
            user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0
            for user in node.users
        )
    return False


def _shape(node):
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else ()


def _flattened_features(carrier, reshape, features_per_channel):
    """Features per channel after a flatten to (N, -1), or None if ``reshape`` is something else."""
    before, after = _shape(carrier), _shape(reshape)
    if len(before) < 2 or len(after) != 2 or after != (before[0], math.prod(before[1:])):
        return None
    return features_per_channel * math.prod(before[2:])


def _describe(node):
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"function {getattr(node.target, '__name__', node.target)}"


def _select_groups(channel_map, targets, granularity, named_explicitly):
    """The channel groups to prune for the target layers; skipped or refused layers explained."""
    find_group = channel_map.filter_group if granularity == "filter" else channel_map.channel_group
    groups, problems = {}, []
    for name in targets:
        group = find_group(name)
        if isinstance(group, str):
            if named_explicitly:
                raise FrontendError(
                    f"layer {name!r} cannot be pruned with granularity={granularity!r}: {group}"
                )
            problems.append(f"{name!r}: {group}")
        else:
            groups[group.producer_name] = group
    if not groups:
        raise FrontendError(
            f"no layer of the model can be pruned with granularity={granularity!r}: " + "; ".join(problems)
        )
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# Structured pruning


def _channel_scores(group, scores, granularity):
    """Score of each channel of ``group`` (summed over its weights) and its number of weights."""
    if granularity == "filter":
        score = scores[group.producer_name]
        return score.flatten(1).sum(1), score[0].numel()
    channels = _channel_count(group.producer)
    total, weights_per_channel = 0, 0
    for consumer in group.consumers:
        # (out, in_channels, kh, kw) or (out, channels * features_per_channel) -> (out, channel, rest)
        score = scores[consumer.name].reshape(scores[consumer.name].shape[0], channels, -1)
        total = total + score.sum((0, 2))
        weights_per_channel += score[:, 0].numel()
    return total, weights_per_channel


def _channel_count(producer):
    return producer.out_channels if isinstance(producer, nn.Conv2d) else producer.out_features


def _layer_removals(groups, channel_scores, amount):
    """Per group, the channels to remove so that each layer alone reaches ``amount``."""
    removals = []
    for group, (scores, _) in zip(groups, channel_scores):
        current = scores.numel()
        original = getattr(group.producer, UNPRUNED_CHANNELS_ATTR, current)
        goal = min(round(amount * original), original - 1)
        count = max(goal - (original - current), 0)
        removals.append(torch.topk(scores, count, largest=False).indices.tolist())
    return removals


def _global_removals(groups, channel_scores, amount):
    """Per group, the channels to remove so that all groups together reach ``amount``."""
    currents = [scores.numel() for scores, _ in channel_scores]
    originals = [
        getattr(group.producer, UNPRUNED_CHANNELS_ATTR, current) for group, current in zip(groups, currents)
    ]
    count = round(amount * sum(originals)) - (sum(originals) - sum(currents))
    # Per-weight scores, so filters of large and small layers compete fairly.
    normalized = torch.cat([scores / size for scores, size in channel_scores])
    owners = [index for index, current in enumerate(currents) for _ in range(current)]
    offsets = [sum(currents[:index]) for index in range(len(currents))]
    removals = [[] for _ in groups]
    for position in torch.argsort(normalized, stable=True).tolist():
        if count <= 0:
            break
        owner = owners[position]
        if len(removals[owner]) < currents[owner] - 1:  # keep at least one channel per layer
            removals[owner].append(position - offsets[owner])
            count -= 1
    return removals


def _shrink(group, removed):
    """Physically remove channels ``removed`` from every module of ``group``."""
    producer = group.producer
    channels = _channel_count(producer)
    keep = torch.tensor(sorted(set(range(channels)) - set(removed)), dtype=torch.long)
    if not hasattr(producer, UNPRUNED_CHANNELS_ATTR):
        setattr(producer, UNPRUNED_CHANNELS_ATTR, channels)

    _select(producer, "weight", 0, keep)
    _select(producer, "bias", 0, keep)
    if isinstance(producer, nn.Conv2d):
        producer.out_channels = len(keep)
    else:
        producer.out_features = len(keep)

    for module in group.channel_wise:
        if isinstance(module, nn.Conv2d):  # depthwise
            _select(module, "weight", 0, keep)
            _select(module, "bias", 0, keep)
            module.in_channels = module.out_channels = module.groups = len(keep)
        else:
            for name in ("weight", "bias", "running_mean", "running_var"):
                _select(module, name, 0, keep)
            module.num_features = len(keep)

    for consumer in group.consumers:
        block = consumer.features_per_channel
        columns = (keep[:, None] * block + torch.arange(block)).flatten()
        _select(consumer.module, "weight", 1, columns)
        if isinstance(consumer.module, nn.Conv2d):
            consumer.module.in_channels = len(keep)
        else:
            consumer.module.in_features = len(columns)


def _select(module, name, dim, index):
    """Keep only ``index`` along ``dim`` of tensor ``name``, and of its pruning mask if it has one."""
    if hasattr(module, name + "_orig"):
        _select_tensor(module, name + "_orig", dim, index)
        _select_tensor(module, name + "_mask", dim, index)
        setattr(module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask"))
    else:
        _select_tensor(module, name, dim, index)


def _select_tensor(module, name, dim, index):
    tensor = getattr(module, name)
    if tensor is None:
        return
    smaller = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        smaller = nn.Parameter(smaller, requires_grad=tensor.requires_grad)
    # Module.__setattr__ keeps a buffer registered as a buffer.
    setattr(module, name, smaller)
