"""Triton python model ``ruclip_tiny_tokenize``: TEXT BYTES [1] (UTF-8) -> input_ids, attention_mask INT64 [-1].

The runtime's tokenizer (the one proven identical to the original). Each request's rows are padded to the smallest
length bucket (parameter ``length_buckets``) that holds its longest text, so that requests of similar length have
equal shapes and the encoder batches them; the [CLS] feature does not depend on the masked positions.
"""

import json
import os

import triton_python_backend_utils as pb_utils

from runtime.tokenizer import FastTokenizer


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.buckets = sorted(int(b) for b in parameters["length_buckets"]["string_value"].split(","))
        self.tokenizer = FastTokenizer.from_directory(
            os.path.join(args["model_repository"], args["model_version"], "tokenizer"))

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        texts = []
        for index, row in enumerate(rows):
            try:
                texts.append(row.decode("utf-8") if isinstance(row, bytes) else str(row))
            except UnicodeDecodeError as err:
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"TEXT[{index}] is not UTF-8 ({err}); send texts encoded as UTF-8"))
        encoded = self.tokenizer.encode(texts)
        longest = int(encoded.lengths.max()) if len(texts) else 1
        width = next((b for b in self.buckets if b >= longest), self.buckets[-1])
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("input_ids", encoded.input_ids[:, :width].copy()),
            pb_utils.Tensor("attention_mask", encoded.attention_mask[:, :width].copy()),
        ])
