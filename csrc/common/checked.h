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

// a * b and a + b, or ValueError("<what> overflows int64"), for sizes,
// strides and offsets: nothing in a binding may wrap around before it
// becomes a pointer offset or a bounds check.
inline int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) throw pybind11::value_error(what + " overflows int64");
  return r;
}
inline int64_t checked_add(int64_t a, int64_t b, const std::string& what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) throw pybind11::value_error(what + " overflows int64");
  return r;
}

// The product of `factors` (each >= 0), or ValueError naming `what` when it
// passes INT64_MAX (a zero factor makes it 0 whatever the others are).
inline int64_t checked_product(std::initializer_list<int64_t> factors, const std::string& what) {
  for (int64_t f : factors)
    if (f == 0) return 0;
  int64_t p = 1;
  for (int64_t f : factors) p = checked_mul(p, f, what + ": the sizes' product");
  return p;
}

}  // namespace gpunet
