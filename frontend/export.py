"""Export: a PyTorch model to the layer IR.

An :class:`~.qat.IntegerNet` (a :class:`~.qat.QuantNet` or a :class:`~.binary.BinaryNet`)
exports the integers its forward computes with (its ``to_graph``); any other model is first
quantized post-training (:func:`~.qat.prepare` with the calibration data).
"""

from __future__ import annotations

from ..analysis import empty_layers
from ..errors import warn_empty_layers
from .qat import IntegerNet, prepare


def export(model, example_input, calibration=None, *, weight_bits=8, act_bits=8, epsilon=0,
           name=None):
    """Quantize ``model`` and return its :class:`zeroskip.ir.Graph`.

    Parameters
    ----------
    model : torch.nn.Module, QuantNet or BinaryNet
        A QuantNet (from :func:`zeroskip.qat.prepare`) or a BinaryNet (from
        :func:`zeroskip.binarize`), perhaps trained, exports its learned parameters as they are;
        a float model is quantized post-training.
    example_input : torch.Tensor
        A batch; fixes the input shape.
    calibration : torch.Tensor or iterable of batches, optional
        For post-training quantization: data whose ranges set the activation scales
        (``example_input`` when omitted). Ignored for a QuantNet or BinaryNet, which is
        calibrated already.
    weight_bits, act_bits, epsilon
        As for :func:`zeroskip.qat.prepare`; ignored for a QuantNet.

    Warns
    -----
    zeroskip.errors.EmptyLayerWarning
        Naming every conv2d and linear layer of the graph without a nonzero integer weight.
    """
    if not isinstance(model, IntegerNet):
        model = prepare(model, example_input, calibration, weight_bits=weight_bits,
                        act_bits=act_bits, epsilon=epsilon)
    graph = model.to_graph(name or "net")
    warn_empty_layers(empty_layers(graph), f"export of graph {graph.name!r}")
    return graph
