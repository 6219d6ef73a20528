"""Settings chosen from the data, once it is loaded (the first step of ``plan``).

``auto`` in ``teacher.augment``, ``train.augment`` or ``train.mix`` is chosen by the kind of
input. The built-in recipe pointed at the user's own data (``Recipe.follows_data``) leaves every
setting the user did not set to that data instead of the MNIST demo: the teacher and student
models (``follow_data_models``, before the terms are built), augmentation and mixing (as
``auto``), the epoch budget, the teacher cache and its views. ``train.time_budget`` fits the
epochs to a wall-clock budget instead, in any recipe (``kdistill.run.budget``). A recipe that
does not name itself and reads data other than the demo's is named after it. Each choice is one
line,
``field=value: why``, which ``kdistill check`` prints; the values are set on the recipe, so the
run's config.yaml records them and reads back to the same run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdistill.data import DataSplits
from kdistill.data.mixing import check_mix_terms
from kdistill.errors import ConfigError
from kdistill.evaluation import Task
from kdistill.methods import Term
from kdistill.run.budget import EpochCost, budget_epochs
from kdistill.run.config import Recipe, names_own_data

# About this many optimizer updates, within these epochs: a budget by the size of the data, not
# consistent teaching's 160 epochs of 3,500 digits (8,750 updates). A few hundred samples are not
# trained for minutes on end, and a large set still sees each sample a few times.
BUDGET_UPDATES = 2000
EPOCH_BOUNDS = (5, 100)
# Images of the user's own: consistent teaching (Beyer et al., CVPR 2022; configs/mnist_patient.yaml
# measures it on MNIST): the teachers and both students see the same affine views, the distilled
# student's CutMix-ed, and a cached teacher scores 32 distinct views of each image.
IMAGE_AUGMENT, IMAGE_MIX, IMAGE_VIEWS = "affine", "cutmix", 32


def input_kind(example) -> str:
    """What a training input is, in words: images (C, H, W), sequences (T, F), table rows,
    token ids or text."""
    if isinstance(example, dict) and "input_ids" in example:
        return "text"
    if not isinstance(example, torch.Tensor):
        return f"{type(example).__name__} records"
    if not example.is_floating_point():
        return "token ids"
    kinds = {3: "images", 2: "sequences", 1: "table rows"}
    return kinds.get(example.dim(), f"{example.dim()}-d arrays")


def epoch_budget(samples: int, batch_size: int, grad_accum: int = 1) -> tuple[int, int]:
    """(epochs, updates per epoch): about ``BUDGET_UPDATES`` updates within ``EPOCH_BOUNDS``."""
    updates = max(1, math.ceil(math.ceil(samples / batch_size) / grad_accum))
    low, high = EPOCH_BOUNDS
    return min(max(round(BUDGET_UPDATES / updates), low), high), updates


def run_name(recipe: Recipe) -> str:
    """``<data>_<method>``: the folder or file's name (``images_kd``, ``wine_kd``), or the
    bundled dataset's (``digits_kd``); ``kd`` for a recipe of terms."""
    data = recipe.data
    stem = Path(data.path).stem if data.path else ""  # images/ -> images, wine.csv -> wine
    usable = (re.sub(r"[^A-Za-z0-9_.-]+", "_", text).lstrip("._-") for text in (stem, data.dataset))
    return f"{next(filter(None, usable), 'data')[:80]}_{recipe.method or 'kd'}"


# The teacher and student the built-in recipe trains on the user's data when they name neither,
# by the kind of input: the demo's LeNet reads 28×28 images only, its MLP a fixed pixel count.
# Each: (teacher, student, why); a model is {"model": name, "kwargs": {...}}.
PAIRS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "images": (
        {"model": "resnet8"},
        {"model": "cnn_tiny"},
        "a residual CNN teacher and a small CNN student, both pooled over the image: "
        "any size and number of channels",
    ),
    "table rows": (
        {"model": "mlp", "kwargs": {"width": 256, "depth": 2}},
        {"model": "mlp_tiny"},
        "an MLP teacher (2 × 256 units) and a smaller MLP student (32 units) read feature rows",
    ),
    "sequences": (
        {"model": "bilstm"},
        {"model": "gru"},
        "a bidirectional LSTM teacher and a GRU student read (time, features) sequences",
    ),
    "language_modelling": (
        {"model": "gpt", "kwargs": {"n_layer": 2, "n_head": 4, "n_embd": 128}},
        {"model": "gpt", "kwargs": {"n_layer": 2, "n_head": 4, "n_embd": 48}},
        "a GPT teacher (2 layers × 128) and a 2 × 48 GPT student over the data's vocabulary",
    ),
    "rating": (
        {"model": "neumf_large"},
        {"model": "neumf_small"},
        "a NeuMF recommender teacher and a 17× smaller NeuMF student",
    ),
}
BERT_VOCABULARY = 30522  # the word pieces of the bundled text (all-MiniLM-L6-v2's tokenizer)


