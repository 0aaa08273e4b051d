/* Host (cpu backend) float32 loops NumPy cannot fuse: GELU (erf and tanh
 * forms) forward and derivative, layer norm forward and backward, the
 * Adam/AdamW update, softmax rows and attention's dS, batch norm statistics,
 * forward and backward, average and max pooling, ReLU forward and backward, the
 * embedding backward, a GEMM, the LSTM's steps, the convolution's row-layout
 * im2col/col2im, its direct forward (also a stride-1 dx) and direct weight
 * gradient (the places that ask for fused multiply-adds: see there),
 * cross-entropy rows, and the inputs' NaN/inf scan; and the thread pool
 * that runs their ranges and OpenBLAS's parallel jobs (at the end).
 *
 * Plain C11, C ABI, contiguous float32 arrays, int64 counts. Each function
 * does one range of the work; gpunet/ops/host_threads.py splits the ranges
 * over its threads (ctypes releases the GIL during a call) or hands them to
 * the pool at the end of this file in one call. Compiled on first
 * use by gpunet/hostlib.py with -O3 -march=native -ffp-contract=off
 * -fno-math-errno and never -ffast-math: NaN/inf keep IEEE semantics, no
 * a*b+c is fused behind our back (only the polynomials ask for fmaf, below;
 * so Adam matches the NumPy path bit for bit), and
 * reductions are written with explicit lanes so GCC vectorises them without
 * reassociating anything (results do not depend on the vector width). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime: the BLAS pool's spin */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

/* a*b + c in the polynomials (exp's and Phi's R): one fused, more accurate
 * operation where the target has a fast fmaf (30% off GELU's time here);
 * everything else is plain float32 operations as NumPy rounds them */
#ifdef FP_FAST_FMAF
#define MADD(a, b, c) fmaf(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

/* ------------------------------------------------------------ exp */
static inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* the exps' reduction: log2(e), ln 2 in two parts (LN2_HI has few enough
 * bits that k·LN2_HI is exact for |k| < 2^9), and 1.5·2^23 (adding it
 * rounds to an integer kept in the low mantissa bits) */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693145751953125f
#define EXP_LN2_LO 1.42860682030941723e-6f
#define EXP_ROUND 12582912.0f

/* e^r for |r| <= 0.35: Taylor to degree 7, Horner */
static inline float exp_poly(float r)
{
    float p = 1.0f / 5040.0f;
    p = MADD(p, r, 1.0f / 720.0f);
    p = MADD(p, r, 1.0f / 120.0f);
    p = MADD(p, r, 1.0f / 24.0f);
    p = MADD(p, r, 1.0f / 6.0f);
    p = MADD(p, r, 0.5f);
    p = MADD(p, r, 1.0f);
    return MADD(p, r, 1.0f);
}

/* e^x in float32, branch free so loops calling it vectorise (glibc's expf
 * does not without -ffast-math): x = k ln2 + r with k = round(x/ln2) and r
 * from a two-part ln2 (Cody-Waite: k·LN2_HI is exact for |k| < 2^9),
 * e^r by its Taylor polynomial to degree 7 (|r| <= 0.35: truncation below
 * 6e-9 relative), then the exponent through integer bits. x is clamped to
 * [-104, 89] (e^-104 rounds to 0, e^89 overflows) with compares that keep a
 * NaN, and 2^k is applied as two factors so subnormal and infinite results
 * are rounded once. */
static inline float exp_f32(float x)
{
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    float kr = x * EXP_LOG2E + EXP_ROUND;
    uint32_t kbits = float_to_bits(kr);
    float k = kr - EXP_ROUND;
    float r = x - k * EXP_LN2_HI;
    r = r - k * EXP_LN2_LO;
    float p = exp_poly(r);
    /* k in [-150, 129] sits in kbits' low bits as two's complement (the
     * mantissa of 1.5·2^23 + k); split it into k1 + k2, each a normal 2^k */
    int32_t ki = (int32_t)(kbits - float_to_bits(EXP_ROUND));
    int32_t k1 = ki >> 1, k2 = ki - k1; /* a shift, not ki / 2: no rounding toward 0 to fix up (~10% of the exp) */
    float s1 = bits_to_float((uint32_t)(k1 + 127) << 23), s2 = bits_to_float((uint32_t)(k2 + 127) << 23);
    return p * s1 * s2;
}

void gpunet_exp_f32(const float *x, float *y, i64 n)
{
    for (i64 i = 0; i < n; i++) y[i] = exp_f32(x[i]);
}

/* ------------------------------------------------------------ GELU */
/* The NumPy path's Phi (gpunet/ops/activation.py, _phi_blocks), element by
 * element in the same float32 operations: with a = min(|x|, 20),
 *   Phi(-|x|) = sqrt2/(2 sqrt2 + a) · exp(-x^2/2 + R(u)),  u = (2 sqrt2 - a)/(2 sqrt2 + a),
 * -x^2/2 split as -h^2/2 + lo with h = a cut to 12 mantissa bits (h^2 exact).
 * R's coefficients are passed in (the Python module owns the fit). */
#define PHI_DEGREE 11
#define TWO_SQRT_2 2.82842712474619010f
#define SQRT_2 1.41421356237309515f
#define PHI_CLAMP 20.0f

static inline float clamp_abs(float x)
{
    float a = fabsf(x);
    return a > PHI_CLAMP ? PHI_CLAMP : a; /* a NaN stays NaN */
}

/* e^(a + b) for a + b <= 88 where a = -h^2/2 is exact and large and b is
 * small: the reduction takes a - k·LN2_HI exactly (Sterbenz: both near a),
 * so the large exponent is never rounded into a float with b; results
 * below e^-104 are 0 (a NaN stays NaN). One exp where hi·exp(lo) took two. */
static inline float exp_sum_f32(float a, float b)
{
    float x = a + b;
    float xc = x < -104.0f ? -104.0f : x;
    float kr = xc * EXP_LOG2E + EXP_ROUND;
    uint32_t kbits = float_to_bits(kr);
    float k = kr - EXP_ROUND;
    float r = a - k * EXP_LN2_HI;
    r = r + b;
    r = r - k * EXP_LN2_LO;
    float p = exp_poly(r);
    int32_t ki = (int32_t)(kbits - float_to_bits(EXP_ROUND));
    int32_t k1 = ki / 2, k2 = ki - k1;
    float e = p * bits_to_float((uint32_t)(k1 + 127) << 23) * bits_to_float((uint32_t)(k2 + 127) << 23);
    return x < -104.0f ? 0.0f : e;
}

/* e^(-a^2/2 + b): -a^2/2 split as -h^2/2 (exact: h = a cut to 12 mantissa
 * bits) plus -(a - h)(a + h)/2, which joins b */
static inline float exp_half_square(float a, float b)
{
    float h = bits_to_float(float_to_bits(a) & 0xFFFFF000u);
    float l = a - h;
    l = l * (a + h);
    l = l * -0.5f;
    float hh = h * h;
    return exp_sum_f32(hh * -0.5f, l + b);
}

static inline float phi_f32(float x, const float *R)
{
    float a = clamp_abs(x);
    float d = TWO_SQRT_2 + a;
    float u = (TWO_SQRT_2 - a) / d;
    float pre = SQRT_2 / d;
    float p = R[0];
    for (int c = 1; c <= PHI_DEGREE; c++) p = MADD(p, u, R[c]);
    p = exp_half_square(a, p);
    p = p * pre;                      /* Phi(-|x|) */
    return x < 0.0f ? p : 1.0f - p;
}

void gpunet_gelu_f32(const float *x, float *y, const float *R, i64 lo, i64 hi)
{
    float r[PHI_DEGREE + 1];
    memcpy(r, R, sizeof r);
    for (i64 i = lo; i < hi; i++) y[i] = x[i] * phi_f32(x[i], r);
}

/* Phi(x) + x·phi(x) with Phi taken as y/x from the forward's y = x·Phi(x);
 * 0.5 where |x| is below the smallest normal float (as the NumPy path).
 * With dy (else NULL): dy times that, the backward's product in the same pass. */
void gpunet_gelu_derivative_f32(const float *x, const float *y, const float *dy, float *out, i64 lo, i64 hi)
{
    const float INV_SQRT_2PI = 0.398942280401432678f, TINY = 1.17549435e-38f;
    for (i64 i = lo; i < hi; i++) {
        float xi = x[i];
        float pdf = exp_half_square(clamp_abs(xi), 0.0f);
        pdf = pdf * INV_SQRT_2PI;
        pdf = pdf * xi;
        float cdf = fabsf(xi) < TINY ? 0.5f : y[i] / xi;
        float d = cdf + pdf;
        out[i] = dy ? dy[i] * d : d;
    }
}

/* ------------------------------------------------------------ layer norm */
/* Row sums in double over LANES independent lanes (vectorised without
 * reassociation, enough lanes for several vector accumulators), the lanes
 * then added in a fixed order. */
#define LANES 32

static double lanes_total(const double *acc)
{
    double s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    return s;
}

static double row_sum(const float *x, i64 n)
{
    double acc[LANES] = {0};
    i64 i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += (double)x[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += (double)x[i];
    return lanes_total(acc);
}

/* sum of (x - c)^2 */
static double row_sq_dev(const float *x, float c, i64 n)
{
    double acc[LANES] = {0};
    i64 i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) { double d = (double)(x[i + j] - c); acc[j] += d * d; }
    for (int j = 0; i < n; i++, j++) { double d = (double)(x[i] - c); acc[j] += d * d; }
    return lanes_total(acc);
}

/* sum of a and sum of a·b in one pass */
static void row_sum_dot(const float *a, const float *b, i64 n, double *sum, double *dot)
{
    double s[LANES] = {0}, d[LANES] = {0};
    i64 i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            s[j] += (double)a[i + j];
            d[j] += (double)a[i + j] * (double)b[i + j];
        }
    for (int j = 0; i < n; i++, j++) {
        s[j] += (double)a[i];
        d[j] += (double)a[i] * (double)b[i];
    }
    *sum = lanes_total(s);
    *dot = lanes_total(d);
}

/* rows [0, m) of x (m, c): mean and rstd per row (the variance from the
 * deviations of the rounded mean, both sums in double, each statistic
 * rounded once), y = ((x - mean)·rstd)·w + b in float32; w, b may be NULL
 * (no product, no sum: y keeps a -0.0). Returns 1 when a row held a NaN or
 * an infinity: exactly when its sum in double is not finite (float32 values
 * cannot overflow it), so the callers' input scan costs no pass of its own. */
static int layer_norm_rows(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd, i64 m,
                           i64 c, double eps)
{
    int nonfinite = 0;
    for (i64 r = 0; r < m; r++) {
        const float *xr = x + r * c;
        float *yr = y + r * c;
        const double sum = row_sum(xr, c);
        nonfinite |= !isfinite(sum);
        float mu = (float)(sum / (double)c);
        float rs = (float)(1.0 / sqrt(row_sq_dev(xr, mu, c) / (double)c + eps));
        mean[r] = mu;
        rstd[r] = rs;
        if (w && b) {
            for (i64 j = 0; j < c; j++) yr[j] = (xr[j] - mu) * rs * w[j] + b[j];
            continue;
        }
        for (i64 j = 0; j < c; j++) yr[j] = (xr[j] - mu) * rs;
        if (w)
            for (i64 j = 0; j < c; j++) yr[j] = yr[j] * w[j];
        if (b)
            for (i64 j = 0; j < c; j++) yr[j] = yr[j] + b[j];
    }
    return nonfinite;
}

/* rows [0, m): with xhat = (x - mean)·rstd and g = dy·w,
 *   dx = rstd·g - (rstd·mean(g·xhat))·xhat - rstd·mean(g);
 * dw_part[j] = sum over these rows of dy·xhat and db_part[j] of dy, in
 * double (the caller sums the blocks' parts in block order). w is ones for
 * a layer without weight; g (c floats) is scratch. xhat is built in dx's
 * memory, then overwritten. No two arrays overlap (restrict: the fused
 * first loop vectorises without alias checks). */
void gpunet_layer_norm_backward_f32(const float *restrict x, const float *restrict w, const float *mean,
                                    const float *rstd, const float *restrict dy, float *restrict dx,
                                    double *restrict dw_part, double *restrict db_part, i64 m, i64 c,
                                    float *restrict g)
{
    memset(dw_part, 0, (size_t)c * sizeof(double));
    memset(db_part, 0, (size_t)c * sizeof(double));
    for (i64 r = 0; r < m; r++) {
        const float *xr = x + r * c, *dyr = dy + r * c;
        float *xh = dx + r * c, mu = mean[r], rs = rstd[r];
        for (i64 j = 0; j < c; j++) {
            float h = (xr[j] - mu) * rs;
            xh[j] = h;
            dw_part[j] += (double)dyr[j] * (double)h;
            db_part[j] += (double)dyr[j];
            g[j] = dyr[j] * w[j];
        }
        double g_sum, gx_sum;
        row_sum_dot(g, xh, c, &g_sum, &gx_sum);
        float g_mean = (float)(g_sum / (double)c), gx_mean = (float)(gx_sum / (double)c);
        float a = rs * gx_mean, b = rs * g_mean;
        for (i64 j = 0; j < c; j++) xh[j] = (g[j] * rs - xh[j] * a) - b;
    }
}

/* the two above in gpunet_run_ranges's call shape. Forward: rows [lo, hi),
 * eps's double bits in an int64, 1 when a row held a NaN or an infinity.
 * Backward: row blocks [lo, hi) of `rows`
 * rows each (the last one shorter), block i's dw and db partial sums in
 * parts[i] (2 x c doubles), the scratch allocated here: 1 when it cannot be. */
int gpunet_layer_norm_forward_range_f32(const float *x, const float *w, const float *b, float *y, float *mean,
                                        float *rstd, i64 c, i64 eps_bits, i64 lo, i64 hi)
{
    double eps;
    memcpy(&eps, &eps_bits, sizeof eps);
    return layer_norm_rows(x + lo * c, w, b, y + lo * c, mean + lo, rstd + lo, hi - lo, c, eps);
}

int gpunet_layer_norm_backward_range_f32(const float *x, const float *w, const float *mean, const float *rstd,
                                         const float *dy, float *dx, double *parts, i64 m, i64 c, i64 rows, i64 lo,
                                         i64 hi)
{
    float *g = malloc((size_t)c * sizeof(float));
    if (!g)
        return 1;
    for (i64 i = lo; i < hi; i++) {
        const i64 r = i * rows, n = m - r < rows ? m - r : rows;
        gpunet_layer_norm_backward_f32(x + r * c, w, mean + r, rstd + r, dy + r * c, dx + r * c, parts + 2 * i * c,
                                       parts + (2 * i + 1) * c, n, c, g);
    }
    free(g);
    return 0;
}

/* ------------------------------------------------------------ Adam / AdamW */
/* One range of one tensor, the NumPy path's operations in its order (every
 * scalar already rounded to float32 as NumPy does with a Python float):
 *   mode 1 (AdamW): p *= shrink;  mode 2 (Adam with L2): g += wd·p
 *   m += (g - m)·(1 - b1);  v = v·b2 + (g·(1 - b2))·g;  amsgrad: vmax = max(vmax, v), v := vmax
 *   p -= (m / (sqrt(v)/bc2_sqrt + eps))·step_size
 * vmax may be NULL. np.maximum's NaN propagation is kept. */
static void adam_loop(float *p, const float *g, float *m, float *v, float *vmax, i64 n, i64 mode, float shrink,
                      float wd, float omb1, float b2, float omb2, float bc2_sqrt, float eps, float step_size)
{
    for (i64 i = 0; i < n; i++) {
        float pi = p[i], gi = g[i];
        if (mode == 1) pi = pi * shrink;
        else if (mode == 2) gi = gi + wd * pi;
        float mi = m[i] + (gi - m[i]) * omb1;
        float t = gi * omb2;
        float vi = v[i] * b2 + t * gi;
        m[i] = mi;
        v[i] = vi;
        if (vmax) {
            float a = vmax[i];
            vi = (a >= vi || a != a) ? a : vi;
            vmax[i] = vi;
        }
        float d = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - (mi / d) * step_size;
    }
}

/* Adam over `count` tensors laid end to end, elements [lo, hi) of them (the
 * pool's call shape: one call a step for every tensor, split by elements).
 * Tensor t: table[6t .. 6t+4] the addresses of p, g, m, v and vmax (0:
 * none), table[6t+5] its size, per[2t] and per[2t+1] its sqrt(bias
 * correction 2) and step size; coef: 1 - lr wd, wd, 1 - b1, b2, 1 - b2, eps */
void gpunet_adam_f32(const i64 *table, const float *coef, const float *per, i64 count, i64 mode, i64 lo, i64 hi)
{
    i64 start = 0;
    for (i64 t = 0; t < count && start < hi; start += table[6 * t + 5], t++) {
        const i64 *e = table + 6 * t, n = e[5], a = lo > start ? lo - start : 0, b = hi - start < n ? hi - start : n;
        if (a >= b)
            continue;
        float *vmax = e[4] ? (float *)(intptr_t)e[4] + a : NULL;
        adam_loop((float *)(intptr_t)e[0] + a, (const float *)(intptr_t)e[1] + a, (float *)(intptr_t)e[2] + a,
                  (float *)(intptr_t)e[3] + a, vmax, b - a, mode, coef[0], coef[1], coef[2], coef[3], coef[4],
                  per[2 * t], coef[5], per[2 * t + 1]);
    }
}

/* ------------------------------------------------------------ softmax rows */
/* rows [0, m) of x (m, n): y = e^{beta (x - s)} / sum, s the row's max
 * (beta >= 0) or min (beta < 0), as gpunet/ops/softmax.py's NumPy path
 * computes it: the shift on x itself (beta (x - s) <= 0 never overflows),
 * one exp per element stored in y, the sum over LANES lanes (exp_sum: so
 * the result does not depend on the vector width or on how rows are split
 * over threads), one multiplication by 1/sum. A NaN anywhere in the row, or an
 * infinite shift (inf - inf), makes the whole row NaN as in NumPy; e^z below
 * the float32 range is 0. The row is read twice and y written and reread
 * once, all while it sits in the core's cache. */
