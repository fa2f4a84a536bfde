"""Image sizes for CPU training of the tiny models; the data itself comes from the flags.

`detforge train --config configs/faster_rcnn_r18_fpn_tiny.py --voc DIR` (or `--coco-json J
--image-root R`): the config gives the model, the schedule and these sizes.
"""

dataloader = dict(min_size=[288, 320, 352], max_size=480)
