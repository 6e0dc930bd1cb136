"""zeroskip.testbench"""
