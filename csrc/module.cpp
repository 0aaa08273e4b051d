// module.cpp -- the extension module: gpunet._C (nvcc build) or
// gpunet._C_sim (CPU simulation build), named by the MODULE_NAME macro that
// CMakeLists.txt defines. Module-level helpers live here; the kernels are
// bound family by family (bindings/families.h).
#include <string>

#include "bindings/families.h"
#include "common/binding.h"

namespace {

// The error of cudaGetDeviceCount, or cudaSuccess. No driver gives
// cudaErrorInsufficientDriver, a driver without a GPU cudaErrorNoDevice:
// both mean "no GPU" to the caller.
cudaError_t count_devices(int* count) {
  *count = 0;
  const cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // do not leave the error for the next launch to report
    *count = 0;
  }
  return e;
}

}  // namespace

PYBIND11_MODULE(MODULE_NAME, m) {
  namespace py = pybind11;
#ifdef CUDASIM
  m.doc() = "gpunet's CUDA kernels compiled for the CPU (csrc/sim); NumPy arrays in and out.";
  m.attr("backend") = "cudasim";
#else
  m.doc() = "gpunet's CUDA kernels (nvcc); CuPy arrays (__cuda_array_interface__) in and out.";
  m.attr("backend") = "cuda";
#endif
  m.def(
      "device_count",
      [] {
        int n = 0;
        count_devices(&n);
        return n;
      },
      "Number of visible GPUs; 0 when there is none or no driver (never raises).");
  m.def(
      "device_error",
      []() -> std::string {
        int n = 0;
        const cudaError_t e = count_devices(&n);
        return e == cudaSuccess ? "" : cudaGetErrorName(e);
      },
      "Name of the CUDA error that made device_count() return 0, or '' if it succeeded.");
#ifdef CUDASIM
  m.def(
      "set_schedule",
      [](const std::string& name, unsigned seed) {
        const int s = name == "fwd" ? 0 : name == "rev" ? 1 : name == "random" ? 2 : -1;
        if (s < 0) throw py::value_error("unknown schedule '" + name + "'; valid: fwd, rev, random");
        cudasim::set_schedule(s, seed);
      },
      py::arg("name"), py::arg("seed") = 12345,
      "Order in which the simulator runs a block's threads between sync points:\n"
      "'fwd', 'rev' or 'random' (seeded; reproducible per seed). Overrides the\n"
      "CUDASIM_SCHEDULE / CUDASIM_SEED environment variables read at first use.");
  m.def(
      "schedule",
      []() -> std::string {
        const int s = cudasim::config().schedule;
        return s == 1 ? "rev" : s == 2 ? "random" : "fwd";
      },
      "The current schedule: 'fwd', 'rev' or 'random'.");
  m.def(
      "set_workers",
      [](int n) {
        if (n < 1) throw py::value_error("set_workers: n must be >= 1, got " + std::to_string(n));
        cudasim::set_workers(n);
      },
      py::arg("n"), "Number of OS threads that run blocks (default: CUDASIM_WORKERS or #cores).");
  m.def("reset_error", &cudasim::reset_error, "Clear the simulator's pending error.");
#endif
#ifdef CUDASIM_RACECHECK
  m.attr("checked") = true;  // the race checker and the access profile are built in
  m.def(
      "_profile", [](bool on) { cudasim::profile::set_enabled(on); }, py::arg("on"),
      "Start (True: clears earlier records) or stop the access profile of this thread's launches.");
  m.def(
      "_profile_records",
      [] {
        py::list out;
        for (const auto& r : cudasim::profile::take()) {
          const auto& c = r.counters;
          py::dict d;
          d["kernel"] = r.kernel;
          d["grid"] = py::make_tuple(r.grid.x, r.grid.y, r.grid.z);
          d["block"] = py::make_tuple(r.block.x, r.block.y, r.block.z);
          d["dynamic_smem_bytes"] = r.smem;
          d["global_load_requests"] = c.global_load_requests;
          d["global_load_sectors"] = c.global_load_sectors;
          d["global_load_bytes"] = c.global_load_bytes;
          d["global_store_requests"] = c.global_store_requests;
          d["global_store_sectors"] = c.global_store_sectors;
          d["global_store_bytes"] = c.global_store_bytes;
          d["shared_load_requests"] = c.shared_load_requests;
          d["shared_load_wavefronts"] = c.shared_load_wavefronts;
          d["shared_store_requests"] = c.shared_store_requests;
          d["shared_store_wavefronts"] = c.shared_store_wavefronts;
          d["warp_requests"] = c.warp_requests;
          d["lane_slots"] = c.lane_slots;
          d["barriers"] = c.barriers;
          d["blocks"] = c.blocks;
          d["dram_sectors"] = c.dram_sectors;
          out.append(d);
        }
        return out;
      },
      "The access-profile counters of each launch since the last call (csrc/sim/profile.cpp).");
#endif
#define GPUNET_BIND(family) gpunet::bind_##family(m);
  GPUNET_FAMILIES(GPUNET_BIND)
#undef GPUNET_BIND
}
