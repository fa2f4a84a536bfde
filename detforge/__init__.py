"""detforge: object detection, instance segmentation and keypoint detection in plain PyTorch.

Importing the package is cheap: it imports no submodule, no compiled extension and no
torchvision. Import what you need, e.g. ``from detforge.ops import nms``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
