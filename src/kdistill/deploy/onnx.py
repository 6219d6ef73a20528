"""Measuring what a student won, and shipping it: parameters, bytes on disk, CPU latency, and
ONNX export with a parity check against PyTorch, dynamic int8 quantisation, ONNX Runtime timing.

onnx, onnxruntime and onnxscript are the optional ``export`` extra: imported inside functions,
and a missing one is a ``UserError`` that names the pip command.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.deploy.latency import Latency, repeat_sample, time_call
from kdistill.errors import UserError
from kdistill.io.files import replace_atomically

EXPORT_EXTRA = 'pip install "kdistill[export]" (onnx, onnxruntime, onnxscript)'
EXPORTERS = ("auto", "dynamo", "torchscript")


# --- ONNX ------------------------------------------------------------------------------------


def require_onnx():
    """``(onnx, onnxruntime)``, or a ``UserError`` naming the pip command when missing."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise UserError(
            f"ONNX export needs the export extra ({error.name} is missing): {EXPORT_EXTRA}"
        ) from None
    return onnx, onnxruntime


def input_names(example) -> list[str]:
    """ONNX input names: ``input`` for a tensor model, the keys for a keyword-input model."""
    return list(example) if isinstance(example, Mapping) else ["input"]


class _LogitsOnly(nn.Module):
    """Positional tensors in, logits out, whatever the wrapped model takes or returns (keyword
    inputs, a Hugging Face output object): the graph gets one input per tensor and one output."""

    def __init__(self, model: nn.Module, names: list[str], keyword: bool):
        super().__init__()
        self.model, self.names, self.keyword = model, names, keyword

    def forward(self, *inputs):
        from kdistill.distiller import call_model

        return call_model(self.model, dict(zip(self.names, inputs)) if self.keyword else inputs[0])


def export_onnx(
    model: nn.Module, example_batch, path: str | Path, *, exporter: str = "auto", opset: int = 18
) -> str:
    """Write ``model`` as ONNX with a dynamic batch axis (one file serves batch 1 and 256), and a
    dynamic sequence axis for token inputs, and return the exporter that succeeded.
    ``example_batch`` is a batch (a tensor or a dict of tensors) with at least 2 samples, so no
    exporter can mistake the batch size for a constant.

    Exporter choice, measured on the zoo's MLP, LeNet and ResNet-20 with torch 2.13 and ONNX
    Runtime 1.32: both exporters give logits within 3e-6 of PyTorch at batch 1 and 256, and
    int8 files that quantise alike. The TorchScript exporter took 0.05-0.5 s per model and
    writes one self-contained file; the torch.export-based one (``dynamo``, needs onnxscript,
    PyTorch's default since 2.9) took 3-12 s per model on the same 2 shared cores and puts
    weights in a side file unless told not to. So ``auto`` tries ``torchscript`` first and
    falls back to ``dynamo`` when the TorchScript exporter fails on a model or is gone (it is
    deprecated and slated for removal); the summary records which one wrote each file.
    The file is written under a temporary name and renamed: never half a model.
    """
    if exporter not in EXPORTERS:
        raise UserError(f"exporter {exporter!r}: choose from {', '.join(EXPORTERS)}")
    require_onnx()
    path = Path(path)
    names = input_names(example_batch)
    keyword = isinstance(example_batch, Mapping)
    args = tuple(example_batch[k].cpu() for k in names) if keyword else (example_batch.cpu(),)
    wrapper = _LogitsOnly(model.eval().cpu(), names, keyword).eval()
    tried = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors, succeeded = [], []

    def export(tmp: Path) -> None:
        for kind in tried:
            try:
                _export_with(kind, wrapper, args, names, tmp, opset)
            except Exception as error:  # each exporter raises its own zoo of types
                text = re.sub(
                    r"\x1b\[[0-9;]*m", "", str(error)
                ).strip()  # torch.export colours its messages
                errors.append(
                    f"{kind}: {text.splitlines()[0][:200] if text else type(error).__name__}"
                )
                tmp.unlink(missing_ok=True)
                continue
            succeeded.append(kind)
            return
        raise UserError(f"cannot export {type(model).__name__} to ONNX ({'; '.join(errors)})")

    replace_atomically(path, export, needed=0)
    return succeeded[0]


def is_sequence(tensor: torch.Tensor) -> bool:
    """Token ids (and their masks): integers shaped (batch, sequence). Their length is a
    dynamic axis of the ONNX graph, so text need not be padded to the training length."""
    return tensor.dim() == 2 and not tensor.is_floating_point()


