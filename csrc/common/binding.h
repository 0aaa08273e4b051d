// binding.h -- the convention every csrc/bindings/<family>.cpp follows.
//
// Each binding source is compiled twice from the same text:
//   gpunet._C_sim  g++ with csrc/sim/cudasim.h force-included (macro CUDASIM
//                  defined); arrays are NumPy arrays (__array_interface__).
//   gpunet._C      host C++ against the CUDA toolkit; arrays are CuPy arrays
//                  or anything else with __cuda_array_interface__.
//
// The convention
//   * Python preallocates every output and passes it in. A kernel function
//     never allocates and returns None (or a Python scalar).
//   * The last argument of every kernel function is `stream: int`: CuPy's
//     current stream pointer on cuda (cupy.cuda.get_current_stream().ptr),
//     0 on sim. Bind it as std::uintptr_t; as_stream() makes the cudaStream_t.
//   * Everything is validated before the first launch, and a bad argument
//     raises TypeError/ValueError naming the argument, what was expected and
//     what was received. Nothing in a binding asserts or aborts: the
//     interpreter must survive any input.
//   * After every launch, check_launch("<kernel name>") turns a launch error
//     into RuntimeError("gpunet kernel <name> failed: <cudaErrorName>: <text>").
//
// A binding therefore reads (see csrc/bindings/activation.cpp):
//
//   m.def("act_forward", [](const std::string& kind, py::handle x_obj, py::handle y_obj,
//                           float alpha, float beta, std::uintptr_t stream) {
//     const Act act = parse_kind(kind, alpha);           // ValueError on an unknown kind
//     const View x = as_array(x_obj, "x", "float32");    // kind of array, dtype, C-contiguous
//     const View y = as_array(y_obj, "y", "float32");
//     require_writable(y, "y");
//     require_same_shape(x, "x", y, "y");
//     auto guard = vouch({x, y});                        // sim: NumPy memory may enter kernels
//     act_forward(act, x.ptr<float>(), y.ptr<float>(), x.numel(), alpha, beta, as_stream(stream));
//     check_launch("act_forward(" + kind + ")");
//   }, py::arg("kind"), py::arg("x"), py::arg("y"), py::arg("alpha"), py::arg("beta"),
//      py::arg("stream"), "docstring");
//
// Several float32 arrays at once: float32_arrays({{x_obj, "x"}, {w_obj, "weight"}})
// (inputs) and float32_outputs(...) (also writable). Convolution and pooling
// take their window as a Window (require_window checks it). Where a forward
// and a backward validate alike, one function builds both bindings (see
// conv_binding in csrc/bindings/conv.cpp), so the checks are written once.
//
// Kernel launchers (declared in csrc/kernels/<family>.h) take raw pointers,
// element counts and a cudaStream_t, and skip the launch when there is no
// work (a grid of 0 blocks is a launch error).
#pragma once
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <array>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/rows.h"

namespace gpunet {
namespace py = pybind11;

// An array argument, as described by its array interface.
struct View {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in bytes; empty when the interface says None (C-contiguous)
  std::string typestr;           // e.g. "<f4"
  int64_t itemsize = 0;
  bool readonly = false;

