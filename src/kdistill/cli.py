"""``kdistill``: the command line. Exit status 0 success, 2 a user error (one line naming the
field or file and the fix), 1 a bug (with its traceback)."""

from __future__ import annotations

import sys
from enum import Enum
from typing import List, Optional

import click
import typer

from kdistill.errors import UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Knowledge distillation: teacher → checked, deployable student.",
)


def _split_recipe(recipe: Optional[str], overrides: Optional[List[str]]):
    """``kdistill run train.epochs=3`` has no recipe: the first argument is an override."""
    overrides = list(overrides or [])
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        return None, [recipe, *overrides]
    return recipe, overrides


@app.command()
def run(
    recipe: Optional[str] = typer.Argument(None, help="recipe YAML; the built-in MNIST recipe if omitted"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value, e.g. train.epochs=3"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoints"),
):
    """Train (or reuse) the teacher, train the student from scratch and with distillation,
    evaluate all three, and write runs/<name>/."""
    from kdistill.config import load_config
    from kdistill.pipeline import run as run_recipe

    path, overrides = _split_recipe(recipe, overrides)
    config = load_config(path, overrides)
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other; choose one")
    run_recipe(config, overwrite=overwrite, resume=resume, echo=typer.echo)


class Listing(str, Enum):
    methods = "methods"
    models = "models"
    datasets = "datasets"
    losses = "losses"


@app.command("list")
def list_(what: Listing = typer.Argument(..., help="methods, models, datasets or losses")):
    """Show what exists, one name a line with a short description."""
    if what is Listing.models:
        from kdistill.models import describe_model, list_models

        rows = [(name, describe_model(name)) for name in list_models()]
    elif what is Listing.datasets:
        from kdistill.data import DATASETS, describe_dataset

        rows = [(name, describe_dataset(name)) for name in DATASETS]
    elif what is Listing.methods:
        from kdistill.methods import PRESETS, describe_method

        rows = [(name, describe_method(name)) for name in PRESETS]
    else:
        from kdistill.losses import LOSSES

        rows = [(name, (fn.__doc__ or "").strip().splitlines()[0]) for name, fn in LOSSES.items()]
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        typer.echo(f"{name:<{width}}  {description}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and ``python -m kdistill``."""
    try:
        app(args=argv, prog_name="kdistill", standalone_mode=False)
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        return 2
    except click.ClickException as error:
        error.show()
        return 2
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
