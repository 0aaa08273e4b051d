// profile.cu -- TEST-ONLY probe kernels with exactly known memory-access
// figures, for tests/test_profile.py and `python -m gpunet.bench profile`: the
// simulator's access profile (csrc/sim/profile.cpp) must report them exactly.
// gpunet itself never launches them. Each is one warp (32 threads) on
// 32-byte-aligned float arrays, the figures per warp-level request:
//
//   probe_copy_coalesced   out[l] = x[l]            loads and stores: 4 sectors
//   probe_copy_stride32    out[l] = x[32 l]         loads: 32 sectors (one per lane)
//   probe_copy_float4      one float4 per lane      loads and stores: 16 sectors
//   probe_smem_conflict32  s[32 l]: every lane in bank 0   32 wavefronts
//   probe_smem_padded      s[33 l]: one lane per bank       1 wavefront
#include <cuda_runtime.h>

#include "kernels/profile.h"

namespace gpunet {
namespace {

constexpr int kLanes = 32;

__global__ void probe_copy_coalesced(const float* x, float* out) {
  out[threadIdx.x] = x[threadIdx.x];
}

__global__ void probe_copy_stride32(const float* x, float* out) {
  out[threadIdx.x] = x[threadIdx.x * kLanes];
}

__global__ void probe_copy_float4(const float4* x, float4* out) {
  out[threadIdx.x] = x[threadIdx.x];
}

// Each lane stores one float at tile[pitch * l], then loads its neighbour's.
template <int kPitch>
__device__ __forceinline__ void smem_probe(const float* x, float* out) {
  __shared__ float tile[kLanes * kPitch];
  const int l = threadIdx.x;
  tile[l * kPitch] = x[l];
  __syncwarp();
  out[l] = tile[((l + 1) % kLanes) * kPitch];
}

__global__ void probe_smem_conflict32(const float* x, float* out) { smem_probe<kLanes>(x, out); }

__global__ void probe_smem_padded(const float* x, float* out) { smem_probe<kLanes + 1>(x, out); }

}  // namespace

void profile_probe(ProfileProbe probe, const float* x, float* out, cudaStream_t stream) {
  switch (probe) {
    case ProfileProbe::kCopyCoalesced: probe_copy_coalesced<<<1, kLanes, 0, stream>>>(x, out); break;
    case ProfileProbe::kCopyStride32: probe_copy_stride32<<<1, kLanes, 0, stream>>>(x, out); break;
    case ProfileProbe::kCopyFloat4:
      probe_copy_float4<<<1, kLanes, 0, stream>>>(reinterpret_cast<const float4*>(x), reinterpret_cast<float4*>(out));
      break;
    case ProfileProbe::kSmemConflict32: probe_smem_conflict32<<<1, kLanes, 0, stream>>>(x, out); break;
    case ProfileProbe::kSmemPadded: probe_smem_padded<<<1, kLanes, 0, stream>>>(x, out); break;
  }
}

}  // namespace gpunet