  int64_t ndim() const { return (int64_t)shape.size(); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  int64_t nbytes() const { return numel() * itemsize; }
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

namespace detail {

struct DtypeName {
  const char* name;
  const char* typestr;
};
// Array-interface type strings of little-endian machines (x86-64, arm64).
inline constexpr DtypeName kDtypes[] = {
    {"float16", "<f2"}, {"float32", "<f4"}, {"float64", "<f8"}, {"int8", "|i1"}, {"int16", "<i2"},
    {"int32", "<i4"},   {"int64", "<i8"},   {"uint8", "|u1"},   {"bool", "|b1"},
};

inline std::string dtype_name(const std::string& typestr) {
  for (const auto& d : kDtypes)
    if (typestr == d.typestr) return d.name;
  return "'" + typestr + "'";
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// "numpy.ndarray", "cupy.ndarray", "list", ...
inline std::string type_name(py::handle obj) {
  py::handle t = reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()));
  const std::string module = py::str(t.attr("__module__")), name = py::str(t.attr("__qualname__"));
  return module == "builtins" ? name : module + "." + name;
}

inline std::string arg(const char* name) { return std::string("argument '") + name + "': "; }

#ifndef CUDASIM
// The array must live in device memory of the current device: a kernel
// handed a host or foreign-device pointer faults or reads garbage.
inline void require_current_device(const View& v, const char* name) {
  if (v.data == nullptr) return;  // an empty array has no memory to check
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, v.data);
  if (e != cudaSuccess) {
    cudaGetLastError();  // do not leave the error for the next launch to report
    throw std::runtime_error(arg(name) + "cannot query its memory: " + cudaGetErrorName(e) + ": " +
                             cudaGetErrorString(e));
  }
  if (attr.type == cudaMemoryTypeManaged) return;  // reachable from every device
  if (attr.type != cudaMemoryTypeDevice)
    throw py::type_error(arg(name) + "expected device memory but the pointer is " +
                         (attr.type == cudaMemoryTypeHost ? "pinned host memory" : "not CUDA memory"));
  int current = 0;
  cudaGetDevice(&current);
  if (attr.device != current)
    throw py::value_error(arg(name) + "array is on cuda:" + std::to_string(attr.device) +
                          " but the current device is cuda:" + std::to_string(current));
}
#endif

}  // namespace detail

// Parse an array argument from its array interface: __array_interface__ on
// the sim build, __cuda_array_interface__ on the cuda build (plus the device
// check there). Raises TypeError for anything else.
inline View view_of(py::handle obj, const char* name) {
#ifdef CUDASIM
  const char* iface = "__array_interface__";
  const char* other = "__cuda_array_interface__";
  const char* expected = "a host array (e.g. numpy.ndarray)";
  const char* other_kind = " (device memory)";
#else
  const char* iface = "__cuda_array_interface__";
  const char* other = "__array_interface__";
  const char* expected = "a CUDA device array (e.g. cupy.ndarray)";
  const char* other_kind = " (host memory)";
#endif
  const py::object d = py::getattr(obj, iface, py::none());
  if (!py::isinstance<py::dict>(d)) {
    const bool is_other = !py::getattr(obj, other, py::none()).is_none();
    throw py::type_error(detail::arg(name) + "expected " + expected + " but got " + detail::type_name(obj) +
                         (is_other ? other_kind : ""));
  }
  const py::dict desc = d;
  View v;
  const py::tuple data = desc["data"];
  v.data = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  v.readonly = data[1].cast<bool>();
  for (py::handle s : py::tuple(desc["shape"])) v.shape.push_back(s.cast<int64_t>());
  if (desc.contains("strides") && !desc["strides"].is_none())
    for (py::handle s : py::tuple(desc["strides"])) v.strides.push_back(s.cast<int64_t>());
  v.typestr = desc["typestr"].cast<std::string>();
  v.itemsize = v.typestr.size() > 2 ? std::strtol(v.typestr.c_str() + 2, nullptr, 10) : 0;
#ifndef CUDASIM
  detail::require_current_device(v, name);
#endif
  return v;
}

// require_dtype(v, "x", "float32"): TypeError unless v has that dtype
// (float16/32/64, int8/16/32/64, uint8, bool).
inline void require_dtype(const View& v, const char* name, const char* dtype) {
  for (const auto& d : detail::kDtypes) {
    if (std::string(dtype) != d.name) continue;
    if (v.typestr != d.typestr)
      throw py::type_error(detail::arg(name) + "expected dtype " + dtype + " but got " +
                           detail::dtype_name(v.typestr));
    return;
  }
  throw std::logic_error(std::string("gpunet binding bug: unknown dtype name ") + dtype);
}

// ValueError unless v is C-contiguous. Dimensions of extent 1 may have any
// stride (NumPy and CuPy call such arrays contiguous too).
inline void require_contiguous(const View& v, const char* name) {
  if (v.strides.empty() || v.numel() == 0) return;
  int64_t expected = v.itemsize;
  for (int64_t i = v.ndim() - 1; i >= 0; --i) {
    if (v.shape[i] != 1 && v.strides[i] != expected)
      throw py::value_error(detail::arg(name) + "must be C-contiguous (shape " + detail::shape_str(v.shape) +
                            ", strides " + detail::shape_str(v.strides) + " bytes); pass an "
                            "ascontiguousarray() copy");
    expected *= v.shape[i];
  }
}

inline void require_writable(const View& v, const char* name) {
  if (v.readonly) throw py::value_error(detail::arg(name) + "is an output but the array is read-only");
}

inline void require_ndim(const View& v, const char* name, int64_t ndim) {
  if (v.ndim() != ndim)
    throw py::value_error(detail::arg(name) + "expected a " + std::to_string(ndim) + "-d array but got shape " +
                          detail::shape_str(v.shape));
}

// require_shape(v, "y", {n, c})
inline void require_shape(const View& v, const char* name, const std::vector<int64_t>& shape) {
  if (v.shape != shape)
    throw py::value_error(detail::arg(name) + "expected shape " + detail::shape_str(shape) + " but got " +
                          detail::shape_str(v.shape));
}

inline void require_same_shape(const View& a, const char* a_name, const View& b, const char* b_name) {
  if (a.shape != b.shape)
    throw py::value_error(detail::arg(b_name) + "expected the shape of '" + a_name + "' " +
                          detail::shape_str(a.shape) + " but got " + detail::shape_str(b.shape));
}

inline void require_at_least(int64_t v, int64_t lo, const char* name) {
  if (v < lo)
    throw py::value_error(detail::arg(name) + "must be >= " + std::to_string(lo) + " but got " + std::to_string(v));
}

// The window of a 2-D convolution or pooling, as Python passes it: kernel
// size (kh, kw), stride (sh, sw), padding (ph, pw) and dilation (dh, dw).
struct Window {
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// Kernel sizes, strides and dilations >= 1, padding >= 0.
inline void require_window(const Window& w) {
  require_at_least(w.kh, 1, "kh");
  require_at_least(w.kw, 1, "kw");
  require_at_least(w.sh, 1, "sh");
  require_at_least(w.sw, 1, "sw");
  require_at_least(w.ph, 0, "ph");
  require_at_least(w.pw, 0, "pw");
  require_at_least(w.dh, 1, "dh");
  require_at_least(w.dw, 1, "dw");
}

// Kernels take their pointers __restrict__: an output must not share memory
// with another argument.
inline void require_disjoint(const View& a, const char* a_name, const View& b, const char* b_name) {
  const char* pa = a.ptr<char>();
  const char* pb = b.ptr<char>();
  if (pa < pb + b.nbytes() && pb < pa + a.nbytes())
    throw py::value_error(detail::arg(b_name) + "must not overlap '" + a_name + "' in memory");
}

// The common case in one call: an array of this build's kind, of `dtype`,
// C-contiguous.
inline View as_array(py::handle obj, const char* name, const char* dtype) {
  View v = view_of(obj, name);
  require_dtype(v, name, dtype);
  require_contiguous(v, name);
  return v;
}

// A 2-D (rows, cols) float32 array, C-contiguous, reduced along its rows by
// the row kernels (common/rows.cuh), which index a row's columns with int
// and launch at most kMaxRows rows.
inline View as_rows(py::handle obj, const char* name) {
  const View v = as_array(obj, name, "float32");
  require_ndim(v, name, 2);
  if (v.shape[1] > INT_MAX)
    throw py::value_error(detail::arg(name) + "rows longer than " + std::to_string(INT_MAX) +
                          " are not supported, got " + detail::shape_str(v.shape));
  if (v.shape[0] > kMaxRows)
    throw py::value_error(detail::arg(name) + "more than " + std::to_string(kMaxRows) +
                          " rows are not supported, got " + detail::shape_str(v.shape));
  return v;
}

// An array argument and its name in messages.
struct Arg {
  py::handle obj;
  const char* name;
};

// Several float32, C-contiguous arrays at once, in order:
//   const auto [x, w] = float32_arrays({{x_obj, "x"}, {w_obj, "weight"}});
template <size_t N>
std::array<View, N> float32_arrays(const Arg (&args)[N]) {
  std::array<View, N> views;
  for (size_t i = 0; i < N; ++i) views[i] = as_array(args[i].obj, args[i].name, "float32");
  return views;
}

// The same for outputs, which must also be writable.
template <size_t N>
std::array<View, N> float32_outputs(const Arg (&args)[N]) {
  std::array<View, N> views = float32_arrays(args);
  for (size_t i = 0; i < N; ++i) require_writable(views[i], args[i].name);
  return views;
}

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// `auto guard = vouch({x, y});` before a launch. The simulator refuses kernel
// arguments that are not device memory; on the sim build the guard registers
// the arrays' (host) memory as device memory until it goes out of scope, so
// that a pointer nobody vouched for is still caught. No-op on the cuda build,
// where view_of() already checked the memory ([[maybe_unused]]: there the
// guard is an empty object).
class [[maybe_unused]] Vouch {
 public:
  explicit Vouch(std::initializer_list<std::reference_wrapper<const View>> views) {
#ifdef CUDASIM
    for (const View& v : views) guards_.push_back(std::make_unique<cudasim::DeviceView>(v.data, (size_t)v.nbytes()));
#else
    (void)views;
#endif
  }

 private:
#ifdef CUDASIM
  std::vector<std::unique_ptr<cudasim::DeviceView>> guards_;
#endif
};
inline Vouch vouch(std::initializer_list<std::reference_wrapper<const View>> views) { return Vouch(views); }

// After every launch: RuntimeError if it failed. cudaGetLastError also
// clears the error, so the next launch does not report it again.
inline void check_launch(const std::string& kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return;
  const std::string msg =
      "gpunet kernel " + kernel + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
#ifdef CUDASIM
  cudasim::reset_error();  // the simulator also keeps the message
#endif
  throw std::runtime_error(msg);
}

}  // namespace gpunet
