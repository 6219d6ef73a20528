"""Recipes: defaults, shipped files, overrides, and one-line errors for bad keys and values."""

from pathlib import Path

import pytest
import yaml

from kdistill.data import load_dataset
from kdistill.errors import ConfigError
from kdistill.run.config import Recipe, dump_config, load_config
from kdistill.run.overrides import parse_override
from kdistill.run.plan import recipe_terms
from kdistill.run.preflight import preflight

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
    as_terms = [
        [(t.name, t.weight, t.params) for t in recipe_terms(r, splits)] for r in (shipped, builtin)
    ]
    assert (
        as_terms[0]
        == as_terms[1]
        == [("ce", pytest.approx(0.1), {}), ("kd", 0.9, {"temperature": 4.0})]
    )
    # Few labels, a teacher that knows more, a transfer set: 700 labelled digits to train on,
    # the rest of the 5,000 cut between the teacher's labels and the unlabelled transfer set.
    data, teacher, t = builtin.data, builtin.teacher, builtin.train
    assert (data.subset, data.unlabelled, teacher.data, teacher.cache) == (
        1000,
        "rest",
        "rest",
        True,
    )
    assert (t.augment, t.mix, t.epochs, teacher.augment) == ("shift", "none", 30, "shift")


def test_a_recipe_file_starts_from_the_field_defaults_not_the_builtin_recipe(tmp_path):
    # A file's omitted fields are the schema's defaults (no augmentation or mixing for the
    # students), which suit any data; only `kdistill run` without a file is the built-in recipe.
    recipe = load_config(write(tmp_path, "name: mine\n"))
    assert recipe == Recipe(name="mine")
    assert (recipe.train.augment, recipe.train.mix, recipe.train.views) == ("none", "none", 0)
    overridden = load_config(None, ["train.epochs=3"]).train  # overrides apply to the built-in
    assert (overridden.augment, overridden.epochs) == ("shift", 3)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    load_config(path)


def test_overrides_set_nested_values_with_yaml_types(tmp_path):
    recipe = load_config(
        None, ["train.epochs=3", "train.lr=0.01", "teacher.kwargs={width: 8}", "data.subset=null"]
    )
    assert recipe.train.epochs == 3 and recipe.train.lr == 0.01
    assert recipe.teacher.kwargs == {"width": 8}
    assert recipe.data.subset is None
    assert parse_override("terms.0.weight=0.5") == (["terms", 0, "weight"], 0.5)


def test_terms_replace_the_method_and_list_items_can_be_overridden(tmp_path):
    path = write(
        tmp_path,
        """
terms:
  - {name: ce, loss: ce, weight: 1.0, teacher: null}
  - {name: kd, loss: kd, weight: 0.5, params: {temperature: 2.0}}
""",
    )
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


# --- issue 30.1: the demo is not the default: settings the user leaves out follow their data ---

TABLE = ["data.dataset=table", "data.options.label=species"]  # + data.path=<a features CSV>


def planned(overrides):
    """The built-in recipe with ``overrides`` after ``plan``: what a run would train with."""
    from kdistill.run.plan import plan

    recipe = load_config(None, overrides)
    return recipe, plan(recipe)


def wine(tmp_path) -> str:
    """``data.path=`` a features CSV of 150 rows (104 to train on), named wine.csv."""
    from test_bring_your_own_data import write_features_csv

    return f"data.path={write_features_csv(tmp_path / 'wine.csv')}"


def test_a_table_needs_no_image_overrides_and_is_named_after_its_file(tmp_path):
    recipe, resolved = planned([*TABLE, wine(tmp_path)])
    t, teacher = recipe.train, recipe.teacher
    assert (teacher.augment, t.augment, t.mix, t.views, teacher.cache) == (
        "none",
        "none",
        "none",
        0,
        False,
    )
    assert recipe.name == "wine_kd"
    assert "train.augment=none: the inputs are table rows" in resolved.automatic
    # A budget of updates, not the demo's 160 epochs: 104 rows are 2 batches of 64, so the cap.
    assert len(resolved.splits.train) == 104 and t.epochs == teacher.epochs == 100


