"""Sequence-level knowledge distillation: the student learns from the teacher's own generations.

Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv:1606.07947. Token-level
(word-level) KD matches the teacher's next-token distribution on the data's prefixes; sequence-
level KD trains the student with cross-entropy on sequences the teacher generates (its mode,
approximated by greedy decoding, or samples from it), which approximates matching the
teacher's distribution over whole sequences. They found the two complementary: token-level KD
on the teacher's generations was their best student.

``teacher_sequences`` continues prompts from the training windows (their first ``prompt``
tokens) to whole windows with the teacher, once, before the student trains; a run writes them
as a reusable data set under the teacher cache's folder (``kdistill.run.school``). ``SequenceKD``
is the batch transform that trains on them: a share λ (``fraction``) of each batch's sequences
is replaced by teacher sequences, their prompt not counted and the teacher's tokens the targets,
so the cross-entropy learns the teacher's sequences and the divergence terms compare the two
models on them. λ = 1 trains on the teacher's sequences alone; λ < 1 mixes them with the data,
for the same optimizer steps as the scratch student.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdistill.errors import ConfigError, UserError
from kdistill.io.tensors import load_tensors, save_tensors
from kdistill.teachers.identity import teacher_identity
from kdistill.training.sampling import OnPolicy, sample


@torch.no_grad()
def teacher_sequences(
    teacher: nn.Module,
    prompts: Tensor,
    length: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> Tensor:
    """``prompts`` (N, P) continued by ``teacher`` to (N, ``length``) token ids: greedy at
    ``temperature`` 0, else sampled from softmax(logits / temperature) (its ``top_k`` most
    likely tokens if given), seeded by ``seed`` and each batch's first row (so the same
    ``seed`` and ``batch_size`` give the same sequences)."""
    device = next(teacher.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        prefix = prompts[start : start + batch_size].to(device)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
        ids = sample(
            teacher,
            prefix,
            length - prefix.shape[1],
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            context=length - 1,
        )
        out.append(ids.cpu())
    return torch.cat(out)


def training_prompts(dataset, count: int, prompt: int) -> Tensor:
    """The first ``prompt`` tokens of ``count`` training windows spread evenly over ``dataset``
    (windows with padding skipped), (count, prompt) int64."""
    full = [i for i in range(len(dataset)) if bool(torch.as_tensor(dataset[i]["mask"]).all())]
    if not full:
        raise ValueError("no training window without padding to take a prompt from")
    picks = torch.linspace(0, len(full) - 1, count).round().long().tolist()
    rows = []
    for i in picks:
        sample_ = dataset[full[i]]
        tokens = sample_["input"]
        if isinstance(tokens, Mapping):
            tokens = tokens["input_ids"]
        rows.append(torch.as_tensor(tokens)[:prompt])
    return torch.stack(rows).long()


def sequence_length(splits, settings: dict) -> int:
    """The tokens of each teacher sequence (the data's windows: L + 1), once ``splits`` and
    ``settings`` are checked to suit sequence-level KD; one ``ConfigError`` line otherwise."""
    field = "distill.params.sequence_kd"
    if splits.task != "language_modelling" or splits.teacher_inputs:
        raise ConfigError(
            f"{field}: the teacher's generations train a causal language model that reads the "
            "teacher's tokens (language-modelling data, one tokenizer)"
        )
    length = int(splits.input_shape[0]) + 1
    if settings["prompt"] > length - 2:
        raise ConfigError(
            f"{field}.prompt: {settings['prompt']}; at most {length - 2} tokens, to leave the "
            f"teacher tokens to write in windows of {length}"
        )
    return length


def kept_sequences(
    model: nn.Module,
    splits,
    settings: dict,
    *,
    folder: Path,
    batch_size: int,
    accelerator,
    progress: bool = True,
) -> Tensor:
    """The teacher's continuations of prompts from the training windows (``settings``:
    sequences, prompt, temperature, top_k, seed), made once by the main process and kept as a
    data set, ``folder/sequences-<key>.safetensors``, for every later run and seed with the
    same teacher, data and settings; (N, L + 1) token ids."""
    length = sequence_length(splits, settings)
    identity = {"teacher": teacher_identity(model), "data": splits.identity, "length": length}
    # Greedy decoding draws nothing: its sequences serve every seed.
    drawn = {k: v for k, v in settings.items() if k != "seed" or settings["temperature"] > 0}
    fingerprint = json.dumps({**identity, "settings": drawn}, sort_keys=True, default=str)
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    file = Path(folder) / f"sequences-{key}.safetensors"
    if accelerator.is_main_process and not file.is_file():
        started = time.perf_counter()
        prompts = training_prompts(splits.train, settings["sequences"], settings["prompt"])
        made = teacher_sequences(
            model,
            prompts,
            length,
            temperature=settings["temperature"],
            top_k=settings["top_k"],
            seed=settings["seed"],
            batch_size=batch_size,
        )
        save_tensors(file, {"ids": made}, meta={"fingerprint": fingerprint})
        if progress:
            print(
                f"teacher sequences: {len(made)} of {length} tokens ({settings['prompt']} of "
                f"prompt each) in {time.perf_counter() - started:.1f} s at {file}"
            )
    accelerator.wait_for_everyone()
    tensors, meta = load_tensors(file, what="teacher sequences", expect_digest=True)
    if meta.get("fingerprint") != fingerprint:
        raise UserError(f"{file}: made for another teacher, data or settings; delete it")
    return tensors["ids"]


class SequenceKD(OnPolicy):
    """Batch transform: λ·B of a batch's sequences in expectation (chosen as ``OnPolicy``
    chooses them) replaced by teacher ``sequences`` drawn at random, each counted on the
    positions that predict the teacher's generated tokens only.

    Args:
        sequences: (N, L + 1) teacher sequences (prompt + generation) of the batches' length.
        prompt: P, the prompt's tokens at the start of each sequence (not counted).
        fraction: λ in [0, 1]; 1 trains on the teacher's sequences alone.
        seed: seeds the choices (a run passes ``train.seed``); checkpointed with the loop.
    """

    samples_the_student = False  # the sequences are made before training: FSDP takes it

    def __init__(self, sequences: Tensor, prompt: int, *, fraction: float = 1.0, seed: int = 0):
        if sequences.dim() != 2 or not 1 <= prompt < sequences.shape[1] - 1:
            raise ValueError(
                f"sequence_kd: prompt must be in 1..{sequences.shape[-1] - 2} tokens, got {prompt}"
            )
        super().__init__(
            None, fraction=fraction, continuation=sequences.shape[1] - prompt, seed=seed
        )
        self.sequences, self.prompt = sequences, prompt

    def __call__(self, batch: Mapping) -> dict:
        inputs, target = batch["input"], batch["target"]
        if isinstance(inputs, Mapping) or inputs.dim() != 2:
            raise ValueError("sequence-level KD needs (B, L) token ids as the batch input")
        count, length = inputs.shape
        if self.sequences.shape[1] != length + 1:
            raise ValueError(
                f"sequence_kd: the teacher's sequences hold {self.sequences.shape[1]} tokens, "
                f"the batches' windows {length + 1}"
            )
        mask = batch.get("mask")
        mask = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.bool()
        chosen = self._choose(count, mask)
        generated = torch.arange(length, device=target.device) >= self.prompt - 1
        new_inputs, new_target, new_mask = inputs, target, mask
        if len(chosen):
            generator = self._rng(inputs.device)
            picks = torch.randint(
                len(self.sequences), (len(chosen),), generator=generator, device=generator.device
            )
            rows = self.sequences[picks.cpu()].to(inputs.device)
            new_inputs, new_target, new_mask = inputs.clone(), target.clone(), mask.clone()
            new_inputs[chosen], new_target[chosen] = rows[:, :-1], rows[:, 1:]
            new_mask[chosen] = generated
            self.replaced += len(chosen)
        counted = torch.zeros_like(new_mask)
        counted[chosen] = generated
        share = counted.sum() / new_mask.sum().clamp_min(1)
        return {
            **batch,
            "input": new_inputs,
            "target": new_target,
            "mask": new_mask,
            "metric/sequence_kd_share": share,
        }


__all__ = [
    "SequenceKD",
    "kept_sequences",
    "sequence_length",
    "teacher_sequences",
    "training_prompts",
]
