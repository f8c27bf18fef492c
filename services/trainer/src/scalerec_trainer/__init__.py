"""ScaleRec trainer: Trains retrieval and ranking models, exports ONNX and writes Triton model versions."""
