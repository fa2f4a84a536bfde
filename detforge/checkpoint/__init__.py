"""Checkpoints: detforge's own format, safe loading, and converters from other toolboxes.

* :mod:`detforge.checkpoint.io`: ``save_checkpoint`` (atomic, ``weights_only``-loadable) and
  ``load_checkpoint``.
* :mod:`detforge.checkpoint.load`: ``load_weights`` with a report of missing / unexpected /
  shape-mismatched names, and ``adapt_num_classes`` for fine-tuning on other classes.
* :mod:`detforge.checkpoint.convert`: detectron2, Detectron, torchvision and Caffe2 ImageNet
  weights to detforge names, and the ``detforge convert`` command line.
* :mod:`detforge.checkpoint.pickle_safe`: restricted unpickling of ``.pkl`` weight files.

Importing this package imports none of them; import the submodule you need.
"""

__all__: list[str] = []
