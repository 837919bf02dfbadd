"""Building blocks shared by the model families."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBNAct(nn.Module):
    """Convolution, batch norm and activation: the unit every modern CNN is made of.

    The children are named ``conv`` and ``bn`` like torchvision's ``BasicConv2d``, so its
    checkpoints load. ``act_layer=None`` leaves the activation out.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bn_eps: float = 1e-5,
        act_layer: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps)
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
