"""Audio features in plain PyTorch: WAV reading (stdlib ``wave``), a mel filterbank, log-mel
spectrograms and fixed-length clips. No torchaudio, no librosa.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdistill.errors import DataError


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as float32 samples in [-1, 1] (channels averaged) and its rate."""
    try:
        with wave.open(str(path), "rb") as file:
            if file.getsampwidth() != 2:
                raise DataError(
                    f"{path}: {8 * file.getsampwidth()}-bit audio; only 16-bit PCM WAV is read"
                )
            channels, rate = file.getnchannels(), file.getframerate()
            samples = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2")
    except (OSError, EOFError, wave.Error) as error:
        raise DataError(f"{path}: not a readable WAV file ({error})") from None
    audio = samples.astype(np.float32) / 32768.0
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    return audio, rate


def trim_silence(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """``audio`` without its leading and trailing samples quieter than ``threshold`` × its peak
    (speech synthesisers pad each word with a few hundred milliseconds of silence)."""
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak == 0.0:
        return audio
    loud = np.flatnonzero(np.abs(audio) > threshold * peak)
    return audio[loud[0] : loud[-1] + 1]


def fix_length(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Crop the end, or pad the end with silence, to exactly ``num_samples`` samples."""
    if len(audio) >= num_samples:
        return audio[:num_samples]
    return np.pad(audio, (0, num_samples - len(audio)))


def hz_to_mel(hz: Tensor | float) -> Tensor:
    """The HTK mel scale: 2595·log10(1 + f/700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular filters, (n_mels, n_fft // 2 + 1), equally spaced on the HTK mel scale.

    Filter ``m`` rises from centre ``m - 1`` to its own centre and falls to centre ``m + 1``,
    with peak 1 (no area normalisation: the log and the per-bin standardisation make it moot).
    """
    edges = _mel_edges(n_mels, sample_rate, f_min, f_max)
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def mel_centres(
    n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Centre frequency in Hz of each filter of ``mel_filterbank``."""
    return _mel_edges(n_mels, sample_rate, f_min, f_max)[1:-1].float()


def _mel_edges(n_mels: int, sample_rate: int, f_min: float, f_max: float | None) -> Tensor:
    """``n_mels + 2`` frequencies (Hz) equally spaced in mel: filter edges and centres."""
    f_max = sample_rate / 2 if f_max is None else f_max
    mels = torch.linspace(
        float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64
    )
    return mel_to_hz(mels)


def log_mel_spectrogram(
    audio: Tensor,
    sample_rate: int,
    *,
    n_fft: int = 512,
    hop_length: int = 256,
    n_mels: int = 40,
    f_min: float = 20.0,
    f_max: float | None = None,
    floor: float = 1e-6,
) -> Tensor:
    """Log mel power spectrogram of ``audio`` (..., samples) → (..., frames, n_mels).

    Hann-windowed STFT with centred frames (``1 + samples // hop_length`` of them), power
    |X|², the mel filterbank, then ``log(mel + floor)``: the floor keeps silent padding at a
    finite, constant value instead of log 0.
    """
    shape = audio.shape[:-1]
    flat = audio.reshape(-1, audio.shape[-1]).float()
    window = torch.hann_window(n_fft, dtype=flat.dtype)
    spectrum = torch.stft(
        flat, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True
    )
    power = spectrum.abs() ** 2  # (N, n_fft // 2 + 1, frames)
    filters = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
    mel = torch.einsum("mf,nft->ntm", filters, power)
    return torch.log(mel + floor).reshape(*shape, mel.shape[1], n_mels)


def frames_to_samples(frames: int, hop_length: int) -> int:
    """Samples that give exactly ``frames`` centred STFT frames."""
    return max(frames - 1, 0) * hop_length


__all__ = [
    "fix_length",
    "frames_to_samples",
    "hz_to_mel",
    "log_mel_spectrogram",
    "mel_centres",
    "mel_filterbank",
    "mel_to_hz",
    "read_wav",
    "trim_silence",
]
