"""What the CLI fuzzer throws at ``kdistill``: hypothesis strategies for command lines, recipes
(aliases, huge values, wrong types), data files (``.npz`` archives, image folders, valid and
damaged; and from ``fuzz_inputs``: 16-bit and huge images, wide tables, huge text cells, sparse
token ids) and damaged run directories, caches and teacher stores.

A case is files to lay down in a fresh directory plus an argv. Every case that could train is
held to a tiny budget: a small slice of ``digits`` by default, and the epoch counts forced to 1
after everything generated (the last override wins), so a case ends in seconds.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass, field

import numpy as np
from fuzz_inputs import black_png, png16_bytes, png_of, tables, texts, token_ids
from hypothesis import strategies as st

# Defaults a generated override may replace (it comes later on the command line) ...
QUICK = [
    "data.dataset=digits",
    "data.subset=200",
    "teacher.model=mlp",
    "student.kwargs.width=16",
    "teacher.augment=none",
]
# ... and the budget it may not: these come last, so they win.
BUDGET = [
    "train.epochs=1",
    "teacher.epochs=1",
    "distill.generations=1",
    "output.latency=false",
    "output.plots=false",
    "output.progress=false",
]
TRAINING = {"run", "check", "cache", "tune"}
# The template: a finished run of QUICK + BUDGET (with teacher.cache=true), its teacher in the
# store and its cache, copied into a case's runs/ when the case asks for it.
RUN = "runs/digits_kd"  # QUICK names its data: the run is named after it
# The user's own files, in every case; none of them may change, whatever the command.
DECOYS = {
    "important/thesis.txt": b"four years of work\n",
    "proj/myapp/config.yaml": b"app: mine\n",
    "proj/myapp/src/main.py": b"print('mine')\n",
    "runs/foreign/notes.txt": b"not a run\n",
    "recipe.yaml": b"name: given\ndata: {dataset: digits}\n",
}
PATHS = [
    "important",
    "important/thesis.txt",
    "proj",
    "proj/myapp",
    "runs",
    "runs/foreign",
    RUN,
    "recipe.yaml",
    "missing.yaml",
    "data.npz",
    "images",
    ".",
    "/",
    "/dev/null",
    "",
    f"{RUN}/checkpoints/teacher.safetensors",
    "x" * 300 + ".yaml",
    "y" * 300 + "/z",
]


@dataclass
class Case:
    family: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    template: bool = False
    damage: tuple[str, str, int] | None = None  # (template file, how, where)
    sparse: dict[str, int] = field(default_factory=dict)  # files extended to a size, unwritten

    def __repr__(self) -> str:  # what hypothesis prints for a failing case
        damage = f", damage={self.damage}" if self.damage else ""
        return (
            f"Case({self.family}: kdistill {' '.join(map(repr, self.argv))}, "
            f"files={sorted(self.files)}{damage})"
        )


# --- values ------------------------------------------------------------------------------------

HUGE = [
    str(10**9),
    str(2**31),
    str(2**63),
    str(10**30),
    str(-(2**63)),
    "1e23",
    "1e308",
    "-1e308",
    ".inf",
    "-.inf",
    ".nan",
    "1e-320",
]
ALIASES = [
    "{a: &x [1, 2], b: *x}",
    "&x [*x]",
    "[&y 1, *y, *y]",
    "*undefined",
    "{<<: {width: 8}, depth: 2}",
    "{"
    + ", ".join(
        [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i else "lol"] * 9) + "]" for i in range(9)]
    )
    + "}",
]
yaml_scalars = st.one_of(
    st.integers(-3, 300).map(str),
    st.sampled_from(HUGE),
    st.sampled_from(["true", "false", "null", "~", "''", "[]", "{}"]),
    st.floats(allow_nan=False, width=32).map(repr),
    st.sampled_from(PATHS),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10),
)
yaml_values = st.one_of(
    yaml_scalars,
    st.sampled_from(ALIASES),
    st.lists(yaml_scalars, max_size=3).map(lambda v: "[" + ", ".join(v) + "]"),
)

KEYS = [
    "name",
    "method",
    "data.dataset",
    "data.path",
    "data.val_fraction",
    "data.test_fraction",
    "data.subset",
    "data.seed",
    "data.options",
    "data.options.num_classes",
    "data.options.channels",
    "data.options.image_size",
    "data.options.max_bytes",
    "teacher.model",
    "teacher.kwargs",
    "teacher.kwargs.width",
    "teacher.checkpoint",
    "teacher.lr",
    "teacher.optimizer",
    "teacher.augment",
    "teacher.cache",
    "teacher.cache_dtype",
    "teacher.cache_topk",
    "teacher.cache_samples",
    "teacher.cache_sample_temperature",
    "teacher.cache_dir",
    "teachers",
    "assistant",
    "assistant.model",
    "student",
    "student.model",
    "student.kwargs",
    "student.kwargs.width",
    "student.kwargs.depth",
    "student.kwargs.bogus",
    "terms",
    "terms.0",
    "terms.0.loss",
    "terms.0.weight",
    "terms.0.student",
    "terms.0.teacher",
    "terms.0.connector",
    "distill.temperature",
    "distill.alpha",
    "distill.ce_weight",
    "distill.params",
    "distill.params.feat_weight",
    "distill.mode",
    "distill.ensemble",
    "distill.ensemble_weights",
    "train.batch_size",
    "train.eval_batch_size",
    "train.lr",
    "train.optimizer",
    "train.momentum",
    "train.weight_decay",
    "train.schedule",
    "train.seed",
    "train.device",
    "train.mixed_precision",
    "train.augment",
    "train.checkpoint_every",
    "train.deterministic",
    "output.dir",
    "output",
    "trian.epochs",
    "data",
    "",
    "train..lr",
    "0",
    "train.epochs.x",
]
# A budget key gets no huge value: a run of 1e23 epochs is what the user asked for, not a bug.
BUDGET_VALUES = ["0", "-1", "1", "x", "1.5", "null", "[]", "{a: 1}"]
NAMED = {
    "method": [
        "kd",
        "dkd",
        "dist",
        "fitnet",
        "at",
        "crd",
        "rkd",
        "scratch",
        "token_kd",
        "tinybert",
        "bogus",
    ],
    "data.dataset": [
        "digits",
        "npz",
        "folder",
        "mnist",
        "movielens",
        "text",
        "japanese_vowels",
        "bogus",
    ],
    "teacher.model": [
        "mlp",
        "cnn_tiny",
        "lenet",
        "resnet8",
        "gpt",
        "neumf",
        "hf",
        "bilstm",
        "bogus",
    ],
    "student.model": [
        "mlp_tiny",
        "cnn_tiny",
        "resnet8",
        "text_cnn",
        "neumf_small",
        "hf",
        "conv1d",
        "bogus",
    ],
    "terms": [
        "[]",
        "[{name: a, loss: kd}, {name: a, loss: ce}]",
        "[{name: h, loss: hint, student: fc1, teacher: fc1}]",
        "[{name: c, loss: ce, teacher: null}]",
        "[{name: x, loss: bogus}]",
        "[{name: k, loss: kd, params: {temperature: -1}}]",
    ],
    "distill.mode": ["teacher", "born_again", "mutual", "bogus"],
    "teachers": [
        "[{model: mlp, epochs: 1}, {model: cnn_tiny, epochs: 1}]",
        "[]",
        "[{model: bogus}]",
    ],
    "assistant": ["{model: mlp, kwargs: {width: 8}}", "{model: bogus}", "{}"],
}


# Numbers a user can give, each to be met with a bound or a clear failure, never a crash.
NUMERIC = [
    "student.kwargs.width",
    "teacher.kwargs.width",
    "student.kwargs.depth",
    "data.subset",
    "train.batch_size",
    "train.eval_batch_size",
    "train.checkpoint_every",
    "teacher.cache_topk",
    "teacher.cache_samples",
    "teacher.cache_sample_temperature",
    "distill.temperature",
    "train.lr",
    "teacher.lr",
    "distill.alpha",
    "distill.ce_weight",
    "train.weight_decay",
    "train.momentum",
    "train.seed",
    "data.seed",
    "data.options.num_classes",
    "distill.params.feat_dim",
    "distill.params.num_negatives",
    "distill.params.temperature",
    "distill.params.beta",
    "distill.params.hint_weight",
    "terms.0.weight",
    "terms.0.params.temperature",
    "terms.0.warmup_epochs",
]
TINY = ["1e-320", "1e-45", "-1e-320", "0.0", "-0"]


@st.composite
def huge_cases(draw) -> Case:
    """One number pushed to an extreme, on a recipe that would otherwise run."""
    key = draw(st.sampled_from(NUMERIC))
    # A huge depth builds layers for a minute before memory runs out: bounded in the zoo, not here.
    value = draw(st.sampled_from(TINY if key.endswith("depth") else HUGE + TINY))
    method = draw(
        st.sampled_from(["method=kd", "method=crd", "method=fitnet", "method=dkd", "method=vid"])
    )
    middle = [method] if key.startswith("distill.params") else []
    if key.startswith("terms"):
        middle = [
            "terms=[{name: kd, loss: kd, params: {temperature: "
            "4}}, {name: ce, loss: ce, teacher: null}]"
        ]
    command = draw(st.sampled_from(["run", "check", "run"]))
    return Case("huge", finish(command, [*middle, f"{key}={value}", "name=huge"], []))


@st.composite
def overrides(draw) -> str:
    key = draw(st.sampled_from(KEYS))
    if key in NAMED and draw(st.booleans()):
        return f"{key}={draw(st.sampled_from(NAMED[key]))}"
    return (
        f"{key}={draw(yaml_values)}" if draw(st.integers(0, 15)) else key
    )  # now and then, no '=' at all


# --- command lines ------------------------------------------------------------------------------

COMMANDS = [
    "run",
    "check",
    "cache",
    "tune",
    "export",
    "report",
    "list",
    "foo",
    "--version",
    "--help",
    "-h",
    "",
]
OPTIONS = [
    "--overwrite",
    "--resume",
    "--bogus",
    "--int8",
    "--no-int8",
    "--tolerance",
    "nan",
    "--tolerance=-1",
    "--repeats",
    "0",
    "--repeats=1",
    "--exporter",
    "bogus",
    "--exporter=dynamo",
    "--teachers",
    "mlp,bogus",
    "--methods",
    "kd,bogus",
    "--seed",
    "-5",
    "--help",
    "--",
    "-",
    "methods",
    "models",
    "datasets",
    "losses",
    "taps",
    "mlp",
    "bogus",
]


def finish(
    command: str, middle: list[str], options: list[str], trials: str | None = None
) -> list[str]:
    """The argv of a case: a training command gets the quick defaults first and the budget last."""
    argv = [command] if command else []
    if command in TRAINING:
        argv += [*QUICK, *middle, *BUDGET, *options]
        if command == "tune":
            argv += ["--trials", trials or "1"]
    else:
        argv += middle + options
    return argv


@st.composite
def command_lines(draw) -> Case:
    command = draw(st.sampled_from(COMMANDS))
    positional = draw(st.lists(st.sampled_from(PATHS), max_size=2))
    middle = positional + draw(st.lists(overrides(), max_size=5))
    options = draw(st.lists(st.sampled_from(OPTIONS), max_size=3))
    trials = draw(st.sampled_from(["0", "-1", "1", "x", "1"]))
    return Case("argv", finish(command, middle, options, trials), template=draw(st.booleans()))


# --- recipes --------------------------------------------------------------------------------------

SECTION_KEYS = {
    "data": ["dataset", "path", "subset", "val_fraction", "test_fraction", "seed", "options"],
    "teacher": [
        "model",
        "kwargs",
        "checkpoint",
        "lr",
        "cache",
        "cache_dir",
        "cache_topk",
        "cache_samples",
    ],
    "student": ["model", "kwargs"],
    "distill": ["temperature", "alpha", "ce_weight", "params", "mode", "ensemble"],
    "train": [
        "batch_size",
        "lr",
        "seed",
        "optimizer",
        "schedule",
        "checkpoint_every",
        "deterministic",
        "device",
    ],
    "output": ["dir", "latency"],
}


@st.composite
def recipe_texts(draw) -> str:
    """YAML written as text, so that anchors, aliases, merge keys and bad syntax can appear."""
    lines = []
    if draw(st.booleans()):
        lines.append(
            "name: "
            f"{draw(st.sampled_from(['mnist_kd', 'fuzzed', 'a/b', '..', 'x' * 300, '&n n', '*n']))}"
        )
    for section in draw(
        st.lists(
            st.sampled_from([*SECTION_KEYS, "terms", "method", "teachers", "assistant", "bogus"]),
            max_size=5,
            unique=True,
        )
    ):
        if section in SECTION_KEYS:
            body = draw(st.lists(st.sampled_from(SECTION_KEYS[section]), max_size=4, unique=True))
            anchor = f" &{section}" if draw(st.integers(0, 4)) == 0 else ""
            lines.append(f"{section}:{anchor}")
            lines += [f"  {key}: {draw(yaml_values)}" for key in body] or ["  {}"]
        elif section in NAMED or section == "method":
            lines.append(
                f"{section}: {draw(st.sampled_from(NAMED.get(section) or NAMED['method']))}"
            )
        else:
            lines.append(f"{section}: {draw(yaml_values)}")
    if draw(st.integers(0, 5)) == 0:
        lines.append(
            draw(
                st.sampled_from(
                    [
                        "student: *data",
                        "extra: *teacher",
                        "  bad indent",
                        "{",
                        "- list",
                        "\t tab: 1",
                    ]
                )
            )
        )
    return "\n".join(lines) + "\n"


@st.composite
def recipe_cases(draw) -> Case:
    text = draw(recipe_texts())
    command = draw(st.sampled_from(["run", "check", "cache", "run", "check"]))
    options = (
        draw(st.lists(st.sampled_from(["--overwrite", "--resume"]), max_size=1))
        if command == "run"
        else []
    )
    argv = finish(command, ["fuzz.yaml", *draw(st.lists(overrides(), max_size=2))], options)
    # A recipe path must come first; finish() put the quick defaults in front of it, so move it.
    argv.remove("fuzz.yaml")
    argv.insert(1, "fuzz.yaml")
    return Case(
        "recipe",
        argv,
        files={"fuzz.yaml": text.encode("utf-8", "surrogatepass")},
        template=draw(st.booleans()),
    )


# --- data files -----------------------------------------------------------------------------------


def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


@st.composite
def npz_files(draw) -> bytes:
    n = draw(st.sampled_from([120, 40, 60, 0, 1, 2, 5]))
    shape = draw(
        st.sampled_from([(n, 4), (n, 1, 6, 6), (n, 3, 4, 4), (n, 6), (n,), (n, 2, 2, 2, 2), (n, 0)])
    )
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    x = rng.normal(size=shape)
    if draw(st.integers(0, 6)) == 0 and x.size:
        x.flat[0] = draw(st.sampled_from([np.nan, np.inf]))
    with np.errstate(invalid="ignore"):
        x = x.astype(draw(st.sampled_from([np.float32, np.float64, np.int8, np.float16, np.bool_])))
    classes = draw(st.sampled_from([3, 2, 10, 1]))
    y = (np.arange(n) % classes).astype(np.int64)
    how = draw(
        st.sampled_from(
            ["dense"] * 8
            + [
                "gap",
                "huge",
                "negative",
                "column",
                "float",
                "string_x",
                "object",
                "no_y",
                "short_y",
            ]
        )
    )
    arrays = {"x": x, "y": y}
    if how == "gap":
        arrays["y"] = y * 3
    elif how == "huge" and n:
        arrays["y"] = np.r_[y[:-1], draw(st.sampled_from([10**5, 2 * 10**9, 2**62]))]
    elif how == "negative" and n:
        arrays["y"] = np.r_[y[:-1], -1]
    elif how == "column":
        arrays["y"] = y[:, None]
    elif how == "float":
        arrays["y"] = y.astype(np.float32) + 0.5
    elif how == "string_x":
        arrays["x"] = np.array([f"s{i}" for i in range(n)])
    elif how == "object":
        arrays["x"] = np.array([None] * max(n, 1), dtype=object)
    elif how == "no_y":
        del arrays["y"]
    elif how == "short_y":
        arrays["y"] = y[: n // 2]
    try:
        data = npz_bytes(arrays, compressed=draw(st.booleans()))
    except ValueError:  # numpy itself refuses some combinations (object arrays without pickle)
        data = b"PK\x03\x04"
    return damage_bytes(draw, data)


def damage_bytes(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["keep"] * 12 + ["truncate", "flip", "garbage", "empty", "pk"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "truncate":
        return data[:at]
    if how == "flip" and data:
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    if how == "garbage":
        return draw(st.binary(max_size=200))
    if how == "empty":
        return b""
    if how == "pk":
        return b"PK" + draw(st.binary(min_size=1, max_size=200))
    return data


def png_bytes(width: int, height: int, mode: str = "L", seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(
        0, 255, size=(height, width, 3 if mode == "RGB" else 1), dtype=np.uint8
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring 1e10 pixels, over PIL's limit, in a few dozen bytes."""
    return png_of(width, height, zlib.compress(b"\x00" * 64))


