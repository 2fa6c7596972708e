"""What a feature vector of a video is, and the videos to compute it for (no torch, no Ray).

FEDVSSL.md §9 leaves the feature layer, the pooling and the clips per video of the retrieval
protocol unverified; :class:`FeatureSpec` makes them explicit and :meth:`FeatureSpec.describe`
is recorded with every result. The choice here: the backbone in ``pretrain`` mode (the strides
the CtP checkpoints are trained with), its last block (``layer4``) average-pooled over time and
space, for ``num_clips`` uniformly spaced clips per video (the test sampler of CTP.md §7, stride
2) with the test transform (fixed resize, centre crop), averaged over the clips. BatchNorm uses
its running statistics (eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..config import Config

FEATURE_LAYER = "layer4"
POOLING = "global average over (T, H, W) per clip, then mean over the video's clips"
LOGIT_POOLING = "mean of the clips' logits per video, then softmax"
FRAME_STRIDE = 2


class EvalVideo(NamedTuple):
    """One video to featurise: where it is, how many frames it has, and its class."""

    video_id: str
    path: str  # absolute path of the video file (or frame archive)
    num_frames: int
    frame_zip: bool  # a ZIP of JPEG frames rather than an encoded video
    label: int


class Extracted(NamedTuple):
    """Features of a list of videos, in its order; a video that failed to decode has zeros."""

    feats: np.ndarray  # [V, C] float32
    errors: dict[int, str]  # index -> why the video was skipped


@dataclass(frozen=True)
class FeatureSpec:
    """How one video becomes one feature vector."""

    backbone: str
    num_clips: int = 10
    clip_len: int = 16
    crop_size: int = 112
    batch_size: int = 16  # clips per forward pass, at most (whole videos; at least one)
    mode: str = "pretrain"  # backbone strides: "pretrain" (CtP) or "finetune" (torchvision)
    stride: int = FRAME_STRIDE  # frame stride within a clip
    output: str = "features"  # "features": pooled layer 4; "logits": a classifier's logits

    @classmethod
    def from_config(cls, cfg: Config) -> FeatureSpec:
        return cls(
            backbone=cfg.model.backbone,
            num_clips=cfg.eval.num_clips,
            clip_len=cfg.data.clip_len,
            crop_size=cfg.data.crop_size,
            batch_size=cfg.eval.batch_size,
        )

    @property
    def videos_per_forward(self) -> int:
        """Whole videos whose clips share forward passes: ``batch_size // num_clips``, at least 1."""
        return max(1, self.batch_size // self.num_clips)

    def describe(self) -> dict[str, Any]:
        """The feature definition as plain data, to store next to every metric."""
        logits = self.output == "logits"
        return {
            "backbone": self.backbone,
            "backbone_mode": self.mode,
            "layer": "classifier logits (cls_head.fc_cls)" if logits else FEATURE_LAYER,
            "pooling": LOGIT_POOLING if logits else POOLING,
            "clips_per_video": self.num_clips,
            "clip_len": self.clip_len,
            "frame_stride": self.stride,
            "clip_sampler": "uniform test offsets (CTP.md §7), frames clamped to the last",
            "spatial": f"fixed resize 171x128 scaled by {self.crop_size}/112 (portrait swapped), "
            f"centre crop {self.crop_size}",
            "batchnorm": "running statistics (eval mode)",
            **({} if logits else {"similarity": "cosine of the L2-normalised video features"}),
        }
