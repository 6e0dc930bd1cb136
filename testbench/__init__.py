"""zeroskip.testbench: prove generated RTL bit-exact in cocotb under Verilator.

Modules
-------
verilog
    Verilator's lint (:func:`~zeroskip.testbench.verilog.lint`) of the Verilog that
    :func:`zeroskip.hdl.verilog.convert` writes.
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
