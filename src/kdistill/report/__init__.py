"""What a run leaves behind for people: the metrics log, the results table, the verdict, plots,
and the report, written twice from one list of blocks: ``report.md`` and a self-contained
``report.html`` (``report_html``)."""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.errors import UserError
from kdistill.io.files import atomic_write
from kdistill.report.history import MetricsLog
from kdistill.report.plots import DIAGNOSTIC_PLOTS, plot_diagnostics, plot_history
from kdistill.report.roles import ROLE_TITLES, ROLES, role_title, table_roles


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _task(summary: dict) -> dict:
    return summary.get("task") or {
        "metrics": ["accuracy"],
        "higher_is_better": {"accuracy": True},
        "percent": ["accuracy"],
    }


def _metric(value: float, name: str, task: dict) -> str:
    return f"{100 * value:.2f}%" if name in task["percent"] else f"{value:.4f}"


def _latency(entry: dict, batch: str, digits: int) -> str:
    """A role's latency cell; a timing too unstable to compare is marked, not hidden."""
    value = (entry.get("latency_ms") or {}).get(batch)
    unstable = " (unstable)" if batch in entry.get("latency_unstable", []) else ""
    return "" if value is None else f"{value:.{digits}f}{unstable}"


def ratio_text(ratio: float | None) -> str:
    """A latency ratio; None when a timing was unresolved or unstable (``deploy.latency``)."""
    return "not measurable at this size" if ratio is None else f"{ratio:.1f}×"


def results_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: the task's metrics, parameters, bytes, latency, and
    (when a method trains any) the parameters its connectors and losses add during training."""
    task = _task(summary)
    metrics = task["metrics"]
    roles = [role for role in table_roles(summary) if summary.get(role)]
    extras = any(summary[role].get("connector_params") for role in roles)
    header = [
        "model",
        *(f"test {m}" for m in metrics),
        "parameters",
        "size on disk",
        "latency b=1 (ms)",
        "latency b=256 (ms)",
        *(["training-only parameters"] if extras else []),
    ]
    rows = []
    for role in roles:
        entry = summary[role]
        rows.append(
            [
                f"{role_title(role)} ({entry['model']})",
                *(_metric(entry[m], m, task) for m in metrics),
                f"{entry['params']:,}",
                _bytes(entry["bytes"]),
                _latency(entry, "batch_1", 3),
                _latency(entry, "batch_256", 2),
                *(
                    [f"{entry['connector_params']:,}" if "connector_params" in entry else ""]
                    if extras
                    else []
                ),
            ]
        )
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, the first column left-aligned and the others right-aligned."""

    def cells(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(header), "|---|" + "---:|" * (len(header) - 1), *map(cells, rows)])


def results_table(summary: dict) -> str:
    """A markdown table of the three models: the task's metrics, parameters, bytes, latency."""
    return markdown_table(*results_rows(summary))


# The comparisons' rows in the report and on the console: (key in summary.json, label).
COMPARISONS = (
    ("student_vs_scratch", "distilled − scratch"),
    ("teacher_vs_student", "teacher − distilled"),
    ("teacher_vs_scratch", "teacher − scratch"),
    ("student_vs_pseudo_labels", "distilled − pseudo-labels"),
    ("pseudo_labels_vs_scratch", "pseudo-labels − scratch"),
)


def percent_scale(metric: str, task: dict) -> tuple[float, str]:
    """How a difference of ``metric`` is shown: ×100 in points where the task shows it as a
    percentage (accuracy), as it is otherwise (perplexity, loss)."""
    return (100, " points") if metric in task["percent"] else (1, "")


def comparison_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired test-set comparisons (``evaluation.paired``): each pair's
    difference, its bootstrap interval, McNemar's p where the outcomes are right/wrong."""
    task = _task(summary)
    found = summary.get("comparisons") or {}
    header = ["comparison", "test difference", "95 % CI", "McNemar p", "verdict"]
    rows = []
    for key, label in COMPARISONS:
        if key not in found:
            continue
        c = found[key]
        scale, unit = percent_scale(c["metric"], task)
        verdict_word = (
            "better" if c["better"] else "worse" if c["worse"] else "no significant difference"
        )
        rows.append(
            [
                f"{label} ({c['metric']})",
                f"{scale * c['difference']:+.3g}{unit}",
                f"[{scale * c['ci'][0]:+.3g}, {scale * c['ci'][1]:+.3g}]",
                f"{c['mcnemar_p']:.2g}" if "mcnemar_p" in c else "",
                verdict_word,
            ]
        )
    return header, rows


