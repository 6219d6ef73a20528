"""The int8 student (kdistill.deploy.int8): the score lost in the unit its tolerance is given in
(points of a rate, a share of perplexity), layer kinds by name with the layer numbers blanked,
and the accuracy-driven fall-back that keeps the layers int8 breaks in float32, on a model whose
activation outliers break per-tensor int8 exactly as a transformer's MLP down-projection does."""

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip(
    "onnxruntime", reason="the export extra is not installed: pip install 'kdistill[export]'"
)
import onnx

from kdistill.deploy.int8 import layer_kinds, quantise_within, score_drop
from kdistill.deploy.onnx import export_onnx, ort_session


def test_the_drop_of_a_rate_is_in_points_and_of_perplexity_a_share():
    assert score_drop("accuracy", 0.95, 0.93, higher_is_better=True) == pytest.approx(0.02)
    assert score_drop("accuracy", 0.93, 0.95, higher_is_better=True) == pytest.approx(-0.02)
    # perplexity: 1 % higher is a drop of 0.01 whatever the corpus's scale
    assert score_drop("perplexity", 90.0, 90.9, higher_is_better=False) == pytest.approx(0.01)
    assert score_drop("perplexity", 9.0, 9.09, higher_is_better=False) == pytest.approx(0.01)
    assert score_drop("rmse", 0.90, 0.95, higher_is_better=False) == pytest.approx(0.05)
    assert score_drop("bits_per_byte", 1.50, 1.49, higher_is_better=False) == pytest.approx(-0.01)


class Outliers(nn.Module):
    """Two layers; the hidden layer has one channel 10,000× the others (the activation outliers of
    LLM.int8()), which the output layer barely reads. Per-tensor int8 of the output layer's input
    spends its 256 levels on that channel and rounds the channels the output depends on to 0."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.mix = nn.Linear(8, 32)
        self.head = nn.Linear(32, 4)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(32, 8, generator=generator))
            self.mix.bias.zero_()
            self.mix.weight[0] *= 1e4
            self.head.weight.copy_(torch.randn(4, 32, generator=generator))
            self.head.weight[:, 0] = 1e-6
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.mix(x)))


@pytest.fixture(scope="module")
def outliers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    model = Outliers().eval()
    inputs = torch.randn(512, 8, generator=torch.Generator().manual_seed(1))
    path = folder / "model.onnx"
    export_onnx(model, inputs[:4], path, exporter="torchscript")
    with torch.no_grad():
        fp32 = model(inputs).argmax(-1).numpy()

    def drop_of(candidate):
        """1 − agreement of the candidate's top-1 with the float32 model's (a rate)."""
        session = ort_session(candidate, threads=1)
        feed = {session.get_inputs()[0].name: inputs.numpy()}
        return 1.0 - float(np.mean(session.run(None, feed)[0].argmax(-1) == fp32))

    return folder, path, drop_of


def test_layer_kinds_blank_the_layer_numbers(tmp_path):
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return self.head(x)

    path = tmp_path / "blocks.onnx"
    export_onnx(Blocks().eval(), torch.randn(2, 6), path, exporter="torchscript")
    kinds = layer_kinds(path)
    assert len(kinds) == 2, kinds  # the three blocks are one kind, the head another
    blocks, head = kinds.values()
    assert len(blocks) == 3 and len(head) == 1 and "head" in head[0]


def test_the_fall_back_keeps_the_outlier_reader_in_float32(outliers):
    folder, path, drop_of = outliers
    target = folder / "int8.onnx"
    decision = quantise_within(path, target, drop_of, 0.03, echo=lambda _: None)
    assert decision["all_int8_drop"] > 0.9  # per-tensor int8 of the head's input breaks it
    alone = decision["drop_with_kind_in_float32"]
    head = next(kind for kind in alone if "head" in kind)
    mix = next(kind for kind in alone if "mix" in kind)
    assert alone[head] <= 0.03 < 0.9 < alone[mix]  # only the layer reading the outliers matters
    assert decision["kept_float32"] == [head] and decision["kept_nodes"] == 1
    assert decision["selection_drop"] == pytest.approx(drop_of(target))
    assert decision["selection_drop"] <= 0.03
    ops = {node.name: node.op_type for node in onnx.load(str(target)).graph.node}
    assert any("mix" in name and "Integer" in op for name, op in ops.items())  # still int8
    assert not any("head" in name and "Integer" in op for name, op in ops.items())
    assert not list(folder.glob(".int8-trial-*"))  # its trial files are gone


def test_no_layer_is_kept_when_int8_is_within_tolerance(outliers):
    folder, path, drop_of = outliers
    calls = []

    def counted(candidate):
        calls.append(candidate)
        return drop_of(candidate)

    decision = quantise_within(path, folder / "loose.onnx", counted, 1.0, echo=lambda _: None)
    assert decision["kept_float32"] == [] and len(calls) == 1  # measured once, nothing searched
    assert "drop_with_kind_in_float32" not in decision


def test_out_of_reach_the_best_choice_found_is_written(outliers):
    """A tolerance no choice meets: the file holds the choice with the smallest drop, and the
    decision says which, so the caller's check fails on the best there is."""
    folder, path, _ = outliers
    target = folder / "best.onnx"

    def drop_of(candidate):  # 1 while the head is int8, 0.5 once it is not, 0.7 for both
        graph = onnx.load(str(candidate)).graph
        quantised = {n.name for n in graph.node if "Integer" in n.op_type}
        head = any("head" in name for name in quantised)
        mix = any("mix" in name for name in quantised)
        return 1.0 if head else (0.5 if mix else 0.7)

    decision = quantise_within(path, target, drop_of, 0.0, echo=lambda _: None)
    assert decision["selection_drop"] == 0.5 == drop_of(target)
    assert len(decision["kept_float32"]) == 1 and "head" in decision["kept_float32"][0]


@pytest.mark.integration
def test_a_language_models_int8_drop_is_a_share_of_perplexity(tmp_path, capsys):
    """`kdistill export` of a language-model run: the int8 check reads perplexity's drop as a
    share (value / reference − 1) against the tolerance in percent, and records what it kept
    and the split it chose on."""
    from test_lm import QUICK

    from kdistill.cli import main

    run = ["run", "configs/lm_kd.yaml", *QUICK, "output.progress=false", f"output.dir={tmp_path}"]
    assert main(run) == 0
    run_dir = tmp_path / "lm_kd"
    code = main(["export", str(run_dir), "--repeats", "1", "--int8-tolerance", "0.05"])
    output = capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    check = summary["export"]["checks"]["student int8"]
    assert check["metric"] == "perplexity" and check["drop_unit"] == "percent"
    assert check["drop"] == pytest.approx(check["value"] / check["reference"] - 1)
    assert check["passed"] == (check["drop"] <= 0.05) and code == (0 if check["passed"] else 2)
    assert check["selection"]["split"] == "validation"
    assert "tolerance 5.00 %" in output
    assert "drop ≤ 5 %" in (run_dir / "report.md").read_text()
    card = (run_dir / "export" / "README.md").read_text()  # says how to run a language model
    assert "next-token logits" in card and "does not score a language model" in card
