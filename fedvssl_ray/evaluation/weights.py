"""The backbone weights to evaluate: a checkpoint this project wrote, or the seeded random init.

Checkpoints are the ``.npz`` files of :mod:`fedvssl_ray.checkpoint` (``checkpoints/round-NNNN.npz``
of a run); their ``backbone.*`` entries are used and anything else (a CtP head) is ignored.
The random init is the backbone of ``build_ctp_model(..., seed=cfg.seed)``, exactly the round-0
global of a pretraining run with the same seed and backbone: the baseline every pretrained
checkpoint is compared against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import CheckpointError, load_arrays
from ..config import Config
from ..models import BACKBONES, CtpModel, Weights, build_backbone, build_ctp_model, get_weights

PREFIX = "backbone."


class BackboneCheckpointError(CheckpointError):
    """A checkpoint is missing, unreadable, or lacks the backbone expected; the message says which."""


def expected_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """``backbone.*`` key -> shape of the named backbone's state."""
    return {k: shape for k, (shape, _) in _expected_state(backbone).items()}


def _expected_state(backbone: str) -> dict[str, tuple[tuple[int, ...], bool]]:
    """``backbone.*`` key -> (shape, whether the entry is floating point)."""
    state = build_backbone(backbone, "pretrain").state_dict()
    return {PREFIX + k: (tuple(v.shape), v.is_floating_point()) for k, v in state.items()}


def _dtype_problem(value: np.ndarray, floating: bool) -> str | None:
    """Why ``value``'s dtype cannot stand for a state entry (float, or an integer counter)."""
    kind = value.dtype.kind
    if floating and kind != "f":
        return f"dtype {value.dtype} (expected floating point)"
    if kind not in "fiu":
        return f"dtype {value.dtype} (expected a real number type)"
    return None


def _matching_backbones(weights: Weights) -> list[str]:
    """Names of the backbones whose state the ``backbone.*`` entries of ``weights`` match."""
    return [
        name for name in sorted(BACKBONES)
        if {k: v.shape for k, v in weights.items() if k.startswith(PREFIX)} == expected_shapes(name)
    ]


def check_backbone_weights(weights: Weights, backbone: str, source: str) -> Weights:
    """The ``backbone.*`` entries of ``weights``, checked against ``backbone``'s keys, shapes
    and dtypes (floats where the model has floats; never strings, booleans or complex)."""
    expected = _expected_state(backbone)
    found = {k: np.asarray(v) for k, v in weights.items() if k.startswith(PREFIX)}
    missing = [k for k in expected if k not in found]
    unknown = [k for k in found if k not in expected]
    wrong = [
        f"{k} {found[k].shape} (expected {expected[k][0]})"
        for k in expected if k in found and found[k].shape != expected[k][0]
    ]
    typed = [
        f"{k} {problem}" for k in expected if k in found
        if (problem := _dtype_problem(found[k], expected[k][1]))
    ]
    if not (missing or unknown or wrong or typed):
        return found
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing backbone entries (e.g. {missing[0]})")
    if unknown:
        problems.append(f"{len(unknown)} unexpected backbone entries (e.g. {unknown[0]})")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped (e.g. {wrong[0]})")
    if typed:
        problems.append(f"{len(typed)} of the wrong type (e.g. {typed[0]})")
    others = [name for name in _matching_backbones(weights) if name != backbone] if found else []
    hint = f"; it matches model.backbone={others[0]}" if others else ""
    raise BackboneCheckpointError(
        f"{source}: expected the {len(expected)} backbone.* entries of model.backbone={backbone}, "
        f"found {'; '.join(problems)}{hint}"
    )


def load_backbone_checkpoint(path: str | Path, backbone: str) -> tuple[Weights, dict]:
    """(``backbone.*`` weights, checkpoint metadata) of a native ``.npz`` checkpoint, checked."""
    arrays, meta = _load_native(Path(path))
    return check_backbone_weights(arrays, backbone, str(path)), meta


def _load_native(path: Path) -> tuple[Weights, dict]:
    """Every array and the metadata of a native ``.npz``; any problem is a
    :class:`BackboneCheckpointError` naming the file."""
    if not path.is_file():
        raise BackboneCheckpointError(
            f"{path}: no such checkpoint file (expected a .npz written by a run, e.g. "
            "runs/<run>/checkpoints/round-0020.npz, or checkpoint=none)"
        )
    try:
        return load_arrays(path)
    except CheckpointError as err:
        raise BackboneCheckpointError(
            f"{err} (expected a .npz written by a run, e.g. checkpoints/round-0020.npz)"
        ) from None


def backbone_weights(model: CtpModel) -> Weights:
    """The ``backbone.*`` entries of a CtP model, as a checkpoint holds them."""
    return get_weights(model, [k for k in model.state_dict() if k.startswith(PREFIX)])


def initial_backbone_weights(cfg: Config) -> Weights:
    """The seeded random-init backbone (the round-0 global of a run with this config)."""
    return backbone_weights(
        build_ctp_model(cfg.model.backbone, num_frames=cfg.data.clip_len, seed=cfg.seed)
    )


CLS_PREFIX = "cls_head."


def load_classifier_checkpoint(path: str | Path, backbone: str) -> tuple[Weights, dict]:
    """(``backbone.*`` + ``cls_head.*`` weights, metadata) of a fine-tuned classifier's ``.npz``
    (``checkpoints/epoch-NNNN.npz`` of a fine-tuning run), checked."""
    arrays, meta = _load_native(Path(path))
    weights = check_backbone_weights(arrays, backbone, str(path))
    head = {k: v for k, v in arrays.items() if k.startswith(CLS_PREFIX)}
    wanted = (f"{CLS_PREFIX}fc_cls.weight", f"{CLS_PREFIX}fc_cls.bias")
    if not all(k in head for k in wanted):
        raise BackboneCheckpointError(
            f"{path}: no classifier head ({', '.join(wanted)}): not a fine-tuned checkpoint. "
            "Fine-tune it first (python experiments/finetune.py checkpoint=...) and test "
            "checkpoints/epoch-NNNN.npz of that run"
        )
    weight, bias = head[wanted[0]], head[wanted[1]]
    for key, value in zip(wanted, (weight, bias), strict=True):
        if (problem := _dtype_problem(value, floating=True)) is not None:
            raise BackboneCheckpointError(f"{path}: {key} has {problem}")
    channels = next(v.shape[0] for k, v in weights.items() if k.endswith("layer4.0.conv2.0.weight"))
    if weight.ndim != 2 or weight.shape[1] != channels or bias.shape != weight.shape[:1]:
        raise BackboneCheckpointError(
            f"{path}: classifier head shapes {weight.shape} / {bias.shape} do not fit the "
            f"{backbone} backbone's {channels} channels"
        )
    return {**weights, **head}, meta
