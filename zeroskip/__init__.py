"""zeroskip: pruned, quantized PyTorch networks to Verilog engines that skip zeros at run time.

The public API is loaded lazily so that ``import zeroskip`` (and the CLI) do not pay for torch
until a frontend function is used.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Graph": ("zeroskip.ir", "Graph"),
    "load": ("zeroskip.ir", "load"),
    "ZeroskipError": ("zeroskip.errors", "ZeroskipError"),
    "export": ("zeroskip.frontend.export", "export"),
    "import_qonnx": ("zeroskip.frontend.qonnx", "import_qonnx"),
    "compile": ("zeroskip.design", "compile"),
    "prune": ("zeroskip.frontend.prune", "prune"),
    "binarize": ("zeroskip.frontend.binary", "binarize"),
    "stats": ("zeroskip.analysis", "stats"),
    "reference": ("zeroskip.reference", None),
    "qat": ("zeroskip.frontend.qat", None),
    "ir": ("zeroskip.ir", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'zeroskip' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value
