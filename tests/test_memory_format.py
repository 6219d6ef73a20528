"""Zoo convolutional networks train and teach in channels-last layout on the CPU, and are handed
back in the default layout, with the values of NCHW training up to float rounding."""

import pytest
import torch
from torch import nn

from kdistill import Distiller, Teacher, create_model
from kdistill.data import ArrayDataset
from kdistill.methods import hinton_kd, scratch
from kdistill.models import list_models
from kdistill.training.loop import train_loop
from kdistill.training.memory_format import channels_last, prefers_channels_last

LAST = torch.channels_last


class UserConvNet(nn.Module):
    """A user's network that flattens with view(), which channels-last would break."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(self.conv(x).view(len(x), -1))


def test_only_zoo_convolutional_networks_on_the_cpu_are_converted():
    assert prefers_channels_last(create_model("lenet"), "cpu")
    assert not prefers_channels_last(create_model("lenet"), "cuda")  # not measured there
    assert not prefers_channels_last(create_model("mlp"), "cpu")  # nothing to gain
    assert not prefers_channels_last(UserConvNet(), "cpu")
    wrapped = create_model("cnn_tiny")
    wrapped.stages[0] = UserConvNet()  # a zoo model holding a network of someone else's
    assert not prefers_channels_last(wrapped, "cpu")
    assert not prefers_channels_last(None, "cpu")  # a cached teacher has no module
    user = UserConvNet()
    with channels_last(user, "cpu"):
        user(torch.randn(2, 1, 8, 8))  # left as it is: its view() still works


def layouts_seen(model: nn.Module) -> list[bool]:
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    model.register_forward_pre_hook(
        lambda *_: seen.append(conv.weight.is_contiguous(memory_format=LAST))
    )
    return seen


def loader():
    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    return torch.utils.data.DataLoader(
        data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )


def test_fit_trains_and_teaches_in_channels_last_and_hands_the_models_back():
    torch.manual_seed(0)
    teacher, student = create_model("cnn_tiny"), create_model("cnn_tiny")
    teacher_layouts, student_layouts = layouts_seen(teacher), layouts_seen(student)
    train_loop(
        Distiller(student, hinton_kd()),
        loader(),
        teacher=Teacher(teacher),
        epochs=1,
        progress=False,
    )
    assert teacher_layouts and all(teacher_layouts) and student_layouts and all(student_layouts)
    for model in (teacher, student):
        assert all(
            p.is_contiguous() for p in model.parameters()
        )  # saved, exported, compared as before


def test_channels_last_training_equals_nchw_training_up_to_rounding(monkeypatch):
    def train(convert: bool):
        monkeypatch.setattr(
            "kdistill.training.memory_format.prefers_channels_last",
            lambda module, _: convert and module is not None,
        )
        torch.manual_seed(0)
        model = create_model("cnn_tiny")
        train_loop(Distiller(model, scratch()), loader(), epochs=2, lr=1e-3, progress=False)
        return model.state_dict()

    nchw, nhwc = train(False), train(True)
    for name, value in nchw.items():
        torch.testing.assert_close(nhwc[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("failing", [False, True])
def test_the_layout_is_restored_after_the_block(failing):
    model = create_model("lenet")
    with pytest.raises(RuntimeError) if failing else torch.no_grad():
        with channels_last(model, "cpu"):
            assert model.stages[0][0].weight.is_contiguous(memory_format=LAST)
            if failing:
                raise RuntimeError("interrupted")
    assert all(p.is_contiguous() for p in model.parameters())


CONVOLUTIONAL = [
    name
    for name in list_models("image")
    if prefers_channels_last(create_model(name, input_shape=(3, 32, 32)), "cpu")
]


@pytest.mark.parametrize("name", CONVOLUTIONAL)
def test_every_converted_zoo_model_computes_the_same_in_channels_last(name):
    torch.manual_seed(0)
    model = create_model(name, input_shape=(3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    with channels_last(model, "cpu"):
        out = model(x)
        out.sum().backward()  # no view() of a channels-last map anywhere, forward or backward
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
