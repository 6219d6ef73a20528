"""The one-call path for people who never touch YAML: ``kdistill.distill(teacher, student, data)``.

Data may be what a PyTorch user already holds (see ``kdistill.data.inputs``): NumPy arrays or
tensors ``(x, y)``, a dataset of ``(x, y)`` tuples or dicts, a ``DataLoader``, a Hugging Face
``datasets.Dataset``. The teacher may be an ``nn.Module`` (a Hugging Face model too) or the path
of an ``.onnx`` file.
"""

from __future__ import annotations

import difflib
import math
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader

from kdistill.data import ArrayDataset
from kdistill.data.inputs import IndexedDataset, as_dataset, as_loader, class_labels
from kdistill.data.transfer import (
    TransferDataset,
    TransferSet,
    check_transfer,
    unlabelled_inputs,
)
from kdistill.distiller import Distiller, Teacher
from kdistill.errors import ArgumentError, DataError
from kdistill.evaluation import task_of
from kdistill.evaluation.baseline import initial_copy, result_table, scratch_baseline
from kdistill.methods import PRESETS, Term, method_settings, preset_terms, scratch, teacher_taps
from kdistill.modeling import to_device
from kdistill.run.config import describe_validation_error
from kdistill.teachers.cache import CachedTeacher, open_or_build
from kdistill.teachers.identity import precision_of, teacher_identity
from kdistill.teachers.onnx import OnnxModel, check_onnx_terms, is_onnx_file
from kdistill.teachers.pair import MismatchError, check_pair
from kdistill.training.acceleration import make_accelerator
from kdistill.training.loop import Loop, train_loop
from kdistill.training.optimization import Optimization
from kdistill.training.selection import selection_rule
from kdistill.training.settings import Section, TrainConfig


@dataclass
class DistillResult:
    student: nn.Module
    history: list[dict]
    metrics: dict = field(default_factory=dict)
    # Trained projections between student and teacher features (FitNet's regressor, CRD's
    # embeddings ...), by term name: empty for logit-only terms.
    connectors: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    # baseline=True: the scratch student, its and the teacher's validation accuracy, the paired
    # comparison with the distilled student, and the verdict (kdistill.evaluation.baseline).
    baseline: nn.Module | None = None
    baseline_history: list[dict] = field(default_factory=list)
    baseline_metrics: dict = field(default_factory=dict)
    teacher_metrics: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)
    verdict: str = ""
    # unlabelled=: the sizes of both sets, the mix per step and the optimizer steps per epoch
    # every student took (``{}`` without a transfer set).
    data: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return result_table(self)


def as_teacher(teacher, terms: list[Term]) -> Teacher:
    """A frozen ``Teacher`` from an ``nn.Module``, a Hugging Face model, a ``Teacher`` or the path
    of an ``.onnx`` file, tapping what ``terms`` read."""
    taps = teacher_taps(terms)
    if isinstance(teacher, Teacher):
        return teacher if set(taps) <= set(teacher.taps) else Teacher(teacher.module, taps=taps)
    if is_onnx_file(teacher):
        check_onnx_terms(terms, field="teacher")
        return Teacher(OnnxModel(teacher, field="teacher"))
    if isinstance(teacher, nn.Module):
        return Teacher(teacher, taps=taps)
    if isinstance(teacher, (str, Path)):
        raise MismatchError(
            f"teacher: {teacher} is a path but not an .onnx file; "
            "for a state_dict (.pt, .safetensors), build the model and load it with "
            "kdistill.load_weights(model, path), then pass the model"
        )
    raise MismatchError(
        "teacher: give an nn.Module, a Hugging Face model "
        f"or an .onnx file, not a {type(teacher).__name__}"
    )


