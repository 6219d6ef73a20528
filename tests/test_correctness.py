"""Correctness the reference vectors do not cover (issue 17): a teacher cache keyed on everything
that changes the teacher's outputs, exact top-k teachers at T != 1, connectors trained as the
papers train them, and on-policy GKD that counts only the generated tokens."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_RECIPE
from torch.utils.data import DataLoader

from kdistill import Distiller, Teacher, create_model
from kdistill.data import load_dataset
from kdistill.errors import UserError
from kdistill.losses import forward_kl, topk_teacher
from kdistill.losses.token import kd_topk
from kdistill.methods import decoupled_kd, hinton_kd
from kdistill.teachers.cache import CachedTeacher, CacheMismatchError, build_cache
from kdistill.teachers.identity import teacher_identity
from kdistill.teachers.signals import topk_terms
from kdistill.teachers.vocab import map_teacher_vocabulary
from kdistill.teaching.ensemble import Ensemble

QUICK = [*TINY_RECIPE, "teacher.kwargs={width: 64}", "data.subset=300"]
SWAP = (
    "[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]"  # the same length as the identity map: only the order differs
)
IDENTITY = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    splits = load_dataset("digits", subset=300)
    return splits, create_model("mlp", width=32, input_shape=(1, 8, 8))


# --- 1. the cache key sees everything that changes the teacher's outputs ------------------------


def test_teacher_identity_sees_the_vocabulary_map_and_ensemble_settings(digits):
    _, model = digits
    plain = teacher_identity(model)
    handle = map_teacher_vocabulary(model, list(range(10)))
    identity = teacher_identity(model)
    handle.remove()
    handle = map_teacher_vocabulary(model, [1, 0, *range(2, 10)])
    swapped = teacher_identity(model)
    handle.remove()
    assert plain["weights"] == identity["weights"] == swapped["weights"]  # same state_dict
    assert len({json.dumps(x, sort_keys=True) for x in (plain, identity, swapped)}) == 3
    assert teacher_identity(model) == plain  # removing the hook restores the identity
    # An ensemble's combination rule and member weights are not in its state_dict.
    members = [create_model("mlp", width=8, input_shape=(1, 8, 8)) for _ in range(2)]
    mean, confident = Ensemble(members, "mean"), Ensemble(members, "confidence")
    weighted = Ensemble(members, "weights", [0.3, 0.7])
    assert mean.state_dict().keys() == weighted.state_dict().keys()
    assert (
        len({json.dumps(teacher_identity(m), sort_keys=True) for m in (mean, confident, weighted)})
        == 3
    )


def test_the_probe_refuses_a_cache_of_another_teacher_setup(digits, tmp_path):
    splits, model = digits
    teacher = Teacher(model)
    cache = build_cache(
        tmp_path / "c", teacher, splits.train, fingerprint={"teacher": "x"}, dtype="float16"
    )
    cache.verify(teacher, splits.train)  # the teacher it was built with: accepted (float16 storage)
    handle = map_teacher_vocabulary(model, [1, 0, *range(2, 10)])
    try:
        with pytest.raises(CacheMismatchError, match="differ from the live teacher") as error:
            cache.verify(teacher, splits.train)
    finally:
        handle.remove()
    assert "\n" not in str(error.value)
    sparse = build_cache(
        tmp_path / "s", teacher, splits.train, fingerprint={}, topk=3, temperature=4.0
    )
    sparse.verify(teacher, splits.train)
    other = Teacher(create_model("mlp", width=32, input_shape=(1, 8, 8)))
    with pytest.raises(CacheMismatchError, match="top-k log-probabilities"):
        sparse.verify(other, splits.train)


def test_recipes_differing_only_in_vocab_map_get_their_own_caches(tmp_path, capsys):
    from kdistill.cli import main

    for vocab_map in (IDENTITY, SWAP):
        assert (
            main(
                [
                    "cache",
                    *QUICK,
                    f"output.dir={tmp_path}",
                    f"distill.params={{vocab_map: {vocab_map}}}",
                ]
            )
            == 0
        )
    assert len(list((tmp_path / ".cache").iterdir())) == 2
    # One cache directory named for both: the second recipe is refused in one line, not served.
    shared = tmp_path / "shared"
    assert main(["cache", *QUICK, f"output.dir={tmp_path}", f"teacher.cache_dir={shared}"]) == 0
    capsys.readouterr()
    code = main(
        [
            "run",
            *QUICK,
            f"output.dir={tmp_path}",
            f"teacher.cache_dir={shared}",
            "teacher.cache=true",
            f"distill.params={{vocab_map: {SWAP}}}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "teacher" in err and len(err.splitlines()) == 1 and "Traceback" not in err


# --- 2. a top-k teacher is exact at T != 1 --------------------------------------------------------


def bucket_kd(s_logits, t_logits, k, temperature):
    """T² · KL over the teacher's top-k classes and one tail bucket, batch mean, written out."""
    p = F.softmax(t_logits.double() / temperature, -1)
    q = F.softmax(s_logits.double() / temperature, -1)
    top = p.topk(k, -1).indices
    p_top, q_top = p.gather(-1, top), q.gather(-1, top)
    p_buckets = torch.cat([p_top, 1 - p_top.sum(-1, keepdim=True)], -1)
    q_buckets = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    return temperature**2 * (p_buckets * (p_buckets / q_buckets).log()).sum() / len(s_logits)


