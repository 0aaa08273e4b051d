// cudasim.h -- run (a subset of) CUDA C++ kernel source on the CPU, for CI
// correctness tests on machines without a GPU.
//
// gpunet adopted this runtime from the shared prototype and owns it: it lives
// in csrc/sim/ and the root CMakeLists.txt builds gpunet._C_sim with it.
//
// Compile the *unchanged* kernel source with a host C++20 compiler:
//   g++ -std=c++20 -x c++ -include csrc/sim/cudasim.h -Icsrc/sim/shim file.cu
// after csrc/sim/cu2cpp.py has rewritten the two constructs that are not C++:
//   kernel<<<g, b, smem, stream>>>(args)   ->  ::cudasim::launch_cfg(g, b, smem, stream)
//                                                .kernel([&](auto&... a) { kernel(a...); }, "kernel")(args)
//   extern __shared__ T name[];            ->  T* name = ::cudasim::dynamic_smem<T>();
// (line numbers are preserved, so compiler errors / gdb / ASan point at the .cu).
//
// Execution model (default "fiber" backend):
//   * blocks are distributed over CUDASIM_WORKERS OS threads (default: #cores);
//   * the threads of one block are user-level fibers on one OS thread, run
//     cooperatively: a fiber runs until it reaches __syncthreads(), a warp
//     collective (__shfl*_sync, __ballot_sync, __syncwarp, ...) or returns;
//   * __shared__ == thread_local (one block in flight per worker), dynamic
//     shared memory is a per-worker arena poisoned with 0xFF (NaN) per block;
//   * atomics are real atomics (std::atomic_ref), so cross-block atomics work;
//   * the fiber order between sync points is CUDASIM_SCHEDULE=fwd|rev|random,
//     so a missing __syncthreads() usually shows up as a wrong result under
//     at least one schedule; the random order of a block depends only on
//     (seed, block index), so a failing seed reproduces whatever the number
//     of workers;
//   * static __shared__ variables are NOT poisoned between blocks: a read
//     before write sees whatever the previous block on that worker left
//     (a race test should feed fresh data to every launch);
//   * CUDASIM_STRICT=1 (default) turns several classes of UB into errors:
//     divergent __syncthreads() (different call sites), warp collectives with
//     inconsistent masks / different intrinsics, reading a shuffle value from
//     a non-participating lane, host pointers passed as kernel arguments,
//     deadlocks, bad launch configurations, > 48 KiB dynamic smem without
//     cudaFuncSetAttribute.
//
// Alternative backend: -DCUDASIM_BACKEND_THREADS -> every CUDA thread of a
// block is an OS thread (std::thread), __syncthreads is a std::barrier.  Slow;
// kept for comparison only (about 100x slower than fibers).
#pragma once
#ifdef __CUDACC__
#error "cudasim.h is only for the CPU (non-nvcc) build"
#endif
#define CUDASIM 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <source_location>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(CUDASIM_BACKEND_THREADS)
#define CUDASIM_BACKEND_FIBERS 1
#if !defined(__x86_64__) && !defined(CUDASIM_USE_UCONTEXT)
#define CUDASIM_USE_UCONTEXT 1
#endif
#if defined(CUDASIM_USE_UCONTEXT)
#include <ucontext.h>
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer builds: tell ASan about fiber stack switches
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDASIM_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(CUDASIM_RACECHECK)
// ThreadSanitizer builds (GPUNET_SIM_TSAN; the race checker only borrows the
// instrumentation): each simulated thread is a TSan fiber, so that its shadow
// call stack survives the switches; a switch synchronises (the fibers of a
// block run one at a time), so TSan reports races between OS threads only.
#include <sanitizer/tsan_interface.h>
#define CUDASIM_TSAN 1
#define CUDASIM_NO_TSAN __attribute__((no_sanitize_thread))
#else
#define CUDASIM_NO_TSAN
#endif

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __constant__
#define __managed__
#define __grid_constant__
#if defined(CUDASIM_BACKEND_FIBERS)
// block-scope thread_local implies static; one block per OS worker at a time
#define __shared__ thread_local
#else
#define __shared__ static
#endif
#ifndef __CUDACC_VER_MAJOR__
// deliberately NOT defining __CUDA_ARCH__: arch-specific paths take their
// generic fallback in the CPU build.
#endif

// ---------------------------------------------------------------- vector types
// Block the toolkit's own vector_types.h / vector_functions.h / cuda_runtime_api.h
// so that the real <cuda_fp16.h> and <cuda_bf16.h> (which work in plain host
// C++) can be included by kernels and pick up these definitions instead.
#ifndef __VECTOR_TYPES_H__
#define __VECTOR_TYPES_H__
#endif
#ifndef __VECTOR_FUNCTIONS_H__
#define __VECTOR_FUNCTIONS_H__
#endif
#ifndef __CUDA_RUNTIME_API_H__
#define __CUDA_RUNTIME_API_H__
#endif
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
#define CUDASIM_VEC2(T, N, A) struct alignas(A) N##2 { T x, y; }; \
  inline N##2 make_##N##2(T a, T b) { return N##2{a, b}; }
#define CUDASIM_VEC3(T, N) struct N##3 { T x, y, z; }; \
  inline N##3 make_##N##3(T a, T b, T c) { return N##3{a, b, c}; }
#define CUDASIM_VEC4(T, N, A) struct alignas(A) N##4 { T x, y, z, w; }; \
  inline N##4 make_##N##4(T a, T b, T c, T d) { return N##4{a, b, c, d}; }
CUDASIM_VEC2(float, float, 8) CUDASIM_VEC3(float, float) CUDASIM_VEC4(float, float, 16)
CUDASIM_VEC2(double, double, 16) CUDASIM_VEC4(double, double, 16)
CUDASIM_VEC2(int, int, 8) CUDASIM_VEC3(int, int) CUDASIM_VEC4(int, int, 16)
CUDASIM_VEC2(unsigned int, uint, 8) CUDASIM_VEC4(unsigned int, uint, 16)
CUDASIM_VEC2(signed char, char, 2) CUDASIM_VEC4(signed char, char, 4)
CUDASIM_VEC2(unsigned char, uchar, 2) CUDASIM_VEC4(unsigned char, uchar, 4)
CUDASIM_VEC2(long long, longlong, 16)
inline uint3 make_uint3(unsigned a, unsigned b, unsigned c) { return uint3{a, b, c}; }
#undef CUDASIM_VEC2
#undef CUDASIM_VEC3
#undef CUDASIM_VEC4

// ---------------------------------------------------------------- runtime API types
enum cudaError_t {
  cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9, cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21, cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100, cudaErrorInvalidDevice = 101, cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701, cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801, cudaErrorUnknown = 999
};
typedef cudaError_t cudaError;
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
                         cudaFuncAttributePreferredSharedMemoryCarveout = 9 };
struct CUstream_st; typedef CUstream_st* cudaStream_t;
struct CUevent_st { std::chrono::steady_clock::time_point t; }; typedef CUevent_st* cudaEvent_t;
struct cudaDeviceProp {
  char name[256]; size_t totalGlobalMem; size_t sharedMemPerBlock; int regsPerBlock; int warpSize;
  int maxThreadsPerBlock; int maxThreadsDim[3]; int maxGridSize[3]; int multiProcessorCount;
  size_t sharedMemPerBlockOptin; size_t sharedMemPerMultiprocessor; int maxThreadsPerMultiProcessor;
  int major; int minor;
};
#define cudaStreamDefault 0
#define cudaStreamNonBlocking 1
#define cudaHostAllocDefault 0
static constexpr int warpSize = 32;

