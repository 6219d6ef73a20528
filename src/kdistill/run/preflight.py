"""Check the whole recipe before anything is written: ``kdistill check``, and the first step
of ``run``, ``cache`` and ``tune``.

The schema is validated when the recipe is read; preflight then loads the data, resolves every
model (teacher, students, assistant, ensemble members), builds the terms against their preset's
settings, and runs the recipe's teaching mode through a ``DryRunSchool``: every phase builds
its models, taps and connectors (probing one batch) and takes one forward and backward step on
one batch, on the CPU, in seconds. Nothing is trained, cached or written.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from kdistill.distiller import Distiller
from kdistill.errors import ConfigError
from kdistill.methods import teacher_taps
from kdistill.models.pruning import layer_stack, prune_layers, select_layers
from kdistill.models.settings import model_settings, parameter_count
from kdistill.run.config import Recipe
from kdistill.run.plan import Plan, plan, train_loader
from kdistill.run.school import RunSchool, load_checkpoint
from kdistill.teachers.cross_tokenizer import frozen_teacher
from kdistill.teachers.signals import check_gives_hidden
from kdistill.teachers.store import check_cache_root
from kdistill.teaching import MODES
from kdistill.teaching.preparation import prepare_teacher
from kdistill.teaching.roles import Role
from kdistill.training.sequences import sequence_length, training_prompts


class DryRunSchool(RunSchool):
    """The same school on one batch, writing nothing: teachers are built (and a named
    ``checkpoint`` loaded, so a file that does not fit fails now) but not trained or cached,
    and every phase takes one forward and backward step instead of training."""

    def __init__(self, plan: Plan):  # no accelerator, run directory, metrics or trackers
        self.read_plan(plan)

    def _pruned(self, field: str, model: nn.Module, prune) -> nn.Module:
        """The first ``keep`` layers, unscored: the shapes are those of the run's pruned student,
        and a check does not spend the run's calibration forward passes."""
        select_layers(
            torch.zeros(len(layer_stack(model))), prune.keep
        )  # a keep the model cannot give fails here
        return prune_layers(model, list(range(prune.keep)))

    def build(
        self, architecture: str, *, member: int | None = None, reseed: bool = True
    ) -> nn.Module:
        model = super().build(architecture, member=member, reseed=reseed)
        field, section = self._section(architecture, member)
        self.plan.built[field] = {
            "model": section.model,
            "parameters": parameter_count(model),
            "settings": model_settings(model),
        }
        return model

    def obtain_teacher(self, member: int | None = None) -> Role:
        field, cfg = self._section("teacher", member)
        if cfg.onnx:
            return self._onnx_teacher(
                field, cfg, "teacher" if member is None else f"teacher_{member}"
            )
        model = self.build("teacher", member=member)
        if cfg.checkpoint:
            load_checkpoint(model, Path(cfg.checkpoint), f"{field}.checkpoint")
        if member is None:
            prepare_teacher(self.recipe.distill.params, model)
        return Role(
            model,
            self.architecture("teacher", member=member),
            "teacher.safetensors",
            source="preflight",
        )

    def frozen(self, model: nn.Module, *, cached: bool = False):
        if cached and self.recipe.teacher.cache_hidden:
            check_gives_hidden(model)
        return frozen_teacher(
            model,
            self.splits,
            taps=teacher_taps(self.distill_terms),
            top_k=self.recipe.teacher.cache_topk,
        )

    def _teacher_sequences(self, model: nn.Module, settings: dict) -> torch.Tensor:
        """Checked as the run checks them, not generated: prompts from the training windows,
        padded to the sequences' length, stand in for the teacher's sequences."""
        length = sequence_length(self.splits, settings)
        prompts = training_prompts(self.splits.train, 2, settings["prompt"])
        return torch.cat([prompts, prompts.new_zeros(len(prompts), length - prompts.shape[1])], 1)

    def fit(self, phase: str, distiller: Distiller, teacher) -> float:
        """One training step's forward and backward on one batch; fails naming the phase."""
        t = self.recipe.train
        batch = next(iter(train_loader(self.splits, self.recipe, t.augment, t.mix)))
        try:
            with torch.random.fork_rng():
                distiller.train()
                transform = getattr(distiller, "batch_transform", None)
                if transform is not None:
                    batch = transform(batch)
                teacher_out = (
                    teacher(batch) if teacher is not None and distiller.needs_teacher else None
                )
                out = distiller(batch, teacher_out)
                out["loss"].backward()
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as error:
            where = "terms" if self.recipe.terms is not None else f"method {self.recipe.method}"
            raise ConfigError(f"{where} ({phase}): {str(error).splitlines()[0][:300]}") from None
        finally:
            distiller.zero_grad(set_to_none=True)
            if distiller.tap:
                distiller.tap.remove()
        return 0.0

    def keep(self, model: nn.Module, file: str) -> None:
        pass

    def pseudo_label(self, teacher) -> None:
        """Nothing: the labelling pass costs a pass over the transfer set, and the dry step of
        the pseudo-label phase is a labelled batch's."""


