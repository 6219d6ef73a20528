"""Every zoo model, through the one door: forward, backward, features/head split, taps."""

import pytest
import torch

from kdistill import FeatureTap, create_model, list_models
from kdistill.models import MODELS, UnknownModelError, describe_model


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
def test_model_forward_backward_and_split(name, input_shape):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_shape=input_shape)
    x = torch.randn(4, *input_shape)
    logits = model(x)
    assert logits.shape == (4, 7)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
    assert model.forward_features(x).shape == (4, model.num_features)


@pytest.mark.parametrize("name", list_models())
def test_every_module_of_every_model_can_be_tapped(name):
    model = create_model(name, num_classes=10, input_shape=(1, 28, 28)).eval()
    names = [n for n, _ in model.named_modules() if n]
    with FeatureTap(model, names) as tap:
        model(torch.randn(2, 1, 28, 28))
    assert set(tap.features) == set(names)
    assert all(f.shape[0] == 2 for f in tap.features.values())


@pytest.mark.parametrize("name", list_models())
def test_hint_layers_name_feature_maps_shallow_to_deep(name):
    model = create_model(name, num_classes=10, input_shape=(1, 28, 28)).eval()
    assert model.hint_layers
    with FeatureTap(model, [*model.hint_layers, "head:input"]) as tap:
        model(torch.randn(2, 1, 28, 28))
    assert tap.features["head:input"].shape == (2, model.num_features)
    assert all(tap.features[name].shape[0] == 2 for name in model.hint_layers)


@pytest.mark.parametrize("name", list_models())
def test_model_has_parameters_and_description(name):
    model = create_model(name, num_classes=10, input_shape=(1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) > 100
    assert describe_model(name)


def test_documented_sizes():
    def params(name, **kwargs):
        model = create_model(name, num_classes=10, input_shape=(1, 28, 28), **kwargs)
        return sum(p.numel() for p in model.parameters())

    assert params("mlp_tiny") == 784 * 32 + 32 + 32 * 10 + 10
    assert params("lenet") > 4 * params("mlp", width=128)  # the default teacher is >4x the student


def test_width_and_depth_knobs_change_size():
    small = create_model("cnn", width=8, depth=2)
    wide = create_model("cnn", width=16, depth=2)
    deep = create_model("cnn", width=8, depth=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(wide) and count(small) < count(deep)
    assert count(create_model("mlp", width=10, depth=1)) < count(create_model("mlp", width=10, depth=2))


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean.*mlp_tiny"):
        create_model("mlp_tiyn")
    assert set(list_models()) == set(MODELS)
