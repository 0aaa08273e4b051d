// error_flag.h -- the binding side of csrc/common/error_flag.cuh: the flag a
// kernel reports bad input values into, validated like any other argument.
#pragma once
#include "common/binding.h"

namespace gpunet {

// A writable, C-contiguous int64 array of 4 (error_flag.cuh's layout).
inline View as_error_flag(py::handle obj) {
  const View flag = as_array(obj, "flag", "int64");
  require_shape(flag, "flag", {4});
  require_writable(flag, "flag");
  return flag;
}

}  // namespace gpunet
