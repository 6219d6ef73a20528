"""The training settings: one pydantic model, ``TrainConfig``, that a recipe's ``train:``
section is (and a teacher's own ``epochs``/``lr``/``augment`` beside it). Every section refuses
unknown keys, so a typo fails before any data is loaded. It imports no PyTorch: reading a recipe
stays light.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Bounds far beyond any setting that trains, below those that crash rather than fail clearly:
# optimizers hold lr and weight decay as float32 (1e308 overflows in the step), and a
# DataLoader's batch must fit a C ssize_t.
MAX_STEP = 1e6
MAX_BATCH = 2**31 - 1
DURATION_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def budget_seconds(value: float | int | str) -> float:
    """Seconds of a budget given as a number of seconds or as ``"90s"``, ``"5m"``, ``"1.5h"``;
    ``ValueError`` for anything else."""
    if isinstance(value, bool):
        raise ValueError("give seconds (a number) or a duration such as '90s', '5m', '1.5h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*", str(value))
        if not match:
            raise ValueError(f"{value!r}: give seconds or a duration such as '90s', '5m', '1.5h'")
        seconds = float(match[1]) * DURATION_UNITS[match[2] or "s"]
    if not math.isfinite(seconds) or not 0 < seconds <= 10**7:
        raise ValueError(f"{value!r}: a budget is a positive number of seconds (at most 1e7)")
    return seconds


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# "auto": chosen by the kind of input once the data is loaded (kdistill.run.automatic): the
# built-in recipe's consistent-teaching views for images, none for tables, sequences and text.
Augment = Literal["auto", "none", "shift", "flip", "shift_flip", "affine"]


class EarlyStoppingConfig(Section):
    metric: str | None = Field(
        None,
        description=(
            "a validation metric (accuracy, loss, perplexity...); default: the task's headline"
        ),
    )
    patience: int = Field(3, ge=1, description="epochs without improvement before training stops")
    min_delta: float = Field(
        0.0, ge=0.0, description="smallest change that counts as an improvement"
    )


class TrainConfig(Section):
    epochs: int = Field(30, ge=1, description="passes over the training split")
    # The epochs fitted to a wall-clock budget before anything trains (kdistill.run.budget): one
    # number for both students, never a clock that stops one of them early.
    time_budget: float | None = Field(
        None,
        description=(
            "seconds (or '90s', '5m', '1.5h') the training may take: chooses train.epochs from "
            "a measured step before training (both students alike); a set train.epochs wins"
        ),
    )
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="samples per step (per process)")
    eval_batch_size: int = Field(
        512, ge=1, le=MAX_BATCH, description="samples per batch when scoring"
    )
    lr: float = Field(3e-3, gt=0, le=MAX_STEP, description="the peak learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="the optimizer")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd's momentum")
    weight_decay: float = Field(
        0.0,
        ge=0.0,
        le=MAX_STEP,
        description="decay of weight matrices and kernels (never biases or norm scales)",
    )
    schedule: Literal["cosine", "step", "constant"] = Field(
        "cosine", description="the learning-rate schedule over the steps"
    )
    seed: int = Field(
        0, ge=0, le=2**32 - 1 - 1000 * 64, description="seeds of ensemble members add 1000 each"
    )
    seeds: int = Field(
        1,
        ge=1,
        le=1000,
        description=(
            "run the recipe over this many seeds (train.seed, +1, ...), each its own run "
            "<name>-seed<s>, summarised in <name>/seeds.md (kdistill.run.seeds); 1: one plain run"
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: a GPU when there is one"
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast precision; loss math stays float32"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "over several processes: ddp (every process holds the whole student and teacher) "
            "or fsdp (FSDP2: each holds a shard of both, kdistill.training.sharding)"
        ),
    )
    augment: Augment = Field("none", description="augmentation while training the students")
    # Function matching (Beyer et al., CVPR 2022): each image mixed with another of the split,
    # replayably (kdistill.data.mixing); the teacher scores the same mixed view, the scratch
    # student learns the mixed labels. Teachers train unmixed.
    mix: Literal["auto", "none", "mixup", "cutmix"] = Field(
        "none", description="mix images of the training split (both students)"
    )
    mix_alpha: float = Field(
        1.0, gt=0, description="mixing weight lambda ~ Beta(mix_alpha, mix_alpha)"
    )
    scratch_mix: Literal["same", "none", "mixup", "cutmix"] = Field(
        "same",
        description=(
            "the scratch student's mixing: the distilled "
            "student's (same), or the one that makes it strongest"
        ),
    )
    views: int = Field(
        0,
        ge=0,
        description="distinct views of each sample a teacher scores, "
        "repeated in turn (0: a new view every epoch); "
        "a cached teacher runs this many passes",
    )
    checkpoint_every: int = Field(
        0, ge=0, description="also checkpoint every N steps (0: each epoch only)"
    )
    deterministic: bool = Field(
        False, description="deterministic kernels: bit-identical reruns and resumes"
    )
    compile: bool | Literal["inductor", "aot_eager", "cudagraphs"] = Field(
        False,
        description=(
            "torch.compile each trained student with its "
            "terms (true: inductor); teachers run as they are"
        ),
    )
    grad_accum: int = Field(
        1, ge=1, description="batches whose gradients are summed before each update"
    )
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the global gradient norm to this before each update"
    )
    warmup_steps: int = Field(
        0, ge=0, description="updates of linear learning-rate warm-up before the schedule"
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="warm-up as a fraction of all updates (when warmup_steps is 0)",
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="stop when the validation metric stops improving"
    )
    keep: Literal["last", "best"] = Field(
        "last",
        description=(
            "which epoch's weights each trained model keeps: "
            "the last, or the best on the validation split"
        ),
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_a_word(cls, value):
        # YAML 1.1 (safe_load) reads a bare `no` as false: `train.mixed_precision=no` means "no".
        return "no" if value is False else value

    @field_validator("time_budget", mode="before")
    @classmethod
    def _seconds(cls, value):
        return None if value is None else budget_seconds(value)

    @property
    def scratch_mixing(self) -> str:
        """The mixing the scratch student trains with: its
        own (``scratch_mix``) or the distilled one's."""
        return self.mix if self.scratch_mix == "same" else self.scratch_mix
