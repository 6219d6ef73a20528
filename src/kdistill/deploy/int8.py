"""An int8 student that keeps its score: dynamic quantisation, and an accuracy-driven fall-back
that keeps the most sensitive kinds of layer in float32 until the score lost is within tolerance.

The fall-back is the accuracy-aware tuning of Intel Neural Compressor (quantise everything,
measure, return the layers that cost the most to float32), done with ONNX Runtime's own
``nodes_to_exclude``. It decides per *kind* of layer (a node's name with its layer numbers
blanked: ``/layers.#/mlp/down_proj/MatMul``), so one decision covers every block of a
transformer and the search costs one evaluation per kind, not per node. The kinds it finds are
the known ones: on the SmolLM2 recipe's student, the MLP down-projections, whose inputs carry
the activation outliers that per-tensor activation scales cannot hold (Dettmers et al.,
"LLM.int8()", NeurIPS 2022, arXiv:2208.07339), then the output head.

The decision is made on data the test score never sees (the validation split, else training
samples): what is measured is the damage quantisation does, and choosing it on the test split
would flatter the number the check reports.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from kdistill.deploy.onnx import quantize_int8, require_onnx

QUANTISED_OPS = ("MatMul", "Gemm", "Conv", "Gather")  # what quantize_dynamic turns into int8


def score_drop(metric: str, reference: float, value: float, *, higher_is_better: bool) -> float:
    """How much of the score ``value`` lost against ``reference``, in the unit a tolerance is
    given in: points of a rate (0.01 = 1 point of accuracy), a share of perplexity (0.01 = 1 %
    higher), the metric's own unit otherwise (bits per byte, RMSE). Perplexity is the exponential
    of a loss and has no fixed scale (9 on one corpus, 900 on another), so only its ratio means
    the same everywhere."""
    if metric == "perplexity":
        return value / reference - 1.0
    return reference - value if higher_is_better else value - reference


def drop_unit(metric: str, *, percent: bool) -> str:
    """The unit :func:`score_drop` gives ``metric``'s drop in: ``"points"`` of a rate shown as a
    percentage (``percent``), ``"percent"`` of perplexity, else ``"absolute"``."""
    if metric == "perplexity":
        return "percent"
    return "points" if percent else "absolute"


# A drop (or a tolerance) written in its unit.
DROP_TEXT = {
    "points": lambda v: f"{100 * v:.2f} points",
    "percent": lambda v: f"{100 * v:.2f} %",
    "absolute": lambda v: f"{v:.4g}",
}


def layer_kinds(path: str | Path) -> dict[str, list[str]]:
    """The nodes dynamic int8 would quantise (the ops above with a stored weight), grouped by
    kind: their names with every number blanked, in graph order."""
    onnx, _ = require_onnx()
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    kinds: dict[str, list[str]] = {}
    for node in graph.node:
        if node.name and node.op_type in QUANTISED_OPS and weights.intersection(node.input):
            kinds.setdefault(re.sub(r"\d+", "#", node.name), []).append(node.name)
    return kinds


def quantise_within(
    source: str | Path,
    target: str | Path,
    drop_of: Callable[[Path], float],
    tolerance: float,
    *,
    echo: Callable[[str], None] = print,
    shown: Callable[[float], str] = "{:.4g}".format,
) -> dict:
    """Write ``source`` as dynamic int8 at ``target``, keeping in float32 the kinds of layer (by
    :func:`layer_kinds`) that cost most, one kind at a time, until ``drop_of(file)`` (the score
    lost on selection data) is within ``tolerance``.

    Every kind is first measured alone (the drop with that kind kept in float32); kinds are then
    kept in the order of what they recover, while they recover anything, until the drop is
    within tolerance (a greedy search: not always the fewest kinds, one evaluation per kind).
    ``shown`` writes a drop in its unit for ``echo``. Returns what was decided: ``kept_float32``
    (kinds), ``kept_nodes``, the drop on the selection data before and after, and every kind's
    measured drop. If no choice reaches the tolerance, ``target`` holds the best one found and
    the caller's check says so."""
    source, target = Path(source), Path(target)
    quantize_int8(source, target)
    first = drop_of(target)
    decision = {
        "selection_drop": first,
        "all_int8_drop": first,
        "kept_float32": [],
        "kept_nodes": 0,
    }
    if first <= tolerance:
        return decision
    kinds = layer_kinds(source)
    echo(
        f"int8 loses {shown(first)} on the selection data (tolerance {shown(tolerance)}): "
        f"measuring which of {len(kinds)} kinds of layer to keep in float32"
    )
    alone = {}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".int8-trial-") as scratch:
        trial = Path(scratch) / "trial.onnx"
        for kind, nodes in kinds.items():
            quantize_int8(source, trial, exclude=nodes)
            alone[kind] = drop_of(trial)
    decision["drop_with_kind_in_float32"] = alone
    best, best_kept, kept = first, [], []
    for kind in sorted(alone, key=alone.get):
        if alone[kind] >= first:  # keeping it recovers nothing: neither will the kinds after it
            break
        kept.append(kind)
        quantize_int8(source, target, exclude=_nodes(kinds, kept))
        drop = drop_of(target)
        if drop < best:
            best, best_kept = drop, list(kept)
        if drop <= tolerance:
            break
    if best_kept != kept:  # the last file written is not the best one found
        quantize_int8(source, target, exclude=_nodes(kinds, best_kept))
    decision.update(
        selection_drop=best,
        kept_float32=best_kept,
        kept_nodes=len(_nodes(kinds, best_kept)),
    )
    return decision


def _nodes(kinds: dict[str, list[str]], chosen: list[str]) -> list[str]:
    return [node for kind in chosen for node in kinds[kind]]
