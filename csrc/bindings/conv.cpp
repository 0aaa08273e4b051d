// conv.cpp -- Python bindings of csrc/kernels/conv.cu (im2col, col2im).
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/conv.h"

namespace gpunet {
namespace {

// The images' geometry from `img` (n, c, h, w) and the kernel parameters, or
// ValueError naming the bad argument.
ConvShape conv_shape(const View& img, const char* img_name, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                     int dw) {
  require_ndim(img, img_name, 4);
  require_window(kh, kw, sh, sw, ph, pw, dh, dw);
  ConvShape s{img.shape[0], img.shape[1], img.shape[2], img.shape[3], kh, kw, sh, sw, ph, pw, dh, dw, 0, 0};
  const int64_t room_h = s.h + 2 * (int64_t)ph - (int64_t)dh * (kh - 1) - 1;
  const int64_t room_w = s.w + 2 * (int64_t)pw - (int64_t)dw * (kw - 1) - 1;
  if (room_h < 0 || room_w < 0)
    throw py::value_error(detail::arg(img_name) + "the dilated kernel (" + std::to_string(kh) + ", " +
                          std::to_string(kw) + ") with dilation (" + std::to_string(dh) + ", " + std::to_string(dw) +
                          ") does not fit the padded input of shape " + detail::shape_str(img.shape));
  s.oh = room_h / sh + 1;
  s.ow = room_w / sw + 1;
  return s;
}


}  // namespace

void bind_conv(py::module_& m) {
  m.def(
      "im2col",
      [](py::handle x_obj, py::handle cols_obj, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
         std::uintptr_t stream) {
        const View x = as_array(x_obj, "x", "float32");
        const View cols = as_array(cols_obj, "cols", "float32");
        require_writable(cols, "cols");
        const ConvShape s = conv_shape(x, "x", kh, kw, sh, sw, ph, pw, dh, dw);
        require_shape(cols, "cols", {s.c * kh * kw, s.n * s.oh * s.ow});
        require_disjoint(x, "x", cols, "cols");
        auto guard = vouch({x, cols});
        im2col(x.ptr<float>(), cols.ptr<float>(), s, as_stream(stream));
        check_launch("im2col");
      },
      py::arg("x"), py::arg("cols"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("stream"),
      "Column matrix of a chunk of images: x float32 (n, C, H, W), cols float32\n"
      "(C*kh*kw, n*OH*OW) with OH = (H + 2ph - dh(kh-1) - 1)//sh + 1 (same for OW).\n"
      "cols[(c*kh + i)*kw + j, (img*OH + oy)*OW + ox] = x[img, c, oy*sh - ph + i*dh,\n"
      "ox*sw - pw + j*dw], 0 in the padding.");
  m.def(
      "col2im",
      [](py::handle dcols_obj, py::handle dx_obj, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
         std::uintptr_t stream) {
        const View dcols = as_array(dcols_obj, "dcols", "float32");
        const View dx = as_array(dx_obj, "dx", "float32");
        require_writable(dx, "dx");
        const ConvShape s = conv_shape(dx, "dx", kh, kw, sh, sw, ph, pw, dh, dw);
        require_shape(dcols, "dcols", {s.c * kh * kw, s.n * s.oh * s.ow});
        require_disjoint(dcols, "dcols", dx, "dx");
        auto guard = vouch({dcols, dx});
        col2im(dcols.ptr<float>(), dx.ptr<float>(), s, as_stream(stream));
        check_launch("col2im");
      },
      py::arg("dcols"), py::arg("dx"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("stream"),
      "Adjoint of im2col: dx float32 (n, C, H, W) (overwritten) = for each element the\n"
      "sum of the dcols entries (C*kh*kw, n*OH*OW) that im2col copies it to.\n"
      "Deterministic (a gather, no atomics).");
}

}  // namespace gpunet
