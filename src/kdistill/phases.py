"""The building blocks of a run: its directory, data, models, terms, teacher and the training
of each phase (resumable, checkpointed). ``pipeline`` composes them; with ``cli`` they are the
composition root, the only code that reads the whole recipe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from kdistill.cache import CachedTeacher, TeacherCache, build_cache, teacher_identity, topk_terms
from kdistill.checkpoint import read_meta
from kdistill.config import Recipe, StudentConfig, TeacherConfig, dump_config
from kdistill.data import DataSplits, load_dataset
from kdistill.data.augment import augmented
from kdistill.distiller import Distiller, Teacher, call_model
from kdistill.ensemble import Ensemble
from kdistill.errors import ConfigError, UserError
from kdistill.export import load_weights, save_weights
from kdistill.method_setup import prepare_student, preset_params
from kdistill.methods import LAYER_DEFAULTS, Term, default_layers, preset_terms
from kdistill.models import UnknownModelError, create_model
from kdistill.mutual import MutualDistiller
from kdistill.report import MetricsLog
from kdistill.tasks import Task
from kdistill.trainer import fit

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json")


def open_run_dir(recipe: Recipe, *, overwrite: bool = False, resume: bool = False, create: bool = True) -> Path:
    """``<output.dir>/<name>``: new, replaced (``overwrite``, only if it is a kdistill run), or
    continued (``resume``, only with the recipe it was started with). Never silently reused."""
    run_dir = Path(recipe.output.dir) / recipe.name
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        config = run_dir / "config.yaml"
        if not config.is_file():
            raise UserError(f"--resume: {run_dir} holds no run to continue; run without --resume")
        started_with = Recipe.model_validate(yaml.safe_load(config.read_text()))
        if started_with != recipe:
            changed = _first_difference(started_with.model_dump(), recipe.model_dump())
            raise UserError(
                f"--resume: the recipe differs from {config} at {changed}; resume with the same "
                "recipe, or start a new run with name=<new name>"
            )
        return run_dir
    if exists:
        if not overwrite:
            raise UserError(
                f"{run_dir} already exists: pass --resume to continue it, --overwrite to replace "
                "it, or name=<new name> for a separate run"
            )
        if not any((run_dir / marker).exists() for marker in RUN_MARKERS):
            raise UserError(f"{run_dir} exists and is not a kdistill run; choose another name= or output.dir=")
    if create:  # the main process only; the others check the same things and wait
        if exists:
            shutil.rmtree(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(recipe))
    return run_dir


def _first_difference(a, b, path="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return path or "(top level)"


def load_data(recipe: Recipe) -> DataSplits:
    data = recipe.data
    try:
        return load_dataset(
            data.dataset, path=data.path, val_fraction=data.val_fraction,
            test_fraction=data.test_fraction, seed=data.seed, subset=data.subset, **data.options,
        )
    except TypeError as error:
        raise ConfigError(f"data.options: {error}") from None


def train_loader(splits: DataSplits, recipe: Recipe, augment: str) -> DataLoader:
    # A seeded generator gives the scratch and the distilled student the same batch order
    # (and, through Augmented, the same augmented views).
    generator = torch.Generator().manual_seed(recipe.train.seed)
    return DataLoader(
        augmented(splits.train, augment, seed=recipe.train.seed), batch_size=recipe.train.batch_size,
        shuffle=True, generator=generator, num_workers=recipe.data.num_workers,
    )


def eval_loader(dataset, recipe: Recipe) -> DataLoader:
    return DataLoader(dataset, batch_size=recipe.train.eval_batch_size, num_workers=recipe.data.num_workers)


def build_model(section: str, name: str, kwargs: dict, splits: DataSplits) -> nn.Module:
    try:
        return create_model(name, num_classes=splits.num_classes, input_shape=splits.input_shape, **kwargs)
    except UnknownModelError as error:
        raise ConfigError(f"{section}.model: {error}") from None
    except TypeError as error:
        raise ConfigError(f"{section}.kwargs: {error}") from None


def recipe_terms(recipe: Recipe, splits: DataSplits) -> list[Term]:
    """The recipe's terms, or its method's preset. Feature presets whose layers the recipe does
    not name read the models' stages (``hint_layers``): their architectures are built here,
    untrained, only to read those names."""
    try:
        if recipe.terms is not None:
            return _topk_forms(recipe, [Term(**term.model_dump()) for term in recipe.terms])
        d = recipe.distill
        hyper = {k: v for k, v in (("temperature", d.temperature), ("alpha", d.alpha), ("ce_weight", d.ce_weight)) if v is not None}
        params = preset_params(d.params)
        if recipe.method in LAYER_DEFAULTS and not {"student_layers", "teacher_layers"} & set(params):
            student = build_model("student", recipe.student.model, recipe.student.kwargs, splits)
            teacher = build_model("teacher", recipe.teacher.model, recipe.teacher.kwargs, splits)
            params.update(default_layers(recipe.method, student, teacher))
        return _topk_forms(recipe, preset_terms(recipe.method, **hyper, **params))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{'terms' if recipe.terms is not None else 'method'}: {error}") from None


def _topk_forms(recipe: Recipe, terms: list[Term]) -> list[Term]:
    """A run reading a top-k cache compares through each loss's exact top-k form (or is refused)."""
    k = recipe.teacher.cache_topk
    return topk_terms(terms, k)[0] if k and recipe.teacher.cache and recipe.distill.mode == "teacher" else terms


