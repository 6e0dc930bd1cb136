"""The one error type users see.

Every bad input (a malformed graph file, an unsupported PyTorch module, a missing tool) raises a
:class:`ZeroskipError` whose message names what is wrong and where. The CLI prints that message
alone and exits non-zero; it never shows a traceback for these.
"""


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
