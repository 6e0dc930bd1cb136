"""zeroskip"""
