"""Vectorised, differentiable pure-PyTorch versions of the detection ops, one module per op.

They run on any device and are the fallback whenever no compiled kernel is available, and the
implementation that the loop-based oracles in ``tests/ops`` check. Call them through the public
functions in ``detforge.ops``, which validate the arguments first. Submodules are imported by
name (``from detforge.ops._reference import roi_align as _ref``); this package re-exports nothing,
so a submodule is never shadowed by the function of the same name.
"""