namespace cudasim {

// ---------------------------------------------------------------- config
struct Config {
  int workers = 1;
  int schedule = 0;   // 0 fwd, 1 rev, 2 random
  unsigned seed = 12345;
  bool strict = true;
  size_t stack_bytes = 64 * 1024;
  bool check_ptrs = true;
};
inline Config& config() {
  static Config c = [] {
    Config k;
    unsigned hc = std::thread::hardware_concurrency();
    k.workers = hc ? (int)hc : 1;
    if (const char* s = std::getenv("CUDASIM_WORKERS")) k.workers = std::max(1, std::atoi(s));
    if (const char* s = std::getenv("CUDASIM_SCHEDULE")) {
      std::string v(s);
      k.schedule = v == "rev" ? 1 : v == "random" ? 2 : 0;
      // a typo must not silently turn a race hunt into a plain fwd run
      if (v != "fwd" && v != "rev" && v != "random")
        std::fprintf(stderr, "[cudasim] unknown CUDASIM_SCHEDULE=%s (fwd|rev|random); using fwd\n", s);
    }
    if (const char* s = std::getenv("CUDASIM_SEED")) k.seed = (unsigned)std::strtoul(s, nullptr, 10);
    if (const char* s = std::getenv("CUDASIM_STRICT")) k.strict = std::atoi(s) != 0;
    if (const char* s = std::getenv("CUDASIM_STACK_KB")) k.stack_bytes = (size_t)std::atoi(s) * 1024;
    if (const char* s = std::getenv("CUDASIM_CHECK_PTRS")) k.check_ptrs = std::atoi(s) != 0;
#if defined(CUDASIM_RACECHECK)
    k.workers = 1;  // the checker's shadow state belongs to the launching OS thread
#endif
    return k;
  }();
  return c;
}
// programmatic overrides (used by tests through the Python bindings)
inline void set_schedule(int s, unsigned seed = 12345) { config().schedule = s; config().seed = seed; }
#if defined(CUDASIM_RACECHECK)
inline void set_workers(int) {}  // always one worker under the race checker
#else
inline void set_workers(int w) { config().workers = std::max(1, w); }
#endif

struct SimError : std::runtime_error { using std::runtime_error::runtime_error; };

namespace detail {
// last error (like the CUDA runtime: per host thread, read by cudaGetLastError;
// a launch records its errors on the thread that launched it)
inline std::mutex& err_mu() { static std::mutex m; return m; }
inline cudaError_t& last_err() { static thread_local cudaError_t e = cudaSuccess; return e; }
inline std::string& last_msg() { static thread_local std::string s; return s; }
inline void set_error(cudaError_t e, const std::string& msg) {
  std::lock_guard<std::mutex> g(err_mu());
  if (last_err() == cudaSuccess) { last_err() = e; last_msg() = msg; }
  if (std::getenv("CUDASIM_QUIET") == nullptr) std::fprintf(stderr, "[cudasim] %s\n", msg.c_str());
}

// ---------------------------------------------------------------- allocation registry
// cudaMalloc'd blocks, and the host ranges that DeviceView guards vouch for:
// one entry per live guard, owned by the host thread of the call (two threads
// may vouch for one array, and the first to finish must not unregister it
// under the other; a thread's launches see only its own vouched ranges).
struct Registry {
  using Range = std::pair<uintptr_t, size_t>;  // base, bytes
  struct Vouched {
    Range range;
    std::thread::id owner;
  };
  std::mutex mu;
  std::map<uintptr_t, size_t> allocs;  // base -> size
  std::vector<Vouched> vouched;
  void add(void* p, size_t n) { std::lock_guard<std::mutex> g(mu); allocs[(uintptr_t)p] = n; }
  bool remove(void* p) { std::lock_guard<std::mutex> g(mu); return allocs.erase((uintptr_t)p) > 0; }
  void vouch(const void* p, size_t n) {
    std::lock_guard<std::mutex> g(mu);
    vouched.push_back({{(uintptr_t)p, n}, std::this_thread::get_id()});
  }
  void unvouch(const void* p, size_t n) {
    std::lock_guard<std::mutex> g(mu);
    const auto me = std::this_thread::get_id();
    for (auto it = vouched.begin(); it != vouched.end(); ++it)
      if (it->range == Range{(uintptr_t)p, n} && it->owner == me) { vouched.erase(it); return; }
  }
  // [p, p + n) inside one range registered by cudaMalloc or vouched for by
  // this thread; n == 0 also accepts one past the end
  bool contains_range(const void* p, size_t n) {
    std::lock_guard<std::mutex> g(mu);
    const auto u = (uintptr_t)p;
    auto inside = [&](uintptr_t lo, size_t size) { return u >= lo && u - lo <= size && n <= size - (u - lo); };
    auto it = allocs.upper_bound(u);
    if (it != allocs.begin() && inside(std::prev(it)->first, std::prev(it)->second)) return true;
    const auto me = std::this_thread::get_id();
    for (const Vouched& v : vouched)
      if (v.owner == me && inside(v.range.first, v.range.second)) return true;
    return false;
  }
  bool contains(const void* p) { return contains_range(p, 0); }
  // what this thread's launches may touch, as sorted, disjoint ranges (for the race checker)
  std::vector<Range> ranges() {
    std::lock_guard<std::mutex> g(mu);
    std::vector<Range> all(allocs.begin(), allocs.end());
    const auto me = std::this_thread::get_id();
    for (const Vouched& v : vouched)
      if (v.owner == me) all.push_back(v.range);
    std::sort(all.begin(), all.end());
    std::vector<Range> merged;
    for (const Range& r : all) {
      if (!merged.empty() && r.first <= merged.back().first + merged.back().second)
        merged.back().second = std::max(merged.back().second, r.first + r.second - merged.back().first);
      else
        merged.push_back(r);
    }
    return merged;
  }
};
inline Registry& registry() { static Registry r; return r; }

// per-kernel attributes set with cudaFuncSetAttribute
inline std::mutex& attr_mu() { static std::mutex m; return m; }
inline std::unordered_map<const void*, int>& max_dyn_smem() { static std::unordered_map<const void*, int> m; return m; }

constexpr size_t kDefaultDynSmem = 48 * 1024;
constexpr size_t kMaxDynSmemOptin = 227 * 1024;  // H100

// ---------------------------------------------------------------- execution state
enum class FState : uint8_t { Ready, Barrier, Warp, Done };

#if defined(CUDASIM_BACKEND_FIBERS)
#if defined(CUDASIM_USE_UCONTEXT)
struct Ctx { ucontext_t uc; const void* stack_bottom = nullptr; size_t stack_size = 0; void* tsan = nullptr; };
#else
struct Ctx { void* sp = nullptr; const void* stack_bottom = nullptr; size_t stack_size = 0; void* tsan = nullptr; };
#endif
#endif

// A cp.async copy issued and not yet landed (tensorcore.h): 16 bytes from
// src to dst (zeros when !full), in commit group `group` of its thread.
struct AsyncCopy {
  void* dst;
  const void* src;
  bool full;
  unsigned group;
};

struct Block;
struct Fiber {
  uint3 tid{0, 0, 0};
  unsigned linear = 0, lane = 0, warp = 0;
  FState st = FState::Ready;
  unsigned wait_gen = 0;       // generation of the warp rendezvous / barrier we wait on
  Block* blk = nullptr;
  std::vector<AsyncCopy> cp_async;  // issued, not landed (issue order)
  unsigned cp_groups = 0;           // commit groups committed so far
#if defined(CUDASIM_BACKEND_FIBERS)
  Ctx ctx;
  char* stack = nullptr;
#endif
};

struct WarpSync;
struct Block;
struct WarpDone { WarpSync* w; void operator()() noexcept; };
struct BlockDone { Block* b; void operator()() noexcept; };
struct WarpSync {
  unsigned gen = 0;
  unsigned arrived = 0;      // lanes arrived at the pending rendezvous
  unsigned mask = 0;         // mask named by the first arriving lane
  int kind = 0;              // which intrinsic
  const void* site = nullptr;
  unsigned part[2] = {0, 0}; // participating lanes of gen parity
  uint64_t val[2][32];
#if defined(CUDASIM_BACKEND_THREADS)
  std::unique_ptr<std::barrier<WarpDone>> bar;
#endif
};

struct Block {
  uint3 bid{0, 0, 0};
  dim3 bdim, gdim;
  unsigned nthreads = 0, nwarps = 0;
  Fiber* fibers = nullptr;
  WarpSync* warps = nullptr;
  unsigned live = 0;
  unsigned done_mask_of_warp(unsigned w) const {
    unsigned m = 0;
    for (unsigned l = 0; l < 32; ++l) {
      unsigned t = w * 32 + l;
      if (t >= nthreads || fibers[t].st == FState::Done) m |= 1u << l;
    }
    return m;
  }
  // barrier
  unsigned bar_gen = 0;
  const void* bar_site = nullptr;
  int bar_acc[2] = {0, 0};
  int bar_or[2] = {0, 0};
  int bar_and[2] = {1, 1};
  // dynamic shared memory
  void* dyn_smem = nullptr;
  size_t dyn_smem_bytes = 0;
  // kernel body
  const std::function<void()>* body = nullptr;
  const char* kname = "kernel";
  std::exception_ptr error;
#if defined(CUDASIM_BACKEND_FIBERS)
  Ctx sched;
#endif
#if defined(CUDASIM_BACKEND_THREADS)
  std::unique_ptr<std::barrier<BlockDone>> bar;
  std::mutex mu;
#endif
};
// completion steps: run once per phase, after all arrived, before anyone is released
inline void WarpDone::operator()() noexcept { unsigned g = w->gen; w->part[g & 1] = w->arrived; w->arrived = 0; w->gen = g + 1; }
inline void BlockDone::operator()() noexcept {
  unsigned g = b->bar_gen;
  b->bar_acc[(g + 1) & 1] = 0; b->bar_or[(g + 1) & 1] = 0; b->bar_and[(g + 1) & 1] = 1;
  b->bar_gen = g + 1;
}

inline thread_local Fiber* cur = nullptr;
inline thread_local Block* cur_blk = nullptr;

[[noreturn]] inline void fail(const std::string& m) { throw SimError(m); }
inline std::string where() {
  char b[160];
  if (cur && cur_blk)
    std::snprintf(b, sizeof b, "block (%u,%u,%u) thread (%u,%u,%u)", cur_blk->bid.x, cur_blk->bid.y,
                  cur_blk->bid.z, cur->tid.x, cur->tid.y, cur->tid.z);
  else
    std::snprintf(b, sizeof b, "<host>");
  return b;
}
}  // namespace detail

// ---------------------------------------------------------------- race checker hooks
// gpunet._C_simcheck (CUDASIM_RACECHECK) compiles the kernels with the
// compiler's access instrumentation and links csrc/sim/racecheck.cpp, which
// records every access to shared and global memory; the runtime tells it
// where launches, blocks and warp collectives begin and end. cu2cpp.py puts a
// note_shared() after each static __shared__ declaration, a no-op elsewhere.
namespace racecheck {
#if defined(CUDASIM_RACECHECK)
void launch_begin(const char* kname, dim3 grid, dim3 block);
void block_begin(const detail::Block& b, void* arena, size_t arena_bytes);
void warp_synced(unsigned warp, unsigned lanes);
void note_shared(const void* p, size_t bytes);
std::string launch_end();  // the hazards found, "" if none
#endif
}  // namespace racecheck
// The access profile (csrc/sim/profile.cpp) of the same build, on while
// profile::set_enabled(true): per launch, requests, sectors, wavefronts.
namespace profile {
#if defined(CUDASIM_RACECHECK)
struct Record {
  std::string kernel;
  dim3 grid, block;
  size_t smem = 0;
  struct Counters {
    uint64_t global_load_requests = 0, global_load_sectors = 0, global_load_bytes = 0;
    uint64_t global_store_requests = 0, global_store_sectors = 0, global_store_bytes = 0;
    uint64_t shared_load_requests = 0, shared_load_wavefronts = 0;
    uint64_t shared_store_requests = 0, shared_store_wavefronts = 0;
    uint64_t warp_requests = 0, lane_slots = 0, barriers = 0, blocks = 0, dram_sectors = 0;
  } counters;
};
void set_enabled(bool on);
bool enabled();
void launch_begin(const char* kname, dim3 grid, dim3 block, size_t smem);
void block_begin(unsigned nthreads);
void access(bool shared, uintptr_t addr, size_t size, bool write, const void* pc, unsigned tid);
void block_end(unsigned barriers);
void launch_end();
std::vector<Record> take();  // the records of the launches since the last take()
#endif
}  // namespace profile
namespace racecheck {
#if !defined(CUDASIM_RACECHECK)
inline void note_shared(const void*, size_t) {}
#endif
}  // namespace racecheck
inline void note_shared(const void* p, size_t bytes) { racecheck::note_shared(p, bytes); }
}  // namespace cudasim

