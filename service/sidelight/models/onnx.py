"""ONNX models (onnxruntime) behind the nn.Module call every method makes: torch in, torch out.

Forward passes only: onnxruntime computes outside autograd, so an ONNX model offers no
gradients and serves the perturbation methods (kernel_shap, lime, occlusion, rise, ...) and
Predict. Inputs cross to the host and back once per model call (a call holds many rows);
on CUDA, onnxruntime's IO binding could keep them on the device, which this does not do yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


class OnnxModule(nn.Module):
    # No hooks (the methods that hook need gradients, which ONNX models do not give), and an
    # onnxruntime session may be run from several threads: Model.private_copy shares it.
    shared_across_threads = True

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": str(device.index or 0)}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(f"takes {len(inputs)} inputs; Sidelight feeds one tensor")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu").contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(np.asarray(out)).to(x.device)