static inline float pick(float a, float b, int want_max) { return (want_max ? b > a : b < a) ? b : a; }

/* The lanes are folded as a tree (halves added pairwise, a fixed order):
 * a sequential fold is a chain of LANES dependent operations per row,
 * which on rows of 64 or 128 costs as much as the row's exps; the tree's
 * loop is unrolled so each width is a constant and GCC folds the halves in
 * vector registers (as a loop they went through the stack one float at a
 * time: rows of 128 took 12% longer). *nonfinite
 * (may be NULL) is set when the row holds a NaN or an infinity: the
 * callers' NaN/inf input scan rides this first read of the row. */
static float row_extreme(const float *x, i64 n, int want_max, int *nonfinite)
{
    float acc[LANES];
    int bad = 0; /* a NaN or an infinity: one compare per element, the row rescanned for a NaN when set */
    for (int j = 0; j < LANES; j++) acc[j] = x[0];
    i64 i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            bad |= !(fabsf(x[i + j]) <= FLT_MAX);
            acc[j] = pick(acc[j], x[i + j], want_max);
        }
    for (int j = 0; i < n; i++, j++) {
        bad |= !(fabsf(x[i]) <= FLT_MAX);
        acc[j] = pick(acc[j], x[i], want_max);
    }
#pragma GCC unroll 8
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) acc[j] = pick(acc[j], acc[j + w], want_max);
    if (bad) {
        if (nonfinite)
            *nonfinite = 1;
        for (i = 0; i < n; i++)
            if (x[i] != x[i])
                return NAN;
    }
    return acc[0];
}

static double lanes_tree(double *acc)
{
#pragma GCC unroll 8
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

/* sum_k e^{beta (x_k - s)} over a row, each term also stored in y when
 * `store` (log: beta (x - s) stored instead). The sum: float lanes over a
 * block of EXP_BLOCK·LANES elements, the blocks' lanes added in double, the
 * lanes then folded as a tree. Within a block every lane adds at most
 * EXP_BLOCK terms (relative error below EXP_BLOCK·2^-24, about 2e-6 at worst,
 * against about 0.6 ulp of a sum in double lanes); summing every term in
 * double instead costs a conversion and two more additions per 16
 * elements: the exps run 25% slower. Inlined so the constant arguments
 * (beta = 1, no log, store) drop their branches from the vector loop. */
#define EXP_BLOCK 32
static inline __attribute__((always_inline)) double exp_sum(const float *restrict xr, float *restrict yr, i64 n,
                                                            float s, float beta, int log, int store)
{
    double total[LANES] = {0};
    float acc[LANES];
    i64 i = 0;
#define EXP_TERM(k, j)                                                  \
    {                                                                   \
        float z = xr[k] - s;                                            \
        if (beta != 1.0f) z = z * beta;                                 \
        float e = exp_f32(z);                                           \
        if (store) yr[k] = log ? z : e;                                 \
        acc[j] += e;                                                    \
    }
    while (i < n) {
        const i64 end = n - i > EXP_BLOCK * LANES ? i + EXP_BLOCK * LANES : n;
        for (int j = 0; j < LANES; j++) acc[j] = 0.0f;
        for (; i + LANES <= end; i += LANES)
            for (int j = 0; j < LANES; j++) EXP_TERM(i + j, j)
        for (int j = 0; i < end; i++, j++) EXP_TERM(i, j)
        for (int j = 0; j < LANES; j++) total[j] += acc[j];
    }
#undef EXP_TERM
    return lanes_tree(total);
}

/* the row's e^{beta (x - s)} into y and their sum: softmax's common case
 * (beta = 1, no log) compiled on its own */
static double row_exp_sum(const float *restrict xr, float *restrict yr, i64 n, float s, float beta, int log)
{
    if (beta == 1.0f && !log)
        return exp_sum(xr, yr, n, s, 1.0f, 0, 1);
    return exp_sum(xr, yr, n, s, beta, log, 1);
}

/* one row's normalisation from its sum */
static void row_normalise(float *yr, i64 keep, double sum, int log, int masked)
{
    if (log) {
        float l = logf((float)sum);
        for (i64 k = 0; k < keep; k++) yr[k] = yr[k] - l;
    } else {  /* as accurate as yr[k] / (float)sum: 1/sum is rounded once as (float)sum is */
        float inv = masked && !(sum > 0) ? 1.0f : (float)(1.0 / sum);
        for (i64 k = 0; k < keep; k++) yr[k] = yr[k] * inv;
    }
}

/* log: y = beta (x - s) - log(sum), NumPy's log-softmax path. masked
 * (attention's scores, gpunet/ops/attention.py): a non-finite shift is taken
 * as 0 and a row whose sum is not positive is left unnormalised, so a row of
 * -inf (every key masked) gives zeros. causal > 0 (with masked): the rows
 * are queries of (causal, n) score matrices, row0 the first one's index, and
 * query i keeps keys j <= i only, the others read as -inf (y = 0) without
 * the caller writing a mask. */
int gpunet_softmax_rows_f32(const float *restrict x, float *restrict y, i64 m, i64 n, float beta, int log,
                            int masked, i64 causal, i64 row0)
{
    int nonfinite = 0;
    i64 r = 0;
    if (causal <= 0) /* rows in pairs: one row's max and sum trees and division overlap the other's loops */
        for (; r + 2 <= m; r += 2) {
            const float *x0 = x + r * n, *x1 = x0 + n;
            float *y0 = y + r * n, *y1 = y0 + n;
            float s0 = row_extreme(x0, n, beta >= 0.0f, &nonfinite);
            float s1 = row_extreme(x1, n, beta >= 0.0f, &nonfinite);
            if (masked && !isfinite(s0)) s0 = 0.0f;
            if (masked && !isfinite(s1)) s1 = 0.0f;
            double sum0 = row_exp_sum(x0, y0, n, s0, beta, log), sum1 = row_exp_sum(x1, y1, n, s1, beta, log);
            row_normalise(y0, n, sum0, log, masked);
            row_normalise(y1, n, sum1, log, masked);
        }
    for (; r < m; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        i64 keep = causal > 0 && (row0 + r) % causal + 1 < n ? (row0 + r) % causal + 1 : n;
        float s = row_extreme(xr, keep, beta >= 0.0f, &nonfinite);
        if (masked && !isfinite(s)) s = 0.0f;
        row_normalise(yr, keep, row_exp_sum(xr, yr, keep, s, beta, log), log, masked);
        if (keep < n) /* causal rows only: a call per row costs 3% of rows of 128 */
            memset(yr + keep, 0, (size_t)(n - keep) * sizeof(float));
    }
    return nonfinite;
}

/* rows [lo, hi) of (rows, n) x, the pool's call shape (gpunet_run_ranges):
 * beta's float32 bits in an int64, flags = log | masked << 1. Both return 1
 * when a row (its kept keys) held a NaN or an infinity. */
int gpunet_softmax_range_f32(const float *x, float *y, i64 n, i64 beta_bits, i64 flags, i64 causal, i64 lo, i64 hi)
{
    uint32_t bits = (uint32_t)beta_bits;
    float beta;
    memcpy(&beta, &bits, sizeof beta);
    return gpunet_softmax_rows_f32(x + lo * n, y + lo * n, hi - lo, n, beta, (int)(flags & 1), (int)(flags >> 1 & 1),
                                   causal, lo);
}

/* ------------------------------------------------------------ attention backward */
/* rows [0, m) of attention's score gradient, in dp's memory (m, n):
 *   ds = (p·(dp - delta))·scale,  delta = sum_j dout·out over the row's ev
 * output features (= rowsum(dp·p), gpunet/ops/attention.py), summed in
 * double over LANES lanes folded as a tree; scale is applied here so the
 * two GEMMs after it need no pass of their own. */
void gpunet_attention_ds_f32(const float *restrict p, float *restrict dp, const float *restrict dout,
                             const float *restrict out, i64 m, i64 n, i64 ev, float scale)
{
    for (i64 r = 0; r < m; r++) {
        const float *dor = dout + r * ev, *outr = out + r * ev, *pr = p + r * n;
        float *dpr = dp + r * n;
        double acc[LANES] = {0};
        i64 i = 0;
        for (; i + LANES <= ev; i += LANES)
            for (int j = 0; j < LANES; j++) acc[j] += (double)dor[i + j] * (double)outr[i + j];
        for (int j = 0; i < ev; i++, j++) acc[j] += (double)dor[i] * (double)outr[i];
        float delta = (float)lanes_tree(acc);
        for (i64 k = 0; k < n; k++) dpr[k] = (pr[k] * (dpr[k] - delta)) * scale;
    }
}

/* ------------------------------------------------------------ GELU, tanh form */
/* 0.5·x·(1 + tanh(u)), u = sqrt(2/pi)·(x + 0.044715·x^3) (gpunet/ops/activation.py),
 * as x·s with s = sigmoid(2u) = (1 + tanh(u))/2: one exp of -2|u| (never
 * overflows) gives s and 1 - s without cancellation, so the result stays
 * accurate where 1 + tanh(u) is tiny (x well below 0). The derivative
 *   0.5(1 + tanh u) + 0.5·x·(1 - tanh^2 u)·u' = s + 2x·s(1 - s)·u',
 * u' = sqrt(2/pi)·(1 + 3·0.044715·x^2), times dy when dy is given. */
#define GELU_K 0.797884560802865356f /* sqrt(2/pi) */
#define GELU_C 0.044715f

/* s = sigmoid(2u) and 1 - s */
static inline void gelu_tanh_sigmoid(float x, float *s, float *sm)
{
    float u = ((GELU_C * x) * x) * x;
    u = (x + u) * GELU_K;
    float e = exp_f32(-2.0f * fabsf(u));
    float q = 1.0f / (1.0f + e);
    float eq = e * q;
    *s = u >= 0.0f ? q : eq;
    *sm = u >= 0.0f ? eq : q;
}

void gpunet_gelu_tanh_f32(const float *restrict x, float *restrict y, i64 lo, i64 hi)
{
    for (i64 i = lo; i < hi; i++) {
        float s, sm;
        gelu_tanh_sigmoid(x[i], &s, &sm);
        y[i] = x[i] * s;
    }
}

void gpunet_gelu_tanh_derivative_f32(const float *restrict x, const float *restrict dy, float *restrict out, i64 lo,
                                     i64 hi)
{
    for (i64 i = lo; i < hi; i++) {
        float xi = x[i], s, sm;
        gelu_tanh_sigmoid(xi, &s, &sm);
        float du = ((3.0f * GELU_C) * xi) * xi;
        du = (1.0f + du) * GELU_K;
        float d = s + ((2.0f * xi) * (s * sm)) * du;
        out[i] = dy ? dy[i] * d : d;
    }
}

/* ------------------------------------------------------------ batch norm */
/* x (n, c, inner) contiguous; channels [c_lo, c_hi) of it, each channel done
 * whole by one call (its n runs of `inner` values), so a split of the
 * channels over threads changes no bit. A channel's runs are read back to
 * back by the passes below: the second pass finds them in cache. */

/* per channel: mean = sum/count and the biased variance sum((x - mean)^2)/count
 * around the rounded mean, both sums in double, each statistic rounded once
 * (the NumPy path's formula, with its float32 per-image sums now in double) */
void gpunet_batch_norm_stats_f32(const float *x, float *mean, float *var, i64 n, i64 c, i64 inner, i64 c_lo,
                                 i64 c_hi)
{
    double count = (double)(n * inner);
    for (i64 ch = c_lo; ch < c_hi; ch++) {
        double s = 0, ss = 0;
        for (i64 i = 0; i < n; i++) s += row_sum(x + (i * c + ch) * inner, inner);
        float mu = (float)(s / count);
        for (i64 i = 0; i < n; i++) ss += row_sq_dev(x + (i * c + ch) * inner, mu, inner);
        mean[ch] = mu;
        var[ch] = (float)(ss / count);
    }
}

/* y = (x - mean)·scale + bias per channel (bias may be NULL), in float32 in
 * that order, as the NumPy path rounds it */
void gpunet_batch_norm_forward_f32(const float *restrict x, float *restrict y, const float *mean,
                                   const float *scale, const float *bias, i64 n, i64 c, i64 inner, i64 c_lo,
                                   i64 c_hi)
{
    for (i64 ch = c_lo; ch < c_hi; ch++) {
        float mu = mean[ch], s = scale[ch], b = bias ? bias[ch] : 0.0f;
        for (i64 i = 0; i < n; i++) {
            const float *xr = x + (i * c + ch) * inner;
            float *yr = y + (i * c + ch) * inner;
            if (bias)
                for (i64 j = 0; j < inner; j++) yr[j] = (xr[j] - mu) * s + b;
            else
                for (i64 j = 0; j < inner; j++) yr[j] = (xr[j] - mu) * s;
        }
    }
}

/* Training-mode backward per channel, with xhat = (x - mean)·rstd:
 *   pass 1: dy_sum = sum(dy), dyx_sum = sum(dy·xhat) (double, into the
 *           caller's arrays: db and dw);
 *   pass 2: dx = ((dy - xhat·k1) - k2)·w_rstd, k1 = f32(dyx_sum)/count and
 *           k2 = f32(dy_sum)/count rounded to float32 as the NumPy path does. */
void gpunet_batch_norm_backward_f32(const float *restrict x, const float *restrict dy, float *restrict dx,
                                    const float *mean, const float *rstd, const float *w_rstd,
                                    double *dy_sum, double *dyx_sum, i64 n, i64 c, i64 inner, i64 c_lo,
                                    i64 c_hi)
{
    float count = (float)(n * inner);
    for (i64 ch = c_lo; ch < c_hi; ch++) {
        float mu = mean[ch], rs = rstd[ch], wr = w_rstd[ch];
        double s[LANES] = {0}, d[LANES] = {0};
        for (i64 i = 0; i < n; i++) {
            const float *xr = x + (i * c + ch) * inner, *dr = dy + (i * c + ch) * inner;
            i64 j = 0;
            for (; j + LANES <= inner; j += LANES)
                for (int l = 0; l < LANES; l++) {
                    float h = (xr[j + l] - mu) * rs;
                    s[l] += (double)dr[j + l];
                    d[l] += (double)dr[j + l] * (double)h;
                }
            for (int l = 0; j < inner; j++, l++) {
                float h = (xr[j] - mu) * rs;
                s[l] += (double)dr[j];
                d[l] += (double)dr[j] * (double)h;
            }
        }
        dy_sum[ch] = lanes_total(s);
        dyx_sum[ch] = lanes_total(d);
        float k1 = (float)dyx_sum[ch] / count, k2 = (float)dy_sum[ch] / count;
        for (i64 i = 0; i < n; i++) {
            const float *xr = x + (i * c + ch) * inner, *dr = dy + (i * c + ch) * inner;
            float *out = dx + (i * c + ch) * inner;
            for (i64 j = 0; j < inner; j++) {
                float h = (xr[j] - mu) * rs;
                out[j] = ((dr[j] - h * k1) - k2) * wr;
            }
        }
    }
}

/* ------------------------------------------------------------ average pooling */
/* planes (P, H, W) contiguous -> (P, OH, OW), each plane on its own (a split
 * of the planes over threads changes no bit), in the NumPy path's order:
 * the plane zero-padded to (HP, WP), each window summed in row-major tap
 * order starting from its first tap, divided by PyTorch's divisor (the
 * window clipped to the padded input, and to the input without
 * count_include_pad). Scratch: pad (HP·WP floats; the forward does not use
 * it when HP = H and WP = W) and div (OH·OW floats, the divisors). Loops run
 * tap by tap over a row of outputs, so they vectorise over the row. */
static void avg_divisors(float *div, i64 H, i64 W, i64 OH, i64 OW, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph,
                         i64 pw, int include_pad)
{
    for (i64 o = 0; o < OH; o++) {
        i64 h0 = o * sh - ph, h1 = h0 + kh < H + ph ? h0 + kh : H + ph;
        if (!include_pad) h0 = h0 > 0 ? h0 : 0, h1 = h1 < H ? h1 : H;
        for (i64 o2 = 0; o2 < OW; o2++) {
            i64 w0 = o2 * sw - pw, w1 = w0 + kw < W + pw ? w0 + kw : W + pw;
            if (!include_pad) w0 = w0 > 0 ? w0 : 0, w1 = w1 < W ? w1 : W;
            div[o * OW + o2] = (float)((h1 - h0) * (w1 - w0));
        }
    }
}

/* the plane x (H, W) into pad (HP, WP) at (ph, pw), zeros around it */
static void pad_plane(const float *x, float *pad, i64 H, i64 W, i64 HP, i64 WP, i64 ph, i64 pw)
{
    memset(pad, 0, (size_t)(HP * WP) * sizeof(float));
    for (i64 h = 0; h < H; h++) memcpy(pad + (h + ph) * WP + pw, x + h * W, (size_t)W * sizeof(float));
}

/* out[o] += tap[o·sw] and row[o·sw] += s[o] for o < n: strides 1 and 2 (the
 * common pools) as constants, so GCC vectorises them with shuffles rather
 * than gathers and scatters */
static inline void add_strided_from(float *restrict out, const float *tap, i64 n, i64 sw)
{
    if (sw == 1)
        for (i64 o = 0; o < n; o++) out[o] += tap[o];
    else if (sw == 2)
        for (i64 o = 0; o < n; o++) out[o] += tap[2 * o];
    else
        for (i64 o = 0; o < n; o++) out[o] += tap[o * sw];
}

static inline void add_strided_to(float *restrict row, const float *s, i64 n, i64 sw)
{
    if (sw == 1)
        for (i64 o = 0; o < n; o++) row[o] += s[o];
    else if (sw == 2)
        for (i64 o = 0; o < n; o++) row[2 * o] += s[o];
    else
        for (i64 o = 0; o < n; o++) row[o * sw] += s[o];
}

enum { AVG_PLANES = 8 };

void gpunet_avgpool2d_forward_f32(const float *x, float *restrict y, float *restrict pad, float *restrict div,
                                  i64 P, i64 H, i64 W, i64 OH, i64 OW, i64 HP, i64 WP, i64 kh, i64 kw, i64 sh,
                                  i64 sw, i64 ph, i64 pw, int include_pad)
{
    avg_divisors(div, H, W, OH, OW, kh, kw, sh, sw, ph, pw, include_pad);
    int padded = HP != H || WP != W;
    i64 p = 0;
    if (OH == 1 && OW == 1 && !padded) /* global pooling: AVG_PLANES planes' sums side by side, each in */
        for (; p + AVG_PLANES <= P; p += AVG_PLANES) { /* its own order (a chain of adds is latency-bound) */
            float acc[AVG_PLANES];
            const float *src = x + p * H * W;
            for (int g = 0; g < AVG_PLANES; g++) acc[g] = src[g * H * W];
            for (i64 i = 0; i < kh; i++)
                for (i64 j = i == 0; j < kw; j++)
                    for (int g = 0; g < AVG_PLANES; g++) acc[g] += src[g * H * W + i * W + j];
            for (int g = 0; g < AVG_PLANES; g++) y[p + g] = acc[g] / div[0];
        }
    for (; p < P; p++) {
        const float *src = x + p * H * W;
        if (padded) {
            pad_plane(src, pad, H, W, HP, WP, ph, pw);
            src = pad;
        }
        for (i64 o = 0; o < OH; o++) {
            float *restrict out = y + (p * OH + o) * OW;
            const float *row = src + o * sh * WP;
            if (OW == 1) { /* one window a row (global pooling): the same sum, not OW-long loops of 1 */
                float acc = row[0];
                for (i64 i = 0; i < kh; i++)
                    for (i64 j = i == 0; j < kw; j++) acc += row[i * WP + j];
                out[0] = acc / div[o];
                continue;
            }
            for (i64 o2 = 0; o2 < OW; o2++) out[o2] = row[o2 * sw];
            for (i64 i = 0; i < kh; i++)
                for (i64 j = i == 0; j < kw; j++) add_strided_from(out, row + i * WP + j, OW, sw);
            for (i64 o2 = 0; o2 < OW; o2++) out[o2] /= div[o * OW + o2];
        }
    }
}

/* dx (P, H, W) from dy (P, OH, OW): each input pixel gets dy/divisor of every
 * window holding it, added tap by tap in row-major tap order onto zeros (the
 * NumPy path's order: fixed, no atomics), in pad (HP·WP floats); share:
 * OH·OW floats of scratch. Windows that neither overlap nor reach into the
 * padding (stride >= kernel, no padding: global pooling, 2x2 stride 2) give
 * each pixel one share or none, written straight into dx as 0 + share (the
 * same bits, -0 included): the taps' scattered adds and the padded plane cost
 * 4x the time of the writes over 8x8 planes. */
static void avgpool_backward_disjoint(const float *share, float *restrict out, i64 H, i64 W, i64 OH, i64 OW,
                                      i64 kh, i64 kw, i64 sh, i64 sw)
{
    if (OH == 1 && OW == 1 && kh >= H && kw >= W) { /* global pooling: one share for the plane */
        const float v = 0.0f + share[0];
        for (i64 q = 0; q < H * W; q++) out[q] = v;
        return;
    }
    i64 h = 0;
    for (i64 o = 0; o < OH && h < H; o++) {
        float *restrict first = out + h * W; /* the window row's first line; its other lines copy it */
        const float *s = share + o * OW;
        i64 w = 0; /* a ceil_mode window may end past the row */
        for (i64 o2 = 0; o2 < OW; o2++) {
            const float v = 0.0f + s[o2];
            const i64 end = w + kw < W ? w + kw : W, next = w + sw < W ? w + sw : W;
            for (; w < end; w++) first[w] = v;
            for (; w < next; w++) first[w] = 0.0f;
        }
        for (; w < W; w++) first[w] = 0.0f;
        const i64 lines = h + kh < H ? kh : H - h, gap = h + sh < H ? sh : H - h;
        for (i64 i = 1; i < lines; i++)
            for (i64 q = 0; q < W; q++) first[i * W + q] = first[q];
        for (i64 q = lines * W; q < gap * W; q++) first[q] = 0.0f;
        h += gap;
    }
    for (i64 q = h * W; q < H * W; q++) out[q] = 0.0f;
}

void gpunet_avgpool2d_backward_f32(const float *dy, float *restrict dx, float *restrict pad, float *restrict div,
                                   float *restrict share, i64 P, i64 H, i64 W, i64 OH, i64 OW, i64 HP, i64 WP,
                                   i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, int include_pad)
{
    avg_divisors(div, H, W, OH, OW, kh, kw, sh, sw, ph, pw, include_pad);
    const int disjoint = sh >= kh && sw >= kw && ph == 0 && pw == 0;
    for (i64 p = 0; p < P; p++) {
        const float *g = dy + p * OH * OW;
        for (i64 k = 0; k < OH * OW; k++) share[k] = g[k] / div[k];
        if (disjoint) {
            avgpool_backward_disjoint(share, dx + p * H * W, H, W, OH, OW, kh, kw, sh, sw);
            continue;
        }
        memset(pad, 0, (size_t)(HP * WP) * sizeof(float));
        for (i64 i = 0; i < kh; i++)
            for (i64 j = 0; j < kw; j++)
                for (i64 o = 0; o < OH; o++)
                    if (OW == 1) /* (global pooling: no loop of 1) */
                        pad[(o * sh + i) * WP + j] += share[o];
                    else
                        add_strided_to(pad + (o * sh + i) * WP + j, share + o * OW, OW, sw);
        float *out = dx + p * H * W;
        for (i64 h = 0; h < H; h++) memcpy(out + h * W, pad + (h + ph) * WP + pw, (size_t)W * sizeof(float));
    }
}

/* ------------------------------------------------------------ embedding */
/* The weight gradient's rows [v_lo, v_hi) of dw (V, D): row v is the sum of
 * dy[k] over the positions k with idx[k] = v, in position order: the first
 * such row copied, the rest added (the NumPy path's stably sorted runs, in
 * the same order: the same bits, with no sort); rows nobody looked up are 0.
 * Positions whose index lies outside [v_lo, v_hi) are another call's (the
 * caller checks 0 <= idx < V). seen: V bytes, zero on entry. */
void gpunet_embedding_backward_f32(const int64_t *idx, const float *dy, float *restrict dw, uint8_t *seen, i64 n,
                                   i64 D, i64 v_lo, i64 v_hi)
{
    for (i64 k = 0; k < n; k++) {
        i64 v = idx[k];
        if (v < v_lo || v >= v_hi) continue;
        float *restrict row = dw + v * D;
        const float *g = dy + k * D;
        if (seen[v])
            for (i64 d = 0; d < D; d++) row[d] += g[d];
        else
            memcpy(row, g, (size_t)D * sizeof(float));
        seen[v] = 1;
    }
    for (i64 v = v_lo; v < v_hi; v++)
        if (!seen[v]) memset(dw + v * D, 0, (size_t)D * sizeof(float));
}

/* ------------------------------------------------------------ the LSTM cell's activations */
/* e^x for the activations below, cheaper than exp_f32 where they allow it:
 * x clamped to [-87.3, 89] keeps 2^k one normal factor or, at k = 128
 * (x >= 88.38), +inf; so e^x is exp_f32's below e^88.38 (its exponent in
 * one step), +inf above (where 1/(1 + e^x) and 2/(e^x + 1) round to 0 or
 * to the subnormals exp_f32 also flushes there), and e^-87.3 below -87.3
 * (where 1 + e^x rounds to 1 either way). The reduction's products are
 * fused: k·LN2_HI is exact, so r is x - k·ln2 rounded once. */
static inline float exp_act_f32(float x)
{
    x = x < -87.3f ? -87.3f : x;
    x = x > 89.0f ? 89.0f : x;
    float kr = MADD(x, EXP_LOG2E, EXP_ROUND);
    float k = kr - EXP_ROUND;
    float r = MADD(-k, EXP_LN2_HI, x);
    r = MADD(-k, EXP_LN2_LO, r);
    return exp_poly(r) * bits_to_float((float_to_bits(kr) - float_to_bits(EXP_ROUND) + 127) << 23);
}

/* tanh in float32, branch free (vectorises): for |x| < 0.55 its Taylor
 * series in x^2 to degree 17 (truncation below 6e-9 relative there), above
 * 1 - 2/(e^(2|x|) + 1) (no cancellation: the result is above 0.5), the
 * sign put back; NaN stays NaN, +-inf gives +-1. A few ulps. */
static inline float tanh_f32(float x)
{
    float a = fabsf(x), y = a * a;
    float p = 0.000590027440945586f;
    p = MADD(p, y, -0.0014558343870513183f);
    p = MADD(p, y, 0.003592128036572481f);
    p = MADD(p, y, -0.008863235529902197f);
    p = MADD(p, y, 0.021869488536155203f);
    p = MADD(p, y, -0.05396825396825397f);
    p = MADD(p, y, 0.13333333333333333f);
    p = MADD(p, y, -0.3333333333333333f);
    float small = MADD(a, y * p, a);
    float large = 1.0f - 2.0f / (exp_act_f32(2.0f * a) + 1.0f);
    return copysignf(a < 0.55f ? small : large, x);
}

/* 1/(1 + e^-x): a few ulps relative down to e^-88.7 (the subnormal results
 * below come out 0), 1 from 17 up; NaN stays NaN */
static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_act_f32(-x)); }

