"""The run's side of a teaching mode: ``RunSchool`` implements the ``School`` a mode is given,
from the recipe, the data and the run directory (models built and seeded, teachers loaded,
reused or trained, students trained as resumable, checkpointed phases). Its one-batch twin,
``DryRunSchool``, lives with preflight (run/preflight.py), its only user.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from kdistill.data.transfer import with_transfer
from kdistill.distiller import Distiller, Teacher
from kdistill.errors import ConfigError, UserError
from kdistill.io.manifest import record
from kdistill.io.tensors import read_meta
from kdistill.io.weights import load_weights, save_weights
from kdistill.methods import teacher_taps
from kdistill.modeling import to_device
from kdistill.models.pruning import prune_by_influence, prune_layers
from kdistill.report.history import MetricsLog
from kdistill.run.config import Recipe, StudentConfig, TeacherConfig
from kdistill.run.plan import (
    Plan,
    build_model,
    cache_samples,
    cache_topk,
    eval_loader,
    train_loader,
    training_set,
)
from kdistill.run.trackers import Trackers
from kdistill.teachers.cache import CachedTeacher, open_or_build
from kdistill.teachers.cross_tokenizer import CrossTokenizerTeacher, frozen_teacher
from kdistill.teachers.identity import precision_of, teacher_identity
from kdistill.teachers.onnx import OnnxModel, check_onnx_terms
from kdistill.teachers.pair import check_pair
from kdistill.teachers.text_cache import TextCachedTeacher, text_cached_teacher
from kdistill.teaching.preparation import prepare_student, prepare_teacher
from kdistill.teaching.roles import PSEUDO_LABELS, Role
from kdistill.training.loop import Checkpointing, Loop, train_loop
from kdistill.training.optimization import Optimization
from kdistill.training.selection import EarlyStopping, best_weights_path, selection_rule
from kdistill.training.sequences import kept_sequences
from kdistill.training.shards import named_by, remove_shards

# On the CPU a teacher's forward pass gets no faster past a few hundred samples and can get
# slower once the activations leave the caches: LeNet over 3,500 digits, one thread, channels-
# last, took 0.69 s at batch 64-256 and 1.45 s at 512 (the default eval_batch_size).
CPU_CACHE_BATCH = 256


def cache_batch_size(eval_batch_size: int, device: torch.device) -> int:
    return eval_batch_size if device.type != "cpu" else min(eval_batch_size, CPU_CACHE_BATCH)


class RunSchool:
    """Trains, loads and keeps a run's models in ``run_dir`` (see ``teaching.roles.School``)."""

    def __init__(
        self, plan: Plan, accelerator: Accelerator, run_dir: Path, *, resume: bool = False
    ):
        self.read_plan(plan)
        self.accelerator, self.run_dir, self.resume = accelerator, run_dir, resume
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.val_loader = eval_loader(plan.splits.val, plan.recipe)
        self.trackers = Trackers(
            plan.recipe.output.report_to,
            run_dir,
            hyperparameters=plan.recipe.model_dump(mode="json"),
        )

    def read_plan(self, plan: Plan) -> None:
        """What every school reads from the plan (``DryRunSchool`` reads only this)."""
        self.plan, self.recipe, self.splits, self.task = plan, plan.recipe, plan.splits, plan.task
        self.distill_terms, self.scratch_terms = plan.terms, plan.task.scratch_terms()
        # The teacher's hard labels of the transfer set (data.pseudo_labels), once labelled.
        self.pseudo_targets: torch.Tensor | None = None
        self.resume = False
        self.pruning: dict[
            str, dict
        ] = {}  # field -> the layers kept and their scores (student.prune)

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # --- models ---------------------------------------------------------------------------

    def _section(
        self, architecture: str, member: int | None = None
    ) -> tuple[str, StudentConfig | TeacherConfig]:
        if architecture == "teacher" and member is not None:
            return f"teachers.{member}", self.recipe.teachers[member]
        section = getattr(self.recipe, architecture)
        return architecture, section

    def build(
        self, architecture: str, *, member: int | None = None, reseed: bool = True
    ) -> nn.Module:
        # The scratch and the distilled student start from the same weights; each ensemble
        # member gets its own seed, or two of one architecture would be identical.
        if reseed:
            set_seed(self.recipe.train.seed + 1000 * (member or 0))
        field, section = self._section(architecture, member)
        model = build_model(field, section.model, section.kwargs, self.splits)
        prune = getattr(section, "prune", None)
        if prune is None:
            return model
        try:
            return self._pruned(field, model, prune)
        except ConfigError as error:
            raise ConfigError(f"{field}.prune: {error}") from None

    def _pruned(self, field: str, model: nn.Module, prune) -> nn.Module:
        """``model`` depth-pruned as ``<field>.prune`` says; the layers are scored once per run
        (the scratch and the distilled student start from the same pruned weights)."""
        done = self.pruning.get(field)
        if done is not None:
            return prune_layers(model, done["keep_layers"])
        pruned, self.pruning[field] = prune_by_influence(
            model,
            self.splits.train,
            keep=prune.keep,
            calibration_tokens=prune.calibration_tokens,
        )
        return pruned

    def architecture(self, architecture: str, *, member: int | None = None) -> dict:
        field, section = self._section(architecture, member)
        pruning = self.pruning.get(field)
        kept = {"keep_layers": pruning["keep_layers"]} if pruning else {}
        return {"model": section.model, "kwargs": dict(section.kwargs), **kept}

    # --- teachers -------------------------------------------------------------------------

    def obtain_teacher(self, member: int | None = None) -> Role:
        """Load the teacher from its ``checkpoint``, from this run (resumed), from an earlier
        run's store (``<output.dir>/.teachers``), or train it here."""
        field, cfg = self._section("teacher", member)
        phase = "teacher" if member is None else f"teacher_{member}"
        if cfg.onnx:
            role = self._onnx_teacher(field, cfg, phase)
            if self.is_main:  # the run keeps the graph that taught it, as it keeps trained weights
                self.checkpoints.mkdir(parents=True, exist_ok=True)
                record(shutil.copyfile(cfg.onnx, self.checkpoints / role.file))
            self.accelerator.wait_for_everyone()
            return role
        model = self.build("teacher", member=member)
        final = self.checkpoints / f"{phase}.safetensors"
        fingerprint = teacher_fingerprint(self.recipe, self.splits, cfg, member or 0)
        store = (
            Path(self.recipe.output.dir) / ".teachers" / f"{cfg.model}-{fingerprint}.safetensors"
        )
        trained_here = any(r["phase"] == phase for r in self.metrics.read())
        if cfg.checkpoint:
            load_checkpoint(model, Path(cfg.checkpoint), f"{field}.checkpoint")
            source, seconds = f"loaded from {cfg.checkpoint} (not trained)", 0.0
        elif cfg.epochs == 0:  # a pretrained model, taken as built
            source, seconds = f"{cfg.model} as built ({field}.epochs: 0)", 0.0
        elif self.resume and final.is_file():
            load_checkpoint(model, final, phase, ours=True)
            source = "trained" if trained_here else f"reused {store}"
            seconds = self.metrics.seconds(phase)
        elif store.is_file() and not (self.resume and trained_here):
            load_checkpoint(model, store, "teacher store", ours=True)
            source, seconds = f"reused {store}", 0.0
        else:
            seconds = self._train(
                phase,
                Distiller(model, self.scratch_terms),
                None,
                augment=cfg.augment,
                epochs=cfg.epochs,
                lr=cfg.lr,
                optimizer=cfg.optimizer,
                # teacher.data: more labelled samples than the student's (kdistill.data.transfer)
                splits=replace(self.splits, train=self.splits.teacher_train)
                if cfg.data is not None
                else None,
            )
            if self.is_main:
                save_weights(model, store)  # atomic: a crash never leaves a half-written teacher
            source = "trained"
        if self.is_main and not final.is_file():
            save_weights(model, final)
        self.accelerator.wait_for_everyone()
        if member is None:
            prepare_teacher(self.recipe.distill.params, model)
        return Role(
            model.cpu(),
            self.architecture("teacher", member=member),
            final.name,
            seconds,
            source=source,
        )

    def _onnx_teacher(self, field: str, cfg: TeacherConfig, phase: str) -> Role:
        """A teacher delivered as an exported graph: run by ONNX Runtime, never trained, and
        read only through its outputs (feature terms are refused, naming the reason)."""
        check_onnx_terms(self.distill_terms, f"{field}.onnx")
        model = OnnxModel(cfg.onnx, field=f"{field}.onnx")
        architecture = {"model": "onnx", "onnx": str(cfg.onnx), "kwargs": {}}
        return Role(model, architecture, f"{phase}.onnx", 0.0, source=str(cfg.onnx))

    def frozen(self, model: nn.Module, *, cached: bool = False):
        teacher = frozen_teacher(
            model,
            self.splits,
            taps=teacher_taps(self.distill_terms),
            top_k=self.recipe.teacher.cache_topk,
        )
        if cached and isinstance(teacher.module, CrossTokenizerTeacher):
            return self._text_cached(teacher.module)
        return self._cached(teacher) if cached else teacher

    def _text_cached(self, module: CrossTokenizerTeacher) -> TextCachedTeacher:
        """Across tokenizers: the teacher's top k over its own tokens of the training text,
        keyed by the teacher and the text (``kdistill.teachers.text_cache``)."""
        teacher = self.recipe.teacher
        return text_cached_teacher(
            module,
            self.splits,
            k=teacher.cache_topk,
            dtype=teacher.cache_dtype,
            root=teacher.cache_dir,
            folder=Path(self.recipe.output.dir) / ".cache",
            batch_size=self.recipe.train.eval_batch_size,
            accelerator=self.accelerator,
            progress=self.recipe.output.progress,
        )

    def _cached(self, teacher: Teacher) -> CachedTeacher:
        """The teacher's outputs over the training split, from a cache built once.

        The cache lives under ``<output.dir>/.cache/<fingerprint>/`` (or ``teacher.cache_dir``)
        and is shared by every run with the same teacher weights, data, augmentation, taps and
        dtype. With augmentation it holds one view per epoch (or ``train.views`` of them,
        repeated in turn), replayed in step with the student's inputs; so does a training set
        that redraws its samples every epoch (``set_epoch``, e.g. the sampled negatives of
        MovieLens).
        """
        recipe, train = self.recipe, self.recipe.train
        varies = (
            train.augment != "none"
            or train.mix != "none"
            or hasattr(self.splits.train, "set_epoch")
        )
        views = min(train.views or train.epochs, train.epochs) if varies else 1
        topk = cache_topk(recipe, self.distill_terms)
        # The distilled student's samples: the training split, then the transfer set if any.
        sampled = cache_samples(recipe, self.distill_terms)
        pool = self.splits.unlabelled
        dataset = training_set(self.splits, recipe, train.augment, train.mix, train.views, pool)
        mixing = {"mix": train.mix, "mix_alpha": train.mix_alpha} if train.mix != "none" else {}
        transfer = {} if pool is None else {"unlabelled": [recipe.data.unlabelled, len(pool)]}
        # One view of fixed inputs is the same for every seed: the seeds of a recipe share it.
        seed = train.seed if varies else None
        fingerprint = {
            "teacher": teacher_identity(teacher.module),  # weights, settings and hooks (vocab_map)
            "data": {**self.splits.identity, **transfer},
            "split": "train",
            "augment": {"name": train.augment, "seed": seed, "views": views, **mixing},
            "taps": sorted(teacher.taps),
            "dtype": recipe.teacher.cache_dtype,
            "topk": topk,
            **({"sampled": sampled} if sampled else {}),  # absent: older caches still match
            **({"hidden": True} if recipe.teacher.cache_hidden else {}),
            **precision_of(self.accelerator),
        }
        key = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        root = (
            Path(recipe.teacher.cache_dir)
            if recipe.teacher.cache_dir
            else Path(recipe.output.dir) / ".cache" / key
        )
        started = time.perf_counter()
        cache, built = open_or_build(
            root,
            teacher,
            dataset,
            fingerprint=fingerprint,
            views=views,
            dtype=recipe.teacher.cache_dtype,
            topk=topk["k"] if topk else None,
            hidden=recipe.teacher.cache_hidden,
            **(sampled or {"temperature": topk["temperature"] if topk else 1.0}),
            batch_size=cache_batch_size(train.eval_batch_size, self.accelerator.device),
            accelerator=self.accelerator,
        )
        if built and self.is_main and recipe.output.progress:
            print(
                f"teacher cache: {views} view(s) of {len(dataset)} samples in "
                f"{time.perf_counter() - started:.1f} s at {root}"
            )
        return CachedTeacher(cache)

    def _teacher_sequences(self, model: nn.Module, settings: dict) -> torch.Tensor:
        """The teacher's generations for ``distill.params.sequence_kd``, kept under
        ``<output.dir>/.cache`` (``kdistill.training.sequences.kept_sequences``)."""
        return kept_sequences(
            model,
            self.splits,
            settings,
            folder=Path(self.recipe.output.dir) / ".cache",
            batch_size=self.recipe.train.eval_batch_size,
            accelerator=self.accelerator,
            progress=self.recipe.output.progress,
        )

    # --- students -------------------------------------------------------------------------

    def distiller(self, student: nn.Module, terms: list, teacher) -> Distiller:
        example, transform = self.plan.example, None
        if teacher is not None:
            lm = self.splits.task == "language_modelling"
            check_pair(teacher, student, example, tokenizer_size=lm and self.splits.num_classes)
            live, seed = getattr(teacher, "module", None), self.recipe.train.seed
            transform = prepare_student(
                self.recipe.distill.params,
                student,
                live,
                seed=seed,
                sequences=self._teacher_sequences,
            )
        # A memory bank (CRD) holds every sample the student trains on: the transfer set's too.
        samples = len(self.splits.train)
        if teacher is not None and self.splits.unlabelled is not None:
            samples += len(self.splits.unlabelled)
        distiller = Distiller.build(
            student,
            terms,
            teacher=teacher,
            example_batch=example,
            num_samples=samples,
        )
        distiller.batch_transform = transform
        return distiller

    def fit(self, phase: str, distiller: Distiller, teacher) -> float:
        t = self.recipe.train
        mix = t.scratch_mixing if phase == "scratch" else t.mix
        # The views repeat only where a teacher scores them (its cost); a scratch student gets a
        # new view every epoch, which can only make the baseline stronger.
        views = t.views if distiller.needs_teacher else 0
        # Only a student with a teacher learns from the transfer set: the scratch student (and
        # the teacher, trained in _train directly) have no one to score it; the pseudo-label
        # baseline learns from the teacher's hard labels of it, as from labels.
        pseudo = phase == PSEUDO_LABELS
        unlabelled = self.splits.unlabelled if distiller.needs_teacher or pseudo else None
        distiller.transfer = distiller.needs_teacher and unlabelled is not None
        try:
            return self._train(
                phase,
                distiller,
                teacher if distiller.needs_teacher else None,
                augment=t.augment,
                mix=mix,
                views=views,
                epochs=t.epochs,
                lr=t.lr,
                optimizer=t.optimizer,
                unlabelled=unlabelled,
                targets=self.pseudo_targets if pseudo else None,
                budget=True,
            )
        finally:
            if distiller.tap:  # the trained student is measured without the training-time hooks
                distiller.tap.remove()

    def _train(
        self,
        phase: str,
        distiller: Distiller,
        teacher,
        *,
        augment: str,
        epochs: int,
        lr: float,
        optimizer: str,
        mix: str = "none",
        views: int = 0,
        unlabelled=None,
        targets=None,
        budget: bool = False,
        splits=None,
    ) -> float:
        """Train one phase into ``checkpoints/<phase>.safetensors``; returns its seconds.

        The full training state is kept in ``checkpoints/<phase>.state.safetensors`` while the
        phase runs (each epoch and every ``train.checkpoint_every`` steps), so ``--resume``
        continues a killed run exactly; a phase already finished is loaded, not retrained.
        """
        final = self.checkpoints / f"{phase}.safetensors"
        state = self.checkpoints / f"{phase}.state.safetensors"
        if self.resume and final.is_file():
            load_weights(distiller.student, final, expect_digest=True)
            return self.metrics.seconds(phase)
        if self.is_main:
            # Records the checkpoint does not cover are written again by the resumed training.
            resume_epoch = (
                read_meta(state)["progress"]["epoch"] if self.resume and state.is_file() else 1
            )
            self.metrics.drop_from(phase, resume_epoch)
        t = self.recipe.train
        train_loop(
            distiller,
            train_loader(
                splits or self.splits, self.recipe, augment, mix, views, unlabelled, targets, budget
            ),
            teacher=teacher,
            val_loader=self.val_loader,
            epochs=epochs,
            lr=lr,
            optim=Optimization.from_settings(t, optimizer),
            loop=Loop(
                phase=phase,
                evaluate_fn=self.task.evaluate,
                batch_transform=getattr(distiller, "batch_transform", None),
                early_stopping=self._early_stopping(),
                keep=t.keep,
                log_every=self.recipe.output.log_every,
                log_step=self.trackers.log_step if self.is_main else None,
            ),
            checkpointing=Checkpointing(state, every=t.checkpoint_every, resume=self.resume),
            accelerator=self.accelerator,
            log=self._log if self.is_main else (lambda _: None),
            progress=self.recipe.output.progress,
        )
        if self.is_main:
            save_weights(distiller.student, final)
            remove_shards(state, named=named_by(state))  # a sharded phase's (FSDP)
            state.unlink(missing_ok=True)
            best_weights_path(state).unlink(missing_ok=True)
            self.trackers.finish_phase()
        self.accelerator.wait_for_everyone()
        return self.metrics.seconds(phase)

    def pseudo_label(self, teacher: Teacher) -> None:
        """The teacher's hard labels (its most likely class) of each transfer-set sample, for
        the pseudo-label baseline (self-training)."""
        loader = eval_loader(with_transfer(self.splits.train, self.splits.unlabelled), self.recipe)
        labels = []
        teacher.to(self.accelerator.device)
        with torch.no_grad():
            for batch in loader:
                logits = teacher(to_device(batch, self.accelerator.device)).logits
                labels.append(logits.argmax(-1).cpu())
        self.pseudo_targets = torch.cat(labels)[len(self.splits.train) :]

    def _early_stopping(self) -> EarlyStopping | None:
        """The same rule for every student and teacher trained here (scratch and distilled
        alike), on the task's headline validation metric unless the recipe names another."""
        return selection_rule(self.recipe.train, self.task.headline, self.task.higher_is_better)

    def _log(self, record: dict) -> None:
        self.metrics.write(record)
        self.trackers.log_epoch(record)

    def keep(self, model: nn.Module, file: str) -> None:
        path = self.checkpoints / file
        if self.resume and path.is_file():
            load_weights(model, path, expect_digest=True)
        elif self.is_main:
            save_weights(model, path)
        self.accelerator.wait_for_everyone()


