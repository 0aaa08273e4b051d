"""Embedding: lookup values, the (deterministic) weight gradient with repeated
indices and padding_idx, PyTorch parity, bad input, and kernel parity."""
import numpy as np
import pytest

import gpunet
from gpunet import nn, testing
from gpunet.testing import assert_close, compare_module

from conftest import needs_cupy

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("embedding_forward", "embedding_backward")


def _naive_grad(idx, dy, vocab, padding_idx=None):
    """The weight gradient by an explicit loop over positions (the oracle)."""
    dw = np.zeros((vocab, dy.shape[-1]))
    for i, g in zip(idx.reshape(-1), dy.reshape(-1, dy.shape[-1])):
        if i != padding_idx:
            dw[i] += g
    return dw


def test_forward_is_a_row_lookup(rng):
    emb = nn.Embedding(10, 3)
    idx = rng.integers(0, 10, size=(4, 5))
    out = emb(idx)
    assert out.shape == (4, 5, 3) and out.dtype == np.float32
    assert np.array_equal(out, emb.weight.data[idx])


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_backward_sums_repeated_indices(padding_idx, rng):
    emb = nn.Embedding(6, 4, padding_idx=padding_idx).to(np.float64)
    idx = np.array([[0, 2, 2, 5], [5, 5, 1, 2], [0, 0, 0, 3]])
    emb(idx)
    dy = rng.standard_normal((3, 4, 4))
    assert emb.backward(dy) is None
    pad = None if padding_idx is None else padding_idx % 6
    assert_close(emb.weight.grad, _naive_grad(idx, dy, 6, pad), name="d weight")
    if pad is not None:
        assert not emb.weight.grad[pad].any()


def test_padding_row_starts_at_zero_and_init_is_standard_normal():
    emb = nn.Embedding(200, 50, padding_idx=7)
    w = emb.weight.data
    assert not w[7].any()
    rest = np.delete(w, 7, axis=0)
    assert abs(rest.mean()) < 0.03 and abs(rest.std() - 1) < 0.03
    assert emb.padding_idx == 7 and nn.Embedding(5, 2, padding_idx=-2).padding_idx == 3


def test_backward_is_deterministic(rng):
    emb = nn.Embedding(7, 5)
    idx = rng.integers(0, 7, size=300)
    dy = rng.standard_normal((300, 5)).astype(np.float32)
    grads = []
    for _ in range(2):
        emb.zero_grad()
        emb(idx)
        emb.backward(dy)
        grads.append(emb.weight.grad.copy())
    assert np.array_equal(grads[0], grads[1])


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Embedding(9, 4, padding_idx=0)
    ours = nn.Embedding(9, 4, padding_idx=0)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    idx = rng.integers(0, 9, size=(6, 7))
    out = ours(idx)
    tout = theirs(torch.tensor(idx))
    assert_close(out, tout.detach().numpy(), name="output")
    dy = rng.standard_normal(out.shape).astype(np.float32)
    ours.backward(dy)
    tout.backward(torch.tensor(dy))
    assert_close(ours.weight.grad, theirs.weight.grad.numpy(), name="d weight")


def test_bad_input():
    emb = nn.Embedding(5, 3)
    with pytest.raises(ValueError, match=r"input.*\[0, 5\).*got 5"):
        emb(np.array([0, 5]))
    with pytest.raises(ValueError, match=r"input.*got -1"):
        emb(np.array([[-1, 2]]))
    with pytest.raises(TypeError, match="input.*integer"):
        emb(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(5, 3, padding_idx=5)
    with pytest.raises(ValueError, match="embedding_dim"):
        nn.Embedding(5, 0)
    emb(np.array([1, 2]))
    with pytest.raises(ValueError, match="grad_output.*shape"):
        emb.backward(np.zeros((3, 3), np.float32))


# ---------------------------------------------------------------- declared cases: every backend
def _indices(rng):
    idx = rng.integers(0, 4, size=(5, 7))  # few distinct rows: many repeats per row
    idx[0, :3] = 9
    return (idx,)


def _case(dim, padding_idx):
    return testing.OpCase(
        f"Embedding(10, {dim}, padding_idx={padding_idx})", lambda: nn.Embedding(10, dim, padding_idx=padding_idx),
        _indices, n=35, kernels=KERNELS, reference=lambda m, idx: m.weight.data[idx],
        # the padding row deliberately gets no gradient, unlike the finite difference
        gradcheck=padding_idx is None)


CASES = [_case(6, None), _case(8, 3), _case(33, -1)]  # scalar path, float4 path, odd width


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case, device):
    """cpu: the row lookup and gradcheck; sim (every schedule), cuda, cupy: parity with float64 cpu."""
    testing.check_op(case, device)


def test_kernel_parity_past_65535_rows(kernel_device, rng):
    """A vocabulary larger than the backward kernel's 65,535 blocks: the
    grid-stride loop gives the last rows their gradients."""
    emb = nn.Embedding(65_537, 2)
    idx = np.concatenate([rng.integers(0, 65_537, 40), [65_536, 65_535, 65_536, 0]])
    compare_module(emb, (idx,), ("cpu", kernel_device), kernels=("embedding_forward", "embedding_backward"))


