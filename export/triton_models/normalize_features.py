"""Triton python model ``ruclip_tiny_normalize``: features FP32 [768] -> EMBEDDING FP32 [768], each row scaled to
unit L2 norm by ``runtime.embedder.l2_normalize`` (exactly as the Embedder normalises): the last step of both
ensembles."""

import triton_python_backend_utils as pb_utils

from runtime.embedder import l2_normalize


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            features = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("EMBEDDING", l2_normalize(features))]))
        return responses
