// profile.cpp -- binding of the TEST-ONLY probe kernels in
// csrc/kernels/profile.cu (leading underscore: not part of gpunet's API).
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/profile.h"

namespace gpunet {
namespace {

constexpr std::pair<const char*, ProfileProbe> kProfileProbes[] = {
    {"probe_copy_coalesced", ProfileProbe::kCopyCoalesced},   {"probe_copy_stride32", ProfileProbe::kCopyStride32},
    {"probe_copy_float4", ProfileProbe::kCopyFloat4},         {"probe_smem_conflict32", ProfileProbe::kSmemConflict32},
    {"probe_smem_padded", ProfileProbe::kSmemPadded},
};

}  // namespace

void bind_profile(py::module_& m) {
  py::list names;
  for (const auto& [n, p] : kProfileProbes) names.append(n);
  m.attr("_profile_probes") = py::tuple(names);
  m.def(
      "_profile_probe",
      [](const std::string& probe, py::handle x_obj, py::handle out_obj, std::uintptr_t stream) {
        const ProfileProbe* p = nullptr;
        for (const auto& kv : kProfileProbes)
          if (probe == kv.first) p = &kv.second;
        if (p == nullptr)
          throw py::value_error(detail::arg("probe") + "expected one of gpunet's _profile_probes, got '" + probe + "'");
        const View x = as_array(x_obj, "x", "float32");
        const View out = as_array(out_obj, "out", "float32");
        require_at_least(x.numel(), 1024, "x.size");
        require_at_least(out.numel(), 128, "out.size");
        require_writable(out, "out");
        if (reinterpret_cast<std::uintptr_t>(x.data) % 32 || reinterpret_cast<std::uintptr_t>(out.data) % 32)
          throw py::value_error("x, out: expected 32-byte aligned arrays (the probes' figures assume whole sectors)");
        auto guard = vouch({x, out});
        profile_probe(*p, x.ptr<float>(), out.ptr<float>(), as_stream(stream));
        check_launch("_profile_probe(" + probe + ")");
      },
      py::arg("probe"), py::arg("x"), py::arg("out"), py::arg("stream"),
      "TEST-ONLY. Runs one probe kernel of csrc/kernels/profile.cu (one warp) on\n"
      "x: float32 (>= 1024,) and out: float32 (>= 128,), both 32-byte aligned.");
}

}  // namespace gpunet