def _export_with(
    kind: str, wrapper: nn.Module, args: tuple, names: list[str], path: Path, opset: int
) -> None:
    # The exporters log and warn a great deal about things that do not matter here (missing
    # torchvision ops, the TorchScript exporter's deprecation); a failure still raises.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    sequence = [is_sequence(a) for a in args]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if kind == "dynamo":
                try:
                    import onnxscript  # noqa: F401
                except ImportError:
                    raise UserError(
                        f"the dynamo ONNX exporter needs onnxscript: {EXPORT_EXTRA}"
                    ) from None
                batch = torch.export.Dim("batch", min=1)
                # AUTO: dynamic where the model allows it (a fixed position table may not).
                shapes = tuple(
                    {0: batch, 1: torch.export.Dim.AUTO} if seq else {0: batch} for seq in sequence
                )
                torch.onnx.export(
                    wrapper,
                    args,
                    str(path),
                    dynamo=True,
                    input_names=names,
                    output_names=["logits"],
                    dynamic_shapes=(shapes,),
                    opset_version=opset,
                    external_data=False,
                    optimize=True,
                    verbose=False,
                )
            else:
                per_token = any(sequence) and wrapper(*args).dim() == 3  # a language model's logits
                torch.onnx.export(
                    wrapper,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=names,
                    output_names=["logits"],
                    dynamic_axes={
                        **{
                            n: {0: "batch", 1: "sequence"} if seq else {0: "batch"}
                            for n, seq in zip(names, sequence)
                        },
                        "logits": {0: "batch", 1: "sequence"} if per_token else {0: "batch"},
                    },
                    opset_version=min(opset, 17),  # the TorchScript exporter's newest opset
                )
    finally:
        quiet.setLevel(level)


def quantize_int8(source: str | Path, target: str | Path, *, exclude: Sequence[str] = ()) -> None:
    """Dynamic int8 quantisation with ONNX Runtime: weights of MatMul/Gemm/Conv/Gather stored as
    int8 with a scale per output channel, activations quantised on the fly per batch (no
    calibration data needed); the nodes named in ``exclude`` stay in float32.

    Per-channel weights because one scale per tensor lets a few large weights flatten the rest:
    on the SmolLM2 recipe's student per-tensor int8 raised test perplexity 11.0 % (90.52 →
    100.53), per-channel 6.7 % (→ 96.61), at the same size and speed."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ONNX Runtime logs advice to run its pre-processing (shape inference + graph optimisation)
    # first; on the zoo's MLP and CNNs that changed neither the quantised graph nor its outputs
    # and cost over a second, so it is skipped and the advice silenced.
    advice = _DropMessages("pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replace_atomically(
                Path(target),
                lambda tmp: quantize_dynamic(
                    str(source),
                    str(tmp),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    # ONNX Runtime first rewrites a Gemm as MatMul + Add, the MatMul named
                    # "<Gemm's name>_MatMul" (quantization/onnx_model.py), and excludes by the
                    # new name: a Gemm is kept in float32 only under both.
                    nodes_to_exclude=[*exclude, *(f"{name}_MatMul" for name in exclude)],
                ),
                needed=0,
            )
    finally:
        logging.getLogger().removeFilter(advice)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def ort_session(path: str | Path, *, threads: int | None = None):
    """A CPU ONNX Runtime session on ``threads`` intra-op threads (default: PyTorch's count,
    so ONNX Runtime and PyTorch timings are comparable)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_feed(session, batch) -> dict[str, np.ndarray]:
    """The session's input dict for a batch (a tensor, or a dict of tensors by input name)."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(batch, Mapping):
        return {name: batch[name].cpu().numpy() for name in names}
    return {names[0]: batch.cpu().numpy()}


def ort_logits(session, batch) -> torch.Tensor:
    return torch.from_numpy(session.run(None, ort_feed(session, batch))[0])


def batch_rows(batch, rows: int | None):
    """``batch`` (a tensor or a mapping of tensors) ``rows`` samples at a time (all at once for
    None)."""
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch
    size = len(first)
    for start in range(0, size, rows or size):
        stop = start + (rows or size)
        if isinstance(batch, Mapping):
            yield {name: value[start:stop] for name, value in batch.items()}
        else:
            yield batch[start:stop]


def parity(model: nn.Module, session, batch, *, rows: int | None = None) -> tuple[float, float]:
    """Largest |ONNX Runtime − PyTorch| over the logits of ``batch``, and the share of its
    predictions (every position of a sequence) where their top-1 agree, from one forward pass of
    each, ``rows`` samples at a time: a language model's logits for 64 windows are 1.6 GB in
    each runtime."""
    from kdistill.distiller import call_model

    model = model.eval().cpu()
    largest, same, total = 0.0, 0, 0
    with torch.no_grad():
        for part in batch_rows(batch, rows):
            expected, got = call_model(model, part).float(), ort_logits(session, part)
            largest = max(largest, (got - expected).abs().max().item())
            agree = got.argmax(-1) == expected.argmax(-1)
            same, total = same + int(agree.sum()), total + agree.numel()
    return largest, same / total


def max_abs_diff(model: nn.Module, session, batch, *, rows: int | None = None) -> float:
    """Largest |ONNX Runtime − PyTorch| over the logits of ``batch`` (``parity``)."""
    return parity(model, session, batch, rows=rows)[0]


def top1_agreement(model: nn.Module, session, batch, *, rows: int | None = None) -> float:
    """The share of ``batch``'s predictions on which ONNX Runtime's top-1 is PyTorch's
    (``parity``)."""
    return parity(model, session, batch, rows=rows)[1]


def measure_ort_latency(session, example, *, batch_size: int = 1, **timing) -> Latency:
    """One ONNX Runtime run on ``batch_size`` copies of ``example`` (``time_call``)."""
    feed = ort_feed(session, repeat_sample(example, batch_size))
    return time_call(lambda: session.run(None, feed), **timing)


class OrtModel(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call convention, so the task's own
    ``evaluate`` scores the exported file exactly as it scores the PyTorch model."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        # trainer.predict finds the device from the first parameter; this one only says "cpu".
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, *args, **kwargs):
        return ort_logits(self.session, kwargs if kwargs else args[0])
