"""The one error type users see, and the warnings.

Every bad input (a malformed graph file, an unsupported PyTorch module, a missing tool) raises a
:class:`ZeroskipError` whose message names what is wrong and where. The CLI prints that message
alone and exits non-zero; it never shows a traceback for these. Input that works but is likely a
mistake gives a :class:`ZeroskipWarning` (``warnings.warn``), which the CLI prints as one line.
"""

import warnings


class ZeroskipError(Exception):
    """A problem with the user's input or environment, with a message fit to show as it is."""


class GraphError(ZeroskipError):
    """A graph (in memory or in a file) breaks the IR's rules.

    The message always starts with where: ``node 'conv1', field 'weight': ...``.
    """

    def __init__(self, message, *, node=None, field=None):
        where = []
        if node is not None:
            where.append(f"node {node!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.node = node
        self.field = field


class FrontendError(ZeroskipError):
    """A PyTorch model uses something the frontend cannot translate."""


class ToolchainError(ZeroskipError):
    """An EDA tool or Python package zeroskip needs is missing or broken."""


class SimulationMismatch(ZeroskipError):
    """A co-simulation gave an output that differs from the golden model's."""


class ZeroskipWarning(UserWarning):
    """Input that zeroskip handles but that is likely a mistake; the message names it."""


class EmptyLayerWarning(ZeroskipWarning):
    """A conv or linear layer keeps no nonzero weight: its output is its bias alone."""


def warn_empty_layers(empty, where, stacklevel=3):
    """Warn once naming every layer in ``empty`` (pairs of name and weight count), if any.

    ``stacklevel`` counts from the caller of this function's caller: the default points at the
    user's call of a public function that calls this one.
    """
    if not empty:
        return
    names = ", ".join(f"{name!r} ({count:,} weight{'' if count == 1 else 's'})"
                      for name, count in empty)
    layers = "layer" if len(empty) == 1 else f"{len(empty)} layers"
    warnings.warn(f"{where}: {layers} {names} keep{'s' if len(empty) == 1 else ''} no nonzero "
                  "weight: the output is the bias alone", EmptyLayerWarning,
                  stacklevel=stacklevel)
