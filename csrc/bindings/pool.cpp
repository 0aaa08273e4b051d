// pool.cpp -- Python bindings of csrc/kernels/pool.cu (max and average pooling).
#include <pybind11/stl.h>

#include <climits>
#include <string>
#include <vector>

#include "bindings/families.h"
#include "common/binding.h"
#include "common/checked.h"
#include "kernels/pool.h"

namespace gpunet {
namespace {

// Output extent along one axis: the caller's (taken from the output array)
// must be what PyTorch gives with ceil_mode False or True.
void check_extent(int64_t out, int64_t in, int k, int s, int p, int d, const char* out_name, const char* axis) {
  const int64_t room = in + 2 * (int64_t)p - (int64_t)d * (k - 1) - 1;
  if (room < 0)
    throw py::value_error(std::string("the dilated ") + axis + " window " + std::to_string((int64_t)d * (k - 1) + 1) +
                          " is larger than the padded input " + std::to_string(in) + " + 2*" + std::to_string(p));
  const int64_t floor_out = room / s + 1;
  int64_t ceil_out = (room + s - 1) / s + 1;
  if ((ceil_out - 1) * s >= in + p) --ceil_out;  // no window may start in the right padding
  if (out != floor_out && out != ceil_out)
    throw py::value_error(detail::arg(out_name) + "output " + axis + " " + std::to_string(out) + " does not match " +
                          "the input " + axis + " " + std::to_string(in) + " and window: expected " +
                          std::to_string(floor_out) +
                          (ceil_out != floor_out ? " (or " + std::to_string(ceil_out) + " with ceil_mode)" : ""));
}

// Geometry from the input-side array `in` (n, c, h, w), the output-side array
// `out` (n, c, oh, ow) and the window, or ValueError naming the argument.
PoolShape pool_shape(const View& in, const char* in_name, const View& out, const char* out_name, const Window& win) {
  require_ndim(in, in_name, 4);
  require_ndim(out, out_name, 4);
  if (in.shape[0] != out.shape[0] || in.shape[1] != out.shape[1])
    throw py::value_error(detail::arg(out_name) + "expected the batch and channel extents of '" + in_name + "' " +
                          detail::shape_str(in.shape) + " but got shape " + detail::shape_str(out.shape));
  require_window(win);
  const auto [kh, kw, sh, sw, ph, pw, dh, dw] = win;
  if (2 * (int64_t)ph > (int64_t)dh * (kh - 1) + 1 || 2 * (int64_t)pw > (int64_t)dw * (kw - 1) + 1)
    throw py::value_error("padding (" + std::to_string(ph) + ", " + std::to_string(pw) +
                          ") must be at most half the dilated window");
  // every element count fits int64; arg holds an int32 index into a plane,
  // and the window arithmetic is int
  checked_product({in.shape[0], in.shape[1], in.shape[2], in.shape[3]},
                  detail::arg(in_name) + "shape " + detail::shape_str(in.shape));
  checked_product({out.shape[0], out.shape[1], out.shape[2], out.shape[3]},
                  detail::arg(out_name) + "shape " + detail::shape_str(out.shape));
  if (checked_product({in.shape[2], in.shape[3]}, in_name) > INT_MAX || in.shape[2] + 2 * (int64_t)ph > INT_MAX / 2 ||
      in.shape[3] + 2 * (int64_t)pw > INT_MAX / 2)
    throw py::value_error(detail::arg(in_name) + "planes of more than 2^31 - 1 elements are not supported, got " +
                          detail::shape_str(in.shape));
  check_extent(out.shape[2], in.shape[2], kh, sh, ph, dh, out_name, "height");
  check_extent(out.shape[3], in.shape[3], kw, sw, pw, dw, out_name, "width");
  return PoolShape{in.shape[0] * in.shape[1], in.shape[2], in.shape[3], out.shape[2], out.shape[3],
                   kh, kw, sh, sw, ph, pw, dh, dw};
}

// The arrays every pooling call has, validated: what it reads (forward: x;
// backward: dy) and what it writes (forward: y; backward: dx), of one storage
// type (float32, float16, bfloat16 as int16), and the geometry they give
// with the window.
struct PoolCall {
  View in, out;
  PoolShape shape;
  Storage storage;
};
PoolCall pool_call(Arg in, Arg out, bool forward, const Window& win) {
  const View in_v = view_of(in.obj, in.name), out_v = view_of(out.obj, out.name);
  const Storage storage = same_storage({{&in_v, in.name}, {&out_v, out.name}});
  require_writable(out_v, out.name);
  const PoolShape s = forward ? pool_shape(in_v, in.name, out_v, out.name, win)
                              : pool_shape(out_v, out.name, in_v, in.name, win);
  require_disjoint(in_v, in.name, out_v, out.name);
  return {in_v, out_v, s, storage};
}

// The int32 argmax of max pooling, shaped like its output-side array.
View as_argmax(py::handle obj, const View& like, const char* like_name) {
  const View arg = as_array(obj, "arg", "int32");
  require_same_shape(like, like_name, arg, "arg");
  return arg;
}

}  // namespace

void bind_pool(py::module_& m) {
  m.def(
      "maxpool2d_forward",
      [](py::handle x_obj, py::handle y_obj, py::handle arg_obj, int kh, int kw, int sh, int sw, int ph, int pw,
         int dh, int dw, std::uintptr_t stream) {
        const auto [x, y, s, storage] =
            pool_call({x_obj, "x"}, {y_obj, "y"}, true, Window{kh, kw, sh, sw, ph, pw, dh, dw});
        const View arg = as_argmax(arg_obj, y, "y");
        require_writable(arg, "arg");
        require_disjoint(x, "x", arg, "arg");
        require_disjoint(y, "y", arg, "arg");
        auto guard = vouch({x, y, arg});
        maxpool2d_forward(storage, x.data, y.data, arg.ptr<int32_t>(), s, as_stream(stream));
        check_launch("maxpool2d_forward");
      },
      py::arg("x"), py::arg("y"), py::arg("arg"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
      py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("stream"),
      "Max pooling: x (N, C, H, W) -> y (N, C, OH, OW) of x's dtype (float32, float16 or\n"
      "bfloat16 as int16) and arg int32\n"
      "(N, C, OH, OW), the index h*W + w in its plane of the first maximum of each\n"
      "window. OH, OW are y's and must be PyTorch's (floor or ceil_mode).");
  m.def(
      "maxpool2d_backward",
      [](py::handle dy_obj, py::handle arg_obj, py::handle dx_obj, int kh, int kw, int sh, int sw, int ph, int pw,
         int dh, int dw, std::uintptr_t stream) {
        const auto [dy, dx, s, storage] =
            pool_call({dy_obj, "dy"}, {dx_obj, "dx"}, false, Window{kh, kw, sh, sw, ph, pw, dh, dw});
        const View arg = as_argmax(arg_obj, dy, "dy");
        require_disjoint(arg, "arg", dx, "dx");
        auto guard = vouch({dy, arg, dx});
        maxpool2d_backward(storage, dy.data, arg.ptr<int32_t>(), dx.data, s, as_stream(stream));
        check_launch("maxpool2d_backward");
      },
      py::arg("dy"), py::arg("arg"), py::arg("dx"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
      py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("stream"),
      "dx (N, C, H, W) (overwritten) = sum of dy over the windows whose arg (from\n"
      "maxpool2d_forward) is that element, summed in float32 and rounded once to dy's dtype.\n"
      "Deterministic (a gather, no atomics).");
  m.def(
      "avgpool2d_forward",
      [](py::handle x_obj, py::handle y_obj, int kh, int kw, int sh, int sw, int ph, int pw, bool count_include_pad,
         std::uintptr_t stream) {
        const auto [x, y, s, storage] =
            pool_call({x_obj, "x"}, {y_obj, "y"}, true, Window{kh, kw, sh, sw, ph, pw, 1, 1});
        auto guard = vouch({x, y});
        avgpool2d_forward(storage, x.data, y.data, s, count_include_pad, as_stream(stream));
        check_launch("avgpool2d_forward");
      },
      py::arg("x"), py::arg("y"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("count_include_pad"), py::arg("stream"),
      "Average pooling: x (N, C, H, W) -> y (N, C, OH, OW) of x's dtype (float32, float16 or\n"
      "bfloat16 as int16; float32 sums, rounded once), each window's sum divided by its size\n"
      "clipped to the padded input (count_include_pad) or to the input (PyTorch's AvgPool2d).");
  m.def(
      "avgpool2d_backward",
      [](py::handle dy_obj, py::handle dx_obj, int kh, int kw, int sh, int sw, int ph, int pw,
         bool count_include_pad, std::uintptr_t stream) {
        const auto [dy, dx, s, storage] =
            pool_call({dy_obj, "dy"}, {dx_obj, "dx"}, false, Window{kh, kw, sh, sw, ph, pw, 1, 1});
        auto guard = vouch({dy, dx});
        avgpool2d_backward(storage, dy.data, dx.data, s, count_include_pad, as_stream(stream));
        check_launch("avgpool2d_backward");
      },
      py::arg("dy"), py::arg("dx"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("count_include_pad"), py::arg("stream"),
      "dx (N, C, H, W) (overwritten) = sum over the windows containing each element of\n"
      "dy / divisor. Deterministic (a gather, no atomics).");
  m.def(
      "_pool_index_bits",
      [](const std::vector<int64_t>& x_shape, const std::vector<int64_t>& y_shape, int kh, int kw, int sh, int sw,
         int ph, int pw, int dh, int dw) {
        View x, y;  // the geometry only: no memory is touched
        x.shape = x_shape;
        y.shape = y_shape;
        return pool_index_bits(pool_shape(x, "x_shape", y, "y_shape", Window{kh, kw, sh, sw, ph, pw, dh, dw}));
      },
      py::arg("x_shape"), py::arg("y_shape"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
      py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
      "TEST-ONLY. The index width (32 or 64) the pooling kernels use for input x_shape and\n"
      "output y_shape (N, C, H, W) with this window.");
}

}  // namespace gpunet
