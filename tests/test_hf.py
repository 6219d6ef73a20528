"""Hugging Face models as teacher or student, built locally from tiny configs (nothing is
downloaded): sequence classifiers and causal LMs through the Distiller, loading from a local
directory (safetensors only), taps, and vocabulary mismatches."""

import pytest
import torch

from kdistill import create_model
from kdistill.distiller import Distiller, Teacher
from kdistill.errors import UserError
from kdistill.methods import Term, preset_terms, teacher_taps
from kdistill.models.hf import HFModel
from kdistill.teachers.vocab import (
    VocabularyMismatchError,
    check_vocabularies,
    map_teacher_vocabulary,
)

transformers = pytest.importorskip("transformers")

BERT = {
    "model_type": "bert",
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32}


def text_batch(n=3, length=12):
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (n, length))
    attention = torch.ones(n, length, dtype=torch.int64)
    attention[0, 8:] = 0
    return {
        "input": {"input_ids": ids, "attention_mask": attention},
        "target": torch.tensor([0, 1, 0]),
        "mask": attention.bool(),
    }


def lm_batch(vocab=50, n=3, length=16):
    torch.manual_seed(0)
    tokens = torch.randint(0, vocab, (n, length + 1))
    return {
        "input": tokens[:, :-1],
        "target": tokens[:, 1:],
        "mask": torch.ones(n, length, dtype=torch.bool),
    }


def test_sequence_classifiers_as_teacher_and_student_with_layer_terms():
    teacher_model = create_model(
        "hf", num_classes=2, input_shape=(12,), config={**BERT, "num_hidden_layers": 4}
    )
    student = create_model(
        "hf",
        num_classes=2,
        input_shape=(12,),
        config={**BERT, "hidden_size": 16, "intermediate_size": 32},
    )
    assert isinstance(teacher_model, HFModel) and teacher_model.hint_layers == tuple(
        f"hidden_states.{i}" for i in range(1, 5)
    )
    terms = preset_terms("tinybert", alpha=0.5, temperature=2.0, layer_map={1: 2, 2: 4})
    teacher = Teacher(teacher_model, taps=teacher_taps(terms))
    batch = text_batch()
    t_out = teacher(batch)
    assert t_out.features["attentions.3"].shape == (3, 4, 12, 12)
    assert t_out.features["hidden_states.4"].shape == (3, 12, 32)
    distiller = Distiller.build(student, terms, teacher=teacher, example_batch=batch)
    out = distiller(batch, t_out)
    assert torch.isfinite(out["loss"]) and out["loss/attention_2"] > 0
    out["loss"].backward()
    assert student.model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_model.parameters())


def test_untapped_wrapper_returns_plain_logits_without_extra_outputs():
    model = create_model("hf", num_classes=3, input_shape=(12,), config=BERT).eval()
    batch = text_batch()
    with torch.no_grad():
        direct = model.model(**batch["input"]).logits
        torch.testing.assert_close(model(**batch["input"]), direct)


@pytest.mark.parametrize("student_kind", ["hf", "gpt"])
def test_causal_lm_teacher_with_token_losses(student_kind):
    teacher_model = create_model(
        "hf", num_classes=50, input_shape=(16,), task="causal-lm", config=GPT2
    )
    assert teacher_model.num_classes == 50
    if student_kind == "hf":
        student = create_model(
            "hf",
            num_classes=50,
            input_shape=(16,),
            task="causal-lm",
            config={**GPT2, "n_layer": 1, "n_embd": 16},
        )
    else:
        student = create_model(
            "gpt", num_classes=50, input_shape=(16,), n_layer=1, n_head=2, n_embd=16
        )
    batch = lm_batch()
    terms = preset_terms("token_kd", loss="reverse_kl", alpha=0.5, temperature=1.0)
    teacher = Teacher(teacher_model)
    distiller = Distiller(student, terms)
    out = distiller(batch, teacher(batch))
    assert out["logits"].shape == (3, 16, 50) and out["loss/kd"] > 0
    out["loss"].backward()
    assert all(p.grad is None for p in teacher_model.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0


def test_loads_a_local_directory_from_safetensors_only(tmp_path):
    model = create_model("hf", num_classes=2, input_shape=(12,), config=BERT).eval()
    model.model.save_pretrained(tmp_path / "saved")  # writes model.safetensors
    loaded = create_model(
        "hf", num_classes=2, input_shape=(12,), path=str(tmp_path / "saved")
    ).eval()
    batch = text_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch["input"]), model(**batch["input"]))
    shallow = create_model(
        "hf",
        num_classes=2,
        input_shape=(12,),
        path=str(tmp_path / "saved"),
        pretrained=False,
        num_hidden_layers=1,
    )
    assert len(shallow.model.bert.encoder.layer) == 1
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(
        (tmp_path / "saved" / "config.json").read_text()
    )
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="safetensors"):
        create_model("hf", num_classes=2, input_shape=(12,), path=str(tmp_path / "pickled"))
    with pytest.raises(UserError, match="config.json"):
        create_model("hf", num_classes=2, input_shape=(12,), path=str(tmp_path / "nowhere"))


def test_different_vocabularies_fail_in_one_line_naming_both_sizes():
    from kdistill.teachers.pair import check_pair

    teacher = create_model("hf", num_classes=80, input_shape=(16,), task="causal-lm", config=GPT2)
    student = create_model("gpt", num_classes=50, input_shape=(16,), n_layer=1, n_head=2, n_embd=16)
    batch = lm_batch(vocab=50)
    with pytest.raises(UserError) as error:
        check_pair(Teacher(teacher), student, batch)
    message = str(error.value)
    assert "80" in message and "50" in message and len(message.splitlines()) == 1
    terms = [Term("kd", "forward_kl")]
    with torch.no_grad():
        t_logits, s_logits = teacher(batch["input"]), student(batch["input"])
    with pytest.raises(VocabularyMismatchError, match="80 entries but the student's has 50"):
        check_vocabularies(s_logits, t_logits, terms)
    check_vocabularies(
        s_logits, t_logits, [Term("ce", "token_ce", teacher=None)]
    )  # nothing compared

    # the supported mapping: the student's tokens are teacher ids 0..49 in the same order
    handle = map_teacher_vocabulary(teacher, list(range(50)))
    check_pair(Teacher(teacher), student, batch)
    with torch.no_grad():
        torch.testing.assert_close(teacher(batch["input"]), t_logits[..., :50])
    handle.remove()
    with pytest.raises(VocabularyMismatchError, match="names teacher id 99"):
        map_teacher_vocabulary(teacher, [99] * 50)
        teacher(batch["input"])