@st.composite
def image_folders(draw) -> dict[str, bytes]:
    files = {}
    for label in range(draw(st.sampled_from([2, 3, 2, 0, 1]))):
        for i in range(draw(st.sampled_from([10, 14, 6, 0, 1]))):
            odd = ["big", "bomb", "huge", "damaged", "text"]
            kind = draw(st.sampled_from(["gray"] * 12 + ["rgb"] * 4 + ["gray16"] * 3 + odd))
            if kind == "gray":
                data = png_bytes(draw(st.integers(1, 12)), draw(st.integers(1, 12)), "L", i)
            elif kind == "gray16":
                data = png16_bytes(draw(st.integers(1, 12)), draw(st.integers(1, 12)), i)
            elif kind == "huge":  # 9000 × 9000 pixels of one colour: 80 kB on disk
                data = black_png()
            elif kind == "rgb":
                data = png_bytes(5, 7, "RGB", i)
            elif kind == "big":
                data = png_bytes(300, 2, "L", i)
            elif kind == "bomb":
                data = bomb_png()
            elif kind == "damaged":
                data = damage_bytes(draw, png_bytes(6, 6, "L", i))
            else:
                data = b"not an image"
            files[f"images/c{label}/{i}.png"] = data
    if draw(st.integers(0, 4)) == 0:
        files["images/stray.png"] = png_bytes(4, 4)
    return files