def test_topk_bucket_kd_is_exact_where_an_even_tail_spread_is_not():
    # The case: C = 100, k = 10, T = 4.
    g = torch.Generator().manual_seed(0)
    t, s = 3 * torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    sparse = topk_teacher(t, 10, temperature=4.0)
    torch.testing.assert_close(
        kd_topk(s, sparse, temperature=4.0).double(), bucket_kd(s, t, 10, 4.0), rtol=1e-5, atol=1e-6
    )
    # The top-k mass of the softened target is the teacher's, not the one of an even tail spread.
    torch.testing.assert_close(
        sparse.log_probs.exp().sum(-1), F.softmax(t / 4, -1).topk(10, -1).values.sum(-1)
    )
    # k = C is the dense kd
    from kdistill.losses import kd

    torch.testing.assert_close(
        kd_topk(s, topk_teacher(t, 100, temperature=4.0), temperature=4.0),
        kd(s, t),
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_sparse_teacher_at_another_temperature_or_vocabulary_is_one_clear_error():
    t, s = torch.randn(4, 50), torch.randn(4, 50)
    sparse = topk_teacher(t, 5, temperature=4.0)
    with pytest.raises(ValueError, match="temperature 4, .* temperature 1:"):
        forward_kl(s, sparse)
    with pytest.raises(ValueError, match="temperature"):
        kd_topk(s, sparse, temperature=2.0)
    with pytest.raises(ValueError, match="vocabulary of 50 entries .* 30"):
        kd_topk(s[:, :30], sparse, temperature=4.0)


def test_a_recipe_with_cache_topk_at_t4_gives_the_exact_topk_loss_in_its_first_step(
    digits, tmp_path
):
    from kdistill.run.config import load_config
    from kdistill.run.plan import recipe_terms

    splits, model = digits
    recipe = load_config(
        None,
        [
            *QUICK,
            "method=kd",
            "distill.temperature=4",
            "teacher.cache=true",
            "teacher.cache_topk=3",
        ],
    )
    terms = recipe_terms(recipe, splits)
    assert [t.loss for t in terms if t.name == "kd"] == [kd_topk]
    teacher = Teacher(model)
    cache = build_cache(
        tmp_path / "c",
        teacher,
        splits.train,
        fingerprint={},
        dtype="float32",
        topk=3,
        temperature=topk_terms(terms, 3)[1],
    )
    assert cache.meta["topk"] == {"k": 3, "classes": 10, "temperature": 4.0}
    student = create_model("mlp", width=16, input_shape=(1, 8, 8))
    example = next(iter(DataLoader(splits.train, batch_size=2)))
    distiller = Distiller.build(student, terms, teacher=CachedTeacher(cache), example_batch=example)
    batch = next(
        iter(
            DataLoader(
                splits.train,
                batch_size=32,
                shuffle=True,
                generator=torch.Generator().manual_seed(0),
            )
        )
    )
    cached_out = CachedTeacher(cache)(batch)
    assert cached_out.logits.indices.shape == (32, 3)  # the sparse arrays travel, not (32, 10)
    out = distiller(batch, cached_out)
    expected = bucket_kd(out["logits"].detach(), teacher(batch).logits, 3, 4.0)
    kd_weight = next(t.weight for t in terms if t.name == "kd")
    assert out["loss/kd"].item() == pytest.approx(kd_weight * expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "override",
    [
        "method=dkd",
        "method=dist",
        "terms=[{name: a, loss: forward_kl, params: {temperature: 1}}, {name: b, loss: kd}]",
    ],
)
def test_cache_topk_with_a_loss_that_has_no_exact_form_exits_2_before_training(
    override, tmp_path, capsys
):
    from kdistill.cli import main

    code = main(
        [
            "run",
            *QUICK,
            override,
            "teacher.cache=true",
            "teacher.cache_topk=3",
            f"output.dir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "teacher.cache_topk" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "default").exists() and not any(tmp_path.glob("*/checkpoints/*"))


def test_topk_terms_refuses_dkd_and_keeps_feature_terms():
    with pytest.raises(UserError, match="dkd"):
        topk_terms(decoupled_kd(), 5)
    terms, temperature = topk_terms(hinton_kd(temperature=2.0), 5)
    assert temperature == 2.0 and math.isclose(terms[1].params["temperature"], 2.0)


# --- 3. FitNet and CC train their regressor and embeddings, as RepDistiller -----------------------

ZOO_PAIRS = [
    ("resnet56", "resnet8"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("vgg13", "vgg8"),
]


@pytest.fixture(scope="module")
def cifar_batch():
    g = torch.Generator().manual_seed(0)
    return {
        "input": torch.randn(4, 3, 32, 32, generator=g),
        "target": torch.tensor([0, 1, 2, 3]),
        "index": torch.arange(4),
    }


def trained_parameters(module: torch.nn.Module) -> list:
    return [p for p in module.parameters() if p.requires_grad]


@pytest.mark.parametrize(("teacher_name", "student_name"), ZOO_PAIRS)
def test_fitnet_and_cc_presets_build_trained_regressors_and_embeddings(
    teacher_name, student_name, cifar_batch
):
    from kdistill.connectors import ConvConnector, EmbeddedPair
    from kdistill.methods import default_layers, preset_terms

    torch.manual_seed(0)
    shape = {"num_classes": 100, "input_shape": (3, 32, 32)}
    teacher_model, student = (
        create_model(teacher_name, **shape),
        create_model(student_name, **shape),
    )
    teacher = Teacher(
        teacher_model,
        taps=["head:input", *default_layers("fitnet", student, teacher_model)["teacher_layers"]],
    )
    fitnet = preset_terms("fitnet", **default_layers("fitnet", student, teacher_model))
    cc = preset_terms("cc")
    distiller = Distiller.build(
        student,
        fitnet + [t for t in cc if t.name == "cc"],
        teacher=teacher,
        example_batch=cifar_batch,
    )
    (hint,) = [t.name for t in fitnet if t.name.startswith("hint")]
    regressor = distiller.connectors[hint]
    # A 1x1 conv + BN + ReLU even where the pair's hint shapes already match (all four pairs here).
    assert isinstance(regressor, ConvConnector) and trained_parameters(regressor)
    embed = distiller.loss_modules["cc"]
    assert isinstance(embed, EmbeddedPair)
    assert embed.student.linear.out_features == embed.teacher.linear.out_features == 128
    distiller.train()
    out = distiller(cifar_batch, teacher(cifar_batch))
    out["loss"].backward()
    for module in (regressor, embed.student, embed.teacher):  # all three train with the student
        assert all(
            p.grad is not None and p.grad.abs().sum() > 0 for p in trained_parameters(module)
        )
    assert all(p.grad is None for p in teacher_model.parameters())


def test_embedded_cc_trains_both_embeddings_with_repdistillers_gradient():
    from kdistill.connectors import EmbeddedPair

    torch.manual_seed(0)
    pair = EmbeddedPair.from_shapes((6, 12), (6, 20), loss="cc", dim=8, variant="repdistiller")
    s_feat, t_feat = torch.randn(6, 12), torch.randn(6, 20)
    pair(s_feat, t_feat).backward()
    ours = [p.grad.clone() for p in pair.parameters()]
    pair.zero_grad()
    # RepDistiller's Correlation on embed_s(f_s), embed_t(f_t), neither side detached.
    delta = (pair.student(s_feat) - pair.teacher(t_feat)).abs()
    reference = (delta[:-1] * delta[1:]).sum(1).mean()
    reference.backward()
    assert pair(s_feat, t_feat).item() == pytest.approx(reference.item(), rel=1e-6)
    for mine, theirs in zip(ours, (p.grad for p in pair.parameters())):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


# --- 4. on-policy GKD counts the generated tokens of a sampled sequence -------------------------


def trl_generalized_jsd(student_logits, teacher_logits, labels, beta=0.5, temperature=1.0):
    """TRL ``GKDTrainer.generalized_jsd_loss`` (GKD, Agarwal et al. 2024, eq. of the generalized
    JSD), written out: M = β·p_T + (1 − β)·p_S, β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M) per token,
    summed over the vocabulary, kept where labels != -100, summed and divided by their count."""
    log_s = F.log_softmax(student_logits / temperature, -1)
    log_t = F.log_softmax(teacher_logits / temperature, -1)
    log_m = torch.logsumexp(torch.stack([log_s + math.log(1 - beta), log_t + math.log(beta)]), 0)
    kl_teacher = (log_t.exp() * (log_t - log_m)).sum(-1)
    kl_student = (log_s.exp() * (log_s - log_m)).sum(-1)
    jsd = beta * kl_teacher + (1 - beta) * kl_student
    counted = labels != -100
    return jsd[counted].sum() / counted.sum()


def tiny_gpt(vocab, length, seed):
    torch.manual_seed(seed)
    return create_model(
        "gpt", num_classes=vocab, input_shape=(length,), n_layer=1, n_head=2, n_embd=16, dropout=0.0
    )


@pytest.fixture(scope="module")
def lm_batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (8, 17), generator=g)
    return {
        "input": tokens[:, :-1],
        "target": tokens[:, 1:],
        "mask": torch.ones(8, 16, dtype=torch.bool),
        "index": torch.arange(8),
    }


def test_on_policy_counts_only_generated_tokens_and_the_loss_is_trls(lm_batch):
    from kdistill.methods import preset_terms
    from kdistill.training.sampling import OnPolicy

    student, teacher_model = tiny_gpt(20, 16, 0), tiny_gpt(20, 16, 1)
    transform = OnPolicy(student, fraction=0.25, continuation=4, seed=0)
    batch = transform(lm_batch)
    sampled = (batch["target"] == -100).any(1)
    assert int(sampled.sum()) == 2
    mask = batch["mask"]
    assert not mask[sampled, :12].any() and mask[sampled, 12:].all()  # the prompt is not counted
    assert mask[~sampled].all()  # by default the data's sequences count whole
    # the student's share of counted positions: λK / (λK + (1 − λ)L) = 2·4 / (2·4 + 6·16)
    assert batch["metric/on_policy_generated"].item() == pytest.approx(8 / 104)
    terms = preset_terms("token_kd", loss="jsd", beta=0.5, alpha=1.0)
    distiller = Distiller(student, terms)
    teacher = Teacher(teacher_model)
    out = distiller(batch, teacher(batch))
    # TRL's labels: -100 wherever a position does not count (here: the sampled sequences' prompts).
    labels = torch.where(mask, batch["target"].clamp_min(0), -100)
    expected = trl_generalized_jsd(out["logits"].detach(), teacher(batch).logits, labels, beta=0.5)
    assert out["loss/kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    # GKD's (prompt, completion) framing: every sequence counts its last K positions, so the
    # share is exactly the λ the recipe asks for.
    whole = OnPolicy(student, fraction=0.25, continuation=4, seed=0, completions_only=True)(
        lm_batch
    )
    assert not whole["mask"][:, :12].any() and whole["mask"][:, 12:].all()
    assert whole["metric/on_policy_generated"].item() == pytest.approx(0.25)


def test_the_generated_share_is_logged_per_epoch(lm_batch):
    from kdistill.methods import preset_terms
    from kdistill.training.loop import Loop, train_loop
    from kdistill.training.sampling import OnPolicy

    student, teacher_model = tiny_gpt(20, 16, 0), tiny_gpt(20, 16, 1)
    data = [{k: v[i] for k, v in lm_batch.items()} for i in range(8)]
    records = []
    train_loop(
        Distiller(student, preset_terms("token_kd", loss="jsd", beta=0.5)),
        DataLoader(data, batch_size=4),
        teacher=Teacher(teacher_model),
        epochs=1,
        lr=1e-3,
        log=records.append,
        progress=False,
        loop=Loop(
            batch_transform=OnPolicy(student, fraction=0.5, continuation=4, completions_only=True)
        ),
    )
    assert records[0]["metric/on_policy_generated"] == pytest.approx(0.5)


# --- 5. DIST against its authors' eps placement: the documented differences ---------------------


def authors_dist(s_logits, t_logits, eps=1e-8):
    """DIST as its authors' code computes it (hunto/DIST_KD): eps added to the product of norms."""

    def pearson(a, b):
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    p_s, p_t = s_logits.softmax(1), t_logits.softmax(1)
    return (1 - pearson(p_s, p_t).mean()) + (1 - pearson(p_s.T, p_t.T).mean())


def test_dist_differs_from_the_authors_eps_placement_as_documented():
    from kdistill.losses import dist

    g = torch.Generator().manual_seed(0)
    measured = []
    for n, c, scale in [(8, 10, 1.0), (64, 1000, 1.0), (8, 1000, 10.0)]:
        s, t = torch.randn(n, c, generator=g), scale * torch.randn(n, c, generator=g)
        ours, theirs = dist(s, t).item(), authors_dist(s, t).item()
        measured.append(abs(ours - theirs) / theirs)
    assert measured[0] < 1e-7 and measured[1] < 1e-6
    assert 1e-3 < measured[2] < 2e-3  # 1.4e-3: far from "about 1e-8"