/* ------------------------------------------------------------ register-block products */
/* The GEMM's and the LSTM's products and the direct convolution's sums run as
 * blocks of vector accumulators held in registers (16 lanes each), every
 * product-and-add one fused multiply-add where GCC targets a CPU with them
 * (DIRECT_FMA, as OpenBLAS's GEMMs do), each sum in a fixed order whatever
 * the thread split. (GCC's loop distribution off: it made short copy and
 * zero loops memcpy/memset calls, slower than the loops vectorised in place.) */
#if defined(__GNUC__) && !defined(__clang__)
#define DIRECT_FMA __attribute__((optimize("fp-contract=fast", "no-tree-loop-distribute-patterns")))
#else
#define DIRECT_FMA
#endif
typedef float direct_vec __attribute__((vector_size(64))); /* 16 lanes */
/* the same, at any float's address (unaligned loads and stores) */
typedef float direct_vec_u __attribute__((vector_size(64), aligned(4), may_alias));

/* The product block of the LSTM's steps and the GEMM: acc[r][v] += sum over
 * k < K of a[r*rsa + k*csa] * panel[k][16v .. 16v+16), for rows <= 6 rows and
 * vecs <= 4 vectors (constants where it is inlined: the 24 accumulators stay
 * in registers, 4 FMAs per broadcast of a); the panel is k-major, 64 lanes
 * per k. Each sum runs over k in order. 6 rows x 4 vectors ran the LSTM's
 * (32, 256) @ (256, 1024) step product at 116 GFLOP/s on one core here,
 * OpenBLAS at 62. */
enum { PANEL_LANES = 64, PANEL_VECS = PANEL_LANES / 16, PANEL_ROWS = 6 };

static inline __attribute__((always_inline)) DIRECT_FMA void panel_sum(direct_vec acc[][PANEL_VECS], const float *a,
                                                                       i64 rsa, i64 csa, const float *panel, i64 K,
                                                                       int rows, int vecs)
{
    for (i64 k = 0; k < K; k++) {
        direct_vec b[PANEL_VECS];
        for (int v = 0; v < vecs; v++) b[v] = *(const direct_vec_u *)(panel + k * PANEL_LANES + 16 * v);
        for (int r = 0; r < rows; r++) {
            const float ak = a[r * rsa + k * csa];
            for (int v = 0; v < vecs; v++) acc[r][v] += ak * b[v];
        }
    }
}

/* ------------------------------------------------------------ GEMM */
/* C (M, N; row stride ldc) = A (M, K) @ B (K, N) [+ bias (N) on every row],
 * A and B at any element strides (a transposed operand is a view), for
 * gpunet/ops/linear.py's matmul. OpenBLAS ran the transformer's and char
 * LSTM's 2-D GEMMs (M 512-1600, K 256-1600) at 183-206 GFLOP/s on 2 cores
 * here, PyTorch's MKL at 190-200; these blocks at 202-220 (linear.py leaves
 * products with a tall A to OpenBLAS, which keeps blocks of A in cache).
 *
 * The work is tiles of 64 columns by `mc` rows (the caller's split, mc a
 * multiple of 6), numbered row chunk by row chunk. A tile packs its columns
 * of B into a k-major panel (zero past N; kept while the next tile has the
 * same columns), then runs 6-row blocks over it, the sum over k in chunks of
 * GEMM_KC terms: each chunk summed in order with one FMA per term, the
 * chunks added into C in order, so a sum of K terms rounds about GEMM_KC +
 * K / GEMM_KC times in sequence, not K (OpenBLAS's blocking does the same);
 * an A with strided terms is packed first (below).
 * Every element is one tile's, summed in the same order whatever the split:
 * the result does not depend on the thread count. */
enum { GEMM_KC = 256 };

/* c[r][0..n) = init + a[r] . panel over K terms (first chunk; init: the bias
 * row or NULL) or c[r][0..n) += a[r] . panel (later chunks), n <= 16*vecs */
static inline __attribute__((always_inline)) DIRECT_FMA void gemm_block(const float *a, i64 rsa, i64 csa,
                                                                        const float *panel, i64 K, const float *init,
                                                                        int add, float *c, i64 ldc, i64 n, int rows,
                                                                        int vecs)
{
    direct_vec acc[PANEL_ROWS][PANEL_VECS];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++) acc[r][v] = init ? (direct_vec)*(const direct_vec_u *)(init + 16 * v)
                                                        : (direct_vec){0};
    panel_sum(acc, a, rsa, csa, panel, K, rows, vecs);
    if (n == 16 * vecs) {
        for (int r = 0; r < rows; r++)
            for (int v = 0; v < vecs; v++) {
                direct_vec_u *out = (direct_vec_u *)(c + r * ldc + 16 * v);
                *out = add ? (direct_vec)*out + acc[r][v] : acc[r][v];
            }
        return;
    }
    float part[PANEL_ROWS * PANEL_LANES] = {0}; /* (GCC cannot see that l < n <= 16*vecs reads only stored lanes) */
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++) *(direct_vec_u *)(part + r * PANEL_LANES + 16 * v) = acc[r][v];
    for (int r = 0; r < rows; r++)
        for (i64 l = 0; l < n; l++) c[r * ldc + l] = add ? c[r * ldc + l] + part[r * PANEL_LANES + l]
                                                         : part[r * PANEL_LANES + l];
}

#define GEMM_VECS(R)                                                                                       \
    switch (vecs) {                                                                                        \
    case 4: gemm_block(a, rsa, csa, panel, K, init, add, c, ldc, n, R, 4); break;                          \
    case 3: gemm_block(a, rsa, csa, panel, K, init, add, c, ldc, n, R, 3); break;                          \
    case 2: gemm_block(a, rsa, csa, panel, K, init, add, c, ldc, n, R, 2); break;                          \
    default: gemm_block(a, rsa, csa, panel, K, init, add, c, ldc, n, R, 1);                                \
    }

/* gemm_block with constant block sizes: each gets its own unrolled registers */
static __attribute__((noinline)) DIRECT_FMA void gemm_rows(const float *a, i64 rsa, i64 csa, const float *panel, i64 K,
                                                const float *init, int add, float *c, i64 ldc, i64 n, i64 rows)
{
    const int vecs = (int)((n + 15) / 16);
    switch (rows) {
    case 6: GEMM_VECS(6) break;
    case 5: GEMM_VECS(5) break;
    case 4: GEMM_VECS(4) break;
    case 3: GEMM_VECS(3) break;
    case 2: GEMM_VECS(2) break;
    default: GEMM_VECS(1)
    }
}
#undef GEMM_VECS

/* panel[k][l] = B[k][j0 + l] for l < n, 0 for n <= l < 64; B's rows 16 at a
 * time when its columns are strided (a transposed weight): each source
 * line read once */
static void gemm_pack(const float *B, i64 rsb, i64 csb, i64 K, i64 j0, i64 n, float *restrict panel)
{
    if (csb == 1) {
        for (i64 k = 0; k < K; k++)
            for (i64 l = 0; l < PANEL_LANES; l++) panel[k * PANEL_LANES + l] = l < n ? B[k * rsb + j0 + l] : 0.0f;
        return;
    }
    for (i64 k0 = 0; k0 < K; k0 += 16) {
        const i64 kn = K - k0 < 16 ? K - k0 : 16;
        for (i64 l = 0; l < PANEL_LANES; l++)
            for (i64 k = k0; k < k0 + kn; k++) panel[k * PANEL_LANES + l] = l < n ? B[k * rsb + (j0 + l) * csb] : 0.0f;
    }
}

/* rows of A packed at a time (gemm_pack_a): 96 x GEMM_KC floats, 96 KiB;
 * tiles (panels) that use one packed block, fewer where their packed panels
 * would pass GEMM_GROUP_FLOATS (16 MiB: K above 65536) */
enum { GEMM_PACK_ROWS = 16 * PANEL_ROWS, GEMM_GROUP = 4, GEMM_PREFETCH = 8, GEMM_GROUP_FLOATS = 1 << 22 };

/* A's rows [0, rows) over terms [0, kn) into ap k-major, GEMM_PACK_ROWS
 * floats per term (ap[k * GEMM_PACK_ROWS + r] = A[r][k]): for an A with
 * strided terms (a transposed operand), whose row blocks read in place take
 * a line a page apart for every term, more than the caches keep (a 4 KiB
 * stride maps them all to one L1 set); packed, a term's rows are one
 * contiguous run and the runs follow one another. */
