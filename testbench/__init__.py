"""zeroskip.testbench: prove generated RTL bit-exact in cocotb under Verilator.

Modules
-------
verilog
    Amaranth component to Verilog text (:func:`~zeroskip.testbench.verilog.convert`) and
    Verilator's lint (:func:`~zeroskip.testbench.verilog.lint`).
runner
    Verilator builds cached by content, and stream jobs run on them
    (:func:`~zeroskip.testbench.runner.simulate`).
streams
    The cocotb-side stream driver, sink and scoreboard.
stream_test
    The cocotb test module the runner executes.
harness
    A wrapper that feeds a design from on-chip memory and captures its outputs and per-inference
    timestamps, so that long batches simulate at Verilator's own speed.
fast, fast_test
    Builds and runs the harness (:func:`~zeroskip.testbench.fast.fast_simulate`) and its cocotb
    test module.
"""

from pathlib import Path

import zeroskip.hdl

#: The project's Verilator configuration file (``hdl/verilator.vlt``): every lint waiver, each with
#: the reason for it. Used by lint and by every simulation build.
WAIVER_FILE = Path(zeroskip.hdl.__file__).resolve().parent / "verilator.vlt"