def teacher_fingerprint(recipe: Recipe, splits: DataSplits, cfg: TeacherConfig | None = None, member: int = 0) -> str:
    """Identity of a teacher trained here: its model, training settings and data. A later run
    of the same recipe (any student, any method) reuses the weights."""
    identity = {
        # How the teacher is trained, not where its outputs are kept: caching does not retrain it.
        "teacher": (cfg or recipe.teacher).model_dump(exclude={"checkpoint", "cache", "cache_dtype", "cache_dir", "cache_topk"}),
        "data": splits.identity,
        "train": recipe.train.model_dump(include={"batch_size", "seed", "schedule", "weight_decay", "momentum", "mixed_precision"}),
        "torch": torch.__version__.split("+")[0],
    }
    if member:  # ensemble members of one architecture are drawn from different seeds
        identity["member"] = member
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunContext:
    """What every phase of a run shares."""

    recipe: Recipe
    splits: DataSplits
    task: Task
    accelerator: Accelerator
    run_dir: Path
    metrics: MetricsLog
    resume: bool
    val_loader: DataLoader

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, record: dict) -> None:
        self.metrics.write(record)


def train_phase(ctx: RunContext, phase: str, distiller: Distiller, *, teacher: Teacher | None,
                augment: str, epochs: int, lr: float, optimizer: str, batch_transform=None) -> float:
    """Train one phase into ``checkpoints/<phase>.safetensors``; returns its training seconds.

    The full training state is kept in ``checkpoints/<phase>.state.safetensors`` while the phase
    runs (each epoch and every ``train.checkpoint_every`` steps), so ``--resume`` continues a
    killed run exactly; a phase already finished is loaded, not retrained.
    """
    final = ctx.checkpoints / f"{phase}.safetensors"
    state = ctx.checkpoints / f"{phase}.state.safetensors"
    if ctx.resume and final.is_file():
        load_weights(distiller.student, final)
        return ctx.metrics.seconds(phase)
    if ctx.is_main:
        # Records the checkpoint does not cover are written again by the resumed training.
        resume_epoch = read_meta(state)["progress"]["epoch"] if ctx.resume and state.is_file() else 1
        ctx.metrics.drop_from(phase, resume_epoch)
    t = ctx.recipe.train
    fit(
        distiller, train_loader(ctx.splits, ctx.recipe, augment), teacher=teacher,
        val_loader=ctx.val_loader, epochs=epochs, optimizer=optimizer, lr=lr,
        weight_decay=t.weight_decay, momentum=t.momentum, schedule=t.schedule,
        accelerator=ctx.accelerator, log=ctx.log, phase=phase, progress=ctx.recipe.output.progress,
        evaluate_fn=ctx.task.evaluate, checkpoint=state, checkpoint_every=t.checkpoint_every,
        resume=ctx.resume, batch_transform=batch_transform,
    )
    if ctx.is_main:
        save_weights(distiller.student, final)
        state.unlink(missing_ok=True)
    ctx.accelerator.wait_for_everyone()
    return ctx.metrics.seconds(phase)