static void gemm_pack_a(const float *A, i64 rsa, i64 csa, i64 rows, i64 kn, float *restrict ap)
{
    for (i64 k = 0; k < kn; k++) {
        const float *a = A + k * csa;
        float *out = ap + k * GEMM_PACK_ROWS;
        if (rsa == 1) { /* a transposed A: each term's rows are contiguous, a vector copy */
            if (k + GEMM_PREFETCH < kn) /* runs a page apart: the prefetchers do not see the next one coming */
                for (i64 r = 0; r < rows; r += 16) __builtin_prefetch(a + GEMM_PREFETCH * csa + r);
            for (i64 r = 0; r < rows; r++) out[r] = a[r];
        } else
            for (i64 r = 0; r < rows; r++) out[r] = a[r * rsa];
    }
}

/* Tiles [lo, hi) of the product. dims: M, N, K, A's row and column strides,
 * B's, C's row stride, mc (rows per tile). An A with strided terms (csa !=
 * 1) is packed, GEMM_PACK_ROWS rows by GEMM_KC terms at a time, and used for
 * up to GEMM_GROUP tiles of its rows (their panels packed together: their
 * chunks of GEMM_KC terms, 256 KiB, stay in L2 while the row blocks pass).
 * The order of every sum is the same either way. Returns 1 when the panels
 * could not be allocated (nothing written). */
int gpunet_gemm_f32(const float *A, const float *B, const float *bias, float *C, const i64 *dims, i64 lo, i64 hi)
{
    const i64 M = dims[0], N = dims[1], K = dims[2], rsa = dims[3], csa = dims[4], rsb = dims[5], csb = dims[6];
    const i64 ldc = dims[7], mc = dims[8], panels = (N + PANEL_LANES - 1) / PANEL_LANES, kp = K > 0 ? K : 1;
    const int pack_a = csa != 1 && K > 1;
    const i64 fit = GEMM_GROUP_FLOATS / (kp * PANEL_LANES);
    const i64 group = !pack_a || fit < 1 ? 1 : fit < GEMM_GROUP ? fit : GEMM_GROUP;
    float *panel = malloc(((size_t)(group * kp * PANEL_LANES) + (pack_a ? GEMM_PACK_ROWS * GEMM_KC : 0))
                          * sizeof(float));
    if (!panel)
        return 1;
    float *ap = panel + group * kp * PANEL_LANES, init[GEMM_GROUP][PANEL_LANES];
    for (i64 t = lo, t1, packed = -1; t < hi; t = t1) {
        /* tiles [t, t1): one row chunk's, up to `group` of them */
        const i64 m0 = t / panels * mc, m1 = m0 + mc < M ? m0 + mc : M, chunk_end = (t / panels + 1) * panels;
        t1 = t + group < hi ? t + group : hi;
        t1 = t1 < chunk_end ? t1 : chunk_end;
        for (i64 u = t; u < t1 && !(t1 - t == 1 && u % panels == packed); u++) {
            const i64 j0 = u % panels * PANEL_LANES, n = N - j0 < PANEL_LANES ? N - j0 : PANEL_LANES;
            gemm_pack(B, rsb, csb, K, j0, n, panel + (u - t) * kp * PANEL_LANES);
            for (i64 l = 0; l < PANEL_LANES; l++) init[u - t][l] = bias && l < n ? bias[j0 + l] : 0.0f;
            packed = u % panels;
        }
        for (i64 k0 = 0; k0 < K || k0 == 0; k0 += GEMM_KC) { /* K = 0: C = bias, or zero */
            const i64 kn = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
            for (i64 b0 = m0, b1; b0 < m1; b0 = b1) {
                b1 = pack_a && b0 + GEMM_PACK_ROWS < m1 ? b0 + GEMM_PACK_ROWS : m1;
                if (pack_a)
                    gemm_pack_a(A + b0 * rsa + k0 * csa, rsa, csa, b1 - b0, kn, ap);
                for (i64 u = t; u < t1; u++) {
                    const i64 j0 = u % panels * PANEL_LANES, n = N - j0 < PANEL_LANES ? N - j0 : PANEL_LANES;
                    const float *pk = panel + ((u - t) * kp + k0) * PANEL_LANES;
                    for (i64 r0 = b0; r0 < b1; r0 += PANEL_ROWS)
                        gemm_rows(pack_a ? ap + (r0 - b0) : A + r0 * rsa + k0 * csa, pack_a ? 1 : rsa,
                                  pack_a ? GEMM_PACK_ROWS : csa, pk, kn, k0 ? NULL : init[u - t], k0 > 0,
                                  C + r0 * ldc + j0, ldc, n, b1 - r0 < PANEL_ROWS ? b1 - r0 : PANEL_ROWS);
                }
            }
        }
    }
    free(panel);
    return 0;
}

/* ------------------------------------------------------------ LSTM steps */
/* One timestep of a float32 LSTM each way, its recurrent GEMM and its cell
 * in one pass per block of hidden units: a thread owns units [j0, j0+n) and
 * computes every row's four gates of them, so a step needs no barrier
 * inside and the gates never leave the core before the cell reads them.
 * OpenBLAS ran the step's (32, 256) @ (256, 1024) product at about half of
 * this CPU's FMA peak (173 us on 2 threads); the weights, constant over the
 * sequence, are packed once per sequence into panels read contiguously.
 * Each product sums over k in order with one FMA per term. Gate blocks in
 * PyTorch's order i, f, g, o; x_t's projection (with both biases) comes in
 * g, which gets the activated gates. */
enum { LSTM_LANES = PANEL_LANES, LSTM_ROWS = PANEL_ROWS, LSTM_FWD_UNITS = LSTM_LANES / 4 };

/* Rows [k0, k0 + kn) of block u's forward panel (K rows) from w's columns
 * [0, kn) (w (4H, kn)), 16 panel rows at a time: a 4 KB tile in L1, each
 * source row read in one cache line */
static void pack_forward_rows(const float *w, float *restrict wp, i64 H, i64 K, i64 k0, i64 kn, i64 u)
{
    for (i64 c0 = 0; c0 < kn; c0 += 16) {
        const i64 cn = kn - c0 < 16 ? kn - c0 : 16;
        for (int q = 0; q < 4; q++)
            for (int l = 0; l < LSTM_FWD_UNITS; l++) {
                const i64 j = u * LSTM_FWD_UNITS + l;
                float *out = wp + (u * K + k0 + c0) * LSTM_LANES + q * LSTM_FWD_UNITS + l;
                const float *src = w + (q * H + j) * kn + c0;
                for (i64 c = 0; c < cn; c++) out[c * LSTM_LANES] = j < H ? src[c] : 0.0f;
            }
    }
}

/* Forward panels: for each block of 16 units, I + R rows of 64 lanes (gate
 * q of unit l at lane 16q + l), w_ih's (4H, I) columns then w_hh's (4H, R),
 * zero past H; blocks [lo, hi). */
void gpunet_lstm_pack_forward_f32(const float *w_ih, const float *w_hh, float *restrict wp, i64 H, i64 I, i64 R,
                                  i64 lo, i64 hi)
{
    for (i64 u = lo; u < hi; u++) {
        pack_forward_rows(w_ih, wp, H, I + R, 0, I, u);
        pack_forward_rows(w_hh, wp, H, I + R, I, R, u);
    }
}

/* Backward panels: for each block of 64 units, the 4H rows of w_hh's
 * columns j0 .. j0+63, zero past H. w_hh (4H, H); blocks [lo, hi). */
void gpunet_lstm_pack_backward_f32(const float *w, float *restrict wb, i64 H, i64 lo, i64 hi)
{
    for (i64 u = lo; u < hi; u++)
        for (i64 k = 0; k < 4 * H; k++)
            for (int l = 0; l < LSTM_LANES; l++) {
                i64 j = u * LSTM_LANES + l;
                wb[(u * 4 * H + k) * LSTM_LANES + l] = j < H ? w[k * H + j] : 0.0f;
            }
}

/* out[r][0..64) = a1[r] . panel[0..K1) + a2[r] . panel[K1..K1+K2) */
static inline __attribute__((always_inline)) DIRECT_FMA void lstm_block(const float *a1, i64 lda1, i64 K1,
                                                                        const float *a2, i64 lda2, i64 K2,
                                                                        const float *panel, float *out, int rows)
{
    direct_vec acc[LSTM_ROWS][PANEL_VECS];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < PANEL_VECS; v++) acc[r][v] = (direct_vec){0};
    panel_sum(acc, a1, lda1, 1, panel, K1, rows, PANEL_VECS);
    panel_sum(acc, a2, lda2, 1, panel + K1 * LSTM_LANES, K2, rows, PANEL_VECS);
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < PANEL_VECS; v++) *(direct_vec_u *)(out + r * LSTM_LANES + 16 * v) = acc[r][v];
}

/* lstm_block for rows <= LSTM_ROWS rows (not inlined: the cells that call
 * it round every operation as NumPy does, no contraction) */
static __attribute__((noinline)) DIRECT_FMA void lstm_rows(const float *a1, i64 lda1, i64 K1, const float *a2,
                                                           i64 lda2, i64 K2, const float *panel, float *out, i64 rows)
{
    switch (rows) { /* constant block heights: each gets its own unrolled registers */
    case 6: lstm_block(a1, lda1, K1, a2, lda2, K2, panel, out, 6); break;
    case 5: lstm_block(a1, lda1, K1, a2, lda2, K2, panel, out, 5); break;
    case 4: lstm_block(a1, lda1, K1, a2, lda2, K2, panel, out, 4); break;
    case 3: lstm_block(a1, lda1, K1, a2, lda2, K2, panel, out, 3); break;
    case 2: lstm_block(a1, lda1, K1, a2, lda2, K2, panel, out, 2); break;
    default: lstm_block(a1, lda1, K1, a2, lda2, K2, panel, out, 1);
    }
}

/* One forward step over unit blocks [lo, hi) (of 16, wp's panels): the
 * pre-activations x_t w_ih^T + h_prev w_hh^T (one sum over the I + R terms)
 * plus b (b_ih + b_hh; NULL: none), activated into g (B, 4H), then
 *   c = f·c_prev + i·g,  tanh_c = tanh(c),  h = o·tanh_c  (each (B, H)).
 * dims: B, H, I, R (x_t (B, I); h_prev (B, R): R = H, or PyTorch's
 * proj_size with a projection). */
void gpunet_lstm_step_forward_f32(float *restrict g, const float *x, const float *h_prev, const float *wp,
                                  const float *b, const float *restrict c_prev, float *restrict c,
                                  float *restrict tanh_c, float *restrict h, const i64 *dims, i64 lo, i64 hi)
{
    const i64 B = dims[0], H = dims[1], I = dims[2], R = dims[3];
    float pre[LSTM_ROWS * LSTM_LANES];
    for (i64 u = lo; u < hi; u++) {
        const i64 j0 = u * LSTM_FWD_UNITS, n = H - j0 < LSTM_FWD_UNITS ? H - j0 : LSTM_FWD_UNITS;
        float bias[LSTM_LANES] = {0};
        for (int q = 0; b && q < 4; q++)
            for (i64 l = 0; l < n; l++) bias[q * LSTM_FWD_UNITS + l] = b[q * H + j0 + l];
        for (i64 r0 = 0; r0 < B; r0 += LSTM_ROWS) {
            const i64 rows = B - r0 < LSTM_ROWS ? B - r0 : LSTM_ROWS;
            lstm_rows(x + r0 * I, I, I, h_prev + r0 * R, R, R, wp + u * (I + R) * LSTM_LANES, pre, rows);
            for (i64 r = 0; r < rows; r++) {
                float *pr = pre + r * LSTM_LANES, *gb = g + (r0 + r) * 4 * H + j0;
                const i64 k = (r0 + r) * H + j0;
                for (i64 l = 0; l < n; l++) {
                    float gi = sigmoid_f32(pr[l] + bias[l]), gf = sigmoid_f32(pr[16 + l] + bias[16 + l]);
                    float gg = tanh_f32(pr[32 + l] + bias[32 + l]), go = sigmoid_f32(pr[48 + l] + bias[48 + l]);
                    float cc = gf * c_prev[k + l];
                    cc = cc + gi * gg;
                    const float t = tanh_f32(cc);
                    gb[l] = gi, gb[H + l] = gf, gb[2 * H + l] = gg, gb[3 * H + l] = go;
                    c[k + l] = cc, tanh_c[k + l] = t, h[k + l] = go * t;
                }
            }
        }
    }
}

/* The cell backward of one row's units [0, n) (pointers at the first): the
 * NumPy path's float32 operations in its order (the same bits). With
 * d = dy + dh and dc (NULL: zero),
 *   dc_t = (d·o)·(1 - tanh_c^2) [+ dc],  dg_o = (d·tanh_c)·(o·(1 - o)),
 *   dg_i = (dc_t·g)·(i·(1 - i)),  dg_f = (dc_t·c_prev)·(f·(1 - f)),
 *   dg_g = (dc_t·i)·(1 - g^2),  dc_prev = dc_t·f. */
static inline __attribute__((always_inline)) void lstm_backward_row(
    const float *restrict gb, const float *restrict cp, const float *restrict tc, const float *restrict d,
    const float *restrict dc, float *restrict db, float *restrict dcp, i64 H, i64 n, int has_dc)
{
    for (i64 j = 0; j < n; j++) {
        float gi = gb[j], gf = gb[H + j], gg = gb[2 * H + j], go = gb[3 * H + j], t = tc[j];
        float dct = (d[j] * go) * (1.0f - t * t);
        if (has_dc) dct = dct + dc[j];
        db[3 * H + j] = (d[j] * t) * (go * (1.0f - go));
        db[j] = (dct * gg) * (gi * (1.0f - gi));
        db[H + j] = (dct * cp[j]) * (gf * (1.0f - gf));
        db[2 * H + j] = (dct * gi) * (1.0f - gg * gg);
        dcp[j] = dct * gf;
    }
}

/* One backward step over unit blocks [lo, hi) (of 64, wb's panels):
 * d = dy + dg_next @ w_hh, or dy + dh_in without dg_next (the gradient
 * reaching h_t; a NULL term is zero), then the cell: dg (B, 4H) gets the
 * pre-activation gate gradients of step t and dc_prev (B, H) the gradient
 * reaching c_{t-1}. */
static void lstm_step_backward(const float *dg_next, const float *wb, const float *dh_in, const float *g,
                               const float *c_prev, const float *tanh_c, const float *dy, const float *dc, float *dg,
                               float *dc_prev, i64 B, i64 H, i64 lo, i64 hi)
{
    float dh[LSTM_ROWS * LSTM_LANES], d[LSTM_LANES];
    for (i64 u = lo; u < hi; u++) {
        const i64 j0 = u * LSTM_LANES, n = H - j0 < LSTM_LANES ? H - j0 : LSTM_LANES;
        for (i64 r0 = 0; r0 < B; r0 += LSTM_ROWS) {
            const i64 rows = B - r0 < LSTM_ROWS ? B - r0 : LSTM_ROWS;
            if (dg_next)
                lstm_rows(dg_next + r0 * 4 * H, 4 * H, 4 * H, NULL, 0, 0, wb + u * 4 * H * LSTM_LANES, dh, rows);
            for (i64 r = 0; r < rows; r++) {
                const i64 k = (r0 + r) * H + j0, kg = (r0 + r) * 4 * H + j0;
                const float *dhr = dg_next ? dh + r * LSTM_LANES : dh_in ? dh_in + k : NULL;
                for (i64 l = 0; l < n; l++)
                    d[l] = dy ? (dhr ? dy[k + l] + dhr[l] : dy[k + l]) : (dhr ? dhr[l] : 0.0f);
                if (dc)
                    lstm_backward_row(g + kg, c_prev + k, tanh_c + k, d, dc + k, dg + kg, dc_prev + k, H, n, 1);
                else
                    lstm_backward_row(g + kg, c_prev + k, tanh_c + k, d, NULL, dg + kg, dc_prev + k, H, n, 0);
            }
        }
    }
}

/* lstm_step_backward in the pool's call shape (the gradient reaching h_t
 * is dy + dg_next @ w_hh, or dy alone) */
void gpunet_lstm_step_backward_f32(const float *dg_next, const float *wb, const float *g, const float *c_prev,
                                   const float *tanh_c, const float *dy, const float *dc, float *dg, float *dc_prev,
                                   i64 B, i64 H, i64 lo, i64 hi)
{
    lstm_step_backward(dg_next, wb, NULL, g, c_prev, tanh_c, dy, dc, dg, dc_prev, B, H, lo, hi);
}

/* ------------------------------------------------------------ convolution: im2col / col2im in row layout */

/* gpunet/ops/conv.py's host float32 path. Columns in row layout: for group g
 * and output pixel r = (n, oh, ow) of the R = N*OH*OW pixels, row g*R + r of
 * `ld` floats holds the Kg = C/G*kh*kw taps in (c, i, j) order (c within the
 * group), then, when ld > Kg, a 1 that multiplies the bias row of the weights.
 * geo: N C H W G kh kw sh sw ph pw dh dw OH OW ld (int64). */
enum { G_N, G_C, G_H, G_W, G_G, G_KH, G_KW, G_SH, G_SW, G_PH, G_PW, G_DH, G_DW, G_OH, G_OW, G_LD };

/* the output columns ow in [*lo, *hi) whose input column ow*s - p + o lies in [0, size) */
static void inside(i64 size, i64 s, i64 p, i64 o, i64 OW, i64 *lo, i64 *hi)
{
    const i64 a = p - o, b = size - 1 + p - o; /* need a <= ow*s <= b */
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    *hi = b < 0 ? 0 : (b / s + 1 < OW ? b / s + 1 : OW);
    if (*hi < *lo) *hi = *lo;
}

/* tap (c, i, j)'s entries of output line (n, oh) for ow = 0..OW-1, at
 * d[0], d[step], ...: the zeros of the padding and one strided copy */
