"""Chunked token losses: the values and gradients (hidden states, head weight and bias) of the
unchunked losses, in float64, for chunk sizes that do and do not divide B·L, with padding; and
no tensor of the full (B, L, V) logits' size is ever made."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from kdistill.losses import (
    forward_kl,
    jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    token_ce,
    topk_teacher,
    tvd,
)
from kdistill.losses.chunked import ChunkedTerm, chunked_token_loss, chunked_token_losses
from kdistill.modeling import LazyLogits

B, L, H, V = 3, 7, 5, 13  # B·L = 21: chunk sizes 4 and 8 leave a partial last chunk

LOSSES = [
    (forward_kl, {"temperature": 2.0}),
    (reverse_kl, {"temperature": 0.7}),
    (jsd, {"beta": 0.5}),
    (jsd, {"beta": 0.1, "temperature": 1.5}),
    (jsd, {"beta": 0.0}),
    (skew_kl, {"alpha": 0.1}),
    (skew_reverse_kl, {"alpha": 0.3}),
    (tvd, {}),
]


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_()
    bias = torch.randn(V, generator=g, dtype=torch.float64).requires_grad_()
    teacher = 2 * torch.randn(B, L, V, generator=g, dtype=torch.float64)
    target = torch.randint(0, V, (B, L), generator=g)
    target[0, 2] = -100  # a position with no label: token_ce skips it
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 4:] = False  # right padding
    mask[2, :3] = False  # an on-policy prompt
    teacher[~mask] = float("nan")  # garbage at padding must not matter
    return hidden, weight, bias, teacher, target, mask


def grads(value, *tensors):
    return torch.autograd.grad(value, tensors)


def assert_same(expected, got):
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 4, 8, 64])
@pytest.mark.parametrize("loss, params", LOSSES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_divergence_in_chunks_equals_the_whole(case, loss, params, chunk_size):
    hidden, weight, bias, teacher, _, mask = case
    whole = loss(F.linear(hidden, weight, bias), teacher, mask=mask, **params)
    chunked = chunked_token_loss(
        loss, hidden, weight, teacher, lm_head_bias=bias, mask=mask, chunk_size=chunk_size, **params
    )
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    assert_same(grads(whole, hidden, weight, bias), grads(chunked, hidden, weight, bias))


@pytest.mark.parametrize("chunk_size", [1, 5, 21, 100])
def test_token_ce_in_chunks_equals_the_whole_without_bias(case, chunk_size):
    hidden, weight, _, _, target, mask = case
    whole = token_ce(F.linear(hidden, weight), target, mask=mask)
    chunked = chunked_token_loss(
        token_ce, hidden, weight, target=target, mask=mask, chunk_size=chunk_size
    )
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    assert_same(grads(whole, hidden, weight), grads(chunked, hidden, weight))


@pytest.mark.parametrize("as_tensor", [False, True], ids=["float weights", "tensor weights"])
def test_ce_and_a_divergence_share_one_pass_with_their_weights(case, as_tensor):
    hidden, weight, bias, teacher, target, mask = case
    logits = F.linear(hidden, weight, bias)
    ce, kd = token_ce(logits, target, mask=mask), jsd(logits, teacher, mask=mask, beta=0.5)
    w_ce, w_kd = (
        (torch.tensor(0.3), torch.tensor(0.7)) if as_tensor else (0.3, 0.7)
    )  # a warm-up's epoch tensor
    terms = [ChunkedTerm(token_ce, w_ce), ChunkedTerm(jsd, w_kd, {"beta": 0.5})]
    total, values = chunked_token_losses(
        LazyLogits(hidden, weight, bias), teacher, target, terms, mask=mask, chunk_size=4
    )
    torch.testing.assert_close(values, torch.stack([ce, kd]).detach(), rtol=1e-12, atol=1e-14)
    assert not values.requires_grad
    whole = w_ce * ce + w_kd * kd
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-14)
    assert_same(grads(whole, hidden, weight, bias), grads(total, hidden, weight, bias))


def test_a_top_k_cache_is_read_at_its_own_temperature(case):
    hidden, weight, bias, teacher, _, mask = case
    sparse = topk_teacher(torch.nan_to_num(teacher), 4, temperature=2.0)
    whole = forward_kl(F.linear(hidden, weight, bias), sparse, mask=mask, temperature=2.0)
    chunked = chunked_token_loss(
        forward_kl,
        hidden,
        weight,
        sparse,
        lm_head_bias=bias,
        mask=mask,
        chunk_size=4,
        temperature=2.0,
    )
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    assert_same(grads(whole, hidden, weight, bias), grads(chunked, hidden, weight, bias))
    with pytest.raises(ValueError, match="at temperature 2, but the loss runs at temperature 1"):
        chunked_token_loss(
            forward_kl, hidden, weight, sparse, mask=mask, chunk_size=4, temperature=1.0
        )


def test_a_live_teacher_is_projected_chunk_by_chunk_and_never_differentiated(case):
    hidden, weight, bias, _, _, mask = case
    g = torch.Generator().manual_seed(1)
    t_hidden = torch.randn(B, L, 6, generator=g, dtype=torch.float64).requires_grad_()
    t_weight = torch.randn(V, 6, generator=g, dtype=torch.float64).requires_grad_()
    whole = reverse_kl(
        F.linear(hidden, weight, bias), F.linear(t_hidden, t_weight).detach(), mask=mask
    )
    teacher = LazyLogits(t_hidden, t_weight)
    chunked = chunked_token_loss(
        reverse_kl, hidden, weight, teacher, lm_head_bias=bias, mask=mask, chunk_size=8
    )
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-14)
    chunked.backward()
    assert t_hidden.grad is None and t_weight.grad is None and hidden.grad is not None


def test_nothing_counts_gives_zero_and_zero_gradients(case):
    hidden, weight, bias, teacher, _, _ = case
    nothing = torch.zeros(B, L, dtype=torch.bool)
    value = chunked_token_loss(
        forward_kl, hidden, weight, teacher, lm_head_bias=bias, mask=nothing, chunk_size=4
    )
    assert value.item() == 0.0
    assert all(not g.any() for g in grads(value, hidden, weight, bias))


def test_without_autograd_the_value_is_the_same(case):
    hidden, weight, bias, teacher, _, mask = case
    with torch.no_grad():
        value = chunked_token_loss(
            jsd, hidden, weight, teacher, lm_head_bias=bias, mask=mask, chunk_size=4
        )
        whole = jsd(F.linear(hidden, weight, bias), teacher, mask=mask)
    torch.testing.assert_close(value, whole, rtol=1e-12, atol=1e-14)


def test_half_precision_hidden_states_as_autocast_makes_them(case):
    hidden, weight, _, teacher, _, mask = case
    half, weight32, teacher32 = (
        hidden.detach().bfloat16().requires_grad_(),
        weight.detach().float().requires_grad_(),
        teacher.float(),
    )
    whole = forward_kl(
        F.linear(half, weight32.bfloat16()).float(), teacher32, mask=mask
    )  # the head in bf16, as autocast runs it
    chunked = chunked_token_loss(forward_kl, half, weight32, teacher32, mask=mask, chunk_size=4)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    grad_half, grad_weight = grads(chunked, half, weight32)
    assert grad_half.dtype == torch.bfloat16 and grad_weight.dtype == torch.float32
    expected = grads(whole, half, weight32)
    torch.testing.assert_close(grad_half.float(), expected[0].float(), rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(grad_weight, expected[1], rtol=2e-2, atol=1e-3)


def test_the_head_runs_in_the_precision_autocast_gave_where_the_hidden_states_were_made(case):
    # HF models keep the residual stream, so the final hidden states, in float32 under bf16
    # autocast, while their head is a bf16 product: the chunked head must be one too (at a
    # float32 product a bf16 run pays float32's matrix speed for its largest products).
    hidden, weight, _, teacher, _, mask = case
    hidden32, weight32, teacher32 = (
        hidden.detach().float().requires_grad_(),
        weight.detach().float().requires_grad_(),
        teacher.float(),
    )
    with torch.autocast("cpu", torch.bfloat16):
        made = LazyLogits(hidden32, weight32)
        whole = F.linear(hidden32, weight32)  # what the model's own head gives
    assert made.product == torch.bfloat16 and LazyLogits(hidden32, weight32).product is None
    assert LazyLogits(torch.empty(2, 3, device="meta"), weight32).product is None
    expected = forward_kl(whole.float(), teacher32, mask=mask)
    chunked, _ = chunked_token_losses(
        made, teacher32, None, [ChunkedTerm(forward_kl, 1.0, {})], mask=mask, chunk_size=4
    )
    torch.testing.assert_close(chunked, expected, rtol=1e-6, atol=1e-7)
    at_float32 = forward_kl(F.linear(hidden32, weight32), teacher32, mask=mask)
    assert (chunked - at_float32).abs() > 1e-4  # the bf16 product, not float32's
    grad_hidden, grad_weight = grads(chunked, hidden32, weight32)
    assert grad_hidden.dtype == grad_weight.dtype == torch.float32
    for got, want in zip((grad_hidden, grad_weight), grads(expected, hidden32, weight32)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
    # A teacher's hidden states and head made under autocast are projected in bf16 too.
    with torch.autocast("cpu", torch.bfloat16):
        teacher_lazy = LazyLogits(hidden32.detach().flip(0), weight32.detach())
    value, _ = chunked_token_losses(
        LazyLogits(hidden32.detach(), weight32.detach()),
        teacher_lazy,
        None,
        [ChunkedTerm(forward_kl, 1.0, {})],
        mask=mask,
        chunk_size=4,
    )
    bf16_teacher = F.linear(hidden32.detach().flip(0).bfloat16(), weight32.detach().bfloat16())
    reference = forward_kl(
        F.linear(hidden32.detach(), weight32.detach()), bf16_teacher.float(), mask=mask
    )
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-7)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_no_tensor_of_the_full_logits_size_is_made():
    batch, length, width, vocab, chunk = 2, 64, 8, 512, 16
    hidden = torch.randn(batch, length, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    t_hidden, t_weight = torch.randn(batch, length, width), torch.randn(vocab, width)
    target = torch.randint(0, vocab, (batch, length))
    terms = [ChunkedTerm(token_ce, 0.5), ChunkedTerm(forward_kl, 0.5)]
    with LargestTensor() as seen:
        total, _ = chunked_token_losses(
            LazyLogits(hidden, weight),
            LazyLogits(t_hidden, t_weight),
            target,
            terms,
            chunk_size=chunk,
        )
        total.backward()
    assert seen.largest == chunk * vocab  # a chunk's logits; (B, L, V) would be 64 chunks of it
    with LargestTensor() as whole:
        logits = F.linear(hidden, weight)
        (
            0.5 * token_ce(logits, target) + 0.5 * forward_kl(logits, F.linear(t_hidden, t_weight))
        ).backward()
    assert whole.largest == batch * length * vocab


def test_bad_arguments_are_refused(case):
    hidden, weight, _, teacher, target, mask = case
    from kdistill.losses import kd

    with pytest.raises(ValueError, match="no chunked form"):
        ChunkedTerm(kd)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_loss(forward_kl, hidden, weight, teacher, chunk_size=0)
    with pytest.raises(ValueError, match="pass target"):
        chunked_token_loss(token_ce, hidden, weight, chunk_size=4)
    with pytest.raises(ValueError, match="mask shape"):
        chunked_token_loss(forward_kl, hidden, weight, teacher, mask=mask[:, :3], chunk_size=4)
    with pytest.raises(ValueError, match="teacher positions"):
        chunked_token_loss(forward_kl, hidden, weight, teacher[:, :3], chunk_size=4)


# --- wired into a run: a Hugging Face causal-LM student and teacher, token_kd with chunk_size ---


def tiny_llama(seed: int):
    from kdistill.models.hf import hf

    torch.manual_seed(seed)
    config = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "tie_word_embeddings": True,
    }
    return hf(128, (16,), config=config, task="causal-lm")


@pytest.fixture
def lm_batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 128, (4, 17), generator=g)
    mask = torch.ones(4, 16, dtype=torch.bool)
    mask[1, 10:] = False
    return {"input": tokens[:, :-1], "target": tokens[:, 1:], "mask": mask}


def step(student, teacher_model, batch, **settings):
    from kdistill.distiller import Distiller, Teacher
    from kdistill.methods import preset_terms

    teacher = Teacher(teacher_model)
    distiller = Distiller.build(
        student, preset_terms("token_kd", **settings), teacher=teacher, example_batch=batch
    )
    out = distiller(batch, teacher(batch))
    out["loss"].backward()
    gradients = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    return out, gradients


@pytest.mark.parametrize("loss", ["forward_kl", "jsd"])
def test_token_kd_with_chunk_size_trains_as_without_and_never_makes_the_logits(lm_batch, loss):
    student, teacher = tiny_llama(0), tiny_llama(1)
    whole, whole_grads = step(student, teacher, lm_batch, loss=loss, temperature=2.0)
    chunked, chunked_grads = step(
        student, teacher, lm_batch, loss=loss, temperature=2.0, chunk_size=5
    )
    assert isinstance(chunked["logits"], LazyLogits) and isinstance(whole["logits"], torch.Tensor)
    for key in ("loss", "loss/ce", "loss/kd"):
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=1e-7)
    for mine, theirs in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    full_logits = 4 * 16 * 128  # B·L·V; the largest other tensor is the (V, H) embedding, 128·32
    with LargestTensor() as seen:
        step(student, teacher, lm_batch, loss=loss, chunk_size=5)
    assert seen.largest < full_logits
    with LargestTensor() as seen:
        step(student, teacher, lm_batch, loss=loss)
    assert seen.largest >= full_logits


def test_under_bf16_autocast_chunked_token_kd_is_the_whole_one(lm_batch):
    # The run's precision reaches the chunked head: student and live teacher project in bf16,
    # as their own heads do under autocast, so chunking changes no value.
    student, teacher = tiny_llama(0), tiny_llama(1)
    with torch.autocast("cpu", torch.bfloat16):
        whole, _ = step(student, teacher, lm_batch, loss="forward_kl")
        chunked, _ = step(student, teacher, lm_batch, loss="forward_kl", chunk_size=5)
    assert chunked["logits"].product == torch.bfloat16
    for key in ("loss/ce", "loss/kd"):
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=1e-6)


def test_build_makes_a_live_teacher_give_its_hidden_states(lm_batch):
    from kdistill.distiller import Distiller, Teacher
    from kdistill.methods import preset_terms

    teacher = Teacher(tiny_llama(1))
    assert isinstance(teacher(lm_batch).logits, torch.Tensor)
    Distiller.build(
        tiny_llama(0),
        preset_terms("token_kd", chunk_size=8),
        teacher=teacher,
        example_batch=lm_batch,
    )
    assert isinstance(teacher(lm_batch).logits, LazyLogits)


def test_a_top_k_teacher_scores_the_chunked_student_as_the_whole(lm_batch):
    from kdistill.distiller import Distiller
    from kdistill.methods import preset_terms
    from kdistill.modeling import ModelOutput

    student, teacher = tiny_llama(0), tiny_llama(1)
    with torch.no_grad():
        sparse = topk_teacher(teacher(**{"input_ids": lm_batch["input"]}), 8, temperature=2.0)
    values = []
    for chunk_size in (0, 3):
        terms = preset_terms("token_kd", loss="forward_kl", temperature=2.0, chunk_size=chunk_size)
        values.append(Distiller(student, terms)(lm_batch, ModelOutput(sparse))["loss/kd"])
    torch.testing.assert_close(values[1], values[0].detach(), rtol=1e-5, atol=1e-7)


def test_a_logits_term_without_a_chunked_form_is_refused():
    from kdistill.distiller import Distiller
    from kdistill.methods import Term

    terms = [Term("ce", "token_ce", teacher=None, chunk_size=64), Term("kd", "kd")]
    with pytest.raises(
        ValueError, match=r"term 'kd' \(kd\): chunk_size=64 computes every logits term"
    ):
        Distiller(tiny_llama(0), terms)
    with pytest.raises(ValueError, match="chunk_size must be"):
        Term("ce", "token_ce", teacher=None, chunk_size=-1)


def test_perplexity_is_the_same_scored_in_chunks(lm_batch, monkeypatch):
    import kdistill.evaluation.language_model as language_model
    from kdistill.models.hf import HFModel

    model = tiny_llama(0)
    data = [{key: value[i] for key, value in lm_batch.items()} for i in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    monkeypatch.setattr(language_model, "EVAL_CHUNK", 7)
    chunked = language_model.evaluate_lm(model, loader)
    monkeypatch.setattr(HFModel, "supports_lazy_logits", property(lambda self: False))
    whole = language_model.evaluate_lm(model, loader)
    assert chunked["n"] == whole["n"] == 58
    assert chunked["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-6)
    assert chunked["token_accuracy"] == whole["token_accuracy"]


@pytest.mark.integration
def test_a_recipe_setting_chunk_size_runs_chunked_end_to_end(tmp_path, monkeypatch):
    import kdistill.distiller as distiller_module
    from kdistill.cli import main

    seen = []
    original = distiller_module.chunked_token_losses

    def spy(student, teacher, *args, **kwargs):
        seen.append((type(student).__name__, type(teacher).__name__, kwargs["chunk_size"]))
        return original(student, teacher, *args, **kwargs)

    monkeypatch.setattr(distiller_module, "chunked_token_losses", spy)
    llama = (
        "{task: causal-lm, config: {model_type: llama, hidden_size: 32, intermediate_size: 64, "
        "num_hidden_layers: %d, num_attention_heads: 4, "
        "num_key_value_heads: 2, max_position_embeddings: 64}}"
    )
    overrides = [
        "data.subset=96",
        "data.options.block_size=32",
        "teacher.model=hf",
        f"teacher.kwargs={llama % 2}",
        "student.model=hf",
        f"student.kwargs={llama % 1}",
        "teacher.epochs=1",
        "train.epochs=1",
        "distill.params={loss: jsd, beta: 0.5, chunk_size: 16}",
        "output.latency=false",
        "output.plots=false",
        "output.progress=false",
        f"output.dir={tmp_path}",
    ]
    assert main(["run", "configs/lm_kd.yaml", *overrides]) == 0
    assert seen and set(seen) == {
        ("LazyLogits", "LazyLogits", 16)
    }  # student and live teacher, every step
    summary = json.loads((tmp_path / "lm_kd" / "summary.json").read_text())
    assert 1.0 < summary["student"]["perplexity"] < 200
