// profile.h -- host API of csrc/kernels/profile.cu. TEST-ONLY: probe kernels
// with known memory-access figures for the simulator's access profile.
#pragma once
#include <cuda_runtime.h>

namespace gpunet {

enum class ProfileProbe { kCopyCoalesced, kCopyStride32, kCopyFloat4, kSmemConflict32, kSmemPadded };

// One warp on x (at least 1024 floats) and out (at least 128 floats), both
// 32-byte aligned.
void profile_probe(ProfileProbe probe, const float* x, float* out, cudaStream_t stream);

}  // namespace gpunet