static inline void tap_run(const float *plane, float *d, i64 step, i64 ih, i64 j, const i64 *geo)
{
    const i64 H = geo[G_H], W = geo[G_W], sw = geo[G_SW], pw = geo[G_PW], dw = geo[G_DW], OW = geo[G_OW];
    i64 ow0 = OW, ow1 = OW; /* a row of padding: all zeros */
    if (ih >= 0 && ih < H) inside(W, sw, pw, j * dw, OW, &ow0, &ow1);
    const float *src = plane + ih * W + j * dw - pw;
    for (i64 ow = 0; ow < ow0; ow++) d[ow * step] = 0.0f;
    if (sw == 1 && step == 1) memcpy(d + ow0, src + ow0, (size_t)(ow1 - ow0) * sizeof(float));
    else for (i64 ow = ow0; ow < ow1; ow++) d[ow * step] = src[ow * sw];
    for (i64 ow = ow1; ow < OW; ow++) d[ow * step] = 0.0f;
}

/* below this output width the tile's runs are too short to pay for its
 * second pass (measured: 1.1-3.9x faster at widths 16 and 32, 0.8x at 4 and 8) */
#define IM2COL_TILE_MIN_WIDTH 16

/* the column rows of output lines [lo, hi), a line being one (n, oh). Wide
 * lines go through a tile T (Kg x OW, column layout: contiguous runs) that
 * is then transposed into the rows; narrow ones (or no memory for T) are
 * written straight into the rows, tap by tap with a stride of ld */
void gpunet_im2col_rows_f32(const float *x, float *cols, const i64 *geo, i64 lo, i64 hi)
{
    const i64 C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 sh = geo[G_SH], ph = geo[G_PH], dh = geo[G_DH];
    const i64 OH = geo[G_OH], OW = geo[G_OW], ld = geo[G_LD], cg = C / G, kg = cg * kh * kw;
    const i64 R = geo[G_N] * OH * OW;
    float *T = OW >= IM2COL_TILE_MIN_WIDTH ? malloc((size_t)(kg * OW) * sizeof(float)) : NULL;
    for (i64 line = lo; line < hi; line++) {
        const i64 n = line / OH, oh = line % OH;
        for (i64 g = 0; g < G; g++) {
            float *dst = cols + (g * R + line * OW) * ld;
            for (i64 c = 0; c < cg; c++) {
                const float *plane = x + (n * C + g * cg + c) * H * W;
                for (i64 i = 0; i < kh; i++)
                    for (i64 j = 0; j < kw; j++) {
                        const i64 k = (c * kh + i) * kw + j;
                        tap_run(plane, T ? T + k * OW : dst + k, T ? 1 : ld, oh * sh - ph + i * dh, j, geo);
                    }
            }
            for (i64 ow = 0; T && ow < OW; ow++)
                for (i64 k = 0; k < kg; k++) dst[ow * ld + k] = T[k * OW + ow];
            if (ld > kg)
                for (i64 ow = 0; ow < OW; ow++) dst[ow * ld + kg] = 1.0f;
        }
    }
    free(T);
}

/* dx of input planes [lo, hi) (a plane being one (n, c)): every pixel the sum
 * of the column entries copied from it, added tap by tap in (i, j) row-major
 * order onto 0 (the NumPy path's order); no two planes share a write, so any
 * split gives the same bits */
void gpunet_col2im_rows_f32(const float *cols, float *dx, const i64 *geo, i64 lo, i64 hi)
{
    const i64 C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 sh = geo[G_SH], sw = geo[G_SW], ph = geo[G_PH], pw = geo[G_PW], dh = geo[G_DH], dw = geo[G_DW];
    const i64 OH = geo[G_OH], OW = geo[G_OW], ld = geo[G_LD], cg = C / G;
    const i64 R = geo[G_N] * OH * OW;
    for (i64 p = lo; p < hi; p++) {
        const i64 n = p / C, c = p % C, g = c / cg;
        const float *base = cols + (g * R + n * OH * OW) * ld + (c % cg) * kh * kw;
        float *out = dx + p * H * W;
        memset(out, 0, (size_t)(H * W) * sizeof(float));
        for (i64 i = 0; i < kh; i++) {
            i64 oh0, oh1;
            inside(H, sh, ph, i * dh, OH, &oh0, &oh1);
            for (i64 j = 0; j < kw; j++) {
                i64 ow0, ow1;
                inside(W, sw, pw, j * dw, OW, &ow0, &ow1);
                for (i64 oh = oh0; oh < oh1; oh++) {
                    float *row = out + (oh * sh - ph + i * dh) * W + j * dw - pw;
                    const float *src = base + oh * OW * ld + i * kw + j;
                    for (i64 ow = ow0; ow < ow1; ow++) row[ow * sw] += src[ow * ld];
                }
            }
        }
    }
}

/* ------------------------------------------------------------ max pooling, ReLU */
/* planes (P, H, W) contiguous -> y (P, OH, OW) and arg (P, OH, OW), the
 * window offset i*kw + j each output took, as the NumPy path computes them:
 * y is np.maximum folded over the taps in row-major order, starting from
 * the first (np.maximum(m, t) = m > t || m is NaN ? m : t, so a window with
 * a NaN keeps its first NaN, and of equal values, i.e. ±0, the last one's
 * bits); arg is the first tap equal to y or, in a window with a NaN, its
 * last NaN. The plane is padded with -inf into pad (HP·WP floats; unused
 * when HP = H and WP = W); off: OH·OW int32 of scratch. Each plane on its
 * own: any split over threads gives the same bits. Taps outer, a row of
 * outputs inner, so the selects vectorise over the row; rows shorter than
 * 16 (small planes) take 64 outputs at a time instead, across planes where
 * there is no padding, each tap's values gathered through off first. Offsets
 * are int32: the caller keeps 64·HP·WP below 2^31. */
static inline void max_tap(float *restrict m, int32_t *restrict a, const float *tap, i64 n, i64 sw, int32_t k)
{
#define MAX_TAP(T)                                                  \
    for (i64 o = 0; o < n; o++) {                                   \
        const float t = (T), mo = m[o];                             \
        a[o] = (t != t || t > mo) ? k : a[o];                       \
        m[o] = (mo > t || mo != mo) ? mo : t;                       \
    }
    if (sw == 1)
        MAX_TAP(tap[o])
    else if (sw == 2)
        MAX_TAP(tap[2 * o])
    else
        MAX_TAP(tap[o * sw])
#undef MAX_TAP
}

/* n <= 64 outputs whose windows start at src + idx[q]: each tap's values
 * gathered into a row first (GCC does not vectorise the gather), then max_tap */
static void max_gathered(float *restrict m, int32_t *restrict a, const float *src, const int32_t *idx, i64 n,
                         i64 kh, i64 kw, i64 dh, i64 dw, i64 WP)
{
    float row[64];
    for (i64 q = 0; q < n; q++) m[q] = src[idx[q]], a[q] = 0;
    for (i64 i = 0; i < kh; i++)
        for (i64 j = i == 0; j < kw; j++) {
            const float *tap = src + i * dh * WP + j * dw;
            for (i64 q = 0; q < n; q++) row[q] = tap[idx[q]];
            max_tap(m, a, row, n, 1, (int32_t)(i * kw + j));
        }
}

void gpunet_maxpool2d_forward_f32(const float *x, float *restrict y, int32_t *restrict arg, float *restrict pad,
                                  int32_t *restrict off, i64 P, i64 H, i64 W, i64 OH, i64 OW, i64 HP, i64 WP,
                                  i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, i64 dh, i64 dw)
{
    const int padded = HP != H || WP != W;
    const i64 Q = OH * OW;
    for (i64 o = 0; o < OH; o++)
        for (i64 o2 = 0; o2 < OW; o2++) off[o * OW + o2] = (int32_t)(o * sh * WP + o2 * sw);
    if (OW < 16 && !padded) {  /* short rows, unpadded: chunks of 64 outputs across planes */
        int32_t idx[64];
        for (i64 q0 = 0, p = 0, q = 0; q0 < P * Q; q0 += 64) {
            const i64 n = P * Q - q0 < 64 ? P * Q - q0 : 64, p0 = p;
            for (i64 r = 0; r < n; r++) {
                idx[r] = (int32_t)((p - p0) * H * W) + off[q];
                if (++q == Q) q = 0, p++;
            }
            max_gathered(y + q0, arg + q0, x + p0 * H * W, idx, n, kh, kw, dh, dw, WP);
        }
        return;
    }
    for (i64 p = 0; p < P; p++) {
        const float *src = x + p * H * W;
        if (padded) {
            for (i64 q = 0; q < HP * WP; q++) pad[q] = -INFINITY;
            for (i64 h = 0; h < H; h++) memcpy(pad + (h + ph) * WP + pw, src + h * W, (size_t)W * sizeof(float));
            src = pad;
        }
        if (OW < 16) {  /* short rows: the plane's outputs in chunks of 64 */
            for (i64 q0 = 0; q0 < Q; q0 += 64)
                max_gathered(y + p * Q + q0, arg + p * Q + q0, src, off + q0, Q - q0 < 64 ? Q - q0 : 64, kh, kw,
                             dh, dw, WP);
            continue;
        }
        for (i64 o = 0; o < OH; o++) {
            float *restrict m = y + (p * OH + o) * OW;
            int32_t *restrict a = arg + (p * OH + o) * OW;
            const float *row = src + o * sh * WP;
            for (i64 o2 = 0; o2 < OW; o2++) m[o2] = row[o2 * sw], a[o2] = 0;
            for (i64 i = 0; i < kh; i++)
                for (i64 j = i == 0; j < kw; j++)
                    max_tap(m, a, row + i * dh * WP + j * dw, OW, sw, (int32_t)(i * kw + j));
        }
    }
}

/* dx (P, H, W) from dy (P, OH, OW) and the forward's arg: each gradient goes
 * to the input its window picked (none where that is padding). As the NumPy
 * path: where the windows tile the input (`tiles`), dx is dy's bits there
 * and +0 elsewhere; otherwise dx starts at +0 and each input adds its
 * gradients in row-major tap order, which is the outputs' reverse order. */
void gpunet_maxpool2d_backward_f32(const float *dy, const int32_t *arg, float *restrict dx, i64 P, i64 H, i64 W,
                                   i64 OH, i64 OW, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, i64 dh, i64 dw,
                                   int tiles)
{
    (void)kh;  /* (the forward's arguments, for symmetry) */
    memset(dx, 0, (size_t)(P * H * W) * sizeof(float));
    for (i64 p = 0; p < P; p++) {
        const float *g = dy + p * OH * OW;
        const int32_t *a = arg + p * OH * OW;
        float *restrict out = dx + p * H * W;
        for (i64 o = OH - 1; o >= 0; o--)
            for (i64 o2 = OW - 1; o2 >= 0; o2--) {
                const int32_t k = a[o * OW + o2], kw32 = (int32_t)kw;  /* (a 32-bit division is cheaper) */
                const i64 h = o * sh - ph + k / kw32 * dh, w = o2 * sw - pw + k % kw32 * dw;
                if (h < 0 || h >= H || w < 0 || w >= W) continue;
                if (tiles)
                    out[h * W + w] = g[o * OW + o2];
                else
                    out[h * W + w] += g[o * OW + o2];
            }
    }
}

/* ReLU's backward dx = x > 0 ? dy : +0, a select (a NaN dy at x <= 0 gives
 * 0, as the kernels and PyTorch): one pass where NumPy takes three */
/* max(x, 0) as NumPy's maximum gives it: -0 gives +0, a NaN itself */
/* returns 1 when x[lo, hi) holds a NaN or an infinity (the input scan of
 * gpunet/checks.py in the same read: x·0 is ±0 for every finite x), else 0 */
int gpunet_relu_f32(const float *x, float *restrict y, i64 lo, i64 hi)
{
    int bad = 0;
    for (i64 q = lo; q < hi; q++) {
        y[q] = x[q] > 0.0f || x[q] != x[q] ? x[q] : 0.0f;
        bad |= !(x[q] * 0.0f == 0.0f);
    }
    return bad;
}

void gpunet_relu_backward_f32(const float *x, const float *dy, float *restrict dx, i64 lo, i64 hi)
{
    for (i64 q = lo; q < hi; q++) dx[q] = x[q] > 0.0f ? dy[q] : 0.0f;
}

/* ------------------------------------------------------------ direct convolution forward (few taps) */
/* gpunet/ops/conv.py's float32 host forward for few taps per output (Kg =
 * C/G*kh*kw up to 576), and for a stride-1 dx. A tile T holds
 * the Kg taps of up to DIRECT_TILE output pixels of one image in column
 * layout (tap_run above: padding, stride and dilation as im2col's); every
 * output channel then sums its Kg products over T's rows, 16 pixels x up to
 * 8 channels per register block, and NCHW y is written directly with the
 * bias. Stride 1 reads the taps from zero-padded input rows instead of a
 * tile (direct_wide). Each output is ((w0*x0 + w1*x1) + ...) + b in (c, i, j) order in
 * float32, every product-and-add one fused multiply-add where GCC targets a
 * CPU with them (DIRECT_FMA: as the BLAS GEMM of the columns path does; 1.45x
 * faster here than separate roundings), computed alike for every output
 * whichever thread owns its pixel block: results do not depend on the split.
 * geo: the row layout's, with O (output channels) in place of ld. */
enum { DIRECT_VECS = 2, DIRECT_PIX = 16 * DIRECT_VECS, DIRECT_TILE = 256 };

/* channels [o, o+ob) (weights w, kg per channel) over pixels [p, p+count) of
 * T (count <= DIRECT_PIX; tap k's pixels at T + off[k]) into y (plane floats
 * per channel); the accumulators stay in registers (no memcpy through them:
 * GCC then kept them on the stack, at half the speed) */
static inline __attribute__((always_inline)) DIRECT_FMA void direct_block(const float *T, const i64 *off, i64 kg,
                                                                          const float *w, const float *b, float *y,
                                                                          i64 plane, i64 count, int ob)
{
    direct_vec acc[8][DIRECT_VECS];
    for (int c = 0; c < ob; c++)
        for (int v = 0; v < DIRECT_VECS; v++) acc[c][v] = (direct_vec){0};
    for (i64 k = 0; k < kg; k++) {
        direct_vec xv[DIRECT_VECS];
        for (int v = 0; v < DIRECT_VECS; v++) xv[v] = *(const direct_vec_u *)(T + off[k] + 16 * v);
        for (int c = 0; c < ob; c++) {
            const float wk = w[c * kg + k];
            for (int v = 0; v < DIRECT_VECS; v++) acc[c][v] += wk * xv[v];
        }
    }
    for (int c = 0; c < ob; c++) {
        if (b)
            for (int v = 0; v < DIRECT_VECS; v++) acc[c][v] += b[c];
        if (count == DIRECT_PIX) {
            for (int v = 0; v < DIRECT_VECS; v++) *(direct_vec_u *)(y + c * plane + 16 * v) = acc[c][v];
        } else {
            float out[DIRECT_PIX];
            for (int v = 0; v < DIRECT_VECS; v++) *(direct_vec_u *)(out + 16 * v) = acc[c][v];
            memcpy(y + c * plane, out, (size_t)count * sizeof(float));
        }
    }
}

/* the nch channels of weights w (kg per channel) and bias b (or NULL) over
 * pixels [0, pix) of T into y (plane floats per channel), in blocks of up to
 * 8 channels x DIRECT_PIX pixels */
static DIRECT_FMA void direct_channels(const float *T, const i64 *off, i64 kg, const float *w, const float *b,
                                       float *y, i64 plane, i64 pix, i64 nch)
{
    for (i64 o = 0; o < nch;) {
        const i64 left = nch - o;
        const int ob = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const float *wo = w + o * kg, *bo = b ? b + o : NULL;
        for (i64 p = 0; p < pix; p += DIRECT_PIX) {
            const i64 count = pix - p < DIRECT_PIX ? pix - p : DIRECT_PIX;
            switch (ob) { /* constant block sizes: each gets its own unrolled registers */
            case 8: direct_block(T + p, off, kg, wo, bo, y + o * plane + p, plane, count, 8); break;
            case 4: direct_block(T + p, off, kg, wo, bo, y + o * plane + p, plane, count, 4); break;
            case 2: direct_block(T + p, off, kg, wo, bo, y + o * plane + p, plane, count, 2); break;
            default: direct_block(T + p, off, kg, wo, bo, y + o * plane + p, plane, count, 1);
            }
        }
        o += ob;
    }
}

/* tap (c, i, j)'s row of the tile, t: output lines l0 .. l0+nl-1 of OW
 * pixels each, as tap_run writes them, with the columns' range (a division)
 * found once for all the lines and the runs copied by vectorised loops, not
 * memcpy/memset calls (DIRECT_FMA). The tile costs as much as the products
 * of ~20 output channels: (32, 64, 16, 16) into 8 channels, 1 thread, took
 * 2.11 ms with tap_run per line, 1.77 ms with this. */
static inline DIRECT_FMA void direct_tap(const float *plane, float *restrict t, i64 l0, i64 nl, i64 i, i64 j,
                                         const i64 *geo)
{
    const i64 H = geo[G_H], W = geo[G_W], sh = geo[G_SH], sw = geo[G_SW], ph = geo[G_PH], pw = geo[G_PW];
    const i64 dh = geo[G_DH], dw = geo[G_DW], OW = geo[G_OW];
    i64 ow0, ow1;
    inside(W, sw, pw, j * dw, OW, &ow0, &ow1);
    for (i64 l = 0; l < nl; l++, t += OW) {
        const i64 ih = (l0 + l) * sh - ph + i * dh;
        if (ih < 0 || ih >= H) {
            for (i64 ow = 0; ow < OW; ow++) t[ow] = 0.0f;
            continue;
        }
        const float *restrict src = plane + ih * W + j * dw - pw;
        for (i64 ow = 0; ow < ow0; ow++) t[ow] = 0.0f;
        if (sw == 1)
            for (i64 ow = ow0; ow < ow1; ow++) t[ow] = src[ow];
        else
            for (i64 ow = ow0; ow < ow1; ow++) t[ow] = src[ow * sw];
        for (i64 ow = ow1; ow < OW; ow++) t[ow] = 0.0f;
    }
}

