"""Presets of the published image-classification methods: each a function of the settings a
user may change (its signature is the method's settings, checked strictly) that returns the
method's terms at the reference repositories' weights (RepDistiller, mdistiller, the authors' code).

Every preset names the weight of its distillation term ``alpha`` and that of the label term
``ce_weight``; where the two mix (Hinton KD), ``ce_weight`` defaults to ``1 - alpha``.
"""

from __future__ import annotations

from collections.abc import Sequence

from kdistill.connectors import EmbeddedPair
from kdistill.methods.terms import PENULTIMATE, Term, mixed_ce_weight

# --- presets ---------------------------------------------------------------------------------
# Each returns the terms of one published method. Weights are the reference repositories'
# defaults (RepDistiller, mdistiller, the authors' code); the recipe's `distill` section
# overrides temperature, alpha and ce_weight, and `distill.params` any other argument.
#
# Label terms follow RepDistiller's train_student.py: loss = r·CE + a·KD + b·(method), with the
# CE weight r = 1 for every method but KD itself (r = 0.1, a = 0.9), and a = 0 (no KD term)
# unless asked: the README's "CRD+KD" sets a = 1, here `kd_weight=1.0`.


def _label_terms(ce_weight: float, kd_weight: float = 0.0, temperature: float = 4.0) -> list[Term]:
    terms = [Term("ce", "ce", weight=ce_weight, teacher=None)] if ce_weight else []
    if kd_weight:
        terms.append(Term("kd", "kd", weight=kd_weight, params={"temperature": temperature}))
    return terms


def _layer_pairs(method: str, student_layers, teacher_layers) -> list[tuple[str, str]]:
    """The (student, teacher) module names a feature method compares, one term per pair."""

    def as_list(layers) -> list[str]:
        return [layers] if isinstance(layers, str) else list(layers or [])

    student_layers, teacher_layers = as_list(student_layers), as_list(teacher_layers)
    if not student_layers or not teacher_layers:
        raise ValueError(
            f"method {method!r} compares intermediate features: pass student_layers= and "
            "teacher_layers= (lists of module names, shallow to deep, e.g. a zoo model's "
            "hint_layers; `kdistill list taps` shows a model's names)"
        )
    if len(student_layers) != len(teacher_layers):
        raise ValueError(
            f"method {method!r}: {len(student_layers)} student_layers but {len(teacher_layers)} "
            "teacher_layers; they are compared pairwise"
        )
    return list(zip(student_layers, teacher_layers))


def _feature_terms(method: str, loss: str, pairs, weight: float, **options) -> list[Term]:
    """One term per layer pair, named ``method`` or ``method_0``, ``method_1``, ...; their sum
    is the method's loss, as RepDistiller sums its per-stage losses."""
    names = [method] if len(pairs) == 1 else [f"{method}_{i}" for i in range(len(pairs))]
    return [
        Term(name, loss, weight=weight, student=student, teacher=teacher, **options)
        for name, (student, teacher) in zip(names, pairs)
    ]


