"""Video backbones: torchvision's R3D-18 adapted to CtP, and a narrow R3D-10 for CPU demos.

Both return the last feature map (no pooling). ``pretrain`` mode makes layer 4 halve time but not
space (total spatial stride 8, so a 16x112x112 clip gives 512x2x14x14); ``finetune`` keeps
torchvision's strides (total spatial stride 16: 512x2x7x7). Strides change no weight shapes, so
the same state dict loads in either mode.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision.models.video import r3d_18
from torchvision.models.video.resnet import BasicBlock, Conv3DSimple

Mode = Literal["pretrain", "finetune"]
BN_EPS = 1e-3  # CtP's R3D uses 1e-3 where torchvision defaults to 1e-5


class VideoBackbone(nn.Module):
    """``stem -> layer1..4`` of a VideoResNet; keeps torchvision's module names and key order."""

    def __init__(self, stem: nn.Module, layers: list[nn.Module], out_channels: int) -> None:
        super().__init__()
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = out_channels

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``[B,3,T,H,W]`` -> ``[B,C,T/8,H/s,W/s]`` with s = 8 (pretrain) or 16 (finetune)."""
        x = self.stem(clips)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _set_bn_eps(module: nn.Module, eps: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.eps = eps


def _apply_mode(backbone: VideoBackbone, mode: Mode) -> VideoBackbone:
    """Pretrain mode: layer 4's first block strides (2,1,1), in its conv and its shortcut."""
    if mode not in ("pretrain", "finetune"):
        raise ValueError(f"unknown backbone mode {mode!r}; choose one of ['finetune', 'pretrain']")
    if mode == "pretrain":
        block = backbone.layer4[0]
        block.conv1[0].stride = (2, 1, 1)
        block.downsample[0].stride = (2, 1, 1)
    return backbone


def r3d18_backbone() -> VideoBackbone:
    """torchvision ``r3d_18(weights=None)`` without avgpool and fc (33,166,272 parameters)."""
    net = r3d_18(weights=None)
    return VideoBackbone(net.stem, [net.layer1, net.layer2, net.layer3, net.layer4], 512)


def r3d10_narrow_backbone(widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> VideoBackbone:
    """R3D-10 depth (one BasicBlock per stage) at a quarter of R3D-18's width (~1.2 M params).

    Same stem, strides and interface as R3D-18, built from torchvision's blocks, so demos and
    tests exercise the real code paths in seconds on a CPU.
    """
    stem = nn.Sequential(
        nn.Conv3d(3, widths[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(widths[0]),
        nn.ReLU(inplace=True),
    )
    layers: list[nn.Module] = []
    inplanes = widths[0]
    for stage, planes in enumerate(widths):
        stride = 1 if stage == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes),
            )
        layers.append(nn.Sequential(BasicBlock(inplanes, planes, Conv3DSimple, stride, downsample)))
        inplanes = planes
    backbone = VideoBackbone(stem, layers, widths[-1])
    for m in backbone.modules():  # torchvision's VideoResNet init
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return backbone


BACKBONES = {"r3d_18": r3d18_backbone, "r3d10_narrow": r3d10_narrow_backbone}


def build_backbone(name: str = "r3d_18", mode: Mode = "pretrain") -> VideoBackbone:
    """A backbone by name, with BN eps 1e-3 and the strides of ``mode``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    backbone = BACKBONES[name]()
    _set_bn_eps(backbone, BN_EPS)
    return _apply_mode(backbone, mode)