/* Stride 1 needs no tile: with the block's input rows zero-padded to Wp =
 * W + 2pw columns in P (one copy per channel and row), output (oh, ow) of the
 * block's lines is "wide" pixel q = (oh - l0)*Wp + ow, and tap (c, i, j)
 * of every q is P[c*plen + i*dh*Wp + j*dw + q]: contiguous over q, across
 * lines. The loop computes the Wp - OW extra pixels of each line too (their
 * reads stay inside P) into Yw, and only the OW real ones are copied to y.
 * The products and their order are the tile's: the same bits. Measured, 1
 * thread, 3x3: 0.34-0.91x the tile's time with 16 to 64 input channels, but
 * 1.1-1.5x with 1 or 3 (their tile is small; the extra columns and the copy
 * to y are not): fewer than DIRECT_WIDE_MIN_CHANNELS per group keep the tile.
 * Returns 1 when out of memory (nothing written). */
enum { DIRECT_WIDE_MIN_CHANNELS = 8 };
static DIRECT_FMA int direct_wide(const float *x, const float *w, const float *b, float *y, const i64 *geo,
                                  i64 lo, i64 hi, i64 lines)
{
    const i64 C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 ph = geo[G_PH], pw = geo[G_PW], dh = geo[G_DH], dw = geo[G_DW], OH = geo[G_OH], OW = geo[G_OW];
    const i64 O = geo[G_LD], cg = C / G, og = O / G, kg = cg * kh * kw, plane = OH * OW;
    const i64 blocks = (OH + lines - 1) / lines;
    const i64 Wp = W + 2 * pw, rows = lines + (kh - 1) * dh, plen = rows * Wp + (kw - 1) * dw + DIRECT_PIX;
    float *P = calloc((size_t)(cg * plen), sizeof(float)); /* its tail past the rows: read, always 0 */
    float *Yw = malloc((size_t)(og * lines * Wp) * sizeof(float));
    i64 *off = malloc((size_t)kg * sizeof(i64));
    if (!P || !Yw || !off) {
        free(P), free(Yw), free(off);
        return 1;
    }
    for (i64 c = 0; c < cg; c++)
        for (i64 i = 0; i < kh; i++)
            for (i64 j = 0; j < kw; j++) off[(c * kh + i) * kw + j] = c * plen + i * dh * Wp + j * dw;
    for (i64 u = lo; u < hi; u++) {
        const i64 n = u / blocks, l0 = u % blocks * lines, nl = OH - l0 < lines ? OH - l0 : lines;
        for (i64 g = 0; g < G; g++) {
            for (i64 c = 0; c < cg; c++)
                for (i64 r = 0; r < nl + (kh - 1) * dh; r++) {
                    float *restrict row = P + c * plen + r * Wp;
                    const i64 ih = l0 + r - ph;
                    if (ih < 0 || ih >= H) {
                        for (i64 q = 0; q < Wp; q++) row[q] = 0.0f;
                        continue;
                    }
                    const float *restrict src = x + ((n * C + g * cg + c) * H + ih) * W;
                    for (i64 q = 0; q < pw; q++) row[q] = 0.0f;
                    for (i64 q = 0; q < W; q++) row[pw + q] = src[q];
                    for (i64 q = pw + W; q < Wp; q++) row[q] = 0.0f;
                }
            direct_channels(P, off, kg, w + g * og * kg, b ? b + g * og : NULL, Yw, nl * Wp, (nl - 1) * Wp + OW, og);
            for (i64 o = 0; o < og; o++)
                for (i64 l = 0; l < nl; l++) {
                    float *restrict dst = y + (n * O + g * og + o) * plane + (l0 + l) * OW;
                    const float *restrict src = Yw + o * nl * Wp + l * Wp;
                    for (i64 q = 0; q < OW; q++) dst[q] = src[q];
                }
        }
    }
    free(P), free(Yw), free(off);
    return 0;
}

/* Output channels in the vector lanes, for O/groups a multiple of 16: each
 * register block is OC_PIX output pixels x up to 64 output channels (4
 * vectors), one fused multiply-add per tap (c, i, j) of a broadcast input
 * value and a vector of the tap's weights (transposed to (Kg, O/groups)
 * here). The pixels are any OC_PIX of the block's lines, each read through
 * its own pointer into zero-padded input rows: no block is part-filled by
 * a short row or a plane's edge, as the pixel-vector blocks above are over
 * small planes (8x8 with padding 1: 64 real of 96 lanes), and no tile is
 * built, at any stride and dilation. Every output's sum is the same chain
 * of fused multiply-adds in (c, i, j) order, then + b: the same bits as
 * the loops above. Measured (2 threads, 3x3, against those loops; in turn,
 * same process): 64 -> 64 channels over 8x8, batch 64, 2.2 -> 1.6 ms; 32
 * -> 64 over 4x4, batch 256, 1.6-1.9 -> 1.0; 64 -> 32 over 4x4, 1.9 ->
 * 1.3; 32 -> 32 over 8x8, 0.6-1.1 -> 0.5-0.6; stride 2, 16 -> 32 and 32 ->
 * 64, 1.3 -> 0.93 and 1.08 -> 0.86; 16 channels over 16x16 and 32x32 and
 * 32 over 16x16 within the noise (1.8-3.2 ms either way). Not with few taps
 * per output over large planes (Kg <= 36 at 32x32 or more, Kg <= 9 at 8x8
 * or more: the first layers, 1x1 convolutions of few channels), where
 * scattering each block's pixels into the output planes costs as much as
 * its sums and the pixel-vector loops above win: 3 -> 32 channels over
 * 32x32, batch 64, 1.22 -> 0.83 ms; 1 -> 32 over 8x8, batch 256, 0.166 ->
 * 0.127; 1x1 8 -> 32 over 32x32 0.89 -> 0.44 (8 -> 64 at 3x3, Kg 72:
 * 4.1 against 4.2, so not there). */
enum { OC_PIX = 6, OC_VECS = 4 };

static inline __attribute__((always_inline)) DIRECT_FMA void oc_block(const float *const *px, const i64 *koff, i64 kg,
                                                                      const float *wt, i64 ldw, const float *b,
                                                                      float *out, int nv)
{
    direct_vec acc[OC_PIX][OC_VECS];
    for (int p = 0; p < OC_PIX; p++)
        for (int v = 0; v < nv; v++) acc[p][v] = (direct_vec){0};
    for (i64 k = 0; k < kg; k++) {
        direct_vec wv[OC_VECS];
        for (int v = 0; v < nv; v++) wv[v] = *(const direct_vec_u *)(wt + k * ldw + 16 * v);
        const i64 o = koff[k];
        for (int p = 0; p < OC_PIX; p++) {
            const float xs = px[p][o];
            for (int v = 0; v < nv; v++) acc[p][v] += xs * wv[v];
        }
    }
    for (int v = 0; v < nv; v++)
        for (int p = 0; p < OC_PIX; p++) {
            if (b)
                acc[p][v] += *(const direct_vec_u *)(b + 16 * v);
            *(direct_vec_u *)(out + p * 16 * OC_VECS + 16 * v) = acc[p][v];
        }
}


/* ylay: where output (n, o, line, col) goes, y + (n O + o) ylay[0] + ylay[3] + line ylay[1] + col ylay[2]
 * (NULL: NCHW, y (N, O, OH, OW)) */
static DIRECT_FMA int direct_oc(const float *x, const float *w, const float *b, float *y, const i64 *geo, i64 lo,
                                i64 hi, i64 lines, const i64 *ylay)
{
    const i64 C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 sh = geo[G_SH], sw = geo[G_SW], ph = geo[G_PH], pw = geo[G_PW], dh = geo[G_DH], dw = geo[G_DW];
    const i64 OH = geo[G_OH], OW = geo[G_OW], O = geo[G_LD];
    const i64 cg = C / G, og = O / G, kg = cg * kh * kw, blocks = (OH + lines - 1) / lines;
    const i64 plane = ylay ? ylay[0] : OH * OW, yrow = ylay ? ylay[1] : OW, ycol = ylay ? ylay[2] : 1;
    /* the padded rows of `lines` output lines: input columns -pw .. (OW-1)sw - pw + (kw-1)dw */
    const i64 Wp = (OW - 1) * sw + (kw - 1) * dw + 1, plen = ((lines - 1) * sh + (kh - 1) * dh + 1) * Wp;
    /* the rows' zero columns are the same in every unit: written once (calloc), and only the input's
     * columns are copied (a copy testing every column for the padding took 10% of 16 -> 16 channels
     * over 32x32); with units of whole images (small planes) the zero rows are the same every time too */
    const int whole = lines >= OH;
    const i64 inner = W < Wp - pw ? W : Wp - pw; /* the input columns the rows hold */
    float *P = calloc((size_t)(cg * plen), sizeof(float));
    float *wt = malloc((size_t)(O * kg) * sizeof(float));
    i64 *koff = malloc((size_t)kg * sizeof(i64));
    if (!P || !wt || !koff) {
        free(P), free(wt), free(koff);
        return 1;
    }
    for (i64 g = 0; g < G; g++)
        for (i64 o = 0; o < og; o++)
            for (i64 k = 0; k < kg; k++) wt[(g * kg + k) * og + o] = w[(g * og + o) * kg + k];
    for (i64 c = 0; c < cg; c++)
        for (i64 i = 0; i < kh; i++)
            for (i64 j = 0; j < kw; j++) koff[(c * kh + i) * kw + j] = c * plen + i * dh * Wp + j * dw;
    float out[OC_PIX * 16 * OC_VECS];
    for (i64 u = lo; u < hi; u++) {
        const i64 n = u / blocks, l0 = u % blocks * lines, nl = OH - l0 < lines ? OH - l0 : lines;
        const i64 rows = (nl - 1) * sh + (kh - 1) * dh + 1, pix = nl * OW;
        for (i64 g = 0; g < G; g++) {
            for (i64 c = 0; c < cg; c++)
                for (i64 r = 0; r < rows; r++) {
                    float *restrict row = P + c * plen + r * Wp;
                    const i64 ih = l0 * sh - ph + r;
                    if (ih < 0 || ih >= H) {
                        for (i64 q = 0; !whole && q < Wp; q++) row[q] = 0.0f;
                        continue;
                    }
                    const float *restrict src = x + ((n * C + g * cg + c) * H + ih) * W;
                    for (i64 q = 0; q < inner; q++) row[pw + q] = src[q];
                }
            float *yg = y + (n * O + g * og) * plane + (ylay ? ylay[3] : 0) + l0 * yrow;
            for (i64 p0 = 0; p0 < pix; p0 += OC_PIX) {
                const int count = pix - p0 < OC_PIX ? (int)(pix - p0) : OC_PIX;
                const float *px[OC_PIX];
                i64 at[OC_PIX]; /* where each pixel goes in yg's planes */
                for (int p = 0; p < OC_PIX; p++) { /* a short block repeats its last pixel */
                    const i64 q = p0 + (p < count ? p : count - 1);
                    px[p] = P + q / OW * sh * Wp + q % OW * sw;
                    at[p] = q / OW * yrow + q % OW * ycol;
                }
                for (i64 o0 = 0; o0 < og; o0 += 16 * OC_VECS) {
                    const float *wo = wt + g * kg * og + o0, *bo = b ? b + g * og + o0 : NULL;
                    const int nv = og - o0 >= 16 * OC_VECS ? OC_VECS : (int)((og - o0) / 16);
                    switch (nv) { /* constant block sizes: each gets its own unrolled registers */
                    case 4: oc_block(px, koff, kg, wo, og, bo, out, 4); break;
                    case 3: oc_block(px, koff, kg, wo, og, bo, out, 3); break;
                    case 2: oc_block(px, koff, kg, wo, og, bo, out, 2); break;
                    default: oc_block(px, koff, kg, wo, og, bo, out, 1);
                    }
                    for (int oc = 0; oc < 16 * nv; oc++)
                        for (int p = 0; p < count; p++) yg[(o0 + oc) * plane + at[p]] = out[p * 16 * OC_VECS + oc];
                }
            }
        }
    }
    free(P), free(wt), free(koff);
    return 0;
}

/* pixel blocks [lo, hi) of the N*ceil(OH/lines) blocks of `lines` output rows
 * each; returns 1 when out of memory (nothing written) */
DIRECT_FMA int gpunet_conv_direct_f32(const float *x, const float *w, const float *b, float *y, const i64 *geo, i64 lo,
                                      i64 hi)
{
    const i64 C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 OH = geo[G_OH], OW = geo[G_OW], O = geo[G_LD];
    const i64 cg = C / G, og = O / G, kg = cg * kh * kw, plane = OH * OW;
    const i64 lines = OW >= DIRECT_TILE ? 1 : (DIRECT_TILE / OW < OH ? DIRECT_TILE / OW : OH);
    if (og % 16 == 0 && (kg > 36 || plane < (kg > 9 ? 1024 : 64))) /* few taps over large planes: below */
        return direct_oc(x, w, b, y, geo, lo, hi, lines, NULL);
    if (geo[G_SH] == 1 && geo[G_SW] == 1 && cg >= DIRECT_WIDE_MIN_CHANNELS)
        return direct_wide(x, w, b, y, geo, lo, hi, lines);
    const i64 blocks = (OH + lines - 1) / lines;
    const i64 tp = (lines * OW + DIRECT_PIX - 1) / DIRECT_PIX * DIRECT_PIX;
    float *T = calloc((size_t)(kg * tp), sizeof(float)); /* the tail past a block's pixels: read, never stored */
    i64 *off = malloc((size_t)kg * sizeof(i64));
    if (!T || !off) {
        free(T), free(off);
        return 1;
    }
    for (i64 k = 0; k < kg; k++) off[k] = k * tp;
    for (i64 u = lo; u < hi; u++) {
        const i64 n = u / blocks, l0 = u % blocks * lines, nl = OH - l0 < lines ? OH - l0 : lines;
        for (i64 g = 0; g < G; g++) {
            for (i64 c = 0; c < cg; c++) {
                const float *src = x + (n * C + g * cg + c) * H * W;
                for (i64 i = 0; i < kh; i++)
                    for (i64 j = 0; j < kw; j++) direct_tap(src, T + ((c * kh + i) * kw + j) * tp, l0, nl, i, j, geo);
            }
            direct_channels(T, off, kg, w + g * og * kg, b ? b + g * og : NULL, y + (n * O + g * og) * plane + l0 * OW,
                            plane, nl * OW, og);
        }
    }
    free(T), free(off);
    return 0;
}

/* direct_oc (16k output channels per group, no bias) with its outputs laid
 * out by ylay: a strided convolution's dx, class by class of input pixels
 * (gpunet/ops/conv.py's _dx_strided) */
DIRECT_FMA int gpunet_conv_direct_into_f32(const float *x, const float *w, float *y, const i64 *geo, const i64 *ylay,
                                           i64 lo, i64 hi)
{
    const i64 OH = geo[G_OH], OW = geo[G_OW];
    const i64 lines = OW >= DIRECT_TILE ? 1 : (DIRECT_TILE / OW < OH ? DIRECT_TILE / OW : OH);
    return direct_oc(x, w, NULL, y, geo, lo, hi, lines, ylay);
}

/* ------------------------------------------------------------ finite scan */
/* 1 when x[lo, hi) holds a NaN or an infinity, else 0: gpunet/checks.py's
 * input scan in one read-only pass (NumPy's isfinite(x).all() writes and
 * rereads a bool array), in blocks so a bad value stops it early. x·0 is
 * ±0 for every finite x and NaN otherwise. */
#define SCAN_BLOCK 4096
#define ANY_NONFINITE(name, T)                                              \
    int name(const T *x, i64 lo, i64 hi)                                    \
    {                                                                       \
        for (i64 i = lo; i < hi; i += SCAN_BLOCK) {                         \
            i64 end = hi - i < SCAN_BLOCK ? hi : i + SCAN_BLOCK;            \
            int bad = 0;                                                    \
            for (i64 k = i; k < end; k++) bad |= !(x[k] * (T)0 == (T)0);    \
            if (bad) return 1;                                              \
        }                                                                   \
        return 0;                                                           \
    }
ANY_NONFINITE(gpunet_any_nonfinite_f32, float)
ANY_NONFINITE(gpunet_any_nonfinite_f64, double)

/* ------------------------------------------------------------ channels-last copy */
/* images [lo, hi) of x (N, C, H, W) into xh (N, H + 2ph, W + 2pw, C), the
 * border zeroed: the weight gradient's channels-last x (NumPy's strided
 * transpose of 16 channels over 32x32 took 1 ms a call). Each (image, row)
 * reads C contiguous runs of W and writes W runs of C, all in the L1. */
void gpunet_nchw_to_nhwc_f32(const float *x, float *restrict xh, i64 C, i64 H, i64 W, i64 ph, i64 pw, i64 lo,
                             i64 hi)
{
    const i64 Hp = H + 2 * ph, Wp = W + 2 * pw;
    for (i64 n = lo; n < hi; n++) {
        float *img = xh + n * Hp * Wp * C;
        memset(img, 0, (size_t)(ph * Wp * C) * sizeof(float));
        memset(img + (ph + H) * Wp * C, 0, (size_t)(ph * Wp * C) * sizeof(float));
        for (i64 h = 0; h < H; h++) {
            float *row = img + (h + ph) * Wp * C;
            memset(row, 0, (size_t)(pw * C) * sizeof(float));
            memset(row + (pw + W) * C, 0, (size_t)(pw * C) * sizeof(float));
            const float *src = x + (n * C * H + h) * W;
            for (i64 c = 0; c < C; c++)
                for (i64 w = 0; w < W; w++) row[(pw + w) * C + c] = src[c * H * W + w];
        }
    }
}