def verdict(summary: dict) -> str:
    """Whether distillation paid off, from the run's own numbers and their noise: "helped" only
    when the paired 95 % interval of the test difference excludes zero on the good side; else
    that plainly, then one ``- `` line per likely cause (``diagnostics.likely_causes``). A
    validation curve that points the other way is said too."""
    from kdistill.evaluation.diagnostics import likely_causes
    from kdistill.evaluation.paired import uncertainty

    task = _task(summary)
    headline = task["metrics"][0]
    higher = task["higher_is_better"][headline]
    teacher, scratch, student = (summary[r][headline] for r in ROLES)
    scale, unit = percent_scale(headline, task)
    comparison = (summary.get("comparisons") or {}).get("student_vs_scratch")
    if comparison is None:  # a summary.json from before the paired tests
        noise = f"{scale * (student - scratch):+.4g}{unit}, no paired test in this summary: rerun"
    else:
        noise = uncertainty(comparison, scale=scale, unit=unit)
    disagreement = validation_disagreement(summary, comparison)
    compression = summary["teacher"]["params"] / max(summary["student"]["params"], 1)
    if comparison is not None and comparison["better"]:
        gap = teacher - scratch
        recovered = (
            f", recovering {100 * (student - scratch) / gap:.0f}% of the teacher–scratch gap"
            if gap and (gap > 0) == higher
            else ""
        )
        return (
            f"Distillation helped: the distilled student's test {headline} differs from the same "
            f"student trained from scratch by {noise}{recovered}, with {compression:.1f}× fewer "
            f"parameters than the teacher.{disagreement}"
        )
    causes = "\n".join(f"- {cause}" for cause in likely_causes(summary))
    worse = comparison is not None and comparison["worse"]
    opening = (
        "Distillation did worse than the scratch student"
        if worse
        else "No significant difference between the distilled and the scratch student"
    )
    return (
        f"{opening} (test {headline} {noise}).{disagreement} "
        f"Likely causes, from this run's own numbers:\n{causes}"
    )


def validation_disagreement(summary: dict, comparison: dict | None) -> str:
    """One sentence when the students' final validation scores rank them the other way round
    from the test set, else ``""``."""
    final = summary.get("validation") or {}
    if comparison is None or not {"student", "scratch"} <= set(final):
        return ""
    task = _task(summary)
    headline = task["metrics"][0]
    sign = 1 if task["higher_is_better"][headline] else -1
    on_validation = sign * (final["student"] - final["scratch"])
    on_test = sign * comparison["difference"]
    if on_validation * on_test >= 0:
        return ""
    ahead, behind = ("distilled", "scratch") if on_validation > 0 else ("scratch", "distilled")
    key = {"distilled": "student", "scratch": "scratch"}
    return (
        f" The validation curves point the other way: the {ahead} student's final validation "
        f"{headline} ({_metric(final[key[ahead]], headline, task)}) is better than the {behind} "
        f"student's ({_metric(final[key[behind]], headline, task)}), while the test set favours "
        f"the {behind} student; repeat with other seeds before relying on either."
    )


