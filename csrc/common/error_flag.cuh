// error_flag.cuh -- device-side reporting of bad input values (class targets,
// embedding indices) that only the kernel sees: checking them on the host
// would cost a device->host copy and a sync before every launch.
//
// A flag is 4 int64 in device memory, zero while nothing is wrong:
//   flag[0] = kind (an ErrorKind), flag[1] = the bad value,
//   flag[2] = the valid range's end (classes, vocabulary rows), flag[3] = an
//   extra value the message needs (ignore_index).
// The first thread to find a bad value claims the flag with a compare-and-swap
// of flag[0] and alone writes the rest; later ones (in this launch or later
// launches before the host resets it) leave it. The host reads it at its next
// synchronisation (gpunet/ops/device_errors.py) and raises the error the cpu
// backend raises for the same input.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

// Values of flag[0]; gpunet/ops/device_errors.py has the same table.
enum ErrorKind : int64_t {
  kNoError = 0,
  kBadClassTarget = 1,     // cross-entropy target outside [0, C) and not ignore_index
  kBadEmbeddingIndex = 2,  // embedding index outside [0, V)
};

__device__ __forceinline__ void report_bad_value(int64_t* flag, ErrorKind kind, int64_t value, int64_t bound,
                                                 int64_t extra) {
  auto* word = reinterpret_cast<unsigned long long*>(flag);
  if (atomicCAS(word, 0ull, (unsigned long long)kind) != 0ull) return;
  flag[1] = value;
  flag[2] = bound;
  flag[3] = extra;
}

}  // namespace gpunet
