"""The Accelerator a run trains with: the device asked for (never a GPU picked silently), the
precision, deterministic kernels, ``torch.compile`` through Accelerate, and plain data
parallelism only (sharded launches are refused until kdistill's checkpoints support them).
"""

from __future__ import annotations

import functools
import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from kdistill.errors import UserError


def make_accelerator(
    device: str = "auto",
    mixed_precision: str = "no",
    *,
    deterministic: bool = False,
    compile: bool | str = False,
) -> Accelerator:
    """An Accelerator on the requested device. ``Accelerator()`` alone would silently pick the
    GPU when present; ``cpu=True`` is required to stay on the CPU (and to run without CUDA).

    ``deterministic`` selects deterministic kernels (``use_deterministic_algorithms``), before
    CUDA starts: see ``use_deterministic_kernels``. ``compile`` (``True`` for inductor, or a
    ``torch.compile`` backend name) has Accelerate compile each trained ``Distiller`` (student,
    connectors and loss terms, one graph) when ``train_loop`` prepares it; teachers run as they are.
    """
    if deterministic:
        use_deterministic_kernels()
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "train.device=cuda: no CUDA GPU is visible here; use train.device=auto or cpu"
        )
    if mixed_precision == "fp16" and use_cpu:
        # fp16 needs a gradient scaler and GPU kernels; bf16 has float32's range and runs on CPUs.
        raise UserError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 on the CPU")
    # Accelerate keeps its state per process and refuses a second Accelerator with another
    # precision; one process may run several recipes (tuning, notebooks, tests), so start over.
    # The process group (PartialState) is kept.
    _cache_accelerate_probe()
    backend = "inductor" if compile is True else (compile or "no")
    shared = AcceleratorState._shared_state
    plugin = shared.get("dynamo_plugin") if shared else None
    if shared and (
        shared.get("_mixed_precision") not in (None, mixed_precision)
        or (plugin is not None and str(plugin.backend.value).lower() != backend.lower())
    ):
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed_precision, dynamo_backend=backend)
    refuse_sharded(accelerator)
    return accelerator


def _cache_accelerate_probe() -> None:
    """Accelerate (1.15) asks whether the optional ``lomo_optim`` package is installed twice in
    every ``AcceleratedOptimizer.step``: an uncached importlib search of ``sys.path``, about
    0.3 ms a call here, most of ``train_loop``'s per-step overhead over a plain loop on small models
    (bench/throughput.py). The answer cannot change within a process, so it is asked once."""
    import accelerate.optimizer

    probe = accelerate.optimizer.is_lomo_available
    if not hasattr(probe, "cache_info"):
        accelerate.optimizer.is_lomo_available = functools.cache(probe)


def use_deterministic_kernels() -> None:
    """Deterministic kernels everywhere; call it before the first CUDA matmul.

    cuBLAS needs a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read when its handle is
    created) or it refuses. A few CUDA backward kernels have no deterministic version at all,
    among them ``adaptive_avg_pool2d`` (the zoo's global-average-pool heads, AT's pooling) and
    bilinear ``interpolate``; refusing them would refuse every CNN, so on CUDA they run and
    PyTorch warns once per op, naming it (``warn_only``). The rest of the run is bit-identical
    across reruns. On the CPU every kernel has a deterministic version: strict.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.benchmark = False


SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def refuse_sharded(accelerator: Accelerator) -> None:
    """FSDP, DeepSpeed and Megatron shard the model: kdistill's checkpoints, evaluation and
    teacher are not ready for it yet (they read the unwrapped, whole model on one rank)."""
    kind = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    if kind in SHARDED:
        raise UserError(
            f"distributed type {kind} shards the model, which kdistill does not support yet; "
            "launch plain data parallelism (torchrun, or accelerate launch without --use_fsdp / "
            "--use_deepspeed)"
        )


__all__ = ["SHARDED", "make_accelerator", "refuse_sharded", "use_deterministic_kernels"]