def students_sentence(summary: dict) -> str:
    """That the scratch student is the fair baseline:
    the distilled student's training, unchanged."""
    students = summary.get("students")
    if not students:
        return ""
    mix = students["mix"]
    scratch_mix = students.get("scratch_mix", mix)
    if scratch_mix != mix:  # the scratch student's own mixing, chosen because it makes it stronger
        own = f"{scratch_mix} on the mixed labels" if scratch_mix != "none" else "no mixing"
        sentence = (
            f" Both students train {students['epochs']} epochs with augmentation "
            f"{students['augment']}; the distilled student's images are mixed ({mix}, λ ~ "
            f"Beta({students['mix_alpha']:g}, "
            f"{students['mix_alpha']:g})), the scratch student's get {own} (train.scratch_mix), "
            "the stronger baseline for this student."
        )
    else:
        # λ, not α: the mixing weight's Beta(α, α) is not distill.alpha, which the report shows too.
        mixing = (
            f", {mix} (λ ~ Beta({students['mix_alpha']:g}, {students['mix_alpha']:g}); the "
            "scratch student on the mixed labels)"
            if mix != "none"
            else ", no mixing"
        )
        sentence = (
            f" Both students train alike: {students['epochs']} epochs, augmentation "
            f"{students['augment']}{mixing}; the scratch "
            "student is the same training without the teacher."
        )
    budget = students.get("budget")
    if budget:
        share = budget["labelled_share"]
        mix = "in their natural proportion" if share is None else f"{share:g} of them labelled"
        sentence += (
            f" Every student takes the same {budget['steps_per_epoch']:,} optimizer steps per "
            f"epoch: the distilled student draws {budget['samples_per_epoch']:,} samples an "
            f"epoch from the labelled and the transfer set ({mix}), the scratch student as many "
            "from the labelled data alone, repeated."
        )
        if budget["pseudo_labels"]:
            sentence += (
                " The pseudo-label student (self-training) draws them as the distilled student "
                "does, the transfer set carrying the teacher's hard labels."
            )
    if students.get("views"):
        sentence += (
            f" The teacher scores {students['views']} "
            "distinct views of each image, repeated in turn (train.views); "
            "the scratch student gets a new view every epoch."
        )
    teacher_augment = students.get("teacher_augment")
    if students["augment"] == "none" and teacher_augment:
        sentence += (
            f" The teacher trained with {teacher_augment} "
            "augmentation and the students without it, so this scratch student is not the "
            "strongest baseline: trained with "
            f"train.augment={teacher_augment} it does better on its own."
        )
    return sentence


def tokenizers_sentence(data: dict) -> str:
    """Across tokenizers: what the scores mean and how much of the text the losses compare."""
    alignment = data.get("alignment")
    if not alignment:
        return ""
    shares = ", ".join(
        f"{split} {stats['aligned_bytes']:.1%}" for split, stats in alignment.items()
    )
    return (
        f" The student reads its own tokenizer ({Path(data['student_tokenizer']).name}, "
        f"{data['vocab_size']:,} entries), the teacher its own ({data['teacher_vocab_size']:,}): "
        "each model is scored in bits per byte over the UTF-8 bytes of the tokens it predicts in "
        "the same test windows, so the comparisons pair window by window. Share of the students' "
        f"target bytes in a chunk both tokenizations cover (what the loss compares): {shares}."
    )


def report_blocks(summary: dict, plots: list[Path]) -> list[tuple]:
    sizes = ", ".join(f"{k} {v}" for k, v in summary["data"]["sizes"].items())
    lines = verdict(summary).split("\n")
    source = summary.get("teacher", {}).get("source")  # trained, reused, loaded from a file ...
    teacher = f" Teacher: {source}." if source else ""
    taught = summary["data"].get("teacher_data")  # teacher.data: rest
    if taught:
        teacher += (
            f" The teacher also learnt from {taught['rest']:,} labelled samples no student sees "
            "(teacher.data: rest"
            + (", the half of the rest the transfer set is not" if taught["halves"] else "")
            + "): it knows more than the students' labels."
        )
    blocks = [
        ("heading", 1, f"{summary['name']}: {summary['method']} distillation"),
        (
            "paragraph",
            f"Data: {summary['data']['dataset']} ({sizes}); scores on the held-out test "
            f"split.{teacher}{tokenizers_sentence(summary['data'])}{students_sentence(summary)}",
        ),
        ("table", *results_rows(summary)),
    ]
    header, rows = comparison_rows(summary)
    if rows:
        blocks.append(
            (
                "paragraph",
                (
                    "Paired comparisons on the test set: the "
                    "difference in the headline metric, its 95 % paired bootstrap interval and, "
                    "for accuracy, McNemar's exact test."
                ),
            )
        )
        blocks.append(("table", header, rows))
    blocks.append(("paragraph", lines[0]))
    if len(lines) > 1:
        blocks.append(("list", [line.removeprefix("- ") for line in lines[1:]]))
    blocks.append(
        (
            "paragraph",
            "Latency: median of repeated CPU forward passes "
            f"on {summary['latency_threads']} thread(s). "
            f"Total run time {summary['seconds']:.0f} s.",
        )
    )
    diagnostic_plots = sorted(
        (p for p in plots if p.stem in DIAGNOSTIC_PLOTS),
        key=lambda p: DIAGNOSTIC_PLOTS.index(p.stem),
    )
    blocks += diagnostics_blocks(summary.get("diagnostics"), diagnostic_plots)
    blocks += export_blocks(summary.get("export"), _task(summary))
    blocks += samples_blocks(summary.get("samples"))
    training_plots = [p for p in plots if p.stem not in DIAGNOSTIC_PLOTS]
    if training_plots:
        blocks.append(("heading", 2, "Training"))
        blocks += [("image", f"plots/{p.name}", p.stem) for p in training_plots]
    return blocks


