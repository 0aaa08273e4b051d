// racecheck.h -- host API of csrc/kernels/racecheck.cu. TEST-ONLY: kernels
// with planted hazards for the simulator's race checker; gpunet never uses them.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

enum class RaceProbe { kMissingBarrier, kReusedScratch, kSharedCounter, kWarpHandoff, kCrossBlock, kUninitShared,
                       kPastTheEnd };

// Launches the probe's racy kernel (racy = true) or its fixed twin on x (at
// least 128 floats) and out (n_out >= 4 floats).
void race_probe(RaceProbe probe, bool racy, const float* x, float* out, int64_t n_out, cudaStream_t stream);

}  // namespace gpunet
