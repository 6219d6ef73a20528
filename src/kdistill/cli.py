"""``kdistill``: the command line. Exit status 0 success, 2 a user error (one line naming the
field or file and the fix), 1 a bug (with its traceback)."""

from __future__ import annotations

import errno
import inspect
import os
import sys
from enum import Enum
from pathlib import Path
from typing import NoReturn

import typer

from kdistill.errors import UserError, disk_full, is_disk_full

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Knowledge distillation: teacher → checked, deployable student.",
)


def _version(value: bool) -> None:
    if value:
        from kdistill import __version__

        typer.echo(f"kdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
):
    """Knowledge distillation: teacher → checked, deployable student."""


def _verb(function=None, *, name: str | None = None):
    """Register a verb. Its docstring's first line is its one line in ``kdistill --help``; the
    whole docstring, with each paragraph's lines joined, is ``kdistill VERB --help``: Rich keeps
    a docstring's own line breaks, which would break sentences mid-line at any terminal width."""
    if function is None:
        return lambda function: _verb(function, name=name)
    paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(function.__doc__).split("\n\n")]
    register = app.command(name, help="\n\n".join(paragraphs), short_help=paragraphs[0])
    return register(function)


def _split_recipe(recipe: str | None, overrides: list[str] | None):
    """``kdistill run train.epochs=3`` has no recipe: the first argument is an override."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        return None, [recipe, *overrides]
    return recipe, overrides


@_verb
def run(
    recipe: str | None = typer.Argument(
        None, help="recipe YAML; the built-in MNIST recipe if omitted"
    ),
    overrides: list[str] | None = typer.Argument(None, help="key=value, e.g. train.epochs=3"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
    resume: bool = typer.Option(
        False, "--resume", help="continue an interrupted run from its checkpoints"
    ),
    seeds: int | None = typer.Option(
        None,
        "--seeds",
        min=1,
        max=1000,
        help="run over this many seeds (overrides train.seeds): runs/<name>-seed<s>/ each, and "
        "mean ± sd, wins and paired tests across them in runs/<name>/seeds.md",
    ),
):
    """Distil a student from a recipe and report what it kept.

    Trains the teacher (or reuses it), then the student from scratch and with distillation,
    evaluates all three and writes runs/<name>/."""
    from kdistill.run.config import load_config
    from kdistill.run.pipeline import run as run_recipe
    from kdistill.run.seeds import run_seeds

    path, overrides = _split_recipe(recipe, overrides)
    if seeds is not None:  # the option overrides the recipe's train.seeds
        overrides.append(f"train.seeds={seeds}")
    config = load_config(path, overrides)
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other; choose one")
    runner = run_seeds if config.train.seeds > 1 else run_recipe  # 1 seed: one plain run
    runner(config, overwrite=overwrite, resume=resume, echo=typer.echo)


@_verb
def check(
    recipe: str | None = typer.Argument(
        None, help="recipe YAML; the built-in MNIST recipe if omitted"
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="key=value, e.g. student.model=cnn_tiny"
    ),
):
    """Check a recipe without running it; writes nothing.

    Checks the schema, the data, every model, term, tap and connector, and one training step
    of every phase on one batch."""
    from kdistill.run.config import load_config
    from kdistill.run.preflight import check as check_recipe

    path, overrides = _split_recipe(recipe, overrides)
    check_recipe(load_config(path, overrides), echo=typer.echo)


@_verb
def cache(
    recipe: str | None = typer.Argument(
        None, help="recipe YAML; the built-in MNIST recipe if omitted"
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="key=value, e.g. teacher.cache_dtype=float32"
    ),
):
    """Store the teacher's outputs over the training split.

    Runs the recipe's teacher once, so that runs with teacher.cache=true read its outputs
    instead of running the teacher."""
    from kdistill.run.config import load_config
    from kdistill.run.pipeline import cache as build

    path, overrides = _split_recipe(recipe, overrides)
    build(load_config(path, overrides), echo=typer.echo)


class Exporter(str, Enum):
    auto = "auto"
    dynamo = "dynamo"
    torchscript = "torchscript"


@_verb
def export(
    run_dir: str = typer.Argument(..., help="a finished run directory, e.g. runs/mnist_kd"),
    int8: bool = typer.Option(
        True, "--int8/--no-int8", help="also write a dynamically quantised int8 student"
    ),
    tolerance: float = typer.Option(
        1e-4, help="largest acceptable |ONNX Runtime − PyTorch| over the student's logits"
    ),
    int8_tolerance: float = typer.Option(
        0.01,
        help="largest acceptable loss of the test score for int8: 0.01 = 1 point of accuracy "
        "(or of any rate), 1 % of perplexity; layers that cost more stay in float32",
    ),
    exporter: Exporter = typer.Option(
        Exporter.auto,
        help="auto: the TorchScript exporter, falling back to the torch.export-based one (dynamo)",
    ),
    repeats: int = typer.Option(
        30, min=1, help="timing effort per latency measurement (30: 0.2 s of blocked autorange)"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace an earlier export of this run"
    ),
):
    """Export a finished run's student to ONNX, checked and timed.

    Writes the student (and teacher) as ONNX under RUN_DIR/export/, checks them against
    PyTorch with ONNX Runtime, optionally quantises the student to int8, times both models in
    PyTorch and ONNX Runtime, and adds it all to summary.json and the report. Exit 2 if a check
    fails."""
    from kdistill.deploy.run_export import export_run
    from kdistill.report import read_summary
    from kdistill.run.lock import holding

    try:
        finished = (Path(run_dir) / "summary.json").exists()
    except OSError as error:  # a name longer than the file system takes
        raise UserError(f"{run_dir[:80]}...: not a usable path ({error.strerror})") from None
    with holding(run_dir):  # a `run --overwrite` of the same run waits for the export, not under it
        if finished:
            read_summary(run_dir)  # a damaged summary is refused before any file is exported
        export_run(
            run_dir,
            int8=int8,
            exporter=exporter.value,
            tolerance=tolerance,
            int8_tolerance=int8_tolerance,
            overwrite=overwrite,
            repeats=repeats,
            echo=typer.echo,
        )


@_verb
def predict(
    export_dir: str = typer.Argument(..., help="an export folder, e.g. runs/mnist_kd/export"),
    inputs: list[str] = typer.Argument(
        ..., help="image files, CSV files of feature rows, or text files (one input per line)"
    ),
):
    """Classify files with an exported student (ONNX Runtime only).

    Prints one line per input: its class and probability. Shows that an export works on its
    own, without PyTorch or kdistill's models."""
    from kdistill.deploy.standalone import predict_files
    from kdistill.run.lock import holding

    with holding(export_dir, shared=True):  # read-only: other readers may share the run
        for result in predict_files(export_dir, inputs):
            typer.echo(f"{result['input']}\t{result['class']}\t{result['probability']:.4f}")


