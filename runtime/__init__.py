"""Loads a bundle and computes embeddings without torch (numpy, pillow, tokenizers, onnxruntime, tensorrt)."""
