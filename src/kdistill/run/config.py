"""The recipe: one pydantic schema, read with ``yaml.safe_load``, overridden with ``key=value``.

Every section forbids unknown keys, so a typo fails before any data is loaded, with the key,
the file and the nearest valid name. A recipe file starts from the field defaults below: Hinton KD
of a small MLP from a CNN teacher on the bundled 5k MNIST, students unaugmented. ``kdistill run``
with no file starts from ``BUILTIN_RECIPE`` instead (the demo), until the user names other data:
then every setting they leave out follows the data (``kdistill.run.automatic``).
"""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

import kdistill.io.safe_yaml as safe_yaml
from kdistill.errors import ConfigError
from kdistill.models.imported import remember_data_dir, remember_recipe_dir
from kdistill.run.overrides import apply_override, parse_override
from kdistill.training.settings import MAX_STEP, Augment, Section, TrainConfig

MAX_TEMPERATURE = 1e3  # T² of a temperature of 1e308 overflows a float


class DataConfig(Section):
    dataset: str = Field(
        "mnist", description="a bundled dataset or a kind of file (`kdistill list datasets`)"
    )
    path: str | None = Field(
        None, description="your data: a file or folder of the kind `dataset` names"
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of the samples held out for validation"
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share held out for the test (where no test split ships)"
    )
    subset: int | None = Field(None, gt=0, description="use this many samples (quick runs)")
    # The split seed is separate from train.seed: every training seed sees the same test set.
    seed: int = Field(0, ge=0, le=2**32 - 1, description="the split's seed, apart from train.seed")
    num_workers: int = Field(
        0, ge=0, le=64, description="loader processes; each is a process of its own"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="extra loader arguments")
    unlabelled: str | None = Field(
        None,
        min_length=1,
        description="a transfer set the teacher scores and the distilled student learns from "
        "without labels: 'rest' (digits, mnist: the samples outside data.subset), an .npz "
        "with an array x, an .npy array (memory-mapped: a pool larger than memory streams), a "
        "table with the labelled table's feature columns, a folder of images without class "
        "sub-folders, or beside labelled_text a .txt of one text a line or a table with the "
        "same text column",
    )
    labelled_share: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="with data.unlabelled: the fraction of each epoch's samples drawn from the "
        "labelled data (null: the natural proportion, both sets shuffled together)",
    )
    pseudo_labels: bool = Field(
        False,
        description="with data.unlabelled: also train the self-training baseline, the student "
        "on the labels and the teacher's hard labels of the transfer set, for the same steps",
    )

    @model_validator(mode="after")
    def _transfer_settings_need_a_transfer_set(self):
        for name in ("labelled_share", "pseudo_labels"):
            if getattr(self, name) not in (None, False) and self.unlabelled is None:
                raise ValueError(f"{name} acts on a transfer set: set data.unlabelled too")
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave data to train on (< 1)")
        return self


class PruneConfig(Section):
    """Depth pruning of a pretrained causal LM before training (ShortGPT block influence,
    Minitron): both students start from the same pruned weights (kdistill.models.pruning)."""

    keep: int = Field(gt=0, description="decoder layers kept: the most influential ones")
    calibration_tokens: int = Field(
        8192, gt=0, le=10_000_000, description="training-split tokens the layers are scored on"
    )


class StudentConfig(Section):
    model: str = Field(
        "mlp", description="a zoo model (`kdistill list models`), hf, or module:Class of your own"
    )
    # Exactly the model's own defaults unless given: `student.model=mlp_tiny` must build the
    # mlp_tiny of the zoo, not carry another model's width along.
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="the model's settings; unset ones keep its defaults"
    )
    prune: PruneConfig | None = Field(
        None, description="keep only the most influential layers of a pretrained model"
    )