/* ------------------------------------------------------------ convolution: weight gradient, direct */
/* gpunet/ops/conv.py's weight (and bias) gradient where dx does not need the
 * column gradient (a stride-1 dx through the direct loop): no column matrix
 * and no BLAS call. For a block of whole output lines of one image (about
 * DW_LINES_PIXELS pixels: R stays in L2), the rows R (one per pixel) hold the pixel's taps in (i, j, c) order,
 * copied from x in NHWC (xh: N H W C) as one run of the group's C/G channels
 * per kernel offset, then a 1 for the bias when ld > Kg, then zeros up to
 * ldp (ld rounded up to 16). Then dW[o, k] += sum over the block's pixels of
 * dy[o, p] * R[p, k], vectorised over k, 2 vectors of 16 taps x 8 channels
 * per register block (against 4 x 4, the same 16 accumulators: 1.15-1.6x
 * faster over the small ResNet's layers, 2 threads), every product-and-add
 * one FMA (DIRECT_FMA). Chunk u of `per` images sums its blocks in order into part[u] (G*og x ldp floats);
 * the caller adds the chunks in order: results depend on `per` (a function
 * of N), not on how the chunks are split over threads. The caller reorders
 * (i, j, c) to (c, i, j). geo: the row layout's, ld in G_LD. Returns 1
 * when out of memory (nothing written). (`padded` below: no rows R.) */
enum { DW_LINES_PIXELS = 256, DW_KV = 2, DW_OB = 8 };

/* the taps of output pixel (n, oh, ow) of group g into d (Kg floats) */
static inline void hwc_row(const float *xh, float *restrict d, i64 n, i64 oh, i64 ow, i64 g, const i64 *geo)
{
    const i64 C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 sh = geo[G_SH], sw = geo[G_SW], ph = geo[G_PH], pw = geo[G_PW], dh = geo[G_DH], dw = geo[G_DW];
    const i64 cg = C / G;
    for (i64 i = 0; i < kh; i++) {
        const i64 ih = oh * sh - ph + i * dh;
        for (i64 j = 0; j < kw; j++, d += cg) {
            const i64 iw = ow * sw - pw + j * dw;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
                for (i64 c = 0; c < cg; c++) d[c] = 0.0f;
                continue;
            }
            const float *restrict s = xh + ((n * H + ih) * W + iw) * C + g * cg;
            for (i64 c = 0; c < cg; c++) d[c] = s[c];
        }
    }
}

/* out[c][16v ..] += sum over lines l < nl and pixels ow < OW of
 * dy[c*plane + l*OW + ow] * B[v][l*lstride + ow*pstride ..], c < ob, v < kv
 * (B[v]: where tap vector v of the block's first pixel is) */
static inline __attribute__((always_inline)) DIRECT_FMA void dw_block(const float *const *B, i64 pstride, i64 lstride,
                                                                      i64 nl, i64 OW, const float *dy, i64 plane,
                                                                      float *out, i64 ldp, int ob, int kv)
{
    direct_vec acc[DW_OB][DW_KV];
    for (int c = 0; c < ob; c++)
        for (int v = 0; v < kv; v++) acc[c][v] = (direct_vec){0};
    for (i64 l = 0; l < nl; l++)
        for (i64 ow = 0; ow < OW; ow++) {
            direct_vec xv[DW_KV];
            for (int v = 0; v < kv; v++) xv[v] = *(const direct_vec_u *)(B[v] + l * lstride + ow * pstride);
            for (int c = 0; c < ob; c++) {
                const float d = dy[c * plane + l * OW + ow];
                for (int v = 0; v < kv; v++) acc[c][v] += d * xv[v];
            }
        }
    for (int c = 0; c < ob; c++)
        for (int v = 0; v < kv; v++) *(direct_vec_u *)(out + c * ldp + 16 * v) += acc[c][v];
}

/* x[0] + ... + x[n-1]: 16 lanes in order, then the lanes in order, then the rest */
static inline DIRECT_FMA float sum_floats(const float *x, i64 n)
{
    direct_vec acc = {0};
    i64 p = 0;
    for (; p + 16 <= n; p += 16) acc += *(const direct_vec_u *)(x + p);
    float s = 0.0f;
    for (int v = 0; v < 16; v++) s += acc[v];
    for (; p < n; p++) s += x[p];
    return s;
}

#define DW_CASE(OB, KV) \
    dw_block(B + k, pstride, lstride, nl, OW, d0 + o * plane, plane, out + o * ldp + 16 * k, ldp, OB, KV)

/* chunks [lo, hi) of `per` images each; O output channels. With `padded`
 * (C/G a multiple of 16), xh is x itself (NCHW), each image copied in turn
 * to NHWC zero-padded to (H + 2ph, W + 2pw, C) in a buffer of the call's
 * own (L2-sized: a copy of the whole batch went to memory and back; with x
 * cold, batch 64, 2 threads, in turn in one process: 16 -> 16 channels over
 * 32x32 3.32 -> 2.76 ms, 32 -> 64 over 16x16 at stride 2 2.97 -> 2.03): then every
 * vector of 16 taps of a pixel is 16 consecutive channels of one padded
 * input pixel, read in place (no rows R; the bias's 1s are summed apart,
 * sum_floats). Otherwise xh is x in NHWC, unpadded. */
DIRECT_FMA int gpunet_conv_dw_f32(const float *xh, const float *dy, float *part, const i64 *geo, i64 O, i64 per,
                                  i64 padded, i64 lo, i64 hi)
{
    const i64 N = geo[G_N], C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 dh = geo[G_DH], dw = geo[G_DW], OH = geo[G_OH], OW = geo[G_OW], ld = geo[G_LD], cg = C / G;
    const i64 sh = geo[G_SH], sw = geo[G_SW];
    const i64 kg = cg * kh * kw, ldp = (ld + 15) / 16 * 16, vecs = ldp / 16, og = O / G, plane = OH * OW;
    const i64 Hp = H + 2 * geo[G_PH], Wp = W + 2 * geo[G_PW];
    const i64 lines = OW >= DW_LINES_PIXELS ? 1 : (DW_LINES_PIXELS / OW < OH ? DW_LINES_PIXELS / OW : OH);
    /* columns [ld, ldp) of R: never written, 0 */
    float *R = padded ? NULL : calloc((size_t)(lines * OW * ldp), sizeof(float));
    float *img = padded ? malloc((size_t)(Hp * Wp * C) * sizeof(float)) : NULL; /* padded: one image in NHWC */
    const float **B = malloc((size_t)vecs * sizeof(float *));
    if ((!padded && !R) || (padded && !img) || !B) {
        free(R), free(img), free(B);
        return 1;
    }
    const i64 pstride = padded ? sw * C : ldp, lstride = padded ? sh * Wp * C : OW * ldp;
    const i64 tapvecs = padded ? kg / 16 : vecs; /* the vectors dw_block reads */
    for (i64 u = lo; u < hi; u++) {
        float *pu = part + u * O * ldp;
        memset(pu, 0, (size_t)(O * ldp) * sizeof(float));
        for (i64 n = u * per; n < N && n < (u + 1) * per; n++) {
            if (padded)
                gpunet_nchw_to_nhwc_f32(xh + n * C * H * W, img, C, H, W, geo[G_PH], geo[G_PW], 0, 1);
            for (i64 l0 = 0; l0 < OH; l0 += lines) {
                const i64 nl = OH - l0 < lines ? OH - l0 : lines, pix = nl * OW;
                for (i64 g = 0; g < G; g++) {
                    if (padded) {
                        for (i64 v = 0; v < tapvecs; v++) {
                            const i64 tap = v * 16 / cg, c0 = v * 16 % cg, i = tap / kw, j = tap % kw;
                            B[v] = img + ((l0 * sh + i * dh) * Wp + j * dw) * C + g * cg + c0;
                        }
                    } else {
                        for (i64 p = 0; p < pix; p++) {
                            hwc_row(xh, R + p * ldp, n, l0 + p / OW, p % OW, g, geo);
                            if (ld > kg) R[p * ldp + kg] = 1.0f;
                        }
                        for (i64 v = 0; v < vecs; v++) B[v] = R + 16 * v;
                    }
                    const float *d0 = dy + (n * O + g * og) * plane + l0 * OW;
                    float *out = pu + g * og * ldp;
                    for (i64 k = 0; k < tapvecs; k += DW_KV) {
                        const int kv = tapvecs - k < DW_KV ? (int)(tapvecs - k) : DW_KV;
                        for (i64 o = 0; o < og;) {
                            const int ob = og - o >= 8 ? 8 : og - o >= 4 ? 4 : og - o >= 2 ? 2 : 1;
                            switch (ob * 8 + kv) { /* constant block sizes: registers unrolled per case */
                            case 66: DW_CASE(8, 2); break;
                            case 65: DW_CASE(8, 1); break;
                            case 34: DW_CASE(4, 2); break;
                            case 33: DW_CASE(4, 1); break;
                            case 18: DW_CASE(2, 2); break;
                            case 17: DW_CASE(2, 1); break;
                            case 10: DW_CASE(1, 2); break;
                            default: DW_CASE(1, 1);
                            }
                            o += ob;
                        }
                    }
                    for (i64 o = 0; padded && ld > kg && o < og; o++)
                        out[o * ldp + kg] += sum_floats(d0 + o * plane, pix);
                }
            }
        }
    }
    free(R), free(img), free(B);
    return 0;
}

/* The weight gradient for fewer than 8 input channels per group at stride
 * 1 (the first layers: 1-3 channels, Kg = 9-27 taps with 3x3), vectorised
 * over output pixels instead of taps (the loop above fills 27 of 32 lanes
 * with 3 channels, and builds every pixel's row of taps from runs of 1-3
 * floats). A chunk's
 * images are laid out on the "wide" grid of direct_wide: x zero-padded to
 * (H + 2ph) x Wp, Wp = W + 2pw, and dy on the same grid (zero past OW on each
 * line), so every tap (c, i, j) of wide pixel q reads x at q + i*dh*Wp +
 * j*dw: 16 pixels a vector, contiguous, for every tap. Each register block
 * of DP_OB output channels x DP_TB taps sums its vectors over the chunk's
 * images in order, then its 16 lanes in order, into part[u] (taps in (i, j,
 * c) order as above, the bias's sum at Kg): results depend on `per`, not
 * on the threads. Measured (2 threads, 3x3, in turn in one process): the
 * small ResNet's 3 -> 16 channels over 32x32, batch 64, 1.36 -> 0.50 ms
 * against the loop above; 1 -> 32 over 8x8, batch 256, 0.34 against 0.8
 * from the columns (1 -> 16 over 28x28, batch 64: 0.34 against 1.0).
 * Returns 1 when out of memory. */
enum { DP_OB = 8, DP_TB = 3 };

static inline __attribute__((always_inline)) DIRECT_FMA void dp_block(const float *X, const float *D, i64 xstride,
                                                                      i64 dstride, i64 imgs, i64 vecs,
                                                                      const i64 *toff, i64 dplane, float *out,
                                                                      i64 ldp, int ob, int tb)
{
    direct_vec acc[DP_OB][DP_TB];
    for (int o = 0; o < ob; o++)
        for (int t = 0; t < tb; t++) acc[o][t] = (direct_vec){0};
    for (i64 n = 0; n < imgs; n++) {
        const float *xn = X + n * xstride, *dn = D + n * dstride;
        for (i64 v = 0; v < vecs; v++) {
            direct_vec xv[DP_TB];
            for (int t = 0; t < tb; t++) xv[t] = *(const direct_vec_u *)(xn + toff[t] + 16 * v);
            for (int o = 0; o < ob; o++) {
                const direct_vec d = *(const direct_vec_u *)(dn + o * dplane + 16 * v);
                for (int t = 0; t < tb; t++) acc[o][t] += d * xv[t];
            }
        }
    }
    for (int o = 0; o < ob; o++)
        for (int t = 0; t < tb; t++) {
            float sum = 0.0f;
            for (int l = 0; l < 16; l++) sum += acc[o][t][l];
            out[o * ldp + t] += sum;
        }
}

DIRECT_FMA int gpunet_conv_dw_pixels_f32(const float *x, const float *dy, float *part, const i64 *geo, i64 O,
                                         i64 per, i64 lo, i64 hi)
{
    const i64 N = geo[G_N], C = geo[G_C], H = geo[G_H], W = geo[G_W], G = geo[G_G], kh = geo[G_KH], kw = geo[G_KW];
    const i64 ph = geo[G_PH], pw = geo[G_PW], dh = geo[G_DH], dw = geo[G_DW], OH = geo[G_OH], OW = geo[G_OW];
    const i64 ld = geo[G_LD], cg = C / G, og = O / G, kg = cg * kh * kw, ldp = (ld + 15) / 16 * 16;
    const i64 Wp = W + 2 * pw, Hp = H + 2 * ph, vecs = (OH * Wp + 15) / 16;
    /* x's padded planes, with room for the last vector's reads past them; dy on the wide grid */
    const i64 xplane = Hp * Wp + 16 + (kh - 1) * dh * Wp + (kw - 1) * dw, dplane = vecs * 16;
    float *X = calloc((size_t)(per * cg * xplane), sizeof(float));
    float *D = calloc((size_t)(per * og * dplane), sizeof(float));
    i64 *toff = malloc((size_t)kg * sizeof(i64));
    if (!X || !D || !toff) {
        free(X), free(D), free(toff);
        return 1;
    }
    for (i64 i = 0, t = 0; i < kh; i++) /* taps in (i, j, c) order */
        for (i64 j = 0; j < kw; j++)
            for (i64 c = 0; c < cg; c++, t++) toff[t] = c * xplane + i * dh * Wp + j * dw;
    for (i64 u = lo; u < hi; u++) {
        float *pu = part + u * O * ldp;
        memset(pu, 0, (size_t)(O * ldp) * sizeof(float));
        const i64 n0 = u * per, imgs = N - n0 < per ? N - n0 : per;
        for (i64 g = 0; g < G; g++) {
            for (i64 n = 0; n < imgs; n++) {
                for (i64 c = 0; c < cg; c++)
                    for (i64 h = 0; h < H; h++)
                        memcpy(X + (n * cg + c) * xplane + (h + ph) * Wp + pw,
                               x + (((n0 + n) * C + g * cg + c) * H + h) * W, (size_t)W * sizeof(float));
                for (i64 o = 0; o < og; o++)
                    for (i64 l = 0; l < OH; l++)
                        memcpy(D + (n * og + o) * dplane + l * Wp,
                               dy + (((n0 + n) * O + g * og + o) * OH + l) * OW, (size_t)OW * sizeof(float));
            }
            float *out = pu + g * og * ldp;
            for (i64 o = 0; o < og;) {
                const int ob = og - o >= 8 ? 8 : og - o >= 4 ? 4 : og - o >= 2 ? 2 : 1;
                for (i64 t = 0; t < kg;) {
                    const int tb = kg - t >= 3 ? 3 : (int)(kg - t);
#define DP_CASE(OB, TB) \
    dp_block(X, D + o * dplane, cg * xplane, og * dplane, imgs, vecs, toff + t, dplane, out + o * ldp + t, ldp, OB, TB)
                    switch (ob * 4 + tb) { /* constant block sizes: registers unrolled per case */
                    case 35: DP_CASE(8, 3); break;
                    case 34: DP_CASE(8, 2); break;
                    case 33: DP_CASE(8, 1); break;
                    case 19: DP_CASE(4, 3); break;
                    case 18: DP_CASE(4, 2); break;
                    case 17: DP_CASE(4, 1); break;
                    case 11: DP_CASE(2, 3); break;
                    case 10: DP_CASE(2, 2); break;
                    case 9: DP_CASE(2, 1); break;
                    case 7: DP_CASE(1, 3); break;
                    case 6: DP_CASE(1, 2); break;
                    default: DP_CASE(1, 1);
                    }
#undef DP_CASE
                    t += tb;
                }
                for (int oo = 0; ld > kg && oo < ob; oo++)
                    for (i64 n = 0; n < imgs; n++)
                        out[(o + oo) * ldp + kg] += sum_floats(D + (n * og + o + oo) * dplane, dplane);
                o += ob;
            }
        }
    }
    free(X), free(D), free(toff);
    return 0;
}

/* ------------------------------------------------------------ cross-entropy rows */
/* gpunet/ops/loss.py's host float32 cross-entropy, rows [0, m) of x (m, n):
 * forward: lse[2r] = the row's max s, lse[2r + 1] = log sum_k e^(x_k - s)
 * (the sum as the softmax rows', exp_sum), one read of the row and
 * no (m, n) temporary. A NaN in the row gives NaN, as NumPy's max. */
void gpunet_cross_entropy_lse_f32(const float *restrict x, float *restrict lse, i64 n, i64 lo, i64 hi)
{
    for (i64 r = lo; r < hi; r++) {
        const float *xr = x + r * n;
        float s = row_extreme(xr, n, 1, NULL);
        lse[2 * r] = s;
        lse[2 * r + 1] = logf((float)exp_sum(xr, NULL, n, s, 1.0f, 0, 0));
    }
}

/* backward without label smoothing, in the NumPy path's float32 order:
 *   dx_k = (e^((x_k - s) - l)·a_r [- ct_r at k = t_r])·scale_r
 * a (the row's total target weight), ct (its weight at the target), scale
 * (dloss over the reduction) per row; one pass writing dx. */
void gpunet_cross_entropy_grad_f32(const float *restrict x, const float *restrict lse, const int64_t *restrict t,
                                   const float *restrict a, const float *restrict ct, const float *restrict scale,
                                   float *restrict dx, i64 n, i64 lo, i64 hi)
{
    for (i64 r = lo; r < hi; r++) {
        const float *xr = x + r * n;
        float *dr = dx + r * n;
        const float s = lse[2 * r], l = lse[2 * r + 1], ar = a[r], sc = scale[r];
        for (i64 k = 0; k < n; k++) dr[k] = (exp_f32((xr[k] - s) - l) * ar) * sc;
        dr[t[r]] = (exp_f32((xr[t[r]] - s) - l) * ar - ct[r]) * sc;
    }
}

/* ------------------------------------------------------------ pooling on the pool
 * Planes [lo, hi) of the pooling loops above in gpunet_run_ranges's call
 * shape: the scalars in q (the Q_ order below; then dh, dw for max pooling, and
 * tiles for its backward, or include_pad and backward for average pooling), the scratch
 * allocated here for the call. Each returns 1 when it cannot allocate. */
