"""Token-level LM distillation losses: golden values from the textbook formulas written out as
explicit float64 sums, and the properties a training run silently depends on (masking,
chunking, the GKD β limits, direction, stability, the top-k teacher's error)."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import LOSSES
from kdistill.losses.token import (
    TOKEN_LOSSES,
    SparseTeacher,
    forward_kl,
    forward_kl_topk,
    jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    topk_teacher,
    tvd,
)

DENSE = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "jsd_0.1": lambda s, t, **kw: jsd(s, t, beta=0.1, **kw),
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
}


def logits(seed, shape=(2, 5, 7), scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def padding_mask():
    # Right padding in row 0, left padding in row 1: the two layouts a batch of prompts has.
    return torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)


# --- textbook formulas, one position at a time, in plain Python floats ----------------------


def softmax_list(row, temperature):
    scaled = [x / temperature for x in row]
    top = max(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def kl_list(a, b):
    return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)


def mix(a, b, weight_a):
    return [weight_a * ai + (1 - weight_a) * bi for ai, bi in zip(a, b)]


TEXTBOOK = {
    "forward_kl": lambda p, q: kl_list(p, q),
    "reverse_kl": lambda p, q: kl_list(q, p),
    "jsd": lambda p, q: 0.5 * kl_list(p, mix(p, q, 0.5)) + 0.5 * kl_list(q, mix(p, q, 0.5)),
    "jsd_0.1": lambda p, q: 0.1 * kl_list(p, mix(p, q, 0.1)) + 0.9 * kl_list(q, mix(p, q, 0.1)),
    "skew_kl": lambda p, q: kl_list(p, mix(p, q, 0.1)),
    "skew_reverse_kl": lambda p, q: kl_list(q, mix(q, p, 0.1)),
    "tvd": lambda p, q: 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q)),
}


def textbook_mean(name, s, t, mask, temperature):
    values = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                p = softmax_list(t[b, i].tolist(), temperature)
                q = softmax_list(s[b, i].tolist(), temperature)
                values.append(TEXTBOOK[name](p, q))
    return sum(values) / len(values)


@pytest.mark.parametrize("name", list(DENSE))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_textbook_formula_with_mask(name, temperature):
    s, t, mask = logits(0), logits(1), padding_mask()
    value = DENSE[name](s, t, mask=mask, temperature=temperature)
    expected = textbook_mean(name, s, t, mask, temperature)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_kl_directions_match_torch_kl_div():
    s, t = logits(2, shape=(12, 9)), logits(3, shape=(12, 9))
    log_q, log_p = F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1)
    # kl_div(input, target) = KL(target ‖ exp(input)): the student's log-probs go in `input`.
    forward = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    reverse = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    assert forward_kl(s, t, temperature=2.0).item() == pytest.approx(forward.item(), rel=1e-12)
    assert reverse_kl(s, t, temperature=2.0).item() == pytest.approx(reverse.item(), rel=1e-12)
    assert abs(forward.item() - reverse.item()) > 1e-3  # the directions differ on these inputs


def test_no_t_squared_factor():
    s, t = logits(4), logits(5)
    for loss in DENSE.values():
        scaled = loss(s / 3.0, t / 3.0)
        assert loss(s, t, temperature=3.0).item() == pytest.approx(scaled.item(), rel=1e-12)


# --- masks and reductions --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DENSE))
@pytest.mark.parametrize("garbage", [float("-inf"), float("inf"), float("nan"), 1e30])
def test_masked_positions_change_neither_value_nor_gradient(name, garbage):
    mask = padding_mask()
    clean_s, t = logits(6), logits(7)
    dirty_s, dirty_t = clean_s.clone(), t.clone()
    dirty_s[~mask] = garbage
    dirty_t[~mask] = garbage
    clean_s.requires_grad_(True)
    dirty_s.requires_grad_(True)
    clean = DENSE[name](clean_s, t, mask=mask)
    dirty = DENSE[name](dirty_s, dirty_t, mask=mask)
    clean.backward()
    dirty.backward()
    assert dirty.item() == pytest.approx(clean.item(), rel=1e-12)
    assert torch.isfinite(dirty_s.grad).all()
    assert (dirty_s.grad[~mask] == 0).all()
    torch.testing.assert_close(dirty_s.grad, clean_s.grad, rtol=1e-12, atol=1e-15)


def test_bool_int_and_float_masks_agree():
    s, t, mask = logits(8), logits(9), padding_mask()
    by_bool = forward_kl(s, t, mask=mask)
    assert forward_kl(s, t, mask=mask.long()).item() == by_bool.item()
    assert forward_kl(s, t, mask=mask.double()).item() == by_bool.item()


@pytest.mark.parametrize("name", list(DENSE))
def test_all_masked_is_zero_not_nan(name):
    s = logits(10).requires_grad_(True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    value = DENSE[name](s, logits(11), mask=mask)
    value.backward()
    assert value.item() == 0.0
    assert (s.grad == 0).all()


@pytest.mark.parametrize("name", list(DENSE))
def test_chunked_sums_equal_unchunked_mean(name):
    s, t = logits(12, shape=(3, 11, 6)), logits(13, shape=(3, 11, 6))
    mask = torch.rand(3, 11, generator=torch.Generator().manual_seed(0)) > 0.3
    whole = DENSE[name](s, t, mask=mask)
    bounds = [0, 4, 5, 11]  # uneven chunks, one a single position
    total = sum(
        DENSE[name](s[:, a:b], t[:, a:b], mask=mask[:, a:b], reduction="sum")
        for a, b in zip(bounds, bounds[1:])
    )
    assert (total / mask.sum()).item() == pytest.approx(whole.item(), rel=1e-12)


def test_reduction_none_is_per_position_with_zeros_at_padding():
    s, t, mask = logits(14), logits(15), padding_mask()
    per_position = forward_kl(s, t, mask=mask, reduction="none")
    assert per_position.shape == (2, 5)
    assert (per_position[~mask] == 0).all()
    assert (per_position.sum() / mask.sum()).item() == pytest.approx(
        forward_kl(s, t, mask=mask).item(), rel=1e-12
    )
    with pytest.raises(ValueError, match="reduction"):
        forward_kl(s, t, reduction="batchmean")


@pytest.mark.parametrize("name", list(DENSE))
def test_flat_and_batched_layouts_agree(name):
    s, t, mask = logits(16), logits(17), padding_mask()
    batched = DENSE[name](s, t, mask=mask)
    flat = DENSE[name](s.reshape(-1, 7), t.reshape(-1, 7), mask=mask.reshape(-1))
    assert flat.item() == pytest.approx(batched.item(), rel=1e-12)
    # Without a mask every position counts, in either layout.
    assert DENSE[name](s.reshape(-1, 7), t.reshape(-1, 7)).item() == pytest.approx(
        DENSE[name](s, t).item(), rel=1e-12
    )


def test_shape_errors_name_the_problem():
    s = logits(18)
    with pytest.raises(ValueError, match="vocabulary"):
        forward_kl(s, logits(19, shape=(2, 5, 8)))
    with pytest.raises(ValueError, match="mask shape"):
        forward_kl(s, logits(19), mask=torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="beta"):
        jsd(s, logits(19), beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl(s, logits(19), alpha=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        tvd(s, logits(19), temperature=0.0)


# --- properties of the divergences -----------------------------------------------------------


def test_jsd_beta_limits_are_the_two_kls_exactly():
    s, t, mask = logits(20), logits(21), padding_mask()
    assert torch.equal(jsd(s, t, beta=0.0, mask=mask), forward_kl(s, t, mask=mask))
    assert torch.equal(jsd(s, t, beta=1.0, mask=mask), reverse_kl(s, t, mask=mask))
    # The limits are those of the normalised divergence: jsd ≈ β·KL(p‖q) near β = 0.
    small = 1e-6
    near_forward = jsd(s, t, beta=small) / small
    near_reverse = jsd(s, t, beta=1 - small) / small
    assert near_forward.item() == pytest.approx(forward_kl(s, t).item(), rel=1e-4)
    assert near_reverse.item() == pytest.approx(reverse_kl(s, t).item(), rel=1e-4)


def test_jsd_symmetries():
    s, t = logits(22), logits(23)
    assert jsd(s, t, beta=0.5).item() == pytest.approx(jsd(t, s, beta=0.5).item(), rel=1e-12)
    assert jsd(s, t, beta=0.3).item() == pytest.approx(jsd(t, s, beta=0.7).item(), rel=1e-12)
    assert jsd(s, t, beta=0.3).item() != pytest.approx(jsd(t, s, beta=0.3).item(), rel=1e-3)
    # Far-apart distributions: the symmetric JSD approaches its ceiling log 2.
    apart = jsd(logits(22) * 1e3, logits(23) * 1e3, beta=0.5).item()
    assert math.log(2) * 0.9 < apart <= math.log(2) + 1e-12


def test_skew_limits():
    s, t = logits(24), logits(25)
    assert torch.equal(skew_kl(s, t, alpha=0.0), forward_kl(s, t))
    assert torch.equal(skew_reverse_kl(s, t, alpha=0.0), reverse_kl(s, t))
    assert skew_kl(s, t, alpha=1.0).item() == 0.0
    assert skew_reverse_kl(s, t, alpha=1.0).item() == 0.0
    # Skewing bounds the log-ratio by log(1/α), so it can only shrink the divergence.
    assert skew_kl(s, t).item() < forward_kl(s, t).item()
    assert skew_reverse_kl(s, t).item() < reverse_kl(s, t).item()
    assert skew_kl(s * 1e3, t * 1e3, alpha=0.1).item() <= math.log(10) + 1e-9


@pytest.mark.parametrize("name", list(DENSE))
def test_zero_when_equal_and_positive_otherwise(name):
    s = logits(26)
    assert DENSE[name](s, s.clone()).item() == pytest.approx(0.0, abs=1e-14)
    assert DENSE[name](s, s + 7.0).item() == pytest.approx(0.0, abs=1e-14)  # softmax shift
    for seed in range(4):
        per_position = DENSE[name](logits(seed), logits(seed + 50), reduction="none")
        assert (per_position > 0).all()


def test_tvd_between_zero_and_one():
    for seed in range(4):
        per_position = tvd(logits(seed, scale=30.0), logits(seed + 9, scale=30.0), reduction="none")
        assert ((per_position >= 0) & (per_position <= 1)).all()
    one_hot_a = torch.tensor([[1e4, -1e4, -1e4]])
    one_hot_b = torch.tensor([[-1e4, 1e4, -1e4]])
    assert tvd(one_hot_a, one_hot_b).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", list(DENSE) + ["forward_kl_topk"])
def test_gradient_reaches_student_never_teacher(name):
    s = logits(27).requires_grad_(True)
    t = logits(28).requires_grad_(True)
    if name == "forward_kl_topk":
        indices, log_probs, tail_log_prob = topk_teacher(t, 3)
        sparse = SparseTeacher(indices, log_probs.requires_grad_(True), tail_log_prob)
        forward_kl_topk(s, sparse, mask=padding_mask()).backward()
        assert sparse.log_probs.grad is None
    else:
        DENSE[name](s, t, mask=padding_mask()).backward()
    assert s.grad.abs().sum() > 0
    # A teacher that requires grad (an unfrozen model, a peer in mutual learning) is a constant.
    assert t.grad is None


# --- numerics --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DENSE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_logits_in_low_precision_are_finite_and_accurate(name, dtype):
    # ±1e4 logits: most probabilities underflow to exactly 0 even in float64.
    s = (logits(29, scale=1.0) * 1e4).to(dtype).requires_grad_(True)
    t = (logits(30, scale=1.0) * 1e4).to(dtype)
    value = DENSE[name](s, t, mask=padding_mask(), temperature=2.0)
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    reference = DENSE[name](s.detach().double(), t.double(), mask=padding_mask(), temperature=2.0)
    assert value.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", list(DENSE))
def test_tokens_banned_by_both_models_are_ignored(name):
    # -inf logits (a vocabulary padded for tensor cores, forbidden tokens) in both models.
    s, t = logits(31), logits(32)
    s_banned = torch.cat([s, torch.full((2, 5, 3), float("-inf"), dtype=s.dtype)], dim=-1)
    t_banned = torch.cat([t, torch.full((2, 5, 3), float("-inf"), dtype=t.dtype)], dim=-1)
    s_banned.requires_grad_(True)
    value = DENSE[name](s_banned, t_banned, mask=padding_mask())
    value.backward()
    assert value.item() == pytest.approx(DENSE[name](s, t, mask=padding_mask()).item(), rel=1e-12)
    assert torch.isfinite(s_banned.grad).all()


# --- sparse (top-k + tail) teacher -----------------------------------------------------------


def test_topk_teacher_fields():
    t = logits(33, shape=(2, 5, 50), scale=3.0)
    sparse = topk_teacher(t, 4, temperature=2.0)
    assert sparse.indices.shape == sparse.log_probs.shape == (2, 5, 4)
    assert sparse.tail_log_prob.shape == (2, 5)
    dense_log_p = F.log_softmax(t / 2.0, -1)
    torch.testing.assert_close(sparse.log_probs, dense_log_p.gather(-1, sparse.indices))
    assert (sparse.log_probs[..., :-1] >= sparse.log_probs[..., 1:]).all()  # most probable first
    total = sparse.log_probs.exp().sum(-1) + sparse.tail_mass
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    assert (topk_teacher(t, 50).tail_mass == 0).all()
    with pytest.raises(ValueError, match="k must be"):
        topk_teacher(t, 51)


def test_topk_tail_keeps_tiny_mass_in_float32():
    # 1 − Σ top-k would round to 0 here; the tail is ~V·e^-30 ≈ 9e-12 and must survive.
    t = torch.full((1, 100), -30.0)
    t[0, 0] = 0.0
    sparse = topk_teacher(t, 1)
    assert sparse.tail_mass.item() == pytest.approx(99 * math.exp(-30), rel=1e-4)
    # A student with all its mass on the teacher's top-1 still sees the teacher's tail.
    s = torch.full((1, 100), -60.0).requires_grad_(True)
    s.data[0, 0] = 0.0
    value = forward_kl_topk(s, sparse)
    value.backward()
    assert torch.isfinite(value) and value.item() > 0 and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_topk_with_k_equal_vocab_is_the_dense_loss(dtype):
    s, t, mask = logits(34, dtype=dtype), logits(35, dtype=dtype), padding_mask()
    sparse = topk_teacher(t, 7, temperature=1.5)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6  # only the summation order differs
    for name, loss in DENSE.items():
        expected = loss(s, t, mask=mask, temperature=1.5).item()
        value = loss(s, sparse, mask=mask, temperature=1.5).item()
        assert value == pytest.approx(expected, rel=tolerance), name
    assert forward_kl_topk(s, sparse, mask=mask, temperature=1.5).item() == pytest.approx(
        forward_kl(s, t, mask=mask, temperature=1.5).item(), rel=tolerance
    )


def test_topk_gap_is_tail_mass_times_tail_kl():
    """Chain rule of KL: dense − top-k = P_tail · KL(p(·|tail) ‖ q(·|tail)), per position."""
    s, t = logits(36, shape=(6, 40)), logits(37, shape=(6, 40))
    k = 5
    sparse = topk_teacher(t, k)
    gap = forward_kl(s, t, reduction="none") - forward_kl_topk(s, sparse, reduction="none")
    for row in range(6):
        p, q = softmax_list(t[row].tolist(), 1.0), softmax_list(s[row].tolist(), 1.0)
        tail = [v for v in range(40) if v not in set(sparse.indices[row].tolist())]
        p_tail, q_tail = sum(p[v] for v in tail), sum(q[v] for v in tail)
        tail_kl = kl_list([p[v] / p_tail for v in tail], [q[v] / q_tail for v in tail])
        assert gap[row].item() == pytest.approx(p_tail * tail_kl, rel=1e-10)


def test_topk_bucket_form_is_the_tail_spread_by_the_students_own_shape():
    """A "better tail" for top-k that spreads the tail mass over the other tokens in proportion
    to the student's own (detached) probabilities is the bucket form already, value and
    gradient: kdistill's top-k forward KL is that tail (bench/results/llm_sparse.md measures a
    uniform spread against it)."""
    s, t = logits(40, shape=(6, 30)), logits(41, shape=(6, 30))
    temperature = 1.5
    s = s.requires_grad_()
    sparse = topk_teacher(t, 5, temperature=temperature)
    bucket = forward_kl_topk(s, sparse, temperature=temperature)
    (bucket_grad,) = torch.autograd.grad(bucket, s)
    q = torch.softmax(s.detach() / temperature, -1)
    in_tail = torch.ones_like(q, dtype=torch.bool).scatter_(-1, sparse.indices, False)
    q_tail = torch.where(in_tail, q, 0.0)
    spread = sparse.tail_mass[:, None] * q_tail / q_tail.sum(-1, keepdim=True)
    p = spread.scatter(-1, sparse.indices, sparse.log_probs.exp())
    # log p as logits: softmax(log p · T / T) = p at the loss's temperature
    dense = forward_kl(s, p.log() * temperature, temperature=temperature)
    (dense_grad,) = torch.autograd.grad(dense, s)
    torch.testing.assert_close(bucket, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bucket_grad, dense_grad, rtol=1e-10, atol=1e-12)


def test_topk_error_shrinks_with_k_as_documented():
    """The numbers quoted in ``forward_kl_topk``'s docstring."""
    vocab, positions = 4096, 64
    g = torch.Generator().manual_seed(0)
    zipf = -2.0 * torch.arange(1, vocab + 1, dtype=torch.float64).log()
    t = torch.stack([zipf[torch.randperm(vocab, generator=g)] for _ in range(positions)])
    s = t + torch.randn(positions, vocab, generator=g, dtype=torch.float64)
    dense = forward_kl(s, t).item()
    assert dense == pytest.approx(0.265, rel=0.05)
    documented = {1: 0.55, 8: 0.12, 32: 0.034, 128: 0.0086, 512: 0.0019, 2048: 0.00028}
    previous = math.inf
    for k, relative_gap in documented.items():
        gap = (dense - forward_kl_topk(s, topk_teacher(t, k)).item()) / dense
        assert gap == pytest.approx(relative_gap, rel=0.1), k
        assert 0 < gap < previous  # coarser buckets lose more, never less
        previous = gap
    assert forward_kl_topk(s, topk_teacher(t, vocab)).item() == pytest.approx(dense, rel=1e-12)