def hinton_kd(*, temperature: float = 4.0, alpha: float = 0.9, ce_weight: float | None = None):
    """Hinton KD: (1−α)·CE + α·T²·KL(p_T ‖ p_S). Set ``ce_weight`` for CE + λ·KL forms.

    Defaults CE 0.1 + KD 0.9 at T=4 follow RepDistiller and mdistiller's CIFAR recipes.
    """
    return [
        Term("ce", "ce", weight=mixed_ce_weight(alpha, ce_weight), teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
    ]


def scratch():
    """No teacher: cross-entropy on the labels only (the baseline every method is judged by)."""
    return [Term("ce", "ce", weight=1.0, teacher=None)]


def decoupled_kd(
    *,
    temperature: float = 4.0,
    tckd_weight: float = 1.0,
    nckd_weight: float = 8.0,
    alpha: float = 1.0,
    ce_weight: float = 1.0,
    warmup_epochs: int = 20,
    standardize: bool = False,
):
    """DKD (Zhao et al., CVPR 2022): CE + target and non-target KD weighed apart, warmed up.

    mdistiller's CIFAR-100 defaults: CE 1.0, α = ``tckd_weight`` 1, β = ``nckd_weight`` 8,
    T = 4, the DKD term ramped in over the first 20 epochs. (α/β are not named ``alpha`` here:
    a recipe's ``alpha`` is the weight of a distillation term.)
    """
    params = {
        "alpha": tckd_weight,
        "beta": nckd_weight,
        "temperature": temperature,
        "standardize": standardize,
    }
    return [
        *_label_terms(ce_weight),
        Term("dkd", "dkd", weight=alpha, params=params, warmup_epochs=warmup_epochs),
    ]


def dist_kd(
    *,
    temperature: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    alpha: float = 1.0,
    ce_weight: float = 1.0,
):
    """DIST (Huang et al., NeurIPS 2022): CE + Pearson correlation of inter/intra-class relations.

    The authors' defaults: CE 1.0 + DIST 1.0 with β = γ = 1 and τ = 1 (their ImageNet setting).
    """
    params = {"beta": beta, "gamma": gamma, "temperature": temperature}
    return [*_label_terms(ce_weight), Term("dist", "dist", weight=alpha, params=params)]


def logit_standardized_kd(*, temperature: float = 2.0, alpha: float = 9.0, ce_weight: float = 0.1):
    """KD on z-scored logits (Sun et al., CVPR 2024): CE 0.1 + 9·KD at base temperature 2.

    The authors' CIFAR-100 command for KD with logit standardisation: ``--logit-stand
    --base-temp 2 --kd-weight 9`` on mdistiller's KD (CE weight 0.1).
    """
    params = {"temperature": temperature, "standardize": True}
    return [*_label_terms(ce_weight), Term("kd", "kd", weight=alpha, params=params)]


def normalized_kd(
    *,
    temperature: float = 1.0,
    gamma: float = 1.5,
    alpha: float = 1.0,
    ce_weight: float = 1.0,
):
    """NKD (Yang et al., ICCV 2023): CE + normalized target and non-target knowledge.

    The authors' ImageNet defaults (yzd-v/cls_KD): T = 1, γ = 1.5, added to the student's CE.
    """
    params = {"temperature": temperature, "gamma": gamma}
    return [*_label_terms(ce_weight), Term("nkd", "nkd", weight=alpha, params=params)]


def fitnet(
    *,
    student_layers: Sequence[str] | None = None,
    teacher_layers: Sequence[str] | None = None,
    alpha: float = 100.0,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
    connector: str = "regressor",
):
    """FitNet (Romero et al., ICLR 2015): CE + hint MSE through a trained connector, weight 100.

    RepDistiller regresses one middle stage (``hint_layer=2``) with a conv + BN + ReLU connector
    and trains it with the student, without FitNets' separate hint stage; several listed pairs
    are summed.
    """
    pairs = _layer_pairs("fitnet", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("hint", "hint", pairs, alpha, connector=connector),
    ]


def attention_transfer(
    *,
    student_layers: Sequence[str] | None = None,
    teacher_layers: Sequence[str] | None = None,
    alpha: float = 1000.0,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
    p: float = 2,
    mode: str = "code",
):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): CE + 1000 · AT summed over stages.

    RepDistiller compares every stage output between the stem and the pooling (``feat[1:-1]``).
    """
    pairs = _layer_pairs("at", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("at", "at", pairs, alpha, params={"p": p, "mode": mode}),
    ]


def neuron_selectivity_transfer(
    *,
    student_layers: Sequence[str] | None = None,
    teacher_layers: Sequence[str] | None = None,
    alpha: float = 50.0,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
):
    """NST (Huang & Wang, 2017): CE + 50 · MMD of channel activation patterns, summed over stages.

    RepDistiller compares the stage outputs ``feat[1:-1]``.
    """
    pairs = _layer_pairs("nst", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("nst", "nst", pairs, alpha),
    ]


def similarity_preserving(
    *,
    student_layers: Sequence[str] | None = None,
    teacher_layers: Sequence[str] | None = None,
    alpha: float = 3000.0,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): CE + 3000 · SP of batch similarities.

    RepDistiller applies it to the last stage's feature map only (``feat[-2]``); several listed
    pairs are summed.
    """
    pairs = _layer_pairs("sp", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("sp", "sp", pairs, alpha),
    ]