class TeacherConfig(Section):
    model: str = Field(
        "lenet", description="a zoo model (`kdistill list models`), hf, or module:Class of your own"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="the model's settings; unset ones keep its defaults"
    )
    checkpoint: str | None = Field(
        None,
        description=(
            "weights to load instead of training: .safetensors, a "
            "state_dict (.pt/.pth/.bin) or a Hugging Face directory"
        ),
    )
    onnx: str | None = Field(
        None,
        description=(
            "an exported .onnx teacher, run by ONNX Runtime "
            "(logit-level terms; model is then unused)"
        ),
    )
    epochs: int = Field(
        15,
        ge=0,
        description=(
            "0: use the model as built, untrained here "
            "(a pretrained zoo model such as smollm2_135m)"
        ),
    )
    lr: float = Field(2e-3, gt=0, le=MAX_STEP, description="the teacher's learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adam", description="the teacher's optimizer"
    )
    augment: Augment = Field("shift", description="augmentation while training the teacher")
    data: Literal["rest"] | None = Field(
        None,
        description="labelled data the teacher also trains on and no student sees: 'rest' "
        "(digits, mnist: the samples outside data.subset, with their labels; with "
        "data.unlabelled: rest too, the rest is cut in two disjoint halves, the teacher's and "
        "the transfer set)",
    )
    cache: bool = Field(
        False,
        description="run the teacher once over the training split and read its outputs from disk",
    )
    cache_dtype: Literal["float16", "float32"] = Field(
        "float16", description="precision of the cached outputs"
    )
    cache_topk: int | None = Field(
        None,
        gt=0,
        description=(
            "store only the teacher's k most probable classes (tokens) "
            "per position plus the tail mass (large vocabularies)"
        ),
    )
    cache_samples: int | None = Field(
        None,
        gt=0,
        description="store K tokens drawn from the teacher per position with their importance "
        "weights instead (random-sampling KD: an unbiased forward KL; large vocabularies); "
        "with cache_topk, the top k exactly and K draws from the rest",
    )
    cache_sample_temperature: float = Field(
        1.0,
        gt=0,
        le=MAX_TEMPERATURE,
        description="draw the cached tokens from softmax(t / (T·τ)): τ > 1 reaches further "
        "into the tail; the weights keep the estimate unbiased",
    )
    cache_hidden: bool = Field(
        False,
        description="store a language model's final hidden states instead, and its output layer "
        "once: every loss reads the exact logits (H of V numbers per position: 1.2 % of dense "
        "for SmolLM2), at the cost of the head's product each step",
    )
    cache_dir: str | None = Field(
        None, description="where the cache lives (default: <output.dir>/.cache/<fingerprint>)"
    )

    @property
    def trained_here(self) -> bool:
        """Whether a run trains this teacher (and so
        applies its ``augment``), rather than loading it."""
        return not (self.checkpoint or self.onnx or self.epochs == 0)


class TermConfig(Section):
    name: str = Field(description="the term's name in the loss dict and metrics (loss/<name>)")
    loss: str = Field(description="a loss function (`kdistill list losses`)")
    weight: float = Field(1.0, description="the term's weight in the sum")
    student: str = Field("logits", description="what the term reads from the student: a tap")
    teacher: str | None = Field(
        "logits", description="what it reads from the teacher; null: a term without teacher"
    )
    connector: Literal["auto", "identity", "linear", "conv", "regressor"] | None = Field(
        None, description="a trained map from the student's tap to the teacher's shape"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the loss's settings")
    warmup_epochs: int = Field(0, ge=0, description="epochs over which the weight ramps up")
    chunk_size: int = Field(
        0,
        ge=0,
        description="token losses of an HF causal LM: positions per chunk of logits; 0 = whole",
    )


class DistillConfig(Section):
    # None leaves each method's published default (KD: T=4, α=0.9; DIST: τ=1; LSKD: T=2; ...).
    temperature: float | None = Field(
        None, gt=0, le=MAX_TEMPERATURE, description="default: the method's own"
    )
    alpha: float | None = Field(
        None, ge=0.0, description="weight of the distillation term; default: the method's own"
    )
    ce_weight: float | None = Field(None, ge=0.0, description="default 1 - alpha")
    params: dict[str, Any] = Field(default_factory=dict, description="method-specific settings")
    # Who teaches: the teacher (or the `teachers` ensemble, or a teacher → assistant → student
    # chain), the previous generation of the student itself (born-again networks), or a peer
    # trained alongside, described by the teacher section (deep mutual learning).
    mode: Literal["teacher", "born_again", "mutual"] = Field(
        "teacher", description="who teaches: the teacher, earlier generations, or a peer"
    )
    generations: int = Field(
        2, ge=1, description="born_again: distilled generations after the scratch one"
    )
    ensemble: Literal["mean", "weights", "confidence"] = Field(
        "mean", description="how `teachers` combine"
    )
    ensemble_weights: list[float] | None = Field(
        None, description="ensemble=weights: one per teacher"
    )


class OutputConfig(Section):
    dir: str = Field("runs", description="where runs/<name>/ and the teacher store live")
    latency: bool = Field(True, description="time each model at batch 1 and 256")
    plots: bool = Field(True, description="draw the training curves and diagnostics")
    progress: bool = Field(True, description="show progress bars")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="trackers (local files only) that mirror metrics.jsonl",
    )
    log_every: int = Field(
        50, ge=0, description="training steps between tracker records (0: per epoch only)"
    )

    @model_validator(mode="after")
    def _trackers_installed(self):
        from kdistill.run.trackers import check_installed  # here: keeps the schema light

        check_installed(self.report_to)
        return self


