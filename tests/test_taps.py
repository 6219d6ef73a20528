"""FeatureTap: hooks by module name on any nn.Module, removed after use, clear errors."""

import pytest
import torch
from torch import nn

from kdistill.errors import UserError
from kdistill.taps import FeatureTap, TapError, probe_shapes, unwrap


class Block(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


class Net(nn.Module):
    """torchvision-style: nested blocks, a pooled vector in front of ``fc``."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(Block(3, 4), Block(4, 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.pool(self.layer1(x)).flatten(1))


def test_records_nested_outputs_and_module_inputs():
    net = Net()
    x = torch.randn(2, 3, 8, 8)
    with FeatureTap(net, ["layer1.1.conv", "layer1", "fc:input"]) as tap:
        out = net(x)
    assert tap.features["layer1.1.conv"].shape == (2, 4, 8, 8)
    torch.testing.assert_close(tap.features["fc:input"], net.pool(net.layer1(x)).flatten(1))
    torch.testing.assert_close(net.fc(tap.features["fc:input"]), out)


def test_hooks_are_removed_after_use():
    net = Net()
    with FeatureTap(net, ["layer1"]) as tap:
        net(torch.randn(1, 3, 8, 8))
    assert not net.layer1._forward_hooks
    tap.clear()
    net(torch.randn(1, 3, 8, 8))
    assert tap.features == {}


def test_unknown_name_lists_close_names():
    with pytest.raises(TapError, match=r"layer1\.1\.conv") as error:
        FeatureTap(Net(), ["layer1.1.con"])
    assert isinstance(error.value, UserError)  # the command line reports it in one line, exit 2


def test_names_resolve_through_ddp_style_and_compile_wrappers():
    class Wrapper(nn.Module):  # what torch.compile leaves: the model under _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            return self._orig_mod(x)

    net = Net()
    wrapped = Wrapper(net)
    assert unwrap(wrapped) is net
    with FeatureTap(wrapped, ["layer1.0.conv"]) as tap:
        wrapped(torch.randn(1, 3, 8, 8))
    assert "layer1.0.conv" in tap.features


def test_probe_shapes_restores_training_mode():
    net = Net().train()
    shapes = probe_shapes(net, torch.randn(2, 3, 8, 8), ["layer1", "fc:input"])
    assert shapes == {"layer1": (2, 4, 8, 8), "fc:input": (2, 4)}
    assert net.training
    assert not net.layer1._forward_hooks


def test_tuple_outputs_take_the_first_tensor():
    class WithLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 5, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    model = WithLSTM()
    with FeatureTap(model, ["rnn"]) as tap:
        model(torch.randn(2, 4, 3))
    assert tap.features["rnn"].shape == (2, 4, 5)
