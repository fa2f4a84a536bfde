"""Region-of-interest heads of two-stage detectors: the Fast R-CNN box head and predictor
(``box_head``, ``fast_rcnn``), the Mask R-CNN mask head (``mask_head``) and the module that
labels, samples and pools proposals and runs them (``roi_heads``)."""
