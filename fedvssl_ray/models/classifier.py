"""The fine-tune classifier: finetune-mode backbone, global average pool, dropout 0.5, linear."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import VideoBackbone, build_backbone


class ClsHead(nn.Module):
    """Average pool over (T,H,W) -> dropout -> ``fc_cls`` (weight N(0, 0.001^2), bias 0)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.dropout(feats.mean(dim=(2, 3, 4))))


class VideoClassifier(nn.Module):
    """Backbone (``backbone.*`` keys) + classification head (``cls_head.*`` keys)."""

    def __init__(self, backbone: VideoBackbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = ClsHead(backbone.out_channels, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``[B,3,T,H,W]`` -> logits ``[B,num_classes]``."""
        return self.cls_head(self.backbone(clips))


def build_classifier(
    backbone: str = "r3d_18", *, num_classes: int, seed: int | None = None
) -> VideoClassifier:
    """A classifier with a finetune-mode backbone; ``seed`` makes the init reproducible."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return VideoClassifier(build_backbone(backbone, "finetune"), num_classes)
