"""COCO 2017 instances: train2017 for training, val2017 for evaluation.

The paths follow the builtin catalog's layout under `$DETFORGE_DATASETS` (default
`./datasets`): `coco/train2017/`, `coco/val2017/`, `coco/annotations/instances_*2017.json`.
The keys are `detforge train`'s data flags; flags given on the command line win.
Training resizes the shortest edge to one of 640-800 (drawn per image), at most 1333 long.
"""

_ROOT = "${oc.env:DETFORGE_DATASETS,datasets}/coco"

dataloader = dict(
    coco_json=f"{_ROOT}/annotations/instances_train2017.json",
    image_root=f"{_ROOT}/train2017",
    val_coco_json=f"{_ROOT}/annotations/instances_val2017.json",
    val_image_root=f"{_ROOT}/val2017",
    min_size=[640, 672, 704, 736, 768, 800],
    max_size=1333,
)