def model_pair(kind: str, splits: DataSplits, tokenizer: Any) -> tuple[dict, dict, str] | None:
    """(teacher, student, why) for inputs of ``kind`` (``input_kind``), or None for inputs no
    pair of the zoo reads (the recipe's models are then kept, and checked as they are)."""
    if splits.task in PAIRS:
        return PAIRS[splits.task]
    if kind in PAIRS:
        return PAIRS[kind]
    if kind not in ("text", "token ids"):
        return None
    vocabulary = _vocabulary(splits, tokenizer)
    sized = {"vocab_size": vocabulary}
    student = {"model": "text_cnn", "kwargs": sized}
    directory = Path(str(tokenizer)) if tokenizer else None
    if directory and (directory / "config.json").is_file():  # the teacher's own HF directory
        teacher = {"model": "hf", "kwargs": {"path": str(tokenizer)}}
        why = (
            f"the model of {tokenizer} (the tokenizer's) teaches a text CNN over its {vocabulary:,}"
        )
    else:
        teacher = {"model": "text_transformer", "kwargs": sized}
        why = f"a transformer teacher and a text CNN student over the {vocabulary:,}"
    return teacher, student, f"{why} token ids"


def _vocabulary(splits: DataSplits, tokenizer: Any) -> int:
    """The tokenizer's vocabulary: the data's record of it, the HF directory's config.json, a
    tokenizer.json, or BERT's word pieces (the bundled text's)."""
    if splits.identity.get("vocab_size"):
        return int(splits.identity["vocab_size"])
    path = Path(str(tokenizer)) if tokenizer else None
    config = path / "config.json" if path and path.is_dir() else None
    if config and config.is_file():
        size = json.loads(config.read_text()).get("vocab_size")
        if isinstance(size, int) and size > 1:
            return size
    file = path / "tokenizer.json" if path and path.is_dir() else path
    if file and file.is_file() and file.suffix == ".json":
        from kdistill.data.text import load_tokenizer

        return load_tokenizer(file).get_vocab_size()
    return BERT_VOCABULARY


def follow_data_models(recipe: Recipe, splits: DataSplits) -> list[str]:
    """The built-in recipe on the user's data: the teacher and the student it does not name,
    chosen by the kind of input (``PAIRS``); one line each, ``field=value: why``. Before the
    terms are built, since feature presets read the models' layers."""
    if not recipe.follows_data:
        return []
    example = splits.train[0]["input"] if len(splits.train) else None
    kind = input_kind(example)
    pair = model_pair(kind, splits, recipe.data.options.get("tokenizer"))
    if pair is None:
        return []
    roles = [("student", recipe.student, pair[1])]
    # One teacher whose model is built (not an ensemble, whose members the user lists; not an
    # ONNX graph, for which teacher.model is unused).
    if recipe.teachers is None and not recipe.teacher.onnx:
        roles.insert(0, ("teacher", recipe.teacher, pair[0]))
    chosen = []
    for key, section, model in roles:
        # The student's default is built with its model and kwargs set: what the user set is
        # what they gave inside a section they gave. Settings given without a model are for the
        # recipe's own model (TINY_RECIPE's student.kwargs={width: 16} is an MLP's): kept.
        given = section.model_fields_set if key in recipe.model_fields_set else set()
        if given & {"model", "kwargs"}:
            continue
        section.model, section.kwargs = model["model"], dict(model.get("kwargs", {}))
        settings = ", ".join(f"{k}={v}" for k, v in section.kwargs.items())
        shown = f"{section.model} ({settings})" if settings else section.model
        chosen.append(f"{key}.model={shown}: the inputs are {kind}; {pair[2]}")
    return chosen


