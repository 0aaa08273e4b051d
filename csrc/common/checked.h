// checked.h -- overflow-checked size arithmetic for the bindings.
//
// Shapes come from foreign array interfaces and Python ints: a product of
// extents that wraps around int64 would size a launch or an address range
// wrongly (a crash or a silent out-of-bounds write), so every product the
// bindings form from caller sizes goes through checked_product first.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>

namespace gpunet {

// The product of `factors` (each >= 0), or ValueError naming `what` when it
// passes INT64_MAX (a zero factor makes it 0 whatever the others are).
inline int64_t checked_product(std::initializer_list<int64_t> factors, const std::string& what) {
  for (int64_t f : factors)
    if (f == 0) return 0;
  int64_t p = 1;
  for (int64_t f : factors)
    if (__builtin_mul_overflow(p, f, &p))
      throw pybind11::value_error(what + ": the sizes' product does not fit a 64-bit integer");
  return p;
}

}  // namespace gpunet
