"""Several teachers and none: ensembles, a teacher assistant chain, born-again generations and
deep mutual learning, as modules and through `kdistill run`."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.cli import main
from kdistill.errors import ConfigError
from kdistill.models import create_model
from kdistill.run.config import load_config
from kdistill.taps import FeatureTap
from kdistill.teaching.ensemble import Ensemble
from kdistill.teaching.mutual import MutualDistiller


class Fixed(nn.Module):
    """A 'model' that returns the same logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def mixture(logits):
    return torch.logsumexp(F.log_softmax(logits, -1), 0)


def test_ensemble_mean_weights_and_confidence():
    a, b = [2.0, 0.0, 0.0], [0.0, 0.0, 4.0]
    members = [Fixed(a), Fixed(b)]
    x = torch.zeros(3, 1)
    p_a, p_b = F.softmax(torch.tensor(a), -1), F.softmax(torch.tensor(b), -1)
    mean = F.softmax(Ensemble(members, "mean")(x), -1)
    torch.testing.assert_close(mean[0], (p_a + p_b) / 2)
    weighted = F.softmax(Ensemble(members, "weights", [3.0, 1.0])(x), -1)
    torch.testing.assert_close(weighted[0], 0.75 * p_a + 0.25 * p_b)
    confident = F.softmax(Ensemble(members, "confidence")(x), -1)
    w_a, w_b = p_a.max(), p_b.max()  # b is the surer teacher: it weighs more
    torch.testing.assert_close(confident[0], (w_a * p_a + w_b * p_b) / (w_a + w_b))
    assert w_b > w_a


def test_ensemble_is_finite_for_confident_members_and_tappable():
    members = [Fixed([500.0, -500.0]), Fixed([-500.0, 500.0])]
    out = Ensemble(members)(torch.zeros(2, 1))
    assert torch.isfinite(out).all()
    real = Ensemble([create_model("mlp_tiny"), create_model("cnn_tiny")])
    with FeatureTap(real, ["members.1.stages.1"]) as tap:
        real(torch.randn(2, 1, 28, 28))
    assert tap.features["members.1.stages.1"].shape[:2] == (2, 16)


def test_ensemble_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        Ensemble([Fixed([0.0, 1.0])] * 2, "weights", [1.0])


def test_mutual_learning_each_student_learns_from_the_other_not_through_it():
    torch.manual_seed(0)
    student, peer = create_model("mlp_tiny"), create_model("mlp", width=8)
    distiller = MutualDistiller(student, peer)
    batch = {"input": torch.randn(8, 1, 28, 28), "target": torch.randint(0, 10, (8,))}
    out = distiller(batch)
    assert set(out) == {"logits", "loss", "loss/ce", "loss/kd", "loss/peer_ce", "loss/peer_kd"}
    out["loss/kd"].backward()  # the student's KL term: no gradient into the peer
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in peer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert not distiller.needs_teacher


def test_recipe_rules_for_who_teaches():
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, ["teachers=[{model: lenet}]", "teacher.model=cnn"])
    with pytest.raises(ConfigError, match="born_again"):
        load_config(None, ["distill.mode=born_again", "assistant={model: mlp}"])
    for mode in ("born_again", "mutual"):  # a loaded teacher would be silently unread (issue 27.17)
        with pytest.raises(
            ConfigError, match=f"teacher.checkpoint: distill.mode={mode} .* loads none"
        ):
            load_config(None, [f"distill.mode={mode}", "teacher.checkpoint=teacher.pt"])
    with pytest.raises(ConfigError, match="ensemble_weights"):
        load_config(None, ["teachers=[{model: lenet}, {model: cnn}]", "distill.ensemble=weights"])


QUICK = [
    "data.dataset=digits",
    "train.epochs=2",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
    "student.kwargs={width: 16}",
]
TEACHER = ["teacher.augment=none", "train.augment=none", "train.mix=none", "teacher.epochs=2"]


def run(tmp_path, name, *extra):
    assert main(["run", *QUICK, f"output.dir={tmp_path}", f"name={name}", *extra]) == 0
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    phases = [
        json.loads(l)["phase"] for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    ]
    return summary, phases


