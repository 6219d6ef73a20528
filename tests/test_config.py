"""Recipes: defaults, shipped files, overrides, and one-line errors for bad keys and values."""

from pathlib import Path

import pytest
import yaml

from kdistill.data import load_dataset
from kdistill.errors import ConfigError
from kdistill.run.config import Recipe, dump_config, load_config, parse_override
from kdistill.run.plan import recipe_terms

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_recipe_is_the_shipped_mnist_recipe():
    shipped, builtin = load_config(CONFIGS / "mnist.yaml"), load_config(None)
    # The file spells out KD's temperature and alpha; the built-in leaves the preset's defaults.
    assert shipped.model_dump(exclude={"distill"}) == builtin.model_dump(exclude={"distill"})
    assert (shipped.distill.temperature, shipped.distill.alpha) == (4.0, 0.9)
    splits = load_dataset("digits")  # any data: the kd preset reads no layers
    as_terms = [[(t.name, t.weight, t.params) for t in recipe_terms(r, splits)] for r in (shipped, builtin)]
    assert as_terms[0] == as_terms[1] == [("ce", pytest.approx(0.1), {}), ("kd", 0.9, {"temperature": 4.0})]
    # Consistent teaching: the teacher scores the distilled student's affine, CutMix-ed views;
    # the scratch student gets the affine views without mixing.
    t = builtin.train
    assert (t.augment, t.mix, t.scratch_mixing, t.views, t.epochs) == ("affine", "cutmix", "none", 32, 160)
    assert (builtin.teacher.augment, builtin.teacher.cache) == ("affine", True)


def test_a_recipe_file_starts_from_the_field_defaults_not_the_builtin_recipe(tmp_path):
    # A file's omitted fields are the schema's defaults (no augmentation or mixing for the
    # students), which suit any data; only `kdistill run` without a file is the built-in recipe.
    recipe = load_config(write(tmp_path, "name: mine\n"))
    assert recipe == Recipe(name="mine")
    assert (recipe.train.augment, recipe.train.mix, recipe.train.views) == ("none", "none", 0)
    assert load_config(None, ["train.mix=none"]).train.augment == "affine"  # overrides apply to the built-in


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    load_config(path)


def test_overrides_set_nested_values_with_yaml_types(tmp_path):
    recipe = load_config(None, ["train.epochs=3", "train.lr=0.01", "teacher.kwargs={width: 8}", "data.subset=null"])
    assert recipe.train.epochs == 3 and recipe.train.lr == 0.01
    assert recipe.teacher.kwargs == {"width": 8}
    assert recipe.data.subset is None
    assert parse_override("terms.0.weight=0.5") == (["terms", 0, "weight"], 0.5)


def test_terms_replace_the_method_and_list_items_can_be_overridden(tmp_path):
    path = write(tmp_path, """
terms:
  - {name: ce, loss: ce, weight: 1.0, teacher: null}
  - {name: kd, loss: kd, weight: 0.5, params: {temperature: 2.0}}
""")
    recipe = load_config(path, ["terms.1.weight=0.7"])
    assert recipe.method is None
    assert [t.weight for t in recipe.terms] == [1.0, 0.7]


def test_unknown_key_names_key_file_and_nearest_valid_key(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "'train.epoch'" in message and "'train.epochs'" in message
    assert "\n" not in message


def test_unknown_top_level_section_and_override_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean 'train'"):
        load_config(write(tmp_path, "trian: {epochs: 3}\n"))
    with pytest.raises(ConfigError, match=r"override 'train.bach_size=3'.*'train.batch_size'"):
        load_config(None, ["train.bach_size=3"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=zero", "train.epochs"),
        ("train.lr=-1", "train.lr"),
        ("train.optimizer=adagrad", "train.optimizer"),
        ("data.val_fraction=0.85", "data"),  # with test 0.2 nothing is left to train on
        ("name=has space", "name"),
    ],
)
def test_bad_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError, match=fragment) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_yaml_errors_and_missing_files_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe.yaml: line \d"):
        load_config(write(tmp_path, "train:\n  epochs: [1\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_yaml_tags_cannot_run_code(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_config(None, ["train.epochs=2", "distill.temperature=2.5"])
    again = load_config(write(tmp_path, dump_config(recipe)))
    assert again == recipe
    assert yaml.safe_load(dump_config(recipe))["train"]["epochs"] == 2
