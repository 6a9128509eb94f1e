"""Triton python model ``ruclip_tiny_preprocess``: IMAGE BYTES [1] (an encoded image file) -> pixels FP32
[3, 224, 224].

The Embedder's own path (``runtime.embedder.preprocess_item`` with ``image_preprocessing()``), with the server's
limits as parameters ``max_image_bytes`` and ``max_image_pixels`` (checked from the header, before decoding). A
broken or oversized image fails its own request only, with a message naming it.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.embedder import ImageItemError, image_preprocessing, preprocess_item


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.max_image_bytes = int(parameters["max_image_bytes"]["string_value"])
        self.max_image_pixels = int(parameters["max_image_pixels"]["string_value"])
        self.transform = image_preprocessing()

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        rows = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        pixels = []
        for index, row in enumerate(rows):
            data = bytes(row)
            if len(data) > self.max_image_bytes:
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"IMAGE[{index}] is {len(data)} bytes, over max_image_bytes {self.max_image_bytes}; "
                    "send a smaller image"))
            result = preprocess_item(self.transform, index, data, self.max_image_pixels)
            if isinstance(result, ImageItemError):
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"IMAGE[{index}] {result.reason}; send an encoded image file (JPEG, PNG, WebP, ...)"))
            pixels.append(result)
        batch = np.stack(pixels) if pixels else np.zeros((0, 3, 224, 224), np.float32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pixels", batch.astype(np.float32))])
