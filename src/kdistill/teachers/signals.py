"""The signal a teacher cache holds, and the loss forms that read it: dense logits, the top-k
tokens plus the tail mass, tokens drawn from the teacher with importance weights (see
``kdistill.teachers.cache`` for the cache, ``kdistill.losses.sparse`` for the estimators), or a
language model's final hidden states, from which its head gives the exact logits back.

``signal_of`` names a signal as meta.json records it; ``signal_arrays`` turns a batch of teacher
outputs into the arrays the cache stores; ``topk_terms`` / ``sampled_terms`` adapt a run's terms
to what the cache can give, or refuse them at preflight with the reason.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import Tensor

from kdistill.distiller import ModelOutput
from kdistill.errors import UserError
from kdistill.losses.logit import kd
from kdistill.losses.sparse import sampled_teacher
from kdistill.losses.token import (
    SAMPLED_REFUSAL,
    TOKEN_LOSSES,
    forward_kl,
    jsd,
    kd_topk,
    topk_teacher,
)
from kdistill.methods import LOGITS, Term
from kdistill.modeling import LazyLogits, gives_lazy_logits


def signal_of(
    topk: int | None = None,
    samples: int | None = None,
    *,
    hidden: bool = False,
    temperature: float = 1.0,
    proposal_temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    """What a cache built with these settings holds, as meta.json records it: with both
    ``topk`` and ``samples``, the k most probable tokens exactly and ``samples`` draws from
    the rest (``sampled_teacher(..., top=k)``); with ``hidden``, the final hidden states
    (the head is stored once beside them)."""
    if hidden:
        return {"kind": "hidden"}
    if samples is not None:
        return {
            "kind": "sampled",
            "samples": samples,
            **({"top": topk} if topk else {}),
            "temperature": temperature,
            "proposal_temperature": proposal_temperature,
            "seed": seed,
        }
    if topk is not None:
        return {"kind": "topk", "k": topk, "temperature": temperature}
    return {"kind": "dense"}


def _draws(signal: dict, view: int, row: int) -> torch.Generator:
    """The random source of one sample's draws in one view: the same in any batch, on any rank."""
    seed = ((signal["seed"] * 1_000_003 + view) * 1_000_000_007 + row) % 2**63
    return torch.Generator().manual_seed(seed)


# The hidden-state signal. A language model's logits are ``head(h)``, h its final hidden states
# (after the last norm): H numbers per position instead of V (576 against 49,152 for SmolLM2,
# 1.2 %), from which the head, stored once, gives back the exact logits. So every loss reads the
# teacher it would read live (forward and reverse KL, JSD, ...), none needs a sparse form, and
# a chunked loss never makes the (B, L, V) logits (``kdistill.losses.chunked``). The price is
# the head's product at every training step (2·H·V operations per position, 21 % of
# SmolLM2-135M's forward pass), where a sparse cache costs nothing.
HIDDEN_REFUSAL = (
    "needs a causal language model whose logits are lm_head(final hidden states) (the "
    "built-in gpt, a Hugging Face causal LM without logit soft-capping), with no hook editing "
    "its logits; set teacher.cache_hidden=false"
)


def check_gives_hidden(module: torch.nn.Module) -> None:
    """Refuse, at preflight, a teacher whose logits a hidden-state cache cannot give back."""
    if not gives_lazy_logits(module):
        raise UserError(
            f"teacher.cache_hidden: the teacher ({type(module).__name__}) {HIDDEN_REFUSAL}"
        )


def head_of(output: ModelOutput) -> dict[str, Tensor]:
    """The output layer a hidden-state cache stores once: ``weight`` (V, H), ``bias`` (V,)."""
    logits = output.logits
    head = {"weight": logits.weight.detach()}
    if logits.bias is not None:
        head["bias"] = logits.bias.detach()
    return head


def signal_arrays(
    output: ModelOutput, signal: dict, rows: Tensor | None = None, view: int = 0
) -> dict[str, Tensor]:
    features = {f"feature.{k}": v for k, v in output.features.items()}
    if signal["kind"] == "hidden":
        if not isinstance(output.logits, LazyLogits):
            raise UserError(f"teacher.cache_hidden: the teacher's output {HIDDEN_REFUSAL}")
        return {"hidden": output.logits.hidden, **features}
    logits = output.logits.float()
    if signal["kind"] == "topk":
        sparse = topk_teacher(
            logits, min(signal["k"], logits.shape[-1]), temperature=signal["temperature"]
        )
        return {
            "topk.log_probs": sparse.log_probs,
            "topk.index": sparse.indices,
            "topk.tail": sparse.tail_log_prob.unsqueeze(-1),
            **features,
        }
    if signal["kind"] == "sampled":
        rows = torch.zeros(len(logits), dtype=torch.long) if rows is None else rows.cpu()
        drawn = [
            sampled_teacher(
                sample.cpu(),
                signal["samples"],
                temperature=signal["temperature"],
                proposal_temperature=signal["proposal_temperature"],
                top=min(signal.get("top", 0), sample.shape[-1] - 1),
                generator=_draws(signal, view, int(row)),
            )
            for sample, row in zip(logits, rows)
        ]
        return {
            "sampled.index": torch.stack([d.indices for d in drawn]),
            "sampled.weight": torch.stack([d.weights for d in drawn]),
            "sampled.log_prob": torch.stack([d.log_probs for d in drawn]),
            **features,
        }
    return {"logits": output.logits, **features}