def diagnostics_blocks(diagnostics: dict | None, plots: list[Path]) -> list[tuple]:
    if not diagnostics:
        return []
    roles = [r for r in ROLES if r in diagnostics["ece"]]
    agree, kl = diagnostics.get("agreement", {}), diagnostics.get("kl_to_teacher", {})
    rows = [
        [
            ROLE_TITLES[r],
            f"{100 * agree[r]:.2f}%" if r in agree else "",
            f"{kl[r]:.4f}" if r in kl else "",
            f"{diagnostics['ece'][r]:.4f}",
            f"{diagnostics['mean_confidence'][r]:.4f}",
        ]
        for r in roles
    ]
    blocks = [
        ("heading", 2, f"Diagnostics ({diagnostics['split']} split, {diagnostics['n']} samples)"),
        (
            "table",
            [
                "model",
                "top-1 agreement with teacher",
                "mean KL(teacher ‖ model), nats",
                "ECE",
                "mean confidence",
            ],
            rows,
        ),
        ("paragraph", f"Calibration: {diagnostics['binning']}."),
    ]
    names = diagnostics["class_names"]
    if len(names) <= 20:  # beyond that a per-class table is a wall of numbers; see summary.json
        per_class = diagnostics["per_class_accuracy"]
        blocks += [
            ("heading", 3, "Per-class accuracy"),
            (
                "table",
                ["class", *(ROLE_TITLES[r] for r in roles)],
                [
                    [
                        name,
                        *(
                            "" if per_class[r][i] is None else f"{100 * per_class[r][i]:.1f}%"
                            for r in roles
                        ),
                    ]
                    for i, name in enumerate(names)
                ],
            ),
        ]
    blocks += [("image", f"plots/{p.name}", p.stem) for p in plots]
    return blocks


def samples_blocks(samples: list[dict] | None) -> list[tuple]:
    """Generated text: each prompt, then every model's continuation (same prompt, same seed)."""
    if not samples:
        return []

    def shown(text: str) -> str:  # one table cell: line breaks as ⏎, markdown code spans kept
        return "`" + text.replace("`", "'").replace("\n", "⏎") + "`"

    blocks = [
        ("heading", 2, "Generated samples"),
        ("paragraph", "Each model continues the same test prompts with the same random seed."),
    ]
    for number, row in enumerate(samples, 1):
        models = [k for k in row if k != "prompt"]
        blocks.append(
            (
                "table",
                [f"prompt {number}", shown(row["prompt"])],
                [[ROLE_TITLES.get(m, m), shown(row[m])] for m in models],
            )
        )
    return blocks


def _drop_text(check: dict, task: dict) -> str:
    """An int8 check's tolerance in its unit (``deploy.run_export.drop_unit``); summaries
    written before the unit was recorded held points of a percentage metric, else absolutes."""
    unit = check.get("drop_unit") or (
        "points" if check["metric"] in task["percent"] else "absolute"
    )
    tolerance = check["tolerance"]
    if unit == "points":
        return f"{100 * tolerance:g} points"
    return f"{100 * tolerance:g} %" if unit == "percent" else f"{tolerance:g}"


