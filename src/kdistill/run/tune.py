"""``kdistill tune``: an Optuna search over the distillation temperature, α, the method and a
list of candidate teachers, each trial a full ``kdistill run`` into
``<output.dir>/<name>-tune/trial-<k>/``.

Objective: the distilled student's score on the **validation** split at its last epoch (the
weights a run keeps), read from the trial's ``metrics.jsonl``. The test split is never looked at
while searching: choosing among many trials by their test score would fit the test split, and
the best trial's test score would then overstate what the recipe does on new data. Run
``kdistill run best.yaml`` and read its report for an honest test score.

The study lives in ``study.db`` (SQLite) beside the trials; calling ``tune`` again with the same
recipe adds trials to it (resume after an interruption, or search longer). Trials that use the
same teacher share one trained teacher through the teacher store (``<name>-tune/.teachers``).
"""

from __future__ import annotations

import csv
import io
import json
import time
import warnings
from pathlib import Path

import yaml

import kdistill.io.safe_yaml as safe_yaml
from kdistill.errors import ConfigError, UserError, first_difference
from kdistill.run.config import Recipe, TeacherConfig, dump_config, load_config

TUNE_EXTRA = 'pip install "kdistill[tune]" (optuna)'
TEMPERATURE_RANGE = (1.0, 10.0)  # searched on a log scale: 1-2 and 8-10 matter as much as 4-5
ALPHA_RANGE = (0.1, 1.0)  # distill.alpha as each preset reads it (for kd: the KL term's weight)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(f"kdistill tune needs Optuna: {TUNE_EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def logit_methods() -> list[str]:
    """Presets that compare logits only (and use a teacher): safe for any pair of models,
    with no layer names to choose. Whatever presets ``kdistill.methods.PRESETS`` holds."""
    from kdistill.methods import PRESETS, preset_terms

    found = []
    for name in PRESETS:
        try:
            terms = preset_terms(name)
        except (TypeError, ValueError):  # feature methods need layer names
            continue
        if any(t.takes_teacher for t in terms) and all(
            t.student == "logits" and t.teacher in ("logits", None) for t in terms
        ):
            found.append(name)
    return found


def teacher_candidates(specs: list[str], base: TeacherConfig) -> dict[str, dict]:
    """Label → teacher section for each spec: a YAML file holding a teacher section (bare, or
    under ``teacher:``), or a zoo model name (the recipe's teacher settings with that model)."""
    from kdistill.models import MODELS

    candidates = {}
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        path = Path(spec)
        if spec.endswith((".yaml", ".yml")):
            if not path.is_file():
                raise ConfigError(
                    f"--teachers: {path} not found (a YAML teacher section or a zoo model name)"
                )
            try:
                tree = safe_yaml.load_file(path) or {}  # bounded: no alias bomb expands here
            except yaml.YAMLError as error:
                raise ConfigError(f"--teachers: {path}: invalid YAML ({error})") from None
            tree = tree.get("teacher", tree) if isinstance(tree, dict) else tree
            label = path.stem
        elif spec in MODELS:
            tree = {**base.model_dump(mode="json"), "model": spec, "kwargs": {}, "checkpoint": None}
            label = spec
        else:
            raise ConfigError(
                f"--teachers: {spec!r} is neither a .yaml "
                "file nor a zoo model (`kdistill list models`)"
            )
        try:
            teacher = TeacherConfig.model_validate(tree)
        except Exception as error:
            raise ConfigError(
                f"--teachers: {spec}: not a valid teacher section ({str(error).splitlines()[0]})"
            ) from None
        if label in candidates:
            raise ConfigError(f"--teachers: {label!r} is given twice")
        candidates[label] = teacher.model_dump(mode="json")
    return candidates


def trial_recipe(
    base: Recipe,
    params: dict,
    teachers: dict[str, dict],
    *,
    name: str,
    output_dir: str,
    quiet: bool,
) -> Recipe:
    tree = base.model_dump(mode="json")
    tree["name"] = name
    tree["method"], tree["terms"] = params["method"], None
    tree["distill"]["temperature"] = params["temperature"]
    tree["distill"]["alpha"] = params["alpha"]
    tree["teacher"] = teachers[params["teacher"]]
    tree["output"]["dir"] = output_dir
    if quiet:
        tree["output"].update(latency=False, plots=False, progress=False)
    return Recipe.model_validate(tree)


def validation_score(run_dir: Path, metric: str) -> float:
    """The distilled student's ``val/<metric>`` at its last epoch."""
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    last = [r for r in records if r["phase"] == "student"][-1]
    return float(last[f"val/{metric}"])