// ---------------------------------------------------------------- built-in variables
#define threadIdx (::cudasim::detail::cur->tid)
#define blockIdx (::cudasim::detail::cur_blk->bid)
#define blockDim (::cudasim::detail::cur_blk->bdim)
#define gridDim (::cudasim::detail::cur_blk->gdim)

// ================================================================ fiber backend
#if defined(CUDASIM_BACKEND_FIBERS)
#if !defined(CUDASIM_USE_UCONTEXT)
// minimal x86-64 SysV context switch: callee-saved GPRs + mxcsr + x87 cw.
// A naked *inline* function (COMDAT), so several TUs / LTO can include it.
__attribute__((naked, noinline)) inline void cudasim_switch_x64(void** /*save_sp*/, void* /*new_sp*/) {
  __asm__ volatile(
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n");
}
#endif

namespace cudasim { namespace detail {

// (not instrumented by TSan: a fiber's shadow stack must not keep the frames
// of its entry and final switch, or a reused fiber's stack would grow)
CUDASIM_NO_TSAN inline void switch_to(Ctx& from, Ctx& to, bool final_exit = false) {
#if defined(CUDASIM_TSAN)
  __tsan_switch_to_fiber(to.tsan, 0);
#endif
#if defined(CUDASIM_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(final_exit ? nullptr : &fake, to.stack_bottom, to.stack_size);
#else
  (void)final_exit;
#endif
#if defined(CUDASIM_USE_UCONTEXT)
  swapcontext(&from.uc, &to.uc);
#else
  cudasim_switch_x64(&from.sp, to.sp);
#endif
#if defined(CUDASIM_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}
// called on a fiber: give control back to this worker's scheduler
inline void yield_to_sched() { switch_to(cur->ctx, cur_blk->sched); }

[[noreturn]] CUDASIM_NO_TSAN inline void fiber_main() {
  Fiber* f = cur;
  Block* b = f->blk;
#if defined(CUDASIM_ASAN)
  // first entry: learn the scheduler's stack bounds
  __sanitizer_finish_switch_fiber(nullptr, &b->sched.stack_bottom, &b->sched.stack_size);
#endif
  try {
    (*b->body)();
  } catch (...) {
    if (!b->error) b->error = std::current_exception();
  }
  f->st = FState::Done;
  switch_to(f->ctx, b->sched, /*final_exit=*/true);
  __builtin_unreachable();
}
#if defined(CUDASIM_USE_UCONTEXT)
inline void fiber_entry_uc() { fiber_main(); }
#endif

// per-worker stacks (mmap'ed, guard page below each stack)
struct StackPool {
  char* base = nullptr;
  size_t n = 0, each = 0;
  ~StackPool() { release(); }
  // ASan: the fibers' frames leave stack redzones in the shadow of these
  // pages; unmapped without clearing, they would poison whatever is mapped
  // there next (Python's allocator: "stack-buffer-underflow" in a memset)
  void release() {
    if (!base) return;
#if defined(CUDASIM_ASAN)
    __asan_unpoison_memory_region(base, n * each);
#endif
    munmap(base, n * each);
    base = nullptr;
  }
  char* get(unsigned i, size_t stack_bytes, unsigned need) {
    if (need > n || stack_bytes + 4096 != each) {
      release();
      each = stack_bytes + 4096;
      n = std::max(need, 32u);
      void* p = mmap(nullptr, n * each, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) fail("cudasim: cannot mmap fiber stacks");
      base = (char*)p;
      for (size_t k = 0; k < n; ++k) mprotect(base + k * each, 4096, PROT_NONE);  // guard
    }
    return base + i * each + 4096;
  }
};

struct Worker {
  StackPool stacks;
  std::vector<Fiber> fibers;
  std::vector<WarpSync> warps;
  std::vector<unsigned> order;
  std::vector<unsigned char> smem;
#if defined(CUDASIM_TSAN)
  Worker() = default;
  Worker(const Worker&) = delete;
  ~Worker() { for (Fiber& f : fibers) if (f.ctx.tsan) __tsan_destroy_fiber(f.ctx.tsan); }
#endif
};
inline thread_local Worker* tl_worker = nullptr;

inline void init_fiber(Fiber& f, char* stack, size_t bytes) {
#if defined(CUDASIM_TSAN)
  // a TSan fiber is reused while its last run ended (Done); one left mid-way
  // by a failed block still holds that run's frames: replaced
  if (f.ctx.tsan && f.st != FState::Done) { __tsan_destroy_fiber(f.ctx.tsan); f.ctx.tsan = nullptr; }
  if (!f.ctx.tsan) f.ctx.tsan = __tsan_create_fiber(0);
#endif
  f.stack = stack;
  f.ctx.stack_bottom = stack;
  f.ctx.stack_size = bytes;
#if defined(CUDASIM_ASAN)
  __asan_unpoison_memory_region(stack, bytes);  // stale poison from the previous block's fibers
#endif
#if defined(CUDASIM_USE_UCONTEXT)
  getcontext(&f.ctx.uc);
  f.ctx.uc.uc_stack.ss_sp = stack;
  f.ctx.uc.uc_stack.ss_size = bytes;
  f.ctx.uc.uc_link = nullptr;
  makecontext(&f.ctx.uc, (void (*)())fiber_entry_uc, 0);
#else
  uintptr_t top = ((uintptr_t)stack + bytes) & ~(uintptr_t)15;
  // frame: [mxcsr|fpucw][r15][r14][r13][r12][rbx][rbp][ret=fiber_main][0]
  // after 'ret' rsp = frame+64 must be 8 mod 16 (as after a call)
  uintptr_t frame = top - 64 - 8 - 16;
  uint64_t* q = (uint64_t*)frame;
  uint32_t mx; uint16_t cw;
  __asm__ volatile("stmxcsr %0" : "=m"(mx));
  __asm__ volatile("fnstcw %0" : "=m"(cw));
  std::memset(q, 0, 80);
  std::memcpy((char*)q, &mx, 4);
  std::memcpy((char*)q + 4, &cw, 2);
  q[7] = (uint64_t)(void*)&fiber_main;
  f.ctx.sp = (void*)frame;
#endif
}

inline void resolve_warp_ready(Block& b, WarpSync& w, unsigned widx);

// run one block to completion on the calling OS thread
inline void run_block(Worker& W, Block& b) {
  const Config& cfg = config();
  unsigned n = b.nthreads;
  if (W.fibers.size() < n) W.fibers.resize(n);
  b.fibers = W.fibers.data();
  b.nwarps = (n + 31) / 32;
  if (W.warps.size() < b.nwarps) W.warps.resize(b.nwarps);
  b.warps = W.warps.data();
  for (unsigned w = 0; w < b.nwarps; ++w) { b.warps[w].arrived = 0; b.warps[w].gen = 0; }
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    init_fiber(f, W.stacks.get(i, cfg.stack_bytes, n), cfg.stack_bytes);  // reads the last run's state
    f.linear = i;
    f.tid = uint3{i % b.bdim.x, (i / b.bdim.x) % b.bdim.y, i / (b.bdim.x * b.bdim.y)};
    f.lane = i % 32; f.warp = i / 32;
    f.st = FState::Ready; f.blk = &b; f.wait_gen = 0;
    f.cp_async.clear(); f.cp_groups = 0;
  }
  b.live = n; b.bar_gen = 0; b.bar_site = nullptr;
  b.bar_acc[0] = b.bar_acc[1] = 0; b.bar_or[0] = b.bar_or[1] = 0; b.bar_and[0] = b.bar_and[1] = 1;
  W.order.resize(n);
  for (unsigned i = 0; i < n; ++i) W.order[i] = cfg.schedule == 1 ? n - 1 - i : i;
  // Seeded per block, not per worker: the shuffles then depend only on
  // (seed, block index), not on which worker picked the block up, and a new
  // seed from set_schedule() takes effect at the next launch.
  std::mt19937 rng;
  if (cfg.schedule == 2) {
    const unsigned long long block_id =
        b.bid.x + (unsigned long long)b.gdim.x * (b.bid.y + (unsigned long long)b.gdim.y * b.bid.z);
    std::seed_seq seq{cfg.seed, (unsigned)block_id, (unsigned)(block_id >> 32)};
    rng.seed(seq);
  }
  cur_blk = &b;
#if defined(CUDASIM_TSAN)
  b.sched.tsan = __tsan_get_current_fiber();
#endif
  while (true) {
    if (cfg.schedule == 2) std::shuffle(W.order.begin(), W.order.end(), rng);
    bool ran = false;
    for (unsigned k = 0; k < n; ++k) {
      Fiber& f = b.fibers[W.order[k]];
      if (f.st != FState::Ready) continue;
      cur = &f;
      switch_to(b.sched, f.ctx);
      ran = true;
      if (f.st == FState::Done) {
        --b.live;
        // a lane exiting may complete a pending warp rendezvous
        WarpSync& ws = b.warps[f.warp];
        if (ws.arrived) resolve_warp_ready(b, ws, f.warp);
      }
      if (b.error) break;
    }
    cur = nullptr;
    if (b.error) break;
    if (b.live == 0) break;
    // release barrier if every live fiber waits at it
    unsigned at_bar = 0, at_warp = 0;
    for (unsigned i = 0; i < n; ++i) {
      if (b.fibers[i].st == FState::Barrier) ++at_bar;
      else if (b.fibers[i].st == FState::Warp) ++at_warp;
    }
    if (at_bar == b.live) {
      unsigned g = b.bar_gen;
      b.bar_acc[(g + 1) & 1] = 0; b.bar_or[(g + 1) & 1] = 0; b.bar_and[(g + 1) & 1] = 1;
      b.bar_gen++;
      b.bar_site = nullptr;
      for (unsigned i = 0; i < n; ++i)
        if (b.fibers[i].st == FState::Barrier) b.fibers[i].st = FState::Ready;
      continue;
    }
    if (!ran) {
      char m[256];
      std::snprintf(m, sizeof m,
                    "deadlock in %s block (%u,%u,%u): %u live threads, %u at __syncthreads, %u in warp collectives",
                    b.kname, b.bid.x, b.bid.y, b.bid.z, b.live, at_bar, at_warp);
      b.error = std::make_exception_ptr(SimError(m));
      break;
    }
  }
  cur_blk = nullptr;
}

}}  // namespace cudasim::detail
#endif  // fibers

// ================================================================ threads backend
#if defined(CUDASIM_BACKEND_THREADS)
namespace cudasim { namespace detail {
inline void run_block_threads(Block& b) {
  unsigned n = b.nthreads;
  std::vector<Fiber> fibers(n);
  b.fibers = fibers.data();
  b.nwarps = (n + 31) / 32;
  std::vector<WarpSync> warps(b.nwarps);
  b.warps = warps.data();
  for (unsigned w = 0; w < b.nwarps; ++w)
    warps[w].bar = std::make_unique<std::barrier<WarpDone>>(std::min<unsigned>(32, n - w * 32), WarpDone{&warps[w]});
  b.bar = std::make_unique<std::barrier<BlockDone>>(n, BlockDone{&b});
  b.live = n; b.bar_gen = 0;
  std::vector<std::thread> ths;
  ths.reserve(n);
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = fibers[i];
    f.linear = i;
    f.tid = uint3{i % b.bdim.x, (i / b.bdim.x) % b.bdim.y, i / (b.bdim.x * b.bdim.y)};
    f.lane = i % 32; f.warp = i / 32; f.blk = &b;
    ths.emplace_back([&b, &f] {
      cur = &f; cur_blk = &b;
      try { (*b.body)(); } catch (...) {
        std::lock_guard<std::mutex> g(b.mu);
        if (!b.error) b.error = std::current_exception();
      }
      f.st = FState::Done;
      b.warps[f.warp].bar->arrive_and_drop();
      b.bar->arrive_and_drop();
    });
  }
  for (auto& t : ths) t.join();
}
}}  // namespace cudasim::detail
#endif

