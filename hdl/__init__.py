"""zeroskip.hdl"""
