"""The frozen ``Teacher`` and the one trainable module, ``Distiller`` (student + connectors +
stateful losses), which turns a batch and the teacher's outputs into the loss dict.

DDP wraps the ``Distiller`` only; the teacher sits beside it, on the same device, outside the
optimizer and outside autograd (timm's distillation task does the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from kdistill.connectors import build_connector
from kdistill.data.transfer import labelled_mask
from kdistill.losses.chunked import CHUNKED_LOSSES, ChunkedTerm, chunked_token_losses
from kdistill.methods import Term, teacher_taps
from kdistill.modeling import LOGITS, LazyLogits, ModelOutput, call_model
from kdistill.taps import FeatureTap, probe_shapes


class Teacher:
    """A frozen model: eval mode, no gradients, never trained, never in an optimizer.

    Deliberately not an ``nn.Module``, so it can never be registered inside the ``Distiller``
    and picked up by ``parameters()``, ``.train()`` or DDP.
    """

    def __init__(self, module: nn.Module, taps: Iterable[str] = (), *, lazy_logits: bool = False):
        self.module = module.eval().requires_grad_(False)
        self.tap = FeatureTap(module, taps) if taps else None
        # Final hidden states + head instead of (B, L, V) logits, for chunked losses (set by
        # Distiller.build when its terms are chunked; a model that cannot gives logits).
        self.lazy_logits = lazy_logits

    @property
    def taps(self) -> list[str]:
        return self.tap.names if self.tap else []

    def to(self, device) -> Teacher:
        self.module.to(device)
        return self

    def __call__(self, batch: Mapping) -> ModelOutput:
        # Re-assert eval mode each call: a user's `model.train()` elsewhere must not turn on
        # dropout or update BatchNorm statistics of the teacher.
        self.module.eval()
        # no_grad, not inference_mode: inference tensors cannot be saved for backward (mse_loss
        # and products with the student do save them), and copying every output out of
        # inference mode costs a full read and write of the teacher's logits and features.
        # The caller chooses the precision (fit runs this under the accelerator's autocast).
        with torch.no_grad():
            logits = call_model(self.module, batch["input"], lazy_logits=self.lazy_logits)
            features = dict(self.tap.features) if self.tap else {}
        return ModelOutput(logits, features)


class Distiller(nn.Module):
    """Student, connectors and stateful losses: the one module that trains.

    ``forward(batch, teacher_out)`` returns ``{"loss", "logits", "loss/<term>", ...}`` where each
    ``loss/<term>`` is that term's weighted contribution, so they sum to ``loss``.
    """

    def __init__(
        self,
        student: nn.Module,
        terms: Iterable[Term],
        connectors: Mapping[str, nn.Module] | None = None,
    ):
        super().__init__()
        self.student = student
        self.terms = list(terms)
        names = [term.name for term in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"term names must be unique, got {names}")
        unbuilt = [term.name for term in self.terms if term.needs_build]
        if unbuilt:
            raise ValueError(
                f"term(s) {', '.join(unbuilt)}: a stateful loss is sized from the features; "
                "create the distiller with Distiller.build(student, terms, teacher=..., "
                "example_batch=..., num_samples=...)"
            )
        self.chunk_size = _chunk_size(self.terms)  # 0: the logits terms see whole logits
        # Batches mix labelled samples with a transfer set's (target UNLABELLED): the terms that
        # take the target see the labelled ones only (Term.__call__, Term.count).
        self.transfer = False
        self.connectors = nn.ModuleDict(dict(connectors or {}))
        self.loss_modules = nn.ModuleDict(
            {term.name: term.loss for term in self.terms if isinstance(term.loss, nn.Module)}
        )
        # DDP's hook for buffers it must neither broadcast from rank 0 nor check: a loss that
        # keeps them equal across processes itself (CRD's memory banks) lists them.
        self._ddp_params_and_buffers_to_ignore = [
            f"loss_modules.{name}.{buffer}"
            for name, module in self.loss_modules.items()
            for buffer in getattr(module, "replicated_buffers", ())
        ]
        student_taps = [t.student for t in self.terms if t.student != LOGITS]
        self.tap = FeatureTap(student, student_taps) if student_taps else None
        # The 1-based epoch the trainer sets and warm-up schedules read, kept as a tensor: under
        # torch.compile a Python int would be a guard, and every epoch of a warm-up a recompile.
        self.register_buffer("_epoch", torch.ones((), dtype=torch.float32), persistent=False)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(value)

    @classmethod
    def build(
        cls,
        student: nn.Module,
        terms: Iterable[Term],
        *,
        teacher: Teacher | None = None,
        example_batch: Mapping | None = None,
        num_samples: int | None = None,
    ) -> Distiller:
        """Size each term's connector and stateful loss by running one example batch through
        both models.

        Args:
            num_samples: size of the training set, for losses with a memory bank over its
                samples (CRD); their batches must carry each sample's ``"index"``.
        """
        terms = list(terms)
        connectors = {}
        probed = [t for t in terms if t.connector or t.needs_build]
        if probed:
            if teacher is None or example_batch is None:
                raise ValueError(
                    "connectors and stateful losses are sized "
                    "by probing: pass teacher= and example_batch="
                )
            inputs = example_batch["input"]
            s_shapes = probe_shapes(
                student, inputs, [t.student for t in probed if t.student != LOGITS]
            )
            # The teacher's own output gives its shapes, live or cached (a cache has no module).
            teacher_out = teacher(example_batch)
            missing = [
                t.teacher
                for t in probed
                if t.teacher not in (None, LOGITS) and t.teacher not in teacher_out.features
            ]
            if missing:
                raise ValueError(
                    f"the teacher is not tapped at {missing}: create "
                    "it as Teacher(model, taps=teacher_taps(terms))"
                )
            t_shapes = {name: tuple(value.shape) for name, value in teacher_out.features.items()}
            with torch.no_grad():
                logits_shape = (
                    tuple(call_model(student.eval(), inputs).shape),
                    tuple(teacher_out.logits.shape),
                )
            student.train()
            built = {}
            for term in probed:
                s_shape = logits_shape[0] if term.student == LOGITS else s_shapes[term.student]
                t_shape = logits_shape[1] if term.teacher == LOGITS else t_shapes.get(term.teacher)
                if term.connector:
                    connectors[term.name] = build_connector(term.connector, s_shape, t_shape)
                    if not isinstance(connectors[term.name], nn.Identity):
                        s_shape = (
                            t_shape  # a connector maps the student feature to the teacher's shape
                        )
                if term.needs_build:
                    built[term.name] = term.built(s_shape, t_shape, num_samples=num_samples)
            terms = [built.get(term.name, term) for term in terms]
        distiller = cls(student, terms, connectors)
        if distiller.chunk_size and isinstance(teacher, Teacher):
            teacher.lazy_logits = True  # its logits too are then made a chunk at a time
        return distiller

    @property
    def needs_teacher(self) -> bool:
        return any(term.takes_teacher for term in self.terms)

    @property
    def teacher_taps(self) -> list[str]:
        """Teacher module names the terms read: the teacher must be tapped at these."""
        return teacher_taps(self.terms)

    def counts(self, batch: Mapping) -> Tensor:
        """What each term's value is a mean of in ``batch`` (``Term.count``), in term order."""
        labelled = self._labelled(batch)
        mask = batch.get("mask")
        return torch.stack([term.count(batch["target"], mask, labelled) for term in self.terms])

    def _labelled(self, batch: Mapping) -> Tensor | None:
        """Which samples carry a label, where the student trains on a transfer set too."""
        return labelled_mask(batch["target"]) if self.transfer else None

    def forward(
        self,
        batch: Mapping,
        teacher_out: ModelOutput | None = None,
        shares: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss dict of ``batch``. ``shares`` (one per term, in term order): the batch's
        share of each term's ``counts`` over a gradient-accumulation window; the dict then also
        holds ``"objective"``, each term's contribution times its share, which the window's
        backward takes (``fit``), while ``"loss"`` and the terms stay this batch's own means."""
        if self.tap:
            self.tap.clear()
        logits = call_model(self.student, batch["input"], lazy_logits=self.chunk_size > 0)
        chunked = isinstance(logits, LazyLogits)
        student_out = ModelOutput(logits, self.tap.features if self.tap else {})
        if self.needs_teacher and teacher_out is None:
            raise ValueError("these terms compare with a teacher: pass teacher_out")
        result: dict[str, Tensor] = {"logits": logits}
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        objective = total
        labelled = self._labelled(batch)
        if chunked:
            part, objective_part = self._chunked_terms(logits, teacher_out, batch, result, shares)
            total, objective = total + part, objective + objective_part
        for index, term in enumerate(self.terms):
            if chunked and term.student == LOGITS:
                continue
            student_value = student_out.get(term.student)
            if term.name in self.connectors:
                student_value = self.connectors[term.name](student_value)
            teacher_value = teacher_out.get(term.teacher) if term.takes_teacher else None
            if isinstance(teacher_value, LazyLogits):  # a chunking teacher, a student that is not
                teacher_value = teacher_value.materialize()
            # The models run under the accelerator's autocast; the loss math does not (a Gram
            # matrix or a softmax at temperature in bf16 is far off): every term, a user's own
            # included, sees float32 inputs and computes in float32.
            with torch.autocast(logits.device.type, enabled=False):
                value = term(
                    _float32(student_value),
                    _float32(teacher_value),
                    batch["target"],
                    batch.get("index"),
                    batch.get("mask"),
                    labelled,
                )
            contribution = term.weight_at(self._epoch) * value.sum()  # SP/CRD return shape [1]
            result[f"loss/{term.name}"] = contribution
            total = total + contribution
            if shares is not None:
                objective = objective + contribution * shares[index].to(contribution.dtype)
        result["loss"] = total
        if shares is not None:
            result["objective"] = objective
        return result

    def _chunked_terms(
        self,
        logits: LazyLogits,
        teacher_out: ModelOutput | None,
        batch: Mapping,
        result: dict,
        shares: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The logits terms in one pass over chunks of positions (``kdistill.losses.chunked``):
        their weighted sum and, with ``shares``, the sum weighed by them (the one differentiable
        of the two; without ``shares`` both are the differentiable sum), and each term's
        contribution (detached) in ``result``."""
        chunked = [index for index, term in enumerate(self.terms) if term.student == LOGITS]
        terms = [self.terms[index] for index in chunked]
        weights = [term.weight_at(self._epoch) for term in terms]
        scaled = weights if shares is None else [w * shares[i] for w, i in zip(weights, chunked)]
        teacher = teacher_out.logits if any(term.takes_teacher for term in terms) else None
        with torch.autocast(logits.device.type, enabled=False):  # float32 at least, as above
            total, values = chunked_token_losses(
                logits,
                teacher,
                batch["target"],
                [ChunkedTerm(term.loss, w, term.params) for term, w in zip(terms, scaled)],
                mask=batch.get("mask"),
                chunk_size=self.chunk_size,
            )
        contributions = [weight * _float32(value) for weight, value in zip(weights, values)]
        for term, contribution in zip(terms, contributions):
            result[f"loss/{term.name}"] = contribution
        total = _float32(total)  # float64 stays float64: a float64 check of a window is exact
        return (total, total) if shares is None else (sum(contributions), total)


def _chunk_size(terms: list[Term]) -> int:
    """Positions per chunk of the logits terms (0: the logits whole). One term asking for
    chunks puts every logits term in the chunked pass, so each must have a chunked form."""
    chunk_size = max((term.chunk_size for term in terms), default=0)
    if chunk_size:
        for term in terms:
            if term.student == LOGITS and (term.loss not in CHUNKED_LOSSES or term.connector):
                name = getattr(term.loss, "__name__", type(term.loss).__name__)
                raise ValueError(
                    f"term {term.name!r} ({name}): "
                    f"chunk_size={chunk_size} computes every logits term in chunks, and only "
                    f"{', '.join(f.__name__ for f in CHUNKED_LOSSES)} (without a connector) have a "
                    "chunked form; set chunk_size: 0"
                )
    return chunk_size


def _float32(value):
    """Half-precision floating tensors in float32; anything else (ids, None, a top-k
    ``SparseTeacher`` of float32 log-probabilities) unchanged."""
    if isinstance(value, Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value
