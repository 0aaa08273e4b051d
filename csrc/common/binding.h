// binding.h -- the convention every csrc/bindings/<family>.cpp follows.
//
// Each binding source is compiled twice from the same text:
//   gpunet._C_sim  g++ with csrc/sim/cudasim.h force-included (macro CUDASIM
//                  defined); arrays are NumPy arrays (buffer protocol).
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
//     auto guard = vouch({x, y});                        // releases the GIL; sim: NumPy memory may enter kernels
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

#include "common/checked.h"
#include "common/rows.h"
#include "common/storage.h"

namespace gpunet {
namespace py = pybind11;

// An array argument, as described by its array interface. view_of() checks
// that the shape is non-negative, that its element and byte counts fit int64
// and that the memory the shape and strides reach lies inside the producer's
// buffer (sim) or allocation (cuda).
struct View {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in bytes; empty when the interface says None (C-contiguous)
  std::string typestr;           // e.g. "<f4"
  int64_t itemsize = 0;
  bool readonly = false;
  std::uintptr_t stream = 0;     // cuda: the producer's stream (__cuda_array_interface__ v3), 0 if none
  std::shared_ptr<void> keep;    // sim: the exported buffer, held so that it cannot be resized under a kernel
  std::string name;              // the argument's name, for messages

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

}  // namespace detail

namespace detail {

// The element and byte counts fit int64; the strides (if any) match the
// rank; a non-empty array has a pointer; returns the bytes from the lowest to
// one past the highest byte the shape and strides reach, and that lowest
// byte's offset from `data` (<= 0 with negative strides).
struct Extent {
  int64_t lo = 0, bytes = 0;
};
inline Extent check_layout(const View& v, const char* name) {
  if (v.itemsize < 1) throw py::type_error(arg(name) + "unsupported element type " + dtype_name(v.typestr));
  int64_t n = 1;
  for (int64_t s : v.shape) {
    if (s < 0) throw py::value_error(arg(name) + "negative extent in shape " + shape_str(v.shape));
    n = checked_mul(n, s, arg(name) + "the element count of shape " + shape_str(v.shape));
  }
  const int64_t nbytes = checked_mul(n, v.itemsize, arg(name) + "the byte count of shape " + shape_str(v.shape));
  if (!v.strides.empty() && v.strides.size() != v.shape.size())
    throw py::value_error(arg(name) + "strides " + shape_str(v.strides) + " do not match shape " + shape_str(v.shape));
  if (n == 0) return {};
  if (v.data == nullptr) throw py::value_error(arg(name) + "null data pointer for a non-empty array");
  if (v.strides.empty()) return {0, nbytes};
  Extent e;
  int64_t hi = v.itemsize;  // one past the last byte of the last element
  const std::string what = arg(name) + "the memory reached by strides " + shape_str(v.strides);
  for (size_t i = 0; i < v.shape.size(); ++i) {
    const int64_t span = checked_mul(v.shape[i] - 1, v.strides[i], what);
    if (span < 0) e.lo = checked_add(e.lo, span, what);
    else hi = checked_add(hi, span, what);
  }
  e.bytes = checked_add(hi, -e.lo, what);
  return e;
}

#ifdef CUDASIM
// "<f4" for the buffer protocol's format "f" of itemsize 4, and so on; the
// native byte order of the machines gpunet runs on is little-endian.
inline std::string typestr_of(const char* format, int64_t itemsize) {
  std::string f = format ? format : "B";
  if (!f.empty() && (f[0] == '@' || f[0] == '=' || f[0] == '<')) f = f.substr(1);
  static const std::string floats = "efd", ints = "bhilq", uints = "BHILQ";
  char kind = 0;
  if (f.size() == 1) {
    if (floats.find(f[0]) != std::string::npos) kind = 'f';
    else if (ints.find(f[0]) != std::string::npos) kind = 'i';
    else if (uints.find(f[0]) != std::string::npos) kind = 'u';
    else if (f[0] == '?') kind = 'b';
  }
  if (!kind) return format ? format : "";
  return std::string(itemsize == 1 ? "|" : "<") + kind + std::to_string(itemsize);
}

// A host array through the buffer protocol: the exporter (NumPy) vouches for
// pointer, shape, strides and the read-only flag. An object that only
// carries an __array_interface__ dict is refused: nothing could check that its
// pointer and shape describe memory that exists.
inline View host_view(py::handle obj, const char* name) {
  if (!PyObject_CheckBuffer(obj.ptr())) {
    const bool has_iface = py::hasattr(obj, "__array_interface__");
    const bool is_cuda = py::hasattr(obj, "__cuda_array_interface__");
    throw py::type_error(arg(name) + "expected a host array (e.g. numpy.ndarray) but got " + type_name(obj) +
                         (is_cuda ? " (device memory)"
                          : has_iface ? " (an __array_interface__ without the buffer protocol cannot be verified)"
                                      : ""));
  }
  auto* raw = new Py_buffer;
  if (PyObject_GetBuffer(obj.ptr(), raw, PyBUF_RECORDS_RO) != 0) {
    delete raw;
    PyErr_Clear();
    throw py::type_error(arg(name) + "cannot export a strided buffer from " + type_name(obj));
  }
  const std::shared_ptr<Py_buffer> buf(raw, [](Py_buffer* b) {
    py::gil_scoped_acquire gil;  // (a no-op where the GIL is held already)
    PyBuffer_Release(b);
    delete b;
  });
  View v;
  v.keep = buf;
  v.data = buf->buf;
  v.readonly = buf->readonly != 0;
  v.itemsize = buf->itemsize;
  v.typestr = typestr_of(buf->format, buf->itemsize);
  if (buf->suboffsets != nullptr)
    throw py::type_error(arg(name) + "indirect (suboffset) buffers are not supported");
  for (int i = 0; i < buf->ndim; ++i) {
    v.shape.push_back(buf->shape[i]);
    if (buf->strides) v.strides.push_back(buf->strides[i]);
  }
  check_layout(v, name);
  return v;
}
#else
// cuMemGetAddressRange through the runtime's driver entry point (no link
// against libcuda): the base and size of the allocation holding `p`.
using MemGetAddressRange = int (*)(unsigned long long*, size_t*, unsigned long long);
inline MemGetAddressRange mem_get_address_range() {
  static const MemGetAddressRange fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      f = nullptr;
    cudaGetLastError();
    return reinterpret_cast<MemGetAddressRange>(f);
  }();
  return fn;
}

// The bytes [data + e.lo, data + e.lo + e.bytes) must lie in one allocation
// in device memory of the current device: a kernel handed a host,
// foreign-device or too short range faults or reads garbage.
inline void require_current_device(const View& v, const char* name, const Extent& e) {
  const char* lo = static_cast<const char*>(v.data) + e.lo;
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, lo);
  if (err != cudaSuccess) {
    cudaGetLastError();  // do not leave the error for the next launch to report
    throw std::runtime_error(arg(name) + "cannot query its memory: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
  if (attr.type != cudaMemoryTypeManaged) {  // managed memory is reachable from every device
    if (attr.type != cudaMemoryTypeDevice)
      throw py::type_error(arg(name) + "expected device memory but the pointer is " +
                           (attr.type == cudaMemoryTypeHost ? "pinned host memory" : "not CUDA memory"));
    int current = 0;
    cudaGetDevice(&current);
    if (attr.device != current)
      throw py::value_error(arg(name) + "array is on cuda:" + std::to_string(attr.device) +
                            " but the current device is cuda:" + std::to_string(current));
  }
  unsigned long long base = 0;
  size_t size = 0;
  const MemGetAddressRange range = mem_get_address_range();
  if (range && range(&base, &size, (unsigned long long)lo) == 0) {
    const unsigned long long first = (unsigned long long)lo - base;
    if ((unsigned long long)e.bytes > size - first)
      throw py::value_error(arg(name) + "shape " + shape_str(v.shape) + " needs " + std::to_string(e.bytes) +
                            " bytes but its allocation has " + std::to_string(size - first) + " from the pointer on");
  }
}

// __cuda_array_interface__ (versions 0 to 3): a dict with data = (pointer,
// read-only), shape, typestr, optional strides, mask (must be None) and
// stream (v3: the stream the producer last wrote on; 1 = legacy default,
// 2 = per-thread default, 0 is invalid).
inline View cuda_view(py::handle obj, const char* name) {
  const py::object d = py::getattr(obj, "__cuda_array_interface__", py::none());
  if (!py::isinstance<py::dict>(d)) {
    const bool is_host = !py::getattr(obj, "__array_interface__", py::none()).is_none();
    throw py::type_error(arg(name) + "expected a CUDA device array (e.g. cupy.ndarray) but got " + type_name(obj) +
                         (is_host ? " (host memory)" : ""));
  }
  const py::dict desc = d;
  auto bad = [&](const std::string& what) {
    return py::type_error(arg(name) + "malformed __cuda_array_interface__: " + what);
  };
  auto int_tuple = [&](py::handle t, const char* key) {
    if (!py::isinstance<py::tuple>(t)) throw bad(std::string("'") + key + "' must be a tuple of ints");
    std::vector<int64_t> out;
    for (py::handle s : py::reinterpret_borrow<py::tuple>(t)) {
      if (!py::isinstance<py::int_>(s)) throw bad(std::string("'") + key + "' must be a tuple of ints");
      out.push_back(s.cast<int64_t>());
    }
    return out;
  };
  for (const char* key : {"data", "shape", "typestr"})
    if (!desc.contains(key)) throw bad(std::string("no '") + key + "' key");
  if (desc.contains("mask") && !desc["mask"].is_none())
    throw py::type_error(arg(name) + "masked arrays (__cuda_array_interface__ 'mask') are not supported");
  const py::object data = desc["data"];
  if (!py::isinstance<py::tuple>(data) || py::len(data) != 2 || !py::isinstance<py::int_>(data[py::int_(0)]) ||
      !py::isinstance<py::bool_>(data[py::int_(1)]))
    throw bad("'data' must be a tuple (pointer: int, read_only: bool)");
  View v;
  v.data = reinterpret_cast<void*>(data[py::int_(0)].cast<std::uintptr_t>());
  v.readonly = data[py::int_(1)].cast<bool>();
  v.shape = int_tuple(desc["shape"], "shape");
  if (desc.contains("strides") && !desc["strides"].is_none()) v.strides = int_tuple(desc["strides"], "strides");
  if (!py::isinstance<py::str>(desc["typestr"])) throw bad("'typestr' must be a str");
  v.typestr = desc["typestr"].cast<std::string>();
  v.itemsize = v.typestr.size() > 2 ? std::strtol(v.typestr.c_str() + 2, nullptr, 10) : 0;
  if (desc.contains("stream") && !desc["stream"].is_none()) {
    if (!py::isinstance<py::int_>(desc["stream"])) throw bad("'stream' must be an int or None");
    v.stream = desc["stream"].cast<std::uintptr_t>();
    if (v.stream == 0) throw bad("'stream' 0 is disallowed (use 1 for the legacy default stream)");
  }
  const Extent e = check_layout(v, name);
  if (e.bytes > 0) require_current_device(v, name, e);
  return v;
}
#endif

}  // namespace detail

// Parse an array argument: the buffer protocol on the sim build (NumPy
// arrays), __cuda_array_interface__ on the cuda build (plus the device check
// there). Raises TypeError for anything else.
inline View view_of(py::handle obj, const char* name) {
#ifdef CUDASIM
  View v = detail::host_view(obj, name);
#else
  View v = detail::cuda_view(obj, name);
#endif
  v.name = name;
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

// For kernels that gather or reduce across their inputs (attention,
// cross-entropy, embedding): an output written while other threads still read
// the inputs may share no memory with any other argument, not even as the same
// array (which vouch() accepts, for elementwise kernels that run in place).
inline void require_outputs_apart(std::initializer_list<std::reference_wrapper<const View>> outputs,
                                  std::initializer_list<std::reference_wrapper<const View>> inputs) {
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    for (const View& in : inputs) require_disjoint(in, in.name.c_str(), *o, o->get().name.c_str());
    for (auto p = outputs.begin(); p != o; ++p) require_disjoint(*p, p->get().name.c_str(), *o, o->get().name.c_str());
  }
}

// The common case in one call: an array of this build's kind, of `dtype`,
// C-contiguous.
inline View as_array(py::handle obj, const char* name, const char* dtype) {
  View v = view_of(obj, name);
  require_dtype(v, name, dtype);
  require_contiguous(v, name);
  return v;
}

// A 2-D (rows, cols) array reduced along its rows by the row kernels
// (common/rows.cuh), which index a row's columns with int and launch at
// most kMaxRows rows.
inline void require_rows(const View& v, const char* name) {
  require_ndim(v, name, 2);
  if (v.shape[1] > INT_MAX)
    throw py::value_error(detail::arg(name) + "rows longer than " + std::to_string(INT_MAX) +
                          " are not supported, got " + detail::shape_str(v.shape));
  if (v.shape[0] > kMaxRows)
    throw py::value_error(detail::arg(name) + "more than " + std::to_string(kMaxRows) +
                          " rows are not supported, got " + detail::shape_str(v.shape));
}
// The same, float32 and C-contiguous.
inline View as_rows(py::handle obj, const char* name) {
  const View v = as_array(obj, name, "float32");
  require_rows(v, name);
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

namespace detail {
// Producer streams of the arrays of the launch being prepared on this thread
// (cuda build: Vouch collects them, as_stream makes the launch wait on them).
inline std::vector<std::uintptr_t>& pending_producers() {
  static thread_local std::vector<std::uintptr_t> streams;
  return streams;
}
}  // namespace detail

// The launch stream. On the cuda build it first makes that stream wait for
// the work that the arrays' producers queued on their own streams
// (__cuda_array_interface__ v3: an event recorded on the producer's stream),
// so an array written on another stream is read after it is written.
inline cudaStream_t as_stream(std::uintptr_t stream) {
  const auto consumer = reinterpret_cast<cudaStream_t>(stream);
#ifndef CUDASIM
  auto& producers = detail::pending_producers();
  for (const std::uintptr_t p : producers) {
    const cudaStream_t producer =
        p == 1 ? cudaStreamLegacy : p == 2 ? cudaStreamPerThread : reinterpret_cast<cudaStream_t>(p);
    if (producer == consumer) continue;
    cudaEvent_t ev;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e == cudaSuccess) {
      e = cudaEventRecord(ev, producer);
      if (e == cudaSuccess) e = cudaStreamWaitEvent(consumer, ev, 0);
      cudaEventDestroy(ev);  // the wait keeps what it needs
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      producers.clear();
      throw py::value_error(std::string("cannot wait on an input array's producer stream (__cuda_array_interface__ "
                                        "'stream'): ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
    }
  }
  producers.clear();
#endif
  return consumer;
}

namespace detail {
// Two arguments of one call share no memory, or are the same array (a call
// in place): a partial overlap would let a kernel read elements another
// thread already wrote, a race whose result depends on the schedule. Only
// contiguous arrays are compared (a strided pair may interleave without
// sharing an element); bindings whose kernels cannot run in place also call
// require_disjoint.
template <class Views>
void require_no_partial_overlap(const Views& views) {
  std::vector<const View*> dense;
  for (const View& v : views) {
    const bool dense_layout = v.strides.empty() || v.nbytes() == check_layout(v, v.name.c_str()).bytes;
    if (v.data != nullptr && v.numel() > 0 && dense_layout) dense.push_back(&v);
  }
  for (size_t i = 0; i < dense.size(); ++i)
    for (size_t j = i + 1; j < dense.size(); ++j) {
      const View& a = *dense[i];
      const View& b = *dense[j];
      const char* pa = a.ptr<char>();
      const char* pb = b.ptr<char>();
      const bool same = pa == pb && a.nbytes() == b.nbytes();
      if (!same && pa < pb + b.nbytes() && pb < pa + a.nbytes())
        throw py::value_error(arg(b.name.c_str()) + "shares memory with '" + a.name +
                              "' without being the same array (a partial overlap); pass separate arrays");
    }
}
}  // namespace detail

// `auto guard = vouch({x, y});` after the argument checks, right before the
// launch(es), which must take their stream from as_stream(). The guard
//   * releases the GIL until it goes out of scope: from here on a binding
//     touches no Python object (the Views hold the buffers), so other Python
//     threads run, and other host threads may launch meanwhile;
//   * sim build: registers the arrays' (host) memory as device memory, so
//     that the simulator's pointer check accepts them and a pointer nobody
//     vouched for is still caught;
//   * cuda build: hands the arrays' producer streams to as_stream() (view_of
//     already checked the memory).
class [[maybe_unused]] Vouch {
 public:
  explicit Vouch(std::initializer_list<std::reference_wrapper<const View>> views) { add(views); }
  explicit Vouch(const std::vector<View>& views) { add(views); }  // a call with a list of arrays
#ifndef CUDASIM
  ~Vouch() { detail::pending_producers().clear(); }
#endif
  Vouch(const Vouch&) = delete;
  Vouch& operator=(const Vouch&) = delete;

 private:
  template <class Views>
  void add(const Views& views) {
    detail::require_no_partial_overlap(views);
#ifdef CUDASIM
    for (const View& v : views) guards_.push_back(std::make_unique<cudasim::DeviceView>(v.data, (size_t)v.nbytes()));
#else
    auto& producers = detail::pending_producers();
    producers.clear();
    for (const View& v : views)
      if (v.stream != 0) producers.push_back(v.stream);
#endif
  }

#ifdef CUDASIM
  std::vector<std::unique_ptr<cudasim::DeviceView>> guards_;
#endif
  py::gil_scoped_release nogil_;  // declared last: the GIL is taken back before the guards go
};
inline Vouch vouch(std::initializer_list<std::reference_wrapper<const View>> views) { return Vouch(views); }
inline Vouch vouch(const std::vector<View>& views) { return Vouch(views); }

// The storage type of a floating argument of a kernel templated on it:
// float32, float16, or bfloat16
// passed as its bits in an int16 view (NumPy's buffer protocol cannot export
// ml_dtypes' bfloat16). TypeError naming the argument otherwise.
inline Storage storage_of(const View& v, const char* name) {
  if (v.typestr == "<f4") return Storage::F32;
  if (v.typestr == "<f2") return Storage::F16;
  if (v.typestr == "<i2") return Storage::BF16;
  throw py::type_error(std::string("argument '") + name + "': expected dtype float32, float16 or bfloat16 (as an "
                       "int16 view of its bits) but got " + detail::dtype_name(v.typestr));
}

// The arrays of one call: C-contiguous, of the first one's storage type.
inline Storage same_storage(std::initializer_list<std::pair<const View*, const char*>> arrays) {
  const Storage s = storage_of(*arrays.begin()->first, arrays.begin()->second);
  for (const auto& [v, name] : arrays) {
    require_contiguous(*v, name);
    if (storage_of(*v, name) != s)
      throw py::type_error(std::string("argument '") + name + "': expected the dtype of '" +
                           arrays.begin()->second + "' (" + detail::dtype_name(arrays.begin()->first->typestr) +
                           ") but got " + detail::dtype_name(v->typestr));
  }
  return s;
}


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
