"""torch.fx tracing: a PyTorch model to a :class:`~.graph.FloatGraph`, one handler per op.

Handlers are registered per module type, per function and per tensor method. Anything else is
refused with a message naming it and listing what is supported.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import FrontendError
from .graph import (
    FloatActivation, FloatAdd, FloatAvgPool2d, FloatBatchNorm, FloatConv2d, FloatFlatten,
    FloatGraph, FloatIdentity, FloatInput, FloatLinear, FloatMaxPool2d, FloatPad,
)

MODULE_HANDLERS = {}
FUNCTION_HANDLERS = {}
METHOD_HANDLERS = {}


def _handles(registry, *keys):
    def register(handler):
        for key in keys:
            registry[key] = handler
        return handler
    return register


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _masked_parameter(module, name):
    """A parameter with any torch.nn.utils.prune mask applied, and that mask.

    ``module.weight`` may be stale after training when pruning reparametrization is on, so the
    product ``weight_orig * weight_mask`` is taken afresh.
    """
    if hasattr(module, f"{name}_mask"):
        mask = getattr(module, f"{name}_mask").detach().bool()
        return getattr(module, f"{name}_orig").detach() * mask, mask
    value = getattr(module, name)
    if value is None:
        return None, None
    value = value.detach()
    return value, value != 0


def _source(node):
    """How the user wrote the op: the module's qualified name, else torch.fx's node name."""
    return node.target if node.op == "call_module" else node.name


def _refuse(what, node, reason):
    raise FrontendError(f"{what} at {_source(node)!r}: {reason}")


# --- modules -------------------------------------------------------------------------------------

@_handles(MODULE_HANDLERS, nn.Conv2d)
def _conv2d(node, module, ctx):
    where = f"Conv2d {node.target!r}"
    if module.padding_mode != "zeros":
        raise FrontendError(f"{where}: padding_mode {module.padding_mode!r} is not supported, "
                            "only 'zeros'")
    if _pair(module.dilation) != (1, 1):
        raise FrontendError(f"{where}: dilation {module.dilation} is not supported, only 1")
    if isinstance(module.padding, str):
        raise FrontendError(f"{where}: padding={module.padding!r} is not supported; give the "
                            "padding as integers")
    weight, mask = _masked_parameter(module, "weight")
    bias, _ = _masked_parameter(module, "bias")
    return FloatConv2d(ctx.name(node), ctx.inputs(node), _source(node), weight=weight, bias=bias,
                       mask=mask, stride=_pair(module.stride), padding=_pair(module.padding),
                       groups=module.groups)


@_handles(MODULE_HANDLERS, nn.Linear)
def _linear(node, module, ctx):
    weight, mask = _masked_parameter(module, "weight")
    bias, _ = _masked_parameter(module, "bias")
    return FloatLinear(ctx.name(node), ctx.inputs(node), _source(node), weight=weight, bias=bias,
                       mask=mask)


@_handles(MODULE_HANDLERS, nn.BatchNorm2d, nn.BatchNorm1d)
def _batchnorm(node, module, ctx):
    if not module.track_running_stats or module.running_mean is None:
        raise FrontendError(f"BatchNorm {node.target!r} has no running statistics to fold")
    channels = module.num_features
    weight = module.weight.detach() if module.affine else torch.ones(channels)
    bias = module.bias.detach() if module.affine else torch.zeros(channels)
    return FloatBatchNorm(ctx.name(node), ctx.inputs(node), _source(node),
                          mean=module.running_mean.detach(), var=module.running_var.detach(),
                          weight=weight, bias=bias, eps=module.eps)


@_handles(MODULE_HANDLERS, nn.ReLU)
def _relu_module(node, module, ctx):
    return FloatActivation(ctx.name(node), ctx.inputs(node), _source(node), kind="relu")


@_handles(MODULE_HANDLERS, nn.ReLU6)
def _relu6_module(node, module, ctx):
    return FloatActivation(ctx.name(node), ctx.inputs(node), _source(node), kind="relu6")


def _max_pool(node, ctx, kernel, stride, padding, dilation, ceil_mode, where):
    if _pair(dilation) != (1, 1) or ceil_mode:
        raise FrontendError(f"{where}: dilation and ceil_mode are not supported")
    kernel = _pair(kernel)
    return FloatMaxPool2d(ctx.name(node), ctx.inputs(node), _source(node), kernel=kernel,
                          stride=_pair(stride if stride else kernel), padding=_pair(padding))


def _avg_pool(node, ctx, kernel, stride, padding, ceil_mode, where):
    if _pair(padding) != (0, 0) or ceil_mode:
        raise FrontendError(f"{where}: average pooling with padding or ceil_mode is not "
                            "supported")
    kernel = _pair(kernel)
    return FloatAvgPool2d(ctx.name(node), ctx.inputs(node), _source(node), kernel=kernel,
                          stride=_pair(stride if stride else kernel))


def _global_pool(node, ctx, output_size, where):
    if _pair(output_size) != (1, 1):
        raise FrontendError(f"{where}: adaptive average pooling is supported only to output "
                            f"size 1 (global average pooling), got {output_size}")
    _, height, width = ctx.in_shape(node)
    return FloatAvgPool2d(ctx.name(node), ctx.inputs(node), _source(node), kernel=(height, width),
                          stride=(height, width))


@_handles(MODULE_HANDLERS, nn.MaxPool2d)
def _maxpool_module(node, m, ctx):
    return _max_pool(node, ctx, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                     f"MaxPool2d {node.target!r}")


@_handles(MODULE_HANDLERS, nn.AvgPool2d)
def _avgpool_module(node, m, ctx):
    return _avg_pool(node, ctx, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                     f"AvgPool2d {node.target!r}")


@_handles(MODULE_HANDLERS, nn.AdaptiveAvgPool2d)
def _adaptive_pool_module(node, m, ctx):
    return _global_pool(node, ctx, m.output_size, f"AdaptiveAvgPool2d {node.target!r}")


def _zero_pad(node, ctx, padding, value, where):
    """Zero padding of the last two dimensions; ``padding`` as torch gives it, last dim first."""
    padding = tuple(padding)
    if value not in (None, 0) or len(padding) not in (2, 4) or \
            not all(isinstance(p, int) and p >= 0 for p in padding):
        raise FrontendError(f"{where}: only zero padding of height and width by non-negative "
                            f"amounts is supported, got padding {padding} with value {value!r}")
    if len(ctx.in_shape(node)) != 3:
        raise FrontendError(f"{where}: padding is supported only on (N, C, H, W) inputs, got "
                            f"shape {ctx.in_shape(node)} after the batch")
    return FloatPad(ctx.name(node), ctx.inputs(node), _source(node),
                    padding=(padding + (0, 0))[:4])


@_handles(MODULE_HANDLERS, nn.ZeroPad2d, nn.ConstantPad2d)
def _pad_module(node, m, ctx):
    return _zero_pad(node, ctx, m.padding, m.value, f"{type(m).__name__} {node.target!r}")


@_handles(MODULE_HANDLERS, nn.Flatten)
def _flatten_module(node, m, ctx):
    return ctx.flatten(node, f"Flatten {node.target!r}")


@_handles(MODULE_HANDLERS, nn.Dropout, nn.Identity)
def _identity_module(node, m, ctx):
    return FloatIdentity(ctx.name(node), ctx.inputs(node), _source(node))


# --- functions and methods ------------------------------------------------------------------------

def _argument(node, index, keyword, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(keyword, default)


@_handles(FUNCTION_HANDLERS, operator.add, torch.add)
@_handles(METHOD_HANDLERS, "add")
def _add(node, ctx):
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if len(tensors) != 2 or len(node.args) != 2 or node.kwargs:
        _refuse("add", node, "only the sum of two tensors (a residual add) is supported")
    return FloatAdd(ctx.name(node), ctx.inputs(node), _source(node))


@_handles(FUNCTION_HANDLERS, F.relu, torch.relu)
@_handles(METHOD_HANDLERS, "relu")
def _relu_function(node, ctx):
    return FloatActivation(ctx.name(node), ctx.inputs(node), _source(node), kind="relu")


@_handles(FUNCTION_HANDLERS, F.relu6)
def _relu6_function(node, ctx):
    return FloatActivation(ctx.name(node), ctx.inputs(node), _source(node), kind="relu6")


@_handles(FUNCTION_HANDLERS, F.max_pool2d)
def _maxpool_function(node, ctx):
    kernel = _argument(node, 1, "kernel_size", None)
    return _max_pool(node, ctx, kernel, _argument(node, 2, "stride", None),
                     _argument(node, 3, "padding", 0), _argument(node, 4, "dilation", 1),
                     _argument(node, 5, "ceil_mode", False), f"max_pool2d {node.name!r}")


@_handles(FUNCTION_HANDLERS, F.avg_pool2d)
def _avgpool_function(node, ctx):
    kernel = _argument(node, 1, "kernel_size", None)
    return _avg_pool(node, ctx, kernel, _argument(node, 2, "stride", None),
                     _argument(node, 3, "padding", 0), _argument(node, 4, "ceil_mode", False),
                     f"avg_pool2d {node.name!r}")


@_handles(FUNCTION_HANDLERS, F.adaptive_avg_pool2d)
def _adaptive_pool_function(node, ctx):
    return _global_pool(node, ctx, _argument(node, 1, "output_size", None),
                        f"adaptive_avg_pool2d {node.name!r}")


@_handles(FUNCTION_HANDLERS, F.pad)
def _pad_function(node, ctx):
    where = f"pad {node.name!r}"
    mode = _argument(node, 2, "mode", "constant")
    if mode != "constant":
        raise FrontendError(f"{where}: mode {mode!r} is not supported, only zero padding")
    return _zero_pad(node, ctx, _argument(node, 1, "pad", ()), _argument(node, 3, "value", None),
                     where)


@_handles(FUNCTION_HANDLERS, torch.flatten)
@_handles(METHOD_HANDLERS, "flatten", "view", "reshape")
def _flatten_function(node, ctx):
    return ctx.flatten(node, f"{node.target if isinstance(node.target, str) else 'flatten'} "
                             f"{node.name!r}")


SUPPORTED = (
    "modules " + ", ".join(sorted({cls.__name__ for cls in MODULE_HANDLERS}))
    + "; functions " + ", ".join(sorted({getattr(f, "__module__", "") + "." + f.__name__
                                         if f.__module__ != "_operator" else "operator." +
                                         f.__name__ for f in FUNCTION_HANDLERS}))
    + "; tensor methods " + ", ".join(sorted(METHOD_HANDLERS))
)


class _Context:
    """What handlers need from the traced graph: names, inputs and propagated shapes.

    Nodes are named after the module they call (``features.0``), so that users meet the names
    they wrote; function calls keep torch.fx's names (``add``, ``flatten``); the input is
    ``input``.
    """

    def __init__(self, graph_module):
        self.modules = dict(graph_module.named_modules())
        self.names = {}
        self.aliases = {}

    def name(self, node):
        if node.name not in self.names:
            wanted = "input" if node.op == "placeholder" else \
                node.target if node.op == "call_module" else node.name
            taken = set(self.names.values())
            name, suffix = wanted, 1
            while name in taken:
                name, suffix = f"{wanted}_{suffix}", suffix + 1
            self.names[node.name] = name
        return self.names[node.name]

    def resolve(self, name):
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def inputs(self, node):
        return tuple(self.resolve(self.name(arg)) for arg in node.all_input_nodes
                     if "tensor_meta" in arg.meta)

    def in_shape(self, node):
        source = next(arg for arg in node.all_input_nodes if "tensor_meta" in arg.meta)
        return tuple(source.meta["tensor_meta"].shape[1:])

    def flatten(self, node, where):
        in_shape = self.in_shape(node)
        out_shape = tuple(node.meta["tensor_meta"].shape[1:])
        source = _source(node)
        if len(out_shape) == len(in_shape):
            return FloatIdentity(self.name(node), self.inputs(node), source)
        if len(out_shape) != 1:
            raise FrontendError(f"{where}: only flattening everything after the batch dimension "
                                f"is supported, got shape {out_shape} from {in_shape}")
        return FloatFlatten(self.name(node), self.inputs(node), source)


def trace(model, example_input):
    """Trace ``model`` on ``example_input`` (a batch) into a :class:`FloatGraph`.

    Raises
    ------
    FrontendError
        if the model cannot be traced, or uses a module, function or method zeroskip does not
        support; the message names it and lists what is supported.
    """
    if not isinstance(model, nn.Module):
        raise FrontendError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() not in (2, 4):
        raise FrontendError("example_input must be a float tensor batch of shape (N, C, H, W) "
                            "or (N, features)")
    leaf_types = tuple(MODULE_HANDLERS)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module, qualified_name):
            return isinstance(module, leaf_types) or super().is_leaf_module(
                module, qualified_name)

    was_training = model.training
    model.eval()
    try:
        graph = Tracer().trace(model)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise FrontendError(f"the model's forward takes {len(placeholders)} inputs; zeroskip "
                                "supports exactly one")
        graph_module = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example_input.float())
    except FrontendError:
        raise
    except Exception as error:  # fx raises many kinds; all mean "cannot trace this model"
        cause = error.__cause__ or error
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise FrontendError(f"torch.fx cannot trace {type(model).__name__} on an input of shape "
                            f"{tuple(example_input.shape)}: {type(cause).__name__}: "
                            f"{first_line}") from None
    finally:
        model.train(was_training)
    return _convert(graph_module, example_input)


def _convert(graph_module, example_input):
    ctx = _Context(graph_module)
    nodes, shapes, output = [], {}, None
    for node in graph_module.graph.nodes:
        if node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise FrontendError("the model must return a single tensor")
            output = ctx.resolve(ctx.name(result))
            continue
        if node.op == "placeholder":
            converted = FloatInput(ctx.name(node), (), "the input",
                                   shape=tuple(example_input.shape[1:]))
        elif "tensor_meta" not in node.meta:
            continue  # x.size(0) and similar: they only feed view/reshape arguments
        elif node.op == "call_module":
            module = ctx.modules[node.target]
            handler = MODULE_HANDLERS.get(type(module))
            if handler is None:
                raise FrontendError(f"unsupported module {node.target!r} of type "
                                    f"{type(module).__name__}; supported: {SUPPORTED}")
            converted = handler(node, module, ctx)
        elif node.op == "call_function":
            handler = FUNCTION_HANDLERS.get(node.target)
            if handler is None:
                name = getattr(node.target, "__name__", str(node.target))
                raise FrontendError(f"unsupported function {name!r} at {node.name!r}; "
                                    f"supported: {SUPPORTED}")
            converted = handler(node, ctx)
        elif node.op == "call_method":
            handler = METHOD_HANDLERS.get(node.target)
            if handler is None:
                raise FrontendError(f"unsupported tensor method {node.target!r} at "
                                    f"{node.name!r}; supported: {SUPPORTED}")
            converted = handler(node, ctx)
        else:
            raise FrontendError(f"unsupported graph node {node.name!r} ({node.op} "
                                f"{node.target!r}); supported: {SUPPORTED}")
        if isinstance(converted, FloatIdentity):
            ctx.aliases[converted.name] = converted.inputs[0]
            continue
        nodes.append(converted)
        shapes[converted.name] = tuple(node.meta["tensor_meta"].shape[1:]) \
            if "tensor_meta" in node.meta else converted.shape
    return FloatGraph(tuple(nodes), output, shapes)