def test_ensemble_of_teachers_run(tmp_path):
    members = (
        "teachers=[{model: mlp, kwargs: {width: 64}, augment: none, epochs: 2}, {model: cnn, "
        "kwargs: {width: 8}, augment: none, epochs: 2}]"
    )
    summary, phases = run(tmp_path, "ens", members, "distill.ensemble=confidence")
    assert {"teacher_0", "teacher_1", "scratch", "student"} <= set(phases)
    assert summary["teacher"]["model"] == "ensemble of mlp + cnn"
    assert "ensemble (confidence)" in summary["teacher"]["source"]
    parts = [
        create_model("mlp", width=64, input_shape=(1, 8, 8)),
        create_model("cnn", width=8, input_shape=(1, 8, 8)),
    ]
    assert summary["teacher"]["params"] == sum(p.numel() for m in parts for p in m.parameters())


def test_teacher_assistant_chain_run(tmp_path):
    summary, phases = run(
        tmp_path,
        "takd",
        *TEACHER,
        "teacher.model=mlp",
        "teacher.kwargs={width: 128}",
        "assistant={model: mlp, kwargs: {width: 48}}",
    )
    assert phases.index("teacher") < phases.index("assistant") < phases.index("student")
    assert summary["assistant"]["params"] < summary["teacher"]["params"]
    assert summary["student"]["params"] < summary["assistant"]["params"]


@pytest.mark.integration
def test_born_again_generations_run(tmp_path):
    summary, phases = run(tmp_path, "ban", "distill.mode=born_again", "distill.generations=3")
    assert [p for p in dict.fromkeys(phases)] == [
        "scratch",
        "generation_1",
        "generation_2",
        "student",
    ]
    assert "teacher" not in phases  # generation 0 is the scratch student
    assert summary["teacher"]["accuracy"] == summary["scratch"]["accuracy"]
    assert {"generation_1", "generation_2"} <= set(summary)


def test_deep_mutual_learning_run(tmp_path):
    summary, phases = run(
        tmp_path, "dml", "distill.mode=mutual", "teacher.model=mlp", "teacher.kwargs={width: 32}"
    )
    assert "teacher" not in phases
    assert (tmp_path / "dml" / "checkpoints" / "peer.safetensors").is_file()
    record = [json.loads(l) for l in (tmp_path / "dml" / "metrics.jsonl").read_text().splitlines()][
        -1
    ]
    assert {"loss/ce", "loss/kd", "loss/peer_ce", "loss/peer_kd"} <= set(record)
    assert "mutual" in summary["teacher"]["source"]


@pytest.mark.integration
def test_a_recipe_trains_the_same_teacher_every_time_and_members_differ(tmp_path):
    from safetensors.torch import load_file

    # Two runs in separate directories (no teacher store to share): the teacher is drawn from
    # train.seed, not from whatever the random state was when the run got to it.
    torch.manual_seed(123)  # a different global state before each run must not matter
    first, _ = run(tmp_path / "a", "t", *TEACHER, "teacher.model=mlp", "teacher.kwargs={width: 32}")
    torch.manual_seed(456)
    second, _ = run(
        tmp_path / "b", "t", *TEACHER, "teacher.model=mlp", "teacher.kwargs={width: 32}"
    )
    a = load_file(tmp_path / "a" / "t" / "checkpoints" / "teacher.safetensors")
    b = load_file(tmp_path / "b" / "t" / "checkpoints" / "teacher.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first["teacher"]["accuracy"] == second["teacher"]["accuracy"]

    twins = (
        "teachers=[{model: mlp, kwargs: {width: 32}, augment: none, epochs: 2}, {model: mlp, "
        "kwargs: {width: 32}, augment: none, epochs: 2}]"
    )
    run(tmp_path / "c", "twins", twins)
    checkpoints = tmp_path / "c" / "twins" / "checkpoints"
    m0, m1 = (
        load_file(checkpoints / "teacher_0.safetensors"),
        load_file(checkpoints / "teacher_1.safetensors"),
    )
    assert not all(
        torch.equal(m0[k], m1[k]) for k in m0
    )  # one architecture, two different teachers
