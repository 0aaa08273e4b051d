// CPU-build stand-in for <cuda_fp16.h>: the half types of csrc/sim/half.h.
#pragma once
#include "../half.h"
