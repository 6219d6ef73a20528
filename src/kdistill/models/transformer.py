"""Small readable transformers: a GPT-style causal language model and a BERT-style encoder
classifier, sharing one pre-norm block.

In the spirit of nanoGPT (Karpathy): one file, a ``@dataclass`` config, plain PyTorch. What
distillation needs is exposed by name, the way Hugging Face models expose it, so the same terms
work on both: ``hidden_states.{i}`` (0 = embeddings, i = output of block i) and
``attentions.{i}`` (block i's attention probabilities, (B, H, L, L)) are identity modules a
``FeatureTap`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.modeling import LazyLogits
from kdistill.models.settings import records_settings


@dataclass
class TransformerConfig:
    vocab_size: int = 30522
    block_size: int = 128  # the longest sequence (learned positions)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    ffn_mult: int = 4
    dropout: float = 0.1
    causal: bool = True
    pad_id: int = 0


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} must be a multiple of n_head {config.n_head}")
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.causal = config.causal

    def forward(self, x: Tensor, key_mask: Tensor | None = None, need_probs: bool = True):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (
            t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2)
            for t in (q, k, v)
        )
        if not need_probs:
            # The fused kernel (no probabilities to hand out) when nothing reads them.
            mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout.p if self.training else 0.0,
                is_causal=self.causal and mask is None,
            )
            probs = None
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            allowed = torch.ones(length, length, dtype=torch.bool, device=x.device)
            if self.causal:
                allowed = allowed.tril()
            if key_mask is not None:
                allowed = allowed & key_mask[:, None, None, :]
            probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            out = self.dropout(probs) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, length, width)), probs


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2): x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, config.ffn_mult * config.n_embd),
            nn.GELU(),
            nn.Linear(config.ffn_mult * config.n_embd, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: Tensor, key_mask: Tensor | None = None, need_probs: bool = True):
        attended, probs = self.attn(self.ln_1(x), key_mask, need_probs)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), probs


class TransformerBody(nn.Module):
    """Embeddings and blocks, with the taps ``hidden_states.{i}`` and ``attentions.{i}``; the
    models below add their heads to it (so the tap names sit at the top level, as in the
    Hugging Face wrapper)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.hidden_states = nn.ModuleList(nn.Identity() for _ in range(config.n_layer + 1))
        self.attentions = nn.ModuleList(nn.Identity() for _ in range(config.n_layer))
        self.apply(_init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "mlp.2.weight")):
                # GPT-2: residual projections scaled by 1/sqrt(2·layers) keep the residual
                # stream's variance from growing with depth.
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Final-layer-normed hidden states, (B, L, D)."""
        length = input_ids.shape[1]
        if length > self.config.block_size:
            raise ValueError(
                f"sequence of {length} tokens is longer than block_size {self.config.block_size}"
            )
        key_mask = None if attention_mask is None else attention_mask.bool()
        positions = torch.arange(length, device=input_ids.device)
        x = self.hidden_states[0](self.drop(self.tok_emb(input_ids) + self.pos_emb(positions)))
        # Attention probabilities are materialised only when a tap reads them.
        need_probs = any(m._forward_hooks for m in self.attentions)
        for i, block in enumerate(self.blocks):
            x, probs = block(x, key_mask, need_probs)
            if probs is not None:
                self.attentions[i](probs)
            x = self.hidden_states[i + 1](x)
        return self.ln_f(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class GPT(TransformerBody):
    """Causal language model: ids (B, L) → next-token logits (B, L, V).

    The output layer shares the token-embedding matrix (weight tying, Press & Wolf 2017), as
    GPT-2 does: fewer parameters, and a better small model.
    """

    @records_settings
    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight
        self.num_classes = config.vocab_size
        self.num_features = config.n_embd
        self.hint_layers = tuple(f"hidden_states.{i}" for i in range(1, config.n_layer + 1))

    def forward_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.encode(input_ids, attention_mask)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features)

    # Its logits are exactly head(final hidden states): chunked losses and a hidden-state teacher
    # cache may take the two instead (``forward(..., lazy_logits=True)``).
    supports_lazy_logits = True

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, lazy_logits: bool = False
    ) -> Tensor | LazyLogits:
        # A padding mask on keys is not needed for causal LM training: padding only ever
        # follows the real tokens, so no counted position can attend to it.
        features = self.forward_features(input_ids, None)
        if lazy_logits:
            return LazyLogits(features, self.head.weight)
        return self.forward_head(features)


class TransformerClassifier(TransformerBody):
    """Bidirectional encoder over word pieces → mean of the real tokens' states → classes."""

    @records_settings
    def __init__(self, config: TransformerConfig, num_classes: int):
        super().__init__(config)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.n_embd, num_classes)
        _init_weights(self.head)
        self.num_classes = num_classes
        self.num_features = config.n_embd
        self.hint_layers = tuple(f"hidden_states.{i}" for i in range(1, config.n_layer + 1))

    def forward_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_id
        states = self.encode(input_ids, attention_mask)
        weights = attention_mask.to(states.dtype)[..., None]
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.dropout(features))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(input_ids, attention_mask))


def _config(input_shape, causal: bool, vocab_size: int, **kwargs) -> TransformerConfig:
    known = set(TransformerConfig.__dataclass_fields__)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"unexpected argument(s) {', '.join(unknown)}; transformer options: "
            f"{', '.join(sorted(known - {'causal'}))}"
        )
    return TransformerConfig(
        **{"block_size": int(input_shape[-1]), **kwargs, "vocab_size": vocab_size, "causal": causal}
    )


def gpt(num_classes: int = 128, input_shape: tuple[int, ...] = (128,), **kwargs) -> GPT:
    """GPT-style causal LM (nanoGPT): ``n_layer``, ``n_head``, ``n_embd``; vocabulary = classes."""
    return GPT(_config(input_shape, True, num_classes, **kwargs))


def transformer_classifier(
    num_classes: int = 2, input_shape: tuple[int, ...] = (48,), vocab_size: int = 30522, **kwargs
) -> TransformerClassifier:
    """Small BERT-style encoder classifier over word pieces: ``n_layer``, ``n_head``, ``n_embd``."""
    return TransformerClassifier(_config(input_shape, False, vocab_size, **kwargs), num_classes)


__all__ = ["GPT", "TransformerClassifier", "TransformerConfig", "gpt", "transformer_classifier"]
