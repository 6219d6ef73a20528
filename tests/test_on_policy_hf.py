"""On-policy distillation with a Hugging Face causal-LM student: the continuation comes from the
model's own ``generate`` with its key/value cache, seeded by the transform's generator, in eval
mode and without autograd; the prompt is masked and the generated share counted as for kdistill's
own GPT; and an on-policy token_kd run trains end to end (with chunked losses too)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from kdistill.distiller import Distiller, Teacher
from kdistill.losses.lm import IGNORE_INDEX
from kdistill.methods import preset_terms
from kdistill.models.hf import hf
from kdistill.training.sampling import OnPolicy, sample

VOCAB, LENGTH = 128, 16


def tiny_llama(seed: int, vocab: int = VOCAB, **extra):
    torch.manual_seed(seed)
    config = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        **extra,
    }
    return hf(vocab, (LENGTH,), config=config, task="causal-lm")


@pytest.fixture
def lm_batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (8, LENGTH + 1), generator=g)
    return {
        "input": tokens[:, :-1],
        "target": tokens[:, 1:],
        "mask": torch.ones(8, LENGTH, dtype=torch.bool),
        "index": torch.arange(8),
    }


class Spy:
    """Counts ``generate`` calls and records each
    forward's new tokens and whether it got a cache."""

    def __init__(self, model, monkeypatch):
        self.generate_calls, self.forwards = 0, []
        causal_lm = model.model
        original = causal_lm.generate

        def generate(*args, **kwargs):
            self.generate_calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(causal_lm, "generate", generate)

        def record(module, args, kwargs):
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            self.forwards.append(
                (
                    kwargs["input_ids"].shape[1],
                    cache is not None and cache.get_seq_length() > 0,
                    torch.is_grad_enabled(),
                    module.training,
                )
            )

        self.handle = causal_lm.register_forward_pre_hook(record, with_kwargs=True)


def test_generate_runs_with_a_kv_cache_in_eval_mode_without_autograd(monkeypatch):
    model = tiny_llama(0).train()
    spy = Spy(model, monkeypatch)
    prefix = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))
    ids = sample(model, prefix, 6, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (3, 11) and torch.equal(ids[:, :5], prefix) and not ids.requires_grad
    assert spy.generate_calls == 1
    # The prompt once, then one new token per step on top of the cached keys and values.
    assert [f[0] for f in spy.forwards] == [5, 1, 1, 1, 1, 1]
    assert [f[1] for f in spy.forwards] == [False, True, True, True, True, True]
    assert not any(f[2] for f in spy.forwards) and not any(f[3] for f in spy.forwards)
    assert model.training  # restored


def test_the_same_generator_seed_gives_the_same_tokens_and_leaves_the_global_rng_alone():
    model = tiny_llama(0)
    prefix = torch.randint(0, VOCAB, (4, 5), generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    first = sample(model, prefix, 8, generator=torch.Generator().manual_seed(7))
    again = sample(model, prefix, 8, generator=torch.Generator().manual_seed(7))
    other = sample(model, prefix, 8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)
    generator = torch.Generator().manual_seed(7)
    assert not torch.equal(
        sample(model, prefix, 8, generator=generator), sample(model, prefix, 8, generator=generator)
    )


def test_greedy_generate_is_the_models_argmax_and_the_checkpoints_settings_do_not_leak():
    model = tiny_llama(0, vocab=8)
    causal_lm = model.model
    # A checkpoint's sampling preferences and end-of-text id: none may change what is sampled.
    causal_lm.generation_config.repetition_penalty = 5.0
    causal_lm.generation_config.eos_token_id = 3
    prefix = torch.randint(0, 8, (6, 4), generator=torch.Generator().manual_seed(1))
    ids = sample(model, prefix, 12, temperature=0)
    expected = prefix
    with torch.no_grad():
        for _ in range(12):
            expected = torch.cat(
                [expected, causal_lm(expected).logits[:, -1].argmax(-1, keepdim=True)], dim=1
            )
    assert torch.equal(ids, expected)
    sampled = sample(model, prefix, 30, generator=torch.Generator().manual_seed(0))[:, 4:]
    assert sampled.shape == (6, 30)
    after_eos = [row[(row == 3).nonzero()[0, 0] + 1 :] for row in sampled if (row[:-1] == 3).any()]
    assert after_eos and any((rest != 0).any() for rest in after_eos)  # sampling went on after EOS
    assert causal_lm.generation_config.repetition_penalty == 5.0  # restored


def test_on_policy_masks_the_prompt_of_hf_samples_and_counts_the_generated_share(
    lm_batch, monkeypatch
):
    student = tiny_llama(0)
    spy = Spy(student, monkeypatch)
    batch = OnPolicy(student, fraction=0.25, continuation=4, seed=0)(lm_batch)
    assert spy.generate_calls == 1
    sampled = (batch["target"] == IGNORE_INDEX).any(1)
    assert int(sampled.sum()) == 2
    prompt = LENGTH - 4
    assert not batch["mask"][sampled, :prompt].any() and batch["mask"][sampled, prompt:].all()
    assert batch["mask"][~sampled].all()
    # The sampled sequence keeps the data's prompt; after it come the student's own tokens.
    assert torch.equal(
        batch["input"][sampled, : prompt + 1], lm_batch["input"][sampled, : prompt + 1]
    )
    assert not torch.equal(
        batch["input"][sampled, prompt + 1 :], lm_batch["input"][sampled, prompt + 1 :]
    )
    assert (batch["target"][sampled, prompt:] == IGNORE_INDEX).all()
    assert batch["metric/on_policy_generated"].item() == pytest.approx(8 / (8 + 6 * LENGTH))


@pytest.mark.parametrize("chunk_size", [0, 8])
def test_an_on_policy_token_kd_run_trains_end_to_end(lm_batch, chunk_size):
    from kdistill.training.loop import Loop, train_loop

    student, teacher = tiny_llama(0), tiny_llama(1)
    before = [p.detach().clone() for p in student.parameters()]
    data = [{k: v[i] for k, v in lm_batch.items()} for i in range(8)]
    terms = preset_terms("token_kd", loss="jsd", beta=0.5, chunk_size=chunk_size)
    teacher = Teacher(teacher)
    distiller = Distiller.build(student, terms, teacher=teacher, example_batch=lm_batch)
    records = []
    train_loop(
        distiller,
        DataLoader(data, batch_size=4),
        teacher=teacher,
        epochs=1,
        lr=1e-2,
        log=records.append,
        progress=False,
        loop=Loop(
            batch_transform=OnPolicy(student, fraction=0.5, continuation=4, completions_only=True)
        ),
    )
    assert records[0]["metric/on_policy_generated"] == pytest.approx(0.5)
    assert torch.isfinite(torch.tensor(records[0]["loss"])) and records[0]["loss/kd"] > 0
    assert any(not torch.equal(b, a) for b, a in zip(before, student.parameters()))
