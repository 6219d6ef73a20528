"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) driven by
Accelerate: ``train.strategy: fsdp``, or ``accelerate launch --use_fsdp --fsdp_version 2``.

Each rank keeps a shard of the student's parameters, gradients and optimizer state, and a shard
of the frozen teacher's parameters; a block's full weights exist only while it runs. The user's
modules are never turned into FSDP modules: a phase shards a copy (``ShardedPhase``) and hands
the trained weights back, whole, into the same parameter objects when it ends, so evaluation,
export and saving see an ordinary module. While the phase runs, those objects hold no storage
(their memory is what sharding saves); tied weights stay tied because the objects are kept.

Units: every transformer block (a Hugging Face model's ``_no_split_modules``, else the repeated
class of an ``nn.ModuleList``), the student (or teacher) itself, then the ``Distiller`` around it
(connectors, stateful losses) as the root. Accelerate's own ``fsdp2_prepare_model`` shards them.
"""

from __future__ import annotations

import copy

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.distributed.tensor import DTensor

from kdistill.errors import UserError
from kdistill.taps import FeatureTap

# Gathered whole on rank 0, in host memory: the best weights are kept in the single-process
# format (training checkpoints are sharded: kdistill.training.shards).
WHOLE_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
WHOLE_EVERYWHERE = StateDictOptions(full_state_dict=True)  # for loading whole states
FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2, each unit resharded after its forward pass; the units are chosen per model."""
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=True,
        auto_wrap_policy="transformer_based_wrap",
        cpu_ram_efficient_loading=False,
    )


def fsdp_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin | None) -> None:
    """Accelerate (1.16) turns FSDP on for GPU-like multi-process launches only, and leaves
    several CPU processes (gloo) in plain data parallelism though ``fully_shard`` runs there:
    given the plugin, such a launch is switched to FSDP as Accelerate would a GPU one."""
    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        # The recipe's plugin, or the launch's (read from the environment, as Accelerate does).
        plugin = plugin or FullyShardedDataParallelPlugin()
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(accelerator: Accelerator) -> bool:
    return bool(getattr(accelerator, "is_fsdp2", False))


def block_classes(model: nn.Module) -> list[str]:
    """The class names a model is sharded by: its Hugging Face ``_no_split_modules`` (the
    decoder layer), else the class repeated in an ``nn.ModuleList`` (kdistill's transformer
    blocks); then the model's own class, so it can be called on its own (evaluation)."""
    present = {type(m).__name__ for m in model.modules()}
    names = [n for m in model.modules() for n in getattr(m, "_no_split_modules", None) or ()]
    if not names:
        names = [
            type(m[0]).__name__
            for m in model.modules()
            if isinstance(m, nn.ModuleList)
            and len(m) > 1
            and len({type(c) for c in m}) == 1
            and any(True for _ in m[0].parameters())
        ]
    return list(dict.fromkeys([n for n in names if n in present] + [type(model).__name__]))


def use_units(accelerator: Accelerator, units: nn.Module) -> None:
    """The next model Accelerate shards is cut into units by the classes of ``units`` (the
    student or the teacher inside it), whatever wrapping a launch configured."""
    plugin = accelerator.state.fsdp_plugin
    plugin.auto_wrap_policy = transformer_auto_wrap_policy
    plugin.transformer_cls_names_to_wrap = block_classes(units)


def shard(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """Shard ``model`` in place with Accelerate (its plugin's precision policy), by its blocks."""
    use_units(accelerator, model)
    return fsdp2_prepare_model(accelerator, model)


def reshard(module: nn.Module) -> None:
    """Free the gathered weights of every unit (a frozen teacher has no backward pass that
    would, and its root keeps them after the forward pass)."""
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def release(module: nn.Module) -> None:
    """Drop the storage of ``module``'s parameters, keeping the objects (and so the ties)."""
    for param in module.parameters():
        param.data = torch.empty(0, dtype=param.dtype, device=param.device)


def hand_back(sharded: nn.Module, module: nn.Module) -> None:
    """Fill ``module``'s parameters and buffers with ``sharded``'s weights, whole, on every rank,
    gathered one parameter at a time (never a second whole model in memory at once)."""
    shards = dict(sharded.named_parameters())
    with torch.no_grad():
        for name, param in module.named_parameters():
            shard = shards[name]
            whole = shard.full_tensor() if isinstance(shard, DTensor) else shard.detach().clone()
            param.data = whole.to(param.device)
        buffers = dict(sharded.named_buffers())
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])


