"""The text of the generated pages (docs/gen_pages.py writes them when the site builds; the tests
compare them with the code): the recipe reference from the pydantic schema, the command line from
its help, a page per method from its preset, and a page per benchmark result."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _text(text: str) -> str:
    """Prose for a Markdown page: ``<name>`` outside code spans would be read as an HTML tag."""
    parts = re.split(r"(`[^`]*`)", text or "")
    return "".join(
        part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
        for part in parts
    )


# --- the recipe reference ----------------------------------------------------------------------


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic sections an annotation holds (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{value!r}`" for value in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) in (list, dict):
        inner = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{typing.get_origin(annotation).__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section defaults)"
        return f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined:
        return "required"
    if isinstance(field.default, BaseModel):
        return "(section defaults)"
    return f"`{json.dumps(field.default)}`"


def recipe_fields(model: type[BaseModel] | None = None, prefix: str = "") -> dict[str, object]:
    """Every field of the recipe schema by its dotted name (``train.epochs``), depth first."""
    if model is None:
        from kdistill.run.config import Recipe

        model = Recipe
    fields: dict[str, object] = {}
    for name, field in model.model_fields.items():
        fields[prefix + name] = field
        for section in _models_in(field.annotation):
            fields.update(recipe_fields(section, f"{prefix}{name}."))
    return fields


def recipe_reference() -> str:
    lines = [
        "# Recipe reference",
        "",
        "Every field of a recipe (`kdistill run recipe.yaml`, or `key=value` overrides on the",
        "command line), generated from the schema in `kdistill.run.config` and",
        "`kdistill.training.settings` when this site is built. A field a recipe does not",
        "know is an error naming the valid ones; `kdistill check` validates a recipe without",
        "running it. The same training fields are `distill(train=...)`'s in Python.",
        "",
        "| field | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, field in recipe_fields().items():
        description = _text(field.description).replace("|", "\\|").replace("\n", " ")
        kind = _type_name(field.annotation)
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


# --- the command line ----------------------------------------------------------------------------


def cli_page() -> str:
    import typer

    from kdistill.cli import app

    lines = [
        "# Command line",
        "",
        "Generated from `kdistill --help` and each verb's help when this site is built.",
        "Exit status: 0 success, 2 a user error (one line naming the field or file and the fix),",
        "1 a bug (its traceback kept).",
        "",
    ]
    for name, command in typer.main.get_command(app).commands.items():
        lines += [f"## kdistill {name}", "", _text(command.help), ""]
        rows = [
            (
                "/".join(param.opts + param.secondary_opts)
                if param.param_type_name == "option"
                else param.name.upper(),
                _text(getattr(param, "help", None)).replace("|", "\\|"),
                "" if param.required or param.default is None else f"`{param.default}`",
            )
            for param in command.params
        ]
        lines += ["| argument | meaning | default |", "|---|---|---|"]
        lines += [f"| `{opt}` | {text} | {default} |" for opt, text, default in rows]
        lines.append("")
    return "\n".join(lines)


# --- methods ------------------------------------------------------------------------------------

# When each method is the one to reach for: the practitioner's reading of the papers and of
# what the methods benchmark measured here (bench/results/methods.md), kept beside the code's own
# account of the formula and the defaults (the preset's docstring).
WHEN_TO_USE = {
    "kd": "The first method to try for any classifier, and the one to beat: it needs only the "
    "two models' outputs, works across architectures, and led the methods benchmark here.",
    "dkd": "Image classification where the teacher is far more accurate than the student; it "
    "lets the non-target classes' knowledge weigh more than KD does. Needs a long enough "
    "budget for its warm-up.",
    "dist": "When the teacher is much larger than the student (the capacity gap DIST was made "
    "for): it matches the ranking of class scores instead of their exact probabilities.",
    "lskd": "Logit KD whose student cannot match the teacher's logit scale; a drop-in change to "
    "KD (z-scored logits).",
    "nkd": "A KD variant with no temperature to tune; also works without a teacher's soft "
    "labels for the target class.",
    "fitnet": "CNN pairs with comparable stages, when the student should learn intermediate "
    "features (hints), usually with KD beside it.",
    "at": "CNN pairs whose stages have matching spatial sizes; measured below scratch here on "
    "a short budget, so try KD first.",
    "nst": "CNN pairs: matches the distribution of channel activations, not the features "
    "themselves, so the channel counts may differ.",
    "sp": "When the student should reproduce which samples of a batch the teacher finds "
    "similar; architecture-free (batch similarity matrices).",
    "vid": "Feature transfer with a learned per-channel variance, for students much narrower "
    "than the teacher.",
    "rkd": "Metric learning and embeddings: the student keeps the teacher's distances and "
    "angles between samples rather than its outputs.",
    "pkt": "Embeddings of different widths (no connector needed): matches the distribution of "
    "cosine affinities in a batch.",
    "cc": "Like RKD and SP, a relation method: matches the correlation between samples' "
    "embeddings; cheap, and a complement to KD.",
    "crd": "The strongest representation method in the RepDistiller benchmark; needs the "
    "training set's size (a memory bank) and costs more per step.",
    "scratch": "The baseline: every run trains it beside the distilled student, so that a gain "
    "is measured against the same data and budget without a teacher.",
    "tinybert": "Compressing a BERT-style encoder into a shallower, narrower one, when the "
    "hidden states and attention of mapped layers should be matched, not only the outputs.",
    "minilm": "Task-agnostic compression of a transformer where the student's depth and width "
    "are free: only the last layer's self-attention is matched.",
    "distilbert": "A student made of every other teacher layer "
    "(`distill.params.init_from_teacher`), trained with KD and a hidden-state cosine loss.",
    "cross_tokenizer": "A language-model teacher and student with different tokenizers: "
    "positions are aligned on byte offsets and compared per chunk. The projected KL (each "
    "teacher token onto the student token its string starts with) measured best here (21.2 % "
    "of the gap in bits per byte over 3 seeds, every seed), ahead of the exact-match hybrid "
    "(19.8 %); ULD and the chunk likelihood did worse than scratch at the same weight.",
    "token_kd": "GPT-style language models: a divergence per token (forward KL by default, "
    "reverse KL, JSD, skew KL, TVD); with `on_policy` it is GKD. Pair it with `chunk_size` for "
    "large vocabularies.",
}


def method_names() -> list[str]:
    from kdistill.methods import PRESETS

    return list(PRESETS)


def _measured_row(name: str) -> str | None:
    """The method's row of the methods benchmark (resnet56 → resnet8 on Fashion-MNIST)."""
    table = (RESULTS / "methods.md").read_text()
    match = re.search(rf"^\| {re.escape(name)} \| ([^|]+)\| ([^|]+)\|", table, flags=re.M)
    return None if match is None else f"{match[1].strip()} % test accuracy, {match[2].strip()}"


