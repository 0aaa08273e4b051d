// The storage type of a kernel's floating arrays. Kernels templated on it
// compute in float32 whatever the storage and round each result once to it
// (fp32 accumulation, as cuDNN and cuBLAS do for half inputs).
#pragma once

namespace gpunet {

enum class Storage : int { F32, F16, BF16 };

}  // namespace gpunet
