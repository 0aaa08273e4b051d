// conv_tensor_core.cpp -- Python bindings of csrc/kernels/conv_tensor_core.cu
// (the tensor-core convolutions of float16 / bfloat16 arrays).
#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/conv_tensor_core.h"

namespace gpunet {

// conv.cpp's validation of the images' geometry (ValueError naming the bad argument).
ConvShape conv_shape(const View& img, const char* img_name, const Window& win);

namespace {

// The geometry of a tensor-core convolution from the image `img` (n, C, H, W),
// the weights `w` (O, C/groups, kh, kw; named w_name) and the window, or
// ValueError naming the bad argument.
TcConvShape tc_shape(const View& img, const char* img_name, const View& w, const char* w_name, int sh, int sw, int ph,
                     int pw, int dh, int dw, int64_t groups) {
  require_ndim(w, w_name, 4);
  require_at_least(groups, 1, "groups");
  const ConvShape s = conv_shape(img, img_name, Window{(int)std::min<int64_t>(w.shape[2], INT_MAX),
                                                      (int)std::min<int64_t>(w.shape[3], INT_MAX), sh, sw, ph, pw,
                                                      dh, dw});
  const TcConvShape t{s, w.shape[0], groups};
  if (s.c % groups || t.o % groups)
    throw py::value_error("argument 'groups': " + std::to_string(groups) + " must divide the input channels (" +
                          std::to_string(s.c) + ") and the output channels (" + std::to_string(t.o) + ")");
  require_shape(w, w_name, {t.o, s.c / groups, s.kh, s.kw});
  if (conv_tc_max_extent(t) > INT_MAX)
    throw py::value_error(detail::arg(img_name) + "shape " + detail::shape_str(img.shape) +
                          ": a GEMM extent of the tensor-core convolution exceeds 2^31 - 1");
  return t;
}

// The half storage type shared by `arrays` (TypeError for float32 or others).
Storage half_storage(std::initializer_list<std::pair<const View*, const char*>> arrays) {
  const Storage st = same_storage(arrays);
  if (st == Storage::F32)
    throw py::type_error(std::string("argument '") + arrays.begin()->second +
                         "': expected dtype float16 or bfloat16 (as an int16 view of its bits) but got float32; "
                         "float32 convolutions use im2col");
  return st;
}

}  // namespace

void bind_conv_tensor_core(py::module_& m) {
  m.def(
      "conv_tc_forward",
      [](py::handle x_obj, py::handle w_obj, py::object b_obj, py::handle y_obj, int sh, int sw, int ph, int pw,
         int dh, int dw, int64_t groups, std::uintptr_t stream) {
        const View x = view_of(x_obj, "x"), w = view_of(w_obj, "w"), y = view_of(y_obj, "y");
        const Storage st = half_storage({{&x, "x"}, {&w, "w"}, {&y, "y"}});
        const TcConvShape t = tc_shape(x, "x", w, "w", sh, sw, ph, pw, dh, dw, groups);
        require_shape(y, "y", {t.s.n, t.o, t.s.oh, t.s.ow});
        require_writable(y, "y");
        View b;
        if (!b_obj.is_none()) {
          b = view_of(b_obj, "b");
          half_storage({{&x, "x"}, {&b, "b"}});
          require_shape(b, "b", {t.o});
        }
        require_outputs_apart({y}, {x, w});
        if (!b_obj.is_none()) require_disjoint(b, "b", y, "y");
        std::vector<View> arrays{x, w, y};
        if (!b_obj.is_none()) arrays.push_back(b);
        auto guard = vouch(arrays);
        conv_tc_forward(st, x.data, w.data, b_obj.is_none() ? nullptr : b.data, y.data, t, as_stream(stream));
        check_launch("conv_tc_forward");
      },
      py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("groups"), py::arg("stream"),
      "y (N, O, OH, OW) = conv2d(x (N, C, H, W), w (O, C/groups, kh, kw)) + b (O,) (b may be\n"
      "None), as an implicit GEMM on tensor cores: float16 or bfloat16 (its bits as int16),\n"
      "all of one dtype, C-contiguous; fp32 accumulation, each output rounded once.");
  m.def(
      "conv_tc_dgrad",
      [](py::handle dy_obj, py::handle w_obj, py::handle dx_obj, int sh, int sw, int ph, int pw, int dh, int dw,
         int64_t groups, std::uintptr_t stream) {
        const View dy = view_of(dy_obj, "dy"), w = view_of(w_obj, "w"), dx = view_of(dx_obj, "dx");
        const Storage st = half_storage({{&dy, "dy"}, {&w, "w"}, {&dx, "dx"}});
        const TcConvShape t = tc_shape(dx, "dx", w, "w", sh, sw, ph, pw, dh, dw, groups);
        require_shape(dy, "dy", {t.s.n, t.o, t.s.oh, t.s.ow});
        require_writable(dx, "dx");
        require_outputs_apart({dx}, {dy, w});
        auto guard = vouch({dy, w, dx});
        conv_tc_dgrad(st, dy.data, w.data, dx.data, t, as_stream(stream));
        check_launch("conv_tc_dgrad");
      },
      py::arg("dy"), py::arg("w"), py::arg("dx"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
      py::arg("dh"), py::arg("dw"), py::arg("groups"), py::arg("stream"),
      "dx (N, C, H, W) (overwritten) = the input gradient of conv_tc_forward for dy (N, O, OH, OW)\n"
      "and w (O, C/groups, kh, kw), on tensor cores; dtypes as conv_tc_forward.");
  m.def(
      "conv_tc_wgrad",
      [](py::handle x_obj, py::handle dy_obj, py::handle dweight_obj, int sh, int sw, int ph, int pw, int dh, int dw,
         int64_t groups, std::uintptr_t stream) {
        const View x = view_of(x_obj, "x"), dy = view_of(dy_obj, "dy"), dweight = view_of(dweight_obj, "dweight");
        const Storage st = half_storage({{&x, "x"}, {&dy, "dy"}, {&dweight, "dweight"}});
        const TcConvShape t = tc_shape(x, "x", dweight, "dweight", sh, sw, ph, pw, dh, dw, groups);
        require_shape(dy, "dy", {t.s.n, t.o, t.s.oh, t.s.ow});
        require_writable(dweight, "dweight");
        require_outputs_apart({dweight}, {x, dy});
        auto guard = vouch({x, dy, dweight});
        conv_tc_wgrad(st, x.data, dy.data, dweight.data, t, as_stream(stream));
        check_launch("conv_tc_wgrad");
      },
      py::arg("x"), py::arg("dy"), py::arg("dweight"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
      py::arg("dh"), py::arg("dw"), py::arg("groups"), py::arg("stream"),
      "dweight (O, C/groups, kh, kw) (overwritten) = the weight gradient of conv_tc_forward for x\n"
      "(N, C, H, W) and dy (N, O, OH, OW), on tensor cores (fp32 accumulation over N*OH*OW);\n"
      "dtypes as conv_tc_forward.");
  m.def(
      "conv_tc_bias_grad",
      [](py::handle dy_obj, py::handle db_obj, std::uintptr_t stream) {
        const View dy = view_of(dy_obj, "dy"), db = view_of(db_obj, "db");
        const Storage st = half_storage({{&dy, "dy"}, {&db, "db"}});
        require_ndim(dy, "dy", 4);
        require_shape(db, "db", {dy.shape[1]});
        require_writable(db, "db");
        require_outputs_apart({db}, {dy});
        ConvShape s{};
        s.n = dy.shape[0];
        s.oh = dy.shape[2];
        s.ow = dy.shape[3];
        const TcConvShape t{s, dy.shape[1], 1};
        auto guard = vouch({dy, db});
        conv_tc_bias_grad(st, dy.data, db.data, t, as_stream(stream));
        check_launch("conv_tc_bias_grad");
      },
      py::arg("dy"), py::arg("db"), py::arg("stream"),
      "db (O,) (overwritten) = dy (N, O, OH, OW) summed over N, OH, OW in fp32, rounded once;\n"
      "float16 or bfloat16.");
}

}  // namespace gpunet
