// racecheck.cpp -- binding of the TEST-ONLY planted-hazard kernels in
// csrc/kernels/racecheck.cu (leading underscore: not part of gpunet's API).
#include <string>

#include "bindings/families.h"
#include "common/binding.h"
#include "kernels/racecheck.h"

namespace gpunet {
namespace {

constexpr std::pair<const char*, RaceProbe> kRaceProbes[] = {
    {"missing_barrier", RaceProbe::kMissingBarrier}, {"reused_scratch", RaceProbe::kReusedScratch},
    {"shared_counter", RaceProbe::kSharedCounter},   {"warp_handoff", RaceProbe::kWarpHandoff},
    {"cross_block", RaceProbe::kCrossBlock},         {"uninit_shared", RaceProbe::kUninitShared},
    {"past_the_end", RaceProbe::kPastTheEnd},
};

RaceProbe probe_named(const std::string& name) {
  std::string known;
  for (const auto& [n, p] : kRaceProbes) {
    if (name == n) return p;
    known += known.empty() ? n : std::string(", ") + n;
  }
  throw py::value_error(detail::arg("probe") + "expected one of " + known + ", got '" + name + "'");
}

}  // namespace

void bind_racecheck(py::module_& m) {
  m.def(
      "_race_probe",
      [](const std::string& probe, bool racy, py::handle x_obj, py::handle out_obj, std::uintptr_t stream) {
        const RaceProbe p = probe_named(probe);
        const View x = as_array(x_obj, "x", "float32");
        const View out = as_array(out_obj, "out", "float32");
        require_ndim(x, "x", 1);
        require_ndim(out, "out", 1);
        require_at_least(x.numel(), 128, "x.size");
        require_at_least(out.numel(), 4, "out.size");
        require_writable(out, "out");
        auto guard = vouch({x, out});
        race_probe(p, racy, x.ptr<float>(), out.ptr<float>(), out.numel(), as_stream(stream));
        check_launch("_race_probe(" + probe + (racy ? ", racy)" : ", fixed)"));
      },
      py::arg("probe"), py::arg("racy"), py::arg("x"), py::arg("out"), py::arg("stream"),
      "TEST-ONLY. Runs a kernel with a planted hazard (racy=True) or its fixed twin\n"
      "(csrc/kernels/racecheck.cu). x: float32 (>= 128,); out: float32 (>= 4,).\n"
      "The racy past_the_end probe writes out[out.size]: pass a view of a longer array.");
}

}  // namespace gpunet
