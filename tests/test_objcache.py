"""The runtime's object cache (testbench/objcache.py), with a stand-in compiler that logs its
calls: what it takes from the cache, and everything that makes it compile instead."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zeroskip.testbench import objcache

#: A compiler: writes ``-o``'s file (the source's text and the header's) and a ``-MMD`` list
#: naming the source and the header given in $HEADER; logs each call; exits with $STATUS.
FAKE_COMPILER = r"""#!/bin/sh
echo call >> "$LOG"
out=""; src=""
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out="$2"; shift ;;
        *.cpp) src="$1" ;;
    esac
    shift
done
[ "${STATUS:-0}" = 0 ] || exit "$STATUS"
cat "$src" "$HEADER" > "$out"
printf '%s: %s \\\n %s\n' "$out" "$src" "$HEADER" > "${out%.o}.d"
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    compiler = tmp_path / "bin" / "fake-c++"
    compiler.parent.mkdir()
    compiler.write_text(FAKE_COMPILER)
    compiler.chmod(0o755)
    installed = tmp_path / "site-packages"
    installed.mkdir()
    (installed / "runtime.cpp").write_text("int runtime;\n")
    (installed / "runtime.h").write_text("// header one\n")
    build = tmp_path / "build"
    build.mkdir()
    log = tmp_path / "calls.log"
    log.write_text("")
    monkeypatch.setenv("LOG", str(log))
    monkeypatch.setenv("HEADER", str(installed / "runtime.h"))
    monkeypatch.chdir(build)
    return {"compiler": str(compiler), "installed": installed, "build": build, "log": log,
            "cache": tmp_path / "cache"}


def compile_once(setup, source=None, output="runtime.o", status=0, env=None):
    source = source or str(setup["installed"] / "runtime.cpp")
    environment = {**os.environ, "STATUS": str(status), **(env or {})}
    run = subprocess.run([sys.executable, objcache.__file__, str(setup["cache"]),
                          setup["compiler"], "-I.", "-MMD", "-O0", "-c", "-o", output, source],
                         env=environment, cwd=setup["build"], check=False)
    return run.returncode


def calls(setup):
    return len(setup["log"].read_text().split())


def test_second_compile_of_an_installed_source_comes_from_the_cache(setup):
    assert compile_once(setup) == 0
    built = (setup["build"] / "runtime.o").read_bytes()
    (setup["build"] / "runtime.o").unlink()
    (setup["build"] / "runtime.d").unlink()
    assert compile_once(setup) == 0
    assert calls(setup) == 1
    assert (setup["build"] / "runtime.o").read_bytes() == built
    assert (setup["build"] / "runtime.d").read_text().startswith("runtime.o: ")


@pytest.mark.parametrize("changed", ["runtime.cpp", "runtime.h"])
def test_a_changed_source_or_header_compiles_again(setup, changed):
    assert compile_once(setup) == 0
    path = setup["installed"] / changed
    path.write_text(path.read_text() + "// changed\n")
    assert compile_once(setup) == 0
    assert calls(setup) == 2
    assert "// changed" in (setup["build"] / "runtime.o").read_text()


def test_other_flags_are_another_entry(setup):
    assert compile_once(setup) == 0
    run = subprocess.run([sys.executable, objcache.__file__, str(setup["cache"]),
                          setup["compiler"], "-I.", "-MMD", "-O1", "-c", "-o", "runtime.o",
                          str(setup["installed"] / "runtime.cpp")], check=False)
    assert run.returncode == 0 and calls(setup) == 2


def test_a_header_of_the_build_directory_is_never_cached(setup):
    (setup["build"] / "Vtop.h").write_text("// the model\n")
    env = {"HEADER": "Vtop.h"}  # relative: found through -I.
    assert compile_once(setup, env=env) == 0
    assert compile_once(setup, env=env) == 0
    assert calls(setup) == 2


def test_a_source_in_the_build_directory_is_never_cached(setup):
    source = setup["build"] / "Vtop__ALL.cpp"
    source.write_text("int model;\n")
    assert compile_once(setup, source=str(source), output="Vtop__ALL.o") == 0
    assert compile_once(setup, source=str(source), output="Vtop__ALL.o") == 0
    assert calls(setup) == 2


def test_a_failed_compile_keeps_its_status_and_stores_nothing(setup):
    assert compile_once(setup, status=3) == 3
    assert not setup["cache"].exists() or not any(setup["cache"].iterdir())
    assert compile_once(setup) == 0
    assert calls(setup) == 2


def test_the_cache_keeps_at_most_its_entries(setup, monkeypatch):
    monkeypatch.setattr(objcache, "MAX_ENTRIES", 2)
    setup["cache"].mkdir()
    for index in range(4):
        entry = setup["cache"] / f"entry{index}"
        entry.mkdir()
        (entry / "meta.json").write_text("{}")
        os.utime(entry / "meta.json", ns=(index * 10**9, index * 10**9))
    objcache._trim(setup["cache"])
    assert sorted(path.name for path in setup["cache"].iterdir()) == ["entry2", "entry3"]


def test_launcher_runs_this_file_and_no_launcher_where_paths_have_spaces(tmp_path):
    launcher = objcache.make_variable(tmp_path / "objects")
    assert launcher is not None and os.access(launcher, os.X_OK)
    assert objcache.__file__ in Path(launcher).read_text()
    assert objcache.make_variable(tmp_path / "with space") is None
