// halftest.cpp -- bindings of the TEST-ONLY half-precision kernels in
// csrc/kernels/halftest.cu (leading underscore: not part of gpunet's API).
// Every 16-bit value is passed as its bit pattern in an int16 array.
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/halftest.h"

namespace gpunet {
namespace {

Half16 format_of(const std::string& name) {
  if (name == "float16") return Half16::Fp16;
  if (name == "bfloat16") return Half16::Bf16;
  throw py::value_error("argument 'format': expected 'float16' or 'bfloat16', got '" + name + "'");
}

template <class E, size_t N>
E lookup(const std::pair<const char*, E> (&table)[N], const std::string& name, const char* what) {
  std::string valid;
  for (const auto& [key, value] : table) {
    if (name == key) return value;
    valid += (valid.empty() ? "" : ", ") + std::string(key);
  }
  throw py::value_error(std::string("argument '") + what + "': unknown '" + name + "'; valid: " + valid);
}

constexpr std::pair<const char*, HalfRound> kRounds[] = {
    {"rn", HalfRound::Rn}, {"rz", HalfRound::Rz}, {"rd", HalfRound::Rd}, {"ru", HalfRound::Ru}};
constexpr std::pair<const char*, HalfOp> kOps[] = {
    {"add", HalfOp::Add},         {"sub", HalfOp::Sub},       {"mul", HalfOp::Mul},
    {"div", HalfOp::Div},         {"fma", HalfOp::Fma},       {"max", HalfOp::Max},
    {"min", HalfOp::Min},         {"max_nan", HalfOp::MaxNan}, {"min_nan", HalfOp::MinNan},
    {"neg", HalfOp::Neg},         {"abs", HalfOp::Abs},       {"operator+", HalfOp::AddOperator},
    {"operator*", HalfOp::MulOperator}, {"add_sat", HalfOp::AddSat}, {"eq", HalfOp::Eq},
    {"ne", HalfOp::Ne},           {"lt", HalfOp::Lt},         {"le", HalfOp::Le},
    {"gt", HalfOp::Gt},           {"ge", HalfOp::Ge},         {"equ", HalfOp::Equ},
    {"neu", HalfOp::Neu},         {"ltu", HalfOp::Ltu},       {"geu", HalfOp::Geu},
    {"operator<", HalfOp::LtOperator}, {"isnan", HalfOp::IsNan}, {"isinf", HalfOp::IsInf},
    {"sqrt", HalfOp::Sqrt},       {"rsqrt", HalfOp::Rsqrt},   {"rcp", HalfOp::Rcp},
    {"exp", HalfOp::Exp},         {"log", HalfOp::Log},       {"tanh", HalfOp::Tanh}};

// A 1-D output of `like`'s length and the given dtype, writable.
View output(py::handle obj, const char* name, const char* dtype, const View& like) {
  const View v = as_array(obj, name, dtype);
  require_writable(v, name);
  require_ndim(v, name, 1);
  require_shape(v, name, {like.numel()});
  return v;
}

}  // namespace

void bind_halftest(py::module_& m) {
  m.def(
      "_half_from_float",
      [](const std::string& format, py::handle x_obj, py::handle out_obj, const std::string& mode,
         std::uintptr_t stream) {
        const Half16 fmt = format_of(format);
        const HalfRound round = lookup(kRounds, mode, "mode");
        const View x = view_of(x_obj, "x");
        require_contiguous(x, "x");
        require_ndim(x, "x", 1);
        const View out = output(out_obj, "out", "int16", x);
        if (x.typestr == "<f8") {
          if (round != HalfRound::Rn)
            throw py::value_error("argument 'mode': float64 input converts with mode 'rn' only (as CUDA's "
                                  "__double2half), got '" + mode + "'");
          auto guard = vouch({x, out});
          half_from_double(fmt, x.ptr<double>(), out.ptr<int16_t>(), x.numel(), as_stream(stream));
        } else {
          require_dtype(x, "x", "float32");
          auto guard = vouch({x, out});
          half_from_float(fmt, round, x.ptr<float>(), out.ptr<int16_t>(), x.numel(), as_stream(stream));
        }
        check_launch("_half_from_float");
      },
      py::arg("format"), py::arg("x"), py::arg("out"), py::arg("mode"), py::arg("stream"),
      "TEST-ONLY. out = bits of x rounded to format ('float16', 'bfloat16') by mode ('rn', 'rz', 'rd',\n"
      "'ru'; float64 x: 'rn'). x: float32 or float64 (n,); out: int16 (n,).");
  m.def(
      "_half_to_float",
      [](const std::string& format, py::handle x_obj, py::handle out_obj, std::uintptr_t stream) {
        const Half16 fmt = format_of(format);
        const View x = as_array(x_obj, "x", "int16");
        require_ndim(x, "x", 1);
        const View out = output(out_obj, "out", "float32", x);
        auto guard = vouch({x, out});
        half_to_float(fmt, x.ptr<int16_t>(), out.ptr<float>(), x.numel(), as_stream(stream));
        check_launch("_half_to_float");
      },
      py::arg("format"), py::arg("x"), py::arg("out"), py::arg("stream"),
      "TEST-ONLY. out = float value of the 16-bit patterns x. x: int16 (n,); out: float32 (n,).");
  m.def(
      "_half_op",
      [](const std::string& format, const std::string& op_name, bool pairs, py::handle a_obj, py::handle b_obj,
         py::handle c_obj, py::handle out_obj, std::uintptr_t stream) {
        const Half16 fmt = format_of(format);
        const HalfOp op = lookup(kOps, op_name, "op");
        const View a = as_array(a_obj, "a", "int16");
        require_ndim(a, "a", 1);
        const View b = as_array(b_obj, "b", "int16"), c = as_array(c_obj, "c", "int16");
        require_same_shape(a, "a", b, "b");
        require_same_shape(a, "a", c, "c");
        const View out = output(out_obj, "out", "int16", a);
        if (pairs && a.numel() % 2 != 0)
          throw py::value_error("argument 'a': pairs=True needs an even length, got " + std::to_string(a.numel()));
        auto guard = vouch({a, b, c, out});
        half_op(fmt, op, pairs, a.ptr<int16_t>(), b.ptr<int16_t>(), c.ptr<int16_t>(), out.ptr<int16_t>(), a.numel(),
                as_stream(stream));
        check_launch("_half_op");
      },
      py::arg("format"), py::arg("op"), py::arg("pairs"), py::arg("a"), py::arg("b"), py::arg("c"), py::arg("out"),
      py::arg("stream"),
      "TEST-ONLY. out = op(a, b, c) on 16-bit patterns by the scalar intrinsic (__hadd, ...) or, pairs=True,\n"
      "the pair intrinsic (__hadd2, ...). op: add, sub, mul, div, fma, max, min, max_nan, min_nan, neg, abs,\n"
      "operator+, operator*, add_sat; comparisons (1 or 0) eq, ne, lt, le, gt, ge, equ, neu, ltu, geu,\n"
      "operator<; isnan (1 or 0), isinf (-1, 0, 1); sqrt, rsqrt, rcp, exp, log, tanh.\n"
      "a, b, c, out: int16 (n,).");
  m.def(
      "_half_warp_sum",
      [](const std::string& format, py::handle x_obj, py::handle out_obj, std::uintptr_t stream) {
        const Half16 fmt = format_of(format);
        const View x = as_array(x_obj, "x", "int16");
        require_shape(x, "x", {64});
        const View out = output(out_obj, "out", "int16", x);
        auto guard = vouch({x, out});
        half_warp_sum(fmt, x.ptr<int16_t>(), out.ptr<int16_t>(), as_stream(stream));
        check_launch("_half_warp_sum");
      },
      py::arg("format"), py::arg("x"), py::arg("out"), py::arg("stream"),
      "TEST-ONLY. One warp: lane l holds the pair x[2l:2l+2]; a __shfl_xor_sync butterfly with __hadd2\n"
      "(offsets 16, 8, 4, 2, 1) leaves the sum in every lane. x, out: int16 (64,).");
  m.def(
      "_half_atomic_add",
      [](const std::string& format, bool pairs, py::handle x_obj, py::handle out_obj, std::uintptr_t stream) {
        const Half16 fmt = format_of(format);
        const View x = as_array(x_obj, "x", "int16");
        require_ndim(x, "x", 1);
        View out = as_array(out_obj, "out", "int16");
        require_ndim(out, "out", 1);
        require_writable(out, "out");
        require_at_least(out.numel(), 1, "out.size");
        const int64_t width = pairs ? 2 : 1;
        if (x.numel() % width != 0 || out.numel() % width != 0)
          throw py::value_error("arguments 'x', 'out': pairs=True needs even lengths");
        auto guard = vouch({x, out});
        half_atomic_add(fmt, pairs, x.ptr<int16_t>(), x.numel() / width, out.ptr<int16_t>(), out.numel() / width,
                        as_stream(stream));
        check_launch("_half_atomic_add");
      },
      py::arg("format"), py::arg("pairs"), py::arg("x"), py::arg("out"), py::arg("stream"),
      "TEST-ONLY. out[i % m] += x[i] by atomicAdd on 16-bit values or (pairs=True) on pairs.\n"
      "x: int16 (n,); out: int16 (m,).");
}

}  // namespace gpunet
