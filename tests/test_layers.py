"""The layers import one way: frontend -> ir -> compiler -> hdl, testbench and boards below.

Every module's zeroskip imports (module level or inside functions) are read from its source and
checked against the layer it belongs to; ARCHITECTURE.md states the same table.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Folder -> package, as pyproject.toml maps them.
PACKAGES = {"zeroskip": "zeroskip", "frontend": "zeroskip.frontend", "hdl": "zeroskip.hdl",
            "testbench": "zeroskip.testbench", "boards": "zeroskip.boards",
            "zeroskip/compiler": "zeroskip.compiler"}

CORE = {"zeroskip", "zeroskip.errors", "zeroskip.ir", "zeroskip.reference", "zeroskip.analysis",
        "zeroskip.toolchain", "zeroskip.parts", "zeroskip.progress"}

#: Layer -> the zeroskip modules (or packages, with everything below) it may import.
ALLOWED = {
    "core": CORE,
    "zeroskip.build": CORE,
    "zeroskip.frontend": CORE | {"zeroskip.frontend"},
    "zeroskip.hdl": CORE | {"zeroskip.hdl"},
    "zeroskip.compiler": CORE | {"zeroskip.hdl", "zeroskip.compiler"},
    # The host link's cocotb test speaks the link's protocol (pure Python) to its gateware.
    "zeroskip.testbench": CORE | {"zeroskip.hdl", "zeroskip.testbench",
                                  "zeroskip.boards.protocol"},
    "zeroskip.design": CORE | {"zeroskip.build", "zeroskip.compiler", "zeroskip.hdl",
                               "zeroskip.testbench"},
    "zeroskip.boards": CORE | {"zeroskip.build", "zeroskip.hdl", "zeroskip.boards"},
}

#: The modules on top (commands, demos, the host link) may use every layer.
TOP = {"zeroskip.cli", "zeroskip.demo", "zeroskip.binary_demo", "zeroskip.models",
       "zeroskip.host", "zeroskip.simulation", "zeroskip.report", "zeroskip.__main__"}


def modules():
    """(module name, path) of every source module."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return sorted(found.items())


def layer_of(name):
    if name in TOP:
        return None
    for layer in ("zeroskip.compiler", "zeroskip.frontend", "zeroskip.hdl", "zeroskip.testbench",
                  "zeroskip.boards", "zeroskip.design", "zeroskip.build"):
        if name == layer or name.startswith(layer + "."):
            return layer
    return "core"


def imported(name, path):
    """The zeroskip modules ``name`` imports, relative imports resolved."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    result = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            result.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # A name may be a module or an attribute: checked as a module below ``module``.
            result.update(f"{module}.{alias.name}" for alias in node.names)
    return {module for module in result if module.split(".")[0] == "zeroskip"}


def allowed(target, rules):
    return any(target == rule or target.startswith(rule + ".") and rule != "zeroskip"
               for rule in rules)


@pytest.mark.parametrize("name,path", modules(), ids=[name for name, _ in modules()])
def test_module_imports_only_the_layers_below_it(name, path):
    layer = layer_of(name)
    if layer is None:
        return
    wrong = sorted(target for target in imported(name, path)
                   if not allowed(target, ALLOWED[layer]))
    assert not wrong, f"{name} ({layer}) imports {wrong}"


def test_hdl_never_imports_testbench_and_the_check_sees_imports_in_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ..testbench import fast\n")
    assert imported("zeroskip.hdl.probe", source) == {"zeroskip.testbench.fast"}
    assert not allowed("zeroskip.testbench.fast", ALLOWED["zeroskip.hdl"])
    assert allowed("zeroskip.hdl.conv", ALLOWED["zeroskip.compiler"])


#: Functions allowed past the limit, with the reason.
LONG_FUNCTIONS = {
    # One datapath for every step kind; to be split into components joined by streams.
    ("zeroskip.hdl.sequential", "SequentialEngine.elaborate"),
}
MAX_FUNCTION_LINES = 150


def _qualified_functions(tree):
    """(qualified name, node) of every function, methods as ``Class.method``."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def test_functions_stay_short():
    long = []
    for name, path in modules():
        for qualname, node in _qualified_functions(ast.parse(path.read_text())):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and (name, qualname) not in LONG_FUNCTIONS:
                long.append(f"{name}.{qualname} ({lines} lines)")
    assert not long, long
