"""Small ``nn.Module`` building blocks on top of ops: normalisation layers (``norms``), the
conv-norm-activation unit and the ``ShapeSpec`` feature-map description (``conv``)."""