// ================================================================ device-side primitives
namespace cudasim { namespace detail {

// kTensor (ldmatrix, mma: tensorcore.h) exchanges registers only: unlike the
// others it does not order the lanes' memory accesses for the race checker.
enum WarpKind { kShfl = 1, kBallot, kSyncwarp, kMatch, kReduce, kTensor };

#if defined(CUDASIM_BACKEND_FIBERS)
inline void resolve_warp_ready(Block& b, WarpSync& w, unsigned widx) {
  unsigned need = w.mask & ~b.done_mask_of_warp(widx);
  if ((w.arrived & need) == need) {
    unsigned g = w.gen;
    w.part[g & 1] = w.arrived;
    for (unsigned l = 0; l < 32; ++l)
      if (w.arrived & (1u << l)) b.fibers[widx * 32 + l].st = FState::Ready;
#if defined(CUDASIM_RACECHECK)
    if (w.kind != kTensor) racecheck::warp_synced(widx, w.arrived);
#endif
    w.arrived = 0;
    w.gen++;
  }
}
#endif

// Rendezvous of the lanes named in `mask`; deposits `bits`; returns the
// generation parity to read values from, and the participating lane mask.
inline unsigned warp_rendezvous(unsigned mask, int kind, uint64_t bits, const void* site, unsigned* part_out) {
  Fiber* f = cur;
  Block& b = *cur_blk;
  WarpSync& w = b.warps[f->warp];
  const Config& cfg = config();
  if (cfg.strict && !(mask & (1u << f->lane)))
    fail("warp collective called by lane " + std::to_string(f->lane) + " not in its own mask (" + where() + ")");
#if defined(CUDASIM_BACKEND_FIBERS)
  if (w.arrived == 0) { w.mask = mask; w.kind = kind; w.site = site; }
  else if (cfg.strict) {
    if (w.mask != mask) {
      char m[200];
      std::snprintf(m, sizeof m, "warp collective with inconsistent masks 0x%08x vs 0x%08x (%s)", w.mask, mask, where().c_str());
      fail(m);
    }
    if (w.kind != kind) fail("different warp collectives executed by lanes of one warp (" + where() + ")");
  }
  unsigned g = w.gen;
  w.val[g & 1][f->lane] = bits;
  w.arrived |= 1u << f->lane;
  f->st = FState::Warp;
  f->wait_gen = g;
  resolve_warp_ready(b, w, f->warp);  // last arriving lane releases all
  // yield even if released, so that lanes observe a consistent schedule
  yield_to_sched();
  *part_out = w.part[g & 1];
  return g & 1;
#else
  (void)site; (void)kind;
  unsigned g;
  {
    std::lock_guard<std::mutex> lk(b.mu);
    g = w.gen;
    w.val[g & 1][f->lane] = bits;
    w.arrived |= 1u << f->lane;
  }
  w.bar->arrive_and_wait();  // completion step publishes part[g&1] and bumps gen
  // full-warp only: a mask naming a subset of the live lanes deadlocks here
  *part_out = w.part[g & 1] & mask;
  return g & 1;
#endif
}

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type must be <= 8 bytes");
  uint64_t u = 0; std::memcpy(&u, &v, sizeof(T)); return u;
}
template <class T>
inline T from_bits(uint64_t u) { T v; std::memcpy(&v, &u, sizeof(T)); return v; }

template <class T>
inline T shfl_impl(unsigned mask, T v, int src, const void* site) {
  unsigned part;
  unsigned p = warp_rendezvous(mask, kShfl, to_bits(v), site, &part);
  Fiber* f = cur;
  WarpSync& w = cur_blk->warps[f->warp];
  if (src < 0) return v;  // "own value" cases
  if (!(part & (1u << src))) {
    if (config().strict)
      fail("shuffle reads lane " + std::to_string(src) + " which is not participating (" + where() + ")");
    return v;
  }
  return from_bits<T>(w.val[p][src]);
}

inline void syncthreads_impl(const void* site, int pred, int* cnt, int* any, int* all) {
  Fiber* f = cur;
  Block& b = *cur_blk;
#if defined(CUDASIM_BACKEND_FIBERS)
  if (config().strict) {
    if (b.bar_site == nullptr) b.bar_site = site;
    else if (b.bar_site != site)
      fail(std::string("divergent __syncthreads(): threads of ") + b.kname +
           " wait at different barriers (" + where() + ")");
  }
  unsigned g = b.bar_gen;
  b.bar_acc[g & 1] += pred != 0;
  b.bar_or[g & 1] |= pred != 0;
  b.bar_and[g & 1] &= pred != 0;
  f->st = FState::Barrier;
  f->wait_gen = g;
  yield_to_sched();
  if (cnt) *cnt = b.bar_acc[g & 1];
  if (any) *any = b.bar_or[g & 1];
  if (all) *all = b.bar_and[g & 1];
#else
  (void)site; (void)f;
  unsigned g;
  { std::lock_guard<std::mutex> lk(b.mu); g = b.bar_gen; b.bar_acc[g & 1] += pred != 0;
    b.bar_or[g & 1] |= pred != 0; b.bar_and[g & 1] &= pred != 0; }
  b.bar->arrive_and_wait();
  if (cnt) *cnt = b.bar_acc[g & 1];
  if (any) *any = b.bar_or[g & 1];
  if (all) *all = b.bar_and[g & 1];
#endif
}

}}  // namespace cudasim::detail

