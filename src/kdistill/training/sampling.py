"""Sampling from causal language models: continuations for reports, and the on-policy batches
of generalised knowledge distillation (GKD).

A Hugging Face causal LM generates with its own ``generate`` and key/value cache, one new token's
work per step. Any other model ``call_model`` can run on ids (kdistill's GPT) is re-run on the
sequence so far at each step (no cache), which keeps that path model-agnostic; its
continuations are therefore kept short.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from kdistill.distiller import call_model
from kdistill.losses.lm import IGNORE_INDEX
from kdistill.modeling import unwrap


@torch.no_grad()
def sample(
    model: nn.Module,
    prefix: Tensor,
    steps: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    context: int | None = None,
) -> Tensor:
    """Extend ``prefix`` (B, P) by ``steps`` sampled tokens; returns (B, P + steps) ids.

    ``temperature`` 0 is greedy decoding; ``top_k`` keeps the k most likely tokens; ``context``
    crops the input to the last ``context`` tokens (a model's block size) on the cache-less
    path. The model runs in eval mode (no dropout) and its mode is restored; nothing here is
    differentiable. A Hugging Face causal LM uses its ``generate`` with a key/value cache
    (``_generate``) while P + steps fits its positions, sees the whole sequence, and always
    produces ``steps`` tokens (an end-of-text token does not stop it).
    """
    was_training = model.training
    model.eval()
    try:
        causal_lm = _hf_causal_lm(model)
        if causal_lm is not None and prefix.shape[1] + steps <= _max_positions(causal_lm):
            return _generate(causal_lm, prefix, steps, temperature, top_k, generator)
        ids = prefix
        for _ in range(steps):
            window = ids if context is None else ids[:, -context:]
            logits = call_model(model, window)[:, -1, :].float()
            if temperature == 0:
                next_ids = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_ids = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            ids = torch.cat([ids, next_ids.to(ids.dtype)], dim=1)
        return ids
    finally:
        model.train(was_training)


def _hf_causal_lm(model: nn.Module) -> nn.Module | None:
    """The transformers model inside kdistill's Hugging Face causal-LM wrapper, or ``None``."""
    inner = unwrap(model)
    if getattr(inner, "task", None) == "causal-lm" and hasattr(
        getattr(inner, "model", None), "generate"
    ):
        return inner.model
    return None


def _max_positions(causal_lm: nn.Module) -> int:
    return getattr(causal_lm.config, "max_position_embeddings", None) or getattr(
        causal_lm.config, "n_positions", 0
    )


def _generate(
    causal_lm: nn.Module,
    prefix: Tensor,
    steps: int,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> Tensor:
    """``steps`` tokens from the model's own ``generate`` (KV cache), sampled from
    softmax(logits / temperature) (top-k if asked) and nothing else.

    ``generate`` fills every setting left unset from the checkpoint's ``generation_config.json``
    (a repetition penalty, top-p, its end-of-text id), which would change the distribution the
    student is trained on; so the call runs against a blank one and sets the sampling settings
    itself. ``generate`` draws from the global RNG: with a ``generator`` the draw runs inside
    ``fork_rng`` seeded from it, so the same generator state gives the same tokens, the
    generator advances, and the global RNG is left as it was.
    """
    from transformers import GenerationConfig

    settings = GenerationConfig(
        max_new_tokens=steps,
        min_new_tokens=0,
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_k=top_k or 0,
        top_p=1.0,
        typical_p=1.0,
        repetition_penalty=1.0,
        num_beams=1,
        use_cache=True,
        eos_token_id=[],
        pad_token_id=0,  # no end-of-text stop: every sequence gets its `steps` tokens
    )
    attention_mask = torch.ones_like(prefix)
    saved, causal_lm.generation_config = causal_lm.generation_config, GenerationConfig()
    try:
        if generator is None:
            return causal_lm.generate(
                prefix, attention_mask=attention_mask, generation_config=settings
            )
        seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
        devices = [prefix.device] if prefix.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return causal_lm.generate(
                prefix, attention_mask=attention_mask, generation_config=settings
            )
    finally:
        causal_lm.generation_config = saved


class OnPolicy:
    """Batch transform for on-policy distillation (GKD): a fraction of each batch's sequences is
    replaced by continuations the student samples itself, which the teacher then scores.

    Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes", ICLR 2024, arXiv:2306.13649: training only on fixed data teaches the student
    prefixes it would never produce; on its own samples it learns to recover from its mistakes.
    Here a share λ = ``fraction`` of the sequences, chosen at random, keep their first
    ``L + 1 − continuation`` real tokens as the prompt and get the rest sampled from the current
    student at ``temperature``: ⌊λ·B⌋ of a batch of B, and one more with probability the
    fraction λ·B − ⌊λ·B⌋, so the expected share is λ at every batch size (exactly λ·B when it
    is whole; a batch of 1 is on-policy with probability λ, as TRL's ``GKDTrainer`` does it).
    Rounding λ·B instead never went on-policy at B = 1, λ = 0.5, nor at λ = 0.1 for B ≤ 5.
    ``train_loop(loop=Loop(batch_transform=...))`` applies it to each batch *before* the
    teacher runs, so the teacher's logits are those of the sampled sequence. ``after`` is a
    warm start: the student samples only once it has taken that many batches off-policy (an
    untrained student's samples are noise the teacher can say little about).

    What counts, as GKD and TRL's ``GKDTrainer`` count it: on a sampled sequence only the K
    generated tokens (the batch's ``mask`` is false on its prompt), and their targets become
    ``IGNORE_INDEX``, so the divergence terms compare the two models there while ``token_ce``
    never learns from the student's own samples. The data's sequences count whole by default,
    so the student's share of the counted positions is λK / (λK + (1 − λ)L), and every token of
    plain text still teaches. ``completions_only`` is GKD's (prompt, completion) framing for
    data made of prompts and answers: every sequence counts only its last K positions and the
    share is λ (exactly, where λ·B is whole; ``token_ce`` then learns from those completions
    only; on the plain text of ``configs/lm_kd.yaml`` that wastes 15 of every 16 positions and
    the student ends at perplexity 15.0 instead of 8.6 alone). The share of each batch is the
    batch's ``"metric/on_policy_generated"`` (logged per epoch). Sampling runs without
    autograd; a Hugging Face causal LM samples with its own ``generate`` and key/value cache
    (see ``sample``).

    Args:
        student: the model being trained (the object ``train_loop`` trains, not a copy).
        fraction: λ in [0, 1].
        continuation: tokens sampled per chosen sequence, 1 ≤ K ≤ L.
        temperature: sampling temperature (GKD samples at 1).
        seed: seeds the choice of sequences and the sampling (a run passes ``train.seed``);
            the generator's state is saved in ``train_loop``'s checkpoints (``state_dict``), so a
            resumed run draws what the uninterrupted one did.
        completions_only: count only the last K positions of every sequence (GKD's prompt and
            completion framing: the generated share is then λ).
        after: a warm start: the first ``after`` batches stay as the data gave them (off-policy),
            so the student samples only once it has learnt something; the count is
            checkpointed with the generator.
    """

    samples_the_student = True  # FSDP refuses it: no sampling from a sharded student yet

    def __init__(
        self,
        student: nn.Module,
        *,
        fraction: float = 0.5,
        continuation: int = 16,
        temperature: float = 1.0,
        seed: int = 0,
        completions_only: bool = False,
        after: int = 0,
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"on_policy.fraction must be in [0, 1], got {fraction}")
        if continuation < 1:
            raise ValueError(f"on_policy.continuation must be at least 1, got {continuation}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"on_policy.after must be a whole number of batches ≥ 0, got {after}")
        self.student, self.fraction, self.continuation = student, fraction, continuation
        self.after, self.calls = after, 0
        self.temperature, self.seed, self.completions_only = temperature, seed, completions_only
        self._generator: torch.Generator | None = None
        self._restored: Tensor | None = None  # a checkpoint's generator state, set at first use
        self.replaced = 0  # sequences replaced so far (for logs and tests)

    def _rng(self, device) -> torch.Generator:
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._restored is not None:
                self._generator.set_state(self._restored)
                self._restored = None
        return self._generator

    def state_dict(self) -> dict[str, Tensor]:
        """Where the random draws stand (a CPU byte tensor) and the batches seen, for a
        checkpoint."""
        state = {"calls": torch.tensor(self.calls)}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self._generator, self._restored = None, state.get("generator")
        self.calls = int(state["calls"]) if "calls" in state else 0

    def __call__(self, batch: Mapping) -> dict:
        inputs, target = batch["input"], batch["target"]
        if isinstance(inputs, Mapping) or inputs.dim() != 2:
            raise ValueError(
                "on-policy distillation needs (B, L) token ids as the batch input (a causal LM)"
            )
        self.calls += 1
        if self.calls <= self.after:  # the warm start: off-policy for now
            return {**batch, "metric/on_policy_generated": torch.zeros((), device=target.device)}
        count, length = inputs.shape
        steps = min(self.continuation, length)
        mask = batch.get("mask")
        mask = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.bool()
        # Position j predicts token j + 1: the K completion tokens are predicted at L − K … L − 1.
        prompt = torch.arange(length, device=target.device) < length - steps
        new_inputs, new_target, new_mask = inputs, target, mask
        if self.completions_only:
            new_mask = mask & ~prompt
        chosen = self._choose(count, mask)
        if len(chosen):
            # tokens s_0..s_L of each window: input = s_0..s_{L-1}, target = s_1..s_L
            tokens = torch.cat([inputs[chosen, :1], target[chosen]], dim=1)
            sampled = sample(
                self.student,
                tokens[:, : length + 1 - steps],
                steps,
                temperature=self.temperature,
                generator=self._rng(inputs.device),
                context=length,
            )
            new_inputs, new_target, new_mask = inputs.clone(), target.clone(), new_mask.clone()
            new_inputs[chosen] = sampled[:, :length]
            sampled_target = sampled[:, 1:].clone()
            sampled_target[:, length - steps :] = IGNORE_INDEX
            new_target[chosen] = sampled_target
            new_mask[chosen] = ~prompt  # the prompt is the data's, not the student's: not counted
            self.replaced += len(chosen)
        generated = torch.zeros_like(new_mask)
        generated[chosen] = ~prompt
        # A 0-d tensor, not a float: reading it would sync a GPU every step.
        share = generated.sum() / new_mask.sum().clamp_min(1)
        return {
            **batch,
            "input": new_inputs,
            "target": new_target,
            "mask": new_mask,
            "metric/on_policy_generated": share,
        }

    def _choose(self, count: int, mask: Tensor) -> Tensor:
        """λ·B random sequences in expectation (⌊λ·B⌋, and one more with probability the
        remainder) among those without padding (nothing to continue)."""
        expected = self.fraction * count
        chosen_count = math.floor(expected)
        if expected > chosen_count:  # no draw when λ·B is whole: those batches stay as they were
            generator = self._rng(mask.device)
            draw = torch.rand((), generator=generator, device=generator.device)
            chosen_count += int(draw < expected - chosen_count)  # a host read, once per batch
        if chosen_count == 0:
            return torch.zeros(0, dtype=torch.int64, device=mask.device)
        eligible = torch.arange(count, device=mask.device)[mask.all(1)]
        order = torch.randperm(len(eligible), generator=self._rng(mask.device), device=mask.device)
        return eligible[order[:chosen_count]]


def sample_texts(
    models: Mapping[str, nn.Module],
    codec,
    prompts: list[str],
    *,
    steps: int = 120,
    temperature: float = 0.8,
    top_k: int | None = None,
    context: int | None = None,
    seed: int = 0,
) -> list[dict[str, str]]:
    """The same prompts continued by each model, with the same seed: one dict per prompt,
    ``{"prompt": ..., <model name>: continuation, ...}``."""
    rows = [{"prompt": prompt} for prompt in prompts]
    for name, model in models.items():
        device = next(model.parameters()).device
        for row in rows:
            generator = torch.Generator(device=device).manual_seed(seed)
            prefix = torch.tensor([codec.encode(row["prompt"])], device=device)
            ids = sample(
                model,
                prefix,
                steps,
                temperature=temperature,
                top_k=top_k,
                generator=generator,
                context=context,
            )
            row[name] = codec.decode(ids[0, prefix.shape[1] :].tolist())
    return rows


__all__ = ["OnPolicy", "sample", "sample_texts"]
