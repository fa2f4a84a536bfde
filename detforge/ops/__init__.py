"""Detection ops: NMS, RoIAlign, RoIPool, multi-level RoI pooling and mask pasting.

Each op is a plain function with shapes in its docstring. Every op has a vectorised pure-PyTorch
implementation in ``detforge.ops._reference`` that runs on CPU and CUDA tensors with autograd;
compiled kernels are optional and used only where the benchmark shows that they pay.
"""