def export_blocks(export: dict | None, task: dict) -> list[tuple]:
    """The ``kdistill export`` results: files, parity, latency, throughput, ratios."""
    if not export:
        return []
    blocks = [
        ("heading", 2, "Deployment: ONNX"),
        (
            "paragraph",
            f"Exported with the {export['exporter']} "
            f"exporter (opset {export['opset']}); checked and timed with ONNX Runtime "
            f"{export['versions']['onnxruntime']} on {export['threads']} "
            f"CPU thread(s). Parity: largest |ONNX − PyTorch| over the logits of "
            f"{export['parity_samples']} test samples.",
        ),
    ]
    rows = []
    for key, check in export["checks"].items():
        detail = (
            f"≤ {check['tolerance']:g}"
            if check["kind"] == "logits"
            else (
                f"test {check['metric']} {_metric(check['reference'], check['metric'], task)} → "
                f"{_metric(check['value'], check['metric'], task)}, drop ≤ "
                + _drop_text(check, task)
                + (
                    f"; kept in float32: {', '.join(check['kept_float32'])}"
                    if check.get("kept_float32")
                    else ""
                )
            )
        )
        rows.append(
            [
                key,
                export["files"][check["file"]]["path"],
                _bytes(export["files"][check["file"]]["bytes"]),
                f"{check['max_abs_diff']:.2e}",
                detail,
                "passed"
                if check["passed"]
                else ("FAILED" if key.startswith("student") else "above (recorded only)"),
            ]
        )
    blocks.append(
        ("table", ["check", "file", "size on disk", "max abs diff", "criterion", "result"], rows)
    )
    rows = []
    large = export.get("batches", [1, 256])[-1]  # summaries before "batches" timed at 256
    for model, runtimes in export["latency_ms"].items():
        for runtime, latency in runtimes.items():
            rows.append(
                [
                    model,
                    runtime,
                    f"{latency['batch_1']:.3f}",
                    f"{latency[f'batch_{large}']:.2f}",
                    f"{export['throughput'][model][runtime]:,.0f}",
                ]
            )
    blocks.append(
        (
            "table",
            [
                "model",
                "runtime",
                "latency b=1 (ms)",
                f"latency b={large} (ms)",
                f"throughput b={large} (samples/s)",
            ],
            rows,
        )
    )
    ratios = "; ".join(
        f"{runtime}: {ratio_text(r['batch_1'])} at batch 1, "
        f"{ratio_text(r[f'batch_{large}'])} at batch {large}"
        for runtime, r in export["latency_ratio"].items()
    )
    blocks.append(("paragraph", f"Teacher / student latency: {ratios}."))
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "heading":
            out.append("#" * rest[0] + " " + rest[1])
        elif kind == "paragraph":
            out.append(rest[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "table":
            out.append(markdown_table(*rest))
        elif kind == "image":
            out.append(f"![{rest[1]}]({rest[0]})")
    return "\n\n".join(out) + "\n"


def write_report(run_dir: str | Path, summary: dict, plots: list[Path]) -> Path:
    """Write ``report.md`` and its self-contained twin
    ``report.html``; returns the markdown path."""
    from kdistill.report.html import render_html

    run_dir = Path(run_dir)
    blocks = report_blocks(summary, plots)
    atomic_write(
        run_dir / "report.html",
        render_html(blocks, run_dir, title=f"{summary['name']} — kdistill report"),
    )
    return atomic_write(run_dir / "report.md", to_markdown(blocks))


def existing_plots(run_dir: str | Path) -> list[Path]:
    """The plots a run already drew, training curves first (to re-render a report without
    redrawing them)."""
    plots = sorted(Path(run_dir, "plots").glob("*.png"))
    return sorted(plots, key=lambda p: (p.stem in DIAGNOSTIC_PLOTS, p.stem != "loss_terms", p.name))


def read_summary(run_dir: str | Path) -> dict:
    """A finished run's ``summary.json``, checked to be one that a report can be made of: a
    damaged or edited file is refused in one line (exit 2) before anything is written, not
    halfway through a report or an export."""
    path = Path(run_dir) / "summary.json"
    try:
        found = path.is_file()
    except OSError as error:  # a name longer than the file system takes
        raise UserError(f"{str(run_dir)[:80]}...: not a usable path ({error.strerror})") from None
    if not found:
        raise UserError(
            f"{run_dir}: no summary.json here; pass the directory of a finished `kdistill run`"
        )
    try:
        summary = json.loads(path.read_bytes())
    except OSError as error:
        raise UserError(f"{path}: cannot read it ({error.strerror})") from None
    except ValueError as error:  # not JSON, or not UTF-8
        raise UserError(f"{path}: not valid JSON ({str(error)[:120]}); rerun the run") from None
    try:
        report_blocks(summary, [])  # reads every field a report, a resume or an export shows
        summary["name"]  # noqa: B018 (presence check: the report's title)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise UserError(
            f"{path}: damaged or edited ({type(error).__name__}: "
            f"{str(error)[:80]}); rerun the run with --overwrite"
        ) from None
    return summary


def render_run(run_dir: str | Path) -> Path:
    """Re-render a finished run's report from its ``summary.json`` and ``metrics.jsonl``
    (``kdistill report``); plots are redrawn when the run has a ``plots/`` folder."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    plots = []
    if (run_dir / "plots").is_dir():
        history = MetricsLog(run_dir / "metrics.jsonl").read()
        plots = (plot_history(history, run_dir / "plots") if history else []) + plot_diagnostics(
            summary.get("diagnostics"), run_dir / "plots"
        )
    return write_report(run_dir, summary, plots)
