"""RNNCell, LSTMCell, RNN, LSTM: gradients against finite differences, values
and gradients against PyTorch, the character-model example, bad input, and
kernel parity (sim/cuda against cpu)."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.testing import assert_close, compare_module

from conftest import FUSED_DTYPES, needs_cupy

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("lstm_cell_forward", "lstm_cell_backward", "rnn_cell_forward", "rnn_cell_backward")


def _f64(*shape, rng):
    return rng.standard_normal(shape)


# ---------------------------------------------------------------- gradcheck (float64)
@pytest.mark.parametrize("layers,T,batch_first,state,bias", [
    (1, 1, False, True, True),
    (1, 3, False, False, False),
    (2, 4, True, True, True),
    (2, 3, False, False, True),
])
def test_lstm_gradcheck(layers, T, batch_first, state, bias, rng):
    lstm = nn.LSTM(3, 4, num_layers=layers, bias=bias, batch_first=batch_first).to(np.float64)
    x = _f64(*((2, T, 3) if batch_first else (T, 2, 3)), rng=rng)
    inputs = (x, (_f64(layers, 2, 4, rng=rng), _f64(layers, 2, 4, rng=rng))) if state else (x,)
    # the random projection covers output, h_n and c_n: all three gradients flow back
    gpunet.gradcheck(lstm, inputs)


def test_lstm_gradcheck_unbatched(rng):
    lstm = nn.LSTM(2, 3, num_layers=2).to(np.float64)
    gpunet.gradcheck(lstm, (_f64(4, 2, rng=rng), (_f64(2, 3, rng=rng), _f64(2, 3, rng=rng))))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("layers,T,batch_first,state,bias", [
    (1, 1, False, True, True),
    (2, 4, True, True, False),
    (2, 3, False, False, True),
])
def test_rnn_gradcheck(nonlinearity, layers, T, batch_first, state, bias, rng):
    rnn = nn.RNN(3, 4, layers, nonlinearity, bias, batch_first).to(np.float64)
    x = _f64(*((2, T, 3) if batch_first else (T, 2, 3)), rng=rng)
    inputs = (x, _f64(layers, 2, 4, rng=rng)) if state else (x,)
    gpunet.gradcheck(rnn, inputs)


@pytest.mark.parametrize("state", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_cells_gradcheck(state, batched, rng):
    lead = (3,) if batched else ()
    x = _f64(*lead, 4, rng=rng)
    lstm = nn.LSTMCell(4, 5).to(np.float64)
    rnn = nn.RNNCell(4, 5, nonlinearity="tanh").to(np.float64)
    gpunet.gradcheck(lstm, (x, (_f64(*lead, 5, rng=rng), _f64(*lead, 5, rng=rng))) if state else (x,))
    gpunet.gradcheck(rnn, (x, _f64(*lead, 5, rng=rng)) if state else (x,))


def test_cell_without_bias_gradcheck(rng):
    cell = nn.LSTMCell(2, 3, bias=False).to(np.float64)
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_hh"]
    gpunet.gradcheck(cell, (_f64(2, 2, rng=rng), (_f64(2, 3, rng=rng), _f64(2, 3, rng=rng))))


class _Unrolled(nn.Module):
    """An LSTMCell applied in a Python loop over time: the same parameters used T times."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x, hx):
        h, c = hx
        outs = []
        for t in range(x.shape[0]):
            h, c = self.cell(x[t], (h, c))
            outs.append(h)
        return np.stack(outs), (h, c)

    def backward(self, dout, dstate):
        dh, dc = dstate
        dxs = []
        for t in range(dout.shape[0] - 1, -1, -1):
            dx, (dh, dc) = self.cell.backward(dout[t] + dh, dc)
            dxs.append(dx)
        return np.stack(dxs[::-1]), (dh, dc)


def test_cell_in_python_loop_matches_lstm(rng):
    """A cell used T times must backpropagate through every use; the result is
    exactly an LSTM layer with the same weights."""
    cell = nn.LSTMCell(3, 4).to(np.float64)
    lstm = nn.LSTM(3, 4).to(np.float64)
    lstm.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    loop = _Unrolled(cell)
    x, h0, c0 = _f64(5, 2, 3, rng=rng), _f64(2, 4, rng=rng), _f64(2, 4, rng=rng)
    out, (h, c) = loop(x, (h0, c0))
    ref, (hn, cn) = lstm(x, (h0[None], c0[None]))
    assert_close(out, ref, name="output")
    assert_close(c, cn[0], name="c_n")
    dout, dh, dc = _f64(5, 2, 4, rng=rng), _f64(2, 4, rng=rng), _f64(2, 4, rng=rng)
    dx, (dh0, dc0) = loop.backward(dout, (dh, dc))
    rdx, (rdh0, rdc0) = lstm.backward(dout, (dh[None], dc[None]))
    assert_close(dx, rdx, name="d input")
    assert_close(dh0, rdh0[0], name="d h_0")
    assert_close(dc0, rdc0[0], name="d c_0")
    for name, p in cell.named_parameters():
        assert_close(p.grad, dict(lstm.named_parameters())[f"{name}_l0"].grad, name=f"{name}.grad")
    gpunet.gradcheck(loop, (x[:3], (h0, c0)))


