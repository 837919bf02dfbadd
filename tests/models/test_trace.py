"""The one forward trace that the layer table and the architecture diagram read."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moderncnn.models.trace import sample_input, trace_forward


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)  # registered first, runs last
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.aux = nn.Linear(8, 5)  # never runs in eval mode
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.act(self.conv(x)))  # one module called twice
        if self.training:
            self.aux(x.mean((2, 3)))
        return self.head(x.mean((2, 3)))


def test_modules_in_forward_order_with_shapes_and_calls() -> None:
    net = Net().train()
    calls = trace_forward(net, sample_input(net, (3, 16, 16), batch_size=2))
    assert list(calls) == ["", "conv", "act", "head"]  # entry order; aux never ran
    assert calls["conv"].input_shape == (2, 3, 16, 16)
    assert calls["conv"].output_shape == (2, 8, 8, 8)
    assert calls["head"].input_shape == (2, 8) and calls["head"].output_shape == (2, 2)
    assert calls["act"].calls == 2 and calls[""].calls == 1
    assert net.training and all(m.training for m in net.modules())  # modes restored


def test_a_failing_pass_restores_the_modes() -> None:
    net = Net().train()
    with pytest.raises(RuntimeError):
        trace_forward(net, torch.zeros(1, 4, 16, 16))  # 4 channels into a 3-channel conv
    assert net.training and all(m.training for m in net.modules())


def test_sample_input_follows_the_models_device_and_dtype() -> None:
    with torch.device("meta"):
        net = Net().to(torch.bfloat16)
    x = sample_input(net, (3, 4, 4))
    assert x.device.type == "meta" and x.dtype == torch.bfloat16 and x.shape == (1, 3, 4, 4)
