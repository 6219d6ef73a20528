"""``kdistill export RUN_DIR``: from a finished run to deployable, checked files.

Rebuilds the teacher and the distilled student from the run's ``config.yaml`` and checkpoints,
writes them as ONNX under ``RUN_DIR/export/``, checks the student against PyTorch with ONNX
Runtime (logits within ``tolerance`` on a batch of test samples and on a single sample, which
also proves the dynamic batch axis), optionally quantises it to int8 (dynamic quantisation, the
layers that cost most kept in float32 until it is within ``int8_tolerance`` on the validation
split: ``deploy.int8``; judged by the test score it loses), times teacher and student in
PyTorch and in ONNX Runtime at batch 1 and 256 (fewer where outputs are large: a language
model's logits), and records everything under ``"export"`` in
``summary.json`` and in the report. Part of the composition root, like ``pipeline``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from kdistill.deploy.int8 import DROP_TEXT, drop_unit, quantise_within, score_drop
from kdistill.deploy.latency import MIN_RUN_TIME, latency_ratio, measure_latency
from kdistill.deploy.onnx import (
    OrtModel,
    batch_rows,
    export_onnx,
    max_abs_diff,
    measure_ort_latency,
    ort_session,
    parity,
    require_onnx,
)
from kdistill.deploy.standalone import TOKENIZER_FILE, model_card, preprocessing, write_metadata
from kdistill.errors import UserError
from kdistill.io.manifest import record, unrecorded
from kdistill.io.weights import load_weights
from kdistill.modeling import call_model, model_inputs
from kdistill.teachers.onnx import OnnxModel

PARITY_TOLERANCE = 1e-4  # max |ONNX − PyTorch| over fp32 logits
# The largest acceptable loss of the headline test score for int8, in score_drop's unit:
# 0.01 = 1 point of accuracy (or of any rate), 1 % of perplexity.
INT8_TOLERANCE = 0.01
SELECTION_SAMPLES = 1024  # training samples int8's fall-back reads in a run with no validation
PARITY_SAMPLES = 256
LARGEST_BATCH = 256  # the timing batches: 1, and this where the outputs fit the budget below
OUTPUT_BUDGET = 256 * 2**20  # bytes of one model's outputs for the samples run at once
FILES = {
    "student": "student.onnx",
    "student_int8": "student.int8.onnx",
    "teacher": "teacher.onnx",
    "tokenizer": TOKENIZER_FILE,
    "card": "README.md",
}


class ExportCheckError(UserError):
    """An exported model failed its parity or accuracy check (the results are still written)."""


def run_roles(run_dir: Path) -> tuple[dict, dict]:
    """The finished run's summary and the roles it recorded (``roles``: architecture and
    checkpoint of each model), checked to hold a student and a teacher with their files."""
    if not run_dir.is_dir():
        raise UserError(
            f"{run_dir}: no such run directory; pass the "
            "folder a `kdistill run` wrote (runs/<name>)"
        )
    for needed in ("config.yaml", "summary.json"):
        if not (run_dir / needed).is_file():
            raise UserError(
                f"{run_dir}: {needed} is missing; export needs a finished `kdistill run` directory"
            )
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        roles = summary["roles"]
        for role in ("student", "teacher"):
            roles[role]["architecture"], roles[role]["file"]  # noqa: B018 (presence check)
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            f"{run_dir}/summary.json is not the summary of a finished "
            "run (no roles of student and teacher); rerun the run"
        ) from None
    for role in ("student", "teacher"):
        file = roles[role]["file"]
        inside = isinstance(file, str) and (run_dir / file).resolve().is_relative_to(
            run_dir.resolve()
        )
        if not inside:
            raise UserError(
                f"{run_dir}/summary.json: roles.{role}.file is not a file of the run; rerun the run"
            )
        if not (run_dir / roles[role]["file"]).is_file():
            raise UserError(
                f"{run_dir}: {roles[role]['file']} is missing; export needs the {role}'s weights"
            )
    return summary, roles


def export_run(
    run_dir: str | Path,
    *,
    int8: bool = True,
    exporter: str = "auto",
    tolerance: float = PARITY_TOLERANCE,
    int8_tolerance: float = INT8_TOLERANCE,
    overwrite: bool = False,
    repeats: int = 30,
    echo=print,
) -> dict:
    """Export, check and time a run's models; returns the ``"export"`` entry of its summary.

    Raises ``ExportCheckError`` (after writing every file and number) when the student's fp32
    parity or its int8 score is outside tolerance; the teacher's own parity is recorded only.
    """
    from kdistill.evaluation import task_for
    from kdistill.io.files import atomic_write
    from kdistill.report import existing_plots, ratio_text, write_report
    from kdistill.run.config import load_config
    from kdistill.run.plan import build_architecture, eval_loader, load_data

    run_dir = Path(run_dir)
    summary, roles = run_roles(run_dir)
    onnx, ort = require_onnx()
    out = run_dir / "export"
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds an export: pass --overwrite to replace it")

    recipe = load_config(run_dir / "config.yaml", code_beside=False)
    splits = load_data(recipe)
    task = task_for(splits)
    models = {}
    for role in ("student", "teacher"):
        architecture, path = roles[role]["architecture"], run_dir / roles[role]["file"]
        if (
            "onnx" in architecture
        ):  # a teacher given as ONNX: the run's own copy, wherever export runs
            architecture = {**architecture, "onnx": str(path)}
        model = build_architecture(architecture, splits, field=f"roles.{role}")
        try:
            load_weights(model, path)
        except UserError:
            raise
        except Exception as error:
            raise UserError(
                f"{path} does not fit the {role}'s architecture recorded in summary.json "
                f"({str(error).splitlines()[0][:200]})"
            ) from None
        models[role] = model.eval()
    out.mkdir(exist_ok=True)
    # No stale file from an earlier export survives, and no file of the user's goes with them.
    stale = [out / name for name in FILES.values()] + sorted((out / "hf_student").glob("*"))
    strangers = unrecorded(stale)
    if strangers:
        raise UserError(
            f"{strangers[0]} is not a file kdistill wrote (or changed since); "
            "move it away before export --overwrite"
        )
    for path in stale:
        path.unlink(missing_ok=True)
    if (out / "hf_student").is_dir():
        (out / "hf_student").rmdir()

    test_loader = eval_loader(splits.test, recipe)
    sample = next(iter(DataLoader(splits.test, batch_size=PARITY_SAMPLES)))["input"]
    single = next(iter(DataLoader(splits.test, batch_size=1)))["input"]
    n_sample = len(next(iter(sample.values()))) if isinstance(sample, dict) else len(sample)
    example = splits.test[0]["input"]
    threads = torch.get_num_threads()
    # What each model reads of a batch: its own tokenisation when the student has its own tokenizer.
    inputs = {
        role: {
            name: model_inputs(model, value)
            for name, value in (("sample", sample), ("single", single), ("example", example))
        }
        for role, model in models.items()
    }

    files, checks, sessions, exporters = {}, {}, {}, {}
    # The most samples at a time whose outputs fit the budget: parity, tracing and timing.
    rows = output_batch(models, {role: inputs[role]["single"] for role in models})
    metadata = standalone_metadata(recipe, summary, splits, inputs["student"]["example"], out)
    # Listed as ours once copied, as replace_atomically lists the ONNX files once written: an
    # export stopped half-way leaves nothing a later `export --overwrite` must refuse to replace.
    record(*(path for path in [out / TOKENIZER_FILE] if path.is_file()))
    for role, model in models.items():
        path = out / FILES[role]
        if isinstance(
            model, OnnxModel
        ):  # already a graph: tracing its session would record constants
            shutil.copyfile(model.path, path)
            exporters[role] = "copied"
        else:
            # traced on a few samples (at least 2, so the batch axis stays dynamic)
            traced = next(batch_rows(inputs[role]["sample"], max(rows, 2)))
            exporters[role] = export_onnx(model, traced, path, exporter=exporter)
        write_metadata(
            path, {**metadata, "kdistill.test": json.dumps(_score(summary, role, task.headline))}
        )
        sessions[role] = ort_session(path, threads=threads)
        files[role] = {"path": str(path.relative_to(run_dir)), "bytes": path.stat().st_size}
        diff = max(
            max_abs_diff(model, sessions[role], inputs[role]["sample"], rows=rows),
            max_abs_diff(model, sessions[role], inputs[role]["single"]),
        )
        checks[f"{role} fp32"] = {
            "kind": "logits",
            "file": role,
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "passed": diff <= tolerance,
            "samples": n_sample,
        }
        how = (
            "the teacher's own graph, copied"
            if exporters[role] == "copied"
            else f"{exporters[role]} exporter"
        )
        echo(
            f"{path.relative_to(run_dir)} ({how}, {files[role]['bytes']:,} bytes): "
            f"max |ONNX Runtime − PyTorch| = {diff:.2e} on {n_sample} test samples and batch 1 "
            f"(tolerance {tolerance:g}): {_verdict(diff <= tolerance, role)}"
        )

    headline = task.headline
    higher = task.higher_is_better[headline]
    unit = drop_unit(headline, percent=headline in task.percent)  # of int8's drop
    reference = task.evaluate(models["student"], test_loader)[headline]
    onnx_score = task.evaluate(OrtModel(sessions["student"]), test_loader)[headline]
    checks["student fp32"].update(metric=headline, reference=reference, value=onnx_score)
    if int8:
        path = out / FILES["student_int8"]
        selection_loader = eval_loader(selection_split(splits), recipe)
        selection_reference = task.evaluate(OrtModel(sessions["student"]), selection_loader)

        def drop_of(candidate: Path) -> float:
            session = ort_session(candidate, threads=threads)
            value = task.evaluate(OrtModel(session), selection_loader)[headline]
            return score_drop(
                headline, selection_reference[headline], value, higher_is_better=higher
            )

        try:
            decision = quantise_within(
                out / FILES["student"],
                path,
                drop_of,
                int8_tolerance,
                echo=echo,
                shown=DROP_TEXT[unit],
            )
        except Exception as error:
            raise UserError(
                "int8 quantisation of the student failed "
                f"({str(error).splitlines()[0][:200]}); rerun with --no-int8"
            ) from None
        write_metadata(path, metadata)
        sessions["student_int8"] = ort_session(path, threads=threads)
        files["student_int8"] = {
            "path": str(path.relative_to(run_dir)),
            "bytes": path.stat().st_size,
        }
        value = task.evaluate(OrtModel(sessions["student_int8"]), test_loader)[headline]
        drop = score_drop(headline, reference, value, higher_is_better=higher)
        diff, agree = parity(
            models["student"], sessions["student_int8"], inputs["student"]["sample"], rows=rows
        )
        checks["student int8"] = {
            "kind": "score",
            "file": "student_int8",
            "metric": headline,
            "reference": reference,
            "value": value,
            "drop": drop,
            "tolerance": int8_tolerance,
            "passed": drop <= int8_tolerance,
            "max_abs_diff": diff,
            "top1_agreement_with_fp32": agree,
            "samples": n_sample,
            "drop_unit": unit,
            "kept_float32": decision["kept_float32"],
            "selection": {**decision, "split": selection_name(splits)},
        }
        percent = headline in task.percent
        shown = (lambda v: f"{100 * v:.2f}%") if percent else (lambda v: f"{v:.4f}")
        in_unit = DROP_TEXT[unit]
        kept = (
            f"; kept in float32: {', '.join(decision['kept_float32'])} "
            f"({decision['kept_nodes']} nodes, chosen on the {selection_name(splits)} split)"
            if decision["kept_float32"]
            else ""
        )
        echo(
            f"{path.relative_to(run_dir)} ({files['student_int8']['bytes']:,} bytes): max |int8 "
            f"− PyTorch fp32| = {diff:.2e}, top-1 agreement {100 * agree:.1f}%; test {headline} "
            f"{shown(reference)} → {shown(value)} (drop {in_unit(drop)}, tolerance "
            f"{in_unit(int8_tolerance)}): "
            f"{'passed' if drop <= int8_tolerance else 'FAILED'}{kept}"
        )

    timing = {"min_run_time": MIN_RUN_TIME * repeats / 30}  # --repeats 30: torch's own 0.2 s
    batches = (1, rows)

    def each_batch(measure, runner, example) -> dict:
        return {f"batch_{b}": measure(runner, example, batch_size=b, **timing) for b in batches}

    timings = {}
    for role, model in models.items():
        example = inputs[role]["example"]
        timings[role] = {
            "pytorch": each_batch(measure_latency, model, example),
            "onnxruntime": each_batch(measure_ort_latency, sessions[role], example),
        }
    if int8:
        example = inputs["student"]["example"]
        int8_session = sessions["student_int8"]
        timings["student_int8"] = {
            "onnxruntime": each_batch(measure_ort_latency, int8_session, example)
        }
    latency, spread = (_by_role(timings, field) for field in ("median_ms", "iqr_ms"))
    large = f"batch_{batches[-1]}"
    throughput = {
        role: {runtime: 1000 * batches[-1] / ms[large] for runtime, ms in runs.items()}
        for role, runs in latency.items()
    }
    # None where either timing is unresolved or unstable: said so, never printed as 0.0×.
    ratio = {
        runtime: {
            batch: latency_ratio(timings["teacher"][runtime][batch], student)
            for batch, student in timings["student"][runtime].items()
        }
        for runtime in ("pytorch", "onnxruntime")
    }
    opset = next(
        (
            o.version
            for o in onnx.load(str(out / FILES["student"]), load_external_data=False).opset_import
            if o.domain in ("", "ai.onnx")
        ),
        None,
    )
    checks = dict(
        sorted(checks.items(), key=lambda item: item[0].startswith("teacher"))
    )  # student first
    result = {
        "exporter": exporters["student"],
        "exporters": exporters,
        "opset": opset,
        "files": files,
        "checks": checks,
        "parity_samples": n_sample,
        "latency_ms": latency,
        "latency_iqr_ms": spread,
        "throughput": throughput,
        "throughput_unit": f"samples/s at batch {batches[-1]}",
        "batches": list(batches),
        "latency_ratio": ratio,
        "threads": threads,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    for runtime, r in ratio.items():
        echo(
            f"teacher/student latency in {runtime}: {ratio_text(r['batch_1'])} at batch 1, "
            f"{ratio_text(r[large])} at batch {batches[-1]}"
        )

    hf = getattr(models["student"], "model", None)
    if hasattr(
        hf, "save_pretrained"
    ):  # a Hugging Face student: also its own format, for transformers users
        hf.save_pretrained(out / "hf_student", safe_serialization=True)
        if (out / TOKENIZER_FILE).is_file():
            shutil.copyfile(out / TOKENIZER_FILE, out / "hf_student" / TOKENIZER_FILE)
        result["files"]["hf_student"] = {
            "path": str((out / "hf_student").relative_to(run_dir)),
            "bytes": sum(f.stat().st_size for f in (out / "hf_student").iterdir()),
        }
    hf_files = sorted((out / "hf_student").glob("*"))
    record(*(out / name for name in FILES.values()), *hf_files, out / "hf_student")
    summary_path = run_dir / "summary.json"
    summary["export"] = result
    atomic_write(out / "README.md", model_card(summary, result, metadata))
    atomic_write(summary_path, json.dumps(summary, indent=2))
    write_report(run_dir, summary, existing_plots(run_dir))
    echo(f"Export written to {out}/; summary.json and the report updated")

    failed = [
        name for name, check in checks.items() if name.startswith("student") and not check["passed"]
    ]
    if failed:
        raise ExportCheckError(
            f"{', '.join(failed)} failed (see {run_dir}/report.md, Deployment): "
            + "; ".join(
                f"{n}: {'max abs diff' if checks[n]['kind'] == 'logits' else 'score drop'} "
                f"{checks[n]['max_abs_diff' if checks[n]['kind'] == 'logits' else 'drop']:.3g} > "
                f"{checks[n]['tolerance']:g}"
                for n in failed
            )
        )
    return result


def selection_split(splits):
    """The samples int8's fall-back decides on: the validation split, else (a run without one)
    the first training samples; never the test split, whose score the check reports."""
    if len(splits.val):
        return splits.val
    return Subset(splits.train, range(min(len(splits.train), SELECTION_SAMPLES)))


def selection_name(splits) -> str:
    return "validation" if len(splits.val) else "training"


def output_batch(models: dict, single: dict) -> int:
    """The most samples export runs at once (the larger timing batch, and the parity checks'
    chunks): ``LARGEST_BATCH``, halved while the largest output among the models (measured at
    batch 1) would pass ``OUTPUT_BUDGET`` at it. An image classifier keeps 256; SmolLM2 on
    128-token windows gets 8, its logits being 25 MB a window: timed at 256 they were 6.4 GB a
    forward pass, and the export of the recipe's run grew past 22 GB of memory in 13 minutes
    without finishing."""
    per_sample = 0
    with torch.no_grad():
        for role, model in models.items():
            output = call_model(model, single[role])
            if isinstance(output, torch.Tensor):
                per_sample = max(per_sample, output[:1].numel() * output.element_size())
    batch = LARGEST_BATCH
    while batch > 1 and batch * per_sample > OUTPUT_BUDGET:
        batch //= 2
    return batch


def _verdict(passed: bool, role: str) -> str:
    """Only the student's checks decide the exit status; the teacher's parity is recorded (a
    deep teacher's logits can differ by more than the student's tolerance through float32
    summation order alone: 2.0e-3 over SmolLM2-135M's 30 layers)."""
    if passed:
        return "passed"
    return "FAILED" if role.startswith("student") else "above it (recorded, not required)"


def _by_role(timings: dict, field: str) -> dict:
    """One number of every timing (``Latency.<field>``), nested as the timings are."""
    return {
        role: {
            runtime: {batch: getattr(timing, field) for batch, timing in by_batch.items()}
            for runtime, by_batch in runtimes.items()
        }
        for role, runtimes in timings.items()
    }


def _score(summary: dict, role: str, headline: str) -> dict:
    return {"metric": headline, "value": summary.get(role, {}).get(headline), "split": "test"}


def standalone_metadata(recipe, summary: dict, splits, example, out: Path) -> dict:
    """The metadata every exported file carries (``deploy.standalone``); a text model's
    tokenizer is copied beside the files so the export reads raw text on its own."""
    tokenizer = None
    if isinstance(example, dict) and "input_ids" in example:
        from kdistill.io.resources import minilm_dir

        # The export serves the student: its own tokenizer when it has one.
        source = Path(
            recipe.data.options.get("student_tokenizer")
            or recipe.data.options.get("tokenizer")
            or minilm_dir()
        )
        tokenizer = source / TOKENIZER_FILE if source.is_dir() else source
    if tokenizer is not None and tokenizer.is_file():
        shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
    classes = splits.class_names or (
        [str(c) for c in range(splits.num_classes)] if splits.task == "classification" else []
    )
    return {
        "kdistill.classes": json.dumps(classes),
        "kdistill.preprocessing": json.dumps(
            preprocessing(
                example, splits.identity, tokenizer=tokenizer is not None and tokenizer.is_file()
            )
        ),
        "kdistill.recipe": recipe.name,
    }