def test_missing_output_grads_are_zero(rng):
    lstm = nn.LSTM(3, 4, num_layers=2)
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    out, (h, _) = lstm(x)
    lstm.zero_grad()
    dout, dh, zero_out, zero = np.ones_like(out), np.ones_like(h), np.zeros_like(out), np.zeros_like(h)
    del out, h, _  # the first forward is not differentiated: drop it so each backward below has one forward to pair with
    for given, explicit in (((dout,), (dout, (zero, zero))), ((None, (dh, None)), (zero_out, (dh, zero)))):
        lstm(x)
        ref = lstm.backward(*explicit)
        lstm(x)
        assert_close(lstm.backward(*given), ref, name="d input with missing gradients")


# ---------------------------------------------------------------- against PyTorch
def _load_torch(ours, theirs):
    """Copy a torch module's weights into ours (the state_dict keys must match)."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours


def _compare_params(ours, theirs):
    tp = dict(theirs.named_parameters())
    assert sorted(n for n, _ in ours.named_parameters()) == sorted(tp)
    for n, p in ours.named_parameters():
        assert_close(p.grad, tp[n].grad.numpy(), n=1600, name=f"{n}.grad")


@pytest.mark.parametrize("layers,batch_first,bias,state", [(1, False, True, True), (2, True, True, False),
                                                           (2, False, False, True)])
def test_lstm_matches_torch(layers, batch_first, bias, state, rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.LSTM(5, 7, num_layers=layers, bias=bias, batch_first=batch_first)
    ours = _load_torch(nn.LSTM(5, 7, num_layers=layers, bias=bias, batch_first=batch_first), theirs)
    x = rng.standard_normal((3, 6, 5) if batch_first else (6, 3, 5)).astype(np.float32)
    h0, c0 = (rng.standard_normal((layers, 3, 7)).astype(np.float32) for _ in range(2))
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    out, (h, c) = ours(x, (h0, c0)) if state else ours(x)
    tout, (th, tc) = theirs(tx, (th0, tc0)) if state else theirs(tx)
    for a, b, n in ((out, tout, "output"), (h, th, "h_n"), (c, tc, "c_n")):
        assert_close(a, b.detach().numpy(), name=n)
    g = [rng.standard_normal(a.shape).astype(np.float32) for a in (out, h, c)]
    grads = ours.backward(g[0], (g[1], g[2]))
    torch.autograd.backward([tout, th, tc], [torch.tensor(a) for a in g])
    if state:
        dx, (dh0, dc0) = grads
        assert_close(dh0, th0.grad.numpy(), n=1600, name="d h_0")
        assert_close(dc0, tc0.grad.numpy(), n=1600, name="d c_0")
    else:
        dx = grads
    assert_close(dx, tx.grad.numpy(), n=1600, name="d input")
    _compare_params(ours, theirs)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_torch(nonlinearity, rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.RNN(4, 6, 2, nonlinearity, batch_first=True)
    ours = _load_torch(nn.RNN(4, 6, 2, nonlinearity, batch_first=True), theirs)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 3, 6)).astype(np.float32)
    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    out, h = ours(x, h0)
    tout, th = theirs(tx, th0)
    assert_close(out, tout.detach().numpy(), name="output")
    assert_close(h, th.detach().numpy(), name="h_n")
    g, gh = rng.standard_normal(out.shape).astype(np.float32), rng.standard_normal(h.shape).astype(np.float32)
    dx, dh0 = ours.backward(g, gh)
    torch.autograd.backward([tout, th], [torch.tensor(g), torch.tensor(gh)])
    assert_close(dx, tx.grad.numpy(), n=1600, name="d input")
    assert_close(dh0, th0.grad.numpy(), n=1600, name="d h_0")
    _compare_params(ours, theirs)


def test_cells_match_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3)).astype(np.float32)
    h0, c0 = (rng.standard_normal((4, 5)).astype(np.float32) for _ in range(2))
    theirs = torch.nn.LSTMCell(3, 5)
    ours = _load_torch(nn.LSTMCell(3, 5), theirs)
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    h, c = ours(x, (h0, c0))
    th, tc = theirs(tx, (th0, tc0))
    assert_close(h, th.detach().numpy(), name="h")
    assert_close(c, tc.detach().numpy(), name="c")
    gh, gc = rng.standard_normal(h.shape).astype(np.float32), rng.standard_normal(c.shape).astype(np.float32)
    dx, (dh, dc) = ours.backward(gh, gc)
    torch.autograd.backward([th, tc], [torch.tensor(gh), torch.tensor(gc)])
    for a, b, n in ((dx, tx, "d input"), (dh, th0, "d h"), (dc, tc0, "d c")):
        assert_close(a, b.grad.numpy(), n=1600, name=n)
    _compare_params(ours, theirs)

    theirs = torch.nn.RNNCell(3, 5, nonlinearity="relu")
    ours = _load_torch(nn.RNNCell(3, 5, nonlinearity="relu"), theirs)
    tx = torch.tensor(x, requires_grad=True)
    h = ours(x)
    th = theirs(tx)
    assert_close(h, th.detach().numpy(), name="rnn cell h")
    dx = ours.backward(gh)
    th.backward(torch.tensor(gh))
    assert_close(dx, tx.grad.numpy(), n=1600, name="rnn cell d input")
    _compare_params(ours, theirs)


def test_state_dict_keys_and_init():
    lstm = nn.LSTM(3, 16, num_layers=2, bias=True)
    assert list(lstm.state_dict()) == [f"{w}_{kind}_l{k}" for k in range(2) for w, kind in
                                       (("weight", "ih"), ("weight", "hh"), ("bias", "ih"), ("bias", "hh"))]
    assert lstm.weight_ih_l0.shape == (64, 3) and lstm.weight_ih_l1.shape == (64, 16)
    bound = 1 / np.sqrt(16)
    for _, p in lstm.named_parameters():
        assert np.abs(p.data).max() <= bound and np.abs(p.data).max() > 0.8 * bound


# ---------------------------------------------------------------- the seeds' character model
class CharModel(nn.Module):
    """Embedding (or one-hot) -> LSTM/RNN -> Linear: next-character logits (T, vocab)."""

    def __init__(self, vocab, hidden, kind):
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, 8) if kind == "lstm" else None
        self.rnn = nn.LSTM(8, hidden) if kind == "lstm" else nn.RNN(vocab, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        x = self.embed(ids[:, None]) if self.embed is not None else np.eye(self.vocab, dtype=np.float32)[ids][:, None]
        out, _ = self.rnn(x)
        return self.head(out[:, 0])

    def backward(self, dlogits):
        dx = self.rnn.backward(self.head.backward(dlogits)[:, None])
        if self.embed is not None:
            self.embed.backward(dx)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_hello_character_model(kind):
    vocab = "helo"
    ids = np.array([vocab.index(ch) for ch in "hello"])
    inputs, targets = ids[:-1], ids[1:]  # "hell" -> "ello"
    model = CharModel(len(vocab), 16, kind)
    crit = nn.CrossEntropyLoss()
    opt = gpunet.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        model.zero_grad()
        loss = float(crit(model(inputs), targets))
        first = loss if first is None else first
        model.backward(crit.backward())
        opt.step()
    predicted = "".join(vocab[i] for i in model(inputs).argmax(axis=1))
    assert predicted == "ello", f"predicted {predicted!r}; loss {first:.3f} -> {loss:.3f}"
    assert loss < 0.1 * first


# ---------------------------------------------------------------- bad input
def test_bad_input():
    lstm = nn.LSTM(3, 4, num_layers=2)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match="input.*input_size=3"):
        lstm(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match="input.*2-D or 3-D"):
        lstm(np.zeros((5, 2, 1, 3), np.float32))
    with pytest.raises(TypeError, match="input.*float32"):
        lstm(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"h_0.*\(2, 2, 4\).*\(1, 2, 4\)"):
        lstm(x, (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)))
    with pytest.raises(ValueError, match=r"c_0.*\(2, 2, 4\)"):
        lstm(x, (np.zeros((2, 2, 4), np.float32), np.zeros((2, 3, 4), np.float32)))
    with pytest.raises(TypeError, match="hx.*pair"):
        lstm(x, np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="input.*timestep"):
        lstm(np.zeros((0, 2, 3), np.float32))
    out, _ = lstm(x)
    with pytest.raises(ValueError, match="grad_output.*shape"):
        lstm.backward(out[:1])
    with pytest.raises(ValueError, match="hidden_size"):
        nn.LSTM(3, 0)
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    cell = nn.RNNCell(3, 4)
    with pytest.raises(ValueError, match=r"hx.*\(2, 4\)"):
        cell(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        cell.backward(np.zeros((2, 4), np.float32))


# ---------------------------------------------------------------- kernel parity (sim/cuda vs cpu)
def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("hidden,T,layers,bias,batch_first,state", [
    (5, 1, 1, True, False, True),
    (33, 7, 2, True, False, False),
    (5, 7, 2, False, True, True),
])
def test_lstm_kernel_parity(kernel_device, schedule, hidden, T, layers, bias, batch_first, state, rng):
    lstm = nn.LSTM(6, hidden, num_layers=layers, bias=bias, batch_first=batch_first)
    x = _f32(rng, *((3, T, 6) if batch_first else (T, 3, 6)))
    inputs = (x, (_f32(rng, layers, 3, hidden), _f32(rng, layers, 3, hidden))) if state else (x,)
    compare_module(lstm, inputs, ("cpu", kernel_device), n=256)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("hidden,T,layers,bias", [(5, 1, 1, True), (33, 7, 2, False)])
def test_rnn_kernel_parity(kernel_device, schedule, nonlinearity, hidden, T, layers, bias, rng):
    rnn = nn.RNN(4, hidden, layers, nonlinearity, bias)
    compare_module(rnn, (_f32(rng, T, 2, 4), _f32(rng, layers, 2, hidden)), ("cpu", kernel_device), n=256)


def test_cells_kernel_parity(kernel_device, schedule, rng):
    x, h, c = _f32(rng, 3, 4), _f32(rng, 3, 33), _f32(rng, 3, 33)
    compare_module(nn.LSTMCell(4, 33), (x, (h, c)), ("cpu", kernel_device))
    compare_module(nn.LSTMCell(4, 33, bias=False), (x,), ("cpu", kernel_device))
    compare_module(nn.RNNCell(4, 33, nonlinearity="relu"), (x, h), ("cpu", kernel_device))


def test_lstm_backward_is_deterministic(kernel_device, schedule, rng):
    lstm = nn.LSTM(4, 9, num_layers=2).to(kernel_device)
    be = gpunet.get_backend(kernel_device)
    x, dy = be.asarray(_f32(rng, 5, 3, 4)), be.asarray(_f32(rng, 5, 3, 9))
    runs = []
    for _ in range(2):
        lstm.zero_grad()
        lstm(x)
        dx = lstm.backward(dy)
        runs.append([gpunet.to_numpy(dx)] + [gpunet.to_numpy(p.grad) for p in lstm.parameters()])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_backward_leaves_output_gradients_untouched(kernel_device, rng):
    be = gpunet.get_backend(kernel_device)
    lstm = nn.LSTM(3, 4).to(kernel_device)
    out, (h, c) = lstm(be.asarray(_f32(rng, 2, 3, 3)))
    grads = [be.asarray(_f32(rng, *a.shape)) for a in (out, h, c)]
    kept = [gpunet.to_numpy(g).copy() for g in grads]
    lstm.backward(grads[0], (grads[1], grads[2]))
    for g, k in zip(grads, kept):
        assert np.array_equal(gpunet.to_numpy(g), k)


def test_cell_kernel_bindings_reject_bad_arrays(kernel_device):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip(f"{kernel_device} runs the array-level algorithm, no kernel bindings")
    xp = be.xp
    z = lambda *s: xp.zeros(s, dtype=xp.float32)  # noqa: E731
    with pytest.raises(ValueError, match="xg.*shape"):
        be.kernels.lstm_cell_forward(z(2, 12), z(2, 20), None, z(2, 5), z(2, 20), z(2, 5), z(2, 5), be.stream())
    with pytest.raises(TypeError, match="b_hh.*float32"):
        be.kernels.lstm_cell_forward(z(2, 20), z(2, 20), xp.zeros(20), z(2, 5), z(2, 20), z(2, 5), z(2, 5), be.stream())
    with pytest.raises(ValueError, match="dc_next.*shape"):
        be.kernels.lstm_cell_backward(z(2, 20), z(2, 5), z(2, 5), None, None, z(5, 2), z(2, 20), z(2, 5), be.stream())
    with pytest.raises(ValueError, match="contiguous"):
        be.kernels.rnn_cell_forward(z(4, 2).T, z(2, 4), None, z(2, 4), False, be.stream())


class LanguageModel(nn.Module):
    """Embedding -> Dropout -> 2-layer LSTM -> Linear over (T, B) token ids;
    logits flattened to (T·B, vocab) for the cross-entropy."""

    def __init__(self, vocab, embed, hidden):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.drop = nn.Dropout(0.2)
        self.lstm = nn.LSTM(embed, hidden, num_layers=2)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        out, _ = self.lstm(self.drop(self.embed(ids)))
        return self.head(out).reshape(-1, self.head.out_features)

    def backward(self, dlogits):
        T, B = self._shape
        dh = self.head.backward(dlogits.reshape(T, B, -1))
        self.embed.backward(self.drop.backward(self.lstm.backward(dh)))

    def __call__(self, ids):
        object.__setattr__(self, "_shape", tuple(ids.shape))
        return self.forward(ids)


def test_language_model_training_parity(kernel_device):
    """Five Adam steps of a small LSTM language model (dropout on) on cpu and on
    the kernel backend from the same weights and seed: losses and weights agree."""
    rng = np.random.default_rng(7)
    batches = [(rng.integers(0, 11, size=(6, 3)), rng.integers(0, 11, size=18))] * 5  # one batch, five steps
    gpunet.manual_seed(3)
    state = LanguageModel(11, 8, 13).state_dict()
    results = {}
    for dev in ("cpu", kernel_device):
        be = gpunet.get_backend(dev)
        gpunet.manual_seed(3)  # the same dropout masks on both backends
        model = LanguageModel(11, 8, 13).to(dev)
        model.load_state_dict({k: v.copy() for k, v in state.items()})  # cpu would alias the arrays
        crit = nn.CrossEntropyLoss().to(dev)
        opt = gpunet.optim.Adam(model.parameters(), lr=0.03)
        losses = []
        for ids, target in batches:
            model.zero_grad()
            losses.append(float(gpunet.to_numpy(crit(model(be.asarray(ids)), be.asarray(target)))))
            model.backward(crit.backward())
            opt.step()
        results[dev] = (np.array(losses, dtype=np.float32), model.state_dict())
    ref_losses, ref_state = results["cpu"]
    losses, state_dev = results[kernel_device]
    assert ref_losses[-1] < ref_losses[0]
    assert_close(losses, ref_losses, n=1024, name="losses per step")
    for k, v in ref_state.items():
        assert_close(state_dev[k], v, n=1024, name=k)


# ---------------------------------------------------------------- the CuPy fusion of the LSTM cell
@needs_cupy
@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("state", [True, False])
def test_fused_lstm(state, dtype, rng):
    lstm = nn.LSTM(5, 6, num_layers=2, batch_first=True).to(dtype)
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    inputs = (x, (rng.standard_normal((2, 3, 6)).astype(dtype), rng.standard_normal((2, 3, 6)).astype(dtype))) \
        if state else (x,)
    compare_module(lstm, inputs, devices=("cpu", "cupy"), n=1024)


@needs_cupy
def test_fused_lstm_cell(rng):
    cell = nn.LSTMCell(4, 7)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    compare_module(cell, (x,), devices=("cpu", "cupy"), n=256)


def test_char_lstm_runs_time_major_without_layout_copies(rng):
    """CharLSTM keeps the sequence time-major inside: its logits are a (N, V, T)
    view of the head's (T, N, V) output, and forward and backward agree with the
    same weights run batch-first through PyTorch."""
    import torch
    from gpunet.models import CharLSTM
    model = CharLSTM(7, embed_dim=4, hidden_size=5).to(np.float64)
    tokens = rng.integers(0, 7, (3, 6))
    logits = model(tokens)
    assert logits.shape == (3, 7, 6) and logits.transpose(2, 0, 1).flags.c_contiguous
    dlogits = rng.standard_normal(logits.shape)
    model.zero_grad()
    model.backward(dlogits)
    tm = torch.nn.ModuleDict({"embed": torch.nn.Embedding(7, 4), "lstm": torch.nn.LSTM(4, 5, batch_first=True),
                              "head": torch.nn.Linear(5, 7)}).double()
    tm.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()})
    h, _ = tm["lstm"](tm["embed"](torch.tensor(tokens)))
    ref = tm["head"](h).transpose(1, 2)
    ref.backward(torch.tensor(dlogits))
    assert_close(logits, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, p in model.named_parameters():
        assert_close(p.grad, tm.get_parameter(name).grad.numpy(), rtol=1e-10, atol=1e-12)
