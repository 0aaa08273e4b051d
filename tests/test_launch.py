"""Launch geometry and index widths past 2^31 items, which no test can
allocate: the extension's test hooks run the launchers' own helpers (grid
sizes) and the kernels' own index arithmetic on the host, for sizes a real
launch would need tens of gigabytes for. The sim build is always there, so
these never skip; the cuda build has the same hooks from the same source."""
import math

import numpy as np
import pytest

from gpunet import _C_sim as kern

THREADS = 256          # common/launch.cuh kThreads
SMS = 132              # the simulator's SM count (an H100/H200 SXM has as many)
# grid-stride kernels launch at most the blocks resident on the device at
# once: SMs x blocks per SM; the simulator has no register model, so the
# thread limit alone (2048 threads per SM) sets the blocks per SM
MAX_BLOCKS = SMS * 2048 // THREADS
WARP_ROWS = 4          # common/rows.cuh kWarpRows
MAX_ROW_BLOCKS = 65535  # common/rows.cuh kMaxRowBlocks
INT32_MAX = 2**31 - 1
GRID_X_MAX = 2**31 - 1  # CUDA's limit on gridDim.x

SIZES = [1, 255, 256, 257, 4 * THREADS * MAX_BLOCKS + 1, INT32_MAX, 2**31, 2**31 + 3, 2**32 + 5, 2**40 + 7]


@pytest.mark.parametrize("n", SIZES)
def test_grid_stride_launches_cover_sizes_past_int32(n):
    """Grid-stride kernels launch min(ceil(n / 256), resident blocks) blocks
    however large n is; the float4 path one thread per vector (the last one
    taking the n % 4 tail)."""
    assert kern._launch_blocks("grid_stride", n) == min(math.ceil(n / THREADS), MAX_BLOCKS)
    assert kern._launch_blocks("elementwise", n) == min(math.ceil(n / THREADS), MAX_BLOCKS)
    assert kern._launch_blocks("elementwise_vec4", n) == min(math.ceil(math.ceil(n / 4) / THREADS), MAX_BLOCKS)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, MAX_ROW_BLOCKS, MAX_ROW_BLOCKS + 1, INT32_MAX, 2**31 + 1, 2**32 + 5,
                                  WARP_ROWS * GRID_X_MAX])
def test_row_launches_past_int32_rows(rows):
    """A warp per row: ceil(rows / 4) blocks, within the grid's x limit up to
    4 (2^31 - 1) rows; a block per row: at most 65,535 blocks, striding over
    the rest."""
    blocks = kern._launch_blocks("warp_rows", rows)
    assert blocks == math.ceil(rows / WARP_ROWS) and blocks <= GRID_X_MAX
    assert kern._launch_blocks("block_rows", rows) == min(rows, MAX_ROW_BLOCKS)


def test_warp_row_grid_past_the_x_limit_raises():
    """One row more than 4 (2^31 - 1): the grid would need 2^31 blocks in x."""
    with pytest.raises(ValueError, match=r"a warp-per-row kernel needs a grid of \(2147483648, 1, 1\) blocks"):
        kern._launch_blocks("warp_rows", WARP_ROWS * GRID_X_MAX + 1)


@pytest.mark.parametrize("dim,limit", [("grid_x", GRID_X_MAX), ("grid_y", 65535), ("grid_z", 65535)])
def test_checked_grid_limits(dim, limit):
    """Every launch's grid passes common/launch.cuh checked_grid (or is
    bounded by construction, as the grid-stride ones): up to CUDA's limit in
    each dimension it is the grid asked for, one block more raises a
    ValueError naming the kernel and the limits, before anything runs."""
    assert kern._launch_blocks(dim, 1) == 1
    assert kern._launch_blocks(dim, limit) == limit
    with pytest.raises(ValueError, match=r"a test launch needs a grid of .* CUDA allows at most "
                                         r"\(2147483647, 65535, 65535\)"):
        kern._launch_blocks(dim, limit + 1)


def test_launch_hook_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        kern._launch_blocks("diagonal", 5)
    with pytest.raises(ValueError, match="'n'"):
        kern._launch_blocks("grid_stride", 0)


def im2col_source(x_shape, k, s, p, d, e):
    """The flat index of x that im2col copies to column entry e, or -1 in the
    padding, in Python's unbounded integers (the layout of csrc/kernels/conv.cu)."""
    n, c_in, h, w = x_shape
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
    c, i, j, img, oy, ox = np.unravel_index(e, (c_in, k, k, n, oh, ow))
    y, x = oy * s - p + i * d, ox * s - p + j * d
    if not (0 <= y < h and 0 <= x < w):
        return -1
    return int(((img * c_in + c) * h + y) * w + x)


def column_entries(x_shape, k, s, p, d, count, rng):
    n, c_in, h, w = x_shape
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
    total = c_in * k * k * n * oh * ow
    # the first and last entries, the ones around 2^31, and random ones
    picks = [0, total - 1] + [e for e in (2**31 - 1, 2**31, 2**32 + 7) if e < total]
    return total, picks + [int(v) for v in rng.integers(0, total, count)]


