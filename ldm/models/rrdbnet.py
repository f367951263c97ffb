"""RRDBNet, the ESRGAN / Real-ESRGAN super-resolution network, with the Real-ESRGAN parameter names.

Wang et al., "ESRGAN" (2018) and "Real-ESRGAN" (2021). The parameter names (`conv_first`, `body.N.rdbK.convM`,
`conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`) are those of `RealESRGAN_x4plus.pth`, so that file's
`params_ema` loads here as it is, and a state dict saved from this module is recognised by spandrel. Only the ×4
layout is implemented (the one the paper uses); the ×2 / ×1 variants add a pixel-unshuffle in front.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RRDBNetConfig:
    in_channels: int = 3     # RGB in
    out_channels: int = 3    # RGB out
    num_feat: int = 64       # trunk width
    num_block: int = 23      # residual-in-residual dense blocks
    num_grow_ch: int = 32    # channels added by each conv inside a dense block (spandrel assumes 32)
    scale: int = 4           # only 4 is supported

    def __post_init__(self) -> None:
        if self.scale != 4:
            raise ValueError(f"RRDBNet: only scale 4 is implemented, got {self.scale}")
        for name in ("in_channels", "out_channels", "num_feat", "num_block", "num_grow_ch"):
            if getattr(self, name) < 1:
                raise ValueError(f"RRDBNet: {name} must be positive, got {getattr(self, name)}")


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, padding=1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, padding=1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, padding=1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(_lrelu(conv(torch.cat(features, dim=1))))
        return x + 0.2 * self.conv5(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, scaled by 0.2, plus the input."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """×4 super-resolution: trunk of RRDBs, two nearest ×2 upsamplings with convs, output convs.

    Input and output are RGB in [0, 1], `[B, 3, H, W] -> [B, 3, 4H, 4W]` (the output is not clamped).
    """

    def __init__(self, config: RRDBNetConfig = RRDBNetConfig()):
        super().__init__()
        self.config = config
        c = config
        self.conv_first = nn.Conv2d(c.in_channels, c.num_feat, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(c.num_feat, c.num_grow_ch) for _ in range(c.num_block)])
        self.conv_body = nn.Conv2d(c.num_feat, c.num_feat, 3, padding=1)
        self.conv_up1 = nn.Conv2d(c.num_feat, c.num_feat, 3, padding=1)
        self.conv_up2 = nn.Conv2d(c.num_feat, c.num_feat, 3, padding=1)
        self.conv_hr = nn.Conv2d(c.num_feat, c.num_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(c.num_feat, c.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)                                    # [B, F, H, W]
        feat = feat + self.conv_body(self.body(feat))
        feat = _lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))  # [B, F, 2H, 2W]
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))  # [B, F, 4H, 4W]
        return self.conv_last(_lrelu(self.conv_hr(feat)))


def rrdbnet_config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> RRDBNetConfig:
    """Infer the sizes of a Real-ESRGAN-layout ×4 RRDBNet from its weights (as spandrel does)."""
    if "params_ema" in state_dict or "params" in state_dict:
        raise ValueError("pass the inner dict: state_dict['params_ema'] (or ['params'])")
    try:
        first = state_dict["conv_first.weight"]
        last = state_dict["conv_last.weight"]
        grow = state_dict["body.0.rdb1.conv1.weight"]
    except KeyError as err:
        raise ValueError(f"not a Real-ESRGAN-layout RRDBNet state dict: missing {err.args[0]!r}") from None
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("body.")}
    return RRDBNetConfig(in_channels=first.shape[1], out_channels=last.shape[0], num_feat=first.shape[0],
                         num_block=len(blocks), num_grow_ch=grow.shape[0])
