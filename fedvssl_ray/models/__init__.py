"""Models: R3D-18 / narrow R3D-10 backbones, the CtP pretext model and the fine-tune classifier."""

from .backbones import BACKBONES, VideoBackbone, build_backbone
from .classifier import VideoClassifier, build_classifier
from .ctp import CtpModel, build_ctp_model, ctp_loss, decode_targets, encode_targets, make_rois
from .weights import Weights, get_weights, keys_with_prefix, set_weights

__all__ = [
    "BACKBONES",
    "CtpModel",
    "VideoBackbone",
    "VideoClassifier",
    "Weights",
    "build_backbone",
    "build_classifier",
    "build_ctp_model",
    "ctp_loss",
    "decode_targets",
    "encode_targets",
    "get_weights",
    "keys_with_prefix",
    "make_rois",
    "set_weights",
]