def teacher_fingerprint(
    recipe: Recipe, splits, cfg: TeacherConfig | None = None, member: int = 0
) -> str:
    """Identity of a teacher trained here: its model, training settings and data. A later run
    of the same recipe (any student, any method) reuses the weights."""
    identity = {
        # How the teacher is trained, not where its outputs are kept: caching does not retrain it.
        "teacher": (cfg or recipe.teacher).model_dump(
            exclude={
                "checkpoint",
                "cache",
                "cache_dtype",
                "cache_dir",
                "cache_topk",
                "cache_samples",
                "cache_sample_temperature",
            }
        ),
        "data": splits.identity,
        "train": recipe.train.model_dump(
            include={
                "batch_size",
                "seed",
                "schedule",
                "weight_decay",
                "momentum",
                "mixed_precision",
                "grad_accum",
                "clip_grad_norm",
                "warmup_steps",
                "warmup_ratio",
                "early_stopping",
                "keep",
            }
        ),
        "torch": torch.__version__.split("+")[0],
    }
    if member:  # ensemble members of one architecture are drawn from different seeds
        identity["member"] = member
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def load_checkpoint(model: nn.Module, path: Path, field: str, *, ours: bool = False) -> None:
    """Load weights into ``model``; ``ours``: kdistill
    wrote the file, so it must carry a checksum."""
    if not path.exists():  # a file, or a Hugging Face directory
        raise UserError(f"{field}: {path} does not exist")
    try:
        load_weights(model, path, expect_digest=ours)
    except UserError as error:  # the loader names the file; the recipe field is named here
        raise type(error)(f"{field}: {error}") from None
    except Exception as error:  # shapes or names that do not fit the model
        raise UserError(
            f"{field}: cannot load {path} into the {type(model).__name__} "
            f"({str(error).splitlines()[0][:200]})"
        ) from None
