// optim.cpp -- Python bindings of csrc/kernels/optim.cu: fused SGD and
// Adam/AdamW updates over a list of tensors (one parameter group) in one launch.
//
// Python passes the group's arrays as lists plus a uint8 workspace of at
// least len(params) * OPTIM_TABLE_ENTRY_BYTES bytes; the binding validates
// every array, builds the per-tensor table (pointers, offsets, per-tensor
// scalars) and the launcher copies it into the workspace on the stream.
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/optim.h"

namespace gpunet {
namespace {

std::string item(const char* list, size_t k) { return std::string(list) + "[" + std::to_string(k) + "]"; }

py::sequence as_list(py::handle obj, const char* name) {
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    throw py::type_error(detail::arg(name) + "expected a list, got " + detail::type_name(obj));
  return py::reinterpret_borrow<py::sequence>(obj);
}

void require_length(const py::sequence& s, const char* name, size_t n, const char* like) {
  if (s.size() != n)
    throw py::value_error(detail::arg(name) + "expected " + std::to_string(n) + " entries (one per entry of '" +
                          like + "') but got " + std::to_string(s.size()));
}

void require_finite(double v, const char* name, double lo = -INFINITY) {
  if (!std::isfinite(v) || v < lo)
    throw py::value_error(detail::arg(name) + "expected a finite number" +
                          (lo > -INFINITY ? " >= " + std::to_string(lo) : std::string()) + ", got " +
                          std::to_string(v));
}

double number(py::handle h, const std::string& name) {
  if (!py::isinstance<py::float_>(h) && !py::isinstance<py::int_>(h))
    throw py::type_error(detail::arg(name.c_str()) + "expected a Python number, got " + detail::type_name(h));
  return h.cast<double>();
}

// A C-contiguous array of the same shape as params[k] (like), float32 or, with
// half_like (weights[0]), of its half dtype; `out` marks it written.
View tensor(const py::sequence& list, const char* list_name, size_t k, const View* like, bool out,
            const View* half_like = nullptr) {
  const std::string name = item(list_name, k);
  View v = half_like == nullptr ? as_array(list[k], name.c_str(), "float32") : view_of(list[k], name.c_str());
  if (half_like != nullptr) {
    require_contiguous(v, name.c_str());
    if (v.typestr != half_like->typestr)
      throw py::type_error(detail::arg(name.c_str()) + "expected the dtype of weights[0] (" +
                           detail::dtype_name(half_like->typestr) + ") but got " + detail::dtype_name(v.typestr));
  }
  if (out) require_writable(v, name.c_str());
  if (like != nullptr && like->shape != v.shape)
    throw py::value_error(detail::arg(name.c_str()) + "expected the shape of params[" + std::to_string(k) + "] " +
                          detail::shape_str(like->shape) + " but got " + detail::shape_str(v.shape));
  return v;
}

// Arrays the kernel writes must not overlap any other array of the call:
// threads updating one element through two names would race.
struct Span {
  uintptr_t begin, end;
  bool written;
  std::string name;
};
void require_disjoint(std::vector<Span> spans) {
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  const Span* reach_any = nullptr;      // the span reaching furthest so far
  const Span* reach_written = nullptr;  // the written span reaching furthest so far
  for (const Span& s : spans) {
    const Span* clash = nullptr;
    if (reach_written != nullptr && s.begin < reach_written->end)
      clash = reach_written;
    else if (s.written && reach_any != nullptr && s.begin < reach_any->end)
      clash = reach_any;
    if (clash != nullptr)
      throw py::value_error("argument '" + s.name + "': its memory overlaps that of '" + clash->name +
                            "', and one of them is written by the update");
    if (reach_any == nullptr || s.end > reach_any->end) reach_any = &s;
    if (s.written && (reach_written == nullptr || s.end > reach_written->end)) reach_written = &s;
  }
}

// The group's validated rows (empty tensors dropped) and the workspace they go
// to; `arrays` holds every array of the call, the table last, for vouch().
struct Group {
  Storage storage = Storage::F32;  // the grads' type: float32, or the half weights'
  std::vector<OptimTensor> rows;
  int64_t total = 0;  // quads (optim.h)
  View table;
  std::vector<View> arrays;  // every non-empty array of the call, the table included
  GradScaling scaling;
};

// The found-inf flag of a GradScaler: a float32 array of one element.
View flag_view(py::handle obj) {
  View v = as_array(obj, "found_inf", "float32");
  if (v.numel() != 1)
    throw py::value_error("argument 'found_inf': expected one float32 element (the scaler's flag) but got shape " +
                          detail::shape_str(v.shape));
  return v;
}

// The table workspace of `rows` rows of `row_bytes` each.
View table_view(py::handle obj, size_t rows, size_t row_bytes, size_t align) {
  View table = as_array(obj, "table", "uint8");
  require_writable(table, "table");
  const int64_t need = (int64_t)(rows * row_bytes);
  if (table.nbytes() < need)
    throw py::value_error("argument 'table': expected at least " + std::to_string(need) + " bytes (" +
                          std::to_string(rows) + " non-empty tensors x " + std::to_string(row_bytes) +
                          "; OPTIM_TABLE_ENTRY_BYTES per tensor always suffices) but got " +
                          std::to_string(table.nbytes()));
  if ((uintptr_t)table.data % align != 0)
    throw py::value_error("argument 'table': must be " + std::to_string(align) +
                          "-byte aligned (pass a fresh empty() array, not a view)");
  return table;
}

// params/grads and up to two state lists (nullptr: absent); `scalars(k, row)`
// fills the per-tensor scalars. weights (None: absent): half weights, one
// per parameter, params then being their float32 masters and grads of the
// weights' type. found_inf (None: absent) and inv_scale: the GradScaler's
// flag and 1/scale (optim.h's GradScaling).
template <class Scalars>
Group build_group(py::handle params_obj, py::handle grads_obj, const char* s0_name, py::handle s0_obj,
                  const char* s1_name, py::handle s1_obj, py::handle table_obj, py::handle weights_obj,
                  py::handle found_inf_obj, double inv_scale, Scalars scalars) {
  const py::sequence params = as_list(params_obj, "params");
  const py::sequence grads = as_list(grads_obj, "grads");
  const size_t n = params.size();
  require_length(grads, "grads", n, "params");
  py::sequence weights;
  View first_weight;  // weights[0]: the storage type every weight and grad has
  Group group;
  if (!weights_obj.is_none()) {
    require_length(weights = as_list(weights_obj, "weights"), "weights", n, "params");
    if (n > 0) {
      first_weight = view_of(weights[0], "weights[0]");
      group.storage = storage_of(first_weight, "weights[0]");
      if (group.storage == Storage::F32)
        throw py::type_error("argument 'weights[0]': expected dtype float16 or bfloat16 (as an int16 view of its "
                             "bits): weights are the half copies of float32 masters");
    }
  }
  const bool half = !weights_obj.is_none();
  py::sequence s0, s1;
  if (s0_name != nullptr) require_length(s0 = as_list(s0_obj, s0_name), s0_name, n, "params");
  if (s1_name != nullptr) require_length(s1 = as_list(s1_obj, s1_name), s1_name, n, "params");
  if (n > (size_t)INT_MAX) throw py::value_error("argument 'params': at most INT_MAX tensors per launch");

  std::vector<Span> spans;
  auto span = [&](const View& v, bool written, std::string name) {
    if (v.numel() == 0) return;
    spans.push_back({(uintptr_t)v.data, (uintptr_t)v.data + (uintptr_t)v.nbytes(), written, name});
    group.arrays.push_back(v);
  };
  for (size_t k = 0; k < n; ++k) {
    const View p = tensor(params, "params", k, nullptr, true);
    const View g = tensor(grads, "grads", k, &p, false, half ? &first_weight : nullptr);
    OptimTensor row{p.ptr<float>(), g.data, nullptr, nullptr, nullptr, group.total, p.numel(), 0.f, 0.f};
    span(p, true, item("params", k));
    span(g, false, item("grads", k));
    if (half) {
      const View w = tensor(weights, "weights", k, &p, true, &first_weight);
      row.weight = w.data;
      span(w, true, item("weights", k));
    }
    if (s0_name != nullptr) {
      const View v = tensor(s0, s0_name, k, &p, true);
      row.state0 = v.ptr<float>();
      span(v, true, item(s0_name, k));
    }
    if (s1_name != nullptr) {
      const View v = tensor(s1, s1_name, k, &p, true);
      row.state1 = v.ptr<float>();
      span(v, true, item(s1_name, k));
    }
    scalars(k, row);
    if (p.numel() == 0) continue;
    group.rows.push_back(row);
    group.total += optim_quads(p.numel());
  }
  group.table = table_view(table_obj, group.rows.size(), sizeof(OptimTensor), alignof(OptimTensor));
  if (!found_inf_obj.is_none()) {
    if (!(std::isfinite(inv_scale) && inv_scale > 0.0))
      throw py::value_error(detail::arg("inv_scale") + "expected a finite number > 0, got " +
                            std::to_string(inv_scale));
    const View flag = flag_view(found_inf_obj);
    group.scaling = GradScaling{flag.ptr<float>(), (float)inv_scale};
    span(flag, false, "found_inf");
  } else if (inv_scale != 1.0) {
    throw py::value_error("argument 'inv_scale': must be 1 without found_inf (the scaler passes both)");
  }
  span(group.table, true, "table");
  require_disjoint(std::move(spans));
  return group;
}

}  // namespace

void bind_optim(py::module_& m) {
  m.attr("OPTIM_TABLE_ENTRY_BYTES") = (int)sizeof(OptimTensor);
  m.def(
      "sgd_multi",
      [](py::handle params, py::handle grads, py::handle bufs_obj, py::handle fresh_obj, py::handle table,
         double lr, double momentum, double dampening, double weight_decay, bool nesterov, std::uintptr_t stream,
         py::handle weights, py::handle found_inf, double inv_scale) {
        require_finite(lr, "lr", 0.0);
        require_finite(momentum, "momentum", 0.0);
        require_finite(dampening, "dampening", 0.0);
        require_finite(weight_decay, "weight_decay", 0.0);
        if (nesterov && (momentum <= 0.0 || dampening != 0.0))
          throw py::value_error("nesterov momentum requires momentum > 0 and dampening == 0");
        const bool with_momentum = momentum != 0.0;
        const py::sequence bufs = as_list(bufs_obj, "momentum_buffers");
        const py::sequence fresh = as_list(fresh_obj, "fresh");
        if (!with_momentum && (bufs.size() != 0 || fresh.size() != 0))
          throw py::value_error("arguments 'momentum_buffers', 'fresh': must be empty lists when momentum == 0");
        if (with_momentum) require_length(fresh, "fresh", as_list(params, "params").size(), "params");
        Group group = build_group(params, grads, with_momentum ? "momentum_buffers" : nullptr, bufs, nullptr,
                                  py::none(), table, weights, found_inf, inv_scale, [&](size_t k, OptimTensor& row) {
                                    if (!with_momentum) return;
                                    if (!py::isinstance<py::bool_>(fresh[k]))
                                      throw py::type_error(detail::arg(item("fresh", k).c_str()) +
                                                           "expected a bool, got " + detail::type_name(fresh[k]));
                                    row.scalar0 = fresh[k].cast<bool>() ? 1.f : 0.f;
                                  });
        const SgdHyper h{(float)lr, (float)momentum, (float)(1.0 - dampening), (float)weight_decay, nesterov};
        // every array, not only the table the kernel gets: the tensors' pointers travel
        // inside it, and the checker, the profile and stream ordering must see them
        auto guard = vouch(group.arrays);
        sgd_multi(group.storage, group.rows, group.table.ptr<OptimTensor>(), group.total, h, group.scaling,
                  as_stream(stream));
        check_launch("sgd_multi");
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("fresh"), py::arg("table"),
      py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
      py::arg("stream"), py::arg("weights") = py::none(), py::arg("found_inf") = py::none(),
      py::arg("inv_scale") = 1.0,
      "SGD step over a parameter group in one launch (torch.optim.SGD semantics), in place.\n"
      "params, grads: lists of float32 C-contiguous arrays, grads[k] shaped like params[k].\n"
      "momentum_buffers, fresh: with momentum > 0, one buffer per parameter and one bool\n"
      "per parameter saying the buffer is new (this step sets it to the gradient);\n"
      "empty lists when momentum == 0. table: uint8 workspace of at least\n"
      "len(params) * OPTIM_TABLE_ENTRY_BYTES bytes.\n"
      "weights: None, or half weights (float16, or bfloat16 as its int16 bits; one dtype),\n"
      "one per parameter: params are then their float32 masters, grads of the weights'\n"
      "dtype (read in float32), and each updated master is written rounded once into its\n"
      "weight by the same launch.\n"
      "found_inf, inv_scale: a GradScaler's step (None, 1: none). found_inf is a float32\n"
      "array of one element (nonfinite_check's flag): nonzero, the launch writes nothing;\n"
      "else every gradient is read times inv_scale (in float32; the grads stay as they are).");
  m.def(
      "adam_multi",
      [](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs, py::handle steps_obj,
         py::handle bc2_obj, py::handle table, double lr, double beta1, double beta2, double eps,
         double weight_decay, bool decoupled, std::uintptr_t stream, py::handle weights, py::handle found_inf,
         double inv_scale) {
        require_finite(lr, "lr", 0.0);
        require_finite(eps, "eps", 0.0);
        require_finite(weight_decay, "weight_decay", 0.0);
        if (!(beta1 >= 0.0 && beta1 < 1.0)) throw py::value_error("argument 'beta1': expected a number in [0, 1)");
        if (!(beta2 >= 0.0 && beta2 < 1.0)) throw py::value_error("argument 'beta2': expected a number in [0, 1)");
        const py::sequence step_sizes = as_list(steps_obj, "step_sizes");
        const py::sequence bc2 = as_list(bc2_obj, "bias_correction2_sqrts");
        const size_t n = as_list(params, "params").size();
        require_length(step_sizes, "step_sizes", n, "params");
        require_length(bc2, "bias_correction2_sqrts", n, "params");
        Group group = build_group(params, grads, "exp_avgs", exp_avgs, "exp_avg_sqs", exp_avg_sqs, table, weights,
                                  found_inf, inv_scale, [&](size_t k, OptimTensor& row) {
                                    const double s = number(step_sizes[k], item("step_sizes", k));
                                    const double c = number(bc2[k], item("bias_correction2_sqrts", k));
                                    require_finite(s, item("step_sizes", k).c_str(), 0.0);
                                    if (!(std::isfinite(c) && c > 0.0))
                                      throw py::value_error(detail::arg(item("bias_correction2_sqrts", k).c_str()) +
                                                            "expected a finite number > 0, got " + std::to_string(c));
                                    row.scalar0 = (float)s;
                                    row.scalar1 = (float)c;
                                  });
        const AdamHyper h{(float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2), (float)eps,
                          decoupled ? 0.f : (float)weight_decay, decoupled ? (float)(1.0 - lr * weight_decay) : 1.f};
        // every array, not only the table the kernel gets: the tensors' pointers travel
        // inside it, and the checker, the profile and stream ordering must see them
        auto guard = vouch(group.arrays);
        adam_multi(group.storage, group.rows, group.table.ptr<OptimTensor>(), group.total, h, group.scaling,
                   as_stream(stream));
        check_launch("adam_multi");
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("step_sizes"),
      py::arg("bias_correction2_sqrts"), py::arg("table"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
      py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"), py::arg("stream"),
      py::arg("weights") = py::none(), py::arg("found_inf") = py::none(), py::arg("inv_scale") = 1.0,
      "Adam (decoupled=False: L2 term weight_decay*p added to the gradient) or AdamW\n"
      "(decoupled=True: p *= 1 - lr*weight_decay) step over a parameter group in one\n"
      "launch, in place. Lists as in sgd_multi; exp_avgs/exp_avg_sqs are the moment\n"
      "buffers; step_sizes[k] = lr / (1 - beta1^t_k) and bias_correction2_sqrts[k] =\n"
      "sqrt(1 - beta2^t_k) for tensor k's step count t_k. weights, found_inf, inv_scale:\n"
      "as in sgd_multi.");
  m.def(
      "nonfinite_check",
      [](py::handle grads_obj, py::handle found_inf, py::handle table_obj, std::uintptr_t stream) {
        const py::sequence grads = as_list(grads_obj, "grads");
        if (grads.size() > (size_t)INT_MAX) throw py::value_error("argument 'grads': at most INT_MAX tensors");
        const View flag = flag_view(found_inf);
        require_writable(flag, "found_inf");
        std::vector<CheckTensor> rows;
        std::vector<View> arrays{flag};
        std::vector<Span> spans{{(uintptr_t)flag.data, (uintptr_t)flag.data + 4, true, "found_inf"}};
        int64_t total = 0;
        for (size_t k = 0; k < grads.size(); ++k) {
          const std::string name = item("grads", k);
          const View g = view_of(grads[k], name.c_str());
          const Storage storage = storage_of(g, name.c_str());
          require_contiguous(g, name.c_str());
          if (g.numel() == 0) continue;
          rows.push_back({g.data, total, g.numel(), storage});
          total += optim_quads(g.numel());
          arrays.push_back(g);
          spans.push_back({(uintptr_t)g.data, (uintptr_t)g.data + (uintptr_t)g.nbytes(), false, name});
        }
        const View table = table_view(table_obj, rows.size(), sizeof(CheckTensor), alignof(CheckTensor));
        arrays.push_back(table);
        spans.push_back({(uintptr_t)table.data, (uintptr_t)table.data + (uintptr_t)table.nbytes(), true, "table"});
        require_disjoint(std::move(spans));
        auto guard = vouch(arrays);
        nonfinite_check(rows, table.ptr<CheckTensor>(), total, flag.ptr<float>(), as_stream(stream));
        check_launch("nonfinite_check");
      },
      py::arg("grads"), py::arg("found_inf"), py::arg("table"), py::arg("stream"),
      "The GradScaler's inf/NaN check over a list of gradients in one launch: sets\n"
      "found_inf (a float32 array of one element) to 1 when any element of any gradient\n"
      "is an inf or a NaN; never clears it. grads: C-contiguous float32, float16 or\n"
      "bfloat16 (as its int16 bits) arrays, dtypes may differ; read only. table: uint8\n"
      "workspace, len(grads) * OPTIM_TABLE_ENTRY_BYTES bytes suffice.");
}

}  // namespace gpunet
