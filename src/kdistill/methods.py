"""What a distillation compares: ``Term``s, and named presets of terms with published weights.

A term says which student output is compared with which teacher output (``"logits"`` or a
module name read through a ``FeatureTap``), with which loss, at what weight, optionally through
a trainable connector and with a warm-up of its weight. A preset is a function of the
hyper-parameters a user commonly sets (temperature, alpha, layers) that returns a list of terms.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from kdistill.connectors import EmbeddedPair
from kdistill.losses import LOSSES

LOGITS = "logits"
PENULTIMATE = "head:input"  # the pooled vector in front of the classifier of every zoo model


@dataclass
class Term:
    """One weighted loss of the distillation objective.

    Args:
        name: key of this term in the loss dict (``"loss/<name>"``); unique per distiller, and
            without dots when the term has a connector or a stateful loss (a module key).
        loss: a name in ``kdistill.losses.LOSSES``, a function ``(student, teacher, [target],
            **params)``, or an ``nn.Module`` for losses with learned state. A stateful loss
            given by name (``"vid"``, ``"crd"``) or as its class is built by ``Distiller.build``
            from the probed feature shapes, with ``params`` as its constructor arguments.
        weight: multiplier in the total loss.
        student: ``"logits"`` or the module name of the student feature to compare.
        teacher: ``"logits"``, a module name of the teacher, or ``None`` for losses against the
            labels only (cross-entropy).
        connector: ``None``, or a connector kind (``"auto"``, ``"linear"``, ``"conv"``) that maps
            the student feature to the teacher feature's shape, sized by probing.
        params: keyword hyper-parameters passed to the loss (``temperature=4.0``, ...).
        warmup_epochs: the weight ramps as ``min(epoch / warmup_epochs, 1)`` with 1-based epochs
            (DKD's warm-up, Zhao et al. 2022); 0 means full weight from the start.
    """

    name: str
    loss: str | Callable | nn.Module | type[nn.Module]
    weight: float = 1.0
    student: str = LOGITS
    teacher: str | None = LOGITS
    connector: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 0

    def __post_init__(self):
        if isinstance(self.loss, str):
            if self.loss not in LOSSES:
                import difflib

                close = difflib.get_close_matches(self.loss, LOSSES, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ValueError(f"term {self.name!r}: unknown loss {self.loss!r}{hint}")
            self.loss = LOSSES[self.loss]
        if self.needs_build and not hasattr(self.loss, "from_shapes"):
            raise ValueError(
                f"term {self.name!r}: loss class {self.loss.__name__} needs a classmethod "
                "from_shapes(student_shape, teacher_shape, *, num_samples=None, **params)"
            )
        is_module = isinstance(self.loss, nn.Module) or self.needs_build
        function = self.loss.forward if is_module else self.loss
        parameters = list(inspect.signature(function).parameters.values())
        if self.needs_build:
            parameters = parameters[1:]  # the unbound forward's `self`
        positional = [
            p.name for p in parameters
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        # Argument order is student, teacher, target (DESIGN.md); a loss whose second
        # positional argument is `target` compares with the labels only.
        self.takes_target = "target" in positional
        self.takes_teacher = len(positional) >= 2 and positional[1] != "target"
        names = {p.name for p in parameters}
        self.takes_index = "index" in names  # memory-bank methods (CRD) find samples by it
        self.takes_mask = "mask" in names  # token losses skip padding positions
        if not self.takes_teacher:
            self.teacher = None
        elif self.teacher is None:
            raise ValueError(f"term {self.name!r}: loss needs a teacher output; set teacher=")

    @property
    def needs_build(self) -> bool:
        """A stateful loss not constructed yet: its size comes from the probed features."""
        return isinstance(self.loss, type) and issubclass(self.loss, nn.Module)

    def built(
        self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], *,
        num_samples: int | None = None,
    ) -> Term:
        """A copy of this term holding its stateful loss built for these feature shapes. The
        ``params`` went into the constructor, so the copy passes none to the forward."""
        module = self.loss.from_shapes(
            student_shape, teacher_shape, num_samples=num_samples, **self.params
        )
        return dataclasses.replace(self, loss=module, params={})

    def weight_at(self, epoch: int) -> float:
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(epoch / self.warmup_epochs, 1.0)

    def __call__(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, index: Tensor | None = None,
        mask: Tensor | None = None,
    ):
        args = [student]
        if self.takes_teacher:
            args.append(teacher)
        if self.takes_target:
            args.append(target)
        extra = {"index": index} if self.takes_index else {}
        if self.takes_mask and mask is not None:
            extra["mask"] = mask
        return self.loss(*args, **self.params, **extra)


def teacher_taps(terms: Iterable[Term]) -> list[str]:
    """Teacher module names the terms read: the teacher must be tapped at these."""
    return list(dict.fromkeys(t.teacher for t in terms if t.teacher not in (None, LOGITS)))


# Which of the models' ``hint_layers`` (stage outputs, shallow to deep) a feature preset reads
# when the recipe names none, as the reference training scripts do: every stage for AT, NST and
# VID, the last for SP, the middle one for FitNet's hint.
LAYER_DEFAULTS = {"at": "all", "nst": "all", "vid": "all", "sp": "last", "fitnet": "middle"}


def default_layers(method: str, student: nn.Module, teacher: nn.Module) -> dict[str, list[str]]:
    """``student_layers`` / ``teacher_layers`` for a feature preset, from the models' stages.

    Stages are paired from the deep end when the two models have different numbers of them.
    Returns {} for methods that need no layers.
    """
    rule = LAYER_DEFAULTS.get(method)
    if rule is None:
        return {}
    student_stages, teacher_stages = (list(getattr(m, "hint_layers", ())) for m in (student, teacher))
    if not student_stages or not teacher_stages:
        raise ValueError(
            f"method {method!r} compares intermediate features: set distill.params.student_layers "
            "and teacher_layers (module names), since these models do not list their stages"
        )
    depth = min(len(student_stages), len(teacher_stages))
    student_stages, teacher_stages = student_stages[-depth:], teacher_stages[-depth:]
    if rule == "last":
        pick = [depth - 1]
    elif rule == "middle":
        pick = [(depth - 1) // 2]
    else:
        pick = list(range(depth))
    return {"student_layers": [student_stages[i] for i in pick], "teacher_layers": [teacher_stages[i] for i in pick]}


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
        Term("ce", "ce", weight=1.0 - alpha if ce_weight is None else ce_weight, teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
    ]


def scratch(**_ignored):
    """No teacher: cross-entropy on the labels only (the baseline every method is judged by)."""
    return [Term("ce", "ce", weight=1.0, teacher=None)]


def decoupled_kd(
    *, temperature: float = 4.0, tckd_weight: float = 1.0, nckd_weight: float = 8.0,
    weight: float = 1.0, ce_weight: float = 1.0, warmup_epochs: int = 20, standardize: bool = False,
):
    """DKD (Zhao et al., CVPR 2022): CE + target and non-target KD weighed apart, warmed up.

    mdistiller's CIFAR-100 defaults: CE 1.0, α = ``tckd_weight`` 1, β = ``nckd_weight`` 8,
    T = 4, the DKD term ramped in over the first 20 epochs. (α/β are not named ``alpha`` here:
    a recipe's ``alpha`` is the weight of a distillation term.)
    """
    params = {
        "alpha": tckd_weight, "beta": nckd_weight, "temperature": temperature,
        "standardize": standardize,
    }
    return [
        *_label_terms(ce_weight),
        Term("dkd", "dkd", weight=weight, params=params, warmup_epochs=warmup_epochs),
    ]


def dist_kd(
    *, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0, weight: float = 1.0,
    ce_weight: float = 1.0,
):
    """DIST (Huang et al., NeurIPS 2022): CE + Pearson correlation of inter/intra-class relations.

    The authors' defaults: CE 1.0 + DIST 1.0 with β = γ = 1 and τ = 1 (their ImageNet setting).
    """
    params = {"beta": beta, "gamma": gamma, "temperature": temperature}
    return [*_label_terms(ce_weight), Term("dist", "dist", weight=weight, params=params)]


def logit_standardized_kd(*, temperature: float = 2.0, weight: float = 9.0, ce_weight: float = 0.1):
    """KD on z-scored logits (Sun et al., CVPR 2024): CE 0.1 + 9·KD at base temperature 2.

    The authors' CIFAR-100 command for KD with logit standardisation: ``--logit-stand
    --base-temp 2 --kd-weight 9`` on mdistiller's KD (CE weight 0.1).
    """
    params = {"temperature": temperature, "standardize": True}
    return [*_label_terms(ce_weight), Term("kd", "kd", weight=weight, params=params)]


def normalized_kd(
    *, temperature: float = 1.0, gamma: float = 1.5, weight: float = 1.0, ce_weight: float = 1.0,
):
    """NKD (Yang et al., ICCV 2023): CE + normalized target and non-target knowledge.

    The authors' ImageNet defaults (yzd-v/cls_KD): T = 1, γ = 1.5, added to the student's CE.
    """
    params = {"temperature": temperature, "gamma": gamma}
    return [*_label_terms(ce_weight), Term("nkd", "nkd", weight=weight, params=params)]


def fitnet(
    *, student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
    weight: float = 100.0, ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0,
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
        *_feature_terms("hint", "hint", pairs, weight, connector=connector),
    ]


def attention_transfer(
    *, student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
    weight: float = 1000.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
    temperature: float = 4.0, p: float = 2, mode: str = "code",
):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): CE + 1000 · AT summed over stages.

    RepDistiller compares every stage output between the stem and the pooling (``feat[1:-1]``).
    """
    pairs = _layer_pairs("at", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("at", "at", pairs, weight, params={"p": p, "mode": mode}),
    ]


def neuron_selectivity_transfer(
    *, student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
    weight: float = 50.0, ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0,
):
    """NST (Huang & Wang, 2017): CE + 50 · MMD of channel activation patterns, summed over stages.

    RepDistiller compares the stage outputs ``feat[1:-1]``.
    """
    pairs = _layer_pairs("nst", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("nst", "nst", pairs, weight),
    ]


def similarity_preserving(
    *, student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
    weight: float = 3000.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
    temperature: float = 4.0,
):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): CE + 3000 · SP of batch similarities.

    RepDistiller applies it to the last stage's feature map only (``feat[-2]``); several listed
    pairs are summed.
    """
    pairs = _layer_pairs("sp", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("sp", "sp", pairs, weight),
    ]


def variational_information(
    *, student_layers: Sequence[str] | None = None, teacher_layers: Sequence[str] | None = None,
    weight: float = 1.0, ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0,
    init_pred_var: float = 5.0,
):
    """VID (Ahn et al., CVPR 2019): CE + Gaussian likelihood of teacher features, summed by stage.

    RepDistiller: one VID module per stage output ``feat[1:-1]``, weight 1, initial variance 5;
    the regressors and variances train with the student.
    """
    pairs = _layer_pairs("vid", student_layers, teacher_layers)
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        *_feature_terms("vid", "vid", pairs, weight, params={"init_pred_var": init_pred_var}),
    ]


def relational_kd(
    *, student_embedding: str = PENULTIMATE, teacher_embedding: str = PENULTIMATE,
    weight: float = 1.0, distance_weight: float = 25.0, angle_weight: float = 50.0,
    ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0,
):
    """Relational KD (Park et al., CVPR 2019): CE + distance (25) and angle (50) relations.

    Compares the pooled penultimate embeddings, as RepDistiller (``feat[-1]``), at weight 1.
    """
    params = {"distance_weight": distance_weight, "angle_weight": angle_weight}
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        Term(
            "rkd", "rkd", weight=weight, student=student_embedding, teacher=teacher_embedding,
            params=params,
        ),
    ]


def probabilistic_transfer(
    *, student_embedding: str = PENULTIMATE, teacher_embedding: str = PENULTIMATE,
    weight: float = 30000.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
    temperature: float = 4.0,
):
    """PKT (Passalis & Tefas, ECCV 2018): CE + 30000 · KL of cosine-affinity distributions.

    Compares the pooled penultimate embeddings, as RepDistiller (``feat[-1]``).
    """
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        Term("pkt", "pkt", weight=weight, student=student_embedding, teacher=teacher_embedding),
    ]


def correlation_congruence(
    *, student_embedding: str = PENULTIMATE, teacher_embedding: str = PENULTIMATE,
    weight: float = 0.02, variant: str = "repdistiller", ce_weight: float = 1.0,
    kd_weight: float = 0.0, temperature: float = 4.0, connector: str | None = None,
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
            "cc", loss, weight=weight, student=student_embedding, teacher=teacher_embedding,
            connector=connector, params=params,
        ),
    ]


def contrastive_representation(
    *, student_embedding: str = PENULTIMATE, teacher_embedding: str = PENULTIMATE,
    weight: float = 0.8, ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0,
    feat_dim: int = 128, num_negatives: int | None = None, nce_temperature: float = 0.07,
    momentum: float = 0.5,
):
    """CRD (Tian et al., ICLR 2020): CE + 0.8 · contrastive loss against a memory bank.

    RepDistiller's defaults: 128-d embeddings, τ = 0.07, memory momentum 0.5, 16384 negatives
    (at most every other training sample here). Needs the training-set size: build with
    ``Distiller.build(..., num_samples=len(train_set))``; batches must carry ``"index"``.
    ``kd_weight=1.0`` gives the README's CRD+KD.
    """
    params = {
        "feat_dim": feat_dim, "num_negatives": num_negatives, "nce_temperature": nce_temperature,
        "momentum": momentum,
    }
    return [
        *_label_terms(ce_weight, kd_weight, temperature),
        Term(
            "crd", "crd", weight=weight, student=student_embedding, teacher=teacher_embedding,
            params=params,
        ),
    ]


PRESETS: dict[str, Callable[..., list[Term]]] = {
    "kd": hinton_kd,
    "dkd": decoupled_kd,
    "dist": dist_kd,
    "lskd": logit_standardized_kd,
    "nkd": normalized_kd,
    "fitnet": fitnet,
    "at": attention_transfer,
    "nst": neuron_selectivity_transfer,
    "sp": similarity_preserving,
    "vid": variational_information,
    "rkd": relational_kd,
    "pkt": probabilistic_transfer,
    "cc": correlation_congruence,
    "crd": contrastive_representation,
    "scratch": scratch,
}


def describe_method(name: str) -> str:
    doc = PRESETS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def preset_terms(name: str, **hyper) -> list[Term]:
    """The terms of a named method; hyper-parameters the preset does not take are ignored."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; `kdistill list methods` shows all")
    builder = PRESETS[name]
    accepted = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return builder(**hyper)
    return builder(**{k: v for k, v in hyper.items() if k in accepted and v is not None})


