"""zeroskip.frontend: PyTorch models to the layer IR (trace, fold, quantize, prune, export)."""