COMMON_OPTIONS = [
    "data.subset=3",
    "data.subset=7",
    "data.val_fraction=0",
    "data.val_fraction=0.5",
    "data.test_fraction=0.01",
    "student.model=cnn_tiny",
    "teacher.model=cnn_tiny",
    "teacher.cache=true",
    "train.batch_size=1",
    "data.options.bogus=1",
    "method=fitnet",
    "method=crd",
    "method=rkd",
    "student.model=resnet8",
    "train.eval_batch_size=1",
]
NPZ_OPTIONS = [
    "data.options.num_classes=3",
    "data.options.num_classes=10",
    "data.options.num_classes=1",
    "data.options.num_classes=1e30",
    "data.options.num_classes=2.5",
    "data.options.max_bytes=10",
    "data.options.max_bytes=-1",
    "data.options.max_bytes=1e30",
]
FOLDER_OPTIONS = [
    "data.options.channels=3",
    "data.options.channels=2",
    "data.options.channels=true",
    "data.options.image_size=0",
    "data.options.image_size=1",
    "data.options.image_size=4",
    "data.options.image_size=5000",
    "data.options.image_size=6.5",
]


@st.composite
def data_cases(draw) -> Case:
    command = draw(st.sampled_from(["run", "check", "run", "cache"]))
    options = draw(st.lists(st.sampled_from(COMMON_OPTIONS), max_size=2))
    kind, sparse = draw(st.sampled_from(["npz", "folder", "npz", "folder", "other"])), {}
    if kind == "npz":
        files = {"data.npz": draw(npz_files())}
        options += draw(st.lists(st.sampled_from(NPZ_OPTIONS), max_size=1))
        middle = ["data.dataset=npz", "data.path=data.npz", "student.model=mlp_tiny", *options]
    elif kind == "folder":
        files = draw(image_folders())
        options += draw(st.lists(st.sampled_from(FOLDER_OPTIONS), max_size=1))
        middle = ["data.dataset=folder", "data.path=images", "data.options.image_size=6", *options]
    else:  # a table, labelled text or token ids (fuzz_inputs), their settings before the options
        files, middle, sparse = draw(st.one_of(tables(), texts(), token_ids()))
        middle += options
    family = "data" if kind != "other" else "inputs"  # the input kinds of issue 27 tallied apart
    return Case(family, finish(command, middle, []), files=files, sparse=sparse)