def obtain_teacher(ctx: RunContext, cfg: TeacherConfig | None = None, phase: str = "teacher") -> tuple[nn.Module, dict]:
    """Load a teacher from its ``checkpoint``, from this run (resumed), from an earlier run's
    store, or train it here (as phase ``phase``)."""
    recipe = ctx.recipe
    cfg = cfg or recipe.teacher
    # Seeded before the weights are drawn, so a recipe trains the same teacher every time; each
    # member of an ensemble gets its own seed, or two of one architecture would be identical.
    member = int(phase.rpartition("_")[2]) if phase.startswith("teacher_") else 0
    set_seed(recipe.train.seed + 1000 * member)
    model = build_model(phase.replace("_", "s."), cfg.model, cfg.kwargs, ctx.splits)
    final = ctx.checkpoints / f"{phase}.safetensors"
    store = Path(recipe.output.dir) / ".teachers" / f"{cfg.model}-{teacher_fingerprint(recipe, ctx.splits, cfg, member)}.safetensors"
    trained_here = any(r["phase"] == phase for r in ctx.metrics.read())
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.is_file():
            raise UserError(f"{phase.replace('_', 's.')}.checkpoint: {path} does not exist")
        _load_checkpoint(model, path, f"{phase.replace('_', 's.')}.checkpoint")
        info = {"source": str(path), "trained_seconds": 0.0}
    elif ctx.resume and final.is_file():
        _load_checkpoint(model, final, phase)
        info = {"source": "trained" if trained_here else f"reused {store}", "trained_seconds": ctx.metrics.seconds(phase)}
    elif store.is_file() and not (ctx.resume and trained_here):
        _load_checkpoint(model, store, "teacher store")
        info = {"source": f"reused {store}", "trained_seconds": 0.0}
    else:
        seconds = train_phase(
            ctx, phase, Distiller(model, ctx.task.scratch_terms()), teacher=None,
            augment=cfg.augment, epochs=cfg.epochs, lr=cfg.lr, optimizer=cfg.optimizer,
        )
        if ctx.is_main:
            save_weights(model, store)  # atomic: a crash never leaves a half-written teacher
        info = {"source": "trained", "trained_seconds": seconds}
    if ctx.is_main and not final.is_file():
        save_weights(model, final)
    ctx.accelerator.wait_for_everyone()
    return model.cpu(), info


def obtain_teachers(ctx: RunContext) -> tuple[nn.Module, dict]:
    """The teacher, or the ``teachers`` ensemble combined as ``distill.ensemble`` says."""
    recipe = ctx.recipe
    if recipe.teachers is None:
        return obtain_teacher(ctx)
    members, infos = [], []
    for i, cfg in enumerate(recipe.teachers):
        model, info = obtain_teacher(ctx, cfg, phase=f"teacher_{i}")
        members.append(model)
        infos.append(info)
    ensemble = Ensemble(members, recipe.distill.ensemble, recipe.distill.ensemble_weights)
    if ctx.is_main:
        save_weights(ensemble, ctx.checkpoints / "teacher.safetensors")
    ctx.accelerator.wait_for_everyone()
    sources = "; ".join(f"{cfg.model}: {info['source']}" for cfg, info in zip(recipe.teachers, infos))
    return ensemble, {
        "source": f"ensemble ({recipe.distill.ensemble}) of {sources}",
        "trained_seconds": sum(info["trained_seconds"] for info in infos),
    }


def _load_checkpoint(model: nn.Module, path: Path, field: str) -> None:
    try:
        load_weights(model, path)
    except UserError:
        raise
    except Exception as error:  # shapes or names that do not fit the model
        raise UserError(f"{field}: cannot load {path} into the {type(model).__name__} ({str(error).splitlines()[0][:200]})") from None