@pytest.mark.parametrize("padding_idx", [None, 1])
def test_kernel_backward_long_runs_and_wide_rows(kernel_device, padding_idx, rng):
    """Rows used by more than 32 positions (the kernel takes them 32 at a time,
    one per lane) and a dimension past one block of threads (300: two passes,
    the second partial)."""
    emb = nn.Embedding(5, 300, padding_idx=padding_idx)
    idx = rng.integers(0, 5, size=(3, 70))
    compare_module(emb, (idx,), ("cpu", kernel_device), kernels=("embedding_forward", "embedding_backward"))


def test_kernel_backward_is_deterministic(kernel_device, schedule, rng):
    emb = nn.Embedding(4, 5).to(kernel_device)
    be = gpunet.get_backend(kernel_device)
    idx = be.asarray(rng.integers(0, 4, size=200))
    dy = be.asarray(rng.standard_normal((200, 5)).astype(np.float32))
    grads = []
    for _ in range(2):
        emb.zero_grad()
        emb(idx)
        emb.backward(dy)
        grads.append(gpunet.to_numpy(emb.weight.grad).copy())
    assert np.array_equal(grads[0], grads[1])
    assert_close(grads[0], _naive_grad(gpunet.to_numpy(idx), gpunet.to_numpy(dy), 4), n=256, name="d weight")


def test_kernel_bindings_reject_bad_arrays(kernel_device):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip(f"{kernel_device} runs the array-level algorithm, no kernel bindings")
    xp = be.xp
    w, out = xp.zeros((5, 3), dtype=xp.float32), xp.zeros((4, 3), dtype=xp.float32)
    with pytest.raises(TypeError, match="idx.*int64"):
        be.kernels.embedding_forward(w, xp.zeros(4, dtype=xp.int32), out, xp.zeros(4, xp.int64), be.stream())
    with pytest.raises(ValueError, match="out.*shape"):
        be.kernels.embedding_forward(w, xp.zeros(3, dtype=xp.int64), out, xp.zeros(4, xp.int64), be.stream())
    with pytest.raises(TypeError, match="flag.*int64"):
        be.kernels.embedding_forward(w, xp.zeros(4, dtype=xp.int64), out, xp.zeros(4, xp.int32), be.stream())
    order, row_ptr = xp.zeros(4, dtype=xp.int64), xp.zeros(6, dtype=xp.int64)
    with pytest.raises(ValueError, match="padding_idx"):
        be.kernels.embedding_backward(out, order, row_ptr, w, 5, be.stream())
    with pytest.raises(ValueError, match="row_ptr.*shape"):
        be.kernels.embedding_backward(out, order, row_ptr[:5], w, -1, be.stream())


@pytest.mark.parametrize("dim", [3, 8])  # the scalar and the float4 path
def test_kernel_reports_bad_indices_in_the_flag(kb, dim, rng):
    """Indices outside [0, V) give rows of zeros (never NaN, never a read past
    the table) and the first one is recorded: (kind 2, the index, V, 0)."""
    xp = kb.xp
    w = xp.asarray(rng.standard_normal((5, dim)).astype(np.float32))
    idx = xp.asarray(np.array([4, 5, 0, 5]))
    out = xp.empty((4, dim), np.float32)
    flag = xp.zeros(4, np.int64)
    kb.kernels.embedding_forward(w, idx, out, flag, kb.stream())
    assert gpunet.to_numpy(flag).tolist() == [2, 5, 5, 0]
    got, ref = gpunet.to_numpy(out), gpunet.to_numpy(w)
    np.testing.assert_array_equal(got[[0, 2]], ref[[4, 0]])
    assert not got[[1, 3]].any()
    kb.kernels.embedding_forward(w, xp.asarray(np.array([-2, 0, 0, 0])), out, flag, kb.stream())
    assert gpunet.to_numpy(flag).tolist() == [2, 5, 5, 0]


def test_bad_index_found_by_the_kernel_raises_the_cpu_error(kb, monkeypatch):
    """With the host-side range scan off (a GPU's default), the kernel's flag
    raises the cpu backend's error at the next synchronisation (on sim: in the
    call), and the next good call passes."""
    idx = np.array([[1, 9], [0, 2]])
    with pytest.raises(ValueError) as cpu_error:
        nn.Embedding(9, 4)(idx)
    monkeypatch.setitem(gpunet.checks._finite, "host", False)
    emb = nn.Embedding(9, 4).to(kb)
    with pytest.raises(ValueError) as err:
        emb(kb.asarray(idx))
        assert kb.on_gpu, "on sim the call that launched the kernel raises"
        kb.synchronize()
    assert str(err.value) == str(cpu_error.value)
    out = emb(kb.asarray(np.array([8, 0])))
    assert np.isfinite(gpunet.to_numpy(out)).all()


# ---------------------------------------------------------------- the CuPy fusion of the backward
@needs_cupy
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_fused_embedding_backward(padding_idx, rng):
    """Rows sum their positions in a fixed order: equal to cpu within rounding,
    and bit-identical from one run to the next."""
    emb = nn.Embedding(9, 5, padding_idx=padding_idx)
    idx = rng.integers(0, 9, (6, 13))  # many repeats; some rows never used
    dy = rng.standard_normal((6, 13, 5)).astype(np.float32)
    first = compare_module(emb, (idx,), devices=("cpu", "cupy"), grad_outputs=dy, n=64)
    again = compare_module(emb, (idx,), devices=("cupy",), grad_outputs=dy)
    np.testing.assert_array_equal(gpunet.to_numpy(first["cupy"][2]["weight"]),
                                  gpunet.to_numpy(again["cupy"][2]["weight"]))
