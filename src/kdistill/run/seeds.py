"""A recipe over several seeds (``kdistill run --seeds N`` or ``train.seeds: N``): one ordinary
run per seed, then one summary of them all.

Seed ``k`` of a recipe named ``<name>`` is the run ``<output.dir>/<name>-seed<s>/`` with
``train.seed = s`` (``s`` = the recipe's ``train.seed`` + ``k``): a run like any other (marker,
list of files, lock, ``--resume``, its own report and paired test-set comparisons), whose teacher
lands in the shared store ``<output.dir>/.teachers`` and is reused when that seed runs again.
The summary lives in ``<output.dir>/<name>/`` (itself a run directory under the same rules):
``seeds.json``, ``seeds.md`` and ``seeds.html``, with the recipe as ``config.yaml``.

Across seeds, the distilled − scratch differences of the headline test metric are tested in
pairs, seed by seed:

- Student's t-interval of their mean (Student, "The probable error of a mean", Biometrika 6(1),
  1908): ``mean ± t(0.975, n−1) · sd / √n``, 95 %;
- the exact sign test (Dixon & Mood, "The statistical sign test", JASA 41(236), 1946): the
  number of seeds on which distillation scored better is Binomial(n, ½) under no effect, seeds
  with no difference left out; the same binomial tail as McNemar's test.

Within each seed, a win, tie or loss is that seed's own paired test on the test samples
(``summary.json``'s ``comparisons.student_vs_scratch``): a win only when its 95 % interval
excludes zero on the good side.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from pydantic import ValidationError

from kdistill.errors import ConfigError, UserError
from kdistill.evaluation.paired import mcnemar_exact
from kdistill.io.files import atomic_write
from kdistill.report import percent_scale, to_markdown
from kdistill.report.html import render_html
from kdistill.run.config import Recipe, describe_validation_error
from kdistill.run.pipeline import run
from kdistill.run.plan import plan
from kdistill.run.rundir import check_run_dir, open_run_dir
from kdistill.training.acceleration import make_accelerator

LEVEL = 0.95
METHOD = (
    "Each seed's verdict is its own paired test on the same test samples (a bootstrap interval "
    "of the difference, McNemar's exact test for accuracy). Across seeds: Student's t-interval "
    "of the mean per-seed difference (95 %) and the exact sign test of its direction."
)
ROLES = (
    ("teacher", "teacher"),
    ("scratch", "student from scratch"),
    ("student", "distilled student"),
)
# Each seed's paired test: its outcome, the count's key in seeds.json, and its words.
OUTCOMES = {
    "win": ("wins", "better"),
    "loss": ("losses", "worse"),
    "tie": ("ties", "no significant difference"),
}


def seed_recipes(recipe: Recipe) -> list[Recipe]:
    """One single-seed recipe per seed: ``<name>-seed<s>`` with ``train.seed = s``."""
    tree = recipe.model_dump(mode="json")
    if recipe.teachers is not None:
        del tree["teacher"]  # an ensemble has no single teacher; both would be refused
    if recipe.terms is not None:
        del tree["method"]
    recipes = []
    for seed in range(recipe.train.seed, recipe.train.seed + recipe.train.seeds):
        name = f"{recipe.name}-seed{seed}"
        tree.update(name=name, train={**tree["train"], "seed": seed, "seeds": 1})
        try:
            Recipe.model_validate(tree)  # the bounds a recipe states: the name's, the seed's
        except ValidationError as error:
            problem = describe_validation_error(error, f"seed {seed} of train.seeds", {})
            raise ConfigError(f"{problem}; use a shorter name= or a smaller train.seed") from None
        # A copy, not the dump read back: what the user left to the data (follows_data, the
        # fields they did not set) is left to it in every seed as in one run.
        single = recipe.model_copy(deep=True)
        single.name, single.train.seed, single.train.seeds = name, seed, 1
        recipes.append(single)
    return recipes


def run_seeds(recipe: Recipe, *, overwrite: bool = False, resume: bool = False, echo=print) -> dict:
    """Run ``recipe`` over its ``train.seeds`` seeds and write the summary of them; returns it.

    Every run directory is checked before the first seed trains, so a clash on the last seed
    does not surface after the others have run. ``--resume`` continues each seed that has a run
    directory (a finished one is read back, not rerun) and starts the others.
    """
    # What the data decides (budget, views, the name) and a train.time_budget's epochs, once
    # for all seeds: every seed trains as many epochs.
    if recipe.follows_data or recipe.train.time_budget is not None:
        plan(recipe)
    parent_dir = Path(recipe.output.dir) / recipe.name
    parts = seed_recipes(recipe)
    started = {
        part.name: resume and (Path(part.output.dir) / part.name / "config.yaml").is_file()
        for part in [recipe, *parts]
    }
    if resume and not any(started.values()):
        raise UserError(
            f"--resume: {parent_dir} holds no seeds run to continue; run without --resume"
        )
    for part in [recipe, *parts]:
        check_run_dir(part, overwrite=overwrite, resume=started[part.name])
    # Under torchrun every process runs each seed; only the main one makes files and speaks,
    # after every process has checked the directories (as the pipeline does for one run).
    train = recipe.train
    accelerator = make_accelerator(
        train.device,
        train.mixed_precision,
        deterministic=train.deterministic,
        compile=train.compile,
        strategy=train.strategy,
    )
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    say = echo if main else lambda *_: None
    parent = open_run_dir(recipe, overwrite=overwrite, resume=started[recipe.name], main=main)
    with parent as run_dir:
        summaries = []
        for part in parts:
            say(f"seed {part.train.seed} ({len(summaries) + 1} of {len(parts)}): {part.name}")
            summaries.append(run(part, overwrite=overwrite, resume=started[part.name], echo=echo))
        if not main:
            return {}
        result = summarize_seeds(recipe, parts, summaries)
        atomic_write(run_dir / "seeds.json", json.dumps(result, indent=2))
        blocks = seeds_blocks(result)
        title = f"{recipe.name}: seeds"
        atomic_write(run_dir / "seeds.html", render_html(blocks, run_dir, title=title))
        atomic_write(run_dir / "seeds.md", to_markdown(blocks))
    echo("")
    echo(to_markdown(blocks[1:]).rstrip("\n"))
    echo(f"Seeds summary written to {run_dir}/seeds.md")
    return result


# --- the statistics -------------------------------------------------------------------------


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (> ½) of Student's t with ``df`` degrees of freedom, by
    bisection of the exact finite series of its distribution for whole ``df`` (Abramowitz &
    Stegun, "Handbook of Mathematical Functions", 1964, 26.7.3 and 26.7.4)."""

    def central(t: float) -> float:  # P(|T| < t)
        theta = math.atan(t / math.sqrt(df))
        cos2, term, total = math.cos(theta) ** 2, 1.0, 1.0
        start = 2 if df % 2 else 1
        for k in range(start, df - 1, 2):  # the series' ratios (k/(k+1)) cos²θ
            term *= k / (k + 1) * cos2
            total += term
        if df % 2 == 0:
            return math.sin(theta) * total
        tail = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
        return 2 / math.pi * (theta + tail)

    target, low, high = 2 * probability - 1, 0.0, 1.0
    while central(high) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if central(middle) < target else (low, middle)
    return (low + high) / 2