@pytest.mark.parametrize("x_shape, k, s, p, d, bits", [
    ((2, 3, 7, 6), 3, 1, 1, 1, 32),
    ((2, 5, 9, 8), 3, 2, 2, 2, 32),
    # the column matrix passes 2^31 entries while the input does not
    ((4, 64, 1024, 1024), 3, 1, 1, 1, 64),
    # both do: input indices past 2^31 too
    ((9, 256, 1024, 1024), 3, 1, 1, 1, 64),
    ((3, 1, 40000, 40000), 2, 2, 0, 1, 64),
])
def test_conv_index_width_and_arithmetic(x_shape, k, s, p, d, bits):
    """im2col/col2im index in int64 exactly when an index could pass int32,
    and the kernel's own index arithmetic then finds the right input element
    for entries past 2^31."""
    rng = np.random.default_rng(0)
    total, entries = column_entries(x_shape, k, s, p, d, 200, rng)
    assert (total > INT32_MAX or math.prod(x_shape) > INT32_MAX) == (bits == 64)
    for e in entries:
        got_bits, got = kern._im2col_source(list(x_shape), k, k, s, s, p, p, d, d, e)
        assert got_bits == bits
        assert got == im2col_source(x_shape, k, s, p, d, e), e
    if bits == 64:  # the entries checked do reach past int32
        assert max(entries) > INT32_MAX


def test_conv_index_hook_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'e'"):
        kern._im2col_source([1, 1, 4, 4], 3, 3, 1, 1, 0, 0, 1, 1, 36)  # 9 rows x 2x2 outputs
    with pytest.raises(ValueError, match="sh"):
        kern._im2col_source([1, 1, 4, 4], 3, 3, 0, 1, 0, 0, 1, 1, 0)


@pytest.mark.parametrize("x_shape, y_shape, bits", [
    ((2, 3, 9, 8), (2, 3, 4, 4), 32),
    # the input passes 2^31 elements while the output does not
    ((1, 2100, 1024, 1024), (1, 2100, 512, 512), 64),
    ((4, 3000, 1024, 1024), (4, 3000, 512, 512), 64),
])
def test_pool_index_width(x_shape, y_shape, bits):
    assert kern._pool_index_bits(list(x_shape), list(y_shape), 2, 2, 2, 2, 0, 0, 1, 1) == bits


@pytest.mark.parametrize("binding", ["softmax_forward", "cross_entropy_forward"])
def test_row_kernels_refuse_more_rows_than_a_grid_holds(binding):
    """Past 4 (2^31 - 1) rows a warp-per-row grid would not fit: the binding
    says so before any launch. The rows are a strided view of 4 bytes, so
    nothing of the 34 GB it claims exists; only the shape is read. (The other
    arguments are wrong too, so that without the check a later one is refused,
    and still nothing runs.)"""
    rows = WARP_ROWS * GRID_X_MAX + 1
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (rows, 1), (4, 4))
    small = np.zeros((1, 1), np.float32)
    args = {"softmax_forward": (x, small, 1.0, False, 0),
            "cross_entropy_forward": (x, small, small, small, small, -100, 0.0, small, 0)}[binding]
    with pytest.raises(ValueError, match=r"argument '(x|logits)': more than 8589934588 rows"):
        getattr(kern, binding)(*args)


def divisors_and_numerators(rng):
    """Every divisor up to 4096, then powers of two and their neighbours, large
    and random ones up to INT32_MAX; for each, numerators at the edges (0, 1,
    INT32_MAX and its neighbours), around multiples of the divisor and at random."""
    small = np.arange(1, 4097)
    powers = np.array([2**k + o for k in range(12, 31) for o in (-1, 0, 1)] + [INT32_MAX - 1, INT32_MAX])
    ds = np.concatenate([small, powers, rng.integers(4097, INT32_MAX, 2000, endpoint=True)])
    for d in ds.tolist():
        k = rng.integers(0, INT32_MAX // d + 1, 8, endpoint=False)
        near = np.concatenate([k * d - 1, k * d, k * d + 1, [INT32_MAX // d * d - 1, INT32_MAX // d * d]])
        edges = [0, 1, 2, d - 1, d, d + 1, INT32_MAX - 1, INT32_MAX]
        n = np.concatenate([edges, near, rng.integers(0, INT32_MAX, 16, endpoint=True)])
        yield d, n[(n >= 0) & (n <= INT32_MAX)].astype(np.int32)


def test_fast_division_is_exact():
    """The kernels' multiply-shift division (common/fastdiv.cuh), run in a
    kernel, against exact division: every divisor up to 4096 and 2,000+
    others, each with edge, near-multiple and random numerators (one launch
    per divisor)."""
    rng = np.random.default_rng(0)
    for d, n in divisors_and_numerators(rng):
        q, r = np.empty_like(n), np.empty_like(n)
        kern._divmod_int32(n, q, r, d, 0)
        np.testing.assert_array_equal(q, n // d, err_msg=f"d={d}")
        np.testing.assert_array_equal(r, n % d, err_msg=f"d={d}")


def test_fast_division_hook_rejects_bad_arguments():
    n = np.arange(4, dtype=np.int32)
    with pytest.raises(ValueError, match="'d'"):
        kern._divmod_int32(n, np.empty_like(n), np.empty_like(n), 0, 0)
    with pytest.raises(TypeError, match="'n'.*int32"):
        kern._divmod_int32(n.astype(np.int64), np.empty_like(n), np.empty_like(n), 3, 0)
