"""Converters: synthetic checkpoints in each foreign format, built from a detforge model by an
inverse renaming written here independently, must convert back to exactly the original tensors
and give identical detections."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from detforge.checkpoint import convert as cv
from detforge.checkpoint.io import load_checkpoint
from detforge.checkpoint.load import load_weights
from detforge.checkpoint.pickle_safe import UnsafePickleError
from detforge.layers.norms import FrozenBatchNorm2d
from detforge.modeling import zoo

R = 3  # aspect ratios per location of the RetinaNet anchors


def _build(name: str, seed: int, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = zoo.build_model(name, num_classes=num_classes).eval()
    # Random weights give scores below the default thresholds: keep every detection.
    if hasattr(model, "test_score_thresh"):
        model.test_score_thresh = 0.0
    else:  # few proposals and detections keep the CPU test fast
        model.rpn.post_nms_topk = (1000, 32)
        model.roi_heads.box_predictor.test_score_thresh = 0.0
        model.roi_heads.box_predictor.test_topk_per_image = 8
    return model


def _images() -> list[Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.rand(3, 64, 64, generator=g) * 255, torch.rand(3, 48, 64, generator=g) * 255]


def _assert_same_model(a: nn.Module, b: nn.Module, outputs: bool) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    if not outputs:  # equal state dicts; the forward check is kept to a few cases (CPU time)
        return
    with torch.no_grad():
        out_a, out_b = a(_images()), b(_images())
    assert sum(len(r) for r in out_a) > 0
    for ra, rb in zip(out_a, out_b, strict=True):
        assert torch.equal(ra.boxes, rb.boxes)
        assert torch.equal(ra.scores, rb.scores)
        assert torch.equal(ra.labels, rb.labels)


def _roundtrip(
    name: str, to_source: Callable, converter: Callable, *, outputs: bool = True
) -> cv.ConversionReport:
    original = _build(name, seed=1)
    source = to_source(original.state_dict())
    state, report = converter(source)
    fresh = _build(name, seed=2)
    assert not torch.equal(
        fresh.state_dict()["backbone.bottom_up.stem.conv1.weight"],
        original.state_dict()["backbone.bottom_up.stem.conv1.weight"],
    )
    loaded = load_weights(fresh, state, strict=True)
    assert loaded.ok, loaded.summary()
    _assert_same_model(original, fresh, outputs)
    return report


# ------------------------------------------------------------------ detectron2
def _to_detectron2(sd: dict[str, Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone.fpn."):
            k = "backbone." + k[len("backbone.fpn.") :]
        elif k.startswith("rpn.head."):
            k = "proposal_generator.rpn_head." + k[len("rpn.head.") :]
        out[k] = v.numpy().copy()
    out["pixel_mean"] = np.array([1.0, 2.0, 3.0], dtype=np.float32).reshape(3, 1, 1)
    out["pixel_std"] = np.ones((3, 1, 1), dtype=np.float32)
    out["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), np.float32)
    return out


@pytest.mark.parametrize("name", ["mask_rcnn_r18_fpn_tiny", "retinanet_r18_fpn_tiny"])
def test_detectron2_pkl_roundtrip(name: str, tmp_path: Path) -> None:
    model = _build(name, seed=1)
    path = tmp_path / "model_final.pkl"
    blob = {"model": _to_detectron2(model.state_dict()), "__author__": "Detectron2 Model Zoo"}
    path.write_bytes(pickle.dumps(blob, protocol=2))
    outputs = name.startswith("mask")
    report = _roundtrip(
        name, lambda sd: cv.read_weights(path), cv.convert_detectron2, outputs=outputs
    )
    assert report.pixel_mean == (1.0, 2.0, 3.0)
    assert set(report.dropped) == {
        "pixel_mean",
        "pixel_std",
        "proposal_generator.anchor_generator.cell_anchors.0",
    }
    assert report.unknown == []


def test_detectron2_pth_and_unknown_keys(tmp_path: Path) -> None:
    model = _build("faster_rcnn_r18_fpn_tiny", seed=1)
    weights = {k: torch.from_numpy(v) for k, v in _to_detectron2(model.state_dict()).items()}
    weights["roi_heads.keypoint_head.foo.weight"] = torch.zeros(1)  # kept, flagged by loading
    weights["solver.something"] = torch.zeros(1)
    torch.save({"model": weights, "iteration": 3}, tmp_path / "m.pth")
    state, report = cv.convert_detectron2(cv.read_weights(tmp_path / "m.pth"))
    assert report.unknown == ["solver.something"]
    assert state["backbone.fpn.fpn_lateral2.weight"].shape == (64, 64, 1, 1)
    assert state["rpn.head.objectness_logits.bias"].shape == (3,)
    # A bare detectron2 backbone, as in its ImageNetPretrained/torchvision/*.pkl files.
    bare = {"stem.conv1.weight": np.ones((64, 3, 7, 7), np.float32), "res5.1.conv2.norm.bias": 0}
    state, report = cv.convert_detectron2(bare)
    assert list(state) == ["backbone.bottom_up.stem.conv1.weight"]
    assert report.dropped == {"res5.1.conv2.norm.bias": "not an array (int)"}


# ------------------------------------------------------------------ Detectron (Caffe2)
_BR = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}
_WB = {"weight": "w", "bias": "b"}


def _c2_sfx(norm: str | None, attr: str, kind: str) -> str:
    return f"{kind}_{'s' if attr == 'weight' else 'b'}" if norm else _WB[attr]


def _c2_name(k: str, kind: str) -> str:
    """detforge name -> Caffe2 blob name (``kind``: 'bn' or 'gn' norms)."""
    if m := re.fullmatch(r"backbone\.bottom_up\.stem\.conv1(\.norm)?\.(\w+)", k):
        return f"res_conv1_{_c2_sfx(m[1], m[2], kind)}" if m[1] else f"conv1_{_WB[m[2]]}"
    if m := re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(\w+?)(\.norm)?\.(\w+)", k):
        return f"res{m[1]}_{m[2]}_{_BR[m[3]]}_{_c2_sfx(m[4], m[5], kind)}"
    if m := re.fullmatch(r"backbone\.fpn\.fpn_lateral(\d)(\.norm)?\.(\w+)", k):
        lateral = "" if m[1] == "5" else "_lateral"
        return f"fpn_inner_res{m[1]}_1_sum{lateral}_{_c2_sfx(m[2], m[3], kind)}"
    if m := re.fullmatch(r"backbone\.fpn\.fpn_output(\d)(\.norm)?\.(\w+)", k):
        return f"fpn_res{m[1]}_1_sum_{_c2_sfx(m[2], m[3], kind)}"
    if m := re.fullmatch(r"backbone\.fpn\.top_block\.p(\d)\.(\w+)", k):
        return f"fpn_{m[1]}_{_WB[m[2]]}"
    if m := re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d)(\.norm)?\.(\w+)", k):
        return f"_[mask]_fcn{m[1]}_{_c2_sfx(m[2], m[3], kind)}"
    if m := re.fullmatch(r"head\.(cls|bbox)_subnet\.(\d+)\.(\w+)", k):
        i, j = divmod(int(m[2]), 3)
        return f"retnet_{m[1]}_conv_n{i}_fpn3_{_c2_sfx('n' if j else None, m[3], kind)}"
    layer, _, attr = k.rpartition(".")
    blob = {
        "rpn.head.conv": "conv_rpn_fpn2",
        "rpn.head.objectness_logits": "rpn_cls_logits_fpn2",
        "rpn.head.anchor_deltas": "rpn_bbox_pred_fpn2",
        "roi_heads.box_head.fc1": "fc6",
        "roi_heads.box_head.fc2": "fc7",
        "roi_heads.box_predictor.cls_score": "cls_score",
        "roi_heads.box_predictor.bbox_pred": "bbox_pred",
        "roi_heads.mask_head.deconv": "conv5_mask",
        "roi_heads.mask_head.predictor": "mask_fcn_logits",
        "head.cls_score": "retnet_cls_pred_fpn3",
        "head.bbox_pred": "retnet_bbox_pred_fpn3",
    }[layer]
    return f"{blob}_{_WB[attr]}"


def _bg_first(k: str, v: Tensor) -> Tensor:
    """detforge (background last / absent) -> Detectron/torchvision (background first)."""
    if k.endswith("box_predictor.cls_score." + k.rsplit(".", 1)[1]):
        return torch.cat([v[-1:], v[:-1]])
    if "box_predictor.bbox_pred" in k:
        return torch.cat([torch.randn(4, *v.shape[1:]), v])
    if "mask_head.predictor" in k:
        return torch.cat([torch.randn(1, *v.shape[1:]), v])
    return v


def _to_detectron(sd: dict[str, Tensor], kind: str = "gn") -> dict[str, np.ndarray]:
    out = {_c2_name(k, kind): _bg_first(k, v).numpy() for k, v in sd.items()}
    out["fc6_w_momentum"] = np.zeros(1, np.float32)
    if "conv_rpn_fpn2_w" in out:
        out["conv_rpn_fpn3_w"] = out["conv_rpn_fpn2_w"]
    if "retnet_cls_pred_fpn3_w" in out:
        out["retnet_cls_conv_n0_fpn4_w"] = out["retnet_cls_conv_n0_fpn3_w"]
    return out


@pytest.mark.parametrize("name", ["mask_rcnn_r18_fpn_tiny", "retinanet_r18_fpn_tiny"])
def test_detectron_pkl_roundtrip(name: str, tmp_path: Path) -> None:
    model = _build(name, seed=1)
    path = tmp_path / "model_final.pkl"
    blobs = _to_detectron(model.state_dict())
    path.write_bytes(pickle.dumps({"blobs": blobs, "cfg": "MODEL: {}"}, protocol=2))
    outputs = name.startswith("retina")
    report = _roundtrip(
        name, lambda sd: cv.read_weights(path), cv.convert_detectron, outputs=outputs
    )
    assert "fc6_w_momentum" in report.dropped
    assert any("share" in r for r in report.dropped.values())
    assert report.unknown == []
    assert report.input_format == "BGR"


def test_detectron_class_order_by_hand() -> None:
    k = 3
    cls = np.arange(k + 1, dtype=np.float32).reshape(k + 1, 1)  # row 0 = background
    box = np.arange(4 * (k + 1), dtype=np.float32).reshape(-1, 1)
    mask = np.arange(k + 1, dtype=np.float32).reshape(k + 1, 1, 1, 1)
    weights = {"cls_score_w": cls, "bbox_pred_b": box[:, 0], "mask_fcn_logits_w": mask}
    state, report = cv.convert_detectron(weights)
    p = "roi_heads."
    assert state[p + "box_predictor.cls_score.weight"].flatten().tolist() == [1, 2, 3, 0]
    assert state[p + "box_predictor.bbox_pred.bias"].tolist() == list(range(4, 16))
    assert state[p + "mask_head.predictor.weight"].flatten().tolist() == [1, 2, 3]
    assert report.converted[p + "box_predictor.cls_score.weight"] == "cls_score_w"


def test_caffe2_imagenet_affine_bn(tmp_path: Path) -> None:
    """R-50.pkl-style BN blobs (scale and bias only) give exactly that affine map."""
    torch.manual_seed(0)
    ref = zoo.resnet_fpn_backbone(depth=18, out_channels=32).eval()  # FrozenBN trunk
    for m in ref.modules():
        if isinstance(m, FrozenBatchNorm2d):  # a folded BN: identity statistics
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
    sd = {
        "backbone.bottom_up." + k: v
        for k, v in ref.bottom_up.state_dict().items()
        if not k.endswith(("running_mean", "running_var"))
    }
    blobs = {_c2_name(k, "bn"): v.numpy() for k, v in sd.items()}
    blobs |= {"pred_w": np.zeros((1000, 512), np.float32), "pred_b": np.zeros(1000, np.float32)}
    (tmp_path / "R-18.pkl").write_bytes(pickle.dumps(blobs, protocol=2))
    state, report = cv.convert_caffe2_imagenet(cv.read_weights(tmp_path / "R-18.pkl"))
    assert set(report.dropped) == {"pred_w", "pred_b"} and report.unknown == []
    torch.manual_seed(1)
    fresh = zoo.resnet_fpn_backbone(depth=18, out_channels=32).eval()
    prefixed = {k[len("backbone.") :]: v for k, v in state.items()}
    loaded = load_weights(fresh, prefixed)
    assert loaded.missing == [k for k in fresh.state_dict() if k.startswith("fpn.")]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.bottom_up(x), ref.bottom_up(x), rtol=0, atol=0)


# ------------------------------------------------------------------ torchvision
def _tv_anchor_order(t: Tensor, per_anchor: int) -> Tensor:
    """detforge anchor s * R + r -> torchvision anchor r * S + s."""
    a = t.shape[0] // per_anchor
    return t.reshape(a // R, R, per_anchor, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _tv_name(k: str, first_level: int) -> str:
    if m := re.fullmatch(r"backbone\.bottom_up\.stem\.conv1(\.norm)?\.(\w+)", k):
        return f"backbone.body.{'bn1' if m[1] else 'conv1'}.{m[2]}"
    if m := re.fullmatch(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(\w+?)(\.norm)?\.(\w+)", k):
        layer = f"backbone.body.layer{int(m[1]) - 1}.{m[2]}"
        if m[3] == "shortcut":
            return f"{layer}.downsample.{1 if m[4] else 0}.{m[5]}"
        j = m[3][-1]
        return f"{layer}.{'bn' if m[4] else 'conv'}{j}.{m[5]}"
    if m := re.fullmatch(r"backbone\.fpn\.fpn_(lateral|output)(\d)(\.norm)?\.(\w+)", k):
        blocks = "inner_blocks" if m[1] == "lateral" else "layer_blocks"
        return f"backbone.fpn.{blocks}.{int(m[2]) - first_level}.{1 if m[3] else 0}.{m[4]}"
    if m := re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d)(\.norm)?\.(\w+)", k):
        return f"roi_heads.mask_head.{int(m[1]) - 1}.{1 if m[2] else 0}.{m[3]}"
    if m := re.fullmatch(r"head\.(cls|bbox)_subnet\.(\d+)\.(\w+)", k):
        kind = "classification" if m[1] == "cls" else "regression"
        i, j = divmod(int(m[2]), 3)
        return f"head.{kind}_head.conv.{i}.{j}.{m[3]}"
    layer, _, attr = k.rpartition(".")
    return {
        "backbone.fpn.top_block.p6": "backbone.fpn.extra_blocks.p6",
        "backbone.fpn.top_block.p7": "backbone.fpn.extra_blocks.p7",
        "rpn.head.conv": "rpn.head.conv.0.0",
        "rpn.head.objectness_logits": "rpn.head.cls_logits",
        "rpn.head.anchor_deltas": "rpn.head.bbox_pred",
        "roi_heads.box_head.fc1": "roi_heads.box_head.fc6",
        "roi_heads.box_head.fc2": "roi_heads.box_head.fc7",
        "roi_heads.box_predictor.cls_score": "roi_heads.box_predictor.cls_score",
        "roi_heads.box_predictor.bbox_pred": "roi_heads.box_predictor.bbox_pred",
        "roi_heads.mask_head.deconv": "roi_heads.mask_predictor.conv5_mask",
        "roi_heads.mask_head.predictor": "roi_heads.mask_predictor.mask_fcn_logits",
        "head.cls_score": "head.classification_head.cls_logits",
        "head.bbox_pred": "head.regression_head.bbox_reg",
    }[layer] + f".{attr}"


def _to_torchvision(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    first = 2 if "backbone.fpn.fpn_lateral2.weight" in sd else 3
    out = {}
    for k, v in sd.items():
        v = _bg_first(k, v)
        if k.startswith("head.cls_score"):
            num_anchors = sd["head.bbox_pred.bias"].shape[0] // 4
            v = _tv_anchor_order(v, v.shape[0] // num_anchors)
            per = v.reshape(num_anchors, -1, *v.shape[1:])  # add the unused class 0
            v = torch.cat([torch.randn(num_anchors, 1, *v.shape[1:]), per], 1).flatten(0, 1)
        elif k.startswith("head.bbox_pred"):
            v = _tv_anchor_order(v, 4)
        out[_tv_name(k, first)] = v.clone()
    out["backbone.body.bn1.num_batches_tracked"] = torch.tensor(7)
    return out


@pytest.mark.parametrize(
    "name", ["faster_rcnn_r18_fpn_tiny", "mask_rcnn_r18_fpn_tiny", "retinanet_r18_fpn_tiny"]
)
def test_torchvision_detection_roundtrip(name: str) -> None:
    outputs = name.startswith("retina")  # the anchor permutation
    report = _roundtrip(name, _to_torchvision, cv.convert_torchvision, outputs=outputs)
    assert report.input_format == "RGB" and report.unknown == []
    assert report.dropped == {"backbone.body.bn1.num_batches_tracked": "batch-norm step counter"}


def test_torchvision_anchor_permutation_by_hand() -> None:
    # 2 sizes x 3 ratios; torchvision anchor r * 2 + s holds 10 r + s.
    tv = torch.tensor([10.0 * r + s for r in range(3) for s in range(2)])
    out = cv.convert_torchvision({"head.regression_head.bbox_reg.bias": tv.repeat_interleave(4)})[0]
    assert out["head.bbox_pred.bias"][::4].tolist() == [0, 10, 20, 1, 11, 21]


def test_torchvision_classifier_backbone_and_eps_fold() -> None:
    model = _build("faster_rcnn_r18_fpn_tiny", seed=1)
    body = {k: v for k, v in _to_torchvision(model.state_dict()).items() if "body." in k}
    classifier = {k[len("backbone.body.") :]: v for k, v in body.items()}
    classifier |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    state, report = cv.convert_torchvision(classifier)
    assert {"fc.weight", "fc.bias"} <= set(report.dropped) and report.unknown == []
    for k, v in state.items():
        assert torch.equal(v, model.state_dict()[k]), k
    # torchvision's v1 detectors use FrozenBN eps 0; detforge's eps 1e-5 must give the same map.
    g = torch.Generator().manual_seed(3)
    w, b, mean = (torch.randn(4, generator=g) for _ in range(3))
    var = torch.tensor([1e-4, 1e-3, 0.5, 2.0])
    bn = {"weight": w, "bias": b, "running_mean": mean, "running_var": var}
    tv = {f"backbone.body.bn1.{k}": v for k, v in bn.items()} | {
        "roi_heads.box_head.fc6.weight": torch.zeros(2, 2)
    }
    state, report = cv.convert_torchvision(tv)
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict({k.rsplit(".", 1)[1]: v for k, v in state.items() if ".norm." in k})
    x = torch.randn(2, 4, 3, 3, generator=g)
    expected = (x - mean.view(1, -1, 1, 1)) / var.sqrt().view(1, -1, 1, 1) * w.view(
        1, -1, 1, 1
    ) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-5)
    assert any("eps 0.0" in n for n in report.notes)


# ------------------------------------------------------------------ files and the CLI
class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned_by_pickle",))


def test_malicious_pkl_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _Evil()}}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*(posix|nt)\.system"):
        cv.read_weights(path)
    assert not (tmp_path / "pwned_by_pickle").exists()
    torch.save({"w": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafePickleError, match=r"evil\.pth"):
        cv.read_weights(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_read_weights_rejects_non_mapping(tmp_path: Path) -> None:
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match=r"list\.pkl"):
        cv.read_weights(tmp_path / "list.pkl")


def test_cli_roundtrip_and_new_num_classes(tmp_path: Path) -> None:
    name = "mask_rcnn_r18_fpn_tiny"
    model = _build(name, seed=1)
    src = tmp_path / "d2.pkl"
    blob = {"model": _to_detectron2(model.state_dict()), "__author__": "Detectron2 Model Zoo"}
    src.write_bytes(pickle.dumps(blob, protocol=2))
    out = tmp_path / "out.pth"
    args = ["--from", "detectron2", str(src), "--model", name, "--num-classes", "3", "-o", str(out)]
    assert cv.main([*args, "--strict"]) == 0
    ckpt = load_checkpoint(out)
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v), k
    assert ckpt["metadata"]["conversion"]["source"] == "detectron2"
    assert ckpt["metadata"]["load"]["missing"] == []

    out5 = tmp_path / "out5.pth"
    assert cv.main([*args[:-3], "5", "-o", str(out5)]) == 0
    ckpt5 = load_checkpoint(out5)
    reinit = ckpt5["metadata"]["load"]["reinitialized"]
    assert sorted(reinit) == sorted(
        f"roi_heads.{layer}.{attr}"
        for layer in ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_head.predictor")
        for attr in ("weight", "bias")
    )
    assert ckpt5["model"]["roi_heads.box_predictor.cls_score.weight"].shape == (6, 256)
    key = "backbone.bottom_up.res3.0.conv1.weight"
    assert torch.equal(ckpt5["model"][key], model.state_dict()[key])


def test_cli_torchvision_retinanet_keeps_its_architecture_and_input(tmp_path: Path) -> None:
    # torchvision's RetinaNet computes P6 from P5 and expects RGB with ImageNet statistics: the
    # converted checkpoint must rebuild that model and give the same detections.
    from detforge.inference import load_model

    torch.manual_seed(4)
    source = zoo.retinanet_r18_fpn_tiny(3, p6p7_in_feature="p5").eval()
    source.test_score_thresh = 0.0
    src = tmp_path / "tv_retinanet.pth"
    torch.save(_to_torchvision(source.state_dict()), src)
    out = tmp_path / "converted.pth"
    args = ["--from", "torchvision", str(src), "--model", "retinanet_r18_fpn_tiny"]
    assert cv.main([*args, "--num-classes", "3", "-o", str(out), "--strict"]) == 0
    meta = load_checkpoint(out)["metadata"]["model_spec"]
    assert meta["model_kwargs"] == {"stride_in_1x1": False, "p6p7_in_feature": "p5"}
    assert meta["input_format"] == "RGB" and meta["class_names"] == [
        "class_0",
        "class_1",
        "class_2",
    ]
    assert meta["pixel_std"] == pytest.approx([58.395, 57.12, 57.375])

    model, info = load_model(out)
    assert model.backbone.fpn.top_block.in_feature == "p5"
    assert info.input_format == "RGB" and info.class_names == ("class_0", "class_1", "class_2")
    model.test_score_thresh = 0.0
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        want, got = source([image])[0], model([image])[0]
    assert len(got) == len(want) > 0
    torch.testing.assert_close(got.boxes, want.boxes)
    torch.testing.assert_close(got.scores, want.scores)


def test_class_names_for_conversions() -> None:
    coco = cv.class_names_for(None, 80, "detectron2")
    assert coco is not None and coco[0] == "person" and coco[-1] == "toothbrush"
    tv = cv.class_names_for(None, 90, "torchvision")  # label j is COCO category j + 1
    assert tv is not None and tv[0] == "person" and tv[11] == "unused_12" and tv[12] == "stop sign"
    assert cv.class_names_for(None, 3, "detectron2") is None
    assert cv.class_names_for("cat, dog", 2, "detectron2") == ["cat", "dog"]
    with pytest.raises(ValueError, match="2 names for --num-classes 3"):
        cv.class_names_for("cat,dog", 3, "detectron2")


@pytest.mark.parametrize("source", ["caffe2-imagenet", "torchvision"])
def test_r50_bottleneck_names(source: str) -> None:
    """Bottleneck blocks (conv3 / branch2c, projection shortcuts) of a real ResNet-50."""
    torch.manual_seed(0)
    trunk = zoo.resnet_fpn_backbone(depth=50).bottom_up
    sd = {"backbone.bottom_up." + k: v for k, v in trunk.state_dict().items()}
    if source == "caffe2-imagenet":  # affine-only BN: no statistics in the file
        blobs = {_c2_name(k, "bn"): v.numpy() for k, v in sd.items() if "running" not in k}
        state, report = cv.convert_caffe2_imagenet(blobs)
    else:
        names = {_tv_name(k, 2)[len("backbone.body.") :]: v for k, v in sd.items()}
        state, report = cv.convert_torchvision(names)
    assert report.unknown == [] and "backbone.bottom_up.res5.2.conv3.norm.weight" in state
    torch.manual_seed(1)
    fresh = zoo.resnet_fpn_backbone(depth=50).bottom_up
    prefix = len("backbone.bottom_up.")
    loaded = load_weights(fresh, {k[prefix:]: v for k, v in state.items()}, strict=True)
    assert loaded.ok
    for k, v in trunk.state_dict().items():
        if source == "torchvision" or "running" not in k:
            assert torch.equal(fresh.state_dict()[k], v), k
