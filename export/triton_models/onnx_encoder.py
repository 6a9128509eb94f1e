"""Triton python model of one encoder (``--platform python``): the bundle's ONNX graph (``model.onnx`` beside this
file) in onnxruntime on the CPU, for Triton installs without the onnxruntime backend.

Triton hands one call every request its dynamic batcher gathered: the requests whose inputs have equal shapes past
the batch dimension are concatenated and run as one batch, and the rows are handed back to their requests.
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        feeds = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs] for r in requests]
        groups = {}
        for index, arrays in enumerate(feeds):
            groups.setdefault(tuple(a.shape[1:] for a in arrays), []).append(index)
        responses = [None] * len(requests)
        for members in groups.values():
            batch = {name: np.concatenate([feeds[i][k] for i in members]) for k, name in enumerate(self.inputs)}
            results = self.session.run(self.outputs, batch)
            start = 0
            for i in members:
                rows = len(feeds[i][0])
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(result[start:start + rows]))
                    for name, result in zip(self.outputs, results)])
                start += rows
        return responses
