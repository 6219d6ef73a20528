"""A teacher delivered only as an exported ``.onnx`` file, run by ONNX Runtime.

``OnnxModel`` is an ``nn.Module`` without parameters, so it goes wherever a teacher goes (the
frozen ``Teacher``, the teacher cache, evaluation, the run's report) and its logits feed every
logit-level term. Its layers are not PyTorch modules, so no forward hook can reach them:
feature terms with an ONNX teacher are refused (``check_onnx_terms``), naming the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from kdistill.errors import UserError
from kdistill.io.files import file_sha256
from kdistill.modeling import LOGITS

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class OnnxModel(nn.Module):
    """The ONNX graph at ``path`` as a frozen module: ``forward(x)`` (or keyword inputs named as
    the graph's inputs) returns the graph's first output as a tensor on the input's device.

    The file's SHA-256 is kept as a buffer: the teacher cache and a run's fingerprint read a
    teacher's identity from its tensors, and a replaced file must not reuse old outputs.
    """

    def __init__(self, path: str | Path, field: str = "teacher.onnx"):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{field}: {self.path} does not exist")
        try:
            import onnxruntime
        except ImportError:
            raise UserError(
                f"{field}: an ONNX teacher needs onnxruntime: pip install onnxruntime"
            ) from None
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # noqa: BLE001 -- ORT raises its own exception types (Fail, InvalidGraph ...)
            raise UserError(
                f"{field}: {self.path} is not a loadable ONNX model "
                f"({str(error).splitlines()[0][:200]})"
            ) from None
        self.inputs = {
            i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()
        }
        self.output_name = self.session.get_outputs()[0].name
        digest = bytes.fromhex(file_sha256(self.path))
        self.register_buffer("onnx_sha256", torch.tensor(list(digest), dtype=torch.uint8))
        # An empty parameter: code that finds a model's device from its first parameter (the
        # evaluators) works, and the parameter count stays 0.
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, *args, **kwargs) -> Tensor:
        if args:
            if len(args) != 1 or kwargs:
                raise TypeError(
                    "an ONNX teacher takes one input tensor, or "
                    "keyword tensors named as its graph's inputs"
                )
            if len(self.inputs) != 1:
                raise TypeError(
                    f"{self.path.name} takes {len(self.inputs)} inputs "
                    f"({', '.join(self.inputs)}): give a dict of them"
                )
            kwargs = {next(iter(self.inputs)): args[0]}
        unknown = set(kwargs) - set(self.inputs)
        if unknown:
            raise TypeError(
                f"{self.path.name} has no input {min(unknown)!r}; "
                f"its inputs: {', '.join(self.inputs)}"
            )
        device = next(iter(kwargs.values())).device
        feed = {
            name: value.detach().cpu().numpy().astype(self.inputs[name], copy=False)
            for name, value in kwargs.items()
        }
        try:
            (logits,) = self.session.run([self.output_name], feed)
        except Exception as error:  # noqa: BLE001 -- ORT's InvalidArgument, Fail ... share no base but Exception
            shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feed.items())
            raise ValueError(
                f"the ONNX teacher {self.path.name} cannot run on inputs {shapes}: "
                f"{str(error).splitlines()[0][:200]}"
            ) from None
        return torch.from_numpy(np.ascontiguousarray(logits)).float().to(device)

    def train(self, mode: bool = True) -> OnnxModel:
        return super().train(False)  # a graph has no training mode (dropout is exported off)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}"


def is_onnx_file(value) -> bool:
    return isinstance(value, (str, Path)) and str(value).lower().endswith(".onnx")


def check_onnx_terms(terms, field: str = "teacher.onnx") -> None:
    """Refuse terms that read the teacher's features: ONNX Runtime runs the graph as a whole."""
    for term in terms:
        if term.teacher is not None and term.teacher != LOGITS:
            raise UserError(
                f"{field}: term {term.name!r} reads the "
                f"teacher's feature {term.teacher!r}, but an "
                "ONNX teacher gives only its output (no module to "
                "hook); use logit-level terms (kd, dist, dkd "
                "...) or give the teacher as a PyTorch model"
            )


__all__ = ["OnnxModel", "check_onnx_terms", "is_onnx_file"]