#define CUDASIM_SITE() __builtin_return_address(0)

// the barrier "site" is the source location of the call (robust against the
// host compiler duplicating code), used to flag divergent __syncthreads()
namespace cudasim { namespace detail {
inline const void* site_of(const std::source_location& l) {
  // (file, line, column) -> key; no allocation, no lock
  return (const void*)(((uint64_t)l.line() << 40) ^ ((uint64_t)l.column() << 28) ^ (uint64_t)(uintptr_t)l.file_name());
}
}}
inline void __syncthreads(std::source_location l = std::source_location::current()) { ::cudasim::detail::syncthreads_impl(::cudasim::detail::site_of(l), 0, nullptr, nullptr, nullptr); }
inline int __syncthreads_count(int p, std::source_location l = std::source_location::current()) { int c; ::cudasim::detail::syncthreads_impl(::cudasim::detail::site_of(l), p, &c, nullptr, nullptr); return c; }
inline int __syncthreads_or(int p, std::source_location l = std::source_location::current()) { int c; ::cudasim::detail::syncthreads_impl(::cudasim::detail::site_of(l), p, nullptr, &c, nullptr); return c; }
inline int __syncthreads_and(int p, std::source_location l = std::source_location::current()) { int c; ::cudasim::detail::syncthreads_impl(::cudasim::detail::site_of(l), p, nullptr, nullptr, &c); return c; }

