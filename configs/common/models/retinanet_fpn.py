"""RetinaNet, ResNet-50 FPN (P3-P7), detectron2 defaults (see ``detforge.modeling.zoo``)."""

from detforge.config import LazyCall as L
from detforge.modeling.zoo import resnet_fpn_backbone, retinanet

model = L(retinanet)(
    num_classes=80,
    backbone=L(resnet_fpn_backbone)(
        depth=50, top_block="p6p7", in_features=("res3", "res4", "res5")
    ),
)
