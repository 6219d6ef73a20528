"""Distillation losses with learned state: VID (a regressor and a variance per channel) and CRD
(embedding heads and a memory bank over the training samples).

They are ``nn.Module``s whose parameters train with the student. Their sizes depend on the
features they compare, so each has ``from_shapes(student_shape, teacher_shape, ...)``:
``Distiller.build`` probes one example batch and calls it for a term that names the loss
(``Term("crd", "crd", ...)``). The forward takes the student first and the teacher second, like
every loss; teacher features are detached and half-precision inputs computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.losses.feature import pool_to_common_size
from kdistill.losses.logit import upcast

__all__ = ["STATEFUL_LOSSES", "CRDLoss", "VIDLoss"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_across_processes(tensor: Tensor) -> Tensor:
    """Every process's ``tensor`` concatenated along the first axis, in rank order (all ranks
    must call it with the same shape, as Accelerate's evenly batched loaders give)."""
    if not _distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _channels(shape: tuple[int, ...], name: str) -> int:
    if len(shape) not in (2, 4):
        raise ValueError(
            f"{name} compares (N, C, H, W) maps or (N, D) vectors, got shape {tuple(shape)}"
        )
    return shape[1]


class VIDLoss(nn.Module):
    """Variational information distillation: Gaussian likelihood of teacher features (learned).

    The negative log-likelihood of the teacher's feature under a Gaussian whose mean the student
    predicts and whose variance is learned.

    Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for Knowledge
    Transfer", CVPR 2019, arXiv:1904.05835. Maximising this likelihood maximises a lower bound on
    the mutual information between the teacher's and the student's features. With
    μ = regressor(f_S) (three 1×1 convolutions with ReLUs between, no bias) and a variance per
    teacher channel σ²_c = softplus(log_scale_c) + eps (initialised to ``init_pred_var``):
    loss = mean over N·C·H·W of ½ · ((μ − f_T)² / σ² + log σ²).
    Matches RepDistiller ``VIDLoss`` (the authors' code), mdistiller and torchdistill; the
    constant ½·log 2π is left out, as there. Where spatial sizes differ the larger map is pooled
    to the smaller. (N, D) vectors are treated as 1×1 maps.

    Args:
        student_channels: C_S of the student feature.
        teacher_channels: C_T of the teacher feature.
        mid_channels: width of the regressor's hidden layers (RepDistiller uses C_T).
        init_pred_var: σ² at initialisation (5.0).
        eps: floor of σ² (1e-5).
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        *,
        mid_channels: int | None = None,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        mid_channels = mid_channels or teacher_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, teacher_channels, 1, bias=False),
        )
        # softplus⁻¹(init_pred_var − eps), so that the variance starts at init_pred_var.
        initial = math.log(math.expm1(init_pred_var - eps))
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), initial))
        self.eps = eps

    @classmethod
    def from_shapes(
        cls,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        *,
        num_samples: int | None = None,
        **params,
    ) -> VIDLoss:
        """Sized from probed feature shapes (batch axis first); ``num_samples`` is not used."""
        return cls(_channels(student_shape, "vid"), _channels(teacher_shape, "vid"), **params)

    def forward(self, s_feat: Tensor, t_feat: Tensor) -> Tensor:
        """Args: s_feat (N, C_S, H, W) or (N, C_S); t_feat (N, C_T, H', W') or (N, C_T), detached.
        Returns a 0-d tensor."""
        s_feat, t_feat = upcast(s_feat, t_feat.detach())
        if s_feat.dim() == 2:
            s_feat = s_feat[:, :, None, None]
        if t_feat.dim() == 2:
            t_feat = t_feat[:, :, None, None]
        s_feat, t_feat = pool_to_common_size(s_feat, t_feat)
        weight = self.regressor[0].weight
        mean = upcast(self.regressor(s_feat.to(weight.dtype)))[0]
        variance = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        negative_log_likelihood = 0.5 * ((mean - t_feat) ** 2 / variance + torch.log(variance))
        return negative_log_likelihood.mean()


class CRDLoss(nn.Module):
    """Contrastive representation distillation: NCE against a memory bank of other samples.

    The student's and the teacher's embeddings of the same sample are the positive pair; the
    negatives are drawn from a memory bank of the other samples' embeddings.

    Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020,
    arXiv:1910.10699. Follows RepDistiller ``CRDLoss`` (the authors' code):

    - v_S = l2norm(W_S f_S + b_S), v_T = l2norm(W_T f_T + b_T), both heads trained.
    - Two memory banks hold one embedding per training sample: ``memory_student`` (v_S) and
      ``memory_teacher`` (v_T). For sample i, row 0 of its contrast set is the sample itself and
      the K others are negatives. The student's scores exp(memory_teacher[j] · v_S[i] / τ) / Z_S
      contrast it with the teacher's memory, and the teacher's scores with the student's memory.
    - Z is set once, on the first call, to mean(score) · num_samples (a constant, no gradient),
      and kept in the ``normalizer`` buffer.
    - Each side's loss is the NCE loss with noise ratio K/num_samples, summed over the contrast
      set and divided by N; the loss is their sum. After the scores are computed, in training
      mode, the memory rows of the batch move to momentum · old + (1 − momentum) · new,
      renormalised.

    Data-parallel (DDP): every process gathers the batch's indices and embeddings from all the
    others before the memory update, so each holds the same, complete bank; the banks are
    broadcast from rank 0 once, at the first training step, and are listed in
    ``replicated_buffers`` so that ``Distiller`` keeps them out of DDP's per-step buffer
    broadcast (which would copy rank 0's partial bank over the others, 2 × N × 128 floats a
    step).

    Deviations, each deliberate: negatives are drawn uniformly among the *other* samples
    (RepDistiller's CIFAR loader draws them from the other classes; a generic dataset here has
    no class table); the number of negatives defaults to min(16384, num_samples − 1) rather than
    a fixed 16384, which would only repeat samples on a small data set; the memory is updated
    only in training mode; the result is a 0-d tensor (RepDistiller: shape [1]).

    Args:
        student_dim: width of the flattened student feature.
        teacher_dim: width of the flattened teacher feature.
        num_samples: size of the training set; ``index`` values lie in [0, num_samples).
        feat_dim: width of the embeddings and memory (128).
        num_negatives: K; ``None`` for min(16384, num_samples − 1).
        nce_temperature: τ (0.07).
        momentum: of the memory update (0.5).
        eps: in the NCE denominators (1e-7).
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_samples: int,
        *,
        feat_dim: int = 128,
        num_negatives: int | None = None,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        eps: float = 1e-7,
    ):
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"crd: num_samples={num_samples}; it needs 2 training samples or more")
        self.embed_student = nn.Linear(student_dim, feat_dim)
        self.embed_teacher = nn.Linear(teacher_dim, feat_dim)
        self.num_samples = num_samples
        if num_negatives is None:
            num_negatives = min(16384, num_samples - 1)
        self.num_negatives = num_negatives
        self.nce_temperature = nce_temperature
        self.momentum = momentum
        self.eps = eps
        # Uniform in ±1/sqrt(feat_dim/3): rows of about unit norm, like the embeddings to come.
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_student", (torch.rand(num_samples, feat_dim) * 2 - 1) * bound)
        self.register_buffer("memory_teacher", (torch.rand(num_samples, feat_dim) * 2 - 1) * bound)
        # [Z_student, Z_teacher]; 0 means "not set yet" (Z is a mean of exponentials, always > 0).
        self.register_buffer("normalizer", torch.zeros(2))
        self._index_checked = False
        self._banks_synchronised = False

    # Buffers this module keeps equal across processes itself: DDP must not broadcast them.
    replicated_buffers = ("memory_student", "memory_teacher")

    @classmethod
    def from_shapes(
        cls,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        *,
        num_samples: int | None = None,
        **params,
    ) -> CRDLoss:
        """Sized from probed feature shapes (batch axis first) and the training-set size."""
        if num_samples is None:
            raise ValueError(
                "crd keeps a memory bank over the training samples: pass num_samples= "
                "(the size of the training set) to Distiller.build"
            )
        student_dim, teacher_dim = math.prod(student_shape[1:]), math.prod(teacher_shape[1:])
        return cls(student_dim, teacher_dim, num_samples, **params)

    def _embed(self, head: nn.Linear, feature: Tensor) -> Tensor:
        embedding = head(feature.flatten(1).to(head.weight.dtype))
        return F.normalize(upcast(embedding)[0], dim=1)

    def _draw_contrast_indices(self, index: Tensor) -> Tensor:
        """(N, 1 + K): the sample itself, then K others drawn uniformly with replacement."""
        shape = (len(index), self.num_negatives)
        others = torch.randint(0, self.num_samples - 1, shape, device=index.device)
        others = others + (others >= index.unsqueeze(1)).long()  # skip the positive itself
        return torch.cat([index.unsqueeze(1), others], dim=1)

    def _scores(self, memory: Tensor, embedding: Tensor, contrast_idx: Tensor, side: int) -> Tensor:
        """exp(memory[contrast_idx[i, k]] · embedding[i] / τ) / Z, (N, 1 + K)."""
        rows = memory[contrast_idx].detach()  # (N, 1 + K, feat_dim)
        # exp(·/0.07) turns a bf16 rounding of the dot product into a ~5 % error: keep float32
        # even under mixed-precision autocast.
        with torch.autocast(embedding.device.type, enabled=False):
            logits = torch.einsum("nkd,nd->nk", rows.to(embedding.dtype), embedding)
        scores = torch.exp(logits / self.nce_temperature)
        # Z from the first batch, then frozen: the NCE estimate needs a fixed partition function.
        # Chosen on the device (no host sync per step); a fresh tensor, so later writes to the
        # buffer cannot touch the graph.
        stored = self.normalizer[side]
        z = torch.where(stored > 0, stored, scores.detach().mean() * self.num_samples)
        self.normalizer[side] = z
        return scores / z

    def _nce_loss(self, scores: Tensor) -> Tensor:
        noise = self.num_negatives / self.num_samples  # K · P_noise, P_noise uniform = 1/n
        positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + self.eps))
        negatives = torch.log(noise / (scores[:, 1:] + noise + self.eps))
        return -(positive.sum() + negatives.sum()) / len(scores)

    @torch.no_grad()
    def _update_memories(self, index: Tensor, v_student: Tensor, v_teacher: Tensor) -> None:
        if _distributed():
            index = _gather_across_processes(index)
            v_student = _gather_across_processes(v_student.detach())
            v_teacher = _gather_across_processes(v_teacher.detach())
        self._update_memory(self.memory_student, index, v_student)
        self._update_memory(self.memory_teacher, index, v_teacher)

    @torch.no_grad()
    def _update_memory(self, memory: Tensor, index: Tensor, embedding: Tensor) -> None:
        rows = memory[index] * self.momentum + embedding.to(memory.dtype) * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(rows, dim=1))

    def forward(
        self,
        s_emb: Tensor,
        t_emb: Tensor,
        *,
        index: Tensor | None = None,
        contrast_idx: Tensor | None = None,
    ) -> Tensor:
        """Args:
            s_emb: student features, (N, ...) flattened per sample.
            t_emb: teacher features, (N, ...); detached.
            index: each sample's position in the training set, (N,) int64 (the batch's
                ``"index"``).
            contrast_idx: (N, 1 + K) memory rows to contrast with, column 0 the sample itself;
                drawn when not given.

        Returns:
            0-d tensor.
        """
        if index is None:
            raise ValueError(
                "crd needs each sample's index in the training set: the batch has no 'index' "
                "(kdistill datasets provide it; pass index= when calling the loss directly)"
            )
        index = index.long()
        if not self._index_checked:  # once: the check costs a host sync
            if int(index.max()) >= self.num_samples:
                raise ValueError(
                    f"crd: sample index {int(index.max())} is outside the memory bank of "
                    f"{self.num_samples} samples; num_samples must be the training-set size"
                )
            self._index_checked = True
        s_emb, t_emb = upcast(s_emb, t_emb.detach())
        v_student = self._embed(self.embed_student, s_emb)
        v_teacher = self._embed(self.embed_teacher, t_emb)
        if self.training and not self._banks_synchronised:
            # Ranks may have drawn different initial banks: start from rank 0's, once.
            if _distributed():
                dist.broadcast(self.memory_student, src=0)
                dist.broadcast(self.memory_teacher, src=0)
            self._banks_synchronised = True
        if contrast_idx is None:
            contrast_idx = self._draw_contrast_indices(index)
        student_scores = self._scores(self.memory_teacher, v_student, contrast_idx, side=0)
        teacher_scores = self._scores(self.memory_student, v_teacher, contrast_idx, side=1)
        loss = self._nce_loss(student_scores) + self._nce_loss(teacher_scores)
        if self.training:
            self._update_memories(index, v_student, v_teacher)
        return loss


STATEFUL_LOSSES: dict[str, type[nn.Module]] = {
    "vid": VIDLoss,
    "crd": CRDLoss,
}