# --- damaged runs, caches and teacher stores ------------------------------------------------------

# Template files worth damaging ('*' stands for the one file a glob finds in the template).
TARGETS = [
    f"{RUN}/checkpoints/student.safetensors",
    f"{RUN}/checkpoints/teacher.safetensors",
    f"{RUN}/checkpoints/scratch.safetensors",
    f"{RUN}/config.yaml",
    f"{RUN}/metrics.jsonl",
    f"{RUN}/summary.json",
    f"{RUN}/.kdistill-run",
    f"{RUN}/.kdistill-lock",
    "runs/.teachers/*.safetensors",
    "runs/.cache/*/meta.json",
    "runs/.cache/*/logits.npy",
    "runs/.cache/*/.kdistill-cache",
    f"{RUN}/report.md",
]
DAMAGES = [
    "truncate",
    "flip",
    "garbage",
    "empty",
    "delete",
    "json_edit",
    "directory",
    "json_wrong",
    "json_drop_key",
]


@st.composite
def damaged_cases(draw) -> Case:
    target = draw(st.sampled_from(TARGETS))
    damage = (target, draw(st.sampled_from(DAMAGES)), draw(st.integers(0, 10**6)))
    command = draw(
        st.sampled_from(
            [
                ["run", "--resume", "teacher.cache=true"],
                ["run", "--resume", "teacher.cache=true"],
                ["run", "--resume"],
                ["run", "--overwrite"],
                ["run", "--overwrite", "teacher.cache=true"],
                ["run", "teacher.cache=true"],
                ["run", "name=other", "teacher.cache=true"],
                ["check", "teacher.cache=true"],
                ["cache"],
                ["report", RUN],
                ["export", RUN, "--no-int8", "--repeats", "1"],
                ["run", "name=other", f"teacher.checkpoint={RUN}/checkpoints/teacher.safetensors"],
                ["run", "name=other", f"teacher.checkpoint={RUN}/checkpoints/student.safetensors"],
                ["run", "--resume", "teacher.cache=true", "train.epochs=2"],
            ]
        )
    )
    extra = command[1:] if command[0] in TRAINING else []
    options = [] if command[0] in TRAINING else command[1:]
    argv = finish(
        command[0],
        [item for item in extra if not item.startswith("--")],
        [item for item in extra if item.startswith("--")] + options,
    )
    if (
        "train.epochs=2" in command
    ):  # a resume that would change the recipe: must be refused, not trained
        argv.append("train.epochs=2")
    return Case("damaged", argv, template=True, damage=damage)


