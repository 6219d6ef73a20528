"""Sequence models for speech-like features: a bidirectional LSTM teacher, a small GRU student,
and a 1-D CNN over time. Inputs are (B, T, F): frames × features (a log-mel spectrogram, LPC
coefficients).

Any other input shape is read as a sequence along its second-to-last axis with every other axis
folded into the features: an image (C, H, W) becomes H steps of C·W values, the row-by-row
reading of "sequential MNIST", so the models also run on the zoo's image data.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from kdistill.models.settings import records_settings


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(steps, features) of a sample of ``input_shape``."""
    if len(input_shape) == 1:
        return 1, input_shape[0]
    steps = input_shape[-2]
    return steps, math.prod(input_shape) // steps


def as_sequence(x: Tensor) -> Tensor:
    """(B, ..., T, F) → (B, T, features); (B, F) → (B, 1, F)."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3:
        return x
    # A positive axis: the TorchScript ONNX exporter writes movedim(-2, 1) as a Transpose with a
    # negative perm, which ONNX Runtime refuses to load.
    return x.movedim(x.dim() - 2, 1).reshape(x.shape[0], x.shape[-2], -1)


class SequenceRNN(nn.Module):
    """LSTM or GRU over the frames (uni- or bidirectional, stacked), pooled over time, then a
    linear head.

    ``frames`` (an identity module) holds the per-frame outputs (B, T, hidden·directions), the
    tap point for frame-level distillation terms; ``forward_features`` pools them over time.
    Mean pooling (the default) sees every frame, so trailing padding of short clips cannot make
    the network forget an early word the way a last-state readout can.
    """

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (72, 40),
        cell: str = "gru",
        hidden: int = 64,
        layers: int = 1,
        bidirectional: bool = False,
        pool: str = "mean",
        dropout: float = 0.0,
    ):
        super().__init__()
        cells = {"gru": nn.GRU, "lstm": nn.LSTM}
        if cell not in cells:
            raise ValueError(f"cell={cell!r}: choose gru or lstm")
        if pool not in ("mean", "max"):
            raise ValueError(f"pool={pool!r}: choose mean or max")
        _, features = sequence_shape(tuple(input_shape))
        self.rnn = cells[cell](
            features,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.frames = nn.Identity()
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        width = hidden * (2 if bidirectional else 1)
        self.head = nn.Linear(width, num_classes)
        self.num_classes = num_classes
        self.num_features = width
        self.hint_layers = ("frames",)

    def forward_features(self, x: Tensor) -> Tensor:
        frames, _ = self.rnn(as_sequence(x))
        frames = self.frames(frames)
        return frames.mean(dim=1) if self.pool == "mean" else frames.amax(dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class TemporalCNN(nn.Module):
    """Stages of [Conv1d over time → BN → ReLU → MaxPool(2)], stage ``k`` with ``width · 2**k``
    channels, global average pooling over time, and a linear head. The features of a frame are
    the input channels, so the filters see all mel bins at once (as in keyword-spotting CNNs)."""

    @records_settings
    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (72, 40),
        width: int = 32,
        depth: int = 2,
        kernel_size: int = 5,
        dropout: float = 0.0,
    ):
        super().__init__()
        steps, features = sequence_shape(tuple(input_shape))
        channels = [features] + [width * 2**k for k in range(depth)]
        self.stages = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv1d(
                        channels[k],
                        channels[k + 1],
                        kernel_size,
                        padding=kernel_size // 2,
                        bias=False,
                    ),
                    nn.BatchNorm1d(channels[k + 1]),
                    nn.ReLU(inplace=True),
                    # Pool only while the sequence is long enough to halve.
                    nn.MaxPool1d(2) if steps // 2 ** (k + 1) >= 1 else nn.Identity(),
                )
                for k in range(depth)
            )
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1], num_classes)
        self.num_classes = num_classes
        self.num_features = channels[-1]
        self.hint_layers = tuple(f"stages.{k}" for k in range(depth))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(as_sequence(x).transpose(1, 2)).mean(dim=-1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def bilstm(**kwargs) -> SequenceRNN:
    """Bidirectional LSTM, 2 layers of 128 units each way, mean-pooled (a speech teacher)."""
    return SequenceRNN(
        **{
            "cell": "lstm",
            "hidden": 128,
            "layers": 2,
            "bidirectional": True,
            "dropout": 0.1,
            **kwargs,
        }
    )


def gru(**kwargs) -> SequenceRNN:
    """GRU with knobs ``hidden``, ``layers``, ``bidirectional``, ``pool`` (default 1 × 64 units)."""
    return SequenceRNN(**{"cell": "gru", **kwargs})


def gru_tiny(**kwargs) -> SequenceRNN:
    """One GRU layer of 24 units, mean-pooled (a speech student)."""
    return SequenceRNN(**{"cell": "gru", "hidden": 24, **kwargs})


def conv1d(**kwargs) -> TemporalCNN:
    """1-D CNN over time with knobs ``width``, ``depth``,
    ``kernel_size`` (default 32, 64 channels)."""
    return TemporalCNN(**kwargs)


__all__ = [
    "SequenceRNN",
    "TemporalCNN",
    "as_sequence",
    "bilstm",
    "conv1d",
    "gru",
    "gru_tiny",
    "sequence_shape",
]
