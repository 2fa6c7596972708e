"""The CtP (Catch-the-Patch) model: backbone + trajectory-regression head, targets and loss.

Given a clip with N pasted patches and each patch's frame-0 box as a query RoI, the head regresses
the patch's box in every frame as (dx, dy, dlogw, dlogh) relative to the frame-0 box, normalised
by stds (0.8, 0.8, 0.04, 0.04); the loss is smooth-L1 (beta 1). Wang et al., CVPR 2021,
https://arxiv.org/abs/2105.02545.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from .backbones import VideoBackbone, build_backbone

TARGET_STDS = (0.8, 0.8, 0.04, 0.04)
ROI_SIZE = 5
SPATIAL_SCALE = 1 / 8


class CtpHead(nn.Module):
    """temporal conv -> RoIAlign 5x5 (aligned) -> fc 512 -> fc ``4*num_frames``."""

    def __init__(
        self, in_channels: int = 512, hidden: int = 512, num_frames: int = 16,
        init_std: float = 0.001,
    ) -> None:
        super().__init__()
        feat_frames = num_frames // 8  # the backbone's temporal stride is 8
        self.num_frames = num_frames
        self.temporal_conv = nn.Conv3d(in_channels, in_channels, (feat_frames, 1, 1))
        self.fc1 = nn.Linear(in_channels * ROI_SIZE * ROI_SIZE, hidden)
        self.pred_head = nn.Linear(hidden, 4 * num_frames)
        nn.init.kaiming_normal_(self.temporal_conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.temporal_conv.bias)
        for fc in (self.fc1, self.pred_head):
            nn.init.normal_(fc.weight, std=init_std)  # 0.001 in the reference
            nn.init.zeros_(fc.bias)

    def forward(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``feats [B,C,T',h,w]``, ``rois [R,5]`` -> ``preds [R, 4*num_frames]``."""
        x = torch.relu(self.temporal_conv(feats).squeeze(2))
        x = roi_align(
            x, rois, output_size=ROI_SIZE, spatial_scale=SPATIAL_SCALE, sampling_ratio=2,
            aligned=True,
        )
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.pred_head(x)


class CtpModel(nn.Module):
    """Backbone (``backbone.*`` keys) + CtP head (``head.*`` keys)."""

    def __init__(
        self, backbone: VideoBackbone, num_frames: int = 16, head_init_std: float = 0.001
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = CtpHead(backbone.out_channels, num_frames=num_frames, init_std=head_init_std)

    def forward(self, imgs: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(imgs), rois)


def build_ctp_model(
    backbone: str = "r3d_18", *, num_frames: int = 16, seed: int | None = None,
    head_init_std: float = 0.001,
) -> CtpModel:
    """A CtP model with a pretrain-mode backbone; ``seed`` makes the init reproducible, and
    ``head_init_std`` scales the head's fc init (the backbone's init does not depend on it)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return CtpModel(
            build_backbone(backbone, "pretrain"), num_frames=num_frames,
            head_init_std=head_init_std,
        )


def make_rois(gt_trajs: torch.Tensor) -> torch.Tensor:
    """``gt_trajs [B,N,T,4]`` -> RoIs ``[B*N,5]`` = (batch index, frame-0 box)."""
    b, n = gt_trajs.shape[:2]
    index = torch.arange(b, dtype=gt_trajs.dtype, device=gt_trajs.device).repeat_interleave(n)
    return torch.cat([index[:, None], gt_trajs[:, :, 0].reshape(b * n, 4)], dim=1)


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centre = (boxes[..., 0:2] + boxes[..., 2:4]) / 2
    size = (boxes[..., 2:4] - boxes[..., 0:2]).clamp(min=1)
    return centre, size


def encode_targets(
    rois: torch.Tensor, boxes: torch.Tensor, stds: Sequence[float] = TARGET_STDS
) -> torch.Tensor:
    """Normalised deltas of ``boxes [...,T,4]`` relative to ``rois [...,4]`` (frame-0 boxes)."""
    stds = boxes.new_tensor(stds)
    rc, rs = _centre_size(rois.unsqueeze(-2))
    gc, gs = _centre_size(boxes)
    return torch.cat([gc - rc, torch.log(gs) - torch.log(rs)], dim=-1) / stds


def decode_targets(rois: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_targets`: boxes ``[...,T,4]`` from normalised deltas."""
    d = deltas * deltas.new_tensor(TARGET_STDS)
    rc, rs = _centre_size(rois.unsqueeze(-2))
    centre = rc + d[..., 0:2]
    size = torch.exp(d[..., 2:4]) * rs
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def ctp_loss(
    preds: torch.Tensor, gt_trajs: torch.Tensor, gt_weights: torch.Tensor,
    target_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Smooth-L1 (beta 1) on centre and size deltas, each summed and divided by the weight count.

    ``preds [B*N, 4T]``, ``gt_trajs [B,N,T,4]``, ``gt_weights [B,N,T]`` ->
    ``{"loss_ctr", "loss_size", "loss"}``. ``target_scale`` multiplies the target stds (the
    targets shrink by that factor); 1 is the reference.
    """
    b, n, t, _ = gt_trajs.shape
    stds = tuple(target_scale * s for s in TARGET_STDS)
    targets = encode_targets(gt_trajs[:, :, 0], gt_trajs, stds)
    diff = (preds.view(b, n, t, 4) - targets).abs()
    per_elem = torch.where(diff < 1, 0.5 * diff * diff, diff - 0.5) * gt_weights.unsqueeze(-1)
    count = gt_weights.sum().clamp(min=1)
    loss_ctr = per_elem[..., 0:2].sum() / count
    loss_size = per_elem[..., 2:4].sum() / count
    return {"loss_ctr": loss_ctr, "loss_size": loss_size, "loss": loss_ctr + loss_size}
