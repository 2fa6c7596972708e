"""CTP.md conformance points that concern the models (counts, shapes, keys, targets, loss)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.video import r3d_18
from torchvision.ops import roi_align

from fedvssl_ray.models import (
    build_backbone,
    build_classifier,
    build_ctp_model,
    ctp_loss,
    decode_targets,
    encode_targets,
    get_weights,
    keys_with_prefix,
    make_rois,
    set_weights,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def r3d_ctp():
    return build_ctp_model("r3d_18", seed=7)


def test_r3d18_backbone_counts_and_bn(r3d_ctp):
    backbone = r3d_ctp.backbone
    assert n_params(backbone) == 33_166_272
    assert len(backbone.state_dict()) == 120
    assert sum(1 for p in backbone.parameters() if p.requires_grad) == 60
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(bns) == 20
    assert all(bn.eps == 1e-3 and bn.momentum == 0.1 for bn in bns)


def test_head_and_model_counts(r3d_ctp):
    head = r3d_ctp.head
    assert n_params(head.temporal_conv) == 524_288 + 512
    assert n_params(head.fc1) == 6_553_600 + 512
    assert n_params(head.pred_head) == 32_768 + 64
    assert n_params(head) == 7_111_744
    assert n_params(r3d_ctp) == 40_278_016
    keys = list(r3d_ctp.state_dict())
    assert len(keys) == 126
    assert keys[:120] == [f"backbone.{k}" for k in r3d_ctp.backbone.state_dict()]
    assert all(k.startswith("head.") for k in keys[120:])


def test_backbone_key_order_equals_torchvision():
    ours = list(build_backbone("r3d_18").state_dict())
    theirs = [k for k in r3d_18(weights=None).state_dict() if not k.startswith("fc.")]
    assert ours == theirs


@pytest.mark.parametrize(
    ("mode", "shape"), [("pretrain", (2, 512, 2, 14, 14)), ("finetune", (2, 512, 2, 7, 7))]
)
def test_feature_shapes_r3d18(mode, shape):
    backbone = build_backbone("r3d_18", mode).eval()
    with torch.no_grad():
        assert tuple(backbone(torch.zeros(2, 3, 16, 112, 112)).shape) == shape


def test_stage_shapes_pretrain():
    backbone = build_backbone("r3d_18", "pretrain").eval()
    x = torch.zeros(1, 3, 16, 112, 112)
    shapes = []
    with torch.no_grad():
        x = backbone.stem(x)
        for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 16, 56, 56), (128, 8, 28, 28), (256, 4, 14, 14), (512, 2, 14, 14)]


def test_narrow_backbone_same_interface():
    backbone = build_backbone("r3d10_narrow", "pretrain").eval()
    assert n_params(backbone) < 2_000_000
    with torch.no_grad():
        out = backbone(torch.zeros(2, 3, 16, 64, 64))
    assert tuple(out.shape) == (2, backbone.out_channels, 2, 8, 8)  # spatial stride 8
    fine = build_backbone("r3d10_narrow", "finetune").eval()
    with torch.no_grad():
        assert tuple(fine(torch.zeros(1, 3, 16, 64, 64)).shape[2:]) == (2, 4, 4)


def test_unknown_backbone_names_choices():
    with pytest.raises(ValueError, match=r"r3d10_narrow.*r3d_18"):
        build_backbone("resnet50")


def test_init_is_seeded():
    a = get_weights(build_ctp_model("r3d10_narrow", seed=3))
    b = get_weights(build_ctp_model("r3d10_narrow", seed=3))
    c = get_weights(build_ctp_model("r3d10_narrow", seed=4))
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a if a[k].dtype.kind == "f")


def test_head_init_statistics(r3d_ctp):
    head = r3d_ctp.head
    assert head.fc1.weight.std().item() == pytest.approx(0.001, rel=0.01)
    assert head.temporal_conv.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    assert head.fc1.bias.abs().sum() == 0 and head.temporal_conv.bias.abs().sum() == 0


def test_ctp_forward_shapes_and_rois(r3d_ctp):
    gt = torch.randint(0, 50, (2, 3, 16, 2)).float()
    gt = torch.cat([gt, gt + 20], dim=-1)
    rois = make_rois(gt)
    assert rois[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(rois[:, 1:], gt[:, :, 0].reshape(-1, 4))
    with torch.no_grad():
        preds = r3d_ctp.eval()(torch.zeros(2, 3, 16, 112, 112), rois)
    assert tuple(preds.shape) == (6, 64)


def test_roi_align_is_aligned():
    fmap = torch.arange(14, dtype=torch.float32).repeat(14, 1)[None, None]
    out = roi_align(fmap, torch.tensor([[0, 0, 0, 112, 112.0]]), 5, 1 / 8, 2, aligned=True)
    assert out[0, 0, 2].tolist() == pytest.approx([0.9, 3.7, 6.5, 9.3, 12.1], abs=1e-5)
    out = roi_align(fmap, torch.tensor([[0, 16, 24, 48, 56.0]]), 5, 1 / 8, 2, aligned=True)
    assert out[0, 0, 2].tolist() == pytest.approx([1.9, 2.7, 3.5, 4.3, 5.1], abs=1e-5)


def test_targets_hand_values():
    roi = torch.tensor([10.0, 20, 42, 52])
    boxes = torch.stack([roi, torch.tensor([14.0, 18, 54, 58])])
    t = encode_targets(roi, boxes)
    assert t[0].tolist() == [0, 0, 0, 0]
    assert t[1].tolist() == pytest.approx([10.0, 2.5, 5.578589, 5.578589], abs=1e-5)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(4, 3, 16, 2, generator=g) * 80
    wh = 1 + torch.rand(4, 3, 16, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + wh], dim=-1).double()
    rois = boxes[:, :, 0]
    assert torch.allclose(decode_targets(rois, encode_targets(rois, boxes)), boxes, atol=1e-4)


def test_loss_hand_computed_case():
    rois = torch.tensor([[10.0, 20, 42, 52], [0, 0, 30, 20], [60, 60, 100, 112]])
    gt = rois[None, :, None, :].repeat(1, 1, 16, 1)
    gt[0, 0, 15] = torch.tensor([14.0, 18, 54, 58])
    out = ctp_loss(torch.zeros(3, 64), gt, torch.ones(1, 3, 16))
    assert out["loss_ctr"].item() == pytest.approx(0.2395833, abs=1e-6)
    assert out["loss_size"].item() == pytest.approx(0.2116079, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.4511913, abs=1e-6)


def test_classifier_counts_and_keys():
    clf = build_classifier("r3d_18", num_classes=101)
    assert n_params(clf) == 33_218_085
    assert n_params(build_classifier("r3d_18", num_classes=51)) == 33_192_435
    assert clf.cls_head.fc_cls.weight.std().item() == pytest.approx(0.001, rel=0.05)
    keys = list(clf.state_dict())
    assert keys[-2:] == ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    assert len(keys_with_prefix(clf, "backbone")) == 120
    small = build_classifier("r3d10_narrow", num_classes=7).eval()
    with torch.no_grad():
        assert tuple(small(torch.zeros(2, 3, 16, 64, 64)).shape) == (2, 7)


def test_pretrained_backbone_loads_into_classifier():
    ctp = build_ctp_model("r3d10_narrow", seed=1)
    backbone = get_weights(ctp, keys_with_prefix(ctp, "backbone"))
    clf = build_classifier("r3d10_narrow", num_classes=5, seed=2)
    set_weights(clf, backbone)
    after = get_weights(clf, backbone)
    assert all((after[k] == v).all() for k, v in backbone.items())


def test_set_weights_rejects_bad_keys_and_shapes():
    ctp = build_ctp_model("r3d10_narrow")
    with pytest.raises(KeyError, match="backbone.nope"):
        set_weights(ctp, {"backbone.nope": torch.zeros(1).numpy()})
    key = "backbone.stem.0.weight"
    with pytest.raises(ValueError, match=key):
        set_weights(ctp, {key: torch.zeros(1).numpy()})


def test_small_forward_backward_runs():
    model = build_ctp_model("r3d10_narrow", seed=0)
    gt = torch.tensor([8.0, 8, 30, 30]).repeat(2, 3, 16, 1)
    gt[:, :, 8:] += 4
    out = ctp_loss(model(torch.randn(2, 3, 16, 64, 64), make_rois(gt)), gt, torch.ones(2, 3, 16))
    out["loss"].backward()
    assert model.backbone.stem[0].weight.grad is not None
    assert torch.isfinite(out["loss"])