def variational_information(
    *,
    student_layers: Sequence[str] | None = None,
    teacher_layers: Sequence[str] | None = None,
    alpha: float = 1.0,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
    init_pred_var: float = 5.0,
):
    """VID (Ahn et al., CVPR 2019): CE + Gaussian likelihood of teacher features, summed by stage.

    RepDistiller: one VID module per stage output ``feat[1:-1]``, weight 1, initial variance 5;
    the regressors and variances train with the student.
    """
    pairs = _layer_pairs("vid", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("vid", "vid", pairs, alpha, params={"init_pred_var": init_pred_var}),
    ]


def relational_kd(
    *,
    student_embedding: str = PENULTIMATE,
    teacher_embedding: str = PENULTIMATE,
    alpha: float = 1.0,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
):
    """Relational KD (Park et al., CVPR 2019): CE + distance (25) and angle (50) relations.

    Compares the pooled penultimate embeddings, as RepDistiller (``feat[-1]``), at weight 1.
    """
    params = {"distance_weight": distance_weight, "angle_weight": angle_weight}
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        Term(
            "rkd",
            "rkd",
            weight=alpha,
            student=student_embedding,
            teacher=teacher_embedding,
            params=params,
        ),
    ]


def probabilistic_transfer(
    *,
    student_embedding: str = PENULTIMATE,
    teacher_embedding: str = PENULTIMATE,
    alpha: float = 30000.0,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
):
    """PKT (Passalis & Tefas, ECCV 2018): CE + 30000 · KL of cosine-affinity distributions.

    Compares the pooled penultimate embeddings, as RepDistiller (``feat[-1]``).
    """
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        Term("pkt", "pkt", weight=alpha, student=student_embedding, teacher=teacher_embedding),
    ]


def correlation_congruence(
    *,
    student_embedding: str = PENULTIMATE,
    teacher_embedding: str = PENULTIMATE,
    alpha: float = 0.02,
    variant: str = "repdistiller",
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
    connector: str | None = None,
    feat_dim: int | None = 128,
):
    """Correlation congruence (Peng et al., ICCV 2019): CE + 0.02 · CC of the embeddings.

    RepDistiller's recipe, whose published weight 0.02 belongs to its (the CC authors')
    consecutive-rows form, ``variant="repdistiller"``, computed as RepDistiller trains it: on
    ``feat_dim``-wide linear embeddings of both sides (``EmbeddedPair``). ``feat_dim=None``
    compares the embeddings themselves, through ``connector`` on the student side.
    ``variant="paper"`` selects the paper's kernel form, which needs its own weight.
    """
    params = {"variant": variant}
    loss = "cc"
    if feat_dim is not None:
        loss, params = EmbeddedPair, {"loss": "cc", "dim": feat_dim, **params}
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        Term(
            "cc",
            loss,
            weight=alpha,
            student=student_embedding,
            teacher=teacher_embedding,
            connector=connector,
            params=params,
        ),
    ]


def contrastive_representation(
    *,
    student_embedding: str = PENULTIMATE,
    teacher_embedding: str = PENULTIMATE,
    alpha: float = 0.8,
    ce_weight: float = 1.0,
    kd_weight: float = 0.0,
    temperature: float = 4.0,
    feat_dim: int = 128,
    num_negatives: int | None = None,
    nce_temperature: float = 0.07,
    momentum: float = 0.5,
):
    """CRD (Tian et al., ICLR 2020): CE + 0.8 · contrastive loss against a memory bank.

    RepDistiller's defaults: 128-d embeddings, τ = 0.07, memory momentum 0.5, 16384 negatives
    (at most every other training sample here). Needs the training-set size: build with
    ``Distiller.build(..., num_samples=len(train_set))``; batches must carry ``"index"``.
    ``kd_weight=1.0`` gives the README's CRD+KD.
    """
    params = {
        "feat_dim": feat_dim,
        "num_negatives": num_negatives,
        "nce_temperature": nce_temperature,
        "momentum": momentum,
    }
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        Term(
            "crd",
            "crd",
            weight=alpha,
            student=student_embedding,
            teacher=teacher_embedding,
            params=params,
        ),
    ]