def cached_teacher(ctx: RunContext, teacher: Teacher) -> CachedTeacher:
    """The teacher's outputs over the training split, from a cache built once (``teacher.cache``).

    The cache lives under ``<output.dir>/.cache/<fingerprint>/`` (or ``teacher.cache_dir``) and
    is shared by every run with the same teacher weights, data, augmentation, taps and dtype.
    With augmentation it holds one view per epoch, replayed in step with the student's inputs;
    so does a training set that redraws its samples every epoch (``set_epoch``, e.g. the sampled
    negatives of MovieLens): one view would pair epoch 2's inputs with epoch 1's outputs.
    """
    recipe, train = ctx.recipe, ctx.recipe.train
    varies = train.augment != "none" or hasattr(ctx.splits.train, "set_epoch")
    views = train.epochs if varies else 1
    k = recipe.teacher.cache_topk
    topk = {"k": k, "temperature": topk_terms(recipe_terms(recipe, ctx.splits), k)[1]} if k else None
    dataset = augmented(ctx.splits.train, train.augment, seed=train.seed)
    fingerprint = {
        "teacher": teacher_identity(teacher.module),  # weights, settings and hooks (vocab_map)
        "data": ctx.splits.identity,
        "split": "train",
        "augment": {"name": train.augment, "seed": train.seed, "views": views},
        "taps": sorted(teacher.taps),
        "dtype": recipe.teacher.cache_dtype,
        "topk": topk,
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = Path(recipe.teacher.cache_dir) if recipe.teacher.cache_dir else Path(recipe.output.dir) / ".cache" / key
    if (root / "meta.json").is_file():
        cache = TeacherCache(root)
        cache.check(fingerprint)
        cache.verify(teacher, dataset)  # what a fingerprint cannot see: the outputs themselves
    else:
        started = time.perf_counter()
        cache = build_cache(
            root, teacher, dataset, fingerprint=fingerprint, views=views, dtype=recipe.teacher.cache_dtype,
            topk=k, temperature=topk["temperature"] if topk else 1.0,
            batch_size=train.eval_batch_size, accelerator=ctx.accelerator,
        )
        if ctx.is_main and recipe.output.progress:
            print(f"teacher cache: {views} view(s) of {len(ctx.splits.train)} samples in {time.perf_counter() - started:.1f} s at {root}")
    return CachedTeacher(cache)


def check_compatible(teacher, student: nn.Module, example: dict) -> None:
    """Teacher (live or cached) and student must score the same classes (or vocabulary)."""
    with torch.no_grad():
        was = student.training
        t_out = teacher(example).logits
        s_out = call_model(student.eval(), example["input"])
        student.train(was)
    if t_out.shape[-1] != s_out.shape[-1]:
        raise UserError(
            f"the teacher has {t_out.shape[-1]} outputs but the student has {s_out.shape[-1]}: "
            "build both for the same classes (or vocabulary), or map one onto the other"
        )


def dry_run(distiller: Distiller, teacher: Teacher | None, example: dict, recipe: Recipe) -> None:
    """One forward pass on two samples, so a term that cannot compare these models (a feature
    map loss on vectors, mismatched shapes) fails now, naming itself, not after the teacher
    trained. Leaves no trace: random generators and every buffer are restored."""
    state = {k: v.clone() for k, v in distiller.state_dict().items()}
    was_training = distiller.training
    try:
        with torch.random.fork_rng(), torch.no_grad():
            distiller.eval()
            distiller(example, teacher(example) if distiller.needs_teacher else None)
    except (ValueError, RuntimeError, KeyError) as error:
        where = "terms" if recipe.terms is not None else f"method {recipe.method}"
        raise ConfigError(f"{where}: {str(error).splitlines()[0]}") from None
    finally:
        distiller.load_state_dict(state)
        distiller.train(was_training)


def train_student(ctx: RunContext, phase: str, terms: list[Term], teacher, model: StudentConfig | None = None):
    """Train a student (``model``, default the recipe's student) with ``terms`` against
    ``teacher`` (a ``Teacher``, a ``CachedTeacher`` or ``None``), as phase ``phase``."""
    recipe = ctx.recipe
    model = model or recipe.student
    set_seed(recipe.train.seed)  # same initial weights for the scratch and the distilled student
    student = build_model("assistant" if phase == "assistant" else "student", model.model, model.kwargs, ctx.splits)
    example = next(iter(DataLoader(ctx.splits.train, batch_size=2)))
    transform = None
    if teacher is not None:
        check_compatible(teacher, student, example)
        transform = prepare_student(recipe.distill.params, student, getattr(teacher, "module", None))
    distiller = Distiller.build(student, terms, teacher=teacher, example_batch=example, num_samples=len(ctx.splits.train))
    dry_run(distiller, teacher, example, recipe)
    t = recipe.train
    seconds = train_phase(
        ctx, phase, distiller, teacher=teacher if distiller.needs_teacher else None,
        augment=t.augment, epochs=t.epochs, lr=t.lr, optimizer=t.optimizer, batch_transform=transform,
    )
    if distiller.tap:  # the trained student is measured without the training-time hooks
        distiller.tap.remove()
    return student.cpu(), seconds


def train_mutual(ctx: RunContext) -> tuple[nn.Module, nn.Module, float]:
    """Deep mutual learning: the student and a peer (the teacher section's model, untrained)
    learn together from the labels and from each other. Returns (student, peer, seconds)."""
    recipe = ctx.recipe
    set_seed(recipe.train.seed)
    student = build_model("student", recipe.student.model, recipe.student.kwargs, ctx.splits)
    peer = build_model("teacher", recipe.teacher.model, recipe.teacher.kwargs, ctx.splits)
    d = recipe.distill
    distiller = MutualDistiller(
        student, peer, weight=1.0 if d.alpha is None else d.alpha,
        temperature=1.0 if d.temperature is None else d.temperature,
    )
    t = recipe.train
    peer_file = ctx.checkpoints / "peer.safetensors"
    finished = ctx.resume and (ctx.checkpoints / "student.safetensors").is_file() and peer_file.is_file()
    seconds = train_phase(
        ctx, "student", distiller, teacher=None, augment=t.augment, epochs=t.epochs, lr=t.lr, optimizer=t.optimizer,
    )
    if finished:
        load_weights(peer, peer_file)  # train_phase restored the student of the finished phase
    elif ctx.is_main:
        save_weights(peer, peer_file)
    ctx.accelerator.wait_for_everyone()
    return student.cpu(), peer.cpu(), seconds