def _probe_batch(loader: DataLoader) -> dict:
    """The first two samples in the dataset's order, without drawing from the loader's sampler."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return next(iter(loader))
    return next(iter(DataLoader(loader.dataset, batch_size=2, collate_fn=loader.collate_fn)))


def _cached(
    teacher: Teacher, loader: DataLoader, cache, stack: ExitStack, accelerator
) -> CachedTeacher:
    """The teacher's outputs over the training samples, computed once (``cache=True``: in a
    temporary directory for this call; a path: kept there and reused while it matches)."""
    dataset = loader.dataset
    if not isinstance(dataset, (ArrayDataset, IndexedDataset, TransferDataset)):
        dataset = as_dataset(
            dataset.dataset
        )  # a user's DataLoader: its dataset, positioned by as_loader
    if cache is True:
        root = _temporary_root(stack, accelerator)
    else:
        root = Path(cache)
    fingerprint = {
        "teacher": teacher_identity(teacher.module),
        "samples": len(dataset),
        "taps": sorted(teacher.taps),
        "dtype": "float32",
        **precision_of(accelerator),
    }
    stored, _ = open_or_build(
        root, teacher, dataset, fingerprint=fingerprint, dtype="float32", accelerator=accelerator
    )
    return CachedTeacher(stored)


def _temporary_root(stack: ExitStack, accelerator) -> Path:
    """A temporary cache directory for this call, the main process's for every process (each
    fills its rows of the same files), removed once every process is done with it."""
    from accelerate.utils import broadcast_object_list

    made = [None]
    if accelerator.is_main_process:
        made = [stack.enter_context(tempfile.TemporaryDirectory(prefix="kdistill-cache-"))]
    if accelerator.num_processes > 1:
        broadcast_object_list(made)
        stack.callback(accelerator.wait_for_everyone)  # runs before the directory is removed
    return Path(made[0]) / "cache"


# The keywords distill() took before ``train=``: each is a shorthand for the TrainConfig field of
# its name (``epochs=3`` is ``train={"epochs": 3}``). Only these: other keywords are the method's
# settings, and some share a field's name (CRD's ``momentum``).
SHORTHAND = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "schedule",
    "weight_decay",
    "device",
    "seed",
)

# Fields that act through a recipe's run directory or its dataset, refused from Python unless left
# at their defaults: why, by field.
RECIPE_ONLY = {
    "seeds": "each seed is a run directory of its own (kdistill run --seeds); call distill() again",
    "augment": "its views are drawn from a recipe's dataset; pass a DataLoader that augments",
    "mix": "its mixed views are replayed from a recipe's dataset; pass a DataLoader that mixes",
    "mix_alpha": "it weighs train.mix",
    "scratch_mix": "it is train.mix for the scratch student",
    "views": "a teacher cache built from Python holds the data as given, one view",
    "checkpoint_every": "checkpoints are written into a run directory (kdistill run, --resume)",
    "time_budget": "it chooses a recipe's epochs before the run; give epochs",
}


class _Settings(Section):
    """What ``distill`` validates, so that errors name ``train.<field>`` as a recipe's do."""

    train: TrainConfig = TrainConfig()


def train_settings(train: TrainConfig | dict | None, shorthand: dict) -> TrainConfig:
    """``train=`` and the shorthand keywords as one validated ``TrainConfig``: the recipe's
    names, defaults and ranges; ``ArgumentError`` in one line naming ``train.<field>``."""
    if isinstance(train, TrainConfig):
        given = {name: getattr(train, name) for name in train.model_fields_set}
    elif isinstance(train, Mapping) or train is None:
        given = dict(train or {})
    else:
        raise ArgumentError(
            f"train: give a TrainConfig or a dict of its fields, not a {type(train).__name__}"
        )
    twice = sorted(set(given) & set(shorthand))
    if twice:
        raise ArgumentError(f"train.{twice[0]}: given as {twice[0]}= and in train=; keep one")
    try:
        settings = _Settings.model_validate({"train": {**given, **shorthand}}).train
    except ValidationError as error:
        raise ArgumentError(describe_validation_error(error, "distill()", {})) from None
    for name, why in RECIPE_ONLY.items():
        value, default = getattr(settings, name), TrainConfig.model_fields[name].default
        if value != default:
            raise ArgumentError(
                f"train.{name}={value!r} is for recipes only: {why}; leave it at {default!r}"
            )
    return settings