# --- tampered run directories (issue 27.2) -------------------------------------------------

# What a shared run's summary.json may name instead of the model it recorded: each would delete
# the user's thesis (a decoy, compared after every case) if it were ever imported or called.
RM = "rm important/thesis.txt"
TAMPERED = [
    {"model": "os:system", "kwargs": {"command": RM}},
    {"model": "subprocess:check_call", "kwargs": {"args": RM, "shell": True}},
    {"model": "os:remove", "kwargs": {"path": "important/thesis.txt"}},
    {"model": "shutil:rmtree", "kwargs": {"path": "important"}},
    {"model": "evil:Net", "kwargs": {}},
    {"ensemble": [{"model": "os:system", "kwargs": {"command": RM}}]},
    {"model": "builtins:exec", "kwargs": {"source": f"import os; os.system({RM!r})"}},
    "os:system",
    [],
    {"model": 5},
    {"model": "mlp", "kwargs": "x"},
    {"onnx": 1},
    {"ensemble": "x"},
]
EVIL = b"import os\nos.remove('important/thesis.txt')\nNet = None\n"  # planted in the run directory


@st.composite
def tampered_cases(draw) -> Case:
    where = draw(st.integers(0, 2 * len(TAMPERED) - 1))  # (architecture, role): fuzz_runner.damage
    export = ["export", RUN, "--no-int8", "--repeats", "1"]
    command = draw(st.sampled_from([export, export, ["report", RUN]]))
    if draw(st.integers(0, 3)) == 0:  # a resume of the complete run reads its summary too
        command = finish("run", ["teacher.cache=true"], ["--resume"])
    return Case(
        "tampered",
        command,
        files={f"{RUN}/evil.py": EVIL},
        template=True,
        damage=(f"{RUN}/summary.json", "architecture", where),
    )


