// conv.cpp -- Python bindings of csrc/kernels/conv.cu (im2col, col2im).
#include <pybind11/stl.h>

#include <climits>
#include <string>
#include <vector>

#include "bindings/families.h"
#include "common/binding.h"
#include "common/checked.h"
#include "kernels/conv.h"

namespace gpunet {

// The images' geometry from `img` (n, c, h, w) and the window, or ValueError
// naming the bad argument. Every count the kernels form from it (the image's
// elements, the column matrix's rows, columns and entries) is checked to fit
// int64 before anything is derived from it.
ConvShape conv_shape(const View& img, const char* img_name, const Window& win) {
  require_ndim(img, img_name, 4);
  require_window(win);
  const auto [kh, kw, sh, sw, ph, pw, dh, dw] = win;
  ConvShape s{img.shape[0], img.shape[1], img.shape[2], img.shape[3], kh, kw, sh, sw, ph, pw, dh, dw, 0, 0};
  const std::string what = detail::arg(img_name) + "shape " + detail::shape_str(img.shape);
  checked_product({s.n, s.c, s.h, s.w}, what);
  if (s.h > INT64_MAX / 4 || s.w > INT64_MAX / 4)  // room for the padding arithmetic below
    throw py::value_error(what + ": the height and width must be below 2^61");
  const int64_t room_h = s.h + 2 * (int64_t)ph - (int64_t)dh * (kh - 1) - 1;
  const int64_t room_w = s.w + 2 * (int64_t)pw - (int64_t)dw * (kw - 1) - 1;
  if (room_h < 0 || room_w < 0)
    throw py::value_error(detail::arg(img_name) + "the dilated kernel (" + std::to_string(kh) + ", " +
                          std::to_string(kw) + ") with dilation (" + std::to_string(dh) + ", " + std::to_string(dw) +
                          ") does not fit the padded input of shape " + detail::shape_str(img.shape));
  s.oh = room_h / sh + 1;
  s.ow = room_w / sw + 1;
  const int64_t rows = checked_product({s.c, kh, kw}, what + " with this window");
  const int64_t cols = checked_product({s.n, s.oh, s.ow}, what + " with this window");
  checked_product({rows, cols}, what + " with this window");
  return s;
}

namespace {

// im2col(x, cols, window) and col2im(dcols, dx, window) validate alike: an
// input array, an output array, one of them the image (n, C, H, W) and the
// other the column matrix (C*kh*kw, n*OH*OW). launch(in, out, shape, stream).
template <class Launch>
auto conv_binding(const char* kernel, const char* in_name, const char* out_name, bool image_in, Launch launch) {
  return [=](py::handle in_obj, py::handle out_obj, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
             std::uintptr_t stream) {
    const View in = view_of(in_obj, in_name), out = view_of(out_obj, out_name);
    const Storage storage = same_storage({{&in, in_name}, {&out, out_name}});
    require_writable(out, out_name);
    const View& img = image_in ? in : out;
    const View& cols = image_in ? out : in;
    const char* img_name = image_in ? in_name : out_name;
    const char* cols_name = image_in ? out_name : in_name;
    const ConvShape s = conv_shape(img, img_name, Window{kh, kw, sh, sw, ph, pw, dh, dw});
    require_shape(cols, cols_name, {s.c * kh * kw, s.n * s.oh * s.ow});
    require_disjoint(in, in_name, out, out_name);
    auto guard = vouch({in, out});
    launch(storage, in.data, out.data, s, as_stream(stream));
    check_launch(kernel);
  };
}

}  // namespace

void bind_conv(py::module_& m) {
  m.def("im2col", conv_binding("im2col", "x", "cols", true, im2col), py::arg("x"), py::arg("cols"), py::arg("kh"),
        py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
        py::arg("stream"),
        "Column matrix of a chunk of images: x (n, C, H, W), cols (C*kh*kw, n*OH*OW), both\n"
        "float32, float16 or bfloat16 (its bits as int16), C-contiguous;\n"
        "OH = (H + 2ph - dh(kh-1) - 1)//sh + 1 (same for OW).\n"
        "cols[(c*kh + i)*kw + j, (img*OH + oy)*OW + ox] = x[img, c, oy*sh - ph + i*dh,\n"
        "ox*sw - pw + j*dw], 0 in the padding.");
  m.def("col2im", conv_binding("col2im", "dcols", "dx", false, col2im), py::arg("dcols"), py::arg("dx"),
        py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"),
        py::arg("dw"), py::arg("stream"),
        "Adjoint of im2col: dx (n, C, H, W) (overwritten) = for each element the sum of\n"
        "the dcols entries (C*kh*kw, n*OH*OW) that im2col copies it to, accumulated in\n"
        "float32 and rounded once; storage types as for im2col.\n"
        "Deterministic (a gather, no atomics).");
  m.def(
      "_divmod_int32",
      [](py::handle n_obj, py::handle q_obj, py::handle r_obj, int32_t d, std::uintptr_t stream) {
        const View n = as_array(n_obj, "n", "int32");
        const View q = as_array(q_obj, "q", "int32");
        const View r = as_array(r_obj, "r", "int32");
        require_ndim(n, "n", 1);
        require_same_shape(n, "n", q, "q");
        require_same_shape(n, "n", r, "r");
        require_writable(q, "q");
        require_writable(r, "r");
        require_disjoint(n, "n", q, "q");
        require_disjoint(n, "n", r, "r");
        require_disjoint(q, "q", r, "r");
        require_at_least(d, 1, "d");
        auto guard = vouch({n, q, r});
        divmod_int32(n.ptr<int32_t>(), q.ptr<int32_t>(), r.ptr<int32_t>(), n.shape[0], d, as_stream(stream));
        check_launch("divmod_int32");
      },
      py::arg("n"), py::arg("q"), py::arg("r"), py::arg("d"), py::arg("stream"),
      "TEST-ONLY. q, r = n // d, n % d by the kernels' fast division (a multiply-shift by a\n"
      "magic number), in a kernel: n, q, r int32 (count,), n >= 0, d >= 1.");
  m.def(
      "_im2col_source",
      [](const std::vector<int64_t>& x_shape, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
         int64_t e) {
        View x;  // the geometry only: no memory is touched
        x.shape = x_shape;
        const ConvShape s = conv_shape(x, "x_shape", Window{kh, kw, sh, sw, ph, pw, dh, dw});
        const int64_t total = s.c * kh * kw * s.n * s.oh * s.ow;
        if (e < 0 || e >= total)
          throw py::value_error("argument 'e': expected a column entry in [0, " + std::to_string(total) + "), got " +
                                std::to_string(e));
        return py::make_tuple(conv_index_bits(s), im2col_source_index(s, e));
      },
      py::arg("x_shape"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
      py::arg("dh"), py::arg("dw"), py::arg("e"),
      "TEST-ONLY. (bits, index): the index width (32 or 64) im2col and col2im use for\n"
      "images of x_shape (N, C, H, W) and this window, and the flat index into x that\n"
      "im2col copies to column entry e (-1 in the padding), computed in that width.");
}

}  // namespace gpunet
