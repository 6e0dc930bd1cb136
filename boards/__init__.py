"""zeroskip.boards"""