def _losses_of(name: str) -> list[tuple[str, object]]:
    """The losses of a method's terms at its defaults, by name, label terms left out. Feature
    and layer methods need their layers named to build their terms: one pair is named."""
    from kdistill.losses import LOSSES
    from kdistill.methods import PRESETS

    names = {id(loss): key for key, loss in LOSSES.items()}
    asks = ({}, {"student_layers": ["s"], "teacher_layers": ["t"]}, {"layer_map": {1: 2}})
    for layers in (*asks, {"student_layers": 2, "teacher_layers": 4}):
        try:
            terms = PRESETS[name](**layers)
            break
        except (TypeError, ValueError):
            continue
    losses = {}
    for term in terms:
        key, loss = names.get(id(term.loss)), term.loss
        if key is None and name in LOSSES:  # a loss inside a module (cc's EmbeddedPair)
            key, loss = name, LOSSES[name]
        if key not in ("ce", "token_ce", None):
            losses.setdefault(key, loss)
    return list(losses.items())


def _formula(loss) -> str:
    """A loss's docstring up to its arguments: the paper and the formula, where the code is."""
    text = inspect.getdoc(loss) or ""
    return _text(re.split(r"\n(?:Args|Returns|Shapes?):\n", text)[0].strip())


def method_page(name: str, measured: dict) -> str:
    from kdistill.methods import PRESETS

    preset = PRESETS[name]
    summary, _, details = inspect.getdoc(preset).partition("\n\n")
    lines = [f"# {name}", "", _text(" ".join(summary.split())), ""]
    if details:
        lines += [_text(details), ""]
    losses = _losses_of(name)
    if losses:
        lines += ["## The losses", ""]
        for loss, function in losses:
            lines += [f"### `{loss}`", "", _formula(function), ""]
    lines += ["## When to use it", "", WHEN_TO_USE.get(name, "See the paper above."), ""]
    lines += [
        "## Settings",
        "",
        f"`method: {name}` in a recipe, with these under `distill` (temperature, alpha, "
        "ce_weight) or `distill.params`; in Python, "
        f'`kdistill.distill(teacher, student, data, method="{name}", ...)`.',
        "",
    ]
    parameters = inspect.signature(preset).parameters.values()
    if parameters:
        lines += ["| setting | default |", "|---|---|"]
        lines += [f"| `{p.name}` | `{p.default!r}` |" for p in parameters]
    else:
        lines.append("No settings.")
    lines += ["", "## Measured here", ""]
    row = _measured_row(name)
    if row is None:
        lines.append(
            "Not in the image-classification methods benchmark (it needs a transformer or "
            "a language model); see the language-model benchmarks."
        )
    else:
        seeds = measured["setup"]["seeds"]
        lines.append(
            f"{measured['setup']['teacher']} → {measured['setup']['student']} on "
            f"Fashion-MNIST, {seeds} seeds: {row} of the teacher–scratch gap recovered "
            "([the whole table](../benchmarks/methods.md))."
        )
    return "\n".join(lines) + "\n"


# --- benchmarks ---------------------------------------------------------------------------------


def benchmark_page(result: Path, committed: str) -> str:
    """A bench/results page as measured, with where it came from and when."""
    text = result.read_text()
    title, _, body = text.partition("\n")
    note = (
        f"*Generated from `bench/results/{result.name}` (committed {committed}); the command "
        "and the machine that produced it are stated below. Rerun the command to update it.*"
    )
    return f"{title}\n\n{note}\n{body}"


def benchmarks_index(results: list[Path]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every measurement kept in `bench/results/`, one page each, generated from the file the",
        "bench script wrote (its command, machine and settings are on the page). Speed is",
        "measured as ratios against a plain PyTorch loop in the same run; accuracy against a",
        "scratch student on the same data and budget, over seeds where stated.",
        "",
        "| result | file |",
        "|---|---|",
    ]
    for result in results:
        title = result.read_text().partition("\n")[0].lstrip("# ").strip()
        lines.append(f"| [{title}]({result.name}) | `bench/results/{result.name}` |")
    return "\n".join(lines) + "\n"
