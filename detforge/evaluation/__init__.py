"""Evaluation: the evaluator protocol, the inference loop and the COCO, VOC and recall metrics.

* :mod:`detforge.evaluation.evaluator`: ``DatasetEvaluator`` (reset / process / evaluate),
  ``DatasetEvaluators`` and ``inference_on_dataset``;
* :mod:`detforge.evaluation.coco_eval`: ``COCOEvaluator`` (official pycocotools numbers for
  boxes, masks and keypoints) and ``records_to_coco``;
* :mod:`detforge.evaluation.voc_eval`: ``VOCEvaluator`` (Pascal VOC AP, 11-point or area);
* :mod:`detforge.evaluation.proposal_recall`: average recall of region proposals.

Import from the submodules; this package module imports nothing so that it stays cheap.
"""
