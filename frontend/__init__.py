"""zeroskip.frontend"""