def preflight(recipe: Recipe) -> Plan:
    """The recipe's ``Plan``, after one dry step of every phase; raises ``UserError`` (exit 2)
    naming the field at fault."""
    resolved = plan(recipe)
    if recipe.teacher.cache and recipe.teacher.cache_dir:
        check_cache_root(Path(recipe.teacher.cache_dir))
    try:
        MODES[resolved.mode](DryRunSchool(resolved), **resolved.options)
    except (
        MemoryError,
        RuntimeError,
    ) as error:  # a width, depth or feat_dim past this machine's memory
        if not isinstance(error, MemoryError) and "allocate" not in str(error):
            raise
        detail = str(error).splitlines()[0][-160:] if str(error) else type(error).__name__
        raise ConfigError(
            f"the recipe's models and terms need more memory than there is ({detail}); lower a "
            "width, depth, feat_dim or batch size"
        ) from None
    return resolved


# What only a teacher trained here uses (TeacherConfig.trained_here).
TRAINING_ONLY = ("epochs", "lr", "optimizer", "augment")


def teacher_notes(recipe: Recipe) -> list[str]:
    """Console lines for each teacher the run loads instead of training: where it comes from,
    and, once, the training settings the recipe gives it, which cannot apply. A warning, not a
    refusal: adding ``teacher.checkpoint=...`` to a recipe that trains its teacher is how a
    trained teacher is reused, and that recipe sets them all."""
    if recipe.distill.mode != "teacher":
        return []
    lines = []
    for field, section in recipe.teacher_sections():
        loaded = section.checkpoint or section.onnx
        if not loaded:
            continue
        lines.append(f"{field}: loaded from {loaded} (not trained)")
        ignored = [f"{field}.{name}" for name in TRAINING_ONLY if name in section.model_fields_set]
        if ignored:
            lines.append(
                f"warning: {', '.join(ignored)} only apply to a teacher trained here; "
                f"ignored for the one loaded from {loaded}"
            )
    return lines


def check(recipe: Recipe, *, echo=print) -> Plan:
    """``kdistill check``: preflight, and one line saying what was checked."""
    started = time.perf_counter()
    resolved = preflight(recipe)
    splits = resolved.splits
    extra = ""
    if splits.unlabelled is not None:
        extra += f" + {len(splits.unlabelled):,} unlabelled"
    if splits.teacher_train is not None:  # teacher.data
        extra += f"; the teacher {len(splits.teacher_train) - len(splits.train):,} labelled more"
    echo(
        f"{recipe.name}: ok ({resolved.mode} mode, {len(resolved.terms)} term(s): "
        f"{', '.join(t.name for t in resolved.terms)}; data "
        f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)} "
        f"train/val/test{extra}; every phase took one step in "
        f"{time.perf_counter() - started:.1f} s; nothing written)"
    )
    if resolved.automatic:
        echo("  chosen from the data (set any of them to choose otherwise):")
        for line in resolved.automatic:
            echo(f"    {line}")
    for field_name, model in resolved.built.items():
        settings = ", ".join(f"{k}={v}" for k, v in model["settings"].items())
        echo(
            f"  {field_name}: {model['model']}, {model['parameters']:,} parameters "
            f"({settings or 'no settings recorded'})"
        )
    for line in teacher_notes(recipe):
        echo(line)
    return resolved