class Recipe(Section):
    # Bounded: the name becomes directory and file names (<name>-tune, .teachers/work-<name>), and
    # a file name longer than the file system's 255 bytes fails only when it is first written.
    name: str = Field(
        "mnist_kd",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        description="the run's name: its directory <output.dir>/<name>/",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="what to train and test on")
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig, description="the teacher: its model, weights and training"
    )
    teachers: list[TeacherConfig] | None = Field(
        None, description="an ensemble of teachers, instead of `teacher`"
    )
    assistant: StudentConfig | None = Field(
        None, description="teacher assistant: teacher → assistant → student (TAKD)"
    )
    student: StudentConfig = Field(
        default_factory=lambda: StudentConfig(model="mlp", kwargs={"width": 128}),
        description="the student's model (scratch and distilled alike)",
    )
    method: str | None = Field(
        "kd", description="a preset (`kdistill list methods`); or null with `terms`"
    )
    terms: list[TermConfig] | None = Field(
        None, description="the loss as a list of weighted terms, instead of a method"
    )
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description="the method's settings and who teaches"
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="how the students train (both alike)"
    )
    output: OutputConfig = Field(
        default_factory=OutputConfig, description="where the run goes and what it draws"
    )
    # Set by load_config: the built-in recipe pointed at the user's own data, whose settings the
    # user left out follow that data rather than the demo's (kdistill.run.automatic).
    _follows_data: bool = PrivateAttr(False)

    @property
    def follows_data(self) -> bool:
        """Whether the settings this recipe leaves out are chosen from its data (the built-in
        recipe on the user's own data) rather than taken from the field defaults."""
        return self._follows_data

    def teacher_sections(self) -> list[tuple[str, TeacherConfig]]:
        """Each teacher's settings with the key they live under: ``teacher``, or
        ``teachers.<i>`` for the members of an ensemble."""
        if self.teachers is None:
            return [("teacher", self.teacher)]
        return [(f"teachers.{i}", teacher) for i, teacher in enumerate(self.teachers)]

    @model_validator(mode="after")
    def _method_or_terms(self):
        if self.terms is not None:
            if "method" in self.model_fields_set and self.method is not None:
                raise ValueError("set method (a preset) or terms (a list), not both")
            if not self.terms:
                raise ValueError("terms: list at least one term (or use method: for a preset)")
            names = [term.name for term in self.terms]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(
                    f"terms: each term needs its own name; {repeated[0]!r} is used twice"
                )
            self.method = None
        elif self.method is None:
            raise ValueError("set either method (a preset such as kd) or terms (a list)")
        return self

    @model_validator(mode="after")
    def _who_teaches(self):
        if self.teachers is not None:
            if "teacher" in self.model_fields_set:
                raise ValueError("set teacher (one) or teachers (an ensemble), not both")
            if not self.teachers:
                raise ValueError("teachers: list at least one teacher")
            if self.distill.ensemble == "weights" and len(
                self.distill.ensemble_weights or []
            ) != len(self.teachers):
                raise ValueError(
                    f"distill.ensemble_weights: give {len(self.teachers)} weights, one per teacher"
                )
        sparse = "cache_topk" if self.teacher.cache_topk else "cache_samples"
        if self.assistant is not None and getattr(self.teacher, sparse):
            raise ValueError(
                f"teacher.{sparse} with an assistant: the assistant teaches live, with dense "
                f"outputs; drop {sparse}"
            )
        if self.teachers is not None and self.distill.params.get("vocab_map") is not None:
            raise ValueError(
                "distill.params.vocab_map maps one teacher's "
                "vocabulary: not available with teachers (an ensemble)"
            )
        if self.distill.mode != "teacher" and (
            self.teachers is not None or self.assistant is not None
        ):
            raise ValueError(
                f"distill.mode={self.distill.mode} trains "
                "its own teachers: remove teachers/assistant"
            )
        return self

    @model_validator(mode="after")
    def _onnx_teacher_is_only_run(self):
        # An exported graph is run, never trained or loaded into: the modes that train their
        # own teacher, and a checkpoint for it, cannot apply.
        if self.teacher.onnx and self.distill.mode != "teacher":
            raise ValueError(
                f"teacher.onnx: distill.mode={self.distill.mode} trains its teacher; an ONNX "
                "teacher is only run (use distill.mode=teacher)"
            )
        if self.teacher.checkpoint and self.distill.mode != "teacher":  # it would go unread
            raise ValueError(
                f"teacher.checkpoint: distill.mode={self.distill.mode} trains its own teacher and "
                "loads none; remove teacher.checkpoint, or "
                "use distill.mode=teacher to distil from it"
            )
        if any(t.onnx and t.checkpoint for t in (self.teacher, *(self.teachers or []))):
            raise ValueError(
                "teacher.onnx and teacher.checkpoint: the "
                ".onnx file holds its weights; set one of them"
            )
        return self

    @model_validator(mode="after")
    def _selection_needs_validation(self):
        if (self.train.keep == "best" or self.train.early_stopping) and self.data.val_fraction == 0:
            raise ValueError(
                "train.keep=best and train.early_stopping choose epochs "
                "on the validation split: set data.val_fraction > 0"
            )
        return self

    @model_validator(mode="after")
    def _cache_serves_fixed_inputs(self):
        # Checked here, not when the distilled student starts: by then the teacher and the
        # scratch student have trained for nothing.
        live_only = [
            k
            for k in ("init_from_teacher", "on_policy", "sequence_kd")
            if self.distill.params.get(k)
        ]
        t = self.teacher
        if t.cache_hidden and (t.cache_topk or t.cache_samples or not t.cache):
            raise ValueError(
                "teacher.cache_hidden (the exact logits) is a cache of its own: set "
                "teacher.cache=true, without teacher.cache_topk or teacher.cache_samples"
            )
        if self.teacher.cache and live_only:
            raise ValueError(
                f"distill.params.{live_only[0]} needs the "
                "live teacher (its weights, or its scores of newly sampled sequences), not cached "
                "outputs: set teacher.cache=false"
            )
        return self