def tune(
    recipe_path: str | None,
    *,
    trials: int,
    teachers: list[str] | None = None,
    methods: list[str] | None = None,
    overrides: list[str] = (),
    seed: int = 0,
    echo=print,
) -> dict:
    """Run ``trials`` more trials of the study for this recipe; write ``best.yaml``,
    ``trials.csv`` and ``trials.md`` in ``<output.dir>/<name>-tune/``; return the best trial."""
    from kdistill.io.files import atomic_write
    from kdistill.run.pipeline import run as run_recipe
    from kdistill.run.preflight import preflight
    from kdistill.training.selection import NonFiniteLossError

    if trials < 1:
        raise UserError("--trials must be at least 1")
    optuna = _optuna()
    base = load_config(recipe_path, list(overrides))
    if base.train.seeds > 1:
        raise ConfigError(
            f"train.seeds={base.train.seeds}: a trial is one run of one seed; tune with "
            "train.seeds=1, then run the best recipe with --seeds"
        )
    # Bad candidates, methods or data fail before any study exists.
    if teachers:
        teacher_candidates(teachers, base.teacher)
    if methods:
        from kdistill.methods import PRESETS

        unknown = [m for m in methods if m not in PRESETS]
        if unknown:
            raise ConfigError(
                f"--methods: unknown method(s) {', '.join(unknown)} (`kdistill list methods`)"
            )
    task = preflight(base).task  # the whole recipe checked before any study exists
    metric = task.headline
    tune_dir = Path(base.output.dir) / f"{base.name}-tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(tune_dir / 'study.db').resolve()}"
    study = optuna.create_study(
        study_name=base.name,
        storage=storage,
        load_if_exists=True,
        direction="maximize" if task.higher_is_better[metric] else "minimize",
    )
    space = _search_space(study, base, teachers, methods)
    # A fresh seed per call: the same seed on resume would replay the first call's random draws.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    if not study.trials:
        # The first trials are the recipe as written, once with each candidate teacher: every
        # teacher gets a fair baseline before the sampler starts to favour one.
        for teacher in space["teachers"]:
            study.enqueue_trial({**recipe_point(base, space), "teacher": teacher})

    def objective(trial) -> float:
        params = {
            "method": trial.suggest_categorical("method", space["methods"]),
            "teacher": trial.suggest_categorical("teacher", list(space["teachers"])),
            "temperature": trial.suggest_float("temperature", *TEMPERATURE_RANGE, log=True),
            "alpha": trial.suggest_float("alpha", *ALPHA_RANGE),
        }
        recipe = trial_recipe(
            base,
            params,
            space["teachers"],
            name=f"trial-{trial.number}",
            output_dir=str(tune_dir),
            quiet=True,
        )
        if (tune_dir / recipe.name).exists():
            raise UserError(
                f"{tune_dir / recipe.name} exists but study.db "
                "does not know it (was study.db removed?): delete the old trial-* folders, or "
                "choose name= for a new study"
            )
        started = time.perf_counter()
        run_recipe(recipe, echo=lambda *_: None)
        score = validation_score(tune_dir / recipe.name, metric)
        seconds = time.perf_counter() - started
        trial.set_user_attr("run_dir", recipe.name)
        trial.set_user_attr("seconds", round(seconds, 1))
        shown = f"{100 * score:.2f}%" if metric in task.percent else f"{score:.4f}"
        echo(
            f"trial {trial.number}: method={params['method']} teacher={params['teacher']} "
            f"T={params['temperature']:.2f} alpha={params['alpha']:.2f} "
            f"→ val {metric} {shown} ({seconds:.0f} s)"
        )
        return score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notices
        # A trial whose loss diverges is recorded as failed and the search goes on.
        study.optimize(objective, n_trials=trials, catch=(NonFiniteLossError,))

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError(f"no trial of {tune_dir} completed; see the errors above")
    best = study.best_trial
    best_recipe = trial_recipe(
        base,
        best.params,
        space["teachers"],
        name=f"{base.name}-tuned",
        output_dir=base.output.dir,
        quiet=False,
    )
    shown = f"{100 * best.value:.2f}%" if metric in task.percent else f"{best.value:.4f}"
    header = (
        f"# kdistill tune: best of {len(done)} completed "
        f"trial(s) of {tune_dir}/study.db, trial {best.number}:\n# "
        f"validation {metric} {shown} (distilled student, "
        f"last epoch). Run: kdistill run {tune_dir}/best.yaml\n"
    )
    atomic_write(tune_dir / "best.yaml", header + dump_config(best_recipe))
    rows = trial_rows(study, metric)
    atomic_write(tune_dir / "trials.csv", _csv(rows))
    atomic_write(
        tune_dir / "trials.md",
        trials_markdown(rows, metric, task, best.number, base.name, list(space["teachers"])),
    )
    echo(
        f"best: trial {best.number} "
        f"({', '.join(f'{k}={_fmt(v)}' for k, v in best.params.items())}) val {metric} {shown}; "
        f"wrote {tune_dir}/best.yaml, trials.md, trials.csv"
    )
    return {
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "dir": str(tune_dir),
        "trials": len(study.trials),
    }


