"""Stateless ops: `<op>_forward(be, ...)` returns the output and what backward
needs; `<op>_backward(be, ctx, dy)` returns the gradients. `be` is a Backend;
each op asks gpunet.dispatch.path which of its paths runs a call: the
hand-written kernels on `be.kernels` (sim and cuda share this glue), its CuPy
fusion (defined beside the op), or its array-level algorithm on `be.xp`
(NumPy or CuPy). One file per op family, matching csrc/kernels/<family>.cu."""
