"""Trackers that mirror ``metrics.jsonl`` (which stays the source of truth): Accelerate's own
integrations (``accelerate.tracking``), local files only, inside the run directory.

TensorBoard event files go to ``<run>/tensorboard/<phase>/``, a local MLflow file store to
``<run>/mlruns/``, W&B in offline mode to ``<run>/wandb/``. Each trained phase (teacher,
scratch, student...) is its own tracker run, its recipe stored as hyper-parameters; it receives
every epoch record (every term, the learning rate, validation metrics, throughput) and, every
``output.log_every`` steps, the running means of the epoch so far.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from kdistill.errors import ConfigError
from kdistill.io.manifest import record_tree

# The package each tracker needs, and where its files go inside the run directory.
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
FOLDERS = {"tensorboard": "tensorboard", "mlflow": "mlruns", "wandb": "wandb"}


def check_installed(names: list[str]) -> None:
    """Refuse a tracker whose package is missing, before anything runs."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"output.report_to: {name} is not installed; "
                f"pip install {PACKAGES[name]} (or remove it)"
            )


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 0.1}}`` → ``{"train.lr": 0.1}``; values a tracker cannot store as a
    hyper-parameter (lists, None) become text."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def numbers(record: dict) -> dict:
    """What a tracker plots: every number of a record, with samples per second derived."""
    values = {
        k: v
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")
    }
    if record.get("samples") and record.get("seconds"):
        values["samples_per_s"] = record["samples"] / record["seconds"]
    return values


class Trackers:
    """The run's trackers; call only on the main process. ``names`` empty: does nothing."""

    def __init__(self, names: list[str], run_dir: Path, *, hyperparameters: dict):
        check_installed(names)
        self.names, self.run_dir, self.hyperparameters = (
            list(names),
            Path(run_dir),
            flat(hyperparameters),
        )
        self.open: dict[str, list] = {}

    def _phase(self, phase: str) -> list:
        if phase not in self.open:
            self.open[phase] = [self._start(name, phase) for name in self.names]
        return self.open[phase]

    def _start(self, name: str, phase: str):
        from accelerate import tracking

        folder = self.run_dir / FOLDERS[name]
        if name == "tensorboard":
            tracker = tracking.TensorBoardTracker(phase, folder)
        elif name == "mlflow":
            import mlflow

            # Accelerate's logging_dir is only where artifacts go; the runs themselves go to the
            # tracking store, which would default to a database in the current directory.
            folder.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(f"sqlite:///{(folder / 'mlflow.db').resolve()}")
            tracker = tracking.MLflowTracker(
                experiment_name=self.run_dir.name,
                logging_dir=folder.resolve().as_uri(),
                run_name=phase,
            )
        else:
            os.environ.setdefault("WANDB_MODE", "offline")  # never the network
            # One W&B run per phase, as for the other trackers: phases run one after the other, so
            # starting the next finishes the last (wandb.init would otherwise return the open one).
            tracker = tracking.WandBTracker(
                self.run_dir.name,
                name=phase,
                dir=str(folder),
                mode="offline",
                reinit="finish_previous",
            )
        folder.mkdir(parents=True, exist_ok=True)
        tracker.start()
        tracker.store_init_configuration(self.hyperparameters)
        return tracker

    def log_step(self, record: dict) -> None:
        self._log(record, prefix="step/")

    def log_epoch(self, record: dict) -> None:
        self._log(record, prefix="")

    def _log(self, record: dict, prefix: str) -> None:
        if not self.names:
            return
        values = {f"{prefix}{k}": v for k, v in numbers(record).items()}
        for tracker in self._phase(record["phase"]):
            tracker.log(values, step=record["step"])

    def finish_phase(self) -> None:
        """Close every open tracker run (their files are complete on disk)."""
        for trackers in self.open.values():
            for tracker in trackers:
                tracker.finish()
        self.open.clear()
        for name in self.names:  # third-party code chose their files: listed once closed
            record_tree(self.run_dir / FOLDERS[name])
