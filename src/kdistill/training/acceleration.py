"""The Accelerator a run trains with: the device asked for (never a GPU picked silently), the
precision, deterministic kernels, ``torch.compile`` through Accelerate, and the strategy: data
parallelism, or FSDP2 (kdistill.training.sharding). DeepSpeed and Megatron-LM are refused.
"""

from __future__ import annotations

import functools
import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from kdistill.errors import UserError
from kdistill.training.sharding import fsdp_on_cpu, fsdp_plugin, refuse


def make_accelerator(
    device: str = "auto",
    mixed_precision: str = "no",
    *,
    deterministic: bool = False,
    compile: bool | str = False,
    strategy: str = "ddp",
) -> Accelerator:
    """An Accelerator on the requested device. ``Accelerator()`` alone would silently pick the
    GPU when present; ``cpu=True`` is required to stay on the CPU (and to run without CUDA).

    ``deterministic`` selects deterministic kernels (``use_deterministic_algorithms``), before
    CUDA starts: see ``use_deterministic_kernels``. ``compile`` (``True`` for inductor, or a
    ``torch.compile`` backend name) has Accelerate compile each trained ``Distiller`` (student,
    connectors and loss terms, one graph) when ``train_loop`` prepares it; teachers run as they are.
    ``strategy="fsdp"`` (or a launch with ``accelerate launch --use_fsdp --fsdp_version 2``)
    shards student and teacher over the processes (kdistill.training.sharding); one process has
    nothing to shard and trains as ever.
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
    launched = os.environ.get("ACCELERATE_USE_FSDP")
    fsdp = strategy == "fsdp" or str(launched).lower() == "true"
    if fsdp and backend != "no":
        refuse("train.compile", "compiling sharded modules is not supported yet; set it to false")
    shared = AcceleratorState._shared_state
    plugin = shared.get("dynamo_plugin") if shared else None
    if shared and (
        shared.get("_mixed_precision") not in (None, mixed_precision)
        or (plugin is not None and str(plugin.backend.value).lower() != backend.lower())
        or (shared.get("fsdp_plugin") is not None) != fsdp
    ):
        AcceleratorState._reset_state(reset_partial_state=False)
    plugin = fsdp_plugin() if strategy == "fsdp" else None
    accelerator = Accelerator(
        cpu=use_cpu, mixed_precision=mixed_precision, dynamo_backend=backend, fsdp_plugin=plugin
    )
    # Accelerate records a given plugin in the environment, where every later Accelerator of
    # this process (another recipe, another test) would find it: only a launch may set it.
    if launched is None:
        os.environ.pop("ACCELERATE_USE_FSDP", None)
    if fsdp:
        fsdp_on_cpu(accelerator, plugin)
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


SHARDED = ("DEEPSPEED", "MEGATRON_LM")


def refuse_sharded(accelerator: Accelerator) -> None:
    """DeepSpeed and Megatron-LM shard the model with engines of their own that kdistill's
    teacher, checkpoints and evaluation do not drive; FSDP2 does the same job (and FSDP1 is
    deprecated by Accelerate)."""
    kind = getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    if kind in SHARDED or (kind == "FSDP" and getattr(plugin, "fsdp_version", 2) != 2):
        version = " version 1" if kind == "FSDP" else ""
        raise UserError(
            f"distributed type {kind}{version} is not supported; shard with FSDP2 instead: "
            "train.strategy=fsdp, or accelerate launch --use_fsdp --fsdp_version 2"
        )


__all__ = ["SHARDED", "make_accelerator", "refuse_sharded", "use_deterministic_kernels"]
