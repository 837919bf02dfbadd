"""Building blocks shared by the model families."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from moderncnn.io.errors import ConfigError


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


def init_conv_bn(module: nn.Module, mode: str = "fan_out") -> None:
    """He-normal convolution weights (He et al. 2015; ``mode`` "fan_out" as torchvision's
    ResNets, "fan_in" as timm's Inceptions) and unit BatchNorm; a Linear keeps PyTorch's
    default. Modules are initialised in ``module.modules()`` order, so a seed gives the same
    weights as a loop of its own."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_stages(layers: Sequence[int], channels: Sequence[int]) -> None:
    """One entry per stage in both, each stage at least one unit and one channel."""
    if len(layers) != len(channels) or not layers:
        raise ConfigError(
            f"layers and channels need one entry per stage, got layers={list(layers)} "
            f"and channels={list(channels)}"
        )
    if min(layers) < 1 or min(channels) < 1:
        raise ConfigError(
            f"every stage needs >= 1 unit and >= 1 channel, got layers={list(layers)} "
            f"and channels={list(channels)}"
        )


WIDTH_DIVISOR = 8


def check_width_multiplier(width_multiplier: float) -> None:
    if not (isinstance(width_multiplier, int | float) and 0 < width_multiplier < float("inf")):
        raise ConfigError(f"width_multiplier must be a number > 0, got {width_multiplier!r}")


def scale_width(chs: int, width_multiplier: float, divisor: int = WIDTH_DIVISOR) -> int:
    """``chs * width_multiplier`` rounded to the nearest multiple of ``divisor`` (at least one).

    Every Inception family scales each of its branches by this one rule; 1.0 leaves the
    published widths exactly as they are (all multiples of 8 anyway), so checkpoints load.
    """
    if width_multiplier == 1:
        return chs
    return max(divisor, int(chs * width_multiplier / divisor + 0.5) * divisor)
