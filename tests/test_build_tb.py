"""The cocotb testbench in every build directory (``BUILD/tb/``), run as a user runs it.

Each design's testbench runs in a fresh process with nothing but the installed zeroskip and the
build: ``pytest BUILD/tb`` and ``python BUILD/tb/test_<top>.py``, with a clean environment
(only ``PATH`` without the venv, ``HOME`` and a cache directory of this module). The Verilator
model of each design is built once (cached by content in that directory) and serves every run.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zeroskip
from zeroskip import reference
from zeroskip.build import open_build
from zeroskip.testbench import build_tb

from engine_kinds import classifier_graph
from test_hdl_xnor import conv_graph as binary_conv_graph

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

DESIGNS = {
    # int8 pixels, a conv, a pool and a linear layer with the argmax class port.
    "int8": lambda rng: zeroskip.compile(classifier_graph(rng), lanes=2),
    # -1 / +1 in and out (bits on the wire), a three-dimensional output, no class port.
    "binary": lambda rng: zeroskip.compile(binary_conv_graph(
        rng, channels=5, filters=6, size=5, kernel=3, padding=1), lanes=3),
    # Wide streams: several activations a beat between the engines and on the output port.
    "wide": lambda rng: zeroskip.compile(classifier_graph(rng), lanes=2, stream_width=4),
}


@pytest.fixture(scope="module")
def clean_environment(tmp_path_factory):
    """What a fresh shell has: a PATH without the venv, HOME, and a cache of this module."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
            "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module", params=list(DESIGNS))
def build(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "build"
    design = DESIGNS[request.param](np.random.default_rng(3))
    design.write(path)
    return open_build(path), design


def run_in_fresh_shell(argv, environment, cwd):
    return subprocess.run(argv, env=environment, cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def test_the_testbench_is_listed_and_holds_the_golden_models_vectors(build):
    checked, design = build
    tb = checked.path / "tb"
    names = {f"tb/test_{design.top}.py", "tb/inputs.npy", "tb/outputs.npy"}
    if design.has_class:
        names.add("tb/classes.npy")
    assert names <= set(checked.manifest["files"])
    x = np.load(tb / "inputs.npy")
    assert x.shape == (build_tb.TESTBENCH_INFERENCES, *design.in_shape)
    np.testing.assert_array_equal(np.load(tb / "outputs.npy"), reference.run(design.graph, x))
    assert (x == 0).any() and (x != 0).any() if not design.in_act.binary else \
        set(np.unique(x)) == {-1, 1}


def test_pytest_on_the_build_runs_the_regression(build, clean_environment, tmp_path):
    checked, design = build
    result = run_in_fresh_shell([str(Path(sys.executable).parent / "pytest"), "-q",
                                 str(checked.path / "tb")], clean_environment, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
    open_build(checked.path)  # pytest's caches beside the files leave the build whole


def test_the_script_takes_stall_options_and_fails_on_a_wrong_golden_value(
        build, clean_environment, tmp_path):
    checked, design = build
    script = [sys.executable, str(checked.path / "tb" / f"test_{design.top}.py"),
              "--idle", "0.5", "--backpressure", "0.6", "--seed", "7"]
    result = run_in_fresh_shell(script, clean_environment, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the cocotb tests passed" in result.stdout

    # One golden output off by one: the beat it lands on is named, in both cocotb tests.
    damaged = tmp_path / "damaged"
    shutil.copytree(checked.path, damaged)
    outputs = np.load(damaged / "tb" / "outputs.npy")
    flat = outputs.reshape(-1)
    flat[5] = -flat[5] if design.out_act.binary else flat[5] + 1
    np.save(damaged / "tb" / "outputs.npy", outputs)
    script[1] = str(damaged / "tb" / f"test_{design.top}.py")
    result = run_in_fresh_shell(script, clean_environment, tmp_path)
    assert result.returncode != 0
    assert "2 of 2 cocotb tests failed" in result.stderr, result.stderr
    assert "o_stream beat" in result.stderr, result.stderr