def distill(
    teacher,
    student: nn.Module,
    train_data,
    val_data=None,
    *,
    method: str = "kd",
    terms: list[Term] | None = None,
    train: TrainConfig | dict | None = None,
    cache: bool | str | Path = False,
    baseline: bool = False,
    progress: bool = True,
    unlabelled=None,
    labelled_share: float | None = None,
    **settings,
) -> DistillResult:
    """Train ``student`` to imitate ``teacher`` (by default Hinton KD, ``(1−α)·CE + α·T²·KL``).

    Args:
        teacher: a trained model (an ``nn.Module`` or Hugging Face model), or the path of an
            ``.onnx`` file (run by ONNX Runtime; logit-level terms only). It is frozen (eval
            mode, no gradients) and never changed.
        student: the model to train, in place.
        train_data / val_data: ``(x, y)`` NumPy arrays or tensors, a dataset of ``(x, y)``
            tuples or of dicts (a ``TensorDataset``, a Hugging Face ``datasets.Dataset``), or a
            ``DataLoader`` (used as it is: its batch size, sampler and collate function).
            Labels are class indices 0..C-1: whole-number floats are taken as those integers
            and a column ``(N, 1)`` as ``(N,)``; fractions, NaN, negative labels and empty
            data raise ``DataError`` (checked in full for arrays, tensors and lists).
        method: a preset (``kdistill.PRESETS``: kd, dkd, fitnet ...); its settings
            (``temperature=``, ``alpha=`` ...) come as further keywords, checked against it
            (a misspelt one raises ``ArgumentError``) and unused when ``terms`` is given.
        terms: any list of ``Term``s instead of a preset (feature terms, other losses).
        train: the training settings, a ``TrainConfig`` or a dict of its fields: the recipe's
            ``train:`` section with its names, defaults (30 epochs, lr 3e-3) and ranges.
            ``epochs``, ``batch_size``, ``lr``, ``optimizer``, ``schedule``, ``weight_decay``,
            ``device`` and ``seed`` may also be given as keywords (not both ways). The fields
            of a run directory or a recipe's dataset (``RECIPE_ONLY``: seeds, augment, mix,
            mix_alpha, scratch_mix, views, checkpoint_every) raise ``ArgumentError`` unless
            left at their defaults.
        cache: run the teacher once over the training data and read its outputs from disk
            (``True``: a temporary directory; a path: kept there and reused while it matches).
        baseline: (a classifier) also train the same student from the same initial weights
            without the teacher (cross-entropy only, the same settings and steps) and compare
            the three models on ``val_data`` (required): a paired bootstrap interval and
            McNemar's test.
        progress: progress bars and a line per epoch.
        unlabelled: a transfer set (Hinton et al. 2015): inputs without labels that the
            teacher scores and the student learns from through the terms that need no label
            (CE and other label terms average over the labelled samples of a batch). What
            ``train_data`` takes, without labels: an array or tensor of inputs, a dataset of
            inputs, of ``(x, y)`` tuples or of dicts (labels there are ignored, with one
            warning), a ``DataLoader``'s dataset; of the labelled inputs' shape and kind, none
            identical to a sample of ``val_data``. ``train_data`` is then arrays or a dataset
            (not a ``DataLoader``: the run draws both sets' samples). An epoch draws as many
            samples as both sets hold, and the baseline takes the same number of optimizer
            steps from the labelled data alone.
        labelled_share: with ``unlabelled``, the fraction of each epoch's samples drawn from
            the labelled data (0 < share < 1; the labelled samples repeat when it exceeds
            their proportion); ``None``: the natural proportion, both sets shuffled together.

    Returns:
        ``DistillResult`` with the trained student, one record per epoch, the final
        validation metrics of the task when ``val_data`` is given (``val/accuracy``, a
        fraction, and ``val/loss`` for a classifier; ``val/perplexity``, ``val/loss`` and
        ``val/token_accuracy`` for a language model; ``val/hr@10``, ``val/ndcg@10`` and
        ``val/rmse`` for a recommender: what a recipe's summary holds), and the trained
        ``connectors`` of feature terms; with ``baseline``, the scratch student, its and the
        teacher's accuracy, the comparison and the verdict (``print(result)`` shows them);
        with ``unlabelled``, ``data``: both set sizes, the share and the steps per epoch.
    """
    t = train_settings(train, {name: settings.pop(name) for name in SHORTHAND if name in settings})
    terms = _method_terms(method, terms, settings)
    set_seed(t.seed)
    train_data = class_labels(train_data, "train_data")
    val_data = class_labels(val_data, "val_data") if val_data is not None else None
    train_loader = as_loader(train_data, batch_size=t.batch_size, shuffle=True, seed=t.seed)
    val_loader = as_loader(val_data, batch_size=t.eval_batch_size) if val_data is not None else None
    transfer = _transfer(train_data, unlabelled, labelled_share, val_data, t)
    student_loader = train_loader if transfer is None else transfer.loader()
    if baseline and val_data is None:
        raise ArgumentError("baseline=True compares the students on val_data: give val_data")
    if (t.early_stopping is not None or t.keep == "best") and val_data is None:
        field = "early_stopping" if t.early_stopping is not None else "keep"
        raise ArgumentError(f"train.{field} chooses epochs by a validation metric: give val_data")
    initial = initial_copy(student, baseline)
    student_was_training = student.training
    frozen = as_teacher(teacher, terms)
    distiller = None
    accelerator = make_accelerator(
        t.device,
        t.mixed_precision,
        deterministic=t.deterministic,
        compile=t.compile,
        strategy=t.strategy,
    )

    def trained(distiller: Distiller, loader: DataLoader, teacher=None) -> list[dict]:
        return train_loop(
            distiller,
            loader,
            teacher=teacher,
            val_loader=val_loader,
            epochs=t.epochs,
            lr=t.lr,
            optim=Optimization.from_settings(t),
            loop=Loop(
                evaluate_fn=task.evaluate,
                early_stopping=selection_rule(t, task.headline, task.higher_is_better),
                keep=t.keep,
            ),
            accelerator=accelerator,
            progress=progress,
        )

    try:
        with ExitStack() as stack:
            # Both models and the probe on the device the run trains on: what fails there
            # fails now, naming both sides.
            example = to_device(_probe_batch(train_loader), accelerator.device)
            frozen, student = frozen.to(accelerator.device), student.to(accelerator.device)
            scores = check_pair(frozen, student, example)
            task = task_of(example, scores)
            if baseline and task.name != "classification":
                raise ArgumentError(
                    f"baseline=True compares classifiers, and this is {task.name}: compare "
                    "with a recipe run (`kdistill run`), which trains the scratch student too"
                )
            if len(scores) == 2 and scores[-1] < 2:  # one class: softmax is 1, nothing to learn
                raise MismatchError(
                    f"the models score {scores[-1]} class: cross-entropy and distillation compare "
                    "distributions over 2 or more classes; build both for 2 or more classes"
                )
            for what, loader in (("train_data", train_loader), ("val_data", val_loader)):
                _check_classes(loader, scores, what)
            if any(term.connector or term.needs_build for term in terms):
                distiller = Distiller.build(
                    student,
                    terms,
                    teacher=frozen,
                    example_batch=example,
                    num_samples=len(student_loader.dataset),
                )
            else:
                distiller = Distiller(student, terms)
            distiller.transfer = transfer is not None
            live = _cached(frozen, student_loader, cache, stack, accelerator) if cache else frozen
            history = trained(distiller, student_loader, live)
            metrics = {}
            if val_loader is not None:  # what a recipe's summary holds for its task
                result = task.evaluate(student, val_loader, accelerator)
                metrics = {f"val/{name}": value for name, value in task.scores(result).items()}
            compared = {}
            if baseline:  # the same settings and data order, no teacher, no distillation terms
                set_seed(t.seed)
                compared = scratch_baseline(
                    initial,
                    lambda model: trained(
                        Distiller(model, scratch()),
                        as_loader(train_data, batch_size=t.batch_size, shuffle=True, seed=t.seed)
                        if transfer is None
                        else transfer.loader(labelled_only=True),
                    ),
                    teacher=frozen.module,
                    distilled=student,
                    val_loader=val_loader,
                    accelerator=accelerator,
                    classes=scores[-1],
                    settings=f"lr={t.lr:g}, epochs={t.epochs}, batch_size={t.batch_size}",
                )
    finally:
        # The models are the user's: no forward hook of ours stays on them, whatever happened.
        for tap in (frozen.tap, distiller.tap if distiller is not None else None):
            if tap is not None:
                tap.remove()
        student.train(student_was_training)
    return DistillResult(
        student=student,
        history=history,
        metrics=metrics,
        connectors=distiller.connectors,
        data={} if transfer is None else transfer.record(len(student_loader)),
        **compared,
    )