def follow_data(
    recipe: Recipe,
    splits: DataSplits,
    task: Task,
    terms: list[Term],
    measure: Callable[[], EpochCost] | None = None,
) -> list[str]:
    """Set what the recipe leaves to its data (see the module's docstring); returns one line
    per setting chosen, ``field=value: why``. Values the user set are never changed. With
    ``train.time_budget``, ``measure`` gives an epoch's cost, measured once the augmentation
    is chosen (``kdistill.run.budget``)."""
    example = splits.train[0]["input"] if len(splits.train) else None
    kind = input_kind(example)
    images = kind == "images"
    follows = recipe.follows_data
    chosen: list[str] = []

    def left(section, field: str) -> bool:
        """Whether ``field`` is the data's to choose: ``auto``, or not set on the built-in."""
        value = getattr(section, field)
        return value == "auto" or (follows and field not in section.model_fields_set)

    def choose(section, field: str, key: str, value, why: str) -> None:
        setattr(section, field, value)  # now in model_fields_set: chosen once, dumped as set
        shown = str(value).lower() if isinstance(value, bool) else value
        chosen.append(f"{key}={shown}: {why}")

    teachers = recipe.teacher_sections()
    # A teacher loaded rather than trained here is never augmented: left alone unless it says
    # auto (set, its augment would draw teacher_notes' "only apply to a teacher trained here").
    trained = [(key, t) for key, t in teachers if t.trained_here or t.augment == "auto"]
    augment = IMAGE_AUGMENT if images else "none"
    why = (
        f"the inputs are images: the built-in recipe's consistent-teaching views ({augment})"
        if images
        else f"the inputs are {kind}"
    )
    for key, section in [*trained, ("train", recipe.train)]:
        if left(section, "augment"):
            choose(section, "augment", f"{key}.augment", augment, why)

    train = recipe.train
    budget = train.time_budget
    if (follows or budget is not None) and "epochs" not in train.model_fields_set:
        # Teachers trained here whose epochs the built-in leaves to the data train the students'.
        followers = [
            (key, section)
            for key, section in teachers
            if follows and section.trained_here and "epochs" not in section.model_fields_set
        ]
        if budget is not None and measure is not None:
            following = {key for key, _ in followers}
            own = [None if key in following else section.epochs for key, section in teachers]
            epochs, why = budget_epochs(budget, measure(), teacher_epochs=own)
        else:
            epochs, updates = epoch_budget(len(splits.train), train.batch_size, train.grad_accum)
            low, high = EPOCH_BOUNDS
            why = (
                f"{len(splits.train):,} training samples make {updates} update(s) an epoch; "
                f"the budget is about {BUDGET_UPDATES:,} updates, within {low}-{high} epochs"
            )
        choose(train, "epochs", "train.epochs", epochs, why)
        for key, section in followers:
            choose(section, "epochs", f"{key}.epochs", epochs, "the students' budget")

    transfer = recipe.data.unlabelled is not None
    if left(train, "mix"):
        mixing = _mixing(images, kind, task, terms)
        if transfer:
            mixing = ("none", "a transfer set's samples carry no label to mix")
        choose(train, "mix", "train.mix", *mixing)
    if follows and "scratch_mix" not in train.model_fields_set and train.mix != "none":
        choose(
            train,
            "scratch_mix",
            "train.scratch_mix",
            "none",
            "the scratch student trains unmixed, its stronger setting (measured on MNIST)",
        )

    # The views the teacher scores once and the students read from disk; only
    # for one fixed teacher that scores fixed inputs (not init_from_teacher or on_policy; not an
    # ensemble, whose recipe keeps no teacher section to record the choice in config.yaml).
    live_only = any(
        recipe.distill.params.get(k) for k in ("init_from_teacher", "on_policy", "sequence_kd")
    )
    # A transfer set is scored live: the cache does not cover it yet.
    fixed = (
        recipe.distill.mode == "teacher"
        and not live_only
        and recipe.assistant is None
        and recipe.teachers is None
        and not transfer
    )
    if follows and images and fixed and "cache" not in recipe.teacher.model_fields_set:
        choose(
            recipe.teacher,
            "cache",
            "teacher.cache",
            True,
            "the teacher scores each view of the images once; the students read it from disk",
        )
    varies = (train.augment, train.mix) != ("none", "none")
    if follows and recipe.teacher.cache and varies and "views" not in train.model_fields_set:
        views = min(IMAGE_VIEWS, train.epochs)
        choose(
            train,
            "views",
            "train.views",
            views,
            f"{views} views of each image, repeated in turn over {train.epochs} epochs",
        )

    if "name" not in recipe.model_fields_set and names_own_data(recipe.data.model_dump()):
        data = recipe.data
        given = f"data.path={data.path}" if data.path else f"data.dataset={data.dataset}"
        choose(
            recipe,
            "name",
            "name",
            run_name(recipe),
            f"named after {given} (set name= to choose another)",
        )
    return chosen


def _mixing(images: bool, kind: str, task: Task, terms: list[Term]) -> tuple[str, str]:
    """(train.mix, why): the built-in's CutMix for image classification whose terms take mixed
    labels, none otherwise."""
    if not images:
        return "none", f"the inputs are {kind}"
    if task.name != "classification":
        return "none", f"mixing mixes class labels; the task is {task.name}"
    try:
        check_mix_terms(IMAGE_MIX, terms, task.name)
    except ConfigError:
        return "none", "a term reads one true class per sample, which a mixed image does not have"
    return IMAGE_MIX, "the inputs are images: each mixed with a box of another (function matching)"