cases = st.one_of(
    command_lines(),
    recipe_cases(),
    data_cases(),
    damaged_cases(),
    huge_cases(),
    tampered_cases(),
)


# --- tampered export metadata (issue 27.9) ------------------------------------------------------


def scorer_onnx(metadata: dict[str, str]) -> bytes:
    """A four-feature, two-class ONNX model carrying ``metadata`` as kdistill's export would."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weights"], ["logits"])],
        "scorer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, metadata)
    return model.SerializeToString()


ROWS = {"name": "input", "shape": [4], "dtype": "float32"}
METADATA = {
    "valid": {"inputs": [ROWS], "normalise": {"mean": 0.5, "std": 2.0}, "label": "cultivar"},
    "not_json": "{inputs: [",
    "no_inputs": {"normalise": None},
    "inputs_wrong": {"inputs": "input"},
    "huge_image": {
        "inputs": [{**ROWS, "shape": [3, 60000, 60000]}],
        "image": {"mode": "RGB", "size": [60000, 60000]},
    },
    "wrong_shape": {"inputs": [{**ROWS, "shape": [5]}]},
    "tokenizer_path": {
        "inputs": [{"name": "input_ids", "shape": ["sequence"]}],
        "tokenizer": {"file": "../../x.json"},
    },
    "channels": {"inputs": [ROWS], "normalise": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}},
}
PREDICT_INPUTS = {
    "rows.csv": b"f1,f2,f3,f4\n1,2,3,4\n",
    "labelled.csv": b"f1,f2,f3,f4,cultivar\n1,2,3,4,a\n",
    "five.csv": b"1,2,3,4,5\n",
    "lines.txt": b"a line of text\n",
    "digit.png": png_bytes(4, 4),
}


@st.composite
def predict_cases(draw) -> Case:
    """``kdistill predict`` on an export whose metadata a user (or an attacker) edited."""
    edit = draw(st.sampled_from([*sorted(METADATA), "valid", "valid"]))  # some cases run
    spec = METADATA[edit]
    metadata = {"kdistill.preprocessing": spec if isinstance(spec, str) else json.dumps(spec)}
    classes = ['["a", "b"]'] * 3 + ["[]", "{}", "not json"]
    metadata["kdistill.classes"] = draw(st.sampled_from(classes))
    model = scorer_onnx(metadata)
    if draw(st.integers(0, 5)) == 0:
        model = damage_bytes(draw, model)
    names = st.sampled_from(sorted(PREDICT_INPUTS))
    inputs = draw(st.lists(names, min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        inputs = ["rows.csv"]  # the one input a valid export takes
    files = {"export/student.onnx": model, **{name: PREDICT_INPUTS[name] for name in inputs}}
    return Case("predict", ["predict", "export", *inputs], files=files)


cases = st.one_of(cases, predict_cases())