def recipe_point(base: Recipe, space: dict) -> dict:
    """The recipe's own settings as a point of the search space (so the search starts from, and
    can only improve on, what the user wrote); settings outside the space are left to the
    sampler."""
    import inspect

    from kdistill.methods import PRESETS

    point = {}
    method = base.method if base.method in space["methods"] else None
    if method:
        point["method"] = method
    for name, (low, high) in (("temperature", TEMPERATURE_RANGE), ("alpha", ALPHA_RANGE)):
        value = getattr(base.distill, name)
        if value is None and method:  # unset in the recipe: the preset's published default
            parameter = inspect.signature(PRESETS[method]).parameters.get(name)
            value = (
                None
                if parameter is None or parameter.default is inspect.Parameter.empty
                else parameter.default
            )
        if value is not None and low <= value <= high:
            point[name] = value
    return point


def _search_space(
    study, base: Recipe, teachers: list[str] | None, methods: list[str] | None
) -> dict:
    """The study's fixed search space: chosen on the first call and stored in the study, since
    Optuna cannot change a categorical's choices mid-study. A later call must agree with it."""
    stored = study.user_attrs.get("space")
    base_tree = base.model_dump(mode="json")
    if stored is None:
        candidates = (
            teacher_candidates(teachers, base.teacher)
            if teachers
            else {base.teacher.model: base.teacher.model_dump(mode="json")}
        )
        chosen = list(dict.fromkeys(methods)) if methods else logit_methods()
        space = {"teachers": candidates, "methods": chosen, "recipe": base_tree}
        study.set_user_attr("space", space)
        return space
    changed = first_difference(stored["recipe"], base_tree)
    if changed:
        raise UserError(
            f"the study in {study.study_name}-tune was "
            f"started with a different recipe (at {changed}); resume with the same recipe and "
            "overrides, or change name= for a new study"
        )
    if teachers and list(teacher_candidates(teachers, base.teacher).values()) != list(
        stored["teachers"].values()
    ):
        raise UserError(
            "--teachers differs from the study's "
            f"({', '.join(stored['teachers'])}); omit it to resume, or change name="
        )
    if methods and list(dict.fromkeys(methods)) != stored["methods"]:
        raise UserError(
            "--methods differs from the study's "
            f"({', '.join(stored['methods'])}); omit it to resume, or change name="
        )
    return stored


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_rows(study, metric: str) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                f"val_{metric}": t.value,
                "method": t.params.get("method"),
                "teacher": t.params.get("teacher"),
                "temperature": t.params.get("temperature"),
                "alpha": t.params.get("alpha"),
                "seconds": t.user_attrs.get("seconds"),
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    return rows


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def trials_markdown(
    rows: list[dict], metric: str, task, best: int, name: str, teachers: list[str]
) -> str:
    from kdistill.report import markdown_table

    def score(value):
        if value is None:
            return ""
        return f"{100 * value:.2f}%" if metric in task.percent else f"{value:.4f}"

    key = f"val_{metric}"
    table = [
        [
            f"{r['trial']}{' (best)' if r['trial'] == best else ''}",
            r["state"],
            score(r[key]),
            r["method"] or "",
            r["teacher"] or "",
            _fmt(r["temperature"]) if r["temperature"] else "",
            _fmt(r["alpha"]) if r["alpha"] else "",
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
        ]
        for r in rows
    ]
    better = max if task.higher_is_better[metric] else min
    per_teacher = {teacher: [] for teacher in teachers}
    for r in rows:
        if r[key] is not None:
            per_teacher.setdefault(r["teacher"], []).append(r)
    teacher_table = [
        [
            teacher,
            str(len(rs)),
            score(better(r[key] for r in rs)) if rs else "",
            str(next(r["trial"] for r in rs if r[key] == better(x[key] for x in rs))) if rs else "",
        ]
        for teacher, rs in per_teacher.items()
    ]
    return (
        "\n\n".join(
            [
                f"# {name}: tuning trials",
                f"Objective: the distilled student's validation {metric} at its last epoch "
                "(the test split is not used to choose). The best recipe is `best.yaml`.",
                markdown_table(
                    [
                        "trial",
                        "state",
                        f"val {metric}",
                        "method",
                        "teacher",
                        "temperature",
                        "alpha",
                        "seconds",
                    ],
                    table,
                ),
                "## Teachers",
                markdown_table(
                    ["teacher", "trials", f"best val {metric}", "in trial"], teacher_table
                ),
            ]
        )
        + "\n"
    )