def across_seeds(differences: list[float], *, higher_is_better: bool, level: float = LEVEL) -> dict:
    """The paired tests of the per-seed differences: their mean, sd, Student's t-interval (two
    seeds at least) and the exact sign test."""
    n = len(differences)
    mean = statistics.fmean(differences)
    result = {
        "n": n,
        "mean": mean,
        "std": statistics.stdev(differences) if n > 1 else None,
        "level": level,
    }
    good = sum((d > 0) == higher_is_better for d in differences if d != 0)
    bad = sum(d != 0 for d in differences) - good
    result["sign_test"] = {
        "better": good,
        "worse": bad,
        "equal": n - good - bad,
        "p": mcnemar_exact(good, bad),
    }
    if n > 1:
        half = t_quantile((1 + level) / 2, n - 1) * result["std"] / math.sqrt(n)
        low, high = mean - half, mean + half
        result["t_interval"] = [low, high]
        result["better"] = low > 0 if higher_is_better else high < 0
        result["worse"] = high < 0 if higher_is_better else low > 0
    return result


def _outcome(summary: dict) -> str:
    comparison = (summary.get("comparisons") or {}).get("student_vs_scratch")
    if comparison is None:
        raise UserError(
            f"runs of {summary['name']}: its summary.json has no paired comparison (a run from "
            "before kdistill 0.4); rerun the seeds with --overwrite"
        )
    return "win" if comparison["better"] else "loss" if comparison["worse"] else "tie"