# --- reading ---------------------------------------------------------------------------------


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The schema class that holds the key at ``loc`` (for 'did you mean')."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = (
            model.model_fields.get(part)
            if isinstance(model, type) and issubclass(model, BaseModel)
            else None
        )
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def _shown(part) -> str:
    """A key as printable text: a newline or tab in a key must not break the one-line error."""
    text = str(part)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def describe_validation_error(
    error: ValidationError, source: str, overrides: dict[str, str]
) -> str:
    """One line for the first problem: the key, where it came from, and the fix."""
    problems = error.errors()
    first = problems[0]
    loc = tuple(first["loc"])
    key = ".".join(_shown(p) for p in loc) or "(top level)"
    origin = f"override {overrides[key]!r}" if key in overrides else source
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    if first["type"] == "extra_forbidden":
        section = _section_at(loc)
        valid = list(section.model_fields) if section else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        prefix = ".".join(_shown(p) for p in loc[:-1])
        if close:
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
        else:
            hint = f"valid keys here: {', '.join(valid)}"
        return f"{origin}: unknown key '{key}' ({hint}){more}"
    message = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
    return f"{origin}: {key}: {message}{shown}{more}"


# The built-in recipe, ``kdistill run`` with no file, spelt out and explained in configs/mnist.yaml:
# what distillation buys with few labels (Hinton et al. 2015's transfer set; Bucilă et al. 2006).
# 1,000 labelled digits of the bundled MNIST (700 to train on, 100 to validate, 200 to test); the
# other 4,000 cut in two disjoint halves: a LeNet teacher learns from the first half's labels
# too, and the second is the unlabelled transfer set. The scratch student takes as many optimizer
# steps over the 700 labels as the distilled student takes over both sets. The settings suit
# MNIST only: the user's own data leaves them (``Recipe.follows_data``).
BUILTIN_RECIPE: dict[str, Any] = {
    "data": {"subset": 1000, "unlabelled": "rest"},
    "teacher": {"data": "rest", "cache": True},
    "train": {"augment": "shift"},
}