enum { Q_H, Q_W, Q_OH, Q_OW, Q_HP, Q_WP, Q_KH, Q_KW, Q_SH, Q_SW, Q_PH, Q_PW, Q_EXTRA };

int gpunet_maxpool2d_forward_range_f32(const float *x, float *y, int32_t *arg, const i64 *q, i64 lo, i64 hi)
{
    const i64 in = q[Q_H] * q[Q_W], out = q[Q_OH] * q[Q_OW];
    float *pad = malloc((size_t)(q[Q_HP] * q[Q_WP]) * sizeof(float));
    int32_t *off = malloc((size_t)out * sizeof(int32_t));
    if (pad && off)
        gpunet_maxpool2d_forward_f32(x + lo * in, y + lo * out, arg + lo * out, pad, off, hi - lo, q[Q_H], q[Q_W],
                                     q[Q_OH], q[Q_OW], q[Q_HP], q[Q_WP], q[Q_KH], q[Q_KW], q[Q_SH], q[Q_SW],
                                     q[Q_PH], q[Q_PW], q[Q_EXTRA], q[Q_EXTRA + 1]);
    int failed = !pad || !off;
    free(pad);
    free(off);
    return failed;
}

int gpunet_maxpool2d_backward_range_f32(const float *dy, const int32_t *arg, float *dx, const i64 *q, i64 lo, i64 hi)
{
    const i64 in = q[Q_H] * q[Q_W], out = q[Q_OH] * q[Q_OW];
    gpunet_maxpool2d_backward_f32(dy + lo * out, arg + lo * out, dx + lo * in, hi - lo, q[Q_H], q[Q_W], q[Q_OH],
                                  q[Q_OW], q[Q_KH], q[Q_KW], q[Q_SH], q[Q_SW], q[Q_PH], q[Q_PW], q[Q_EXTRA],
                                  q[Q_EXTRA + 1], (int)q[Q_EXTRA + 2]);
    return 0;
}

/* forward (src x, dst y) or, with q[Q_EXTRA + 1] set, backward (src dy, dst dx) of average pooling */
int gpunet_avgpool2d_range_f32(const float *src, float *dst, const i64 *q, i64 lo, i64 hi)
{
    const i64 backward = q[Q_EXTRA + 1];
    const i64 in = q[Q_H] * q[Q_W], out = q[Q_OH] * q[Q_OW];
    float *pad = malloc((size_t)(q[Q_HP] * q[Q_WP]) * sizeof(float));
    float *div = malloc((size_t)(2 * out) * sizeof(float)); /* the divisors, then the backward's shares */
    if (pad && div) {
        if (backward)
            gpunet_avgpool2d_backward_f32(src + lo * out, dst + lo * in, pad, div, div + out, hi - lo, q[Q_H], q[Q_W],
                                          q[Q_OH], q[Q_OW], q[Q_HP], q[Q_WP], q[Q_KH], q[Q_KW], q[Q_SH], q[Q_SW],
                                          q[Q_PH], q[Q_PW], (int)q[Q_EXTRA]);
        else
            gpunet_avgpool2d_forward_f32(src + lo * in, dst + lo * out, pad, div, hi - lo, q[Q_H], q[Q_W], q[Q_OH],
                                         q[Q_OW], q[Q_HP], q[Q_WP], q[Q_KH], q[Q_KW], q[Q_SH], q[Q_SW], q[Q_PH],
                                         q[Q_PW], (int)q[Q_EXTRA]);
    }
    int failed = !pad || !div;
    free(pad);
    free(div);
    return failed;
}

/* ------------------------------------------------------------ the thread pool
 * One pool of worker threads runs two kinds of parallel calls:
 *
 * - OpenBLAS's jobs. After every threaded call OpenBLAS's own worker threads
 *   busy-wait (a nop loop on x86-64, no yield) for 2^28 TSC cycles, about
 *   0.1 s, before they sleep, on the cores the host loops that follow a GEMM
 *   need: on 2 cores a direct convolution right after a GEMM took 2x its
 *   time. OpenBLAS 0.3.27+ hands its jobs to the application instead where
 *   one is registered (openblas_set_threads_callback_function;
 *   gpunet/ops/host_threads.py registers gpunet_blas_run_jobs).
 * - The host loops' ranges (gpunet_run_ranges): one foreign call runs every
 *   thread's range, where handing each to a Python thread cost about 50 us
 *   per call on a 2-core VM, more than many loops' work.
 *
 * Workers spin for POOL_SPIN_NS at most after a call (back-to-back calls,
 * an LSTM's GEMMs or a step's layers, find them awake), then sleep on a
 * condition variable. A sleeping worker wakes later than the caller starts
 * claiming jobs (tens of microseconds on a VM), so a call of two ranges
 * that finds it asleep may run both on the caller; a step's layers often
 * spend longer than 100 us in Python between calls. Measured, 2 threads,
 * training steps alternating in one process, against 100 us: 0.95-0.98x
 * the digits CNN's time, 0.955-0.98x the small ResNet's, 0.98x the char
 * LSTM's and the transformer's with 2 ms (0.5 and 5 ms: the same). Work
 * handed to Python threads instead (gpunet/ops/host_threads.py's run)
 * first parks the workers (gpunet_pool_park), so none spins on the cores
 * those threads need (the transformer's attention: without, its step took
 * 1.056x the time). One call at a time; the jobs must not call the pool
 * themselves. A call publishes its jobs, then a ticket word (generation,
 * jobs, next job index); the caller and the woken workers claim indices by
 * compare-and-swap on it, so a worker that wakes late, after its generation
 * ended, claims nothing, and the caller returns when every job has
 * finished, so the jobs' fields stay valid for whoever claimed one. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

typedef void (*pool_job_fn)(int index, void *job, int arg);

#define POOL_MAX 64
#define POOL_SPIN_NS 2000000
#define TICKET_INDEX_BITS 20
#define TICKET_JOBS_BITS 20
#define TICKET_MASK ((1ull << TICKET_INDEX_BITS) - 1)
#define GENERATION_MASK ((1ull << (64 - TICKET_INDEX_BITS - TICKET_JOBS_BITS)) - 1)

static struct {
    pthread_mutex_t call, lock;
    pthread_cond_t wake, done;
    pool_job_fn job;
    char *data;
    size_t size;
    int arg;
    _Atomic uint64_t ticket; /* generation << 40 | jobs << 20 | next index */
    atomic_int left;         /* jobs not yet finished */
    atomic_int sleeping;     /* workers waiting on `wake` */
    atomic_int parked;       /* set: spinning workers sleep now (cleared by the next call) */
    int started;
    atomic_llong blas_calls;
} pool = {.call = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

static inline uint64_t ticket_generation(uint64_t t) { return t >> (TICKET_INDEX_BITS + TICKET_JOBS_BITS); }

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* claim and run the jobs of generation `gen` until none is left */
static void pool_work(uint64_t gen)
{
    uint64_t t = atomic_load(&pool.ticket);
    for (;;) {
        if (ticket_generation(t) != gen || (t & TICKET_MASK) >= ((t >> TICKET_INDEX_BITS) & TICKET_MASK))
            return;
        if (!atomic_compare_exchange_weak(&pool.ticket, &t, t + 1))
            continue; /* t now holds the current ticket */
        int i = (int)(t & TICKET_MASK);
        pool.job(i, pool.data + (size_t)i * pool.size, pool.arg);
        if (atomic_fetch_sub(&pool.left, 1) == 1) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_broadcast(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
        t = atomic_load(&pool.ticket);
    }
}

static void *pool_worker(void *start)
{
    uint64_t seen = (uint64_t)(uintptr_t)start; /* the generation before the call that started it */
    for (;;) {
        long long until = now_ns() + POOL_SPIN_NS;
        uint64_t gen;
        for (int spins = 0; (gen = ticket_generation(atomic_load(&pool.ticket))) == seen; spins++) {
            if ((spins & 63) == 63 && (now_ns() > until || atomic_load(&pool.parked))) {
                pthread_mutex_lock(&pool.lock);
                atomic_fetch_add(&pool.sleeping, 1);
                while ((gen = ticket_generation(atomic_load(&pool.ticket))) == seen)
                    pthread_cond_wait(&pool.wake, &pool.lock);
                atomic_fetch_sub(&pool.sleeping, 1);
                pthread_mutex_unlock(&pool.lock);
                break;
            }
            cpu_relax();
        }
        seen = gen;
        pool_work(gen);
    }
    return NULL;
}

/* job(i, data + i*size, arg) for i < jobs on the pool and the calling thread; returns when all are done */
static void pool_run(pool_job_fn job, int jobs, size_t size, void *data, int arg)
{
    if (jobs <= 0)
        return;
    pthread_mutex_lock(&pool.call);
    uint64_t before = ticket_generation(atomic_load(&pool.ticket)), gen = (before + 1) & GENERATION_MASK;
    while (pool.started < jobs - 1 && pool.started < POOL_MAX) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&th, &attr, pool_worker, (void *)(uintptr_t)before);
        pthread_attr_destroy(&attr);
        if (failed)
            break; /* fewer workers: the caller claims the rest */
        pool.started++;
    }
    pool.job = job;
    pool.data = data;
    pool.size = size;
    pool.arg = arg;
    atomic_store(&pool.left, jobs);
    atomic_store(&pool.parked, 0);
    atomic_store(&pool.ticket, gen << (TICKET_INDEX_BITS + TICKET_JOBS_BITS) | (uint64_t)jobs << TICKET_INDEX_BITS);
    if (atomic_load(&pool.sleeping)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    pool_work(gen);
    for (long long until = now_ns() + POOL_SPIN_NS; atomic_load(&pool.left);) {
        if (now_ns() > until) {
            pthread_mutex_lock(&pool.lock);
            while (atomic_load(&pool.left))
                pthread_cond_wait(&pool.done, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
            break;
        }
        cpu_relax();
    }
    pthread_mutex_unlock(&pool.call);
}

/* OpenBLAS's threads callback (OpenBLAS waits for every call's jobs: `sync` changes nothing) */
void gpunet_blas_run_jobs(int sync, pool_job_fn job, int jobs, size_t size, void *data, int arg)
{
    (void)sync;
    pool_run(job, jobs, size, data, arg);
    atomic_fetch_add(&pool.blas_calls, 1);
}

/* fn(args[0..nargs), bounds[i], bounds[i+1]) for i < parts: a host loop's
 * ranges. Every parameter of such a loop is a pointer or an int64, one
 * integer register or stack slot each on the ABIs gpunet is built for
 * (x86-64 System V and Windows, AArch64), so one call shape per parameter
 * count reaches them all; a loop returning void leaves its result
 * meaningless, and the caller ignores it. */
#define RANGES_MAX_ARGS 11
struct ranges_call {
    void *fn;
    const i64 *a;
    int nargs;
    const i64 *bounds;
    int *results;
};

static void ranges_job(int i, void *data, int arg)
{
    (void)arg;
    const struct ranges_call *c = data;
    const i64 *a = c->a, lo = c->bounds[i], hi = c->bounds[i + 1];
    typedef i64 W;
    int r = 0;
    switch (c->nargs) {
    case 1: r = ((int (*)(W, W, W))c->fn)(a[0], lo, hi); break;
    case 2: r = ((int (*)(W, W, W, W))c->fn)(a[0], a[1], lo, hi); break;
    case 3: r = ((int (*)(W, W, W, W, W))c->fn)(a[0], a[1], a[2], lo, hi); break;
    case 4: r = ((int (*)(W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], lo, hi); break;
    case 5: r = ((int (*)(W, W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], a[4], lo, hi); break;
    case 6: r = ((int (*)(W, W, W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], a[4], a[5], lo, hi); break;
    case 7:
        r = ((int (*)(W, W, W, W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], lo, hi);
        break;
    case 8:
        r = ((int (*)(W, W, W, W, W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], lo, hi);
        break;
    case 9:
        r = ((int (*)(W, W, W, W, W, W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8],
                                                               lo, hi);
        break;
    case 10:
        r = ((int (*)(W, W, W, W, W, W, W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                                                  a[8], a[9], lo, hi);
        break;
    case 11:
        r = ((int (*)(W, W, W, W, W, W, W, W, W, W, W, W, W))c->fn)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                                                     a[8], a[9], a[10], lo, hi);
        break;
    }
    c->results[i] = r;
}

/* 0 when it ran, -1 for a parameter count it has no call shape for */
int gpunet_run_ranges(void *fn, const i64 *args, int nargs, const i64 *bounds, int parts, int *results)
{
    if (nargs < 1 || nargs > RANGES_MAX_ARGS)
        return -1;
    struct ranges_call c = {fn, args, nargs, bounds, results};
    pool_run(ranges_job, parts, 0, &c, 0); /* size 0: every job reads the one call */
    return 0;
}

/* a forked child has none of the workers, and the locks as some thread of the parent held them */
static void pool_after_fork(void)
{
    pthread_mutex_init(&pool.call, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.started = 0;
    atomic_store(&pool.sleeping, 0);
}

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static int pool_fork_handler;
static void pool_init_once(void) { pool_fork_handler = pthread_atfork(NULL, NULL, pool_after_fork); }

/* once per process, before the first use; 0 on success */
int gpunet_pool_init(void)
{
    pthread_once(&pool_once, pool_init_once);
    return pool_fork_handler;
}

/* the workers spinning after the last call go to sleep (about 64 pauses later) */
void gpunet_pool_park(void) { atomic_store(&pool.parked, 1); }

/* OpenBLAS calls the pool ran, workers started and workers asleep, for the tests */
void gpunet_pool_stats(int64_t *out)
{
    out[0] = atomic_load(&pool.blas_calls);
    out[1] = pool.started;
    out[2] = atomic_load(&pool.sleeping);
}

/* ------------------------------------------------------------ the LSTM's sequences on the pool */
/* A float32 LSTM layer without projection, all T steps in one foreign call,
 * each step's unit blocks split over the pool by bounds[0..parts] (the
 * steps one after the other: step t reads all of step t-1). Per step this
 * saves the ~14 us the Python loop and its hand-off cost around each
 * step's ~125 us (32 x 256 units, 2 threads). */
struct lstm_forward_sequence {
    float *g, *hs, *cs, *tanh_c;
    const float *x, *wp, *b;
    const i64 *dims, *bounds; /* dims: B H I R T */
    i64 t;
};

static void lstm_forward_job(int i, void *data, int arg)
{
    (void)arg;
    const struct lstm_forward_sequence *s = data;
    const i64 B = s->dims[0], H = s->dims[1], I = s->dims[2], t = s->t;
    gpunet_lstm_step_forward_f32(s->g + t * B * 4 * H, s->x + t * B * I, s->hs + t * B * H, s->wp, s->b,
                                 s->cs + t * B * H, s->cs + (t + 1) * B * H, s->tanh_c + t * B * H,
                                 s->hs + (t + 1) * B * H, s->dims, s->bounds[i], s->bounds[i + 1]);
}

/* step t's parts on the pool (data: the sequence, its t set) */
static void lstm_run_step(pool_job_fn job, void *data, int parts)
{
    if (parts == 1)
        job(0, data, 0);
    else
        pool_run(job, parts, 0, data, 0); /* size 0: every job reads the one sequence */
}

/* g (T, B, 4H) gets the activated gates, hs and cs (T+1, B, H) the states
 * after hs[0], cs[0], tanh_c (T, B, H); x (T, B, I), wp and b as
 * gpunet_lstm_step_forward_f32's; dims B H I H T */
void gpunet_lstm_forward_f32(float *g, const float *x, float *hs, const float *wp, const float *b, float *cs,
                             float *tanh_c, const i64 *dims, const i64 *bounds, i64 parts)
{
    struct lstm_forward_sequence s = {.g = g, .hs = hs, .cs = cs, .tanh_c = tanh_c, .x = x, .wp = wp, .b = b,
                                      .dims = dims, .bounds = bounds};
    for (s.t = 0; s.t < dims[4]; s.t++)
        lstm_run_step(lstm_forward_job, &s, (int)parts);
}

struct lstm_backward_sequence {
    float *dg, *dc_bufs;
    const float *wb, *g, *cs, *tanh_c, *dy, *dh_n, *dc_n;
    const i64 *dims, *bounds; /* dims: B H I H T */
    i64 t;
};

static void lstm_backward_job(int i, void *data, int arg)
{
    (void)arg;
    const struct lstm_backward_sequence *s = data;
    const i64 B = s->dims[0], H = s->dims[1], T = s->dims[4], t = s->t, bh = B * H;
    const int last = t == T - 1;
    lstm_step_backward(last ? NULL : s->dg + (t + 1) * B * 4 * H, s->wb, last ? s->dh_n : NULL,
                       s->g + t * B * 4 * H, s->cs + t * bh, s->tanh_c + t * bh, s->dy ? s->dy + t * bh : NULL,
                       last ? s->dc_n : s->dc_bufs + (t + 1) % 2 * bh, s->dg + t * B * 4 * H,
                       s->dc_bufs + t % 2 * bh, B, H, s->bounds[i], s->bounds[i + 1]);
}

/* dg (T, B, 4H) gets every step's pre-activation gate gradients and
 * dc_bufs (2, B, H) the gradients reaching c_t, alternately (dc_bufs[0]:
 * c_0's); g, cs, tanh_c as the forward left them, wb the backward panels,
 * dy (T, B, H), dh_n and dc_n (B, H) or NULL (zero); dims B H I H T */
void gpunet_lstm_backward_f32(float *dg, const float *wb, const float *g, const float *cs, const float *tanh_c,
                              const float *dy, const float *dh_n, const float *dc_n, float *dc_bufs, const i64 *dims,
                              const i64 *bounds, i64 parts)
{
    struct lstm_backward_sequence s = {.dg = dg, .dc_bufs = dc_bufs, .wb = wb, .g = g, .cs = cs, .tanh_c = tanh_c,
                                       .dy = dy, .dh_n = dh_n, .dc_n = dc_n, .dims = dims, .bounds = bounds};
    for (s.t = dims[4] - 1; s.t >= 0; s.t--)
        lstm_run_step(lstm_backward_job, &s, (int)parts);
}