# --- transformer and language-model presets ---------------------------------------------------
# Layer terms read the names kdistill's transformers and its Hugging Face wrapper share:
# ``hidden_states.{i}`` (0 = embeddings, i = output of layer i) and ``attentions.{i - 1}`` (the
# attention probabilities of layer i). A layer map pairs student layer i with teacher layer
# map[i], 1-based, 0 being the embeddings.


def _layer_map(method: str, layer_map, student_layers: int | None, teacher_layers: int | None) -> list[tuple[int, int]]:
    if layer_map is None:
        if not student_layers or not teacher_layers:
            raise ValueError(
                f"method {method!r}: set layer_map ({{student layer: teacher layer}}, 0 = "
                "embeddings) or student_layers= and teacher_layers= for the uniform map"
            )
        # TinyBERT's uniform strategy g(m) = m·N/M, plus the embeddings (0 → 0).
        return [(0, 0)] + [(m, m * teacher_layers // student_layers) for m in range(1, student_layers + 1)]
    pairs = layer_map.items() if isinstance(layer_map, dict) else layer_map
    return sorted((int(s), int(t)) for s, t in pairs)


def tinybert(
    *, temperature: float = 1.0, alpha: float = 1.0, ce_weight: float | None = None, layer_map=None,
    student_layers: int | None = None, teacher_layers: int | None = None,
    hidden_weight: float = 1.0, attention_weight: float = 1.0,
):
    """TinyBERT / MiniLM-style: logit KD + hidden-state MSE + attention KL on mapped layers.

    Jiao et al., "TinyBERT", Findings of EMNLP 2020, arXiv:1909.10351: embedding and hidden
    states regressed through a projection (here a linear connector per layer) and the
    prediction layer's soft cross-entropy (T = 1), all trained jointly here rather than in
    TinyBERT's two stages; attention maps compared as distributions with KL, as MiniLM (Wang et
    al., NeurIPS 2020, arXiv:2002.10957) does, instead of TinyBERT's MSE on the raw scores.
    ``layer_map`` {student layer: teacher layer} (0 = embeddings; default: uniform).
    """
    pairs = _layer_map("tinybert", layer_map, student_layers, teacher_layers)
    terms = [
        Term("ce", "ce", weight=1.0 - alpha if ce_weight is None else ce_weight, teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
    ]
    terms = [t for t in terms if t.weight]
    for s, t in pairs:
        terms.append(Term(f"hidden_{s}", "hidden_mse", weight=hidden_weight, student=f"hidden_states.{s}",
                          teacher=f"hidden_states.{t}", connector="auto"))
    for s, t in pairs:
        if s > 0 and t > 0:
            terms.append(Term(f"attention_{s}", "attention_kl", weight=attention_weight,
                              student=f"attentions.{s - 1}", teacher=f"attentions.{t - 1}"))
    return terms


def minilm(
    *, temperature: float = 1.0, alpha: float = 1.0, ce_weight: float | None = None,
    student_layers: int | None = None, teacher_layers: int | None = None, attention_weight: float = 1.0,
):
    """MiniLM-style: logit KD + KL between the last layers' self-attention distributions.

    Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957: only the last layer is mimicked,
    so the student's depth is free (MiniLM's value-relation term is not included).
    """
    if not student_layers or not teacher_layers:
        raise ValueError("method 'minilm': set student_layers= and teacher_layers= (the layer counts)")
    terms = [
        Term("ce", "ce", weight=1.0 - alpha if ce_weight is None else ce_weight, teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
        Term("attention", "attention_kl", weight=attention_weight,
             student=f"attentions.{student_layers - 1}", teacher=f"attentions.{teacher_layers - 1}"),
    ]
    return [t for t in terms if t.weight]


def distilbert(
    *, temperature: float = 2.0, alpha: float = 0.5, ce_weight: float | None = None,
    cosine_weight: float = 1.0, student_layers: int | None = None, teacher_layers: int | None = None,
):
    """DistilBERT: CE + logit KD (T = 2) + cosine loss between the last hidden states; pair it
    with ``distill.params.init_from_teacher`` (one teacher layer out of two).

    Sanh et al., NeurIPS 2019 EMC² workshop, arXiv:1910.01108 (their L_ce, L_cos; the masked-LM
    term becomes the task's cross-entropy when distilling a fine-tuned teacher).
    """
    if not student_layers or not teacher_layers:
        raise ValueError("method 'distilbert': set student_layers= and teacher_layers= (the layer counts)")
    terms = [
        Term("ce", "ce", weight=1.0 - alpha if ce_weight is None else ce_weight, teacher=None),
        Term("kd", "kd", weight=alpha, params={"temperature": temperature}),
        Term("cosine", "hidden_cosine", weight=cosine_weight, student=f"hidden_states.{student_layers}",
             teacher=f"hidden_states.{teacher_layers}", connector="auto"),
    ]
    return [t for t in terms if t.weight]


def token_kd(
    *, loss: str = "forward_kl", temperature: float = 1.0, alpha: float = 0.5,
    ce_weight: float | None = None, beta: float | None = None, skew: float | None = None,
):
    """Token-level LM distillation: (1−α)·token CE + α·divergence(teacher ‖ student) per token.

    ``loss`` is any token loss (forward_kl, reverse_kl, jsd with ``beta``, skew_kl /
    skew_reverse_kl with ``skew``, tvd); no T² factor (see ``kdistill.losses.token``). With
    ``distill.params.on_policy`` it is GKD (Agarwal et al., ICLR 2024, arXiv:2306.13649).
    """
    params: dict[str, Any] = {"temperature": temperature}
    if beta is not None:
        params["beta"] = beta
    if skew is not None:
        params["alpha"] = skew
    terms = [
        Term("ce", "token_ce", weight=1.0 - alpha if ce_weight is None else ce_weight, teacher=None),
        Term("kd", loss, weight=alpha, params=params),
    ]
    return [t for t in terms if t.weight]


PRESETS.update({
    "tinybert": tinybert,
    "minilm": minilm,
    "distilbert": distilbert,
    "token_kd": token_kd,
})