def names_own_data(data: Any) -> bool:
    """Whether a recipe's ``data`` section names data other than the demo's (the bundled MNIST):
    another dataset, or files of the user's (``data.path``)."""
    if not isinstance(data, dict):
        return False
    demo = DataConfig.model_fields["dataset"].default
    return data.get("dataset", demo) != demo or data.get("path") is not None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] = (),
    *,
    code_beside: bool = True,
) -> Recipe:
    """Read a recipe file (or the built-in recipe when ``path`` is None) and apply overrides;
    ``code_beside=False`` for a run's config.yaml (data: no model is imported from its folder).

    Raises ``ConfigError`` with one line naming the key, the file and the fix.
    """
    source = "built-in recipe"
    tree: Any = copy.deepcopy(BUILTIN_RECIPE)
    if path is not None:
        file = Path(path)
        source = str(file)
        if not file.is_file():
            raise ConfigError(f"{file}: recipe file not found (see configs/ for examples)")
        # `model: mymodels:Net` is found next to the recipe; a run directory is never imported from.
        (remember_recipe_dir if code_beside else remember_data_dir)(file.parent)
        try:
            tree = safe_yaml.load_file(file) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f": line {mark.line + 1}" if mark else ""
            problem = getattr(error, "problem", None) or "invalid YAML"
            raise ConfigError(f"{file}{where}: {problem}; fix the YAML syntax") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{file}: cannot read the recipe ({error})") from None
        if not isinstance(tree, dict):
            raise ConfigError(
                f"{file}: a recipe is a mapping of sections (name:, data:, train: ...)"
            )
    by_key = {}
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value, text)
        by_key[".".join(map(str, keys))] = text
    # Data the demo's (the bundled MNIST) is not: the user's. On their own data the demo's
    # values (its labelled slice, transfer set, teacher data and name) give way to ones chosen
    # from the data, so the recipe holds only what the user set (``model_fields_set``).
    follows_data = path is None and names_own_data(tree.get("data"))
    if follows_data:
        tree = {}
        for text in overrides:
            apply_override(tree, *parse_override(text), text)
    if path is None and "teachers" in tree and tree.get("teacher") == BUILTIN_RECIPE["teacher"]:
        del tree["teacher"]  # an ensemble given on the command line replaces the built-in's teacher
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, source, by_key)) from None
    recipe._follows_data = follows_data
    return recipe


def dump_config(recipe: Recipe, built: dict[str, dict] | None = None) -> str:
    """The resolved recipe as YAML that ``load_config`` reads back to the same ``Recipe``, and,
    as comments below it, every model as preflight built it (``Plan.built``)."""
    tree = recipe.model_dump(mode="json")
    if recipe.teachers is not None:
        del tree["teacher"]  # an ensemble has no single teacher; both would be refused
    if recipe.terms is not None:
        del tree["method"]
    text = safe_yaml.dump(tree)
    return text + describe_built(built) if built else text


def describe_built(built: dict[str, dict]) -> str:
    """YAML comments listing each model with its parameter count and every setting it was built
    with, the builder's defaults included: comments, so the file still reads back as the recipe."""
    lines = [
        "",
        "# The models as built: every setting, the builders' defaults included (for reading;",
        "# a run reads only the recipe above).",
    ]
    for field_name, model in built.items():
        lines.append(f"# {field_name}: {model['model']}, {model['parameters']:,} parameters")
        settings = (
            safe_yaml.dump(model["settings"]).rstrip("\n")
            if model["settings"]
            else "(no settings recorded)"
        )
        lines += [f"#   {line}" for line in settings.splitlines()]
    return "\n".join(lines) + "\n"
