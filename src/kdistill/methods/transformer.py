"""Presets for transformers and language models: layer maps for hidden states and attention
maps (TinyBERT, MiniLM, DistilBERT) and token-level divergences (GKD)."""

from __future__ import annotations

from typing import Any

from kdistill.methods.terms import Term, mixed_ce_weight

# --- transformer and language-model presets ---------------------------------------------------
# Layer terms read the names kdistill's transformers and its Hugging Face wrapper share:
# ``hidden_states.{i}`` (0 = embeddings, i = output of layer i) and ``attentions.{i - 1}`` (the
# attention probabilities of layer i). A layer map pairs student layer i with teacher layer
# map[i], 1-based, 0 being the embeddings.


def _layer_map(
    method: str, layer_map, student_layers: int | None, teacher_layers: int | None
) -> list[tuple[int, int]]:
    if layer_map is None:
        if not student_layers or not teacher_layers:
            raise ValueError(
                f"method {method!r}: set layer_map ({{student layer: teacher layer}}, 0 = "
                "embeddings) or student_layers= and teacher_layers= for the uniform map"
            )
        # TinyBERT's uniform strategy g(m) = m·N/M, plus the embeddings (0 → 0).
        return [(0, 0)] + [
            (m, m * teacher_layers // student_layers) for m in range(1, student_layers + 1)
        ]
    pairs = layer_map.items() if isinstance(layer_map, dict) else layer_map
    return sorted((int(s), int(t)) for s, t in pairs)


def tinybert(
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    ce_weight: float | None = None,
    layer_map=None,
    student_layers: int | None = None,
    teacher_layers: int | None = None,
    hidden_weight: float = 1.0,
    attention_weight: float = 1.0,
):
    """TinyBERT / MiniLM-style: logit KD + hidden-state MSE + attention KL on mapped layers.

    Jiao et al., "TinyBERT", Findings of EMNLP 2020, arXiv:1909.10351: embedding and hidden
    states regressed through a projection (here a linear connector per layer) and the
    prediction layer's soft cross-entropy (T = 1), all trained jointly here rather than in
    TinyBERT's two stages; attention maps compared as distributions with KL, as MiniLM (Wang et
    al., NeurIPS 2020, arXiv:2002.10957) does, instead of TinyBERT's MSE on the raw scores.
    ``layer_map`` {student layer: teacher layer} (0 = embeddings; default: uniform).
    """
    pairs = _layer_map("tinybert", layer_map, student_layers, teacher_layers)
    terms = [
        Term("ce", "ce", weight=mixed_ce_weight(alpha, ce_weight), teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
    ]
    terms = [t for t in terms if t.weight]
    for s, t in pairs:
        terms.append(
            Term(
                f"hidden_{s}",
                "hidden_mse",
                weight=hidden_weight,
                student=f"hidden_states.{s}",
                teacher=f"hidden_states.{t}",
                connector="auto",
            )
        )
    for s, t in pairs:
        if s > 0 and t > 0:
            terms.append(
                Term(
                    f"attention_{s}",
                    "attention_kl",
                    weight=attention_weight,
                    student=f"attentions.{s - 1}",
                    teacher=f"attentions.{t - 1}",
                )
            )
    return terms


def minilm(
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    ce_weight: float | None = None,
    student_layers: int | None = None,
    teacher_layers: int | None = None,
    attention_weight: float = 1.0,
):
    """MiniLM-style: logit KD + KL between the last layers' self-attention distributions.

    Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957: only the last layer is mimicked,
    so the student's depth is free (MiniLM's value-relation term is not included).
    """
    if not student_layers or not teacher_layers:
        raise ValueError(
            "method 'minilm': set student_layers= and teacher_layers= (the layer counts)"
        )
    terms = [
        Term("ce", "ce", weight=mixed_ce_weight(alpha, ce_weight), teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
        Term(
            "attention",
            "attention_kl",
            weight=attention_weight,
            student=f"attentions.{student_layers - 1}",
            teacher=f"attentions.{teacher_layers - 1}",
        ),
    ]
    return [t for t in terms if t.weight]


def distilbert(
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ce_weight: float | None = None,
    cosine_weight: float = 1.0,
    student_layers: int | None = None,
    teacher_layers: int | None = None,
):
    """DistilBERT: CE + logit KD (T = 2) + cosine loss between the last hidden states; pair it
    with ``distill.params.init_from_teacher`` (one teacher layer out of two).

    Sanh et al., NeurIPS 2019 EMC² workshop, arXiv:1910.01108 (their L_ce, L_cos; the masked-LM
    term becomes the task's cross-entropy when distilling a fine-tuned teacher).
    """
    if not student_layers or not teacher_layers:
        raise ValueError(
            "method 'distilbert': set student_layers= and teacher_layers= (the layer counts)"
        )
    terms = [
        Term("ce", "ce", weight=mixed_ce_weight(alpha, ce_weight), teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
        Term(
            "cosine",
            "hidden_cosine",
            weight=cosine_weight,
            student=f"hidden_states.{student_layers}",
            teacher=f"hidden_states.{teacher_layers}",
            connector="auto",
        ),
    ]
    return [t for t in terms if t.weight]


def token_kd(
    *,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    alpha: float = 0.5,
    ce_weight: float | None = None,
    beta: float | None = None,
    skew: float | None = None,
    chunk_size: int = 0,
):
    """Token-level LM distillation: (1−α)·token CE + α·divergence(teacher ‖ student) per token.

    ``loss`` is any token loss (forward_kl, reverse_kl, jsd with ``beta``, skew_kl /
    skew_reverse_kl with ``skew``, tvd); no T² factor (see ``kdistill.losses.token``). With
    ``distill.params.on_policy`` it is GKD (Agarwal et al., ICLR 2024, arXiv:2306.13649).
    ``chunk_size`` > 0 computes both terms ``chunk_size`` positions at a time from the final
    hidden states of a Hugging Face causal LM (and the live teacher's), so the (B, L, V)
    logits never exist (``kdistill.losses.chunked``); same values and gradients. Keep it well
    below B·L: a chunk holds about ten (chunk, V) float32 tensors, so 128–256 positions for a
    49k vocabulary (peak 0.2–0.4× the whole loss's at B = 4, L = 256:
    bench/results/chunked_loss.md).
    """
    params: dict[str, Any] = {"temperature": temperature}
    if beta is not None:
        params["beta"] = beta
    if skew is not None:
        params["alpha"] = skew
    terms = [
        Term(
            "ce",
            "token_ce",
            weight=mixed_ce_weight(alpha, ce_weight),
            teacher=None,
            chunk_size=chunk_size,
        ),
        Term("kd", loss, weight=alpha, params=params, chunk_size=chunk_size),
    ]
    return [t for t in terms if t.weight]