# --- top-k teachers: the exact bucket form of each loss, or a refusal ---------------------

# Losses with an exact top-k + tail-bucket form (the token losses take a SparseTeacher as they
# are). dkd, dist, nkd, lskd need the whole distribution (the target class's probability, the
# renormalised non-target classes, correlations over every class): no exact form.
TOPK_FORMS = {kd: kd_topk, kd_topk: kd_topk, **{loss: loss for loss in TOKEN_LOSSES.values()}}


def _temperature(term: Term) -> float:
    default = inspect.signature(term.loss).parameters["temperature"].default
    return float(term.params.get("temperature", default))


# A sampled teacher estimates expectations over the teacher's tokens without bias: the forward
# KL is one, and JSD below β = 1 can be written as one (losses.sparse.sampled_jsd); the other
# divergences need p where the student puts mass (SAMPLED_REFUSAL).
SAMPLED_FORMS = {forward_kl: forward_kl, jsd: jsd}


def _sparse_terms(
    terms: list[Term], setting: str, forms: dict, refusal
) -> tuple[list[Term], float]:
    """The terms in the form that reads the sparse cache ``setting`` describes, and the one
    temperature it must store; ``refusal(name)`` says why a loss has none."""
    adapted, temperatures = [], set()
    for term in terms:
        if term.teacher != LOGITS:
            adapted.append(term)
            continue
        form = forms.get(term.loss)
        if forms is SAMPLED_FORMS and term.loss is jsd and term.params.get("beta", 0.5) == 1:
            form = None  # the reverse KL end of JSD
        if form is None or term.params.get("standardize"):
            name = getattr(term.loss, "__name__", type(term.loss).__name__)
            name += ", standardized" if form else ""
            raise UserError(
                f"teacher.{setting}: term {term.name!r} ({name}) {refusal(name)}; "
                f"set teacher.{setting.split('=')[0]}=null"
            )
        temperatures.add(_temperature(term))
        adapted.append(dataclasses.replace(term, loss=form))
    if len(temperatures) > 1:
        raise UserError(
            f"teacher.{setting}: the logit terms use temperatures {sorted(temperatures)}, but a "
            "sparse cache holds the teacher at one temperature; use one temperature or set "
            f"teacher.{setting.split('=')[0]}=null"
        )
    return adapted, temperatures.pop() if temperatures else 1.0


def topk_terms(terms: list[Term], k: int) -> tuple[list[Term], float]:
    """The terms in their exact top-k form, and the one temperature the cache must store.

    Raises ``UserError`` for a term whose loss has no exact top-k form, or for logit terms at
    different temperatures (one cache holds the teacher at one temperature)."""
    return _sparse_terms(
        terms,
        f"cache_topk={k}",
        TOPK_FORMS,
        lambda name: (
            "needs the teacher's full distribution and has no exact top-k form (kd and the "
            f"token losses {', '.join(TOKEN_LOSSES)} have one)"
        ),
    )


def sampled_terms(terms: list[Term], samples: int) -> tuple[list[Term], float]:
    """The terms that read a sampled cache (the forward KL, JSD below β = 1), and its one
    temperature.

    Raises ``UserError`` for any other loss on the teacher's logits, saying why."""
    return _sparse_terms(
        terms,
        f"cache_samples={samples}",
        SAMPLED_FORMS,
        lambda name: SAMPLED_REFUSAL,
    )


def signal_terms(terms: list[Term], signal: dict) -> tuple[list[Term], float]:
    """``topk_terms`` or ``sampled_terms`` for the cache ``signal`` (``signal_of``); a dense
    or hidden-state cache keeps the terms as they are (it gives the exact logits)."""
    if signal["kind"] == "topk":
        return topk_terms(terms, signal["k"])
    if signal["kind"] == "sampled":
        return sampled_terms(terms, signal["samples"])
    return terms, 1.0


def describe(signal: dict) -> str:
    if signal["kind"] == "hidden":
        return "the teacher's final hidden states and head"
    details = ", ".join(f"{k} {v}" for k, v in signal.items() if k != "kind")
    return f"{signal['kind']} teacher outputs" + (f" ({details})" if details else "")
