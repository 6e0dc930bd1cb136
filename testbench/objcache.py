"""A compiler cache for Verilator's runtime: the C++ files every model links and no model changes.

Every Verilator build compiles Verilator's runtime (``verilated.cpp``, ``verilated_vpi.cpp``,
...) and cocotb's ``verilator.cpp`` again, with the same flags: about 12 of the 16 seconds a
small model takes to build. Verilator's makefile puts ``$(OBJCACHE)`` before each compiler
call (its hook for ccache); :func:`make_variable` names a launcher of this file there, which
keeps those objects in zeroskip's cache and copies them out on the next build.

Contract of a call ``objcache.py CACHE CXX ARGS...``: the same exit status and output files as
``CXX ARGS...``. It takes an object from the cache only for a compile of one installed source
(an absolute path outside the build directory, ``-c -o OUT``), under a key of the compiler, its
arguments and the source's size and time; and only while every file the compiler read for it
(its ``-MMD`` dependency list, which must name no file of the build directory) has the size
and time it had.
Anything else, and any error of the cache itself, runs the compiler. Standard library only:
make starts it for every object.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Bumped when what a cache entry holds changes.
RECIPE = 1
#: Entries the cache keeps at most (each about 2 MB); older ones go first.
MAX_ENTRIES = 64
_LAUNCHER = "cxx-objcache"


def _stamp(path: str) -> list:
    status = os.stat(path)
    return [path, status.st_size, status.st_mtime_ns]


def _cacheable(args: list[str]) -> tuple[str, str] | None:
    """``(source, output)`` of a compile of one installed C++ file to an object, else None."""
    if "-c" not in args or args.count("-o") != 1:
        return None
    index = args.index("-o")
    if index + 1 >= len(args):
        return None
    output = args[index + 1]
    sources = [arg for arg in args if arg.endswith((".cpp", ".cc", ".c"))]
    if len(sources) != 1 or not os.path.isabs(sources[0]) or "/" in output:
        return None
    source = sources[0]
    if os.path.commonpath([os.path.realpath(source), os.getcwd()]) == os.getcwd():
        return None  # generated in the build directory: a model's own code
    return source, output


def _dependencies(depfile: Path) -> list[str] | None:
    """The files a ``-MMD`` list names, or None if any is relative (in the build directory)."""
    text = depfile.read_text().replace("\\\n", " ")
    _, _, listed = text.partition(":")
    files = listed.split()
    if not files or any(not os.path.isabs(name) for name in files):
        return None
    return files


def _key(compiler: str, args: list[str], source: str) -> str:
    path = shutil.which(compiler) or compiler
    identity = {"recipe": RECIPE, "compiler": _stamp(os.path.realpath(path)), "args": args,
                "source": _stamp(source),
                "env": {name: os.environ.get(name) for name in
                        ("CPATH", "CPLUS_INCLUDE_PATH", "C_INCLUDE_PATH", "GCC_EXEC_PREFIX")}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _fetch(entry: Path, output: str) -> bool:
    """Copy a valid entry's object and dependency list out; False if there is none."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("recipe") != RECIPE:
            return False
        if any(_stamp(path) != [path, size, mtime] for path, size, mtime in meta["inputs"]):
            return False
        stem = os.path.splitext(output)[0]
        for name, target in (("object", output), ("depfile", f"{stem}.d")):
            if name in meta["files"]:
                partial = f"{target}.objcache"
                shutil.copyfile(entry / meta["files"][name], partial)
                os.replace(partial, target)
        os.utime(entry / "meta.json")  # recently used
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _store(cache: Path, entry: Path, output: str) -> None:
    stem = os.path.splitext(output)[0]
    depfile = Path(f"{stem}.d")
    inputs = _dependencies(depfile) if depfile.exists() else None
    if inputs is None:
        return  # nothing proves which files went in: not kept
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
    try:
        shutil.copyfile(output, partial / "object.o")
        shutil.copyfile(depfile, partial / "depfile.d")
        meta = {"recipe": RECIPE, "inputs": [_stamp(path) for path in inputs],
                "files": {"object": "object.o", "depfile": "depfile.d"}}
        (partial / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(partial, entry)  # another build may have stored it meanwhile
        except OSError:
            pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _trim(cache)


def _trim(cache: Path) -> None:
    entries = [path for path in cache.iterdir() if (path / "meta.json").exists()]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda path: (path / "meta.json").stat().st_mtime_ns)
    for path in entries[:len(entries) - MAX_ENTRIES]:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str]) -> int:
    cache, command = Path(argv[0]), argv[1:]
    compiler, args = command[0], command[1:]
    found = _cacheable(args)
    entry = None
    if found is not None:
        source, output = found
        try:
            entry = cache / _key(compiler, args, source)
        except OSError:
            entry = None
        if entry is not None and _fetch(entry, output):
            return 0
    status = subprocess.run(command, check=False).returncode
    if status == 0 and entry is not None:
        try:
            _store(cache, entry, output)
        except OSError:
            pass  # the cache is an optimisation; the object is built
    return status


def make_variable(cache: Path) -> str | None:
    """The value of make's ``OBJCACHE`` that runs this file with ``cache``, or None where the
    cache cannot be written or its path has white space (make's variables split on it)."""
    launcher = cache / _LAUNCHER
    if any(character.isspace() for character in str(launcher)):
        return None
    text = (f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} "
            f"{shlex.quote(str(cache))} \"$@\"\n")
    try:
        if not launcher.exists() or launcher.read_text() != text:
            cache.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(prefix=".launcher-", dir=cache)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.chmod(partial, 0o755)
            os.replace(partial, launcher)
    except OSError:
        return None
    return str(launcher)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
