"""A build directory: the files ``zeroskip compile`` writes, and reading them back.

A build holds ``<top>.v`` (the Verilog), :data:`MANIFEST_FILE` (what the Verilog is: ports,
layers, the compile's options, the Verilog's SHA-256), :data:`REPORT_FILE` (the compile report)
and :data:`GRAPH_FILE` (the graph, so the design can be compiled again). Later commands add
their own results beside them (``sim.json``, ``synth-<target>.json``, ``board-<board>/``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import ZeroskipError

__all__ = ["GRAPH_FILE", "MANIFEST_FILE", "REPORT_FILE", "read_manifest", "write_files"]

MANIFEST_FILE, REPORT_FILE, GRAPH_FILE = "manifest.json", "report.txt", "graph.zsg"


def read_manifest(directory, *keys):
    """A build directory's manifest and its values of ``keys``; a ZeroskipError says which
    directory or file is not what ``zeroskip compile`` writes."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ZeroskipError(f"{str(directory)!r} is not a zeroskip build directory: it has "
                            f"no {MANIFEST_FILE} (make one with `zeroskip compile`)")
    try:
        manifest = json.loads(manifest_path.read_text())
        return manifest, [manifest[key] for key in keys]
    except (ValueError, KeyError, TypeError) as error:
        raise ZeroskipError(f"{str(manifest_path)!r} is not a zeroskip manifest: "
                            f"{error}") from None


def write_files(directory, files):
    """Write ``files`` (name -> bytes) into ``directory``, made if needed.

    Each file is written aside and renamed into place, so a failure never leaves half a file.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ZeroskipError(f"build directory {str(directory)!r} is a file")
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False,
                                         suffix=".partial") as handle:
            handle.write(content)
        os.replace(handle.name, directory / name)