@_verb
def tune(
    recipe: str | None = typer.Argument(
        None, help="recipe YAML; the built-in MNIST recipe if omitted"
    ),
    overrides: list[str] | None = typer.Argument(None, help="key=value, e.g. train.epochs=3"),
    trials: int = typer.Option(20, "--trials", "-n", help="trials to add to the study"),
    teachers: str | None = typer.Option(
        None, help="candidate teachers, comma-separated: zoo model names or YAML teacher sections"
    ),
    methods: str | None = typer.Option(
        None, help="methods to search, comma-separated (default: every logit-only preset)"
    ),
    seed: int = typer.Option(0, help="seed of the sampler"),
):
    """Search temperature, alpha, method and teacher with Optuna.

    Each trial is a run in <output.dir>/<name>-tune/. Resumable: calling again adds trials to
    the same study. Writes best.yaml, trials.md and trials.csv there."""
    from kdistill.run.tune import tune as tune_recipe

    path, overrides = _split_recipe(recipe, overrides)
    split = lambda text: (
        [item.strip() for item in text.split(",") if item.strip()] if text else None
    )
    tune_recipe(
        path,
        trials=trials,
        teachers=split(teachers),
        methods=split(methods),
        overrides=overrides,
        seed=seed,
        echo=typer.echo,
    )


@_verb
def report(run_dir: str = typer.Argument(..., help="a finished run directory, e.g. runs/mnist_kd")):
    """Re-render a run's report and plots from its summary.json."""
    from kdistill.report import render_run
    from kdistill.run.lock import holding

    with holding(run_dir):
        path = render_run(run_dir)
    typer.echo(f"wrote {path} and {path.with_suffix('.html')}")


INPUT_ORDER = ("image", "sequence", "tokens", "recsys")


class Listing(str, Enum):
    methods = "methods"
    models = "models"
    datasets = "datasets"
    losses = "losses"
    taps = "taps"


