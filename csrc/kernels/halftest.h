// halftest.h -- host API of csrc/kernels/halftest.cu. TEST-ONLY: these kernels
// exercise the half-precision types and intrinsics of <cuda_fp16.h> and
// <cuda_bf16.h> (on the GPU the toolkit's, in the simulator csrc/sim/half.h)
// so that tests can compare them bit for bit with NumPy and ml_dtypes. All
// 16-bit values travel as their bit patterns (int16 arrays).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

enum class Half16 { Fp16, Bf16 };

// Rounding of float -> 16 bits: __float2half_rn/_rz/_rd/_ru (and the bf16 ones).
enum class HalfRound { Rn, Rz, Rd, Ru };

// Arithmetic tested lane by lane: out = op(a, b, c) with the scalar intrinsic
// (__hadd, ...), or with the pair intrinsic (__hadd2, ...) on two lanes at once.
// Comparisons give 1 or 0, __hisinf -1, 0 or 1 (as 16-bit values); on pairs
// they and __hisnan/__hisinf run lane by lane with the scalar intrinsic.
enum class HalfOp {
  Add, Sub, Mul, Div, Fma, Max, Min, MaxNan, MinNan, Neg, Abs, AddOperator, MulOperator, AddSat,
  Eq, Ne, Lt, Le, Gt, Ge, Equ, Neu, Ltu, Geu, LtOperator, IsNan, IsInf,
  Sqrt, Rsqrt, Rcp, Exp, Log, Tanh
};

// out[i] = bits of x[i] rounded by `mode`.
void half_from_float(Half16 fmt, HalfRound mode, const float* x, int16_t* out, int64_t n, cudaStream_t stream);
// out[i] = bits of x[i] rounded to nearest even (__double2half, __double2bfloat16).
void half_from_double(Half16 fmt, const double* x, int16_t* out, int64_t n, cudaStream_t stream);
// out[i] = the float value of the bits x[i] (__half2float, __bfloat162float).
void half_to_float(Half16 fmt, const int16_t* x, float* out, int64_t n, cudaStream_t stream);
// out[i] = op(a[i], b[i], c[i]); pairs: n is even and the pair intrinsic runs.
void half_op(Half16 fmt, HalfOp op, bool pairs, const int16_t* a, const int16_t* b, const int16_t* c, int16_t* out,
             int64_t n, cudaStream_t stream);
// One warp: lane l holds the pair (x[2l], x[2l+1]); a butterfly of
// __shfl_xor_sync on the pairs and __hadd2 leaves the warp's sum in every
// lane, written to out[2l], out[2l+1].
void half_warp_sum(Half16 fmt, const int16_t* x, int16_t* out, cudaStream_t stream);
// out[i % m] += x[i] by atomicAdd (on pairs: out and x hold pairs, n and m count pairs).
void half_atomic_add(Half16 fmt, bool pairs, const int16_t* x, int64_t n, int16_t* out, int64_t m,
                     cudaStream_t stream);

}  // namespace gpunet