__attribute__((noinline)) inline void __syncwarp(unsigned mask = 0xffffffffu) {
  unsigned part; ::cudasim::detail::warp_rendezvous(mask, ::cudasim::detail::kSyncwarp, 0, CUDASIM_SITE(), &part);
}
inline unsigned __activemask() {
  auto* b = ::cudasim::detail::cur_blk;
  return ~b->done_mask_of_warp(::cudasim::detail::cur->warp);
}
inline unsigned __lane_id_cudasim() { return ::cudasim::detail::cur->lane; }

template <class T> __attribute__((noinline)) T __shfl_sync(unsigned mask, T v, int srcLane, int width = 32) {
  int lane = (int)::cudasim::detail::cur->lane;
  int src = (lane & ~(width - 1)) + (srcLane & (width - 1));
  return ::cudasim::detail::shfl_impl(mask, v, src, CUDASIM_SITE());
}
template <class T> __attribute__((noinline)) T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int lane = (int)::cudasim::detail::cur->lane;
  int src = ((lane & (width - 1)) >= (int)delta) ? lane - (int)delta : -1;
  return ::cudasim::detail::shfl_impl(mask, v, src, CUDASIM_SITE());
}
template <class T> __attribute__((noinline)) T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int lane = (int)::cudasim::detail::cur->lane;
  int src = ((lane & (width - 1)) + (int)delta < width) ? lane + (int)delta : -1;
  return ::cudasim::detail::shfl_impl(mask, v, src, CUDASIM_SITE());
}
template <class T> __attribute__((noinline)) T __shfl_xor_sync(unsigned mask, T v, int laneMask, int width = 32) {
  int lane = (int)::cudasim::detail::cur->lane;
  int src = lane ^ laneMask;
  if ((src & ~(width - 1)) > (lane & ~(width - 1))) src = -1;  // later group: own value
  return ::cudasim::detail::shfl_impl(mask, v, src, CUDASIM_SITE());
}
__attribute__((noinline)) inline unsigned __ballot_sync(unsigned mask, int pred) {
  using namespace ::cudasim::detail;
  unsigned part; unsigned p = warp_rendezvous(mask, kBallot, pred != 0, CUDASIM_SITE(), &part);
  WarpSync& w = cur_blk->warps[cur->warp];
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l) if ((part & (1u << l)) && w.val[p][l]) r |= 1u << l;
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  unsigned b = __ballot_sync(mask, pred);
  return (b & mask & __activemask()) == (mask & __activemask());
}
template <class T> __attribute__((noinline)) unsigned __match_any_sync(unsigned mask, T v) {
  using namespace ::cudasim::detail;
  unsigned part; unsigned p = warp_rendezvous(mask, kMatch, to_bits(v), CUDASIM_SITE(), &part);
  WarpSync& w = cur_blk->warps[cur->warp];
  unsigned r = 0; uint64_t mine = to_bits(v);
  for (unsigned l = 0; l < 32; ++l) if ((part & (1u << l)) && w.val[p][l] == mine) r |= 1u << l;
  return r;
}
#define CUDASIM_WREDUCE(NAME, T, OP)                                                            \
  __attribute__((noinline)) inline T NAME(unsigned mask, T v) {                                 \
    using namespace ::cudasim::detail;                                                          \
    unsigned part; unsigned p = warp_rendezvous(mask, kReduce, to_bits(v), CUDASIM_SITE(), &part); \
    WarpSync& w = cur_blk->warps[cur->warp];                                                    \
    bool first = true; T r{};                                                                   \
    for (unsigned l = 0; l < 32; ++l) if (part & (1u << l)) {                                   \
      T x = from_bits<T>(w.val[p][l]); r = first ? x : OP; first = false; }                     \
    return r;                                                                                   \
  }
CUDASIM_WREDUCE(__reduce_add_sync, unsigned, r + x)
CUDASIM_WREDUCE(__reduce_add_sync, int, r + x)
CUDASIM_WREDUCE(__reduce_min_sync, unsigned, std::min(r, x))
CUDASIM_WREDUCE(__reduce_min_sync, int, std::min(r, x))
CUDASIM_WREDUCE(__reduce_max_sync, unsigned, std::max(r, x))
CUDASIM_WREDUCE(__reduce_max_sync, int, std::max(r, x))
#undef CUDASIM_WREDUCE

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline long long clock64() { return (long long)std::chrono::steady_clock::now().time_since_epoch().count(); }
// clock() clashes with libc clock(); use clock64()
inline void __nanosleep(unsigned) {}

// ---------------------------------------------------------------- atomics
template <class T> inline T __cudasim_atomic_fetch_add(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return __cudasim_atomic_fetch_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __cudasim_atomic_fetch_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __cudasim_atomic_fetch_add(p, v); }
inline float atomicAdd(float* p, float v) { return __cudasim_atomic_fetch_add(p, v); }
inline double atomicAdd(double* p, double v) { return __cudasim_atomic_fetch_add(p, v); }
inline int atomicSub(int* p, int v) { return std::atomic_ref<int>(*p).fetch_sub(v); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_sub(v); }
template <class T> inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T> inline T __cudasim_atomic_cas(T* p, T cmp, T val) {
  std::atomic_ref<T>(*p).compare_exchange_strong(cmp, val);
  return cmp;  // old value
}
inline int atomicCAS(int* p, int c, int v) { return __cudasim_atomic_cas(p, c, v); }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return __cudasim_atomic_cas(p, c, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) { return __cudasim_atomic_cas(p, c, v); }
inline unsigned short atomicCAS(unsigned short* p, unsigned short c, unsigned short v) { return __cudasim_atomic_cas(p, c, v); }
template <class T> inline T __cudasim_atomic_minmax(T* p, T v, bool is_max) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while ((is_max ? v > old : v < old) && !a.compare_exchange_weak(old, v)) {}
  return old;
}
inline int atomicMax(int* p, int v) { return __cudasim_atomic_minmax(p, v, true); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return __cudasim_atomic_minmax(p, v, true); }
inline long long atomicMax(long long* p, long long v) { return __cudasim_atomic_minmax(p, v, true); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return __cudasim_atomic_minmax(p, v, true); }
inline int atomicMin(int* p, int v) { return __cudasim_atomic_minmax(p, v, false); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return __cudasim_atomic_minmax(p, v, false); }
inline long long atomicMin(long long* p, long long v) { return __cudasim_atomic_minmax(p, v, false); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return __cudasim_atomic_minmax(p, v, false); }
template <class T> inline T atomicAnd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_and(v); }
template <class T> inline T atomicOr(T* p, T v) { return std::atomic_ref<T>(*p).fetch_or(v); }
template <class T> inline T atomicXor(T* p, T v) { return std::atomic_ref<T>(*p).fetch_xor(v); }
inline unsigned atomicInc(unsigned* p, unsigned lim) {
  std::atomic_ref<unsigned> a(*p); unsigned old = a.load();
  while (!a.compare_exchange_weak(old, old >= lim ? 0 : old + 1)) {}
  return old;
}
inline unsigned atomicDec(unsigned* p, unsigned lim) {
  std::atomic_ref<unsigned> a(*p); unsigned old = a.load();
  while (!a.compare_exchange_weak(old, (old == 0 || old > lim) ? lim : old - 1)) {}
  return old;
}
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd

