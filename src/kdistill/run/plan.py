"""What a recipe resolves to before anything trains: its data, its task, its terms, its
teaching mode and that mode's options (a ``Plan``), and the loaders and models every phase
builds the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdistill.data import DataSplits, load_dataset
from kdistill.data.augment import augmented, can_augment, cycled
from kdistill.data.base import ArrayDataset, collate
from kdistill.data.mixing import can_mix, check_mix_terms, mixed
from kdistill.data.transfer import (
    LABELLED_REST,
    REST,
    REST_DATASETS,
    BudgetSampler,
    attach_transfer,
    take_teacher_rest,
    with_transfer,
)
from kdistill.errors import ConfigError
from kdistill.evaluation import Task, task_for
from kdistill.losses import LOGIT_LOSSES, TOKEN_LOSSES
from kdistill.methods import LAYER_DEFAULTS, Term, default_layers, preset_terms
from kdistill.methods.cross_tokenizer import check_across_tokenizers, check_cross_tokenizer_recipe
from kdistill.modeling import READS_TEACHER_INPUTS
from kdistill.models import UnknownModelError, create_model
from kdistill.run.automatic import follow_data, follow_data_models
from kdistill.run.budget import EpochCost, TeacherCost, measure_epoch
from kdistill.run.config import Recipe
from kdistill.teachers.signals import sampled_terms, topk_terms
from kdistill.teaching.preparation import preset_params


@dataclass
class Plan:
    """A recipe resolved: what every step of the run reads instead of re-deriving it."""

    recipe: Recipe
    splits: DataSplits
    task: Task
    terms: list[Term]
    mode: str  # a key of kdistill.teaching.MODES
    options: dict[str, Any] = field(default_factory=dict)  # the mode's keyword arguments
    # The settings chosen from the data, one line each ("train.augment=none: the inputs are
    # table rows"), printed by `kdistill check` (kdistill.run.automatic).
    automatic: list[str] = field(default_factory=list)
    # Filled by preflight: every model as built (field -> model, parameters, settings with the
    # builder's defaults), printed by `kdistill check` and at the end of the run's config.yaml.
    built: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def example(self) -> dict:
        """Two training samples: what connectors are sized by and models are checked on."""
        return next(iter(DataLoader(self.splits.train, batch_size=2)))


def teaching_mode(recipe: Recipe) -> tuple[str, dict[str, Any]]:
    """Which ``teaching.MODES`` entry the recipe asks for, with its options."""
    d = recipe.distill
    cached = recipe.teacher.cache
    if d.mode == "born_again":
        return "born_again", {"generations": d.generations}
    if d.mode == "mutual":
        return "mutual", {
            "weight": 1.0 if d.alpha is None else d.alpha,
            "temperature": 1.0 if d.temperature is None else d.temperature,
        }
    if recipe.teachers is not None:
        return "ensemble", {
            "members": len(recipe.teachers),
            "combine": d.ensemble,
            "weights": d.ensemble_weights,
            "cached": cached,
        }
    if recipe.assistant is not None:
        return "assistant", {"cached": cached}
    return "teacher", {"cached": cached, "pseudo_labels": recipe.data.pseudo_labels}


def load_data(recipe: Recipe) -> DataSplits:
    data = recipe.data
    teachers = [teacher for _, teacher in recipe.teacher_sections()]
    teacher_rest = any(teacher.data == REST for teacher in teachers)
    rest = {"rest": True} if REST in (data.unlabelled, *(t.data for t in teachers)) else {}
    if data.dataset == "labelled_text" and data.unlabelled is not None:
        rest = {"unlabelled": data.unlabelled}  # texts, tokenised as the labelled ones are
    if data.unlabelled == REST and data.dataset not in REST_DATASETS:
        raise ConfigError(
            f"data.unlabelled: {REST!r} is for the bundled {', '.join(REST_DATASETS)}; for "
            f"{data.dataset!r} give an .npz file with an array x"
        )
    if teacher_rest and data.dataset not in LABELLED_REST:
        raise ConfigError(
            f"teacher.data: {REST!r} is for the bundled {', '.join(LABELLED_REST)}; on "
            f"{data.dataset!r} train the teacher elsewhere and give teacher.checkpoint"
        )
    try:
        splits = load_dataset(
            data.dataset,
            path=data.path,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=data.seed,
            subset=data.subset,
            **rest,
            **data.options,
        )
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None
    if teacher_rest:
        take_teacher_rest(splits, transfer=data.unlabelled == REST, seed=data.seed)
    splits.rest_targets = None  # a transfer set's labels reach no student, nor anything else
    if data.unlabelled is not None:
        in_memory = isinstance(splits.train, ArrayDataset) or splits.unlabelled is not None
        if not in_memory or splits.task != "classification":
            raise ConfigError(
                f"data.unlabelled: a transfer set takes a classification dataset held in memory, "
                f"not {data.dataset!r} ({splits.task})"
            )
        attach_transfer(data.unlabelled, splits)
    return splits


def check_transfer_recipe(recipe: Recipe) -> None:
    """What a transfer set cannot go with yet: each a one-line ``ConfigError``."""
    if recipe.data.unlabelled is None:
        return
    if recipe.distill.mode != "teacher":
        raise ConfigError(
            f"data.unlabelled: distill.mode={recipe.distill.mode} does not take a transfer set yet"
        )
    teachers = [teacher for _, teacher in recipe.teacher_sections()]
    one_teacher = recipe.teachers is None and recipe.assistant is None
    if any(teacher.cache for teacher in teachers) and not one_teacher:
        raise ConfigError(
            "data.unlabelled: the teacher cache covers a transfer set for one teacher, not "
            "teachers or an assistant; set teacher.cache: false"
        )
    if recipe.train.mix != "none":
        raise ConfigError(
            "data.unlabelled: a transfer set's samples carry no label to mix; set train.mix: none"
        )
    if recipe.data.pseudo_labels and (recipe.teachers or recipe.assistant):
        raise ConfigError(
            "data.pseudo_labels: the baseline takes the hard labels of one teacher; remove "
            "teachers/assistant, or data.pseudo_labels"
        )


def plan(recipe: Recipe) -> Plan:
    """Load the data, set what the recipe leaves to it (``automatic``), and resolve the task,
    the terms and the teaching mode (no model trains)."""
    splits = load_data(recipe)
    models = follow_data_models(recipe, splits)  # before the terms: presets read their layers
    task, terms = task_for(splits), recipe_terms(recipe, splits)
    automatic = models + follow_data(
        recipe, splits, task, terms, measure=lambda: epoch_cost(recipe, splits)
    )
    sparse = recipe.teacher.cache_topk or recipe.teacher.cache_samples
    if sparse and any(line.startswith("teacher.cache=") for line in automatic):
        terms = recipe_terms(recipe, splits)  # a sparse cache chosen above: the terms' forms
    mode, options = teaching_mode(recipe)
    check_transfer_recipe(recipe)
    check_token_terms(recipe, terms, splits)
    check_input_transforms(recipe, splits)
    check_mix_terms(recipe.train.mix, terms, splits.task)
    check_mix_terms(recipe.train.scratch_mixing, task.scratch_terms(), splits.task)
    check_selection_metric(recipe, task)
    return Plan(recipe, splits, task, terms, mode, options, automatic)


def epoch_cost(recipe: Recipe, splits: DataSplits) -> EpochCost:
    """An epoch's measured cost on the recipe's student and every teacher (each member of an
    ensemble and an ONNX graph score the distilled student's batches; a teacher trained here
    trains its own epochs too, over ``teacher.data`` where it has some), for
    ``train.time_budget``."""
    from kdistill.teachers.onnx import OnnxModel

    t = recipe.train
    loader = train_loader(splits, recipe, t.augment if t.augment != "auto" else "none")
    transfer = 0 if splits.unlabelled is None else len(splits.unlabelled)
    teachers = []
    for key, cfg in recipe.teacher_sections():
        if cfg.onnx:
            model = OnnxModel(cfg.onnx, field=f"{key}.onnx")
        else:
            model = build_model(key, cfg.model, cfg.kwargs, splits)
        own = splits.teacher_train if cfg.data is not None else splits.train
        batches = math.ceil(len(own) / t.batch_size)
        teachers.append(TeacherCost(model, cfg.trained_here, batches))
    return measure_epoch(
        build_model("student", recipe.student.model, recipe.student.kwargs, splits),
        teachers,
        loader,
        distilled_batches=math.ceil((len(splits.train) + transfer) / t.batch_size),
        val_batches=math.ceil(len(splits.val) / t.batch_size),
    )


def check_selection_metric(recipe: Recipe, task: Task) -> None:
    """``train.early_stopping.metric`` is one the task's validation measures (``loss`` is the
    validation loss); another would fail only after the first epoch had trained."""
    metric = recipe.train.early_stopping and recipe.train.early_stopping.metric
    if metric and metric.removeprefix("val/") not in task.higher_is_better:
        raise ConfigError(
            f"train.early_stopping.metric={metric}: the {task.name} validation measures "
            f"{', '.join(task.higher_is_better)}; name one of these"
        )


def check_token_terms(recipe: Recipe, terms: list[Term], splits: DataSplits) -> None:
    """Refuse a classifier's logit loss on a language model's data: kd, dkd, ce ... compare one
    distribution per sample and met (B, T, V) logits as a shape error from PyTorch."""
    if splits.task != "language_modelling":
        return
    if splits.identity.get("student_tokenizer"):
        field = f"method={recipe.method}" if recipe.terms is None else "terms"
        check_across_tokenizers(terms, field)
        check_cross_tokenizer_recipe(recipe)
        return
    names = {loss: name for name, loss in LOGIT_LOSSES.items()}
    wrong = [term for term in terms if names.get(term.loss)]
    if not wrong:
        return
    field = f"method={recipe.method}"
    if recipe.terms is not None:
        field = f"terms ({', '.join(t.name for t in wrong)})"
    losses = ", ".join(sorted({names[t.loss] for t in wrong}))
    raise ConfigError(
        f"{field}: {losses} compare one distribution per sample, but data.dataset="
        f"{recipe.data.dataset} holds token sequences for a language model: use method=token_kd "
        f"(or a token loss: {', '.join(TOKEN_LOSSES)})"
    )


def check_input_transforms(recipe: Recipe, splits: DataSplits) -> None:
    """Refuse every augmentation and mixing the inputs cannot take, in one line: settings the
    user (or a recipe file) gave for images, pointed at a table or at text, are named all at
    once rather than one field per attempt (and CutMix never cuts a box out of a batch of table
    rows). What the user left to the data was chosen to fit it (``follow_data``)."""
    example = splits.train[0]["input"] if len(splits.train) else None
    wrong = [
        (f"{field}.augment", t.augment)
        for field, t in recipe.teacher_sections()
        if t.trained_here and not can_augment(t.augment, example)
    ]
    if not can_augment(recipe.train.augment, example):
        wrong.append(("train.augment", recipe.train.augment))
    wrong += [
        (field, mix)
        for field, mix in (
            ("train.mix", recipe.train.mix),
            ("train.scratch_mix", recipe.train.scratch_mix),
        )
        if not can_mix(mix, example)
    ]
    if not wrong:
        return
    named = [f"{field}={value}" for field, value in wrong]
    settings = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    raise ConfigError(
        f"{settings} transform{'s' if len(named) == 1 else ''} "
        f"images (C, H, W), but the inputs are {_inputs(example)}: set "
        f"{' '.join(f'{field}=none' for field, _ in wrong)}"
    )


def _inputs(example) -> str:
    """What a training input is, for a refusal: its shape and kind."""
    if not isinstance(example, torch.Tensor):
        return f"{type(example).__name__} (not images)"
    if not example.is_floating_point():
        return f"{tuple(example.shape)} (token ids)"
    if example.dim() == 2:
        return f"{tuple(example.shape)} (sequences: shift and mixup take them)"
    return f"{tuple(example.shape)} (not images)"


def training_set(
    splits: DataSplits,
    recipe: Recipe,
    augment: str,
    mix: str = "none",
    views: int = 0,
    unlabelled: Tensor | None = None,
    targets: Tensor | None = None,
):
    """The training split as a phase sees it: augmented, then mixed, each draw a function of
    (train.seed, epoch, sample), so the teacher cache can hold exactly these views; with
    ``views``, the first ``views`` epochs' draws repeat in turn (``ViewCycle``); with
    ``unlabelled`` (a distilled student's transfer set), followed by those inputs unlabelled
    (or labelled ``targets``: the teacher's hard labels, for the pseudo-label baseline)."""
    seed = recipe.train.seed
    train = splits.train
    if unlabelled is not None:
        train = with_transfer(train, unlabelled, targets)
    views_of_split = augmented(train, augment, seed=seed)
    return cycled(
        mixed(
            views_of_split,
            mix,
            alpha=recipe.train.mix_alpha,
            num_classes=splits.num_classes,
            seed=seed,
        ),
        views,
    )


def train_loader(
    splits: DataSplits,
    recipe: Recipe,
    augment: str,
    mix: str = "none",
    views: int = 0,
    unlabelled: Tensor | None = None,
    targets: Tensor | None = None,
    budget: bool = False,
) -> DataLoader:
    """``budget``: each epoch draws as many samples as the training split and the transfer
    set hold together (``BudgetSampler``), so that every student of a run with a transfer set
    takes the same optimizer steps, whether it learns from the transfer set or not."""
    # A seeded generator gives the scratch and the distilled student the same batch order
    # (and, through Augmented and Mixed, the same augmented and mixed views).
    generator = torch.Generator().manual_seed(recipe.train.seed)
    dataset = training_set(splits, recipe, augment, mix, views, unlabelled, targets)
    order: dict[str, Any] = {"shuffle": True}
    if budget and splits.unlabelled is not None:
        labelled, pool = len(splits.train), len(splits.unlabelled)
        order = {
            "sampler": BudgetSampler(
                labelled,
                0 if unlabelled is None else pool,
                labelled + pool,
                recipe.data.labelled_share,
                generator,
            )
        }
    return DataLoader(
        dataset,
        batch_size=recipe.train.batch_size,
        collate_fn=collate,
        generator=generator,
        **order,
        **_loading(recipe),
    )


def eval_loader(dataset, recipe: Recipe) -> DataLoader:
    return DataLoader(
        dataset, batch_size=recipe.train.eval_batch_size, collate_fn=collate, **_loading(recipe)
    )


def _loading(recipe: Recipe) -> dict[str, Any]:
    """Worker processes that live for the whole run (the epoch reaches them through
    ``SharedEpoch``), and page-locked batches when they go to a GPU."""
    workers = recipe.data.num_workers
    to_gpu = recipe.train.device != "cpu" and torch.cuda.is_available()
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": to_gpu}


def build_model(field: str, name: str, kwargs: dict, splits: DataSplits) -> nn.Module:
    """A zoo model for the data's classes and input shape; errors name the recipe field."""
    try:
        is_teacher = field.startswith(("teacher", "roles.teacher"))
        # a teacher with a tokenizer of its own reads its own windows and scores its vocabulary
        own = splits.identity if is_teacher else {}
        model = create_model(
            name,
            num_classes=own.get("teacher_vocab_size") or splits.num_classes,
            input_shape=tuple(own.get("teacher_input_shape") or splits.input_shape),
            **kwargs,
        )
        if splits.teacher_inputs and is_teacher:
            setattr(model, READS_TEACHER_INPUTS, True)  # the teacher reads its own tokenisation
        return fits_inputs(model, splits)
    except UnknownModelError as error:
        raise ConfigError(f"{field}.model: {error}") from None
    except TypeError as error:
        raise ConfigError(f"{field}.kwargs: {str(error).splitlines()[0][:300]}") from None
    # A depth or width the data cannot carry, or the memory cannot (MemoryError, or SystemError
    # from a C constructor that ran out); an absurd depth, RecursionError; an image model given
    # table rows, IndexError (lenet reads a height and width that a row does not have).
    except (
        ValueError,
        RuntimeError,
        MemoryError,
        SystemError,
        RecursionError,
        OverflowError,
        IndexError,
    ) as error:
        raise ConfigError(
            f"{field}: {name} cannot be built for inputs of shape {tuple(splits.input_shape)} "
            f"({(str(error) or type(error).__name__).splitlines()[0][:200]})"
        ) from None


def fits_inputs(model: nn.Module, splits: DataSplits) -> nn.Module:
    """The model, after one forward pass (eval mode, no gradient) on one training example: a
    model that builds but cannot take the data (a 1-pixel image through a strided CNN) fails
    here, naming the field, rather than mid-phase. Raises RuntimeError or ValueError."""
    from torch.utils.data import default_collate

    from kdistill.modeling import call_model

    inputs = default_collate([splits.train[0]])["input"]
    training = model.training
    model.eval()
    with torch.no_grad():
        call_model(model, inputs)
    return model.train(training)


def build_architecture(architecture: dict, splits: DataSplits, *, field: str) -> nn.Module:
    """Rebuild a model a run recorded (``Role.architecture``): one zoo model, or an ensemble.
    A run directory is data: what it names passes the checks a recipe's models pass (the zoo,
    or the user's own ``nn.Module`` or factory, ``models.imported``) before anything is called."""
    kinds = {"model": str, "kwargs": dict, "ensemble": list, "onnx": str}
    given = architecture if isinstance(architecture, dict) else {}
    if not given.keys() & {"model", "ensemble", "onnx"} or any(
        not isinstance(given[key], kind) for key, kind in kinds.items() if key in given
    ):
        raise ConfigError(f"{field}.architecture: not a model kdistill recorded; rerun the run")
    if "ensemble" in architecture:
        from kdistill.teaching.ensemble import Ensemble

        members = [
            build_architecture(m, splits, field=f"{field}.ensemble.{i}")
            for i, m in enumerate(architecture["ensemble"])
        ]
        return Ensemble(members, architecture.get("combine", "mean"), architecture.get("weights"))
    if "onnx" in architecture:  # a teacher delivered as an exported graph
        from kdistill.teachers.onnx import OnnxModel

        return OnnxModel(architecture["onnx"], field=field)
    model = build_model(field, architecture["model"], architecture.get("kwargs", {}), splits)
    if architecture.get("keep_layers"):  # a depth-pruned student (student.prune)
        from kdistill.models.pruning import prune_layers

        model = prune_layers(model, architecture["keep_layers"])
    return model


def recipe_terms(recipe: Recipe, splits: DataSplits) -> list[Term]:
    """The recipe's terms, or its method's preset built with the ``distill`` settings (strictly:
    a setting the preset does not take fails naming the valid ones). Feature presets whose
    layers the recipe does not name read the models' stages (``hint_layers``): their
    architectures are built here, untrained, only to read those names."""
    try:
        if recipe.terms is not None:
            return topk_forms(recipe, [checked(Term(**term.model_dump())) for term in recipe.terms])
        d = recipe.distill
        settings = {
            "temperature": d.temperature,
            "alpha": d.alpha,
            "ce_weight": d.ce_weight,
            **preset_params(d.params),
        }
        if recipe.method in LAYER_DEFAULTS and not {"student_layers", "teacher_layers"} & set(
            settings
        ):
            student = build_model("student", recipe.student.model, recipe.student.kwargs, splits)
            teacher = build_model("teacher", recipe.teacher.model, recipe.teacher.kwargs, splits)
            settings.update(default_layers(recipe.method, student, teacher))
        return topk_forms(
            recipe, [checked(term) for term in preset_terms(recipe.method, **settings)]
        )
    except (ValueError, TypeError) as error:
        field = "terms" if recipe.terms is not None else f"method {recipe.method} (distill)"
        raise ConfigError(f"{field}: {error}") from None


MAX_SETTING = 1e12  # past any sensible loss setting, within what float32 and int64 hold


def checked(term: Term) -> Term:
    """A term whose numeric settings have the kind of their default (a whole number for a
    size such as CRD's feat_dim, a finite number for a temperature or a weight) and a sane
    magnitude: anything else would fail as a crash inside torch, mid-step."""
    import inspect
    import math

    function = term.loss.__init__ if term.needs_build else getattr(term.loss, "forward", term.loss)
    defaults = {p.name: p.default for p in inspect.signature(function).parameters.values()}
    for name, value in term.params.items():
        default = defaults.get(name)
        if isinstance(default, bool) or not isinstance(default, (int, float)) or default is None:
            continue
        whole = isinstance(default, int)
        number = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (not whole or isinstance(value, int))
        )
        if not number or not math.isfinite(value) or abs(value) > MAX_SETTING:
            kind = "a whole number" if whole else "a finite number"
            raise ValueError(
                f"term {term.name!r}: {name} must be {kind} of magnitude at most "
                f"{MAX_SETTING:g}, got {value!r}"
            )
    return term


def topk_forms(recipe: Recipe, terms: list[Term]) -> list[Term]:
    """A run reading a top-k (or sampled) cache compares through each loss's form for it (or is
    refused)."""
    teacher = recipe.teacher
    if not (teacher.cache and recipe.distill.mode == "teacher"):
        return terms
    if (recipe.data.options or {}).get("student_tokenizer"):
        return terms  # the chunk losses read a top k as it is (kdistill.teachers.text_cache)
    if teacher.cache_samples:  # alone, or with cache_topk: the top k exact, draws from the rest
        return sampled_terms(terms, teacher.cache_samples)[0]
    if teacher.cache_topk:
        return topk_terms(terms, teacher.cache_topk)[0]
    return terms


def cache_topk(recipe: Recipe, terms: list[Term]) -> dict | None:
    """What a top-k cache stores: ``k`` and the one temperature the run's terms read it at."""
    k = recipe.teacher.cache_topk
    return {"k": k, "temperature": topk_terms(terms, k)[1]} if k else None


def cache_samples(recipe: Recipe, terms: list[Term]) -> dict | None:
    """What a sampled cache stores: the draws per position, the one temperature the run's terms
    read it at, the proposal's temperature and the seed of the draws (the run's)."""
    teacher = recipe.teacher
    if not teacher.cache_samples:
        return None
    return {
        "samples": teacher.cache_samples,
        "temperature": sampled_terms(terms, teacher.cache_samples)[1],
        "proposal_temperature": teacher.cache_sample_temperature,
        "seed": recipe.train.seed,
    }
