"""Video features of a backbone: N uniform clips per video, centre crop, pooled ``layer4``.

The pieces are shared by the in-process extractor here and the Ray Data pipeline in
``fedvssl_ray.actors.evaluation``: :func:`decode_videos` (decode + sample + transform a group
of videos) and :class:`FeatureModel` (the backbone forward on a group's clips), so both paths
compute the same numbers. What the features are is documented in :mod:`.spec`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data import decode, frame_zip
from ..data.clips import eval_indices
from ..data.transforms import EvalPreset
from ..models import Weights, build_backbone, set_weights
from .spec import EvalVideo, Extracted, FeatureSpec
from .weights import PREFIX

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""Called with (videos done, videos in total) as features are computed."""


def video_clips(video: EvalVideo, spec: FeatureSpec, preset: EvalPreset) -> np.ndarray:
    """``[num_clips, 3, T, S, S]`` float32: the video's uniform test clips, centre-cropped."""
    indices = eval_indices(
        video.num_frames, num_clips=spec.num_clips, clip_len=spec.clip_len, stride=spec.stride
    )
    reader = frame_zip.read_frames if video.frame_zip else decode.read_frames
    frames = reader(video.path, indices.ravel(), name=video.video_id)
    frames = frames.reshape(spec.num_clips, spec.clip_len, *frames.shape[1:])
    out = np.empty((spec.num_clips, 3, spec.clip_len, spec.crop_size, spec.crop_size), np.float32)
    for clip, slot in zip(frames, out, strict=True):
        preset(clip, out=slot)
    return out


def decode_videos(videos: Sequence[EvalVideo], spec: FeatureSpec) -> tuple[np.ndarray, list[str]]:
    """Clips ``[len(videos), num_clips, 3, T, S, S]`` and one error text per video ("" if fine).

    A video that fails to decode is logged by name and left as zeros; it is never fatal.
    """
    preset = EvalPreset(crop_size=spec.crop_size)
    shape = (spec.num_clips, 3, spec.clip_len, spec.crop_size, spec.crop_size)
    clips = np.zeros((len(videos), *shape), np.float32)
    errors = []
    for video, slot in zip(videos, clips, strict=True):
        try:
            slot[:] = video_clips(video, spec, preset)
            errors.append("")
        except (decode.VideoDecodeError, OSError) as err:
            log.warning("skip %s: %s", video.video_id, err)
            errors.append(str(err))
    return clips, errors


class FeatureModel:
    """The backbone (eval mode, no gradients) that turns a group's clips into video features.

    ``weights`` holds every ``backbone.*`` entry; other entries (e.g. ``head.*`` of a global
    aggregated with ``strategy.shared=all``) are ignored.
    """

    def __init__(self, weights: Weights, spec: FeatureSpec, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.batch_size = spec.batch_size
        backbone = build_backbone(spec.backbone, spec.mode)
        own = {k.removeprefix(PREFIX): v for k, v in weights.items() if k.startswith(PREFIX)}
        missing = [k for k in backbone.state_dict() if k not in own]
        if missing:
            raise ValueError(
                f"weights lack {len(missing)} of the {spec.backbone} backbone's entries "
                f"(e.g. {PREFIX}{missing[0]})"
            )
        set_weights(backbone, own)  # other entries (a CtP head) are not part of the features
        self.backbone = backbone.to(self.device).eval()
        self.out_dim = backbone.out_channels

    @torch.inference_mode()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """``[V, N, 3, T, S, S]`` -> ``[V, C]`` float32: pooled layer-4 output, mean over clips."""
        flat = torch.from_numpy(clips.reshape(-1, *clips.shape[2:]))
        pooled = [
            self.backbone(chunk.to(self.device)).mean(dim=(2, 3, 4)).cpu()
            for chunk in flat.split(self.batch_size)
        ]
        per_clip = torch.cat(pooled).view(clips.shape[0], clips.shape[1], -1)
        return per_clip.mean(dim=1).numpy()


class LogitModel:
    """A fine-tuned classifier (eval mode: dropout off, BN running statistics) that turns a
    group's clips into the mean of each video's clip logits (FEDVSSL.md §8: softmax follows).

    ``weights`` holds the classifier's ``backbone.*`` and ``cls_head.*`` entries; the number of
    classes is read from ``cls_head.fc_cls.weight``.
    """

    def __init__(self, weights: Weights, spec: FeatureSpec, device: str = "cpu") -> None:
        from ..models import build_classifier

        head = weights.get(CLS_WEIGHT)
        if head is None:
            raise ValueError(
                f"weights lack {CLS_WEIGHT}: not a fine-tuned classifier (fine-tune the backbone "
                "first: python experiments/finetune.py checkpoint=...)"
            )
        self.device = torch.device(device)
        self.batch_size = spec.batch_size
        model = build_classifier(spec.backbone, num_classes=int(head.shape[0]))
        parts = ("backbone", "cls_head")
        wanted = {k: v for k, v in weights.items() if k.split(".", 1)[0] in parts}
        missing = [k for k in model.state_dict() if k not in wanted]
        if missing:
            raise ValueError(
                f"weights lack {len(missing)} of the {spec.backbone} classifier's entries "
                f"(e.g. {missing[0]})"
            )
        set_weights(model, wanted)
        self.model = model.to(self.device).eval()
        self.out_dim = int(head.shape[0])

    @torch.inference_mode()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """``[V, N, 3, T, S, S]`` -> ``[V, num_classes]`` float32: mean of the clips' logits."""
        flat = torch.from_numpy(clips.reshape(-1, *clips.shape[2:]))
        logits = [
            self.model(chunk.to(self.device)).float().cpu() for chunk in flat.split(self.batch_size)
        ]
        per_clip = torch.cat(logits).view(clips.shape[0], clips.shape[1], -1)
        return per_clip.mean(dim=1).numpy()


CLS_WEIGHT = "cls_head.fc_cls.weight"


def make_model(weights: Weights, spec: FeatureSpec, device: str = "cpu") -> FeatureModel | LogitModel:
    """The model ``spec.output`` asks for: backbone features, or classifier logits."""
    if spec.output == "logits":
        return LogitModel(weights, spec, device)
    if spec.output != "features":
        raise ValueError(f"unknown output {spec.output!r}; choose one of ['features', 'logits']")
    return FeatureModel(weights, spec, device)


def extract_features(
    videos: Sequence[EvalVideo],
    weights: Weights,
    spec: FeatureSpec,
    *,
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> Extracted:
    """Features (or, with ``spec.output="logits"``, mean clip logits) of ``videos`` in this
    process: groups of ``spec.videos_per_forward`` videos."""
    model = make_model(weights, spec, device)
    feats = np.zeros((len(videos), model.out_dim), np.float32)
    errors: dict[int, str] = {}
    group = spec.videos_per_forward
    for start in range(0, len(videos), group):
        clips, texts = decode_videos(videos[start : start + group], spec)
        ok = [j for j, text in enumerate(texts) if not text]
        errors.update({start + j: text for j, text in enumerate(texts) if text})
        if ok:
            feats[[start + j for j in ok]] = model(clips[ok])
        if progress is not None:
            progress(min(start + group, len(videos)), len(videos))
    return Extracted(feats, errors)


def eval_device(num_gpus: float) -> str:
    """``cuda`` when GPUs are asked for and present, else ``cpu``."""
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"