def test_an_image_folder_gets_the_image_views_a_name_and_a_budget_by_size(tmp_path):
    from test_bring_your_own_data import hue_folder

    from kdistill.run.automatic import epoch_budget

    hue_folder(tmp_path / "images", per_class=600)
    recipe, resolved = planned(["data.dataset=folder", f"data.path={tmp_path / 'images'}/"])
    t = recipe.train
    assert (recipe.teacher.augment, t.augment, t.mix, t.scratch_mix, recipe.teacher.cache) == (
        "affine",
        "affine",
        "cutmix",
        "none",
        True,
    )
    assert recipe.name == "images_kd"
    # 840 training images are 14 batches: about 2,000 updates is 143 epochs, capped at 100.
    assert len(resolved.splits.train) == 840 and t.epochs == 100 and t.views == 32
    assert epoch_budget(840, 64) == (100, 14) and epoch_budget(50_000, 64) == (5, 782)
    assert epoch_budget(20_000, 64) == (6, 313)  # a larger set: fewer epochs
    assert (
        "train.epochs=100: 840 training samples make 14 update(s) an epoch; the budget is "
        "about 2,000 updates, within 5-100 epochs"
    ) in resolved.automatic


def test_the_demos_labelled_slice_transfer_set_and_teacher_data_stay_with_the_demo():
    """Named data takes none of the demo's scenario: no 1,000-sample slice, no transfer set, no
    extra labels for the teacher; the demo's own data keeps them under any other override."""
    own = load_config(None, ["data.dataset=digits"])
    assert (own.data.subset, own.data.unlabelled, own.teacher.data) == (None, None, None)
    demo = load_config(None, ["train.epochs=2"])
    assert (demo.data.subset, demo.data.unlabelled, demo.teacher.data) == (1000, "rest", "rest")


def test_kdistill_run_alone_is_the_demo_unchanged():
    recipe, resolved = planned(["data.subset=200"])  # the demo's data, a slice of it
    shipped = load_config(CONFIGS / "mnist.yaml", ["data.subset=200"])
    assert resolved.automatic == [] and not recipe.follows_data
    shipped.distill = recipe.distill  # the file spells out KD's T and alpha; the built-in does not
    assert dump_config(recipe) == dump_config(shipped)
    t = recipe.train
    assert (recipe.name, t.epochs, recipe.data.unlabelled) == ("mnist_kd", 30, "rest")


def test_what_the_user_sets_wins_and_the_dump_records_the_choices(tmp_path):
    from test_bring_your_own_data import hue_folder

    hue_folder(tmp_path / "images")
    given = [
        "train.epochs=3",
        "teacher.epochs=2",
        "train.augment=shift",
        "teacher.cache=false",
        "train.mix=mixup",
        "name=mine",
    ]
    recipe, resolved = planned(["data.dataset=folder", f"data.path={tmp_path / 'images'}", *given])
    t, teacher = recipe.train, recipe.teacher
    assert (t.epochs, teacher.epochs, t.augment, teacher.cache, t.mix, t.views, recipe.name) == (
        3,
        2,
        "shift",
        False,
        "mixup",
        0,
        "mine",
    )
    keys = [line.split("=")[0] for line in resolved.automatic]
    assert keys == ["teacher.model", "student.model", "teacher.augment", "train.scratch_mix"]
    # config.yaml holds the values chosen, and reads back to the same recipe.
    dumped = dump_config(recipe)
    assert load_config(write(tmp_path, dumped, "config.yaml")).model_dump() == recipe.model_dump()
    assert "augment: auto" not in dumped and "mix: auto" not in dumped
    # A table with image settings set by the user is still refused, naming them.
    refusal = r"train.augment=affine transforms images .* set train.augment=none"
    with pytest.raises(ConfigError, match=refusal):
        planned([*TABLE, wine(tmp_path), "train.augment=affine"])


def test_a_teacher_not_trained_here_keeps_its_training_settings_unset():
    # Set, they would read as the user's: "only apply to a teacher trained here", a warning.
    recipe, resolved = planned(["data.dataset=digits", "data.subset=200", "teacher.epochs=0"])
    assert "augment" not in recipe.teacher.model_fields_set and recipe.teacher.epochs == 0
    keys = [line.split("=")[0] for line in resolved.automatic]
    assert "teacher.augment" not in keys and "teacher.epochs" not in keys
    assert recipe.train.augment == "affine" and recipe.name == "digits_kd"


def test_auto_in_a_recipe_file_follows_the_inputs(tmp_path):
    from kdistill.run.plan import plan

    csv = wine(tmp_path).removeprefix("data.path=")
    path = write(
        tmp_path,
        f"data: {{dataset: table, path: {csv}, options: {{label: species}}}}\n"
        "teacher: {augment: auto}\ntrain: {augment: auto, mix: auto}\n",
    )
    recipe = load_config(path)
    resolved = plan(recipe)
    # A file keeps its plain defaults (30 epochs, no cache): `auto` and the unset name follow
    # the data.
    t = recipe.train
    assert (t.augment, t.mix, t.epochs, recipe.name) == ("none", "none", 30, "wine_kd")
    keys = [line.split("=")[0] for line in resolved.automatic]
    assert keys == ["teacher.augment", "train.augment", "train.mix", "name"]