// ---------------------------------------------------------------- math / intrinsics
// The CUDA math API declares these classification functions in the global
// namespace; <cmath> only has them in std:: (it #undefs the C macros).
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;
template <class A, class B, std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value, int> = 0>
constexpr std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B, std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value, int> = 0>
constexpr std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)std::floor(x); }
inline int __float2int_ru(float x) { return (int)std::ceil(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) { unsigned r = 0; for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i); return r; }
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }

// ================================================================ launch
namespace cudasim {

template <class T> inline T* dynamic_smem() { return static_cast<T*>(detail::cur_blk->dyn_smem); }

namespace detail {
template <class T> inline void check_ptr_arg(const T& a, int idx, const char* kname) {
  if constexpr (std::is_pointer<T>::value && !std::is_function<std::remove_pointer_t<T>>::value) {
    if (a != nullptr && config().check_ptrs && !registry().contains((const void*)a))
      fail(std::string("kernel ") + kname + ": argument #" + std::to_string(idx) +
           " is not a device pointer (not from cudaMalloc*) -- a host pointer passed to a kernel?");
  }
}

#if defined(CUDASIM_BACKEND_FIBERS)
struct LaunchPool {
  // Persistent workers, so that fiber stacks are reused between launches.
  // One grid at a time: `run` holds launch_mu for the whole launch, so host
  // threads that launch concurrently (the bindings release the GIL) queue.
  // Each launch is an epoch; worker i takes part in it when i < participants.
  // A worker starts at the epoch current when it was added, so it never runs
  // a job of an earlier launch (whose captures are gone).
  std::mutex launch_mu, mu;
  std::condition_variable cv, done_cv;
  std::vector<std::thread> threads;
  unsigned epoch = 0;
  int participants = 0, active = 0;
  const std::function<void(Worker&)>* job = nullptr;
  bool stop = false;
  ~LaunchPool() {
    { std::lock_guard<std::mutex> g(mu); stop = true; }
    cv.notify_all();
    for (auto& t : threads) t.join();
  }
  void worker_loop(int index, unsigned seen) {
    Worker W;
    tl_worker = &W;
    for (;;) {
      const std::function<void(Worker&)>* j;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return stop || epoch != seen; });
        if (stop) return;
        seen = epoch;
        if (index >= participants) continue;
        j = job;
      }
      (*j)(W);  // `work` records block errors itself and does not throw
      { std::lock_guard<std::mutex> g(mu); if (--active == 0) done_cv.notify_all(); }
    }
  }
  // Runs f on n workers (n >= 1) and returns when all n have finished.
  void run(int n, const std::function<void(Worker&)>& f) {
    std::lock_guard<std::mutex> one_launch(launch_mu);
    std::unique_lock<std::mutex> lk(mu);
    while ((int)threads.size() < n)
      threads.emplace_back(&LaunchPool::worker_loop, this, (int)threads.size(), epoch);
    job = &f;
    participants = active = n;
    ++epoch;
    cv.notify_all();
    done_cv.wait(lk, [&] { return active == 0; });
    job = nullptr;
  }
};
inline LaunchPool& pool() { static LaunchPool p; return p; }
#endif
}  // namespace detail

// Runs `call(args...)` as the body of every thread of a grid. `call` is the
// lambda that cu2cpp.py wraps around the kernel name, so a template kernel's
// arguments are deduced from the launch arguments exactly as nvcc does it.
template <class Call, class... A>
void launch(const Call& call, dim3 grid, dim3 block, size_t smem, std::tuple<A...> args, const char* kname) {
  using namespace detail;
  // CUDA validates the configuration at launch and reports via cudaGetLastError
  unsigned nthreads = block.x * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      nthreads > 1024 || block.z > 64 || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration, std::string("invalid launch configuration for ") + kname);
    return;
  }
  // The launch only knows the kernel as a call expression, not as a function
  // pointer, so it accepts up to the largest opt-in of *any* kernel: a missing
  // cudaFuncSetAttribute is caught only while no kernel has opted in.
  size_t limit = kDefaultDynSmem;
  {
    std::lock_guard<std::mutex> g(attr_mu());
    for (const auto& kv : max_dyn_smem()) limit = std::max(limit, (size_t)kv.second);
  }
  if (smem > limit) {
    set_error(cudaErrorInvalidValue, std::string("dynamic shared memory ") + std::to_string(smem) + " B > limit " +
                                         std::to_string(limit) + " B for " + kname +
                                         " (use cudaFuncSetAttribute(MaxDynamicSharedMemorySize))");
    return;
  }
  try {
    std::apply([&](auto&... a) { int i = 0; (check_ptr_arg(a, i++, kname), ...); }, args);
  } catch (const SimError& e) {
    set_error(cudaErrorInvalidDevicePointer, e.what());
    return;
  }
#if defined(CUDASIM_RACECHECK)
  racecheck::launch_begin(kname, grid, block);
  profile::launch_begin(kname, grid, block, smem);
#endif
  std::function<void()> body = [&args, &call] {
    auto copy = args;  // every thread gets its own copy of the parameters
    std::apply(call, copy);
  };
  const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
  std::atomic<unsigned long long> next{0};
  std::mutex emu;
  std::exception_ptr first_err;
  auto work = [&](auto& W) {
    Block b;
    b.bdim = block; b.gdim = grid; b.nthreads = nthreads; b.body = &body; b.kname = kname;
    for (;;) {
      unsigned long long id = next.fetch_add(1);
      if (id >= nblocks) break;
      b.bid = uint3{(unsigned)(id % grid.x), (unsigned)((id / grid.x) % grid.y), (unsigned)(id / ((unsigned long long)grid.x * grid.y))};
      b.error = nullptr;
      try {
#if defined(CUDASIM_BACKEND_FIBERS)
      if (W.smem.size() < smem + 16) W.smem.resize(smem + 16);
      b.dyn_smem = W.smem.data();
      std::memset(W.smem.data(), 0xFF, smem);  // poison: uninitialised reads show up as NaN
      b.dyn_smem_bytes = smem;
#if defined(CUDASIM_RACECHECK)
      racecheck::block_begin(b, W.smem.data(), W.smem.size());
      profile::block_begin(b.nthreads);
#endif
      run_block(W, b);
#if defined(CUDASIM_RACECHECK)
      profile::block_end(b.bar_gen);
#endif
#else
      (void)W;
      std::vector<unsigned char> sm(smem + 16, 0xFF);
      b.dyn_smem = sm.data(); b.dyn_smem_bytes = smem;
      run_block_threads(b);
#endif
      } catch (...) {  // e.g. std::bad_alloc: a pool worker must not throw
        b.error = std::current_exception();
      }
      if (b.error) {
        std::lock_guard<std::mutex> g(emu);
        if (!first_err) first_err = b.error;
        next.store(nblocks);  // abort remaining blocks
        break;
      }
    }
  };
