"""Spoken digits synthesised offline with espeak-ng, cached on disk, split by voice.

The ten English digit words are spoken by 25 espeak-ng voice variants (male, female, Klatt and
named voices), each in 8 English accents, at a speed and pitch drawn per clip from a seeded
generator: 2,000 clips. White noise at a per-clip signal-to-noise ratio (0–20 dB by default) is
added when the clips are loaded. The plan of clips is a pure function of the seed, so every machine
with the same espeak-ng makes the same data; the WAV files are cached under
``~/.cache/kdistill/spoken_digits/<fingerprint>/`` (or ``data.path``) with a ``manifest.json``.

The split is by voice: the test voices are never heard in training, in any accent, so the test
score measures generalisation to new speakers rather than memorised timbre.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from kdistill.data.audio import (
    fix_length,
    frames_to_samples,
    log_mel_spectrogram,
    read_wav,
    trim_silence,
)
from kdistill.data.base import ArrayDataset, DataSplits
from kdistill.errors import DataError
from kdistill.io.files import atomic_write, replace_atomically

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# English accents shipped with espeak-ng's own (non-MBROLA) voices.
ACCENTS = (
    "en-us",
    "en-us-nyc",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
# Voice variants (espeak-ng-data/voices/!v): formant settings that change the timbre, i.e. the
# "speaker". Robot, whisper and novelty variants are left out.
VOICES = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "Alicia",
    "Andy",
    "Annie",
    "aunty",
    "benjamin",
    "caleb",
    "david",
    "linda",
    "steph",
)
SPEED_WPM = (120, 220)  # espeak-ng -s: words per minute (its default is 175)
PITCH = (25, 75)  # espeak-ng -p: 0..99 (default 50)
INSTALL_HINT = "install it with: apt-get install espeak-ng"
PLAN_VERSION = 1  # bump when the plan's meaning changes, so old caches are not reused


def clip_plan(seed: int = 0) -> list[dict]:
    """Every clip to synthesise: voice, accent, digit, speed and pitch, in a fixed order."""
    rng = np.random.default_rng(seed)
    plan = []
    for voice in VOICES:
        for accent in ACCENTS:
            for digit, word in enumerate(DIGIT_WORDS):
                speed = int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1))
                pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
                plan.append(
                    {
                        "file": f"{voice}/{accent}_{word}.wav",
                        "voice": voice,
                        "accent": accent,
                        "digit": digit,
                        "word": word,
                        "speed": speed,
                        "pitch": pitch,
                    }
                )
    return plan


def cache_dir(plan: list[dict], root: str | Path | None = None) -> Path:
    """``<root>/<fingerprint of the plan>``; root defaults to
    ``$XDG_CACHE_HOME/kdistill/spoken_digits``."""
    if root is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root = base / "kdistill" / "spoken_digits"
    fingerprint = hashlib.sha256(
        json.dumps([PLAN_VERSION, plan], sort_keys=True).encode()
    ).hexdigest()[:12]
    return Path(root) / fingerprint


def espeak_version(executable: str) -> str:
    result = subprocess.run([executable, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def synthesise(clips: list[dict], directory: Path, *, workers: int | None = None) -> int:
    """Write each clip of ``clips`` that is not on disk yet; returns how many were made.

    Each file is written under a temporary name and renamed, so an interrupted run never
    leaves a truncated clip that a later run would trust.
    """
    missing = [clip for clip in clips if not (directory / clip["file"]).is_file()]
    if not missing:
        return 0
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise DataError(
            f"spoken_digits needs espeak-ng to synthesise {len(missing)} clips: {INSTALL_HINT}"
        )

    def speak(clip: dict, partial: Path) -> None:
        command = [
            executable,
            "-v",
            f"{clip['accent']}+{clip['voice']}",
            "-s",
            str(clip["speed"]),
            "-p",
            str(clip["pitch"]),
            "-w",
            str(partial),
            clip["word"],
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not partial.is_file():
            reason = (result.stderr or result.stdout).strip().splitlines()
            raise DataError(
                f"espeak-ng failed on {clip['file']}: {reason[0] if reason else result.returncode}"
            )

    def make(clip: dict) -> None:
        target = directory / clip["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(
            target,
            lambda partial: speak(clip, partial),
            needed=0,
            cannot="cannot write the clip cache ({reason}); choose a writable folder as data.path",
        )

    # espeak-ng is a short process per clip: a few in flight keep both cores busy.
    try:
        with ThreadPoolExecutor(max_workers=workers or min(8, 2 * (os.cpu_count() or 1))) as pool:
            list(pool.map(make, missing))
    except OSError as error:
        raise DataError(
            "data.path: cannot write the clip cache "
            f"{directory} ({error}); choose a writable folder"
        ) from None
    return len(missing)


def write_manifest(directory: Path, plan: list[dict], generation_seed: int) -> None:
    """``manifest.json``: the whole plan (what each file is) and the espeak-ng that made it."""
    manifest = directory / "manifest.json"
    if manifest.is_file():
        return
    executable = shutil.which("espeak-ng")
    content = {
        "generator": espeak_version(executable) if executable else None,
        "plan_version": PLAN_VERSION,
        "generation_seed": generation_seed,
        "clips": plan,
    }
    atomic_write(manifest, json.dumps(content, indent=1))


def add_noise(audio: np.ndarray, clip: dict, snr_db: tuple[float, float], seed: int) -> np.ndarray:
    """``audio`` plus white noise at a signal-to-noise ratio drawn from ``snr_db`` (dB).

    The draw depends only on the seed and the clip's file name, so a clip sounds the same
    in every subset and every run. Signal power is that of the non-silent samples.
    """
    stream = int.from_bytes(
        hashlib.sha256(f"{seed}/{clip['file']}".encode()).digest()[:8], "little"
    )
    rng = np.random.default_rng(stream)
    snr = rng.uniform(*snr_db)
    voiced = audio[np.abs(audio) > 0.02 * np.abs(audio).max()] if np.any(audio) else audio
    power = float(np.mean(voiced**2)) if len(voiced) else 0.0
    noise = rng.standard_normal(len(audio)).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    return audio + noise


def voice_split(
    voices: list[str], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[str], ...]:
    """Voices shuffled with ``seed`` and cut into train / val / test, each at least one voice."""
    order = [str(v) for v in np.random.default_rng(seed).permutation(sorted(voices))]
    if len(order) < 3:
        raise DataError(
            f"a split by voice needs at least 3 voices, got {len(order)}; raise data.subset"
        )
    n_test = min(max(1, round(test_fraction * len(order))), len(order) - 2)
    n_val = (
        min(max(1, round(val_fraction * len(order))), len(order) - n_test - 1)
        if val_fraction > 0
        else 0
    )
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def load_spoken_digits(
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    subset: int | None = None,
    generation_seed: int = 0,
    n_mels: int = 40,
    frames: int = 72,
    n_fft: int = 512,
    hop_length: int = 256,
    noise_snr_db: tuple[float, float] | None = (0.0, 20.0),
    workers: int | None = None,
) -> DataSplits:
    """Spoken digits 0–9, 2,000 clips synthesised with espeak-ng (25 voices × 8 accents), split by
    voice.

    Inputs are log-mel spectrograms (frames, n_mels) of the clip with its silence trimmed,
    cropped or padded to ``frames`` (72 frames of 256 samples at 22.05 kHz: 0.83 s), each mel
    bin standardised with the train split's mean and standard deviation. ``subset`` keeps that
    many clips drawn with ``seed`` (only those are synthesised). ``path`` is the cache root.
    """
    plan = clip_plan(generation_seed)
    directory = cache_dir(plan, path)
    if subset is not None and subset < len(plan):
        keep = np.sort(np.random.default_rng(seed).choice(len(plan), size=subset, replace=False))
        plan = [plan[i] for i in keep]
    synthesise(plan, directory, workers=workers)
    write_manifest(directory, clip_plan(generation_seed), generation_seed)

    num_samples = frames_to_samples(frames, hop_length)
    waves, rate = [], None
    for clip in plan:
        audio, clip_rate = read_wav(directory / clip["file"])
        if rate is not None and clip_rate != rate:
            raise DataError(
                f"{directory / clip['file']}: sample rate {clip_rate} Hz, others {rate} Hz"
            )
        rate = clip_rate
        audio = fix_length(trim_silence(audio), num_samples)
        if noise_snr_db is not None:
            audio = add_noise(audio, clip, noise_snr_db, generation_seed)
        waves.append(audio)
    features = torch.cat(
        [
            log_mel_spectrogram(
                torch.from_numpy(np.stack(waves[i : i + 256])),
                rate,
                n_fft=n_fft,
                hop_length=hop_length,
                n_mels=n_mels,
            )
            for i in range(0, len(waves), 256)
        ]
    )
    targets = torch.tensor([clip["digit"] for clip in plan])
    voices = np.array([clip["voice"] for clip in plan])

    train_voices, val_voices, test_voices = voice_split(
        sorted(set(voices)), val_fraction, test_fraction, seed
    )
    parts = [
        torch.from_numpy(np.flatnonzero(np.isin(voices, group)))
        for group in (train_voices, val_voices, test_voices)
    ]
    # Per-mel-bin statistics of the training voices only: nothing about test speakers leaks in.
    mean = features[parts[0]].mean(dim=(0, 1))
    std = features[parts[0]].std(dim=(0, 1)).clamp_min(1e-5)
    features = (features - mean) / std

    def split(idx: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(features[idx].contiguous(), targets[idx])

    return DataSplits(
        train=split(parts[0]),
        val=split(parts[1]),
        test=split(parts[2]),
        num_classes=10,
        input_shape=(frames, n_mels),
        class_names=list(DIGIT_WORDS),
        identity={
            "dataset": "spoken_digits",
            "cache": directory.name,
            "generation_seed": generation_seed,
            "subset": subset,
            "noise_snr_db": list(noise_snr_db) if noise_snr_db is not None else None,
            "features": {
                "kind": "log-mel",
                "sample_rate": rate,
                "n_fft": n_fft,
                "hop_length": hop_length,
                "n_mels": n_mels,
                "frames": frames,
            },
            "split": {
                "by": "voice",
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "seed": seed,
                "voices": {"train": train_voices, "val": val_voices, "test": test_voices},
            },
            "sizes": {"train": len(parts[0]), "val": len(parts[1]), "test": len(parts[2])},
            "normalise": "per mel bin, train statistics",
        },
    )
