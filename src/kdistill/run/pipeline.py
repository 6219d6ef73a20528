"""The main job, as a short script of named steps: preflight (every model, term, tap and phase
checked on one batch, nothing written), the run directory (made, replaced or continued, and
locked), the teaching mode (which returns the roles it trained), the summary, the report.
``cache`` is the teacher half of it, for ``kdistill cache``.

The phases each mode trains, in order (each ``checkpoints/<phase>.safetensors``, resumable;
a teacher is loaded, reused from ``<output.dir>/.teachers`` or trained as its phase; with
``student.prune`` a ``pruned`` student, untrained, is kept first):

- ``teacher``: teacher, scratch, student (distilled from the teacher);
- ``assistant``: teacher, assistant (distilled from the teacher), scratch, student (from the
  assistant);
- ``ensemble``: teacher_0 .. teacher_<members-1>, scratch, student (from their combination);
- ``born_again``: scratch (generation 0, the report's teacher), generation_1 ..
  generation_<generations-1>, student (the last generation);
- ``mutual``: scratch, student (the student and its peer trained together, one phase).

``kdistill cache`` runs ``teacher`` only, then stores the teacher's outputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdistill.errors import DiskFullError, UserError, disk_full, is_disk_full
from kdistill.io.files import atomic_write
from kdistill.report import (
    comparison_rows,
    markdown_table,
    read_summary,
    results_table,
    verdict,
    write_report,
)
from kdistill.report.plots import plot_diagnostics, plot_history
from kdistill.run.config import Recipe
from kdistill.run.plan import eval_loader
from kdistill.run.preflight import preflight, teacher_notes
from kdistill.run.rundir import check_run_dir, open_run_dir
from kdistill.run.school import RunSchool
from kdistill.run.summary import summarize
from kdistill.teachers.text_cache import TextCache
from kdistill.teaching import MODES, Role
from kdistill.training.acceleration import make_accelerator
from kdistill.training.sharding import is_sharded


def run(recipe: Recipe, *, overwrite: bool = False, resume: bool = False, echo=print) -> dict:
    """Run a recipe end to end; returns the summary also written to ``summary.json``.

    Under ``torchrun`` or ``accelerate launch`` every process runs this; training is
    data-parallel and only the main process writes files and prints. A full disk ends it with
    one ``DiskFullError`` that also says what the run directory kept.
    """
    try:
        return _run(recipe, overwrite=overwrite, resume=resume, echo=echo)
    except (OSError, DiskFullError) as error:
        if not isinstance(error, DiskFullError) and not is_disk_full(error):
            raise
        if not isinstance(error, DiskFullError):  # a write of ours that has no message of its own
            error = disk_full(error.filename or recipe.output.dir, kept="the files written before")
        run_dir = Path(recipe.output.dir) / recipe.name
        raise DiskFullError(f"{error}; {kept_by_run(run_dir)}") from None


def kept_by_run(run_dir: Path) -> str:
    """What a run that stopped half-way leaves for ``--resume``: its finished phases and the
    training checkpoint of the phase it was in (each written atomically, so intact)."""
    if not run_dir.is_dir():
        return f"{run_dir} had finished no phase and was removed: run it again"
    # <phase>.safetensors when finished; <phase>.state(.best).safetensors while it trains
    checkpoints = sorted((run_dir / "checkpoints").glob("*.safetensors"))
    finished = [p.stem for p in checkpoints if "." not in p.stem]
    training = [p.stem.removesuffix(".state") for p in checkpoints if p.stem.endswith(".state")]
    kept = [f"{phase} (finished)" for phase in finished]
    kept += [f"{phase} (its last training checkpoint)" for phase in training]
    kept = ", ".join(kept)
    return f"{run_dir} keeps {kept or 'its settings'}: continue it with --resume"


def _run(recipe: Recipe, *, overwrite: bool, resume: bool, echo) -> dict:
    started = time.perf_counter()
    accelerator = make_accelerator(
        recipe.train.device,
        recipe.train.mixed_precision,
        deterministic=recipe.train.deterministic,
        compile=recipe.train.compile,
        strategy=recipe.train.strategy,
    )
    plan = preflight(recipe)  # bad models, terms, taps or data fail before anything is written
    # Every process checks the directory before the main one creates it (or one would see the
    # other's).
    check_run_dir(recipe, overwrite=overwrite, resume=resume)
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    with open_run_dir(
        recipe, overwrite=overwrite, resume=resume, main=main, built=plan.built
    ) as run_dir:
        accelerator.wait_for_everyone()
        if resume and (run_dir / "summary.json").exists():
            summary = read_summary(run_dir)  # a damaged one is refused, not resumed over
            echo(f"{run_dir} is already complete; nothing to resume")
            return summary
        if main:
            echo(
                f"run {recipe.name}: {plan.mode} mode, {accelerator.num_processes} process(es), "
                f"world_size={accelerator.num_processes}, device {accelerator.device}"
                + (", sharded (fsdp)" if is_sharded(accelerator) else "")
            )
            for line in teacher_notes(recipe):
                echo(line)
        school = RunSchool(plan, accelerator, run_dir, resume=resume)
        roles = MODES[plan.mode](school, **plan.options)
        pruned = pruned_role(school)
        if pruned is not None:  # the pruned student before training, measured with the others
            roles = {"pruned": pruned, **roles}
        if not main:
            return {}
        history = school.metrics.read()
        summary = summarize(
            plan,
            roles,
            run_dir=run_dir,
            test_loader=eval_loader(plan.splits.test, recipe),
            history=history,
            accelerator=accelerator,
        )
        if pruned is not None:
            summary["pruning"] = pruned.info["pruning"]
        summary["seconds"] = round(time.perf_counter() - started, 1)
        plots = (
            plot_history(history, run_dir / "plots")
            + plot_diagnostics(summary.get("diagnostics"), run_dir / "plots")
            if recipe.output.plots
            else []
        )
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
        write_report(run_dir, summary, plots)
    echo("")
    echo(results_table(summary))
    echo("")
    if summary.get("comparisons"):
        echo(markdown_table(*comparison_rows(summary)))
        echo("")
    echo(verdict(summary))
    echo(f"Run written to {run_dir}/ in {summary['seconds']:.0f} s")
    return summary


def pruned_role(school: RunSchool) -> Role | None:
    """The pruned student before any training (``student.prune``), measured beside the trained
    ones: what distillation and the scratch baseline start from."""
    if school.recipe.student.prune is None:
        return None
    model = school.build("student")
    school.keep(model, "pruned.safetensors")
    return Role(
        model,
        school.architecture("student"),
        "pruned.safetensors",
        source="pruned from the teacher, untrained",
        info={"pruning": school.pruning["student"]},
    )


def cache(recipe: Recipe, *, echo=print) -> dict:
    """``kdistill cache``: obtain the recipe's teacher (trained here if no store or checkpoint
    has it) and build its output cache, so that later runs with ``teacher.cache: true`` never
    run the teacher. Returns the cache's metadata."""
    if recipe.distill.mode != "teacher":
        raise UserError(f"distill.mode={recipe.distill.mode} has no fixed teacher to cache")
    accelerator = make_accelerator(recipe.train.device, recipe.train.mixed_precision)
    plan = preflight(recipe)
    # A teacher trained for the cache keeps its training files beside the teacher store.
    work = Path(recipe.output.dir) / ".teachers" / f"work-{recipe.name}"
    if accelerator.is_main_process:
        (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    school = RunSchool(plan, accelerator, work, resume=True)
    if recipe.teachers is not None:
        raise UserError(
            "kdistill cache builds the cache of one teacher; "
            "run the ensemble with teacher.cache=true instead"
        )
    teacher = school.obtain_teacher()
    cached = school.frozen(teacher.model, cached=True)
    if isinstance(cached.cache, TextCache):  # across tokenizers: keyed by the text
        echo(
            f"teacher text cache for {recipe.name} at {cached.cache.root}: "
            f"{cached.cache.describe()}; teacher {teacher.source}"
        )
        return {"fingerprint": cached.cache.fingerprint, "windows": cached.cache.stored()}
    meta = cached.cache.meta
    files = {**meta["arrays"], **({"head": meta["head"]} if "head" in meta else {})}
    size = sum(info.get("bytes", 0) for info in files.values())
    echo(
        f"teacher cache for {recipe.name} at {cached.cache.root}: {meta['views']} view(s) of "
        f"{meta['samples']} samples, {size / 1e6:.1f} MB "
        f"({', '.join(files)}); teacher {teacher.source}"
    )
    return meta
