"""Builds deployable artifacts from the reference: ONNX graphs, FP16 graphs, TensorRT engines, the bundle."""
