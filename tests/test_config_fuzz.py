"""Thousands of generated recipes thrown at the loader: it accepts them or rejects them with
one line naming a key, never a traceback."""

import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdistill.errors import ConfigError
from kdistill.run.config import Recipe, load_config

SECTIONS = {name: field for name, field in Recipe.model_fields.items()}
KEYS = {
    "data": [
        "dataset",
        "path",
        "val_fraction",
        "test_fraction",
        "subset",
        "seed",
        "num_workers",
        "options",
    ],
    "teacher": ["model", "kwargs", "checkpoint", "epochs", "lr", "optimizer", "augment"],
    "student": ["model", "kwargs"],
    "distill": ["temperature", "alpha", "ce_weight", "params"],
    "train": [
        "epochs",
        "batch_size",
        "eval_batch_size",
        "lr",
        "optimizer",
        "momentum",
        "weight_decay",
        "schedule",
        "seed",
        "device",
        "mixed_precision",
        "augment",
        "checkpoint_every",
        "deterministic",
    ],
    "output": ["dir", "latency", "plots", "progress"],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def typo(key: str):
    """The key, or a near miss of it (a dropped, doubled or swapped letter)."""
    return st.sampled_from([key, key[:-1], key + key[-1], key[1:] + key[0], key.upper()])


@st.composite
def recipes(draw):
    recipe = {}
    for section in draw(
        st.lists(st.sampled_from(list(SECTIONS) + ["trian", "optim"]), max_size=6, unique=True)
    ):
        name = draw(typo(section)) if draw(st.integers(0, 9)) == 0 else section
        if section in KEYS:
            body = {}
            for key in draw(st.lists(st.sampled_from(KEYS[section]), max_size=5, unique=True)):
                body[draw(typo(key)) if draw(st.integers(0, 5)) == 0 else key] = draw(values)
            recipe[name] = body if draw(st.integers(0, 9)) else draw(values)
        elif section == "terms":
            recipe[name] = draw(
                st.lists(
                    st.dictionaries(
                        st.sampled_from(["name", "loss", "weight", "teacher", "params", "wieght"]),
                        values,
                        max_size=4,
                    ),
                    max_size=2,
                )
            )
        else:
            recipe[name] = draw(values)
    return recipe


KEY_IN_MESSAGE = re.compile(
    r"(unknown key '[^']+')|(^[^:]+: [A-Za-z_][\w.@]*(\.\d+)*: )|(\(top level\))"
)


@pytest.mark.integration
@settings(
    max_examples=1200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(recipe=recipes())
def test_generated_recipes_are_accepted_or_rejected_with_a_named_key(tmp_path_factory, recipe):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        loaded = load_config(path)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message
        assert message.startswith(str(path))
        assert KEY_IN_MESSAGE.search(message), message
    else:
        assert isinstance(loaded, Recipe)