@pytest.mark.parametrize("name", list(DENSE))
def test_bucketed_divergence_never_exceeds_dense(name):
    # Data processing inequality: merging tokens into a tail bucket cannot increase an f-divergence.
    s, t = logits(38, shape=(8, 30), scale=3.0), logits(39, shape=(8, 30), scale=3.0)
    dense = DENSE[name](s, t, reduction="none")
    for k in (1, 4, 16):
        bucketed = DENSE[name](s, topk_teacher(t, k), reduction="none")
        assert (bucketed <= dense + 1e-12).all() and (bucketed >= -1e-15).all()


def test_sparse_teacher_masks_and_chunks():
    s, t = logits(40, shape=(3, 9, 12)), logits(41, shape=(3, 9, 12))
    mask = torch.rand(3, 9, generator=torch.Generator().manual_seed(1)) > 0.4
    sparse = topk_teacher(t, 4)
    whole = forward_kl_topk(s, sparse, mask=mask)
    # Padding in a cache holds arbitrary entries, e.g. index -100: never read.
    dirty = SparseTeacher(
        sparse.indices.masked_fill(~mask[..., None], -100),
        sparse.log_probs.masked_fill(~mask[..., None], float("nan")),
        sparse.tail_log_prob.masked_fill(~mask, float("inf")),
    )
    assert forward_kl_topk(s, dirty, mask=mask).item() == pytest.approx(whole.item(), rel=1e-12)
    chunks = [(0, 2), (2, 7), (7, 9)]
    total = sum(
        forward_kl_topk(
            s[:, a:b],
            SparseTeacher(*(f[:, a:b] for f in sparse)),
            mask=mask[:, a:b],
            reduction="sum",
        )
        for a, b in chunks
    )
    assert (total / mask.sum()).item() == pytest.approx(whole.item(), rel=1e-12)
    with pytest.raises(TypeError, match="SparseTeacher"):
        forward_kl_topk(s, t)
    with pytest.raises(ValueError, match="sparse teacher"):
        forward_kl_topk(s[:, :5], sparse)


def test_losses_table():
    assert set(TOKEN_LOSSES) == {
        "forward_kl",
        "reverse_kl",
        "jsd",
        "skew_kl",
        "skew_reverse_kl",
        "tvd",
        "forward_kl_topk",
    }
    for name, function in TOKEN_LOSSES.items():
        assert LOSSES[name] is function