@_verb(name="list")
def list_(
    what: Listing = typer.Argument(..., help="methods, models, datasets, losses, or taps MODEL"),
    model: str | None = typer.Argument(None, help="for taps: a zoo model name"),
):
    """List models, methods, datasets and more, one name a line.

    `list taps MODEL` shows the module names a term can read from MODEL (its stages
    marked)."""
    if what is Listing.taps:
        from kdistill.models import UnknownModelError, model_taps

        if model is None:
            raise UserError(
                "kdistill list taps MODEL: name a model (`kdistill list models` shows them)"
            )
        try:
            rows = model_taps(model)
        except UnknownModelError as error:
            raise UserError(str(error)) from None
    elif model is not None:
        raise UserError(f"kdistill list {what.value} takes no further argument (got {model!r})")
    elif what is Listing.models:
        from kdistill.models import MODELS

        # Image and sequence models, then those over token ids, then recommenders.
        names = sorted(MODELS, key=lambda name: (INPUT_ORDER.index(MODELS[name].inputs), name))
        rows = [(name, f"[{MODELS[name].inputs}] {MODELS[name].description}") for name in names]
    elif what is Listing.datasets:
        from kdistill.data import DATASETS, describe_dataset

        rows = [(name, describe_dataset(name)) for name in DATASETS]
    elif what is Listing.methods:
        from kdistill.methods import PRESETS, describe_method, describe_settings

        # The settings are the preset's signature: distill.alpha is the distillation term's
        # weight in every method, distill.ce_weight the label term's; the rest go in distill.params.
        rows = [
            (name, f"{describe_method(name)}\n    settings: {describe_settings(name)}")
            for name in PRESETS
        ]
    else:
        from kdistill.losses import LOSSES

        rows = [(name, (fn.__doc__ or "").strip().splitlines()[0]) for name, fn in LOSSES.items()]
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        typer.echo(f"{name:<{width}}  {description}")


# Typer 0.29 raises its own copies of click's exceptions, older ones click's: take the class
# from Typer's own BadParameter, whichever it is.
UsageProblem = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> int:
    """The command line, in this process: ``kdistill ARGS`` as an exit status.

    0 on success, 2 on a usage or user error (one line on stderr naming what is wrong and where
    to look), 1 on a bug (its traceback kept). ``kdistill`` alone prints the help.
    """
    code = _main(argv)
    if code in (0, 2):
        release_process_group()
    return code


def console() -> NoReturn:
    """Entry point of the console script and ``python -m kdistill``: ``main``, then exit.

    A process a launcher started (torchrun, ``accelerate launch``) leaves without the
    interpreter's teardown. ``destroy_process_group`` frees the group only where nothing else
    holds it, and sharded modules, DDP and Accelerate's state still do: the group is then freed
    during teardown, when a Gloo worker that drops its last tensors needs a GIL that is gone, and
    a run that finished and wrote everything dies with SIGABRT ("terminate called without an
    active exception"; pytorch/pytorch#179291). Everything a run writes is closed by then; the
    streams are flushed here."""
    code = main()
    if os.environ.get("LOCAL_RANK") is not None:  # set by torchrun and accelerate launch
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def release_process_group() -> None:
    """Destroy the process group a launched run joined while the interpreter is whole, as
    torch.distributed's documentation asks of every trainer process. Only after an outcome
    every rank reaches (a finished run, a refused recipe): after a bug, one rank may still wait
    in a collective, and tearing the group down under it can hang (torchtitan#1342)."""
    if "torch.distributed" not in sys.modules:  # --help, --version, a listing: torch never came
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _main(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, prog_name="kdistill", standalone_mode=False)
    except UsageProblem as error:
        ctx = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 0
        where = ctx.command_path if ctx is not None else "kdistill"
        message = " ".join(error.format_message().split())  # one line, whatever the message holds
        typer.echo(f"error: {message} (see `{where} --help`)", err=True)
        return 2
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        return 2
    except OSError as error:
        if is_disk_full(error):  # a write with no message of its own (the rest say what they kept)
            full = disk_full(error.filename or Path.cwd(), kept="the files written before it")
            typer.echo(f"error: {full}", err=True)
            return 2
        if error.errno != errno.ENAMETOOLONG:
            raise
        # Only a path the user gave is that long (a recipe, data.path, output.dir, a checkpoint).
        typer.echo(
            f"error: {str(error.filename or 'a path')[:80]}...: "
            "a path longer than the file system allows; shorten it",
            err=True,
        )
        return 2
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    console()