def _transfer(train_data, unlabelled, share, val_data, t: TrainConfig) -> TransferSet | None:
    """``distill``'s transfer set, checked as a recipe's is (``check_transfer``); ``None``
    without ``unlabelled``."""
    if unlabelled is None:
        if share is not None:
            raise ArgumentError("labelled_share mixes a transfer set in: give unlabelled= too")
        return None
    if isinstance(train_data, DataLoader):
        raise ArgumentError(
            "train_data: a DataLoader keeps its own batches; with unlabelled=, give train_data "
            "as arrays or a dataset, so that the run draws both sets' samples"
        )
    if share is not None and not (isinstance(share, (int, float)) and 0 < share < 1):
        raise ArgumentError(f"labelled_share: a fraction between 0 and 1 (or None), got {share!r}")
    labelled = as_dataset(train_data)
    inputs = unlabelled_inputs(unlabelled, "unlabelled")
    held_out = val_data[0] if isinstance(val_data, tuple) else None
    check_transfer(labelled[0]["input"], inputs, held_out, "unlabelled")
    return TransferSet(labelled, inputs, share, t.batch_size, t.seed)


def fit(
    distiller: Distiller,
    train_data,
    *,
    teacher=None,
    val_data=None,
    batch_size: int = 64,
    seed: int = 0,
    **options,
) -> list[dict]:
    """Train a ``Distiller`` (``kdistill.training.loop.train_loop``) on what a PyTorch user holds.

    ``train_data`` / ``val_data`` (or ``val_loader``) take everything ``distill`` takes; a
    ``DataLoader`` keeps its own batch size and order, other data is batched by ``batch_size``
    and shuffled with ``seed``. ``teacher`` may be an ``nn.Module``, a Hugging Face model, a
    ``Teacher``, a cached teacher or an ``.onnx`` path. Other options go to the trainer.
    """
    loader = as_loader(train_data, batch_size=batch_size, shuffle=True, seed=seed)
    val = options.pop("val_loader", None) if val_data is None else val_data
    if val is not None:
        options["val_loader"] = as_loader(val, batch_size=512)
    if (
        teacher is not None
        and not isinstance(teacher, (Teacher, CachedTeacher))
        and not hasattr(teacher, "lookup")
    ):
        teacher = as_teacher(teacher, distiller.terms)
    return train_loop(distiller, loader, teacher=teacher, **options)


