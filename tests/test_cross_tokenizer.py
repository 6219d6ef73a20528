"""Cross-tokenizer distillation: byte-offset alignment of two tokenisations and the losses over
aligned chunks (ULD, the exact-match hybrid, the projected KL, chunk likelihood), against
float64 references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from kdistill.data.alignment import UNALIGNED, align_spans, aligned_bytes, encode_with_spans
from kdistill.errors import DataError
from kdistill.losses import forward_kl, topk_teacher
from kdistill.losses.cross_tokenizer import (
    AlignedTeacher,
    alm,
    hybrid,
    merged_chunks,
    projected,
    uld,
)
from kdistill.teachers.cross_tokenizer import (
    padded_rows,
    shared_vocabulary,
    token_strings,
    trim_padded_vocabularies,
    vocabulary_projection,
)

# --- alignment --------------------------------------------------------------------------------


def spans_of(pieces: list[bytes | str | None]) -> list[tuple[int, int]]:
    """Byte spans of hand-split text; ``None`` is a special token (no bytes)."""
    spans, position = [], 0
    for piece in pieces:
        size = 0 if piece is None else len(piece.encode() if isinstance(piece, str) else piece)
        spans.append((position, position + size))
        position += size
    return spans


def test_one_teacher_token_over_several_student_tokens_and_the_reverse():
    teacher = spans_of(["Hello", " wor", "ld", "!"])
    student = spans_of(["Hel", "lo", " world", "!"])
    teacher_chunk, student_chunk = align_spans(teacher, student)
    assert teacher_chunk == [0, 1, 1, 2]  # " wor" + "ld" ↔ " world"
    assert student_chunk == [0, 0, 1, 2]  # "Hel" + "lo" ↔ "Hello"


def test_crossing_boundaries_merge_until_both_sides_end_together():
    teacher_chunk, student_chunk = align_spans(
        spans_of(["ab", "cd", "e"]), spans_of(["a", "bc", "de"])
    )
    assert teacher_chunk == [0, 0, 0] and student_chunk == [0, 0, 0]


def test_whitespace_and_newline_merges():
    # one side keeps "\n\n" and the indentation as single tokens, the other splits them
    teacher = spans_of(["speak", ":\n", "\n", "  ", "To", " be"])
    student = spans_of(["speak", ":", "\n\n", "  To", " be"])
    teacher_chunk, student_chunk = align_spans(teacher, student)
    assert teacher_chunk == [0, 1, 1, 2, 2, 3]
    assert student_chunk == [0, 1, 1, 2, 3]


def test_multibyte_characters_split_over_byte_tokens():
    # "café 日本": one side splits é and 日 into their bytes, the other keeps characters whole
    teacher = spans_of([b"caf", b"\xc3", b"\xa9", b" \xe6\x97", b"\xa5", "本"])
    student = spans_of(["café", " 日", "本"])
    teacher_chunk, student_chunk = align_spans(teacher, student)
    assert teacher_chunk == [0, 0, 0, 1, 1, 2]
    assert student_chunk == [0, 1, 2]


def test_bos_and_eos_on_one_side_only_are_never_aligned():
    teacher = spans_of([None, "To", " be", None])  # BOS ... EOS
    student = spans_of(["To", " be"])
    teacher_chunk, student_chunk = align_spans(teacher, student)
    assert teacher_chunk == [UNALIGNED, 0, 1, UNALIGNED]
    assert student_chunk == [0, 1]
    assert aligned_bytes(teacher, teacher_chunk) == aligned_bytes(student, student_chunk) == 5


def test_a_gap_leaves_its_stretch_unaligned_and_alignment_resumes_after_it():
    teacher = [(0, 2), (2, 4), (6, 8)]  # bytes 4..6 missing on the teacher's side
    student = [(0, 2), (2, 5), (5, 6), (6, 8)]
    teacher_chunk, student_chunk = align_spans(teacher, student)
    assert teacher_chunk == [0, UNALIGNED, 1]
    assert student_chunk == [0, UNALIGNED, UNALIGNED, 1]


def byte_level_bpe(corpus: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


TEXT = "HAMLET:\nTo be, or not to be: that is the question.\n\n  Café crème, 日本語 ☃!\n"


def test_real_tokenizers_align_every_byte_when_one_is_the_other_split_to_bytes():
    merged = byte_level_bpe([TEXT * 4], 400)
    raw = byte_level_bpe([""], 256)  # the byte alphabet only: every byte its own token
    teacher_ids, teacher_spans = encode_with_spans(merged, TEXT)
    student_ids, student_spans = encode_with_spans(raw, TEXT)
    assert len(student_ids) == len(TEXT.encode()) > len(teacher_ids)
    teacher_chunk, student_chunk = align_spans(teacher_spans, student_spans)
    assert teacher_chunk == list(range(len(teacher_ids)))  # each merged token is one chunk
    assert aligned_bytes(student_spans, student_chunk) == len(TEXT.encode())
    data = TEXT.encode()
    for chunk, (start, end) in enumerate(teacher_spans):
        pieces = [data[a:b] for (a, b), c in zip(student_spans, student_chunk) if c == chunk]
        assert b"".join(pieces) == data[start:end]


def test_character_offsets_of_other_tokenizers_become_byte_spans():
    # A word-level tokenizer gives character offsets without the spaces; each space joins the
    # token after it, and multi-byte characters count their bytes.
    vocab = {w: i for i, w in enumerate(["[UNK]", "Café", "crème", "日本"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins the words with one space
    _, spans = encode_with_spans(tokenizer, "Café crème 日本")
    assert spans == [(0, 5), (5, 12), (12, 19)]


def test_a_tokenizer_that_cannot_give_the_text_back_is_refused():
    tokenizer = byte_level_bpe([TEXT], 300)
    tokenizer.normalizer = normalizers.Lowercase()
    with pytest.raises(DataError, match="data.options.student_tokenizer: .*does not give the text"):
        encode_with_spans(tokenizer, TEXT, field="student_tokenizer")


# --- losses: float64 references ---------------------------------------------------------------


def reference_chunk_vectors(logits, target, chunk):
    probs = torch.softmax(logits.double(), -1)
    vectors = {}
    for b in range(chunk.shape[0]):
        for position in range(chunk.shape[1]):
            c = int(chunk[b, position])
            if c < 0:
                continue
            token = int(target[b, position])
            if (b, c) not in vectors:
                vectors[b, c] = (probs[b, position].clone(), token, probs[b, position, token])
            else:
                vector, first, joint = vectors[b, c]
                vectors[b, c] = (vector, first, joint * probs[b, position, token])
    out = {}
    for key, (vector, first, joint) in vectors.items():
        vector[first] = joint
        out[key] = vector
    return out


def reference_uld(p, q):
    size = max(len(p), len(q))
    p_sorted = torch.zeros(size, dtype=torch.float64)
    q_sorted = torch.zeros(size, dtype=torch.float64)
    p_sorted[: len(p)] = p.sort(descending=True).values
    q_sorted[: len(q)] = q.sort(descending=True).values
    return (p_sorted - q_sorted).abs().sum()


def example(seed=0, student_vocab=7, teacher_vocab=11):
    generator = torch.Generator().manual_seed(seed)
    # student: 6 positions, teacher: 5; chunks 0..3, one chunk of 2 student tokens, one of 2
    # teacher tokens, and an unaligned position on each side
    student_chunk = torch.tensor([[0, 1, 1, 2, 3, UNALIGNED]])
    teacher_chunk = torch.tensor([[UNALIGNED, 0, 1, 2, 2]])
    # chunk 3 exists on the student's side only: it is not compared
    s_logits = torch.randn(1, 6, student_vocab, generator=generator, dtype=torch.float64) * 2
    t_logits = torch.randn(1, 5, teacher_vocab, generator=generator, dtype=torch.float64) * 2
    s_target = torch.randint(0, student_vocab, (1, 6), generator=generator)
    t_target = torch.randint(0, teacher_vocab, (1, 5), generator=generator)
    teacher = AlignedTeacher(t_logits, t_target, teacher_chunk, student_chunk)
    return s_logits, s_target, teacher


def test_span_merged_probabilities_match_the_chain_rule_in_float64():
    s_logits, s_target, teacher = example()
    student, t_values, t_ids = merged_chunks(s_logits, teacher, s_target)
    s_ref = reference_chunk_vectors(s_logits, s_target, teacher.student_chunk)
    t_ref = reference_chunk_vectors(teacher.logits, teacher.target, teacher.chunk)
    assert t_ids is None and len(student) == len(t_values) == 3  # chunk 3: student side only
    for row, c in enumerate(range(3)):
        torch.testing.assert_close(student[row].exp(), s_ref[0, c], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(t_values[row], t_ref[0, c], rtol=1e-12, atol=1e-14)


def test_uld_matches_sorted_zero_padded_l1_in_float64():
    s_logits, s_target, teacher = example(seed=1)
    s_ref = reference_chunk_vectors(s_logits, s_target, teacher.student_chunk)
    t_ref = reference_chunk_vectors(teacher.logits, teacher.target, teacher.chunk)
    expected = torch.stack([reference_uld(t_ref[0, c], s_ref[0, c]) for c in range(3)]).mean()
    torch.testing.assert_close(uld(s_logits, teacher, s_target), expected, rtol=1e-12, atol=0)
    # a top-k teacher (k = V) stands for the same distribution
    sparse = AlignedTeacher(
        topk_teacher(teacher.logits, teacher.logits.shape[-1]),
        teacher.target,
        teacher.chunk,
        teacher.student_chunk,
        target_log_prob=torch.log_softmax(teacher.logits, -1)
        .gather(-1, teacher.target[..., None])
        .squeeze(-1),
    )
    torch.testing.assert_close(uld(s_logits, sparse, s_target), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("k, top_k", [(3, None), (6, 4), (11, None)])
def test_uld_against_a_top_k_teacher_pairs_the_merged_vectors(k, top_k):
    s_logits, s_target, teacher = example(seed=6)
    log_p = torch.log_softmax(teacher.logits, -1)
    sparse = AlignedTeacher(
        topk_teacher(teacher.logits, k),
        teacher.target,
        teacher.chunk,
        teacher.student_chunk,
        target_log_prob=log_p.gather(-1, teacher.target[..., None]).squeeze(-1),
    )
    student, t_values, _ = merged_chunks(s_logits, sparse, s_target)
    if top_k is None:  # every entry paired: the float64 reference
        expected = torch.stack([reference_uld(t, q) for t, q in zip(t_values, student.exp())])
    else:  # the top_k largest paired, both remainders added
        s_sorted = student.exp().sort(-1, descending=True).values
        t_sorted = t_values.sort(-1, descending=True).values
        paired = (s_sorted[:, :top_k] - t_sorted[:, :top_k]).abs().sum(-1)
        expected = paired + s_sorted[:, top_k:].sum(-1) + t_sorted[:, top_k:].sum(-1)
    value = uld(s_logits, sparse, s_target, top_k=top_k, reduction="none")
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


def test_alm_is_the_binary_kl_of_chunk_probabilities():
    s_logits, s_target, teacher = example(seed=2)
    s_ref = reference_chunk_vectors(s_logits, s_target, teacher.student_chunk)
    t_ref = reference_chunk_vectors(teacher.logits, teacher.target, teacher.chunk)
    s_first = {0: 0, 1: 1, 2: 3}
    t_first = {0: 1, 1: 2, 2: 3}
    terms = []
    for c in range(3):
        p = t_ref[0, c][teacher.target[0, t_first[c]]]
        q = s_ref[0, c][s_target[0, s_first[c]]]
        terms.append(p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log())
    torch.testing.assert_close(
        alm(s_logits, teacher, s_target), torch.stack(terms).mean(), rtol=1e-9, atol=0
    )


def identical_tokenizers(seed=3, vocab=9, length=6):
    generator = torch.Generator().manual_seed(seed)
    s_logits = torch.randn(2, length, vocab, generator=generator, dtype=torch.float64)
    t_logits = torch.randn(2, length, vocab, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(0, vocab, (2, length), generator=generator)
    chunk = torch.arange(length).expand(2, length)
    identity = torch.arange(vocab)
    teacher = AlignedTeacher(t_logits, target, chunk, chunk, shared=identity, projection=identity)
    return s_logits, target, teacher


def test_hybrid_is_plain_token_kl_when_both_tokenizers_are_one():
    s_logits, target, teacher = identical_tokenizers()
    torch.testing.assert_close(
        hybrid(s_logits, teacher, target), forward_kl(s_logits, teacher.logits), rtol=1e-12, atol=0
    )


def test_hybrid_splits_shared_and_unshared_entries():
    s_logits, s_target, teacher = example(seed=4)
    # teacher ids 0..4 have the strings of student ids 2..6; the rest match nothing
    shared = torch.full((11,), -1)
    shared[:5] = torch.arange(2, 7)
    teacher.shared = shared
    s_ref = reference_chunk_vectors(s_logits, s_target, teacher.student_chunk)
    t_ref = reference_chunk_vectors(teacher.logits, teacher.target, teacher.chunk)
    expected = []
    for c in range(3):
        p, q = t_ref[0, c], s_ref[0, c]
        p_shared, q_shared = p[:5], q[2:7]
        kl = (p_shared * (p_shared / q_shared).log() - p_shared + q_shared).sum()
        expected.append(kl + reference_uld(p[5:], q[:2]))
    torch.testing.assert_close(
        hybrid(s_logits, teacher, s_target), torch.stack(expected).mean(), rtol=1e-12, atol=0
    )
    # a top-k teacher (k = V) takes the sparse path: the same value and student gradient
    sparse = AlignedTeacher(
        topk_teacher(teacher.logits, 11),
        teacher.target,
        teacher.chunk,
        teacher.student_chunk,
        target_log_prob=torch.log_softmax(teacher.logits, -1)
        .gather(-1, teacher.target[..., None])
        .squeeze(-1),
        shared=shared,
    )
    dense_input = s_logits.clone().requires_grad_(True)
    sparse_input = s_logits.clone().requires_grad_(True)
    dense_value = hybrid(dense_input, teacher, s_target)
    sparse_value = hybrid(sparse_input, sparse, s_target)
    torch.testing.assert_close(sparse_value, dense_value, rtol=1e-9, atol=0)
    dense_value.backward()
    sparse_value.backward()
    torch.testing.assert_close(sparse_input.grad, dense_input.grad, rtol=1e-7, atol=1e-10)


def test_projected_is_plain_token_kl_when_both_tokenizers_are_one():
    s_logits, target, teacher = identical_tokenizers(seed=8)
    torch.testing.assert_close(
        projected(s_logits, teacher, target),
        forward_kl(s_logits, teacher.logits),
        rtol=1e-12,
        atol=0,
    )


def test_projected_moves_each_teacher_token_onto_the_students_first_token_in_float64():
    s_logits, s_target, teacher = example(seed=9)
    # 11 teacher tokens onto 7 student ones; teacher token 9 has no projection (special)
    projection = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, -1, 3])
    teacher.projection = projection
    p_all, q_all = teacher.logits.softmax(-1), s_logits.softmax(-1)
    s_first, t_first = {0: 0, 1: 1, 2: 3}, {0: 1, 1: 2, 2: 3}  # each chunk's first positions
    expected = []
    for c in range(3):
        p, q = p_all[0, t_first[c]], q_all[0, s_first[c]]
        p_tilde = torch.zeros(7, dtype=torch.float64)
        for v in range(11):
            if projection[v] >= 0:
                p_tilde[projection[v]] += p[v]
        p_tilde /= p_tilde.sum()
        expected.append((p_tilde * (p_tilde / q).log()).sum())
    value = projected(s_logits, teacher, s_target, reduction="none")
    torch.testing.assert_close(value, torch.stack(expected), rtol=1e-12, atol=0)
    # a top-k teacher at k = V: the same value and student gradient; at k < V the top k
    # projected and renormalised
    log_p = torch.log_softmax(teacher.logits, -1)

    def sparse(k):
        return AlignedTeacher(
            topk_teacher(teacher.logits, k),
            teacher.target,
            teacher.chunk,
            teacher.student_chunk,
            target_log_prob=log_p.gather(-1, teacher.target[..., None]).squeeze(-1),
            projection=projection,
        )

    dense_input = s_logits.clone().requires_grad_(True)
    sparse_input = s_logits.clone().requires_grad_(True)
    dense_value = projected(dense_input, teacher, s_target)
    sparse_value = projected(sparse_input, sparse(11), s_target)
    torch.testing.assert_close(sparse_value, dense_value, rtol=1e-10, atol=0)
    dense_value.backward()
    sparse_value.backward()
    torch.testing.assert_close(sparse_input.grad, dense_input.grad, rtol=1e-8, atol=1e-12)
    top = p_all[0, t_first[0]].topk(3)
    p_tilde = torch.zeros(7, dtype=torch.float64)
    for v, mass in zip(top.indices.tolist(), top.values):
        if projection[v] >= 0:
            p_tilde[projection[v]] += mass
    p_tilde /= p_tilde.sum()
    q = q_all[0, s_first[0]]
    first = torch.xlogy(p_tilde, p_tilde / q).sum()
    torch.testing.assert_close(
        projected(s_logits, sparse(3), s_target, reduction="none")[0], first, rtol=1e-12, atol=0
    )


def test_vocabulary_projection_sends_each_teacher_token_to_the_students_first_token():
    teacher = byte_level_bpe([TEXT * 4], 320)
    student = byte_level_bpe([TEXT], 270)
    size = teacher.get_vocab_size()
    projection = vocabulary_projection(teacher, student, teacher_rows=size + 10)
    shared = shared_vocabulary(teacher, student, teacher_rows=size + 10)
    assert projection.shape == (size + 10,) and (projection[size:] == -1).all()
    assert torch.equal(projection[shared >= 0], shared[shared >= 0])  # exact matches kept
    teacher_strings, student_strings = token_strings(teacher), token_strings(student)
    moved = pieces = 0
    for t_id in torch.nonzero((shared < 0) & (projection >= 0)).squeeze(-1).tolist():
        string, first = teacher_strings[t_id], student_strings[int(projection[t_id])]
        assert string.startswith(first) and len(first) < len(string)
        try:
            text = string.decode("utf-8")
        except UnicodeDecodeError:  # a piece of a character: the longest student prefix
            longest = max((s for s in student_strings if string.startswith(s)), key=len)
            assert first == longest
            pieces += 1
            continue
        assert int(projection[t_id]) == student.encode(text, add_special_tokens=False).ids[0]
        moved += 1
    assert moved > 0 and pieces > 0 and (projection[:size] >= 0).all()  # every token lands


@pytest.mark.parametrize("loss", [uld, hybrid, projected, alm])
def test_zero_when_the_student_is_the_teacher_and_gradients_reach_the_student_only(loss):
    s_logits, target, teacher = identical_tokenizers()
    teacher.logits.requires_grad_(True)
    same = teacher.logits.detach().clone().requires_grad_(True)
    assert float(loss(same, teacher, target).detach()) == pytest.approx(0.0, abs=1e-12)
    value = loss(s_logits.requires_grad_(True), teacher, target)
    value.backward()
    assert value > 0 and s_logits.grad.abs().sum() > 0 and teacher.logits.grad is None


def test_masked_student_positions_drop_their_chunks():
    s_logits, s_target, teacher = example(seed=5)
    mask = torch.tensor([[True, True, False, True, True, True]])  # inside chunk 1
    per_chunk = uld(s_logits, teacher, s_target, reduction="none")
    masked = uld(s_logits, teacher, s_target, mask=mask, reduction="none")
    torch.testing.assert_close(masked, per_chunk[[0, 2]])


# --- shared and padded vocabularies -----------------------------------------------------------


def test_shared_vocabulary_matches_token_strings_exactly():
    teacher = byte_level_bpe([TEXT * 4], 320)
    student = byte_level_bpe([TEXT], 270)
    size = teacher.get_vocab_size()
    shared = shared_vocabulary(teacher, student, teacher_rows=size + 10)
    assert shared.shape == (size + 10,) and (shared[size:] == -1).all()  # padding rows
    teacher_strings, student_strings = token_strings(teacher), token_strings(student)
    assert 0 < int((shared[256:] >= 0).sum()) < size - 256  # some merges shared, not all
    for t_id, s_id in enumerate(shared[:size].tolist()):
        if s_id >= 0:
            assert teacher_strings[t_id] == student_strings[s_id]
        else:
            assert teacher_strings[t_id] not in student_strings
    assert (shared[:256] >= 0).all()  # both hold the 256 bytes


class Rows(torch.nn.Module):
    def __init__(self, rows: int, seed: int):
        super().__init__()
        self.head = torch.nn.Embedding(5, rows)
        torch.nn.init.normal_(self.head.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, input_ids):
        return self.head(input_ids)


@pytest.mark.parametrize("teacher_rows, student_rows", [(12, 10), (10, 12)])
def test_padded_vocabularies_compare_the_shared_rows_renormalised(teacher_rows, student_rows):
    teacher, student = Rows(teacher_rows, 0), Rows(student_rows, 1)
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    full_teacher, full_student = teacher(ids), student(ids)
    line = trim_padded_vocabularies(teacher, student, teacher_rows, student_rows, 9)
    assert line.count("\n") == 0 and "10 shared rows" in line
    t_logits, s_logits = teacher(ids), student(ids)
    assert t_logits.shape == s_logits.shape == (1, 5, 10)
    p = torch.softmax(full_teacher[..., :10].double(), -1)  # renormalised on the kept rows
    q = torch.softmax(full_student[..., :10].double(), -1)
    expected = (p * (p / q).log()).sum(-1).mean()
    torch.testing.assert_close(forward_kl(s_logits, t_logits).double(), expected, rtol=1e-5, atol=0)


def test_padded_rows_only_when_both_cover_the_tokenizer():
    assert padded_rows(151_936, 152_064, 151_665) == 151_936
    assert padded_rows(100, 100, 90) is None
    assert padded_rows(49_152, 8_192, 49_152) is None  # another vocabulary: align instead


# --- the data and the Python door --------------------------------------------------------------


def tiny_plays(tmp_path, monkeypatch):
    """Shakespeare windows of 16 student tokens (a 300-entry BPE) over five small plays."""
    from test_hardening_inputs import cross_tokenizer_data

    from kdistill.data.shakespeare import load_plays

    monkeypatch.setenv("KDISTILL_HOME", str(tmp_path / "home"))
    cross_tokenizer_data(tmp_path)
    return load_plays(
        path=str(tmp_path / "plays"),
        tokenizer=str(tmp_path / "teacher.json"),
        student_tokenizer="bpe:300",
        block_size=16,
        max_tokens={"train": 64, "val": 32, "test": 32},
    )


def test_shakespeare_windows_for_a_student_with_its_own_tokenizer_distill_in_python(
    tmp_path, monkeypatch
):
    from kdistill.distiller import Distiller, Teacher
    from kdistill.methods import preset_terms
    from kdistill.models import create_model
    from kdistill.teachers.cross_tokenizer import CrossTokenizerTeacher

    splits = tiny_plays(tmp_path, monkeypatch)
    assert splits.teacher_inputs and splits.num_classes == 300
    assert splits.identity["teacher_vocab_size"] == 320
    assert Path(splits.identity["student_tokenizer"]).parent == tmp_path / "home" / "tokenizers"
    assert splits.identity["alignment"]["train"]["aligned_bytes"] > 0.8
    sample = splits.train[1]
    inputs = sample["input"]
    student_text = splits.train.codec.decode(sample["target"][sample["mask"]].tolist())
    teacher_codec = Tokenizer.from_file(str(tmp_path / "teacher.json"))
    teacher_ids = inputs["teacher_target"][inputs["teacher_chunk"] >= 0].tolist()
    aligned_student = sample["target"][inputs["teacher_student_chunk"] >= 0].tolist()
    # the aligned tokens of both sides spell the same text, inside the student's window
    aligned_text = splits.train.codec.decode(aligned_student)
    assert teacher_codec.decode(teacher_ids) == aligned_text and aligned_text in student_text

    batch = torch.utils.data.default_collate([splits.train[i] for i in range(4)])
    teacher_model = create_model("gpt", num_classes=320, input_shape=(40,), n_layer=1, n_embd=16)
    shared = torch.where(torch.arange(320) < 300, torch.arange(320), -1)  # one-to-one
    teacher = Teacher(CrossTokenizerTeacher(teacher_model, shared, projection=shared))
    student = create_model("gpt", num_classes=300, input_shape=(16,), n_layer=1, n_embd=16)
    for loss in ("uld", "hybrid", "projected", "alm"):
        distiller = Distiller(student, preset_terms("cross_tokenizer", loss=loss))
        out = distiller(batch, teacher(batch))
        out["loss"].backward()
        assert out["loss/xtok"] > 0 and student.tok_emb.weight.grad.abs().sum() > 0
        student.zero_grad()


def test_check_pair_cuts_padded_vocabularies_to_their_shared_rows(caplog):
    from kdistill.distiller import Teacher
    from kdistill.teachers.pair import MismatchError, check_pair

    example = {"input": torch.tensor([[0, 1, 2]])}
    with pytest.raises(MismatchError, match="12 outputs but the student has 10"):
        check_pair(Teacher(Rows(12, 0)), Rows(10, 1), example)
    teacher, student = Teacher(Rows(12, 0)), Rows(10, 1)
    with caplog.at_level("WARNING"):
        shape = check_pair(teacher, student, example, tokenizer_size=9)
    assert shape[-1] == 10 and teacher(example).logits.shape[-1] == 10
    assert [r.message for r in caplog.records if "padded vocabularies" in r.message]


@pytest.mark.parametrize("loss", [uld, hybrid, projected, alm])
def test_temperature_softens_both_sides(loss):
    s_logits, target, teacher = identical_tokenizers(seed=7)
    halved = AlignedTeacher(
        teacher.logits / 2,
        teacher.target,
        teacher.chunk,
        teacher.student_chunk,
        shared=teacher.shared,
        projection=teacher.projection,
    )
    torch.testing.assert_close(
        loss(s_logits, teacher, target, temperature=2.0), loss(s_logits / 2, halved, target)
    )


# --- kdistill run across tokenizers ------------------------------------------------------------


def reference_bits_per_byte(model, dataset, *, teacher: bool) -> float:
    """Σ NLL in bits over Σ UTF-8 bytes of the targets a model predicts in the test windows,
    written out: the teacher over its own tokens (padding has no bytes), a student over its
    own masked ones."""
    import math

    nats = nbytes = 0.0
    model.eval()
    with torch.no_grad():
        for sample in (dataset[i] for i in range(len(dataset))):
            inputs = sample["input"]
            if teacher:
                ids, target = inputs["teacher_input_ids"], inputs["teacher_target"]
                counted = sample["teacher_bytes"] > 0
                sizes = sample["teacher_bytes"]
            else:
                ids, target, counted, sizes = (
                    inputs["input_ids"],
                    sample["target"],
                    sample["mask"],
                    sample["bytes"],
                )
            log_p = torch.log_softmax(model(ids[None]).double()[0], -1)
            nats -= float(log_p.gather(-1, target[:, None])[:, 0][counted].sum())
            nbytes += float(sizes[counted].sum())
    return nats / math.log(2) / nbytes


def tiny_run(tmp_path, monkeypatch, *extra: str) -> list[str]:
    """The settings of a `kdistill run` across tokenizers small enough for a test: five small
    plays with a 320-entry teacher BPE, a 300-entry student BPE, one-layer GPTs 16 wide, the
    teacher used as built; ``extra`` after them (a repeated key takes the last value)."""
    from test_hardening_inputs import cross_tokenizer_data

    monkeypatch.setenv("KDISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return [
        *cross_tokenizer_data(tmp_path),
        "data.options.student_tokenizer=bpe:300",
        "data.options.max_tokens={train: 64, val: 32, test: 32}",
        "teacher.kwargs={n_layer: 1, n_embd: 16}",
        "teacher.epochs=0",
        "student.kwargs={n_layer: 1, n_embd: 16}",
        "method=cross_tokenizer",
        "output.latency=false",
        "output.plots=false",
        f"output.dir={tmp_path / 'runs'}",
        *extra,
    ]


def test_kdistill_run_distills_across_tokenizers_scored_in_bits_per_byte(tmp_path, monkeypatch):
    import json

    from test_hardening_inputs import cross_tokenizer_data

    from kdistill.data.shakespeare import load_plays
    from kdistill.io.weights import load_weights
    from kdistill.models import create_model
    from kdistill.run.config import load_config
    from kdistill.run.pipeline import run

    monkeypatch.setenv("KDISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    settings = [
        *cross_tokenizer_data(tmp_path),
        "data.options.student_tokenizer=bpe:300",
        "data.options.max_tokens={train: 64, val: 32, test: 48}",
        "teacher.kwargs={n_layer: 1, n_embd: 16}",
        "teacher.epochs=0",
        "student.kwargs={n_layer: 1, n_embd: 16}",
        "method=cross_tokenizer",
        "distill.params={loss: hybrid}",
        "teacher.cache_topk=16",
        "train.epochs=2",
        "train.augment=none",
        "output.latency=false",
        "output.plots=false",
        "output.progress=false",
        f"output.dir={tmp_path / 'runs'}",
        "name=xtok",
    ]
    run(load_config(None, settings))
    run_dir = tmp_path / "runs" / "xtok"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"]["metrics"] == ["bits_per_byte"]
    assert {"train", "test"} <= summary["data"]["alignment"].keys()
    for pair in ("student_vs_scratch", "teacher_vs_student", "teacher_vs_scratch"):
        assert summary["comparisons"][pair]["metric"] == "bits_per_byte"

    splits = load_plays(
        path="plays",
        tokenizer="teacher.json",
        student_tokenizer="bpe:300",
        block_size=16,
        max_tokens={"train": 64, "val": 32, "test": 48},
    )
    for role, vocab, shape in (("teacher", 320, splits.identity["teacher_input_shape"]),) + tuple(
        (name, 300, (16,)) for name in ("scratch", "student")
    ):
        model = create_model(
            "gpt", num_classes=vocab, input_shape=tuple(shape), n_layer=1, n_embd=16
        )
        load_weights(model, run_dir / "checkpoints" / f"{role}.safetensors")
        expected = reference_bits_per_byte(model, splits.test, teacher=role == "teacher")
        assert summary[role]["bits_per_byte"] == pytest.approx(expected, rel=1e-4)
    # the distilled student learnt from the teacher: it differs from the scratch one
    assert summary["student"]["bits_per_byte"] != summary["scratch"]["bits_per_byte"]
    report = (run_dir / "report.md").read_text()
    assert "bits per byte over the UTF-8 bytes" in report
    assert f"test {summary['data']['alignment']['test']['aligned_bytes']:.1%}" in report


def test_kept_top_k_teacher_runs_the_teacher_once_per_window(tmp_path, monkeypatch):
    from kdistill.losses.sparse import SparseTeacher
    from kdistill.models import create_model
    from kdistill.teachers.cross_tokenizer import frozen_teacher

    splits = tiny_plays(tmp_path, monkeypatch)
    shape = tuple(splits.identity["teacher_input_shape"])
    model = create_model("gpt", num_classes=320, input_shape=shape, n_layer=1, n_embd=16)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    kept = frozen_teacher(model, splits, top_k=8)
    batch = torch.utils.data.default_collate([splits.train[i] for i in (3, 0, 2)])
    first, again = kept(batch).logits, kept(batch).logits
    assert len(calls) == 1 and isinstance(first.logits, SparseTeacher)
    assert torch.equal(first.logits.log_probs, again.logits.log_probs)
    live = frozen_teacher(model, splits)(batch).logits  # the dense teacher, for reference
    log_p = torch.log_softmax(live.logits.float(), -1)
    assert torch.allclose(first.logits.log_probs, log_p.topk(8, dim=-1).values, atol=1e-5)
    target = log_p.gather(-1, live.target[..., None])[..., 0]
    assert torch.allclose(first.target_log_prob, target, atol=1e-5)
    assert torch.equal(first.chunk, live.chunk) and torch.equal(first.shared, live.shared)
    reordered = torch.utils.data.default_collate([splits.train[i] for i in (2, 3)])
    assert torch.equal(kept(reordered).logits.logits.indices[1], first.logits.indices[0])
    assert len(calls) == 2  # windows kept already: no pass beyond the live reference above


@pytest.mark.integration
def test_a_cross_tokenizer_student_exports_and_predict_refuses_it_in_one_line(
    tmp_path, monkeypatch, capsys
):
    """The student of a run across tokenizers exports to ONNX like any student (its default
    loss, projected, through the disk text cache); predict, which scores classifiers, says in
    one line that it does not score a language model instead of asking for a CSV."""
    from kdistill.cli import main

    settings = tiny_run(
        tmp_path, monkeypatch, "teacher.cache=true", "teacher.cache_topk=16", "name=xtok"
    )
    assert main(["run", *settings]) == 0
    assert main(["export", str(tmp_path / "runs" / "xtok"), "--no-int8", "--repeats", "1"]) == 0
    export = tmp_path / "runs" / "xtok" / "export"
    assert (export / "student.onnx").is_file() and (export / "teacher.onnx").is_file()
    (tmp_path / "line.txt").write_text("To be, or not to be\n")
    capsys.readouterr()
    assert main(["predict", str(export), str(tmp_path / "line.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "this export is a language model" in err and len(err.splitlines()) == 1
