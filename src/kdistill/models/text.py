"""Non-transformer text classifiers over word pieces: a BiLSTM and a 1-D CNN.

The classic small students of BERT distillation: Tang et al., "Distilling Task-Specific
Knowledge from BERT into Simple Neural Networks", 2019, arXiv:1903.12136 (BiLSTM), and Kim,
"Convolutional Neural Networks for Sentence Classification", EMNLP 2014 (CNN). Both take the
teacher's word-piece ids, so the teacher's logits are compared sample by sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdistill.models.settings import records_settings


class BiLSTMClassifier(nn.Module):
    """Embeddings → bidirectional LSTM → max over the real tokens' states → MLP head."""

    @records_settings
    def __init__(
        self,
        num_classes: int = 2,
        input_shape: tuple[int, ...] = (48,),
        vocab_size: int = 30522,
        embed_dim: int = 128,
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.2,
        pad_id: int = 0,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        _init_embeddings(self.embed, pad_id)
        self.lstm = nn.LSTM(
            embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes
        self.num_features = hidden
        self.hint_layers = ("lstm", "fc")

    def forward_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        lengths = attention_mask.sum(1).clamp_min(1).cpu()
        # Packing keeps the backward direction from starting in the padding.
        packed = nn.utils.rnn.pack_padded_sequence(
            self.dropout(self.embed(input_ids)), lengths, batch_first=True, enforce_sorted=False
        )
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(
            states, batch_first=True, padding_value=float("-inf"), total_length=input_ids.shape[1]
        )
        return self.fc(self.dropout(states.max(1).values))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.dropout(features))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(input_ids, attention_mask))


class TextCNN(nn.Module):
    """Embeddings → parallel 1-D convolutions of widths ``kernel_sizes`` → max over time → head."""

    @records_settings
    def __init__(
        self,
        num_classes: int = 2,
        input_shape: tuple[int, ...] = (48,),
        vocab_size: int = 30522,
        embed_dim: int = 128,
        channels: int = 100,
        kernel_sizes: tuple[int, ...] = (3, 4, 5),
        dropout: float = 0.5,
        pad_id: int = 0,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        _init_embeddings(self.embed, pad_id)
        self.convs = nn.ModuleList(
            nn.Conv1d(embed_dim, channels, k, padding=k // 2) for k in kernel_sizes
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels * len(kernel_sizes), num_classes)
        self.num_classes = num_classes
        self.num_features = channels * len(kernel_sizes)
        self.hint_layers = tuple(f"convs.{i}" for i in range(len(kernel_sizes)))

    def forward_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        # Padding positions read as zero vectors, whatever id they hold: windows at the end of
        # a snippet overlap the padding, and only the real tokens may decide the output.
        x = (
            self.embed(input_ids) * attention_mask[..., None].to(self.embed.weight.dtype)
        ).transpose(1, 2)  # (B, E, L)
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))[..., : input_ids.shape[1]]
            pooled.append(
                h.masked_fill(~attention_mask.bool()[:, None, :], float("-inf")).max(-1).values
            )
        return torch.cat(pooled, dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.dropout(features))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(input_ids, attention_mask))


def _init_embeddings(embed: nn.Embedding, pad_id: int) -> None:
    # N(0, 0.1) rather than PyTorch's N(0, 1): Adam moves each weight by ~lr per step, so
    # unit-scale vectors for 30k word pieces, each seen a few times, would barely move from
    # their random start on a few thousand snippets (as BERT and GPT-2 start theirs at 0.02).
    nn.init.normal_(embed.weight, std=0.1)
    with torch.no_grad():
        embed.weight[pad_id].zero_()


def bilstm(**kwargs) -> BiLSTMClassifier:
    """BiLSTM text classifier over word pieces (Tang et al. 2019's distilled student)."""
    return BiLSTMClassifier(**kwargs)


def text_cnn(**kwargs) -> TextCNN:
    """1-D CNN text classifier over word pieces (Kim 2014), kernel widths 3, 4, 5."""
    return TextCNN(**kwargs)


__all__ = ["BiLSTMClassifier", "TextCNN", "bilstm", "text_cnn"]