#if defined(CUDASIM_BACKEND_FIBERS)
  int nw = (int)std::min<unsigned long long>((unsigned long long)config().workers, nblocks);
  if (nw <= 1) {
    if (!tl_worker) { static thread_local Worker W0; tl_worker = &W0; }
    work(*tl_worker);
  } else {
    pool().run(nw, [&](Worker& W) { work(W); });
  }
#else
  int dummy = 0;
  work(dummy);
#endif
#if defined(CUDASIM_RACECHECK)
  profile::launch_end();
  const std::string hazards = racecheck::launch_end();
  if (!hazards.empty() && !first_err) set_error(cudaErrorLaunchFailure, std::string(kname) + ": " + hazards);
#endif
  if (first_err) {
    try { std::rethrow_exception(first_err); }
    catch (const std::exception& e) { set_error(cudaErrorLaunchFailure, std::string(kname) + ": " + e.what()); }
    catch (...) { set_error(cudaErrorLaunchFailure, std::string(kname) + ": unknown exception"); }
  }
}

// What cu2cpp.py makes of `kernel<<<g, b, smem, stream>>>(args...)`:
//   ::cudasim::launch_cfg(g, b, smem, stream).kernel([&](auto&... a) { kernel(a...); }, "kernel")(args...)
template <class Call>
struct KernelLaunch {
  dim3 grid, block;
  size_t smem;
  Call call;
  std::string name;  // "kernel <name> launched at <file>:<line>", for error messages
  template <class... A>
  void operator()(A&&... a) const {
    launch(call, grid, block, smem, std::tuple<std::decay_t<A>...>(std::forward<A>(a)...), name.c_str());
  }
};

struct LaunchCfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;  // streams are not modelled: every launch runs to completion before returning
  std::source_location loc;
  template <class Call>
  KernelLaunch<Call> kernel(Call call, const char* kernel_name) const {
    return {grid, block, smem, std::move(call),
            std::string("kernel ") + kernel_name + " launched at " + loc.file_name() + ":" + std::to_string(loc.line())};
  }
};
inline LaunchCfg launch_cfg(dim3 g, dim3 b, size_t smem = 0, cudaStream_t s = nullptr,
                            std::source_location loc = std::source_location::current()) {
  return LaunchCfg{g, b, smem, s, loc};
}

}  // namespace cudasim

// ================================================================ runtime API (host side)
inline cudaError_t cudaMalloc(void** p, size_t n) {
  void* q = nullptr;  // exact size, so ASan sees out-of-bounds accesses
  if (posix_memalign(&q, 256, n ? n : 1) != 0) return cudaErrorMemoryAllocation;
  ::cudasim::detail::registry().add(q, n);
  *p = q;
  return cudaSuccess;
}
template <class T> inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc((void**)p, n); }
template <class T> inline cudaError_t cudaMallocManaged(T** p, size_t n, unsigned = 1) { return cudaMalloc((void**)p, n); }
template <class T> inline cudaError_t cudaMallocHost(T** p, size_t n) { return cudaMalloc((void**)p, n); }
template <class T> inline cudaError_t cudaHostAlloc(T** p, size_t n, unsigned) { return cudaMalloc((void**)p, n); }
inline cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  if (!::cudasim::detail::registry().remove(p)) return cudaErrorInvalidValue;
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
  auto& R = ::cudasim::detail::registry();
  bool dd = R.contains(dst), sd = R.contains(src);
  bool ok = (k == cudaMemcpyHostToDevice && dd) || (k == cudaMemcpyDeviceToHost && sd) ||
            (k == cudaMemcpyDeviceToDevice && dd && sd) || k == cudaMemcpyDefault || k == cudaMemcpyHostToHost;
  if (!ok && ::cudasim::config().check_ptrs) {
    ::cudasim::detail::set_error(cudaErrorInvalidValue, "cudaMemcpy: pointer does not match cudaMemcpyKind");
    return cudaErrorInvalidValue;
  }
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) { return cudaMemcpy(d, s, n, k); }
inline cudaError_t cudaMemset(void* p, int v, size_t n) { std::memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) { return cudaMemset(p, v, n); }
template <class T> inline cudaError_t cudaMemcpyToSymbol(T& sym, const void* src, size_t n, size_t off = 0, cudaMemcpyKind = cudaMemcpyHostToDevice) {
  std::memcpy((char*)&sym + off, src, n); return cudaSuccess;
}
template <class T> inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& sym, size_t n, size_t off = 0, cudaMemcpyKind = cudaMemcpyDeviceToHost) {
  std::memcpy(dst, (const char*)&sym + off, n); return cudaSuccess;
}
inline cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> g(::cudasim::detail::err_mu());
  cudaError_t e = ::cudasim::detail::last_err();
  ::cudasim::detail::last_err() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() {
  std::lock_guard<std::mutex> g(::cudasim::detail::err_mu());
  return ::cudasim::detail::last_err();
}
inline cudaError_t cudaDeviceSynchronize() { return cudaPeekAtLastError(); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaPeekAtLastError(); }
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = nullptr; return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = nullptr; return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st; return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr) { e->t = std::chrono::steady_clock::now(); return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count(); return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "cudasim CPU (H100-like limits)");
  p->totalGlobalMem = 80ull << 30; p->sharedMemPerBlock = 48 * 1024; p->regsPerBlock = 65536; p->warpSize = 32;
  p->maxThreadsPerBlock = 1024; p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
  p->multiProcessorCount = 132; p->sharedMemPerBlockOptin = 227 * 1024; p->sharedMemPerMultiprocessor = 228 * 1024;
  p->maxThreadsPerMultiProcessor = 2048; p->major = 9; p->minor = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 13000; return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }
template <class... P> inline cudaError_t cudaFuncSetAttribute(void (*k)(P...), cudaFuncAttribute a, int v) {
  if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (v < 0 || (size_t)v > ::cudasim::detail::kMaxDynSmemOptin) return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> g(::cudasim::detail::attr_mu());
    ::cudasim::detail::max_dyn_smem()[(const void*)k] = v;
  }
  return cudaSuccess;
}
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string s;
  std::lock_guard<std::mutex> g(::cudasim::detail::err_mu());
  s = (e != cudaSuccess && !::cudasim::detail::last_msg().empty()) ? ::cudasim::detail::last_msg() : "cudasim error";
  return s.c_str();
}
namespace cudasim {
inline void reset_error() {
  std::lock_guard<std::mutex> g(detail::err_mu());
  detail::last_err() = cudaSuccess; detail::last_msg().clear();
}
}

namespace cudasim {
// Treat memory the host owns (a NumPy array's buffer, say) as device memory
// for the lifetime of this guard, so that the pointer check accepts it as a
// kernel argument. A backend whose "device" arrays are NumPy arrays wraps each
// call's buffers in one of these; a pointer nobody vouched for still fails.
class DeviceView {
 public:
  DeviceView(const void* p, size_t bytes) : p_(p), bytes_(bytes) {
    if (p_ != nullptr) detail::registry().vouch(p_, bytes_);
  }
  ~DeviceView() {
    if (p_ != nullptr) detail::registry().unvouch(p_, bytes_);
  }
  DeviceView(const DeviceView&) = delete;
  DeviceView& operator=(const DeviceView&) = delete;

 private:
  const void* p_;
  size_t bytes_;
};
}  // namespace cudasim

#include "tensorcore.h"  // ldmatrix, mma.sync, cp.async (used through csrc/common/mma.cuh)
