"""Stateless ops: `<op>_forward(be, ...)` returns the output and what backward
needs; `<op>_backward(be, ctx, dy)` returns the gradients. `be` is a Backend:
with `be.kern` None the op runs its array-level algorithm on `be.xp` (NumPy or
CuPy), otherwise it calls the hand-written kernels (sim and cuda share this
glue). One file per op family, matching csrc/kernels/<family>.cu."""