def summarize_seeds(recipe: Recipe, parts: list[Recipe], summaries: list[dict]) -> dict:
    """``seeds.json``: each role's mean ± sd per test metric, each seed's paired verdict, and
    the tests across seeds of the headline's distilled − scratch difference."""
    task = summaries[0]["task"]
    headline = task["metrics"][0]
    roles = {}
    for role, _ in ROLES:
        roles[role] = {"model": summaries[0][role]["model"], "params": summaries[0][role]["params"]}
        for metric in task["metrics"]:
            values = [s[role][metric] for s in summaries]
            roles[role][metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "values": values,
            }
    runs = [
        {
            "seed": part.train.seed,
            "run": str(Path(part.output.dir) / part.name),
            "difference": s["student"][headline] - s["scratch"][headline],
            "outcome": _outcome(s),
            "ci": s["comparisons"]["student_vs_scratch"]["ci"],
            "seconds": s.get("seconds"),
        }
        for part, s in zip(parts, summaries)
    ]
    counts = {
        key: sum(r["outcome"] == outcome for r in runs) for outcome, (key, _) in OUTCOMES.items()
    }
    result = {
        "name": recipe.name,
        "seeds": [part.train.seed for part in parts],
        "task": task,
        "metric": headline,
        "roles": roles,
        "runs": runs,
        "student_vs_scratch": {
            **counts,
            **across_seeds(
                [r["difference"] for r in runs], higher_is_better=task["higher_is_better"][headline]
            ),
        },
    }
    result["verdict"] = seeds_verdict(result)
    return result


# --- the words ------------------------------------------------------------------------------


def seeds_verdict(result: dict) -> str:
    """Whether distillation helped across the seeds: "helped" only when the t-interval of the
    per-seed differences excludes zero on the good side."""
    test, task, metric = result["student_vs_scratch"], result["task"], result["metric"]
    scale, unit = percent_scale(metric, task)
    n = test["n"]
    seeds = "seed" if n == 1 else "seeds"
    tally = (
        f"a significant win on its own test set in {test['wins']} of {n} {seeds} "
        f"({test['ties']} ties, {test['losses']} losses)"
    )
    sign = test["sign_test"]
    mean = f"{scale * test['mean']:+.3g}{unit}"
    if n == 1:
        return (
            "One seed: no test across seeds (run two or more); "
            f"distilled − scratch test {metric} {mean}, {tally}."
        )
    low, high = (scale * v for v in test["t_interval"])
    noise = (
        f"distilled − scratch test {metric} {mean} on average, "
        f"{100 * test['level']:.0f} % t-interval [{low:+.3g}, {high:+.3g}] over {n} seeds, "
        f"sign test p = {sign['p']:.2g} (better in {sign['better']} of {n}); {tally}"
    )
    if test["better"]:
        return f"Over {n} seeds distillation helped: {noise}."
    if test["worse"]:
        return f"Over {n} seeds distillation did worse than the scratch student: {noise}."
    opening = "no significant difference between the distilled and the scratch student"
    return f"Over {n} seeds {opening}: {noise}."


def seeds_blocks(result: dict) -> list[tuple]:
    """The seeds summary as report blocks (``report.to_markdown`` and ``render_html``)."""
    task, metric = result["task"], result["metric"]
    n = len(result["runs"])

    def shown(value: float | None, name: str) -> str:
        scale, _ = percent_scale(name, task)
        digits = 2 if scale != 1 else 4
        return "—" if value is None else f"{scale * value:.{digits}f}"

    header = ["model", "parameters"] + [
        f"test {m} (mean ± sd{', %' if m in task['percent'] else ''})" for m in task["metrics"]
    ]
    roles = result["roles"]
    rows = [
        [f"{title} ({roles[role]['model']})", f"{roles[role]['params']:,}"]
        + [
            f"{shown(roles[role][m]['mean'], m)} ± {shown(roles[role][m]['std'], m)}"
            for m in task["metrics"]
        ]
        for role, title in ROLES
    ]
    scale, unit = percent_scale(metric, task)

    def interval(ci: list[float]) -> str:
        return f"[{scale * ci[0]:+.3g}, {scale * ci[1]:+.3g}]"

    per_seed = [
        [str(r["seed"]), f"`{Path(r['run']).name}`"]
        + [shown(roles[role][metric]["values"][i], metric) for role, _ in ROLES]
        + [
            f"{scale * r['difference']:+.3g}{unit} " + interval(r["ci"]),
            OUTCOMES[r["outcome"]][1],
        ]
        for i, r in enumerate(result["runs"])
    ]
    per_seed_header = [
        "seed",
        "run",
        "teacher",
        "scratch",
        "distilled",
        "distilled − scratch (95 % CI)",
        "paired test on the test set",
    ]
    return [
        ("heading", 1, f"{result['name']}: {n} {'seed' if n == 1 else 'seeds'}"),
        ("table", header, rows),
        ("table", per_seed_header, per_seed),
        ("paragraph", result["verdict"]),
        ("paragraph", METHOD),
    ]


__all__ = [
    "across_seeds",
    "run_seeds",
    "seed_recipes",
    "seeds_verdict",
    "summarize_seeds",
    "t_quantile",
]