def test_check_prints_each_setting_chosen_and_why(tmp_path, capsys):
    from kdistill.cli import main

    table = [*TABLE, wine(tmp_path)]
    assert main(["check", *table, "teacher.model=mlp", "train.mix=none"]) == 0
    out = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert out[0].startswith("wine_kd: ok")
    assert "teacher.augment=none: the inputs are table rows" in out
    assert "train.augment=none: the inputs are table rows" in out
    assert not any(line.startswith("train.mix=") for line in out)  # the user set it
    assert any(line.startswith("train.epochs=100: 104 training samples") for line in out)
    assert (
        "student.model=mlp_tiny: the inputs are table rows; an MLP teacher (2 × 256 units) "
        "and a smaller MLP student (32 units) read feature rows" in out
    )
    # A model the user names on table rows is checked as given: one line naming the field.
    with pytest.raises(ConfigError, match=r"teacher: lenet cannot be built for inputs of shape"):
        preflight(load_config(None, [*table, "teacher.model=lenet"]))


def test_the_models_follow_the_kind_of_input_unless_named(tmp_path):
    """The built-in recipe on the user's data trains models that read it (issue 30.1): not the
    demo's LeNet (28×28 images only) and MLP. Whatever the user names wins, and config.yaml
    records the models chosen."""
    from test_bring_your_own_data import hue_folder

    recipe, resolved = planned([*TABLE, wine(tmp_path)])
    preflight(recipe)  # builds both, and runs a step: the demo's lenet failed here
    assert (recipe.teacher.model, recipe.teacher.kwargs) == ("mlp", {"width": 256, "depth": 2})
    assert (recipe.student.model, recipe.student.kwargs) == ("mlp_tiny", {})
    assert resolved.automatic[0].startswith(
        "teacher.model=mlp (width=256, depth=2): the inputs are table rows"
    )
    dumped = dump_config(recipe)
    assert load_config(write(tmp_path, dumped, "config.yaml")).model_dump() == recipe.model_dump()

    hue_folder(tmp_path / "images")
    folder = ["data.dataset=folder", f"data.path={tmp_path / 'images'}"]
    recipe, resolved = planned(folder)
    assert (recipe.teacher.model, recipe.student.model) == ("resnet8", "cnn_tiny")
    recipe, resolved = planned([*folder, "teacher.model=lenet"])
    assert (recipe.teacher.model, recipe.student.model) == ("lenet", "cnn_tiny")
    assert [line.split(":")[0] for line in resolved.automatic[:1]] == ["student.model=cnn_tiny"]
    # Settings given without a model are the recipe's model's: that model is kept.
    recipe, resolved = planned([*folder, "student.kwargs.width=4"])
    assert (recipe.teacher.model, recipe.student.model) == ("resnet8", "mlp")
    assert recipe.student.kwargs == {"width": 4}

    recipe, resolved = planned(["data.dataset=japanese_vowels", "data.subset=100"])
    assert (recipe.teacher.model, recipe.student.model) == ("bilstm", "gru")
    # The demo itself keeps its pair.
    recipe, _ = planned(["data.subset=200"])
    assert (recipe.teacher.model, recipe.student.model) == ("lenet", "mlp")


def test_a_time_budget_is_seconds_or_a_duration():
    from kdistill.training.settings import TrainConfig

    given = {90: 90.0, "90s": 90.0, "5m": 300.0, "1.5h": 5400.0, " 2 min ": 120.0}
    assert {k: TrainConfig(time_budget=k).time_budget for k in given} == given
    for wrong in ("soon", "0", -3, True, "1e400"):
        with pytest.raises(ConfigError, match=r"train\.time_budget"):
            load_config(None, [f"train.time_budget={wrong}"])