def _check_classes(loader: DataLoader | None, scores: torch.Size, what: str) -> None:
    """Every label of ``(x, y)`` arrays (``scores``: the shape of the student's outputs) one
    class of the models, not only the probe's."""
    dataset = getattr(loader, "dataset", None)
    if not isinstance(dataset, ArrayDataset):
        return
    labels, classes = dataset.targets, scores[-1]
    if len(scores) == 2 and labels.dim() != 1:  # one score vector per sample, several labels
        raise DataError(
            f"{what}: y has shape {tuple(labels.shape)}, but the models score one class per "
            f"sample: give one class index per sample, shape ({len(labels)},) (for one-hot rows, "
            "y.argmax(1))"
        )
    if labels.dim() != 1 or labels.is_floating_point():
        return
    if what == "train_data" and labels.unique().numel() < 2:
        raise DataError(
            f"{what}: every label is {int(labels[0])}: a model trained on one class learns "
            "nothing to tell apart; give samples of 2 or more classes"
        )
    largest = int(labels.max())
    if largest >= classes:
        at = int((labels == largest).nonzero()[0])
        raise MismatchError(
            f"{what}: the data has label {largest} (y[{at}]) but the models have {classes} "
            f"outputs: labels are 0..{classes - 1}"
        )


def _method_terms(method: str, terms: list[Term] | None, settings: dict) -> list[Term]:
    """``terms``, or the preset's built with ``settings``. The settings are checked against the
    method either way (a typo is not ignored); a training field among them says where it goes."""
    valid = method_settings(method) if method in PRESETS else []
    for name in settings:
        if name in valid:
            continue
        if name in TrainConfig.model_fields:
            raise ArgumentError(
                f"train.{name}: a training setting; give it as train={{{name!r}: ...}}"
            )
        close = difflib.get_close_matches(name, [*valid, *TrainConfig.model_fields], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ArgumentError(
            f"{name}=: not a setting of method {method!r} ({hint}its settings: "
            f"{', '.join(valid) or 'none'}; training settings go in train=)"
        )
    if terms is None and method == "kd":
        _check_hyper(settings.get("temperature", 4.0), settings.get("alpha", 0.9))
    built = preset_terms(method, **settings)
    return built if terms is None else terms


def _check_hyper(temperature: float, alpha: float) -> None:
    """Hinton KD's settings, refused before anything trains."""
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ArgumentError(
            f"temperature must be a positive number (softmax(z/T) needs T > 0), got {temperature!r}"
        )
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ArgumentError(
            "alpha weighs the KD term against cross-entropy, (1-α)·CE + α·KD: "
            f"give 0 <= alpha <= 1, got {alpha!r}"
        )


__all__ = ["DistillResult", "MismatchError", "as_teacher", "check_pair", "distill", "fit"]
