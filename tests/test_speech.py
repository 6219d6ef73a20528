"""Speech: log-mel features in plain PyTorch, espeak-ng spoken digits split by voice,
JapaneseVowels from the sktime wheel, the sequence models, and both recipes end to end."""

import json
import shutil
import wave

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

from kdistill.cli import main
from kdistill.data import load_dataset
from kdistill.data.audio import (
    fix_length,
    log_mel_spectrogram,
    mel_centres,
    mel_filterbank,
    read_wav,
    trim_silence,
)
from kdistill.data.speech import VOICES, clip_plan, synthesise, voice_split
from kdistill.data.vowels import read_ts
from kdistill.errors import DataError
from kdistill.models import create_model
from kdistill.taps import FeatureTap

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)
QUICK = [
    "teacher.epochs=1",
    "train.epochs=1",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    """One small cache of synthesised clips shared by this module's espeak-ng tests."""
    return tmp_path_factory.mktemp("spoken_digits")


# --- features -------------------------------------------------------------------------------


def test_pure_tone_peaks_in_the_mel_bin_centred_nearest_its_frequency():
    rate, n_mels = 16000, 40
    for frequency in (300.0, 1000.0, 3500.0):
        t = torch.arange(rate) / rate
        tone = torch.sin(2 * torch.pi * frequency * t)
        features = log_mel_spectrogram(
            tone, rate, n_fft=512, hop_length=160, n_mels=n_mels, f_min=0.0
        )
        assert features.shape == (1 + rate // 160, n_mels)
        expected = int(torch.argmin((mel_centres(n_mels, rate, 0.0) - frequency).abs()))
        assert int(features.mean(dim=0).argmax()) == expected


def test_mel_filters_are_unit_peak_triangles_covering_the_band():
    filters = mel_filterbank(40, 512, 22050)
    assert filters.shape == (40, 257)
    assert filters.min() >= 0 and filters.max() <= 1.0 + 1e-6
    assert (filters.sum(dim=1) > 0).all()  # no empty filter at this resolution
    peaks = filters.argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the filter index


def test_log_mel_batches_and_silence_is_finite():
    audio = torch.zeros(3, 2, 4096)
    features = log_mel_spectrogram(audio, 22050, n_fft=512, hop_length=256, n_mels=20)
    assert features.shape == (3, 2, 17, 20)
    assert torch.isfinite(features).all() and torch.allclose(
        features, features.flatten()[0].expand_as(features)
    )


def test_wav_round_trip_trim_and_fix_length(tmp_path):
    samples = (np.sin(np.linspace(0, 200, 4000)) * 16000).astype("<i2")
    quiet = np.zeros(1000, dtype="<i2")
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(8000)
        file.writeframes(np.concatenate([quiet, samples, quiet]).tobytes())
    audio, rate = read_wav(path)
    assert rate == 8000 and len(audio) == 6000 and audio.dtype == np.float32
    assert np.allclose(audio[1000:5000], samples / 32768.0)
    trimmed = trim_silence(audio)
    assert 3900 <= len(trimmed) <= 4000
    assert len(fix_length(trimmed, 5000)) == 5000 and np.all(
        fix_length(trimmed, 5000)[len(trimmed) :] == 0
    )
    assert np.array_equal(fix_length(trimmed, 100), trimmed[:100])
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(DataError, match="bad.wav"):
        read_wav(tmp_path / "bad.wav")


# --- spoken digits ----------------------------------------------------------------------------


def test_clip_plan_is_a_function_of_the_seed():
    plan = clip_plan(0)
    assert len(plan) == 2000 and plan == clip_plan(0) and plan != clip_plan(1)
    assert len({clip["file"] for clip in plan}) == 2000
    assert {clip["voice"] for clip in plan} == set(VOICES)
    assert np.bincount([clip["digit"] for clip in plan]).tolist() == [200] * 10


def test_voice_split_is_disjoint_complete_and_seeded():
    voices = [f"v{i}" for i in range(25)]
    train, val, test = voice_split(voices, 0.1, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (18, 2, 5)
    assert sorted(train + val + test) == sorted(voices)
    assert voice_split(voices, 0.1, 0.2, seed=0) == (train, val, test)
    assert voice_split(voices, 0.1, 0.2, seed=1) != (train, val, test)
    with pytest.raises(DataError, match="at least 3 voices"):
        voice_split(["a", "b"], 0.1, 0.2, seed=0)


@needs_espeak
def test_synthesis_is_deterministic(tmp_path):
    clips = clip_plan(0)[:2]
    assert synthesise(clips, tmp_path / "a") == 2
    assert synthesise(clips, tmp_path / "a") == 0  # cached: nothing made again
    synthesise(clips, tmp_path / "b")
    for clip in clips:
        assert (tmp_path / "a" / clip["file"]).read_bytes() == (
            tmp_path / "b" / clip["file"]
        ).read_bytes()


@needs_espeak
def test_spoken_digits_split_by_voice(clip_cache):
    splits = load_dataset("spoken_digits", path=str(clip_cache), subset=200)
    voices = splits.identity["split"]["voices"]
    train, val, test = (set(voices[k]) for k in ("train", "val", "test"))
    assert not (train & test) and not (train & val) and not (val & test)
    # The number of clips in each split is exactly the number of planned clips of its voices.
    keep = np.sort(np.random.default_rng(0).choice(2000, size=200, replace=False))
    planned = [clip_plan(0)[i]["voice"] for i in keep]
    assert len(splits.test) == sum(v in test for v in planned) and len(splits.train) == sum(
        v in train for v in planned
    )
    assert splits.input_shape == (72, 40) and splits.num_classes == 10
    x = splits.train.inputs
    assert torch.isfinite(x).all() and x.mean(dim=(0, 1)).abs().max() < 1e-3  # per-bin standardised
    manifest = json.loads(next(clip_cache.glob("*/manifest.json")).read_text())
    assert len(manifest["clips"]) == 2000 and "eSpeak NG" in manifest["generator"]


def test_missing_espeak_exits_2_with_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("kdistill.data.speech.shutil.which", lambda name: None)
    code = main(
        [
            "run",
            str(ROOT / "configs" / "spoken_digits.yaml"),
            f"data.path={tmp_path / 'empty'}",
            f"output.dir={tmp_path}",
            *QUICK,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "apt-get install espeak-ng" in err and "Traceback" not in err


@needs_espeak
def test_spoken_digits_recipe_end_to_end(clip_cache, tmp_path):
    code = main(
        [
            "run",
            str(ROOT / "configs" / "spoken_digits.yaml"),
            "data.subset=200",
            f"data.path={clip_cache}",
            f"output.dir={tmp_path}",
            *QUICK,
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "spoken_digits_kd" / "summary.json").read_text())
    for role in ("teacher", "scratch", "student"):
        assert 0.0 <= summary[role]["accuracy"] <= 1.0
    assert summary["teacher"]["params"] >= 10 * summary["student"]["params"]
    assert summary["data"]["split"]["by"] == "voice"


# --- JapaneseVowels ---------------------------------------------------------------------------


def test_read_ts_multivariate_unequal_lengths(tmp_path):
    path = tmp_path / "tiny.ts"
    path.write_text(
        "#comment\n@problemName tiny\n@classLabel true a b\n@data\n1,2,3:4,5,6:a\n7,8:9,10:b\n"
    )
    sequences, labels, classes = read_ts(path)
    assert classes == ["a", "b"] and labels.tolist() == [0, 1]
    assert sequences[0].tolist() == [[1, 4], [2, 5], [3, 6]] and sequences[1].shape == (2, 2)
    path.write_text("@data\n1,2:3:a\n")
    with pytest.raises(DataError, match="different lengths"):
        read_ts(path)


def test_japanese_vowels_keeps_the_published_split():
    splits = load_dataset("japanese_vowels")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (243, 27, 370)
    assert splits.input_shape == (29, 12) and splits.num_classes == 9
    assert np.bincount(splits.val.targets.numpy()).tolist() == [3] * 9
    assert torch.isfinite(splits.train.inputs).all()


@pytest.mark.integration
def test_japanese_vowels_recipe_end_to_end(tmp_path):
    code = main(
        [
            "run",
            str(ROOT / "configs" / "japanese_vowels.yaml"),
            "data.subset=200",
            f"output.dir={tmp_path}",
            *QUICK,
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "japanese_vowels_kd" / "summary.json").read_text())
    assert summary["data"]["dataset"] == "japanese_vowels"
    assert summary["teacher"]["params"] >= 10 * summary["student"]["params"]


# --- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bilstm", "gru", "gru_tiny", "conv1d"])
def test_sequence_models_on_frames(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, input_shape=(72, 40))
    x = torch.randn(3, 72, 40)
    logits = model(x)
    assert logits.shape == (3, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad(), FeatureTap(model, list(model.hint_layers)) as tap:
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
    assert model.forward_features(x).shape == (3, model.num_features)
    assert all(tap.features[name].shape[0] == 3 for name in model.hint_layers)


def test_rnn_frames_tap_gives_one_vector_per_frame():
    model = create_model("bilstm", num_classes=9, input_shape=(29, 12)).eval()
    with FeatureTap(model, ["frames"]) as tap:
        model(torch.randn(2, 29, 12))
    assert tap.features["frames"].shape == (2, 29, 256)


@pytest.mark.parametrize("recipe", ["spoken_digits", "japanese_vowels"])
def test_recipe_students_are_at_least_10x_smaller(recipe):
    config = yaml.safe_load((ROOT / "configs" / f"{recipe}.yaml").read_text())
    shape = {"spoken_digits": (72, 40), "japanese_vowels": (29, 12)}[recipe]

    def params(section):
        model = create_model(
            config[section]["model"],
            num_classes=10,
            input_shape=shape,
            **config[section].get("kwargs", {}),
        )
        return sum(p.numel() for p in model.parameters())

    assert params("teacher") >= 10 * params("student")