def _copy(owner, tapped: str):
    """A copy of a distiller or teacher (``owner``) whose parameters are new objects on the same
    storage (no second copy of the weights is ever made; ``release`` then leaves the copy the
    only holder), with its feature taps on the copy's modules: a tap's hooks are closures over
    the tap, which a deep copy would share, not copy."""
    module = getattr(owner, tapped)
    memo = {id(p): nn.Parameter(p.data, p.requires_grad) for p in module.parameters()}
    tap = getattr(owner, "tap", None)
    if tap is None:
        return copy.deepcopy(owner, memo)
    tap.remove()
    shadow = copy.deepcopy(owner, memo)
    owner.tap = FeatureTap(module, tap.names)
    shadow.tap = FeatureTap(getattr(shadow, tapped), tap.names)
    return shadow


def begin(accelerator: Accelerator, distiller: nn.Module, teacher, batch_transform):
    """The distiller to train and the ``ShardedPhase`` under FSDP (its sharded copy, and the
    phase; else the distiller itself and ``None``), or a one-line refusal of what a sharded
    phase cannot do yet."""
    if not is_sharded(accelerator):
        return distiller, None
    if getattr(batch_transform, "samples_the_student", False):
        refuse("on-policy generation", "sampling from a sharded student is not supported yet")
    phase = ShardedPhase(distiller, teacher)
    use_units(accelerator, phase.shadow.student)
    return phase.shadow, phase


class ShardedPhase:
    """A training phase under FSDP: the sharded copies of the distiller and the teacher it
    trains with, and the hand-back of the whole weights when it ends (a phase that raises
    leaves the user's modules without storage: the weights are in the last checkpoint)."""

    def __init__(self, distiller: nn.Module, teacher=None):
        self.distiller, self.teacher = distiller, teacher
        self.shadow = _copy(distiller, "student")
        self.shadow_teacher = None
        if isinstance(getattr(teacher, "module", None), nn.Module):
            self.shadow_teacher = _copy(teacher, "module")
            release(teacher.module)
        release(distiller)

    def shard_teacher(self, accelerator: Accelerator):
        """Once the distiller is prepared: the teacher, sharded by its own blocks: forward
        only, no gradient, no optimizer state, never in DDP. A teacher without a module (a
        cache) is returned as it is."""
        if self.shadow.chunk_size:
            # Chunked losses read the head's weight after the student's forward pass.
            self.shadow.student.set_reshard_after_forward(False, recurse=False)
        if self.shadow_teacher is None:
            return self.teacher
        module = self.shadow_teacher.module
        shard(accelerator, module)
        if not getattr(self.shadow_teacher, "lazy_logits", False):
            # Its root's weights are freed right after the forward pass too (FSDP keeps a
            # root's for the backward pass, which a teacher never has); lazy logits read the
            # head's later, and are freed after the step.
            module.set_reshard_after_forward(True, recurse=False)
        return self.shadow_teacher

    def after_step(self) -> None:
        if self.shadow_teacher is not None:
            reshard(self.shadow_teacher.module)

    def finish(self, optimizer) -> None:
        """Training is over: the optimizer's state goes first, making room for whole weights."""
        optimizer.state.clear()
        hand_back(self.shadow, self.distiller)
        if self.shadow_teacher is not None:
            hand_back(self.shadow_teacher.module, self.teacher.module)


def state(model: nn.Module, optimizer, accelerator: Accelerator) -> tuple[dict, dict]:
    """Model and optimizer state dicts for an unsharded checkpoint, on the main process (empty
    elsewhere); a sharded phase writes its own shards (kdistill.training.shards)."""
    if accelerator.is_main_process:
        return model.state_dict(), optimizer.state_dict()
    return {}, {}


def load_state(model: nn.Module, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Load a whole checkpoint's state dicts (one an unsharded run wrote); under FSDP every rank
    takes its shard of it (each read the same file). A state keyed by parameter name loads into
    an unsharded model too, through the same functions."""
    if isinstance(model, FSDPModule) or not all(
        isinstance(k, int) for k in optimizer_state["state"]
    ):
        set_model_state_dict(model, weights, options=WHOLE_EVERYWHERE)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=WHOLE_EVERYWHERE)
    else:
        model.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)


def whole_weights(model: nn.Module) -> dict:
    """The weights, whole, in host memory on the main process (empty on the others)."""
    return get_model_state_dict(model, options=WHOLE_ON_RANK0)


def load_weights_from_main(model: nn.Module, weights: dict) -> None:
    """The main process's whole weights, sharded out to every rank."""
    set_model_state_dict(model, weights, options=FROM_RANK0)


def refuse(setting: str, why: str) -> None:
    raise UserError(f"{setting} with train.strategy=fsdp: {why}")