def test_budget_epochs_are_one_number_for_both_students():
    """The budget fixes the epochs before training from an epoch's measured cost: both students
    get them (never a clock that stops the second one early)."""
    from kdistill.run.budget import EpochCost, budget_epochs

    cost = EpochCost(students=2.0, teachers=(1.0,))
    assert budget_epochs(100, cost, teacher_epochs=[None])[0] == 33  # the teacher trains as many
    epochs, why = budget_epochs(100, cost, teacher_epochs=[10])  # 10 s of its own first
    assert epochs == 45 and "after 10 s of the teacher's own epochs" in why
    epochs, why = budget_epochs(1, cost, teacher_epochs=[None])
    assert epochs == 1 and "more than the budget" in why
    assert budget_epochs(1e6, cost, teacher_epochs=[None])[0] == 100
    # An ensemble: each member trained here costs its own epochs; a loaded one (0 s) nothing.
    members = EpochCost(students=2.0, teachers=(1.0, 3.0, 0.0))
    epochs, why = budget_epochs(100, members, teacher_epochs=[10, 5, 15])
    assert epochs == (100 - 10 * 1.0 - 5 * 3.0) // 2.0 and "of 2 teachers' own epochs" in why
    assert budget_epochs(100, members, teacher_epochs=[None, None, 15])[0] == 100 // 6.0


def test_an_epochs_cost_counts_every_teacher_and_the_teachers_own_data(monkeypatch):
    """Each member of an ensemble scores every distilled batch, and trains its own epochs where
    it is trained here; ``teacher.data`` gives a teacher more batches of its own."""
    import kdistill.run.budget as budget
    from kdistill.run.plan import epoch_cost, load_data

    seconds = {"cnn": 3.0, "mlp": 1.0}  # a training step (a forward pass: half), by model class

    def step(model, batches, *, train=True):
        return seconds.get(type(model).__name__.lower(), 0.0) * (1 if train else 0.5)

    monkeypatch.setattr(budget, "step_seconds", step)
    ensemble = load_config(
        None,
        [
            "data.subset=400",
            "data.unlabelled=null",
            "teachers=[{model: lenet}, {model: mlp, checkpoint: t.safetensors}]",
        ],
    )
    splits = load_data(ensemble)
    cost = epoch_cost(ensemble, splits)
    batches = -(-len(splits.train) // ensemble.train.batch_size)
    val = -(-len(splits.val) // ensemble.train.batch_size)
    assert cost.teachers == (batches * 3.0 + val * 1.5, 0.0)  # the second one is loaded
    # The students' epoch: two students' steps, their validation, both members scoring.
    assert cost.students == batches * 1.0 * 2 + 2 * val * 0.5 + batches * (1.5 + 0.5)
    single = load_config(None, ["data.subset=400"])  # teacher.data: rest, a transfer set
    splits = load_data(single)
    own = -(-len(splits.teacher_train) // single.train.batch_size)
    assert epoch_cost(single, splits).teachers == (own * 3.0 + val * 1.5,)


def test_a_time_budget_chooses_the_epochs_from_a_measured_step(tmp_path):
    from kdistill.run.budget import step_seconds
    from kdistill.run.plan import plan

    table = [*TABLE, wine(tmp_path)]
    recipe, resolved = planned([*table, "train.time_budget=0.001"])
    assert recipe.train.epochs == recipe.teacher.epochs == 1
    line = next(line for line in resolved.automatic if line.startswith("train.epochs="))
    assert "train.time_budget=0.001 s holds 1" in line and "an epoch measured" in line
    dumped = dump_config(recipe)  # the epochs chosen are recorded: a rerun does not remeasure
    assert load_config(write(tmp_path, dumped, "config.yaml")).train.epochs == 1
    recipe, resolved = planned([*table, "train.time_budget=1h"])
    assert recipe.train.epochs == 100  # within the bounds of the budget of updates
    recipe, resolved = planned([*table, "train.time_budget=1h", "train.epochs=3"])
    assert recipe.train.epochs == 3  # a set train.epochs wins
    # A recipe file takes a budget too; its teacher keeps its own 15 epochs.
    csv = wine(tmp_path).removeprefix("data.path=")
    file = write(
        tmp_path,
        f"data: {{dataset: table, path: {csv}, options: {{label: species}}}}\n"
        "teacher: {model: mlp, augment: none}\nstudent: {model: mlp_tiny}\n"
        "train: {time_budget: 0.001}\n",
    )
    recipe = load_config(file)
    plan(recipe)
    assert (recipe.train.epochs, recipe.teacher.epochs) == (1, 15)
    # The measurement trains nothing.
    import torch

    model = torch.nn.Linear(2, 3)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [{"input": torch.randn(4, 2)} for _ in range(4)]
    assert step_seconds(model, batches) > 0
    assert all((a == b).all() for a, b in zip(before, model.parameters()))
